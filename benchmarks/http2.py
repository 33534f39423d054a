"""HTTP/2 on the http:// port, measured: ``python -m benchmarks.http2 [--seconds 3]``.

Each server runs in its own process (``python -m benchmarks.http2 serve KIND``); the client runs
here. Servers: protobind's HTTP binding under uvicorn with zttp (the default), h11 and httptools,
on hypercorn and granian (option ``asgi_server``; granian serves no gRPC), and protobind's
grpc:// binding (grpcio). ``python -m benchmarks.run`` has the same comparisons as pairs, with
medians of rounds (``--only grpc-on-http,connect-h2,asgi-...``). Clients: stock
``grpc.aio`` (gRPC unary, 64 calls in flight), grpclib (the same), protobind's own http:// client
(Connect, binary proto, HTTP/1.1) and a bidi soak (16 grpcio streams at once, 200 messages each,
every request sent after the previous answer was read; order and count checked), and the same
soak over Connect with protobind's client (HTTP/2 streams), which granian serves too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import protobind
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.testing.conformance.service import Conformance

SERVICE = "/protobind.conformance.v1.ConformanceService"
SERVERS = ("zttp", "h11", "httptools", "hypercorn", "granian", "grpc")


async def _serve(kind: str) -> None:
    service = Conformance()
    server = protobind.Server([service])
    if kind == "grpc":
        (url,) = await server.start("grpc://127.0.0.1:0?engine=grpcio")
        url = url.replace("grpc://", "http://")
    elif kind in ("hypercorn", "granian"):
        (url,) = await server.start(f"http://127.0.0.1:0?asgi_server={kind}")
    else:
        (url,) = await server.start(f"http://127.0.0.1:0?http_parser={kind}")
    print(f"READY {url}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(1.0)


@contextlib.contextmanager
def _server(kind: str):  # type: ignore[no-untyped-def]
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.http2", "serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("READY "), line
        yield line.split()[1]
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _rate(call: Callable[[], Awaitable[object]], seconds: float, inflight: int = 64) -> float:
    count = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < end:
            await call()
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return count / (time.monotonic() - started)


async def _grpcio(url: str, seconds: float) -> float:
    import grpc

    async with grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
        unary = channel.unary_unary(
            f"{SERVICE}/Unary",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )
        request = Request(payload=b"x" * 100)
        await unary(request, timeout=10)
        return await _rate(lambda: unary(request, timeout=10), seconds)


async def _grpclib(url: str, seconds: float) -> float:
    from grpclib.client import Channel, UnaryUnaryMethod

    parts = urlsplit(url)
    channel = Channel(parts.hostname, parts.port)
    try:
        unary = UnaryUnaryMethod(channel, f"{SERVICE}/Unary", Request, Response)
        request = Request(payload=b"x" * 100)
        await unary(request, timeout=10)
        return await _rate(lambda: unary(request, timeout=10), seconds)
    finally:
        channel.close()


async def _connect(url: str, seconds: float) -> float:
    async with protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        request = Request(payload=b"x" * 100)
        await client.unary(request, timeout=10)
        return await _rate(lambda: client.unary(request, timeout=10), seconds)


async def _bidi_soak(url: str, streams: int = 16, messages: int = 200) -> str:
    import grpc

    async with grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
        bidi = channel.stream_stream(
            f"{SERVICE}/BidiStream",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )

        async def one(n: int) -> None:
            call = bidi(timeout=60)
            for i in range(messages):
                await call.write(Request(text=f"{n}:{i}"))
                response = await call.read()
                assert response is not grpc.aio.EOF and response.text == f"{n}:{i}", (n, i, response)
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() is grpc.StatusCode.OK

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(streams))), 60)
        return f"ok, {streams * messages / (time.monotonic() - started):,.0f} msg/s"


async def _connect_bidi_soak(url: str, streams: int = 16, messages: int = 200) -> str:
    """The bidi soak over Connect (protobind's client, HTTP/2 streams): every server can run it."""
    async with protobind.connect(url, options={"http2": "streams"}) as channel:
        client = ConformanceServiceClient(channel)

        async def one(n: int) -> None:
            queue: asyncio.Queue[Request | None] = asyncio.Queue()

            async def requests() -> AsyncIterator[Request]:
                while (request := await queue.get()) is not None:
                    yield request

            replies = client.bidi_stream(requests(), timeout=60)
            for i in range(messages):
                await queue.put(Request(text=f"{n}:{i}"))
                response = await anext(replies)
                assert response.text == f"{n}:{i}", (n, i, response)
            await queue.put(None)
            assert [r async for r in replies] == []

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(streams))), 60)
        return f"ok, {streams * messages / (time.monotonic() - started):,.0f} msg/s"


async def _measure(seconds: float, servers: list[str]) -> None:
    rows = []
    for kind in servers:
        with _server(kind) as url:
            row = {"server": kind}
            if kind in ("zttp", "hypercorn", "grpc"):
                # failures are reported, not hidden: finding them is what this run is for
                for name, run in (("grpcio", _grpcio), ("grpclib", _grpclib)):
                    try:
                        row[name] = f"{await run(url, seconds):,.0f}"
                    except Exception as exc:
                        row[name] = f"FAILED {type(exc).__name__}: {str(exc)[:160]}"
                try:
                    row["bidi soak"] = await _bidi_soak(url)
                except Exception as exc:
                    row["bidi soak"] = f"FAILED {type(exc).__name__}: {str(exc)[:80]}"
            if kind != "grpc":
                row["connect"] = f"{await _connect(url, seconds):,.0f}"
            if kind in ("zttp", "hypercorn", "granian"):
                try:
                    row["connect bidi soak"] = await _connect_bidi_soak(url)
                except Exception as exc:
                    row["connect bidi soak"] = f"FAILED {type(exc).__name__}: {str(exc)[:80]}"
            rows.append(row)
            print(row, flush=True)
    print()
    print(
        "| server | grpcio calls/s | grpclib calls/s | Connect (HTTP/1.1) calls/s | gRPC bidi soak "
        "| Connect bidi soak |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        keys = ("grpcio", "grpclib", "connect", "bidi soak", "connect bidi soak")
        cells = [row.get(k, "-") for k in keys]
        print(f"| {row['server']} | " + " | ".join(cells) + " |")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        asyncio.run(_serve(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"some of {','.join(SERVERS)}")
    args = parser.parse_args()
    asyncio.run(_measure(args.seconds, args.servers.split(",")))


if __name__ == "__main__":
    main()
