"""uvicorn's zttp protocol, with HTTP/2 connections retired before zttp's stream limit and the
writes of each event-loop step sent together (:class:`StepWrites`).

zttp 0.0.35 lets one HTTP/2 connection carry 4,096 streams in its whole life: the next one is
taken for a flood and the connection is closed with ``GOAWAY`` ``ENHANCE_YOUR_CALM``, failing every
call in flight on it (measured: a stock ``grpc.aio`` channel making 64 calls at a time loses them
after 4,096 calls; one call at a time, or opening streams hours apart, trips it just the same).
zttp has no setting for it, so protobind ends such connections itself, the way HTTP/2 servers
retire long-lived connections anyway:

- after :data:`IDLE_DRAIN_AFTER` streams, at the first moment no stream is open, the server sends
  ``GOAWAY`` ``NO_ERROR`` naming the last stream it took and closes: nothing is lost, and a client
  that raced a new stream knows from the GOAWAY that it was not processed;
- after :data:`FORCE_DRAIN_AFTER` streams without such a moment (a busy multiplexed client), it
  sends ``GOAWAY`` ``NO_ERROR`` with the largest stream id, which tells the client to open new
  streams on a new connection while the ones in flight finish; :data:`DRAIN_GRACE` seconds later
  it refuses new streams and closes once the last one ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zttp
from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol
from uvicorn.protocols.http.zttp_impl import ZttpProtocol

from ..grpc import _h2 as h2
from ._h1server import TransportProxy
from ._h2send import DirectDataH2Protocol

__all__ = ["DrainingAutoProtocol", "StepWrites"]

#: zttp's lifetime stream limit per connection (the flood rule it cannot be told to relax).
ZTTP_STREAM_LIMIT = 4096
IDLE_DRAIN_AFTER = 2048
FORCE_DRAIN_AFTER = 3072
DRAIN_GRACE = 1.0
#: Seconds a retired connection keeps reading (and dropping) what the client still sends after the
#: last GOAWAY, unless the client closes first: closing at once would make the kernel answer that
#: data with a TCP reset, which can destroy the GOAWAY before the client reads it.
LINGER = 1.0
_NO_ERROR = 0
_MAX_STREAM_ID = 2**31 - 1


class StepWrites(TransportProxy):
    """A connection's transport whose writes wait for the end of the event-loop step and then
    leave together. uvicorn's HTTP/2 protocol writes each response in three pieces (HEADERS,
    DATA, then END_STREAM), each a ``send`` system call of its own; held to the end of the step,
    they go out in one, together with those of every other stream that answered in that step."""

    __slots__ = ("_loop",)

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__(transport)
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))


class DrainingH2Protocol(DirectDataH2Protocol):
    """uvicorn's zttp HTTP/2 protocol (response bodies framed by :class:`DirectDataH2Protocol`)
    counting the streams of its connection and retiring it in time, writing through
    :class:`StepWrites`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams_opened = 0
        self.draining = False
        self.lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(StepWrites(transport))
        # zttp leaves the connection's receive window at HTTP/2's 64 KiB and reopens it as it reads,
        # so a client with 64 calls of 16 KiB in flight sent four, then waited for each
        # WINDOW_UPDATE (measured: a read of the server per two calls; one per fourteen with the
        # larger window). zttp credits what it reads whatever the window, so a larger one buffers
        # nothing more here: what the app has not read is bounded as before, by uvicorn pausing
        # the socket.
        self.transport.write(h2.window_update(0, h2.CONNECTION_WINDOW - h2.DEFAULT_WINDOW))

    def resume_reading_if_idle(self) -> None:
        # uvicorn's version looks at the body buffer of every open stream, on every receive and at
        # the end of every stream (64 streams in flight: 128 looks per call), to resume reading
        # that is almost never paused
        if self.flow.read_paused:
            super().resume_reading_if_idle()

    def handle_request(self, event: zttp.Request) -> None:
        self.streams_opened += 1
        super().handle_request(event)
        if self.streams_opened >= FORCE_DRAIN_AFTER and not self.draining and not self.transport.is_closing():
            self.draining = True
            self.conn.close(_NO_ERROR, _MAX_STREAM_ID)
            self.flush()
            self.loop.call_later(DRAIN_GRACE, self.shutdown)

    def on_stream_closed(self) -> None:
        if self.streams_opened >= IDLE_DRAIN_AFTER and not self.cycles:
            # uvicorn's own shutdown path: GOAWAY with the last stream taken, then close
            self.shutdown_requested = True
            self.draining = True
        super().on_stream_closed()

    def data_received(self, data: bytes) -> None:
        if not self.lingering:
            super().data_received(data)

    def _close_connection(self) -> None:
        if not self.draining or self.transport.is_closing():
            super()._close_connection()
            return
        if self.lingering:
            return
        self.lingering = True
        self.conn.close()  # GOAWAY NO_ERROR with the last stream taken
        self.flush()
        self.loop.call_later(LINGER, self.transport.close)


class DrainingAutoProtocol(AutoZttpProtocol):
    """uvicorn's HTTP/1.1-or-HTTP/2 switch, handing HTTP/2 connections to :class:`DrainingH2Protocol`
    and HTTP/1.1 ones to :attr:`h1_class`."""

    h1_class: type[asyncio.Protocol] = ZttpProtocol

    def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
        protocol_class: type[asyncio.Protocol] = DrainingH2Protocol if http2 else self.h1_class
        protocol = protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.app_state, _loop=self.loop
        )
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if initial_data:
            protocol.data_received(initial_data)
