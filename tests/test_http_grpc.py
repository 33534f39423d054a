"""gRPC and gRPC-Web on the http:// port (issue 21): stock grpcio and grpclib clients, raw gRPC-Web
requests as a browser library sends them, Connect over HTTP/2, and hostile HTTP/2 peers. The
conformance matrix runs every case through grpcio on this port too (column ``grpcio@http``)."""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

import protobind
from protobind import Code
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response

from .h2raw import grpc_frame, raw_h2
from .servers import serving
from .support import eventually

SERVICE = "/protobind.conformance.v1.ConformanceService"


def _channel(url: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(urlsplit(url).netloc)


def _call(channel: grpc.aio.Channel, kind: str, name: str) -> Any:
    factory = getattr(channel, kind)
    return factory(
        f"{SERVICE}/{name}",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )


# --- stock grpcio -----------------------------------------------------------------------------------


async def test_grpcio_calls_every_kind_on_the_http_port() -> None:
    async with serving("http") as (url, _), _channel(url) as channel:
        unary = await _call(channel, "unary_unary", "Unary")(Request(text="one"), timeout=5)
        assert (unary.text, unary.transport) == ("one", "http")
        stream = _call(channel, "unary_stream", "ServerStream")(
            Request(text="s", behavior=Behavior(stream_count=3)), timeout=5
        )
        assert [r.index async for r in stream] == [0, 1, 2]
        client = await _call(channel, "stream_unary", "ClientStream")(
            iter([Request(text="a"), Request(text="b")]), timeout=5
        )
        assert client.request_count == 2
        # Connect over HTTP/1.1 on the same port still answers
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.post(f"{SERVICE}/Unary", json={"text": "connect"})
        assert answer.json()["text"] == "connect"


async def test_bidi_is_full_duplex_over_http2() -> None:
    # each request is sent only after the answer to the one before was read: a server that waited
    # for the whole request stream would never answer the first
    async with serving("http") as (url, _), _channel(url) as channel:
        call = _call(channel, "stream_stream", "BidiStream")(timeout=5)
        for i in range(5):
            await call.write(Request(text=f"m{i}"))
            response = await call.read()
            assert (response.text, response.index) == (f"m{i}", i)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() is grpc.StatusCode.OK


async def test_error_details_and_trailers_reach_grpcio() -> None:
    async with serving("http") as (url, _), _channel(url) as channel:
        request = Request(
            text="x",
            behavior=Behavior(
                error_code=int(Code.NOT_FOUND), error_message="gone é", error_detail_reason="R"
            ),
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "unary_unary", "Unary")(request, metadata=(("x-echo-k", "v"),), timeout=5)
    error = caught.value
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "gone é"
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["x-echo-k-trailer"] == "v"
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "R"
    assert (error.initial_metadata() or ()) and dict(error.initial_metadata())["x-echo-k-header"] == "v"


async def test_deadline_reaches_the_handler_and_cancels_it() -> None:
    async with serving("http") as (url, service), _channel(url) as channel:
        request = Request(text="slow", behavior=Behavior(sleep_ms=5000))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, "unary_unary", "Unary")(request, timeout=0.3)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert await eventually(lambda: "slow" in service.cancelled)
        seen = await _call(channel, "unary_unary", "Unary")(Request(text="t"), timeout=5)
        assert 4.0 < seen.time_remaining <= 5.0


async def test_protobind_grpc_client_calls_the_http_port() -> None:
    from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

    async with serving("http") as (url, _), protobind.connect(url.replace("http://", "grpc://")) as channel:
        client = ConformanceServiceClient(channel)
        replies = [r.text async for r in client.bidi_stream([Request(text="a"), Request(text="b")])]
    assert replies == ["a", "b"]


async def test_grpclib_calls_the_http_port() -> None:
    # grpclib is a dev dependency: imported, not importorskip'd, so a missing install fails here
    from grpclib.client import Channel, StreamStreamMethod, UnaryStreamMethod, UnaryUnaryMethod
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    async with serving("http") as (url, _):
        parts = urlsplit(url)
        channel = Channel(parts.hostname, parts.port)
        try:
            unary = UnaryUnaryMethod(channel, f"{SERVICE}/Unary", Request, Response)
            assert (await unary(Request(text="lib"), timeout=5)).text == "lib"
            stream = UnaryStreamMethod(channel, f"{SERVICE}/ServerStream", Request, Response)
            replies = await stream(Request(text="s", behavior=Behavior(stream_count=3)), timeout=5)
            assert [r.index for r in replies] == [0, 1, 2]
            failing = Request(
                text="x",
                behavior=Behavior(
                    error_code=int(Code.NOT_FOUND), error_message="gone", error_detail_reason="R"
                ),
            )
            with pytest.raises(GRPCError) as caught:
                await unary(failing, timeout=5)
            assert (caught.value.status, caught.value.message) == (Status.NOT_FOUND, "gone")
            # grpclib decodes grpc-status-details-bin into the detail messages themselves
            assert [type(d) for d in caught.value.details or ()] == [error_details_pb2.ErrorInfo]
            assert caught.value.details[0].reason == "R"
            bidi = StreamStreamMethod(channel, f"{SERVICE}/BidiStream", Request, Response)
            async with bidi.open(timeout=5) as call:
                await call.send_message(Request(text="first"))
                assert (await call.recv_message()).text == "first"
                await call.send_message(Request(text="second"), end=True)
                assert (await call.recv_message()).text == "second"
        finally:
            channel.close()


