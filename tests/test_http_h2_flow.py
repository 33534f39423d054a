"""Flow control of the response bodies the http:// port sends over HTTP/2, which protobind frames
itself on uvicorn's zttp connections (http/_h2send.py), driven by a raw HTTP/2 peer (the ``h2``
package, which fails the connection if the server sends beyond a window)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct

import h2.settings

from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response

from .h2raw import RawH2, connect_headers, grpc_frame, raw_h2, serving

SERVICE = "/protobind.conformance.v1.ConformanceService"
INITIAL_WINDOW_SIZE = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE
FLOW_CONTROL_ERROR = 0x3


async def _settled(peer: RawH2, window: int) -> None:
    """Announce ``window`` as the initial stream window and read until the server acknowledged it."""
    peer.conn.update_settings({INITIAL_WINDOW_SIZE: window})
    await peer.flush()
    while peer.conn.local_settings.initial_window_size != window:
        data = await peer.reader.read(65536)
        assert data, "the server closed the connection"
        for event in peer.conn.receive_data(data):
            peer._on(event)
        await peer.flush()


def _grpc_message(body: bytearray) -> Response:
    flags, size = struct.unpack(">BI", body[:5])
    assert flags == 0 and len(body) == 5 + size
    return Response.FromString(bytes(body[5:]))


async def test_responses_larger_than_the_peers_windows_wait_for_its_window_updates() -> None:
    # a stream window of 1,000 bytes and the connection's 64 KiB, against two responses of
    # 300 kB each: every byte beyond the windows waits for the peer's WINDOW_UPDATEs, the gRPC
    # trailers and the Connect END_STREAM go out after the last of it
    size = 300_000
    big = Request(text="big", behavior=Behavior(response_size=size))
    async with serving() as port, raw_h2(port) as peer:
        await asyncio.wait_for(_settled(peer, 1000), 5)
        grpc_stream = peer.open(f"{SERVICE}/Unary", grpc_frame(big))
        connect_stream = peer.open(
            "",
            json.dumps({"text": "big", "behavior": {"responseSize": size}}).encode(),
            headers=connect_headers(f"{SERVICE}/Unary"),
        )
        await peer.flush()
        await asyncio.wait_for(peer.read_until([grpc_stream, connect_stream]), 20)
        grpc_answer, connect_answer = peer.answers[grpc_stream], peer.answers[connect_stream]
        assert grpc_answer.status == "0" and _grpc_message(grpc_answer.body).payload == b"x" * size
        assert connect_answer.headers[":status"] == "200"
        assert base64.b64decode(json.loads(connect_answer.body)["payload"]) == b"x" * size
        assert peer.terminated is None


async def test_a_larger_initial_window_releases_a_held_response() -> None:
    # a stream window of 0: the response waits whole until the peer's SETTINGS open the windows
    # of its streams (no WINDOW_UPDATE for the stream at all)
    async with serving() as port, raw_h2(port) as peer:
        await asyncio.wait_for(_settled(peer, 0), 5)
        stream = peer.open(f"{SERVICE}/Unary", grpc_frame(Request(text="held")))
        await peer.flush()
        await asyncio.sleep(0.3)
        data = await asyncio.wait_for(peer.reader.read(65536), 5)
        for event in peer.conn.receive_data(data):
            peer._on(event)
        assert not peer.answers[stream].body and not peer.answers[stream].done
        await asyncio.wait_for(_settled(peer, 65_535), 5)
        await asyncio.wait_for(peer.read_until([stream]), 5)
        assert peer.answers[stream].status == "0"
        assert _grpc_message(peer.answers[stream].body).text == "held"


async def test_window_overflows_are_refused_as_zttp_refuses_them() -> None:
    # a WINDOW_UPDATE taking a stream's window past 2^31 - 1 resets that stream
    # (FLOW_CONTROL_ERROR) and the others go on; one taking the connection's past it ends the
    # connection (GOAWAY FLOW_CONTROL_ERROR)
    slow = Request(text="slow", behavior=Behavior(sleep_ms=1000))
    async with serving() as port, raw_h2(port) as peer:
        await asyncio.wait_for(peer.settings(), 5)
        reset = peer.open(f"{SERVICE}/Unary", grpc_frame(slow))
        answered = peer.open(f"{SERVICE}/Unary", grpc_frame(Request(text="fine")))
        await peer.flush()
        await asyncio.sleep(0.2)
        peer.writer.write(struct.pack(">IBII", (4 << 8) | 0x8, 0, reset, 2**31 - 1))
        await asyncio.wait_for(peer.read_until([reset, answered]), 5)
        assert peer.answers[reset].reset == FLOW_CONTROL_ERROR
        assert peer.answers[answered].status == "0"
        assert peer.terminated is None
        peer.writer.write(struct.pack(">IBII", (4 << 8) | 0x8, 0, 0, 2**31 - 1))
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(peer.read_until([peer.open(f"{SERVICE}/Unary", None)]), 5)
        assert peer.terminated == FLOW_CONTROL_ERROR


async def test_the_connection_window_is_open_wide_from_the_start() -> None:
    # zttp opens 64 KiB of the connection's window only, so 64 calls of 16 KiB went out four at
    # a time; the server opens it to 16 MiB with its SETTINGS
    async with serving() as port, raw_h2(port) as peer:
        await asyncio.wait_for(peer.settings(), 5)
        while peer.conn.outbound_flow_control_window <= 65_535:
            data = await asyncio.wait_for(peer.reader.read(65536), 5)
            assert data, "the server closed the connection"
            for event in peer.conn.receive_data(data):
                peer._on(event)
        assert peer.conn.outbound_flow_control_window == 16 * 1024 * 1024
        body = grpc_frame(Request(payload=b"w" * 16_000))
        streams = [peer.open(f"{SERVICE}/Unary", body) for _ in range(32)]  # 512 kB at once
        await peer.flush()
        await asyncio.wait_for(peer.read_until(streams), 10)
        assert all(peer.answers[s].status == "0" for s in streams)
