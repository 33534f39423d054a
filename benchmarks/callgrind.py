"""Instructions per call, counted by valgrind's callgrind: immune to the noise of a shared machine.

    python -m benchmarks.callgrind --kinds protobind-grpc,grpc-aio --payload 16384
    python -m benchmarks.callgrind --kinds protobind-http-plainjson,fastapi --side server

For each kind, the server (``--side server``) or the client (``--side client``) runs under
callgrind twice, once for ``--low`` and once for ``--high`` sequential calls; the difference of
the two totals divided by the difference in calls is the cost of one call, start-up excluded.
Reported as thousands of instructions per call and the ratio of each kind to the first.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TOTAL = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)


def _valgrind(out: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no"]


def _total(path: str) -> int:
    match = _TOTAL.search(Path(path).read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"no summary line in {path}")
    return int(match.group(1))


def _oneway_kinds() -> set[str]:
    from . import peers

    return set(peers.ONEWAY_CLIENTS)


def _count(
    kind: str, side: str, calls: int, payload: int, workdir: str, nats_url: str | None, concurrency: int
) -> int:
    out = os.path.join(workdir, f"{kind}-{side}-{calls}.out")
    serve = [sys.executable, "-m", "benchmarks.serve", kind, "127.0.0.1"] + ([nats_url] if nats_url else [])
    if side == "server":
        serve = _valgrind(out) + serve
    server = subprocess.Popen(serve, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdin is not None
    try:
        line = server.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"server {kind} did not start: {line!r}")
        url = line.split()[1]
        drive = [sys.executable, "-m", "benchmarks.drive", kind, url, "--payload", str(payload)]
        if kind in _oneway_kinds():
            # one-way pairs: a burst of `calls` messages from 64 senders, as in their throughput run
            drive += ["--sequential", "1", "--warmup", "50", "--messages", str(calls), "--concurrency", "64"]
        elif concurrency > 1:
            # `calls` calls kept `concurrency` in flight, as in the throughput run
            drive += [
                "--sequential",
                "1",
                "--warmup",
                "50",
                "--calls",
                str(calls),
                "--concurrency",
                str(concurrency),
            ]
        else:
            drive += ["--sequential", str(calls), "--warmup", "50", "--duration", "0", "--concurrency", "1"]
        if side == "client":
            drive = _valgrind(out) + drive
        subprocess.run(drive, cwd=ROOT, check=True, capture_output=True, timeout=1800)
    finally:
        server.stdin.close()
        server.wait(timeout=600)
    return _total(out)


def _nats_server() -> tuple[str, Callable[[], None]]:
    try:
        from protobind.nats.embedded import start_nats_server
    except ImportError:  # trees from before the transport packages
        from protobind._nats_embedded import start_nats_server  # type: ignore[no-redef]
    return start_nats_server()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kinds", default="protobind-grpc,grpc-aio")
    parser.add_argument("--side", choices=("server", "client"), default="server")
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--low", type=int, default=200)
    parser.add_argument("--high", type=int, default=1200)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="calls in flight (request/reply kinds; default 1: sequential calls)",
    )
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    per_call: dict[str, float] = {}
    nats_url, stop_nats = os.environ.get("PROTOBIND_NATS_URL"), None
    if nats_url is None and any("nats" in kind or kind in _oneway_kinds() for kind in kinds):
        nats_url, stop_nats = _nats_server()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for kind in kinds:
                low = _count(kind, args.side, args.low, args.payload, workdir, nats_url, args.concurrency)
                high = _count(kind, args.side, args.high, args.payload, workdir, nats_url, args.concurrency)
                per_call[kind] = (high - low) / (args.high - args.low)
    finally:
        if stop_nats is not None:
            stop_nats()
    first = per_call[kinds[0]]
    calls = args.high - args.low
    driven = "one-way kinds in bursts of 64 senders, " if any(k in _oneway_kinds() for k in kinds) else ""
    print(
        f"{args.side}, payload {args.payload} B, instructions per call (callgrind, {calls} calls, "
        f"{driven}{args.concurrency} in flight)"
    )
    for kind, count in per_call.items():
        print(f"  {kind:28} {count / 1000:10.1f} k   ratio {count / first:.3f}")


if __name__ == "__main__":
    main()
