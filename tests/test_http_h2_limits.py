"""Limits of the http:// port over HTTP/2 (issue 21), driven by a raw HTTP/2 peer: the server's
stream-count limit (SETTINGS_MAX_CONCURRENT_STREAMS, streams beyond it refused), an oversized
header block, ``body_timeout`` for a stream that never sends its body, idle connections closed.
Rapid reset and the lifetime stream limit are in test_http_grpc.py."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h2.errors
import h2.settings
import pytest

import protobind
import protobind.http._server
from protobind import Code
from protobind.conformance.v1.conformance_pb2 import Behavior, Request

from .h2raw import RawH2, connect_headers, grpc_frame, raw_h2, serving

SERVICE = "/protobind.conformance.v1.ConformanceService"
MAX_CONCURRENT_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
MAX_HEADER_LIST_SIZE = h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE


async def _works(port: int) -> None:
    """A fresh connection gets an ordinary call answered."""
    async with raw_h2(port) as peer:
        stream = peer.open(f"{SERVICE}/Unary", grpc_frame(Request(text="ok")))
        await peer.flush()
        await asyncio.wait_for(peer.read_until([stream]), 5)
        assert peer.answers[stream].status == "0"


async def test_streams_beyond_max_concurrent_streams_are_refused() -> None:
    async with serving() as port, raw_h2(port) as peer:
        settings = await asyncio.wait_for(peer.settings(), 5)
        limit = settings[MAX_CONCURRENT_STREAMS]
        assert 0 < limit <= 1000
        # a client that ignores the limit: h2 itself would refuse to open the extra streams
        peer.conn.remote_settings[MAX_CONCURRENT_STREAMS] = limit + 100
        peer.conn.remote_settings.acknowledge()
        slow = grpc_frame(Request(text="slow", behavior=Behavior(sleep_ms=1500)))
        streams = [peer.open(f"{SERVICE}/Unary", slow) for _ in range(limit + 10)]
        await peer.flush()
        await asyncio.wait_for(peer.read_until(streams), 20)
        answered = [s for s in streams if peer.answers[s].status == "0"]
        refused = [s for s in streams if peer.answers[s].reset == h2.errors.ErrorCodes.REFUSED_STREAM]
        assert (len(answered), len(refused)) == (limit, 10)
        assert peer.terminated is None
        # the connection goes on serving once streams are free again
        again = peer.open(f"{SERVICE}/Unary", grpc_frame(Request(text="again")))
        await peer.flush()
        await asyncio.wait_for(peer.read_until([again]), 5)
        assert peer.answers[again].status == "0"


async def test_a_header_block_over_the_limit_closes_only_its_connection() -> None:
    # zttp's own bound on the header list (SETTINGS_MAX_HEADER_LIST_SIZE), not max_header_size
    async with serving(max_header_size=1024 * 1024) as port, raw_h2(port) as bystander, raw_h2(port) as peer:
        settings = await asyncio.wait_for(peer.settings(), 5)
        limit = settings[MAX_HEADER_LIST_SIZE]
        assert limit <= 256 * 1024
        # just under the limit is served
        fits = peer.open(f"{SERVICE}/Unary", grpc_frame(Request()), extra=(("x-big", "a" * (limit // 2)),))
        await peer.flush()
        await asyncio.wait_for(peer.read_until([fits]), 5)
        assert peer.answers[fits].status == "0"
        # over it: the connection is closed with GOAWAY (a 431 or a reset would do as well)
        over = peer.open(f"{SERVICE}/Unary", grpc_frame(Request()), extra=(("x-big", "a" * (limit + 1024)),))
        await peer.flush()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(peer.read_until([over]), 5)
        answer = peer.answers[over]
        assert (
            peer.terminated is not None or answer.reset is not None or answer.headers.get(":status") == "431"
        ), answer
        assert answer.status != "0"
        # the other connection, and new ones, are served
        stream = bystander.open(f"{SERVICE}/Unary", grpc_frame(Request(text="still")))
        await bystander.flush()
        await asyncio.wait_for(bystander.read_until([stream]), 5)
        assert bystander.answers[stream].status == "0"
        await _works(port)


async def test_body_timeout_over_http2() -> None:
    # streams that send their headers and never their body: a gRPC call gets DEADLINE_EXCEEDED, a
    # Connect call 408; the connection's other streams are served meanwhile
    async with serving(body_timeout=0.3) as port, raw_h2(port) as peer:
        grpc_stream = peer.open(f"{SERVICE}/Unary", b"", end=False)
        connect_stream = peer.open("", b"", end=False, headers=connect_headers(f"{SERVICE}/Unary"))
        server_stream = peer.open(f"{SERVICE}/ServerStream", b"\x00\x00", end=False)
        good = peer.open(f"{SERVICE}/Unary", grpc_frame(Request(text="good")))
        await peer.flush()
        await asyncio.wait_for(peer.read_until([good]), 5)
        assert peer.answers[good].status == "0"
        await asyncio.wait_for(peer.read_until([grpc_stream, connect_stream, server_stream]), 10)
        for stream in (grpc_stream, server_stream):
            answer = peer.answers[stream]
            assert answer.status == str(int(Code.DEADLINE_EXCEEDED)), answer
            assert "body_timeout" in answer.headers["grpc-message"]
        assert peer.answers[connect_stream].headers[":status"] == "408"
        assert peer.terminated is None


async def test_idle_http2_connection_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    # the keep-alive timeout (75 s by default) applies to HTTP/2 connections too; shortened here
    monkeypatch.setattr(protobind.http._server, "_KEEP_ALIVE", 0.3)
    async with serving() as port, raw_h2(port) as peer:
        stream = peer.open(f"{SERVICE}/Unary", grpc_frame(Request(text="once")))
        await peer.flush()
        await asyncio.wait_for(peer.read_until([stream]), 5)
        await asyncio.wait_for(_until_closed(peer), 10)
        assert peer.terminated == h2.errors.ErrorCodes.NO_ERROR  # a GOAWAY first, saying no error
        await _works(port)


async def _until_closed(peer: RawH2) -> None:
    while True:
        data = await peer.reader.read(65536)
        if not data:
            return
        for event in peer.conn.receive_data(data):
            peer._on(event)


async def test_headers_over_max_header_size_are_refused_per_stream() -> None:
    """Over HTTP/2 the stream is answered, the connection kept: a Connect call gets 431 and
    ``resource_exhausted``, a gRPC call RESOURCE_EXHAUSTED; neither answer repeats the headers."""
    filler = tuple((f"x-filler-{i}", "v" * 968) for i in range(12))
    async with serving(max_header_size=10_000) as port, raw_h2(port) as peer:
        grpc_stream = peer.open(f"{SERVICE}/Unary", grpc_frame(Request()), extra=filler)
        connect_stream = peer.open(
            "", b'{"text":"x"}', headers=[*connect_headers(f"{SERVICE}/Unary"), *filler]
        )
        fits = peer.open(f"{SERVICE}/Unary", grpc_frame(Request(text="fits")), extra=filler[:8])
        await peer.flush()
        await asyncio.wait_for(peer.read_until([grpc_stream, connect_stream, fits]), 5)
        grpc_answer = peer.answers[grpc_stream].headers
        assert grpc_answer["grpc-status"] == str(int(Code.RESOURCE_EXHAUSTED)), grpc_answer
        assert "max_header_size" in grpc_answer["grpc-message"] and "x-filler" not in str(grpc_answer)
        assert peer.answers[connect_stream].headers[":status"] == "431"
        assert peer.answers[fits].status == "0"
        assert peer.terminated is None


async def test_responses_of_one_loop_step_leave_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvicorn's HTTP/2 protocol writes each response in three pieces (HEADERS, DATA, END_STREAM),
    # each a send system call; the server holds the writes of an event-loop step and sends them
    # together (_h2drain.StepWrites). Counted on the server's socket transport (the real one,
    # whose writes still happen): at most one write per response, where there were three.
    from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol

    transport_class: Any = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    real_write = transport_class.write
    writes: list[int] = []

    def counted(self: Any, data: bytes) -> None:
        if isinstance(self.get_protocol(), ZttpH2Protocol):
            writes.append(len(data))
        real_write(self, data)

    monkeypatch.setattr(transport_class, "write", counted)
    async with serving() as port, raw_h2(port) as peer:
        await asyncio.wait_for(peer.settings(), 5)
        await asyncio.sleep(0.2)  # the server's SETTINGS and its acknowledgement of ours are out
        before = len(writes)
        body = b'{"text": "one write"}'
        headers = connect_headers(f"{SERVICE}/Unary")
        streams = [peer.open("", body, headers=headers) for _ in range(8)]
        await peer.flush()
        await asyncio.wait_for(peer.read_until(streams), 10)
        assert all(peer.answers[s].headers.get(":status") == "200" for s in streams)
        assert 1 <= len(writes) - before <= len(streams)