# --- gRPC needs HTTP/2; bad input -------------------------------------------------------------------


async def test_grpc_over_http1_is_refused_with_a_clear_status() -> None:
    async with serving("http") as (url, _), httpx.AsyncClient(base_url=url) as http:
        answer = await http.post(
            f"{SERVICE}/Unary",
            content=grpc_frame(Request(text="x")),
            headers={"content-type": "application/grpc", "te": "trailers"},
        )
    assert answer.status_code == 200
    assert answer.headers["grpc-status"] == str(int(Code.UNIMPLEMENTED))
    assert "HTTP/2" in answer.headers["grpc-message"]


async def test_malformed_grpc_timeout_is_invalid_argument() -> None:
    async with serving("http") as (url, _), httpx.AsyncClient(base_url=url, http1=False, http2=True) as http:
        answer = await http.post(
            f"{SERVICE}/Unary",
            content=grpc_frame(Request(text="x")),
            headers={"content-type": "application/grpc", "te": "trailers", "grpc-timeout": "soon"},
        )
        assert answer.http_version == "HTTP/2"
    # httpx does not show HTTP/2 trailers: a gRPC-Web request carries the same check in the body
    async with serving("http") as (url, _), httpx.AsyncClient(base_url=url) as http:
        answer = await http.post(
            f"{SERVICE}/Unary",
            content=grpc_frame(Request(text="x")),
            headers={"content-type": "application/grpc-web+proto", "grpc-timeout": "99999999999S"},
        )
    _, trailers = _web_frames(answer.content)
    assert trailers["grpc-status"] == str(int(Code.INVALID_ARGUMENT))


# --- gRPC-Web ---------------------------------------------------------------------------------------


def _web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The messages and the trailers of a gRPC-Web response body."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        data, body = body[5 : 5 + size], body[5 + size :]
        if flags & 0x80:
            for line in data.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip()] = value.strip()
        else:
            messages.append(data)
    return messages, trailers


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_grpc_web_binary_unary_stream_and_error(http2: bool) -> None:
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-echo-k": "v"}
    async with (
        serving("http") as (url, _),
        httpx.AsyncClient(base_url=url, http1=not http2, http2=http2) as http,
    ):
        answer = await http.post(f"{SERVICE}/Unary", content=grpc_frame(Request(text="web")), headers=headers)
        assert answer.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert answer.headers["content-type"] == "application/grpc-web+proto"
        assert answer.headers["x-echo-k-header"] == "v"
        messages, trailers = _web_frames(answer.content)
        assert [Response.FromString(m).text for m in messages] == ["web"]
        assert trailers["grpc-status"] == "0" and trailers["x-echo-k-trailer"] == "v"

        stream = Request(
            text="s", behavior=Behavior(stream_count=3, error_after=2, error_code=int(Code.ABORTED))
        )
        answer = await http.post(f"{SERVICE}/ServerStream", content=grpc_frame(stream), headers=headers)
        messages, trailers = _web_frames(answer.content)
        assert [Response.FromString(m).index for m in messages] == [0, 1]
        assert trailers["grpc-status"] == str(int(Code.ABORTED))

        failing = Request(
            behavior=Behavior(
                error_code=int(Code.PERMISSION_DENIED), error_message="no", error_detail_reason="R"
            )
        )
        answer = await http.post(f"{SERVICE}/Unary", content=grpc_frame(failing), headers=headers)
        messages, trailers = _web_frames(answer.content)
        assert messages == [] and trailers["grpc-status"] == str(int(Code.PERMISSION_DENIED))
        assert trailers["grpc-message"] == "no"
        status = status_pb2.Status.FromString(base64.b64decode(trailers["grpc-status-details-bin"] + "=="))
        assert status.code == int(Code.PERMISSION_DENIED) and len(status.details) == 1


