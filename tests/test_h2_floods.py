"""HTTP/2 peers that ask for answers and read none: the "ping flood" and "settings flood"
(CVE-2019-9512, CVE-2019-9515). Every PING and SETTINGS frame asks for an acknowledgement; a peer
that sends them without reading made both HTTP/2 servers (the native gRPC engine on grpc://, and
uvicorn with zttp on http://) queue the answers in memory without bound: a million PINGs left
17 MB queued on the connection. Such a connection is now ended (``grpc/_h2.py`` and
``http/_h2send.py``, ``UNREAD_REPLIES``) while other connections are served. Raw sockets (h2c
with prior knowledge on http://); every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

import protobind
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import Conformance

#: a PING frame (8 bytes of opaque data) and an empty SETTINGS frame, both asking for an ACK
FLOODS = {
    "ping": b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678",
    "settings": b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
}
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@contextlib.asynccontextmanager
async def serving(url: str) -> AsyncIterator[tuple[int, ConformanceServiceClient]]:
    server = protobind.Server([Conformance()])
    (bound,) = await server.start(url)
    try:
        async with protobind.connect(bound) as channel:
            yield urlsplit(bound).port or 0, ConformanceServiceClient(channel)
    finally:
        await server.stop(0)


#: both HTTP/2 servers
SERVERS = ["grpc://127.0.0.1:0?engine=native", "http://127.0.0.1:0"]


@pytest.mark.parametrize("url", SERVERS)
@pytest.mark.parametrize("flood", sorted(FLOODS))
async def test_a_flood_of_frames_to_answer_from_a_peer_that_reads_nothing_ends_its_connection(
    flood: str, url: str
) -> None:
    loop = asyncio.get_running_loop()
    async with serving(url) as (port, client):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room for what is not read
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, PREFACE + FLOODS["settings"])
            ended = False
            for _ in range(40):  # at most a million frames; with the limit the connection ends first
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, FLOODS[flood] * 25_000), 10)
                except ConnectionError:
                    ended = True
                    break
            # the server answers other connections meanwhile
            assert (await client.unary(Request(text="after"), timeout=10)).text == "after"
            if not ended:  # what was queued can be read now; then the connection must end
                deadline = loop.time() + 10
                while True:
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), deadline - loop.time())
                    except ConnectionError:
                        break
                    except asyncio.TimeoutError:
                        pytest.fail("the flooding connection is still open")
                    if not data:
                        break
        finally:
            sock.close()


@pytest.mark.parametrize("url", SERVERS)
async def test_a_peer_that_reads_its_answers_keeps_its_connection(url: str) -> None:
    """The limit counts only answers queued while the peer reads nothing: a peer that sends many
    PINGs and reads its acknowledgements is served as before."""
    loop = asyncio.get_running_loop()
    async with serving(url) as (port, client):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(PREFACE + FLOODS["settings"])
            received = 0

            async def read() -> None:
                nonlocal received
                while received < 17 * 50_000:
                    data = await reader.read(1 << 16)
                    assert data, "the server closed a connection that reads what it is sent"
                    received += len(data)

            reading = loop.create_task(read())
            for _ in range(10):
                writer.write(FLOODS["ping"] * 5_000)
                await writer.drain()
            await asyncio.wait_for(reading, 30)
            assert (await client.unary(Request(text="after"), timeout=10)).text == "after"
        finally:
            writer.close()
