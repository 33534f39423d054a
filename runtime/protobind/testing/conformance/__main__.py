"""``python -m protobind.testing.conformance``: run the conformance matrix, exit 1 on any failure."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from ._cases import CASES
from ._matrix import as_json, columns, format_matrix, run_matrix


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the matrix, print it; the exit status (0: no failure)."""
    parser = argparse.ArgumentParser(
        prog="python -m protobind.testing.conformance",
        description="Run every conformance case against every transport and client/server pairing.",
    )
    parser.add_argument("--transports", help="comma-separated server transports (default: all registered)")
    parser.add_argument(
        "--clients",
        help="comma-separated clients: protobind, grpcio, grpc-web, connectrpc, nats-py, aio-pika",
    )
    parser.add_argument("--cases", help="comma-separated case names or prefixes (e.g. types.,stream.bidi)")
    parser.add_argument("--json", metavar="FILE", help="also write every cell as JSON to FILE")
    parser.add_argument(
        "--asgi-servers",
        action="store_true",
        help="also run the HTTP binding on hypercorn and granian (option asgi_server)",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and columns, run nothing")
    parser.add_argument(
        "--verbose", action="store_true", help="show protobind's logs (the cases provoke errors)"
    )
    args = parser.parse_args(argv)

    selected, left_out = columns(asgi_servers=args.asgi_servers)
    if args.transports:
        wanted = set(args.transports.split(","))
        unknown = wanted - {c.transport for c in selected}
        if unknown:
            parser.error(f"unknown or unavailable transport(s): {', '.join(sorted(unknown))}")
        selected = [c for c in selected if c.transport in wanted]
    if args.clients:
        wanted = set(args.clients.split(","))
        selected = [c for c in selected if c.client in wanted]
    cases = list(CASES)
    if args.cases:
        prefixes = tuple(args.cases.split(","))
        cases = [c for c in cases if c.name.startswith(prefixes)]
    if not cases or not selected:
        parser.error("no case or no column selected")
    if args.list:
        for case in cases:
            print(f"{case.name:28} {case.summary}")
        for column in selected:
            print(f"column {column.name:18} {column.summary}")
        return 0

    def progress(cell: object) -> None:
        print(".", end="", file=sys.stderr, flush=True)

    logger = logging.getLogger("protobind")
    level = logger.level
    if not args.verbose:
        logger.setLevel(logging.CRITICAL + 1)  # the handler errors the cases provoke are expected
    try:
        cells = asyncio.run(run_matrix(cases, selected, on_cell=progress))
    finally:
        logger.setLevel(level)
    print(file=sys.stderr)
    print(format_matrix(cells, selected, left_out))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(as_json(cells, selected), out, indent=1)
    return 1 if any(c.verdict.name == "FAIL" for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
