"""HTTP/2 for the native gRPC engine: frames (RFC 9113), header blocks (RFC 7541) and the parts of a
connection that client and server share (settings, flow control, PING, GOAWAY).

Only what gRPC uses is here: no server push, no priorities (PRIORITY frames and the priority fields
of HEADERS are read past), no HTTP/1.1 upgrade. Header blocks are decoded here with the peer's
dynamic table (the ``hpack`` package gives the static table and Huffman decoding); they are encoded
without the dynamic table (static-table names where gRPC's headers have one, every other field
a literal "without indexing"), which needs no state shared with the peer's decoder, so the blocks
that repeat on every call are built once and reused.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Iterable
from typing import Any

from hpack.exceptions import HPACKError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = [
    "PREFACE",
    "Connection",
    "H2Error",
    "HeaderBlock",
    "StreamBase",
    "encode_literal",
]

logger = logging.getLogger("protobind.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

#: Frames a connection may queue in answer to the peer's (PING and SETTINGS acknowledgements; on
#: the native server also the refusals of new streams) while the peer reads none of what it is
#: sent (the transport's buffer over its high-water mark). One more ends the connection at once,
#: its queued output dropped: the HTTP/2 "ping flood" and "settings flood" (CVE-2019-9512,
#: CVE-2019-9515) would otherwise grow that buffer without bound.
UNREAD_REPLIES = 10_000

# settings
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
#: the window this engine grants each stream, and the connection's
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024

# length (24 bits) and type (8 bits) in one word, then flags and the stream id
_HEAD = struct.Struct(">IBI")
_U32 = struct.Struct(">I")
_PAIR = struct.Struct(">II")
_SETTING = struct.Struct(">HI")


class H2Error(Exception):
    """A connection error (RFC 9113 section 5.4.1): the connection ends with GOAWAY ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame."""
    return _HEAD.pack((len(payload) << 8) | kind, flags, stream_id) + payload


def frame_head(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 9 bytes in front of a payload of ``length`` bytes."""
    return _HEAD.pack((length << 8) | kind, flags, stream_id)


def settings_frame(settings: Iterable[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(key, value) for key, value in settings))


def client_preface(header_limit: int, *extra: tuple[int, int]) -> bytes:
    """What a client connection sends first: the preface, its SETTINGS (no push, protobind's stream
    window, ``header_limit``, then ``extra``) and the connection window opened to CONNECTION_WINDOW."""
    settings = [
        (SETTINGS_ENABLE_PUSH, 0),
        (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
        (SETTINGS_MAX_HEADER_LIST_SIZE, header_limit),
        *extra,
    ]
    return PREFACE + settings_frame(settings) + window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW)


def window_update(stream_id: int, increment: int) -> bytes:
    return _HEAD.pack((4 << 8) | WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment)


def rst_stream(stream_id: int, code: int) -> bytes:
    return _HEAD.pack((4 << 8) | RST_STREAM, 0, stream_id) + _U32.pack(code)


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _PAIR.pack(last_stream_id, code) + debug)


# --- header blocks (RFC 7541) ---------------------------------------------------------------------


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer with a ``prefix_bits`` prefix; ``first`` holds the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0) + value