async def test_grpc_web_text_is_base64_both_ways() -> None:
    headers = {"content-type": "application/grpc-web-text", "accept": "application/grpc-web-text"}
    # two base64 pieces, each padded, as a client that encodes per message sends them
    body = base64.b64encode(grpc_frame(Request(text="t", behavior=Behavior(stream_count=2))))
    async with serving("http") as (url, _), httpx.AsyncClient(base_url=url) as http:
        answer = await http.post(f"{SERVICE}/ServerStream", content=body, headers=headers)
        assert answer.headers["content-type"] == "application/grpc-web-text"
        raw = b"".join(
            base64.b64decode(piece + b"=" * (-len(piece) % 4)) for piece in _pieces(answer.content)
        )
        messages, trailers = _web_frames(raw)
        assert [Response.FromString(m).index for m in messages] == [0, 1]
        assert trailers["grpc-status"] == "0"
        answer = await http.post(f"{SERVICE}/Unary", content=b"!!not base64!!", headers=headers)
        raw = b"".join(base64.b64decode(p + b"=" * (-len(p) % 4)) for p in _pieces(answer.content))
        assert _web_frames(raw)[1]["grpc-status"] == str(int(Code.INVALID_ARGUMENT))


def _pieces(text: bytes) -> list[bytes]:
    """Split concatenated padded base64 pieces."""
    pieces, start = [], 0
    for i in range(0, len(text), 4):
        if text[i : i + 4].endswith(b"="):
            pieces.append(text[start : i + 4])
            start = i + 4
    if start < len(text):
        pieces.append(text[start:])
    return pieces


async def test_grpc_web_bidi_over_http1_is_refused() -> None:
    async with serving("http") as (url, _), httpx.AsyncClient(base_url=url) as http:
        answer = await http.post(
            f"{SERVICE}/BidiStream",
            content=grpc_frame(Request(text="x")),
            headers={"content-type": "application/grpc-web+proto"},
        )
    _, trailers = _web_frames(answer.content)
    assert trailers["grpc-status"] == str(int(Code.UNIMPLEMENTED))
    assert "full-duplex HTTP/2" in trailers["grpc-message"]


