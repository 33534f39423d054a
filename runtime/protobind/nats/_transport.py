"""nats-py's TCP transport, with fewer copies of every byte read and written.

nats-py reads through an ``asyncio.StreamReader``: each received chunk is copied into its buffer,
then copied out again 32 KiB at a time, and every batch of commands it writes is joined into one
bytes object before the socket copies it. On 16 KiB calls those copies are a large part of a
connection's work. Here:

- :class:`Reader` is the StreamReader nats-py reads its handshake with (``readline``); once the
  connection's read loop starts (:meth:`Reader.chunked`), it keeps each received chunk as the
  socket returned it, and :meth:`Reader.take` hands the read loop all of them at once (the chunk
  itself when there is one: no copy);
- :meth:`Transport.writelines` gives the socket a batch that holds large payloads as they are
  (``sendmsg``: the kernel gathers them) when nothing else waits to be written, and leaves any
  rest, and every other case, to asyncio's transport. The small commands between large payloads
  are joined as they are queued (``Connection.buffer``), since one buffer per protocol line costs
  the kernel more than the copy.

TLS connections (upgraded by nats-py after the INFO line) read and write as nats-py does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import ParseResult

from nats.aio.transport import TcpTransport

__all__ = ["LARGE", "READ_LIMIT", "Reader", "Transport"]

#: Bytes a connection holds unread before it stops reading from the socket (nats-py: 64 KiB,
#: twice its 32 KiB buffer; a single read of the socket may bring 256 KiB).
READ_LIMIT = 1 << 20
#: Parts of at least this many bytes are written as they are, not joined with the others.
LARGE = 2048
#: The most buffers handed to one ``sendmsg`` (Linux accepts 1,024).
_MAX_PARTS = 512


class Reader(asyncio.StreamReader):
    """See the module docstring."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self._chunks: list[bytes] | None = None  # None: StreamReader's own buffer is used
        self._held = 0

    def chunked(self) -> None:
        """From now on keep received chunks as they are, for :meth:`take`."""
        if self._chunks is None:
            buffered: bytearray = self._state._buffer
            self._chunks = [bytes(buffered)] if buffered else []
            self._held = len(buffered)
            buffered.clear()

    @property
    def _state(self) -> Any:
        """StreamReader's own fields (``_buffer``, ``_eof``, ``_paused``, ...), untyped."""
        return self

    def feed_data(self, data: Any) -> None:
        chunks = self._chunks
        if chunks is None:
            super().feed_data(data)
            return
        if not data:
            return
        chunks.append(bytes(data) if type(data) is not bytes else data)
        self._held += len(data)
        state = self._state
        state._wakeup_waiter()
        if self._held > 2 * state._limit and not state._paused and state._transport is not None:
            state._transport.pause_reading()
            state._paused = True

    def at_eof(self) -> bool:
        return super().at_eof() and not self._chunks

    async def take(self) -> bytes:
        """Everything received since the last call, once there is something (``b""`` at the
        end of the stream); raises what ended the connection."""
        chunks = self._chunks
        assert chunks is not None, "chunked() first"
        state = self._state
        if state._exception is not None:
            raise state._exception
        if not chunks:
            if state._eof:
                return b""
            await state._wait_for_data("take")
            if not chunks:
                return b""  # the end of the stream, or an error: the caller asks again
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._held = 0
        if state._paused:
            state._paused = False
            state._transport.resume_reading()
        return data


class Transport(TcpTransport):
    """nats-py's TCP transport, connecting with a :class:`Reader`."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    async def connect(self, uri: ParseResult, buffer_size: int, connect_timeout: int) -> None:
        # what asyncio.open_connection does, with protobind's reader
        loop = asyncio.get_running_loop()
        reader = Reader(READ_LIMIT, loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: protocol, uri.hostname or "127.0.0.1", uri.port or 4222),
            connect_timeout,
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        # the plain reader and writer are kept, as nats-py's transport keeps them, so that the
        # socket outlives a TLS upgrade
        self._bare_io_reader = self._io_reader = reader
        self._bare_io_writer = self._io_writer = writer

    def writelines(self, payload: Sequence[bytes]) -> None:
        writer = self._io_writer
        assert writer is not None, "connect() first"
        transport: Any = writer.transport
        sock = getattr(transport, "_sock", None)
        if (
            sock is None
            or len(payload) > _MAX_PARTS
            or max(map(len, payload), default=0) < LARGE
            or transport.get_write_buffer_size()
            or transport.is_closing()
        ):
            # small commands only: one joined write is cheaper for the kernel than many buffers
            writer.writelines(payload)
            return
        # as queued: Connection.buffer joins the small bytes around large payloads
        try:
            sent = sock.sendmsg(payload)
        except OSError:  # nothing sent: the transport writes it, and handles the error if any
            writer.writelines(payload)
            return
        if sent == sum(map(len, payload)):
            return
        for at, part in enumerate(payload):
            if sent < len(part):
                # the socket took only some: the rest goes to the transport's buffer, in order
                rest: list[bytes | memoryview] = [memoryview(part)[sent:], *payload[at + 1 :]]
                writer.write(b"".join(rest))
                return
            sent -= len(part)
