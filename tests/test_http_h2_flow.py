"""Flow control on the http:// port over HTTP/2 (uvicorn's zttp connections, http/_h2drain.py),
driven by a raw HTTP/2 peer (the ``h2`` package, which fails the connection if the server sends
beyond a window)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import protobind
from protobind.conformance.v1.conformance_pb2 import Request

from .conformance import Conformance
from .h2raw import grpc_frame, raw_h2

SERVICE = "/protobind.conformance.v1.ConformanceService"


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[int]:
    server = protobind.Server([Conformance()], transport_options={"http": options})
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        yield urlsplit(url).port or 0
    finally:
        await server.stop(grace=1.0)


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
