"""Temporary: raw nats-py request/reply vs protobind over NATS, 64 concurrent unary calls.

python benchmarks/nats_quick.py [--split] [--seconds 3] [--rounds 3] [--timeout]
--split runs the servers in a child process (client and server on separate cores).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time

sys.path.insert(0, "tests/.gen")

import nats
import protobind
from protobind._nats_embedded import start_nats_server
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient, ConformanceServiceService

CONCURRENCY = 64
PAYLOAD = b"x" * 100
SUBJECT = "raw.echo"


class Echo(ConformanceServiceService):
    async def unary(self, request: Request, context: protobind.Context) -> Response:
        return Response(payload=request.payload)


async def raw_server(url: str) -> nats.NATS:
    nc = await nats.connect(url)

    async def cb(msg):  # type: ignore[no-untyped-def]
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe(SUBJECT, queue="q", cb=cb)
    await nc.flush()
    return nc


async def pb_server(url: str) -> protobind.Server:
    server = protobind.Server([Echo()])
    await server.start(url)
    return server


async def drive(call, seconds: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    count = 0

    async def worker() -> None:
        nonlocal count
        while (t0 := time.perf_counter()) < stop:
            await call()
            latencies.append(time.perf_counter() - t0)
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - t0
    return count / elapsed, statistics.median(latencies) * 1e6


async def raw_client(url: str, seconds: float, timeout: bool) -> tuple[float, float]:
    nc = await nats.connect(url)

    async def call():  # type: ignore[no-untyped-def]
        msg = await nc.request(SUBJECT, PAYLOAD, timeout=5.0)
        assert len(msg.data) == 100

    for _ in range(200):
        await call()
    try:
        return await drive(call, seconds)
    finally:
        await nc.close()


async def pb_client(url: str, seconds: float, timeout: bool) -> tuple[float, float]:
    async with protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        request = Request(payload=PAYLOAD)
        if timeout:

            async def call():  # type: ignore[no-untyped-def]
                reply = await client.unary(request, timeout=5.0)
                assert len(reply.payload) == 100
        else:

            async def call():  # type: ignore[no-untyped-def]
                reply = await client.unary(request)
                assert len(reply.payload) == 100

        for _ in range(200):
            await call()
        return await drive(call, seconds)


def serve_forever(url: str, ready: multiprocessing.synchronize.Event, only_raw: bool) -> None:  # type: ignore[name-defined]
    async def main() -> None:
        await raw_server(url)
        if not only_raw:
            await pb_server(url)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", action="store_true", help="protobind calls carry a deadline")
    parser.add_argument("--only", choices=["raw", "pb"])
    args = parser.parse_args()
    url, stop = start_nats_server()
    child = None
    try:
        if args.split:
            ready = multiprocessing.Event()
            child = multiprocessing.Process(
                target=serve_forever, args=(url, ready, args.only == "raw"), daemon=True
            )
            child.start()
            ready.wait(10)
        else:
            await raw_server(url)
            if args.only != "raw":
                await pb_server(url)
        raw: list[tuple[float, float]] = []
        pb: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            if args.only != "pb":
                raw.append(await raw_client(url, args.seconds, args.timeout))
                print(f"raw       {raw[-1][0]:9.0f} calls/s  p50 {raw[-1][1]:6.0f} us", flush=True)
            if args.only != "raw":
                pb.append(await pb_client(url, args.seconds, args.timeout))
                print(f"protobind {pb[-1][0]:9.0f} calls/s  p50 {pb[-1][1]:6.0f} us", flush=True)
        if raw and pb:
            rt = statistics.median(r[0] for r in raw)
            pt = statistics.median(p[0] for p in pb)
            rl = statistics.median(r[1] for r in raw)
            pl = statistics.median(p[1] for p in pb)
            print(f"median: raw {rt:.0f}/s p50 {rl:.0f}us; protobind {pt:.0f}/s p50 {pl:.0f}us")
            print(f"throughput ratio {pt / rt:.3f}   p50 ratio {pl / rl:.3f}")
    finally:
        if child is not None:
            child.terminate()
            child.join()
        stop()


if __name__ == "__main__":
    asyncio.run(main())
