"""Drive one benchmark client: ``python -m benchmarks.drive KIND URL --payload N ...``.

Measures sequential latency (one call at a time: p50, p99) and then throughput (``--concurrency``
calls kept in flight for ``--duration`` seconds). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from . import peers


async def main(args: argparse.Namespace) -> dict[str, float]:
    stop = None
    url = args.url
    if url == "inproc":  # the inproc server lives in the client's process
        url, stop = await peers.SERVERS[args.kind]("127.0.0.1", None)
    call, close = await peers.CLIENTS[args.kind](url)
    payload = b"x" * args.payload
    try:
        for _ in range(args.warmup):
            await call(payload)
        latencies = []
        for _ in range(args.sequential):
            start = time.perf_counter()
            await call(payload)
            latencies.append(time.perf_counter() - start)
        latencies.sort()

        done = 0
        deadline = time.perf_counter() + args.duration

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await call(payload)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await close()
        if stop is not None:
            await stop()
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6,
        "calls_per_s": done / elapsed,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("url")
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args()))), flush=True)
