"""Drive one benchmark client: ``python -m benchmarks.drive KIND URL --payload N ...``.

Measures sequential latency (one call at a time: p50, p99) and then throughput (``--concurrency``
calls kept in flight for ``--duration`` seconds: tasks, or threads for a blocking client). Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from . import peers

#: Messages per one-way throughput run unless ``--messages`` or peers.ONEWAY_MESSAGES says otherwise.
ONEWAY_MESSAGES = 300_000


def _report(latencies: list[float], done: int, elapsed: float, calls: int) -> dict[str, float]:
    latencies.sort()
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6,
        "calls_per_s": done / elapsed,
        "calls": calls,  # every call made, warm-up included: for the server's CPU per call
    }


async def oneway(args: argparse.Namespace) -> dict[str, float]:
    """Publish-and-handle throughput of one-way messages (see peers.py): ``--messages`` messages
    sent by ``--concurrency`` senders, timed until the server reports the last one handled;
    p50/p99 are of the send call itself, one message at a time."""
    send, close = await peers.ONEWAY_CLIENTS[args.kind](args.url)
    done, stop_watching = await peers.oneway_watcher(args.url)
    payload = b"x" * args.payload
    messages = args.messages or peers.ONEWAY_MESSAGES.get(args.kind, ONEWAY_MESSAGES)

    async def burst(count: int, concurrency: int) -> tuple[list[float], int, float | None]:
        """Send ``count`` messages; their send latencies, how many the server handled and, when
        that is fewer (the broker dropped some), the wall-clock time of the last one handled."""
        left = count
        latencies: list[float] = []

        async def sender() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                start = time.perf_counter()
                await send(payload, count)
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
        report = await asyncio.wait_for(done.get(), 120)
        if not report:
            return latencies, count, None
        partial = json.loads(report)
        return latencies, int(partial["handled"]), float(partial["last"])

    try:
        await burst(args.warmup, 1)
        latencies, _, _ = await burst(args.sequential, 1)
        started, wall = time.perf_counter(), time.time()
        _, handled, last = await burst(messages, args.concurrency)
        elapsed = time.perf_counter() - started if last is None else last - wall
    finally:
        await close()
        await stop_watching()
    result = _report(latencies, handled, elapsed, args.warmup + args.sequential + messages)
    result["lost"] = messages - handled
    return result


async def main(args: argparse.Namespace) -> dict[str, float]:
    if args.kind in peers.ONEWAY_CLIENTS:
        return await oneway(args)
    stop = None
    url = args.url
    if url == "inproc":  # the inproc server lives in the client's process
        url, stop = await peers.SERVERS[args.kind]("127.0.0.1", None)
    # several channels (connections) when asked: with `serve --workers N` each gRPC connection
    # stays on the worker that accepted it
    clients = [await peers.CLIENTS[args.kind](url) for _ in range(args.channels)]
    call = clients[0][0]
    payload = b"x" * args.payload
    try:
        for _ in range(args.warmup):
            await call(payload)
        latencies = []
        for _ in range(args.sequential):
            start = time.perf_counter()
            await call(payload)
            latencies.append(time.perf_counter() - start)

        done = 0
        deadline = time.perf_counter() + args.duration
        left = args.calls

        async def worker(call: peers.Call) -> None:
            nonlocal done, left
            if args.calls:  # a fixed number of calls (callgrind, strace): no clock
                while left > 0:
                    left -= 1
                    await call(payload)
                    done += 1
                return
            while time.perf_counter() < deadline:
                await call(payload)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(clients[i % len(clients)][0]) for i in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        for _, close in clients:
            await close()
        if stop is not None:
            await stop()
    return _report(latencies, done, elapsed, args.warmup + args.sequential + done)


def main_sync(args: argparse.Namespace) -> dict[str, float]:
    """The same measurement for a blocking client: the calls in flight are threads."""
    from protobind.sync import LoopThread

    server, stop = None, None
    url = args.url
    if url == "inproc":  # the inproc server lives in the client's process, on a loop of its own
        server = LoopThread("bench-server")
        url, stop = server.submit(peers.SERVERS[args.kind]("127.0.0.1", None)).result()
    call, close = peers.SYNC_CLIENTS[args.kind](url)
    payload = b"x" * args.payload
    try:
        for _ in range(args.warmup):
            call(payload)
        latencies = []
        for _ in range(args.sequential):
            start = time.perf_counter()
            call(payload)
            latencies.append(time.perf_counter() - start)

        deadline = time.perf_counter() + args.duration

        def worker(_: int) -> int:
            done = 0
            while time.perf_counter() < deadline:
                call(payload)
                done += 1
            return done

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            done = sum(pool.map(worker, range(args.concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        close()
        if server is not None and stop is not None:
            server.submit(stop()).result()
            server.stop()
    return _report(latencies, done, elapsed, args.warmup + args.sequential + done)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("url")
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--calls", type=int, default=0, help="throughput run: this many calls instead of --duration"
    )
    parser.add_argument("--channels", type=int, default=1, help="connections the calls are spread over")
    parser.add_argument(
        "--messages", type=int, default=0, help="one-way pairs: messages per run (0: the pair's default)"
    )
    arguments = parser.parse_args()
    if arguments.kind in peers.SYNC_CLIENTS:
        print(json.dumps(main_sync(arguments)), flush=True)
    else:
        print(json.dumps(asyncio.run(main(arguments))), flush=True)
