"""Response bodies on uvicorn's zttp HTTP/2 connections, framed and flow-controlled by protobind.

zttp 0.0.35 is built with Zig's safety checks, which fill every buffer it allocates byte by byte
before use; a body handed to ``Stream.send_data`` goes through several such buffers on its way to
``data_to_send``. Measured: 12 µs and about 110k instructions (callgrind) for one 16 KiB response,
a fifth of the server's whole cost per call at that size. So here the DATA frames of a response are
built by protobind and written to the transport as they are; zttp still writes everything else
(HEADERS, trailers, the empty DATA frame with END_STREAM it always sent, RST_STREAM, GOAWAY) and
keeps the state of each stream.

zttp would count the peer's flow-control windows, but it cannot be told that bytes left without
it, and its count would only grow, until its overflow check fails a sound connection. So the
peer's ``WINDOW_UPDATE`` frames for the connection and for the streams protobind sends on are
counted here and not shown to zttp; everything else the peer sends reaches zttp as it came, in
order. What the windows do not allow yet waits on its stream, with the stream's END_STREAM or
trailers behind it, and leaves as the peer's ``WINDOW_UPDATE``s arrive, as it did in zttp. The
errors stay zttp's: a malformed ``WINDOW_UPDATE`` (wrong size, zero increment, a stream this side
does not send on) is passed to zttp, and one that overflows a window is passed on as an increment
that overflows zttp's own count, so that zttp answers it as it did (RST_STREAM or GOAWAY
FLOW_CONTROL_ERROR).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import zttp
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol

from ..grpc import _h2 as h2

__all__ = ["DirectDataH2Protocol"]

logger = logging.getLogger("protobind.http")

# for reading the peer's frames; the constants and frame builders are grpc/_h2.py's
_HEAD = struct.Struct(">IBI")  # length (24 bits) and type, flags, stream id
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
_PREFACE_SIZE = len(h2.PREFACE)
#: the largest SETTINGS or WINDOW_UPDATE frame read here: a larger one is zttp's to refuse
_LARGEST_READ = h2.DEFAULT_MAX_FRAME + 9
#: bodies up to this size are written joined to their frame head (one write), larger ones beside it
_JOINED = 4096


class _Sender:
    """A stream's send surface as uvicorn's request cycle uses it (zttp's ``Stream``), with the
    body framed here and held back while the peer's windows are closed. The response head and
    interim responses are zttp's own methods (uvicorn never ends a stream with the head)."""

    __slots__ = (
        "_protocol",
        "_stream",
        "pending",
        "pending_end",
        "send_informational",
        "send_response",
        "stream_id",
        "trailers",
        "window",
    )

    def __init__(self, protocol: DirectDataH2Protocol, stream: zttp.Stream, window: int) -> None:
        self._protocol = protocol
        self._stream = stream
        self.stream_id = stream.stream_id
        self.window = window
        self.pending: bytearray | None = None  # what waits for the windows
        self.pending_end = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.send_response = stream.send_response
        self.send_informational = stream.send_informational

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data)
        protocol = self._protocol
        if self.pending is None and 0 < size <= self.window and size <= protocol.send_window:
            self.window -= size
            protocol.send_window -= size
            protocol.write_data(self.stream_id, data)
        elif size:
            if self.pending is None:
                self.pending = bytearray(data)
            else:
                self.pending += data
            protocol.blocked[self.stream_id] = self
            protocol.send_pending(self)

    def end_message(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.pending is not None:
            self.pending_end = True
            self.trailers = trailers
            return
        self._protocol.senders.pop(self.stream_id, None)
        self._stream.end_message(trailers)

    def reset(self, *error_code: int) -> None:
        self._protocol.forget(self.stream_id)
        self._stream.reset(*error_code)


class DirectDataH2Protocol(ZttpH2Protocol):
    """:class:`ZttpH2Protocol` whose response bodies are framed here (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the peer's connection window, its stream window for new streams, its largest frame
        self.send_window = h2.DEFAULT_WINDOW
        self.initial_window = h2.DEFAULT_WINDOW
        self.max_frame = h2.DEFAULT_MAX_FRAME
        #: the streams whose response is still being sent, and those of them waiting for a window
        self.senders: dict[int, _Sender] = {}
        self.blocked: dict[int, _Sender] = {}
        # reading the peer's frames: bytes of the current frame still to pass to zttp (the client
        # preface first), the start of a frame kept until it is whole, whether a header block is
        # open (no frame may come between its HEADERS and CONTINUATIONs)
        self._through = _PREFACE_SIZE
        self._kept = b""
        self._in_block = False
        # PING and SETTINGS frames (each asks for an acknowledgement) read while the peer reads
        # nothing of what it is sent (see grpc/_h2.py, UNREAD_REPLIES)
        self._unread_replies = 0

    # --- reading ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._kept:
            data = self._kept + data
            self._kept = b""
        size = len(data)
        position = self._through
        if position >= size:
            self._through = position - size
            super().data_received(data)
            return
        start = 0  # the first byte not yet given to zttp
        head = _HEAD.unpack_from
        in_block = self._in_block
        while True:
            if size - position < 9:
                if position < size:
                    self._kept = data[position:]
                    size = position
                self._through = 0
                break
            word, flags, stream_id = head(data, position)
            kind = word & 0xFF
            end = position + 9 + (word >> 8)
            if kind == 0x0:  # DATA, the most frequent
                pass
            elif kind in (0x1, 0x5, 0x9):  # HEADERS, PUSH_PROMISE, CONTINUATION
                in_block = not flags & h2.END_HEADERS
            elif kind in (0x4, 0x6) and not flags & h2.ACK and self.flow.write_paused and self._flooded():
                return  # ended: the peer asks for answers (PING, SETTINGS) and reads none
            elif kind in (0x4, 0x8) and not in_block:  # SETTINGS, WINDOW_UPDATE
                if end > size and end - position <= _LARGEST_READ:
                    self._kept = data[position:]
                    self._through = 0
                    size = position
                    break
                if end <= size:
                    self._in_block = in_block
                    payload = data[position + 9 : end]
                    if kind == h2.SETTINGS:
                        # zttp first, so that its acknowledgement leaves before data sent under
                        # the new settings (the peer applies them once acknowledged)
                        if not self._feed(data, start, end):
                            return
                        start = end
                        if not flags & h2.ACK and stream_id == 0:
                            self._settings(payload)
                    else:
                        if start < position and not self._feed(data, start, position):
                            return
                        start = position
                        if self._window_update(stream_id & 0x7FFFFFFF, payload):
                            start = end  # counted here: zttp does not see it
                    if self.transport.is_closing():
                        return
            if end >= size:
                self._through = end - size
                break
            position = end
        self._in_block = in_block
        if start < size:
            self._feed(data, start, size)

    def _flooded(self) -> bool:
        """Count a frame that asks for an answer while writing is paused; past
        ``h2.UNREAD_REPLIES`` end the connection at once (its queued output dropped) and say so."""
        self._unread_replies += 1
        if self._unread_replies <= h2.UNREAD_REPLIES:
            return False
        logger.warning("HTTP/2 peer sent more frames to answer than it reads: connection closed")
        self.transport.abort()
        return True

    def resume_writing(self) -> None:
        self._unread_replies = 0
        super().resume_writing()

    def _feed(self, data: bytes, start: int, end: int) -> bool:
        """Give zttp ``data[start:end]``; whether the connection is still open afterwards."""
        if self.transport.is_closing():
            return False
        # zttp takes any buffer (uvicorn's annotation says bytes): a part is a view, not a copy
        part: Any = data if start == 0 and end == len(data) else memoryview(data)[start:end]
        super().data_received(part)
        return not self.transport.is_closing()

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            return  # zttp's to refuse
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == h2.SETTINGS_INITIAL_WINDOW_SIZE and value <= h2.MAX_WINDOW:
                delta = value - self.initial_window
                self.initial_window = value
                for sender in self.senders.values():
                    sender.window += delta
                if delta > 0:
                    self._send_blocked()
            elif key == h2.SETTINGS_MAX_FRAME_SIZE and h2.DEFAULT_MAX_FRAME <= value < 2**24:
                self.max_frame = value

    def _window_update(self, stream_id: int, payload: bytes) -> bool:
        """Count a WINDOW_UPDATE; False: it is zttp's (malformed, or for a stream not sent on here)."""
        if len(payload) != 4:
            return False
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not increment:
            return False
        if not stream_id:
            self.send_window += increment
            if self.send_window > h2.MAX_WINDOW:
                self._overflow(0)
                return True
            self._send_blocked()
            return True
        sender = self.senders.get(stream_id)
        if sender is None:
            return False
        sender.window += increment
        if sender.window > h2.MAX_WINDOW:
            self.forget(stream_id)
            self._overflow(stream_id)
            return True
        if stream_id in self.blocked:
            self.send_pending(sender)
        return True

    def _overflow(self, stream_id: int) -> None:
        """Show zttp a WINDOW_UPDATE that overflows its own count, for it to answer as it does."""
        self._feed(h2.window_update(stream_id, h2.MAX_WINDOW), 0, 13)

    # --- sending ----------------------------------------------------------------------------------

    def handle_request(self, event: zttp.Request) -> None:
        super().handle_request(event)
        stream_id = event.stream_id
        cycle = self.cycles.get(stream_id)
        if cycle is not None:  # (none when zttp refused the request)
            sender = self.senders[stream_id] = _Sender(self, cycle.stream, self.initial_window)
            cycle.stream = sender  # type: ignore[assignment]

    def handle_rst_stream(self, event: zttp.RstStream) -> None:
        self.forget(event.stream_id)
        super().handle_rst_stream(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self.senders.clear()
        self.blocked.clear()
        super().connection_lost(exc)

    def forget(self, stream_id: int) -> None:
        """Drop a stream's state here, and what it still had to send."""
        self.senders.pop(stream_id, None)
        self.blocked.pop(stream_id, None)

    def write_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """``data`` as DATA frames, the windows already charged, after what zttp has queued."""
        queued = self.conn.data_to_send()  # zttp's frames first (uvicorn has written them already)
        write = self.transport.write
        if queued:
            write(queued)
        size = len(data)
        limit = self.max_frame
        if size <= limit:
            if size <= _JOINED:
                write(_HEAD.pack(size << 8, 0, stream_id) + data)
            else:
                write(_HEAD.pack(size << 8, 0, stream_id))
                write(data)
            return
        view = memoryview(data)
        for offset in range(0, size, limit):
            chunk = view[offset : offset + limit]
            write(_HEAD.pack(len(chunk) << 8, 0, stream_id))
            write(chunk)

    def send_pending(self, sender: _Sender) -> None:
        """Send what the windows allow of ``sender``'s held body, and its end once all is out."""
        pending = sender.pending
        if pending is None:
            return
        allowed = min(self.send_window, sender.window, len(pending))
        if allowed > 0:
            chunk = bytes(pending[:allowed])
            del pending[:allowed]
            self.send_window -= allowed
            sender.window -= allowed
            self.write_data(sender.stream_id, chunk)
        if pending:
            return
        sender.pending = None
        self.blocked.pop(sender.stream_id, None)
        if sender.pending_end:
            sender.pending_end = False
            sender.end_message(sender.trailers)
            self.flush()

    def _send_blocked(self) -> None:
        for sender in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self.send_pending(sender)
