"""uvicorn's zttp HTTP/1.1 protocol, writing a response's head and first body part in one go.

uvicorn writes the status line and headers to the socket as soon as the app sends
``http.response.start``, and the body when it sends ``http.response.body``: two ``send`` system
calls per response, and on the other end often two reads and two wake-ups of the client for what
a unary call answers at once. Here the head waits for the first body part (or for the end of the
current event-loop step, whichever comes first) and both leave in one write. An app that sends the
head and then waits before the body (a slow stream) still has its head on the wire within the same
loop step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.zttp_impl import ZttpProtocol

__all__ = ["CoalescingH1Protocol", "TransportProxy"]


class TransportProxy(asyncio.Transport):
    """A connection's transport seen through a subclass that holds some writes back: everything
    else goes to the real transport, and what is held goes out before the transport closes or
    changes hands (:meth:`flush`)."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []

    def flush(self) -> None:
        """Write what is held, in one write."""
        held = self._held
        if held:
            self._held = []
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()


class _HeldHead(TransportProxy):
    """The connection's transport as the protocol and its request cycles see it: the write that
    starts a response is held until the next write or the next loop step."""

    __slots__ = ("_loop", "_protocol", "_started")

    def __init__(self, transport: asyncio.Transport, protocol: CoalescingH1Protocol) -> None:
        super().__init__(transport)
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._started: object = None  # the request cycle whose head was written last

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held:
            self._held = []
            self._transport.write(held[0] + bytes(data))
            return
        cycle = self._protocol.cycle
        if cycle is not None and cycle.response_started and cycle is not self._started:
            # the response's head: the first write once the response started (an interim
            # 100 Continue goes out before that)
            self._started = cycle
            self._held = [bytes(data)]
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)


class CoalescingH1Protocol(ZttpProtocol):
    """:class:`ZttpProtocol` whose responses leave with their head and first body part together."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeldHead(transport, self))