def encode_literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name (RFC 7541 section 6.2.2)."""
    return b"\x00" + _string(name) + _string(value)


def encode_indexed_name(index: int, value: bytes) -> bytes:
    """A literal header field without indexing whose name is static table entry ``index``."""
    return _integer(index, 4, 0) + _string(value)


# static table entries (RFC 7541 appendix A) gRPC's headers use
AUTHORITY = 1
METHOD_POST = b"\x83"
PATH = 4
SCHEME_HTTP = b"\x86"
SCHEME_HTTPS = b"\x87"
STATUS = 8
STATUS_200 = b"\x88"
CONTENT_TYPE = 31
USER_AGENT = 58

_STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_SIZE = len(_STATIC)


class HeaderBlock:
    """The decoding half of a connection's HPACK context (RFC 7541), with the size limit this side
    declared. The ``hpack`` package supplies the static table and Huffman decoding; the rest is
    here, since most of a call's header fields are indexed or short literals and the package's
    general decoder costs several times more per field."""

    __slots__ = ("_blocks", "_huffman", "_size", "_stateful", "_table", "limit", "max_table_size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: SETTINGS_HEADER_TABLE_SIZE this side declares (the default: it sends none)
        self.max_table_size = 4096
        self._table: deque[tuple[bytes, bytes]] = deque()  # newest first (index 62)
        self._size = 0
        self._huffman: dict[bytes, bytes] = {}
        # Blocks that neither read nor change the dynamic table mean the same every time: the
        # response headers and the trailers of most calls are such blocks, sent again and again.
        self._blocks: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._stateful = False

    def decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The fields of ``block`` and whether they fit the limit (name + value + 32 per field).
        The whole block is always decoded, so the dynamic table stays in step with the peer's."""
        fields = self._blocks.get(block)
        if fields is None:
            self._stateful = False
            try:
                fields = self._decode(block)
            except (IndexError, ValueError, HPACKError) as exc:
                raise H2Error(COMPRESSION_ERROR, f"undecodable header block: {exc}") from None
            if not self._stateful and len(block) <= 1024:
                if len(self._blocks) >= 256:
                    self._blocks.clear()
                self._blocks[block] = fields
        size = 0
        for name, value in fields:
            size += len(name) + len(value) + 32
        return fields, size <= self.limit

    def _decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        position = 0
        end = len(data)
        while position < end:
            first = data[position]
            if first & 0x80:  # indexed field
                index, position = _read_int(data, position, 0x7F)
                fields.append(self._entry(index))
                continue
            if first & 0x40:  # literal with incremental indexing
                index, position = _read_int(data, position, 0x3F)
                indexed = self._stateful = True
            elif first & 0x20:  # dynamic table size update
                self._stateful = True
                size, position = _read_int(data, position, 0x1F)
                if size > self.max_table_size:
                    raise ValueError("table size update above the declared maximum")
                self._evict(size)
                continue
            else:  # literal without indexing (0x00) or never indexed (0x10)
                index, position = _read_int(data, position, 0x0F)
                indexed = False
            if index:
                name = self._entry(index)[0]
            else:
                name, position = self._read_string(data, position)
            value, position = self._read_string(data, position)
            fields.append((name, value))
            if indexed:
                self._add(name, value)
        return fields

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if index == 0:
            raise ValueError("index 0")
        if index <= _STATIC_SIZE:
            return _STATIC[index - 1]
        self._stateful = True
        return self._table[index - _STATIC_SIZE - 1]

    def _read_string(self, data: bytes, position: int) -> tuple[bytes, int]:
        huffman = data[position] & 0x80
        length, position = _read_int(data, position, 0x7F)
        end = position + length
        if end > len(data):
            raise ValueError("string past the end of the block")
        text = data[position:end]
        if huffman:
            decoded = self._huffman.get(text)
            if decoded is None:
                decoded = decode_huffman(text)
                if len(self._huffman) >= 1024:
                    self._huffman.clear()
                self._huffman[text] = decoded
            text = decoded
        return text, end

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        if size > self.max_table_size:
            self._table.clear()
            self._size = 0
            return
        self._table.appendleft((name, value))
        self._size += size
        self._evict(self.max_table_size)

    def _evict(self, limit: int) -> None:
        while self._size > limit:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + 32


def _read_int(data: bytes, position: int, mask: int) -> tuple[int, int]:
    """An HPACK integer whose prefix is ``mask``'s bits of ``data[position]``."""
    value = data[position] & mask
    position += 1
    if value < mask:
        return value, position
    shift = 0
    while True:
        byte = data[position]
        position += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 28:
            raise ValueError("integer too large")


# --- the connection -------------------------------------------------------------------------------


class StreamBase:
    """What the connection keeps of each stream to send on it (flow control, queued output)."""

    __slots__ = ("drained", "id", "pending", "pending_end", "pending_trailers", "recv_unacked", "send_window")

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.recv_unacked = 0
        # DATA waiting for flow-control credit, and what goes after it
        self.pending = bytearray()
        self.pending_trailers: bytes | None = None
        self.pending_end = False
        self.drained: asyncio.Future[None] | None = None


