"""The HTTP/1.1 client of unary Connect calls: a keep-alive pool of asyncio protocols on zttp.

A unary call is one POST with a known body and a response read whole, so it needs little of a
general HTTP client: here the request head and body go out in one write, zttp (the parser uvicorn
runs on the server side) frames the response (content-length, chunked or to the end of the
connection) and a future carries it back. aiohttp, which made these calls before, spent about as
many instructions per call on its request and response objects, timers and stream readers as the
rest of the call (benchmarks/README.md, "HTTP Connect"); it still makes the calls that stream a body
(:mod:`.client`).

A connection that fails, is cancelled mid-call (a deadline, a cancelled task) or answers with
``Connection: close`` is closed rather than reused. Idle connections are dropped after
``idle_timeout`` seconds, shorter than the server's keep-alive, so a call never races a server
closing a connection it thinks idle.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

import zttp

from .._errors import Code, RpcError

__all__ = ["ConnectFailed", "H1Pool", "H1Response"]

H1Response = tuple[int, list[tuple[bytes, bytes]], bytes]

_NEED_DATA = zttp.NEED_DATA
_DATA = zttp.Data
_RESPONSE = zttp.Response
_END = zttp.EndOfMessage


class ConnectFailed(Exception):
    """A connection to the server could not be opened (``os_error`` says why)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection, carrying one exchange at a time."""

    __slots__ = (
        "_body",
        "_limit",
        "_parser",
        "_size",
        "_status",
        "_waiter",
        "closed",
        "headers",
        "idle_since",
        "transport",
    )

    def __init__(self, limit: int) -> None:
        self._parser = zttp.Connection(zttp.CLIENT)
        self._limit = limit
        self._waiter: asyncio.Future[H1Response] | None = None
        self._status = 0
        self._body: list[bytes] = []
        self._size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a server speaking out of turn
            self._fail(RpcError(Code.UNAVAILABLE, "the server sent data nobody asked for"))
            return
        try:
            event: object = self._parser.receive_event(data)
            while event is not _NEED_DATA:
                kind = type(event)
                if kind is _DATA:
                    self._add(event.data)  # type: ignore[attr-defined]
                elif kind is _RESPONSE:
                    self._head(event)  # type: ignore[arg-type]
                elif kind is _END:
                    self._finish()
                    return
                else:  # the connection closed mid-response
                    raise ConnectionResetError("the connection closed mid-response")
                event = self._parser.next_event()
        except zttp.ProtocolError as exc:
            self._fail(RpcError(Code.UNAVAILABLE, f"invalid HTTP response: {exc}"))
        except (RpcError, OSError) as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        if self._waiter is not None:  # a body that runs to the end of the connection ends here
            self.data_received(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionResetError("the server closed the connection"))

    # --- one exchange -----------------------------------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[H1Response]:
        assert self.transport is not None
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._status = 0
        self._size = 0
        self._body = []
        self.transport.write(request)
        return waiter

    def serialize(self, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
        parser = self._parser
        parser.send_request(b"POST", target, b"1.1", headers)
        if body:
            parser.send_data(body)
        parser.end_message()
        return parser.data_to_send()

    def _head(self, response: zttp.Response) -> None:
        status = response.status_code
        if status < 200:
            return  # an interim response (100 Continue): the real one follows
        self._status = status
        headers = response.headers
        self.headers = headers if isinstance(headers, list) else headers.to_list()
        for name, value in self.headers:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > self._limit:
                raise RpcError(Code.RESOURCE_EXHAUSTED, f"response is larger than {self._limit} bytes")

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"response is larger than {self._limit} bytes")
        self._body.append(data)

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        transport = self.transport
        if (
            self._parser.should_close()
            or self._status == 413
            or (transport is not None and transport.get_write_buffer_size())
        ):
            # an answer that may have come before the server read the whole request (a 413, or
            # any answer while the request is still being sent): servers may close such a
            # connection at once (hypercorn does), so it carries no other call
            self.close()
        else:
            self._parser.start_next_cycle()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self.headers, data))

    def _fail(self, error: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class H1Pool:
    """At most ``limit`` kept-alive connections to one server; calls beyond wait for one."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        server_name: str | None,
        limit: int,
        max_message_size: int,
        idle_timeout: float = 15.0,
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._server_name = server_name
        self._limit = limit
        self._max_message_size = max_message_size
        self._idle_timeout = idle_timeout
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._open = 0  # connections open, opening or in use
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def request(self, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> H1Response:
        """POST ``body`` to ``target`` with ``headers`` (``host`` and framing included); the status,
        headers and body of the response. Raises :class:`ConnectFailed` when no connection could
        be opened, ``OSError`` or :class:`RpcError` when the exchange failed."""
        connection = self._take()
        if connection is None:
            connection = await self._connect()
        try:
            response = await connection.send(connection.serialize(target, headers, body))
        except BaseException:
            connection.close()  # half an exchange: the connection cannot carry another
            self._release(connection)
            raise
        self._release(connection)
        return response

    def _take(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_timeout:
                return connection
            self._drop(connection)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        while self._open >= self._limit:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            connection = self._take()
            if connection is not None:
                return connection
        if self._closed:
            raise ConnectFailed(ConnectionAbortedError("the channel is closed"))
        self._open += 1
        limit = self._max_message_size
        try:
            if self._ssl is None:
                _, connection = await loop.create_connection(
                    lambda: _Connection(limit), self._host, self._port
                )
            else:
                _, connection = await loop.create_connection(
                    lambda: _Connection(limit),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_name or self._host,
                )
        except OSError as exc:
            self._open -= 1
            self._wake()
            raise ConnectFailed(exc) from exc
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        self._all.add(connection)
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.closed or self._closed:
            self._drop(connection)
        else:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        self._wake()

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        if connection in self._all:
            self._all.discard(connection)
            self._open -= 1

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every connection: calls in flight fail with the connection's loss."""
        self._closed = True
        self._idle = []
        for connection in self._all:
            connection.close()
        self._all.clear()
        self._open = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