async def test_cors_lets_a_browser_grpc_web_client_call_and_read_the_status() -> None:
    # an explicit allow list (not "*", which mirrors whatever a preflight asks for): gRPC-Web's own
    # headers must be allowed by themselves, and its status headers exposed
    origin = {"origin": "https://app.example"}
    options = {"cors_origins": "https://app.example", "cors_allow_headers": "x-app"}
    async with serving("http", **options) as (url, _), httpx.AsyncClient(base_url=url) as http:
        preflight = await http.options(
            f"{SERVICE}/Unary",
            headers={
                **origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web,x-user-agent,grpc-timeout,x-app",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "x-app"} <= allowed
        refused = await http.options(
            f"{SERVICE}/Unary",
            headers={
                **origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-other",
            },
        )
        assert refused.status_code == 400
        answer = await http.post(
            f"{SERVICE}/Unary",
            content=grpc_frame(Request(text="cors")),
            headers={**origin, "content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
    messages, trailers = _web_frames(answer.content)
    assert [Response.FromString(m).text for m in messages] == ["cors"] and trailers["grpc-status"] == "0"


# --- Connect over HTTP/2 ----------------------------------------------------------------------------


async def test_connect_unary_over_http2() -> None:
    async with serving("http") as (url, _), httpx.AsyncClient(base_url=url, http1=False, http2=True) as http:
        answer = await http.post(f"{SERVICE}/Unary", json={"text": "h2"})
    assert answer.http_version == "HTTP/2"
    assert answer.json()["text"] == "h2"


# --- hostile HTTP/2 peers ---------------------------------------------------------------------------


async def test_rapid_reset_flood_on_the_http_port_leaves_good_calls_working() -> None:
    # 2,000 streams opened and reset at once on one connection (HTTP/2 "rapid reset"), while a second
    # connection makes ordinary gRPC calls. zttp counts the resets and closes the flooding
    # connection; the good calls go on. Bound: each good call within 5 s.
    async with (
        serving("http") as (url, _),
        _channel(url) as channel,
        raw_h2(urlsplit(url).port or 0) as attacker,
    ):
        unary = _call(channel, "unary_unary", "Unary")
        assert (await unary(Request(text="before"), timeout=5)).text == "before"
        closed = False
        try:
            for _ in range(20):
                for _ in range(100):
                    attacker.reset(attacker.open(f"{SERVICE}/Unary", None, end=False))
                await attacker.flush()
                await asyncio.sleep(0)
            # the server's answer to the flood: GOAWAY, then the connection closes
            await asyncio.wait_for(attacker.read_until([1]), 5)
        except ConnectionError:
            closed = True
        assert closed or attacker.terminated is not None
        for _ in range(10):
            assert (await unary(Request(text="after"), timeout=5)).text == "after"


async def test_connect_bidi_is_full_duplex_over_http2() -> None:
    # raw HTTP/2 (no Python Connect client speaks bidi): each request envelope goes out only after
    # the answer to the one before arrived
    import h2.connection
    import h2.events

    async with serving("http") as (url, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(url).port)
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", f"{SERVICE}/BidiStream"),
            (":authority", "127.0.0.1"),
            ("content-type", "application/connect+proto"),
            ("connect-protocol-version", "1"),
        ]
        conn.send_headers(stream, headers)
        received = bytearray()

        async def read_envelope() -> tuple[int, bytes]:
            while True:
                if len(received) >= 5:
                    flags, size = struct.unpack(">BI", received[:5])
                    if len(received) >= 5 + size:
                        data = bytes(received[5 : 5 + size])
                        del received[: 5 + size]
                        return flags, data
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                assert chunk, "the server closed the connection"
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        received.extend(event.data)
                writer.write(conn.data_to_send())

        try:
            for i in range(3):
                conn.send_data(stream, grpc_frame(Request(text=f"c{i}")))
                writer.write(conn.data_to_send())
                flags, data = await read_envelope()
                assert flags == 0 and Response.FromString(data).text == f"c{i}"
            conn.end_stream(stream)
            writer.write(conn.data_to_send())
            flags, data = await read_envelope()
            assert flags == 0x02 and data == b"{}"  # end of stream, no error
        finally:
            writer.close()


# --- long-lived HTTP/2 connections (zttp's lifetime stream limit) ------------------------------------


async def test_grpcio_soak_beyond_zttp_stream_limit_loses_no_call() -> None:
    # zttp closes an HTTP/2 connection after 4,096 streams as a "flood" (GOAWAY ENHANCE_YOUR_CALM),
    # failing the calls in flight; protobind retires connections before that (http/_h2drain.py).
    # One grpc.aio channel: 64 unary calls at a time, 4,608 in all, while 8 bidi streams exchange
    # 150 messages each (every request sent after the answer before was read) and server streams
    # deliver 20 messages each, in order. Bound: 120 s for the whole soak.
    async with serving("http") as (url, _), _channel(url) as channel:
        unary = _call(channel, "unary_unary", "Unary")
        server_stream = _call(channel, "unary_stream", "ServerStream")
        bidi = _call(channel, "stream_stream", "BidiStream")

        async def unary_worker(n: int) -> int:
            for i in range(72):
                answer = await unary(Request(text=f"{n}:{i}"), timeout=30)
                assert answer.text == f"{n}:{i}"
            return 72

        async def bidi_worker(n: int) -> int:
            call = bidi(timeout=60)
            for i in range(150):
                await call.write(Request(text=f"b{n}:{i}"))
                answer = await call.read()
                assert answer is not grpc.aio.EOF and answer.text == f"b{n}:{i}"
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            return 150

        async def stream_worker(n: int) -> int:
            for _ in range(8):
                call = server_stream(Request(text="s", behavior=Behavior(stream_count=20)), timeout=30)
                assert [r.index async for r in call] == list(range(20))
            return 8

        counts = await asyncio.wait_for(
            asyncio.gather(
                *(unary_worker(n) for n in range(64)),
                *(bidi_worker(n) for n in range(8)),
                *(stream_worker(n) for n in range(8)),
            ),
            120,
        )
    assert sum(counts[:64]) == 4608


async def test_idle_http2_connection_is_retired_with_a_clean_goaway() -> None:
    # a client making one call at a time: after 2,048 streams the server ends the connection at an
    # idle moment with GOAWAY NO_ERROR naming the last stream it took, and every call was answered
    async with serving("http") as (url, _), raw_h2(urlsplit(url).port or 0) as peer:
        body = grpc_frame(Request(text="x"))
        answered = 0
        last = 0
        for _ in range(4200):
            try:
                stream = peer.open(f"{SERVICE}/Unary", body)
            except Exception:  # h2 refuses to open streams once it received the GOAWAY
                break
            await peer.flush()
            try:
                await asyncio.wait_for(peer.read_until([stream]), 5)
            except ConnectionError:
                break
            if peer.answers[stream].status != "0":
                break
            answered += 1
            last = stream
        else:
            raise AssertionError("the connection was never retired")
        await asyncio.wait_for(_until_terminated(peer), 5)
    assert peer.terminated == 0  # NO_ERROR, not ENHANCE_YOUR_CALM (11)
    assert 2048 <= answered < 4096
    assert peer.last_stream_id == last


async def _until_terminated(peer: Any) -> None:
    while peer.terminated is None:
        data = await peer.reader.read(65536)
        if not data:
            return
        for event in peer.conn.receive_data(data):
            peer._on(event)