class Connection(asyncio.Protocol):
    """The frame loop and connection state both sides share. Subclasses handle HEADERS, DATA,
    RST_STREAM for their streams and what happens when the connection ends."""

    #: the maximum header list size this side accepts (SETTINGS_MAX_HEADER_LIST_SIZE)
    header_limit = 16 * 1024

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_event_loop()
        self._buffer = b""
        self.streams: dict[int, Any] = {}
        self.headers = HeaderBlock(self.header_limit)
        # what the peer allows
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.peer_max_streams = 2**31
        # what this side still owes the peer in WINDOW_UPDATEs for the connection
        self.recv_unacked = 0
        self._continuation: tuple[int, int, bytearray] | None = None  # stream, flags, block so far
        self._blocked: dict[int, StreamBase] = {}
        self._paused = False
        self._unread_replies = 0  # frames queued in answer to the peer while it reads nothing
        self._resumed: asyncio.Future[None] | None = None
        self.closed = False
        self.goaway_received: int | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._unread_replies = 0
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    async def writable(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        while self._paused and not self.closed:
            if self._resumed is None:
                self._resumed = self.loop.create_future()
            await self._resumed

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        for stream in list(self._blocked.values()):
            self._wake(stream)
        self._blocked.clear()
        self.lost(exc)

    def lost(self, exc: Exception | None) -> None:
        """The connection ended (either side)."""

    def write(self, data: bytes) -> None:
        """Send ``data`` (frames) unless the connection is closed."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def reply(self, data: bytes) -> None:
        """Send frames that answer the peer's (see :data:`UNREAD_REPLIES`)."""
        if self._paused and not self.closed:
            self._unread_replies += 1
            if self._unread_replies > UNREAD_REPLIES:
                logger.warning("HTTP/2 peer sent more frames to answer than it reads: connection closed")
                self.closed = True
                if self.transport is not None:
                    self.transport.abort()  # a GOAWAY would wait behind what the peer does not read
                return
        self.write(data)

    def abort(self, code: int, message: str, last_stream_id: int = 0) -> None:
        """End the connection for a connection error."""
        if not self.closed and self.transport is not None:
            self.transport.write(goaway(last_stream_id, code, message.encode()[:200]))
            self.transport.close()
        self.closed = True

    # --- receiving ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
        size = len(data)
        position = 0
        head = _HEAD.unpack_from
        try:
            while size - position >= 9:
                word, flags, stream_id = head(data, position)
                end = position + 9 + (word >> 8)
                if end > size:
                    break
                kind = word & 0xFF
                stream_id &= 0x7FFFFFFF
                if kind == DATA:
                    self._data(stream_id, flags, data[position + 9 : end])
                elif kind == HEADERS:
                    self._headers_frame(stream_id, flags, data[position + 9 : end])
                elif self._continuation is not None:
                    if kind != CONTINUATION:
                        raise H2Error(PROTOCOL_ERROR, "a header block was interrupted")
                    self._continue(stream_id, flags, data[position + 9 : end])
                else:
                    self._control(kind, flags, stream_id, data[position + 9 : end])
                position = end
                if self.closed:
                    return
        except H2Error as exc:
            self.abort(exc.code, str(exc), self.last_stream_id())
            return
        self._buffer = data[position:]
        if len(self._buffer) > 9 and (word := head(self._buffer, 0)[0] >> 8) > self.max_frame_in():
            self.abort(FRAME_SIZE_ERROR, f"a frame of {word} bytes")
        if self.recv_unacked >= CONNECTION_WINDOW // 2 and not self.closed:
            self.write(window_update(0, self.recv_unacked))
            self.recv_unacked = 0

    def max_frame_in(self) -> int:
        """The largest frame this side accepts (SETTINGS_MAX_FRAME_SIZE, left at its default)."""
        return DEFAULT_MAX_FRAME

    def last_stream_id(self) -> int:
        """The last stream the peer opened that this side processed (for GOAWAY)."""
        return 0

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2Error(PROTOCOL_ERROR, "DATA on stream 0")
        self.recv_unacked += len(payload)
        if flags & PADDED:
            payload = _unpad(payload)
        self.on_data(stream_id, payload, bool(flags & END_STREAM))

    def _headers_frame(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._continuation is not None:
            raise H2Error(PROTOCOL_ERROR, "a header block was interrupted")
        if stream_id == 0:
            raise H2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._block(stream_id, flags, payload)
        else:
            self._continuation = (stream_id, flags, bytearray(payload))

    def _continue(self, stream_id: int, flags: int, payload: bytes) -> None:
        assert self._continuation is not None
        first, first_flags, block = self._continuation
        if stream_id != first:
            raise H2Error(PROTOCOL_ERROR, "CONTINUATION of another stream")
        block += payload
        if len(block) > 4 * self.header_limit + 4096:
            raise H2Error(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._block(stream_id, first_flags, bytes(block))

    def _block(self, stream_id: int, flags: int, block: bytes) -> None:
        fields, fits = self.headers.decode(block)
        self.on_headers(stream_id, fields, fits, bool(flags & END_STREAM))

    def _control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == SETTINGS:
            if stream_id:
                raise H2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                self._settings(payload)
                self.reply(frame(SETTINGS, ACK, 0))
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise H2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
            increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
            self._window_update(stream_id, increment)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise H2Error(FRAME_SIZE_ERROR, "bad PING")
            if not flags & ACK:
                self.reply(frame(PING, ACK, 0, payload))
            else:
                self.on_ping_ack(payload)
        elif kind == RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise H2Error(PROTOCOL_ERROR, "bad RST_STREAM")
            self.on_reset(stream_id, _U32.unpack(payload)[0])
        elif kind == GOAWAY:
            last, code = _PAIR.unpack_from(payload)
            self.goaway_received = last & 0x7FFFFFFF
            self.on_goaway(self.goaway_received, code)
        elif kind == CONTINUATION:
            raise H2Error(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        elif kind == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "PUSH_PROMISE is not enabled")
        # PRIORITY and unknown frame types are ignored (RFC 9113 sections 5.3.2 and 4.1)

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise H2Error(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2Error(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                if delta > 0:
                    self._flush_blocked()
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise H2Error(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise H2Error(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
            # the header table size concerns only an encoder with a dynamic table (none here)

    def _window_update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            if increment == 0:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise H2Error(FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if increment == 0:
            self.reset_stream(stream_id, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self.reset_stream(stream_id, FLOW_CONTROL_ERROR)
            return
        if stream_id in self._blocked:
            self._flush(stream)

    # --- hooks ----------------------------------------------------------------------------------

    def on_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], fits: bool, end: bool) -> None:
        """A whole header block of ``stream_id`` (``fits``: within the size limit; ``end``: END_STREAM)."""
        raise NotImplementedError

    def on_data(self, stream_id: int, data: bytes, end: bool) -> None:
        """DATA of ``stream_id``, padding removed (``end``: END_STREAM)."""
        raise NotImplementedError

    def on_reset(self, stream_id: int, code: int) -> None:
        """The peer reset ``stream_id`` with error ``code``."""
        raise NotImplementedError

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        """The peer sends GOAWAY: streams above ``last_stream_id`` were not processed."""

    def on_ping_ack(self, payload: bytes) -> None:
        """A PING this side sent was answered."""

    def reset_stream(self, stream_id: int, code: int) -> None:
        """Send RST_STREAM and forget the stream (subclasses also end what waits on it)."""
        self.write(rst_stream(stream_id, code))
        self.forget(stream_id)

    def forget(self, stream_id: int) -> None:
        """Drop the stream's state, its queued output included (it is closed on this side)."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            blocked = self._blocked.pop(stream_id, None)
            if blocked is not None:
                self._wake(blocked)

    # --- sending --------------------------------------------------------------------------------

    def ack_data(self, stream: StreamBase, size: int) -> None:
        """``size`` bytes of ``stream``'s DATA were taken: reopen its window once half is used."""
        stream.recv_unacked += size
        if stream.recv_unacked >= STREAM_WINDOW // 2:
            self.write(window_update(stream.id, stream.recv_unacked))
            stream.recv_unacked = 0

    def data_frames(self, stream_id: int, data: bytes, end: bool, before: bytes = b"") -> bytes:
        """``data`` as DATA frames no larger than the peer allows (``end``: END_STREAM on the last),
        after ``before`` (frames already built: joined here, the data is copied once)."""
        limit = self.peer_max_frame
        if len(data) <= limit:
            return before + _HEAD.pack((len(data) << 8) | DATA, END_STREAM if end else 0, stream_id) + data
        parts: list[bytes | memoryview] = [before]
        view = memoryview(data)
        for offset in range(0, len(data), limit):
            chunk = view[offset : offset + limit]
            last = offset + limit >= len(data)
            parts.append(_HEAD.pack((len(chunk) << 8) | DATA, END_STREAM if end and last else 0, stream_id))
            parts.append(chunk)
        return b"".join(parts)

    def header_frames(self, stream_id: int, block: bytes, end: bool) -> bytes:
        """A header block as HEADERS (and CONTINUATION frames when it is larger than a frame)."""
        flags = END_STREAM if end else 0
        limit = self.peer_max_frame
        if len(block) <= limit:
            return _HEAD.pack((len(block) << 8) | HEADERS, flags | END_HEADERS, stream_id) + block
        parts = [frame(HEADERS, flags, stream_id, block[:limit])]
        for offset in range(limit, len(block), limit):
            chunk = block[offset : offset + limit]
            last = offset + limit >= len(block)
            parts.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, chunk))
        return b"".join(parts)

    def send(self, stream: StreamBase, head: bytes, data: bytes, trailers: bytes | None, end: bool) -> bool:
        """Send ``head`` (frames already built), then ``data`` as DATA within the flow-control
        windows, then the header block ``trailers`` (with END_STREAM) or, without trailers and
        with ``end``, END_STREAM on the data. What the windows do not allow yet is queued on the
        stream and goes out as WINDOW_UPDATEs arrive. Returns whether everything went out."""
        size = len(data)
        if (
            not stream.pending
            and stream.pending_trailers is None
            and size <= self.send_window
            and (size <= stream.send_window)
        ):
            self.send_window -= size
            stream.send_window -= size
            out = head
            if size or (end and trailers is None):
                out = self.data_frames(stream.id, data, end and trailers is None, head)
            if trailers is not None:
                out += self.header_frames(stream.id, trailers, True)
            self.write(out)
            return True
        if head:
            self.write(head)
        stream.pending += data
        if trailers is not None:
            stream.pending_trailers = trailers
        stream.pending_end = stream.pending_end or end
        self._flush(stream)
        return not stream.pending and stream.pending_trailers is None and not stream.pending_end

    def _flush(self, stream: StreamBase) -> None:
        """Send what the windows allow of ``stream``'s queued output."""
        pending = stream.pending
        allowed = min(self.send_window, stream.send_window, len(pending))
        out = b""
        if allowed > 0:
            chunk = bytes(pending[:allowed])
            del pending[:allowed]
            self.send_window -= allowed
            stream.send_window -= allowed
            last = not pending and stream.pending_end and stream.pending_trailers is None
            out = self.data_frames(stream.id, chunk, last)
            if last:
                stream.pending_end = False
        if not pending:
            if stream.pending_trailers is not None:
                out += self.header_frames(stream.id, stream.pending_trailers, True)
                stream.pending_trailers = None
                stream.pending_end = False
            elif stream.pending_end:
                out += self.data_frames(stream.id, b"", True)
                stream.pending_end = False
            self._blocked.pop(stream.id, None)
            self._wake(stream)
        else:
            self._blocked[stream.id] = stream
        if out:
            self.write(out)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self.send_window <= 0:
                return
            self._flush(stream)

    @staticmethod
    def _wake(stream: StreamBase) -> None:
        drained, stream.drained = stream.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drained(self, stream: StreamBase) -> None:
        """Wait until ``stream``'s queued output went out (or the stream or connection ended)."""
        while (stream.pending or stream.pending_trailers is not None) and stream.id in self._blocked:
            if stream.drained is None:
                stream.drained = self.loop.create_future()
            await stream.drained
        await self.writable()


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise H2Error(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise H2Error(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]
