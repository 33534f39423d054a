"""The http:// binding on each ASGI server it can run on (option ``asgi_server``, issue 21 item 3):
uvicorn (the default, with zttp), hypercorn and granian. Every server serves Connect over HTTP/1.1
and HTTP/2 (bidi full duplex), honours the app's limits and the binding's lifecycle; gRPC needs
ASGI trailers, which granian lacks, so it refuses gRPC clearly. The soak runs concurrent bidi
streams of numbered messages both ways and checks order and completion."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest

import protobind
import protobind.http._asgi_servers
import protobind.http._server
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import Conformance
from .h2raw import connect_headers, grpc_frame, raw_h2
from .tls import self_signed

SERVICE = "/protobind.conformance.v1.ConformanceService"
SERVERS = ("uvicorn", "hypercorn", "granian")
#: servers with ASGI trailers, so gRPC on the http:// port
GRPC_SERVERS = ("uvicorn", "hypercorn")


@contextlib.asynccontextmanager
async def serving(
    asgi_server: str, scheme: str = "http", **options: Any
) -> AsyncIterator[tuple[str, Conformance]]:
    service = Conformance()
    server = protobind.Server([service], transport_options={"http": {"asgi_server": asgi_server, **options}})
    (url,) = await server.start(f"{scheme}://127.0.0.1:0")
    try:
        yield url, service
    finally:
        await server.stop(grace=1.0)


def _grpc_bidi(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream(
        f"{SERVICE}/BidiStream",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )


@pytest.mark.parametrize("asgi_server", SERVERS)
async def test_connect_over_http1_and_full_duplex_bidi_over_http2(asgi_server: str) -> None:
    async with serving(asgi_server) as (url, _):
        async with protobind.connect(url) as channel:  # unary over HTTP/1.1
            assert (
                await ConformanceServiceClient(channel).unary(Request(text="one"), timeout=5)
            ).text == "one"
        async with httpx.AsyncClient(base_url=url, http1=False, http2=True) as h2c:
            answer = await h2c.post(f"{SERVICE}/Unary", json={"text": "two"})
            assert (answer.http_version, answer.json()["text"]) == ("HTTP/2", "two")
        async with protobind.connect(url, options={"http2": "streams"}) as channel:
            client = ConformanceServiceClient(channel)
            requests: asyncio.Queue[Request | None] = asyncio.Queue()

            async def outgoing() -> AsyncIterator[Request]:
                while (request := await requests.get()) is not None:
                    yield request

            replies = client.bidi_stream(outgoing(), timeout=10)
            # each request goes out only after the answer to the one before was read
            for i in range(5):
                await requests.put(Request(text=str(i)))
                assert (await asyncio.wait_for(anext(replies), 5)).text == str(i)
            await requests.put(None)
            assert [r async for r in replies] == []


@pytest.mark.parametrize("asgi_server", GRPC_SERVERS)
async def test_grpc_on_servers_with_trailers(asgi_server: str) -> None:
    async with serving(asgi_server) as (url, _), grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
        unary = channel.unary_unary(
            f"{SERVICE}/Unary",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )
        assert (await unary(Request(text="g"), timeout=5)).text == "g"
        failing = unary(
            Request(behavior=Behavior(error_code=int(Code.NOT_FOUND), error_message="nope")), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await failing
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND, "nope")
        call = _grpc_bidi(channel)(timeout=5)
        for i in range(3):
            await call.write(Request(text=str(i)))
            assert (await call.read()).text == str(i)
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK


@pytest.mark.parametrize("asgi_server", GRPC_SERVERS)
async def test_one_grpc_channel_outlives_a_thousand_calls(asgi_server: str) -> None:
    # hypercorn's default ends a connection after 1,000 requests in a way that fails the calls in
    # flight; the binding lifts that limit (asgi_servers.py)
    async with serving(asgi_server) as (url, _), grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
        unary = channel.unary_unary(
            f"{SERVICE}/Unary",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )
        calls = iter(range(1500))

        async def worker() -> None:
            for i in calls:
                assert (await unary(Request(text=str(i)), timeout=30)).text == str(i)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(32))), 120)


async def test_granian_refuses_grpc_and_serves_grpc_web() -> None:
    async with serving("granian") as (url, _):
        async with grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
            unary = channel.unary_unary(
                f"{SERVICE}/Unary",
                request_serializer=Request.SerializeToString,
                response_deserializer=Response.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(Request(text="g"), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert "gRPC needs HTTP/2 with trailers" in (info.value.details() or "")
        async with httpx.AsyncClient(base_url=url) as client:
            answer = await client.post(
                f"{SERVICE}/Unary",
                content=grpc_frame(Request(text="web")),
                headers={"content-type": "application/grpc-web+proto"},
            )
        body = answer.content
        length = int.from_bytes(body[1:5], "big")
        assert Response.FromString(body[5 : 5 + length]).text == "web"
        assert b"grpc-status: 0" in body[5 + length :]


@pytest.mark.parametrize("asgi_server", SERVERS)
async def test_stop_lets_in_flight_calls_finish_then_refuses(asgi_server: str) -> None:
    service = Conformance()
    server = protobind.Server([service], transport_options={"http": {"asgi_server": asgi_server}})
    (url,) = await server.start("http://127.0.0.1:0")
    async with protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        call = asyncio.ensure_future(client.unary(Request(text="slow", behavior=Behavior(sleep_ms=300))))
        await service.until(lambda: "slow" in service.entered)
        await server.stop(grace=5.0)
        assert (await call).text == "slow"
    async with protobind.connect(url) as channel:  # a new connection finds nobody listening
        with pytest.raises(RpcError) as info:
            await ConformanceServiceClient(channel).unary(Request(), timeout=5)
        assert info.value.code is Code.UNAVAILABLE


@pytest.mark.parametrize("asgi_server", ("hypercorn", "granian"))
async def test_stop_ends_calls_that_outlast_the_grace(asgi_server: str) -> None:
    service = Conformance()
    server = protobind.Server([service], transport_options={"http": {"asgi_server": asgi_server}})
    (url,) = await server.start("http://127.0.0.1:0")
    async with protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        long = Request(text="long", behavior=Behavior(sleep_ms=60_000))
        call = asyncio.ensure_future(client.unary(long, timeout=30))
        await service.until(lambda: "long" in service.entered)
        await asyncio.wait_for(server.stop(grace=0.2), 10)  # returns though the call would run on
        with pytest.raises(RpcError):
            await asyncio.wait_for(call, 10)


@pytest.mark.parametrize("asgi_server", SERVERS)
async def test_app_limits_apply_on_every_server(asgi_server: str) -> None:
    async with serving(
        asgi_server, max_message_size=1000, body_timeout=0.3, max_concurrency=1, max_pending=0
    ) as (url, service):
        port = urlsplit(url).port or 0
        async with httpx.AsyncClient(base_url=url) as client:
            big = await client.post(f"{SERVICE}/Unary", json={"text": "x" * 2000})
            assert (big.status_code, big.json()["code"]) == (413, "resource_exhausted")
            # one call holds the only slot: the next is refused at once
            held = asyncio.ensure_future(client.post(f"{SERVICE}/Unary", json={"text": "gate"}, timeout=10))
            await service.until(lambda: "gate" in service.entered)
            busy = await client.post(f"{SERVICE}/Unary", json={})
            assert (busy.status_code, busy.json()["code"]) == (429, "resource_exhausted")
            service.gate.set()
            assert (await held).status_code == 200
        # a body that never completes: 408 over HTTP/1.1, and over HTTP/2 on its own stream
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"POST {SERVICE}/Unary HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                "content-length: 100\r\n\r\n{".encode()
            )
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(4096), 10)
            assert answer.startswith(b"HTTP/1.1 408 ") and b"body_timeout" in answer
        finally:
            writer.close()
        async with raw_h2(port) as peer:
            stalled = peer.open("", b"", end=False, headers=connect_headers(f"{SERVICE}/Unary"))
            await peer.flush()
            await asyncio.wait_for(peer.read_until([stalled]), 10)
            assert peer.answers[stalled].headers[":status"] == "408"


@pytest.mark.parametrize("asgi_server", SERVERS)
async def test_oversized_headers_are_refused_and_the_server_goes_on(asgi_server: str) -> None:
    async with serving(asgi_server) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client:
            # beyond max_header_size (16 KiB) the app answers 431; far beyond what a server buffers,
            # it may close the connection instead
            refused = await client.post(f"{SERVICE}/Unary", json={}, headers={"x-big": "a" * 20_000})
            assert (refused.status_code, refused.json()["code"]) == (431, "resource_exhausted")
            with contextlib.suppress(httpx.HTTPError):
                refused = await client.post(f"{SERVICE}/Unary", json={}, headers={"x-big": "a" * 100_000})
                assert refused.status_code == 431
            assert (await client.post(f"{SERVICE}/Unary", json={"text": "on"})).json()["text"] == "on"
        port = urlsplit(url).port or 0
        async with raw_h2(port) as peer:
            over = peer.open(
                "", b"{}", headers=[*connect_headers(f"{SERVICE}/Unary"), ("x-big", "a" * 100_000)]
            )
            await peer.flush()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(peer.read_until([over]), 5)
            answer = peer.answers[over]
            assert (
                peer.terminated is not None or answer.reset is not None or answer.headers[":status"] == "431"
            )


@pytest.mark.parametrize("asgi_server", SERVERS)
async def test_https_with_http2_by_alpn(asgi_server: str, tmp_path: Path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    cert, key, pem = str(cert_path), str(key_path), cert_path.read_bytes()
    async with serving(asgi_server, "https", tls_cert=cert, tls_key=key) as (url, _):
        assert url.startswith("https://127.0.0.1:")
        async with protobind.connect(url, options={"tls_ca": cert}) as channel:  # HTTP/1.1
            assert (
                await ConformanceServiceClient(channel).unary(Request(text="tls"), timeout=5)
            ).text == "tls"
        async with httpx.AsyncClient(
            base_url=url, verify=ssl.create_default_context(cafile=cert), http2=True
        ) as h2:
            answer = await h2.post(f"{SERVICE}/Unary", json={"text": "h2"})
        assert (answer.http_version, answer.json()["text"]) == ("HTTP/2", "h2")  # ALPN chose h2
        if asgi_server in GRPC_SERVERS:
            credentials = grpc.ssl_channel_credentials(pem)
            async with grpc.aio.secure_channel(urlsplit(url).netloc, credentials) as secure:
                unary = secure.unary_unary(
                    f"{SERVICE}/Unary",
                    request_serializer=Request.SerializeToString,
                    response_deserializer=Response.FromString,
                )
                assert (await unary(Request(text="g"), timeout=5)).text == "g"


@pytest.mark.parametrize("asgi_server", SERVERS)
async def test_idle_keep_alive_connections_are_closed(
    asgi_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the keep-alive idle time (75 s) is shortened here, for each server where it is set
    monkeypatch.setattr(protobind.http._server, "_KEEP_ALIVE", 0.5)
    monkeypatch.setattr(protobind.http._asgi_servers, "_KEEP_ALIVE", 0.5)
    async with serving(asgi_server) as (url, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(url).port or 0)
        try:
            writer.write(
                f"POST {SERVICE}/Unary HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                "content-length: 2\r\n\r\n{}".encode()
            )
            await writer.drain()
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).startswith(b"HTTP/1.1 200")
            # the server closes the idle connection: read() returns at its end (bounded, not timed)
            await asyncio.wait_for(reader.read(), 20)
            assert reader.at_eof()
        finally:
            writer.close()


@pytest.mark.parametrize("asgi_server", ("hypercorn", "granian"))
async def test_options_a_server_cannot_honour_are_refused(asgi_server: str) -> None:
    for option in ("max_connections=10", "http_parser=h11"):
        with pytest.raises(ValueError, match=f"applies to asgi_server=uvicorn only: {asgi_server}"):
            await protobind.Server([Conformance()]).start(
                f"http://127.0.0.1:0?asgi_server={asgi_server}&{option}"
            )
    with pytest.raises(ValueError, match="asgi_server must be one of uvicorn, hypercorn, granian"):
        await protobind.Server([Conformance()]).start("http://127.0.0.1:0?asgi_server=daphne")


async def test_granian_leaves_the_applications_logging_alone() -> None:
    root = logging.getLogger()
    handlers = list(root.handlers)
    stream = logging.StreamHandler()
    root.addHandler(stream)
    try:
        async with serving("granian") as (url, _), protobind.connect(url) as channel:
            await ConformanceServiceClient(channel).unary(Request(), timeout=5)
        assert root.handlers == [*handlers, stream]
        assert not getattr(stream.stream, "closed", False)
        assert logging.getLogger("_granian").handlers == []  # no console handler of its own
    finally:
        root.removeHandler(stream)


# --- soak: concurrent streams both ways, numbered, checked for order and completion ------------------

STREAMS = 16
MESSAGES = 100


@pytest.mark.parametrize("asgi_server", SERVERS)
async def test_soak_connect_bidi_streams_keep_order_and_complete(asgi_server: str) -> None:
    async with (
        serving(asgi_server) as (url, _),
        protobind.connect(url, options={"http2": "streams"}) as channel,
    ):
        client = ConformanceServiceClient(channel)

        async def one(n: int) -> None:
            requests: asyncio.Queue[Request | None] = asyncio.Queue()

            async def outgoing() -> AsyncIterator[Request]:
                while (request := await requests.get()) is not None:
                    yield request

            replies = client.bidi_stream(outgoing(), timeout=60)
            for i in range(MESSAGES):
                await requests.put(Request(text=f"{n}:{i}"))
                assert (await anext(replies)).text == f"{n}:{i}"
            await requests.put(None)
            assert [r async for r in replies] == []

        # bounded: a hung stream fails the test instead of waiting for ever
        await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(STREAMS))), 120)


@pytest.mark.parametrize("asgi_server", GRPC_SERVERS)
async def test_soak_grpc_bidi_and_client_streams_keep_order_and_complete(asgi_server: str) -> None:
    async with serving(asgi_server) as (url, _), grpc.aio.insecure_channel(urlsplit(url).netloc) as channel:
        bidi = _grpc_bidi(channel)
        client_stream = channel.stream_unary(
            f"{SERVICE}/ClientStream",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )

        async def duplex(n: int) -> None:
            call = bidi(timeout=60)
            for i in range(MESSAGES):
                await call.write(Request(text=f"{n}:{i}"))
                assert (await call.read()).text == f"{n}:{i}"
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() is grpc.StatusCode.OK

        async def upload(n: int) -> None:
            texts = [f"{n}:{i}" for i in range(MESSAGES)]
            reply = await client_stream(iter([Request(text=t) for t in texts]), timeout=60)
            assert (reply.request_count, reply.text) == (MESSAGES, ",".join(texts))  # all, in order

        work = [duplex(n) for n in range(STREAMS)] + [upload(n) for n in range(STREAMS)]
        await asyncio.wait_for(asyncio.gather(*work), 120)
