"""protobind's NATS transport (protobind.nats._transport): what it writes arrives whole and in
order whatever the socket takes at once, and what it reads is handed on whole, then the end."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlparse

from protobind.nats._transport import Reader, Transport


async def _server(received: asyncio.Queue[bytes], hold: asyncio.Event) -> tuple[asyncio.Server, int]:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()  # read nothing until told: the client's socket buffer fills up
        data = bytearray()
        while chunk := await reader.read(1 << 16):
            data += chunk
        await received.put(bytes(data))
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_parts_larger_than_the_socket_takes_arrive_whole_and_in_order() -> None:
    async def run() -> None:
        received: asyncio.Queue[bytes] = asyncio.Queue()
        hold = asyncio.Event()
        server, port = await _server(received, hold)
        transport = Transport()
        await transport.connect(urlparse(f"nats://127.0.0.1:{port}"), 32768, 5)
        sent = []
        for batch in range(40):
            parts = [f"PUB s{batch} {n}\r\n".encode() + os.urandom(n % 97) for n in range(60)]
            parts.append(os.urandom(200_000))  # more than a socket takes at once
            transport.writelines(parts)
            sent.extend(parts)
        await asyncio.sleep(0.05)
        hold.set()
        await transport.drain()
        transport.close()
        assert await asyncio.wait_for(received.get(), 20) == b"".join(sent)
        server.close()
        await server.wait_closed()

    asyncio.run(run())


def test_the_reader_hands_on_every_chunk_then_the_end() -> None:
    async def run() -> None:
        reader = Reader(1 << 20, asyncio.get_running_loop())
        reader.feed_data(b"INFO {}\r\nrest")
        assert await reader.readline() == b"INFO {}\r\n"  # the handshake reads lines
        reader.chunked()
        reader.feed_data(b"-a")
        reader.feed_data(bytearray(b"-b"))
        assert await reader.take() == b"rest-a-b"
        waiting = asyncio.ensure_future(reader.take())
        await asyncio.sleep(0)
        assert not waiting.done()
        reader.feed_data(b"later")
        assert await waiting == b"later"
        reader.feed_data(b"last")
        reader.feed_eof()
        assert not reader.at_eof()
        assert await reader.take() == b"last"
        assert reader.at_eof()
        assert await reader.take() == b""

    asyncio.run(run())


def test_an_error_ends_the_reader() -> None:
    async def run() -> None:
        reader = Reader(1 << 20, asyncio.get_running_loop())
        reader.chunked()
        waiting = asyncio.ensure_future(reader.take())
        await asyncio.sleep(0)
        reader.set_exception(ConnectionResetError("gone"))
        for pending in (waiting, reader.take()):
            try:
                await pending
            except ConnectionResetError:
                pass
            else:
                raise AssertionError("the error was not raised")

    asyncio.run(run())
