"""The native gRPC engine's server: gRPC over HTTP/2 on an asyncio protocol (``engine=native``).

One :class:`_ServerConnection` per TCP (or TLS) connection parses frames (h2.py) and runs each call
as one task: a unary or server-streaming call starts once its request stream has ended (its one
message is checked then: none, two, a partial frame or a bad flags byte are answered as the gRPC
status code table says), a client-streaming or bidi call at its HEADERS, its messages handed to
the handler as they arrive. Responses go out as few writes as possible: the HEADERS, DATA and
trailers of a unary answer in one. Overload is met by the binding's limiter (RESOURCE_EXHAUSTED)
below SETTINGS_MAX_CONCURRENT_STREAMS; a peer that resets more streams than it lets finish is sent
GOAWAY ENHANCE_YOUR_CALM ("rapid reset", CVE-2023-44487).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from .._aio import Deadlines
from .._context import Context
from .._errors import Code, RpcError
from .._metadata import Metadata
from .._wire import grpc_deadline, parse_grpc_timeout
from ..endpoints import Endpoint, invoke_stream, invoke_unary, to_rpc_error
from ..limits import ConcurrencyLimit
from ..method import MethodInfo, MethodKind
from ..transport import ServerBinding, listen_socket
from . import _h2 as h2
from ._messages import Deframer, envelope, message_encoding, metadata_fields, request_metadata, status_block
from ._options import Address, GrpcOptions

if TYPE_CHECKING:
    from ..endpoints import EndpointTable

__all__ = ["NativeBinding", "serve_native"]

logger = logging.getLogger("protobind.grpc")

_RESPONSE_HEAD = h2.STATUS_200 + h2.encode_indexed_name(h2.CONTENT_TYPE, b"application/grpc")
#: resets of unfinished streams a connection may send (the count halves every second) before the
#: server ends it with GOAWAY ENHANCE_YOUR_CALM
_RESET_BUDGET = 2000


class _Route:
    """How the server answers one method path."""

    __slots__ = ("authorize", "decode", "encode", "endpoint", "kind", "method", "single")

    def __init__(
        self, endpoint: Endpoint, authorize: Callable[[Metadata, str], RpcError | None] | None
    ) -> None:
        method = endpoint.method
        self.endpoint = endpoint
        self.method: MethodInfo[Any, Any] = method
        self.kind = method.kind
        self.single = method.kind in (MethodKind.UNARY, MethodKind.SERVER_STREAMING)
        self.decode = method.input_type.FromString
        self.encode = method.output_type.SerializeToString
        self.authorize = authorize


class _Call(h2.StreamBase):
    """One stream: the request as it arrives, the task answering it."""

    __slots__ = (
        "body",
        "closed_remote",
        "context",
        "deframer",
        "expired",
        "failure",
        "fields",
        "headers_sent",
        "inbox",
        "route",
        "slot",
        "task",
        "waiter",
    )

    def __init__(
        self, stream_id: int, send_window: int, route: _Route, fields: list[tuple[bytes, bytes]]
    ) -> None:
        super().__init__(stream_id, send_window)
        self.route = route
        self.fields = fields
        self.body = b""
        self.closed_remote = False
        self.task: asyncio.Task[None] | None = None
        self.context: Context | None = None
        self.headers_sent = False
        self.deframer: Deframer | None = None
        self.inbox: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.failure: RpcError | None = None
        self.expired = False
        self.slot = 0

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Server:
    """What every connection of one binding shares."""

    def __init__(self, table: EndpointTable, config: GrpcOptions, extra: Mapping[str, Endpoint]) -> None:
        self.routes: dict[bytes, _Route] = {}
        for path, endpoint in table.endpoints.items():
            self.routes[path.encode()] = _Route(endpoint, None)
        for path, endpoint in extra.items():
            self.routes[path.encode()] = _Route(endpoint, table.authorize)
        self.limits = config.limits
        self.limit: ConcurrencyLimit = config.limits.concurrency_limit()
        self.max_streams = config.max_concurrent_streams or config.limits.admitted
        self.connections: set[_ServerConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.deadlines: Deadlines[_Call] = Deadlines(_expire)


def _expire(call: _Call) -> None:
    """The call's deadline passed: its handler is cancelled and the call answered DEADLINE_EXCEEDED."""
    call.slot = 0
    if call.task is not None and not call.task.done():
        call.expired = True
        call.task.cancel()


class _ServerConnection(h2.Connection):
    def __init__(self, server: _Server) -> None:
        self.header_limit = server.limits.max_header_size
        super().__init__()
        self.server = server
        self._preface = False
        self._last_id = 0
        self._peer = ""
        self._resets = 0.0
        self._reset_time = 0.0
        self._waiting: dict[int, float] = {}  # single-request calls whose body is still arriving
        self._sweep: asyncio.TimerHandle | None = None
        self.going_away = False

    # --- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = str(peer[0])
            self._peer = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        self.write(
            h2.settings_frame(
                [
                    (h2.SETTINGS_MAX_CONCURRENT_STREAMS, self.server.max_streams),
                    (h2.SETTINGS_INITIAL_WINDOW_SIZE, h2.STREAM_WINDOW),
                    (h2.SETTINGS_MAX_HEADER_LIST_SIZE, self.header_limit),
                ]
            )
            + h2.window_update(0, h2.CONNECTION_WINDOW - h2.DEFAULT_WINDOW)
        )
        if self.server.stopping:
            self.close_gracefully()

    def data_received(self, data: bytes) -> None:
        if not self._preface:
            data = self._buffer + data
            if len(data) < len(h2.PREFACE):
                if not h2.PREFACE.startswith(data):
                    self._refuse_connection()
                self._buffer = data
                return
            if not data.startswith(h2.PREFACE):
                self._refuse_connection()
                return
            self._preface = True
            self._buffer = b""
            data = data[len(h2.PREFACE) :]
        super().data_received(data)

    def _refuse_connection(self) -> None:
        # not HTTP/2 with prior knowledge (an HTTP/1.1 request, say): nothing to answer in
        self.abort(h2.PROTOCOL_ERROR, "expected the HTTP/2 connection preface")

    def last_stream_id(self) -> int:
        return self._last_id

    def lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._sweep is not None:
            self._sweep.cancel()
        for call in list(self.streams.values()):
            self._cancel(call)
        self.streams.clear()

    def close_gracefully(self) -> None:
        """GOAWAY: no new streams; the connection closes once its streams are done."""
        if not self.going_away:
            self.going_away = True
            self.write(h2.goaway(self._last_id, h2.NO_ERROR))
        if not self.streams and self.transport is not None:
            self.transport.close()

    # --- streams --------------------------------------------------------------------------------

    def on_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], fits: bool, end: bool) -> None:
        call = self.streams.get(stream_id)
        if call is not None:  # trailers from the client: they may only end its stream
            if not end:
                self.reset_stream(stream_id, h2.PROTOCOL_ERROR)
                self._cancel(call)
                return
            self.on_data(stream_id, b"", True)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_id:
            raise h2.H2Error(h2.PROTOCOL_ERROR, "a client stream id that is not new")
        self._last_id = stream_id
        if self.going_away:
            self.reply(h2.rst_stream(stream_id, h2.REFUSED_STREAM))
            return
        if len(self.streams) >= self.server.max_streams:
            self.reply(h2.rst_stream(stream_id, h2.REFUSED_STREAM))
            return
        if not fits:
            self._trailers_only(
                stream_id,
                end,
                RpcError(
                    Code.RESOURCE_EXHAUSTED,
                    f"request headers larger than {self.header_limit} bytes (option max_header_size)",
                ),
            )
            return
        route = self._route_of(stream_id, fields, end)
        if route is None:
            return
        call = _Call(stream_id, self.peer_initial_window, route, fields)
        self.streams[stream_id] = call
        if route.single:
            if end:
                call.closed_remote = True
                self._start_single(call)
            else:
                self._await_body(stream_id)
        else:
            call.closed_remote = end
            try:
                call.deframer = Deframer(self.server.limits.max_message_size, message_encoding(fields))
            except RpcError as error:
                self._refuse(call, error)
                return
            self._start(call, self._stream_requests(call))

    def _route_of(self, stream_id: int, fields: list[tuple[bytes, bytes]], end: bool) -> _Route | None:
        """The method a new stream's request headers ask for, or None once the stream is answered
        (not a gRPC request: 415 or 405; a method the server does not serve: UNIMPLEMENTED)."""
        path = b""
        grpc_type = False
        post = False
        for name, value in fields:
            if name == b":path":
                path = value
            elif name == b"content-type":
                grpc_type = value.startswith(b"application/grpc")
            elif name == b":method":
                post = value == b"POST"
        if not grpc_type or not post:
            head = h2.encode_indexed_name(h2.STATUS, b"415" if not grpc_type else b"405")
            block = head + status_block(
                RpcError(Code.INTERNAL, "not a gRPC request (POST application/grpc)"), None
            )
            self.reply(self.header_frames(stream_id, block, True))
            if not end:
                self.reply(h2.rst_stream(stream_id, h2.NO_ERROR))
            return None
        route = self.server.routes.get(path)
        if route is None:
            self._trailers_only(
                stream_id, end, RpcError(Code.UNIMPLEMENTED, f"unknown method {path.decode('latin-1')[:200]}")
            )
        return route

    def on_data(self, stream_id: int, data: bytes, end: bool) -> None:
        call = self.streams.get(stream_id)
        if call is None:
            if stream_id > self._last_id:
                raise h2.H2Error(h2.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream already answered or reset: its DATA only counts against the window
        if call.closed_remote:
            self.reset_stream(stream_id, h2.STREAM_CLOSED)
            self._cancel(call)
            return
        if call.route.single:
            self.ack_data(call, len(data))
            body = call.body = call.body + data if call.body else data
            if len(body) >= 5 and int.from_bytes(body[1:5], "big") > self.server.limits.max_message_size:
                self._refuse(call, RpcError(Code.RESOURCE_EXHAUSTED, self._too_large()))
                return
            if end:
                call.closed_remote = True
                self._waiting.pop(stream_id, None)
                self._start_single(call)
            return
        deframer = call.deframer
        if deframer is not None and call.failure is None:
            try:
                call.inbox.extend(deframer.feed(data))
            except RpcError as error:
                call.failure = error
        if end:
            call.closed_remote = True
        call.wake()

    def on_reset(self, stream_id: int, code: int) -> None:
        call = self.streams.pop(stream_id, None)
        if call is None:
            return
        self.forget(stream_id)
        self._waiting.pop(stream_id, None)
        if call.task is not None and not call.task.done():
            self._count_reset()
        self._cancel(call)

    def _count_reset(self) -> None:
        now = self.loop.time()
        self._resets = self._resets * 0.5 ** (now - self._reset_time) + 1
        self._reset_time = now
        if self._resets > _RESET_BUDGET:
            logger.warning("gRPC peer %s reset too many streams: connection closed", self._peer)
            self.abort(h2.ENHANCE_YOUR_CALM, "too many streams reset", self._last_id)

    def _cancel(self, call: _Call) -> None:
        if call.slot:
            self.server.deadlines.discard(call.slot, call)
            call.slot = 0
        if call.task is not None and not call.task.done():
            call.task.cancel()
        call.wake()

    def _too_large(self) -> str:
        return f"a request message is larger than {self.server.limits.max_message_size} bytes"

    # --- answers without a handler ----------------------------------------------------------------

    def _trailers_only(
        self, stream_id: int, end: bool, error: RpcError, trailers: Metadata | None = None
    ) -> None:
        self.reply(self.header_frames(stream_id, _RESPONSE_HEAD + status_block(error, trailers), True))
        if not end:
            # the answer is complete: the rest of the request is not wanted (RFC 9113 section 8.1)
            self.reply(h2.rst_stream(stream_id, h2.NO_ERROR))

    def _refuse(self, call: _Call, error: RpcError) -> None:
        self._waiting.pop(call.id, None)
        self.forget(call.id)
        self._trailers_only(call.id, call.closed_remote, error)
        if self.going_away and not self.streams and self.transport is not None:
            self.transport.close()

    def _await_body(self, stream_id: int) -> None:
        self._waiting[stream_id] = self.loop.time() + self.server.limits.body_timeout
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._sweep_interval(), self._check_bodies)

    def _sweep_interval(self) -> float:
        return min(1.0, self.server.limits.body_timeout / 4)

    def _check_bodies(self) -> None:
        self._sweep = None
        now = self.loop.time()
        for stream_id, deadline in list(self._waiting.items()):
            if deadline <= now:
                call = self.streams.get(stream_id)
                del self._waiting[stream_id]
                if call is not None:
                    timeout = self.server.limits.body_timeout
                    message = f"the request did not arrive within {timeout:g} s (option body_timeout)"
                    self._refuse(call, RpcError(Code.DEADLINE_EXCEEDED, message))
        if self._waiting and not self.closed:
            self._sweep = self.loop.call_later(self._sweep_interval(), self._check_bodies)

    # --- running calls ------------------------------------------------------------------------------

    def _start_single(self, call: _Call) -> None:
        """The request stream of a unary or server-streaming call ended: check it held exactly one
        message and run the handler."""
        route = call.route
        body = call.body
        call.body = b""
        if len(body) < 5:
            return self._refuse(call, self._incomplete(route))
        try:
            deframer = Deframer(self.server.limits.max_message_size, message_encoding(call.fields))
            messages = deframer.feed(body)
        except RpcError as refused:
            return self._refuse(call, refused)
        if len(messages) > 1:
            many = RpcError(
                Code.UNIMPLEMENTED,
                f"{route.method.full_name} takes exactly one request message; the request stream held more",
            )
            return self._refuse(call, many)
        if deframer.partial or not messages:
            return self._refuse(call, self._incomplete(route))
        try:
            request = route.decode(messages[0])
        except Exception:
            name = route.method.input_type.DESCRIPTOR.full_name
            return self._refuse(
                call, RpcError(Code.INVALID_ARGUMENT, f"request is not a valid binary {name}")
            )
        self._start(call, request)

    @staticmethod
    def _incomplete(route: _Route) -> RpcError:
        name = route.method.input_type.DESCRIPTOR.full_name
        return RpcError(Code.INVALID_ARGUMENT, f"the request stream ended without a complete {name} message")

    def _context(self, call: _Call) -> Context:
        timeout = None
        fields = call.fields
        for name, value in fields:
            if name == b"grpc-timeout":
                timeout = value
                break
        deadline = None
        if timeout is not None:
            try:
                deadline = grpc_deadline(parse_grpc_timeout(timeout.decode("latin-1")))
            except ValueError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None
        context = Context(
            call.route.method,
            "grpc",
            metadata_source=lambda: request_metadata(fields),
            deadline=deadline,
            peer=self._peer,
        )
        call.context = context
        if deadline is not None:
            # one coalesced timer for the calls ending in the same millisecond (aio.Deadlines),
            # not a loop timer per call as DeadlineScope would take
            if deadline <= time.monotonic():
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            call.slot = self.server.deadlines.add(deadline, call)
        return context

    def _start(self, call: _Call, request: Any) -> None:
        route = call.route
        if (route.single and route.kind is MethodKind.UNARY) or route.kind is MethodKind.CLIENT_STREAMING:
            coro = self._unary(call, request)
        else:
            coro = self._streaming(call, request)
        task = call.task = self.loop.create_task(coro)
        tasks = self.server.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _authorized(self, call: _Call, context: Context) -> None:
        authorize = call.route.authorize
        if authorize is not None:
            error = authorize(context.metadata, call.route.method.full_name)
            if error is not None:
                if not call.route.single:
                    # Refused before the handler took a request: first let the request's first
                    # message (or its end) arrive, up to a second. grpcio's client reports a
                    # request write that meets an ended call as INTERNAL over the status it got.
                    until = self.loop.time() + 1.0
                    while not call.inbox and not call.closed_remote and call.id in self.streams:
                        left = until - self.loop.time()
                        if left <= 0:
                            break
                        call.waiter = self.loop.create_future()
                        await asyncio.wait([call.waiter], timeout=left)
                raise error

    async def _unary(self, call: _Call, request: Any) -> None:
        context: Context | None = None
        try:
            context = self._context(call)
            if call.route.authorize is not None:
                await self._authorized(call, context)
            response = await invoke_unary(
                call.route.endpoint, request, context, enforce_deadline=False, limit=self.server.limit
            )
            data = call.route.encode(response)
            if len(data) > self.server.limits.max_message_size:
                raise RpcError(
                    Code.RESOURCE_EXHAUSTED,
                    f"the response is larger than {self.server.limits.max_message_size} bytes",
                )
        except RpcError as error:
            await self._finish(call, error, context)
            return
        except asyncio.CancelledError:
            await self._cancelled(call, context)
            return
        except Exception as exc:  # a bug of the engine's own: answered, never a hang
            await self._finish(call, to_rpc_error(exc, context), context)
            return
        headers, trailers = context.response_metadata()
        head = _RESPONSE_HEAD
        if headers:
            head += metadata_fields(headers, strict=False)
        if call.id not in self.streams:
            return
        done = self.send(
            call,
            self.header_frames(call.id, head, False),
            envelope(data),
            status_block(None, trailers),
            True,
        )
        if not done:
            with contextlib.suppress(asyncio.CancelledError):
                await self.drained(call)
        self._close(call)

    async def _streaming(self, call: _Call, request: Any) -> None:
        context: Context | None = None
        route = call.route
        limit = self.server.limits.max_message_size
        try:
            context = self._context(call)
            if route.authorize is not None:
                await self._authorized(call, context)
            stream = invoke_stream(
                route.endpoint, request, context, enforce_deadline=False, limit=self.server.limit
            )
            async with contextlib.aclosing(stream) as responses:
                async for response in responses:
                    data = route.encode(response)
                    if len(data) > limit:
                        raise RpcError(Code.RESOURCE_EXHAUSTED, f"a response is larger than {limit} bytes")
                    head = b""
                    if not call.headers_sent:
                        head = self._head_frames(call, context)
                    if call.id not in self.streams:
                        raise asyncio.CancelledError
                    if not self.send(call, head, envelope(data), None, False) or self._paused:
                        await self.drained(call)
        except RpcError as error:
            await self._finish(call, error, context)
            return
        except asyncio.CancelledError:
            await self._cancelled(call, context)
            return
        except Exception as exc:
            await self._finish(call, to_rpc_error(exc, context), context)
            return
        await self._finish(call, None, context)

    def _head_frames(self, call: _Call, context: Context | None) -> bytes:
        call.headers_sent = True
        head = _RESPONSE_HEAD
        if context is not None:
            headers, _ = context.response_metadata()
            if headers:
                head += metadata_fields(headers, strict=False)
        return self.header_frames(call.id, head, False)

    async def _finish(self, call: _Call, error: RpcError | None, context: Context | None) -> None:
        """End the call with ``error`` (``None``: OK) and the handler's trailers."""
        if call.id not in self.streams:
            return
        trailers = None
        if context is not None:
            trailers = context.response_metadata()[1]
        if not call.headers_sent:
            headers = context.response_metadata()[0] if context is not None else None
            if error is not None and not headers:
                # trailers-only: the status in the one HEADERS frame
                done = self.send(call, b"", b"", _RESPONSE_HEAD + status_block(error, trailers), True)
            else:
                head = self._head_frames(call, context)
                done = self.send(call, head, b"", status_block(error, trailers), True)
        else:
            done = self.send(call, b"", b"", status_block(error, trailers), True)
        if not done:
            with contextlib.suppress(asyncio.CancelledError):
                await self.drained(call)
        self._close(call)

    async def _cancelled(self, call: _Call, context: Context | None) -> None:
        if context is not None:
            context.cancel()
        if call.expired and call.id in self.streams:
            await self._finish(call, RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"), context)
        elif call.id in self.streams:
            # cancelled by the server itself (a stop past its grace period), the stream still open
            await self._finish(call, RpcError(Code.UNAVAILABLE, "server is shutting down"), context)

    def _close(self, call: _Call) -> None:
        """The response is out: the stream is done on this side."""
        if call.slot:
            self.server.deadlines.discard(call.slot, call)
            call.slot = 0
        if call.id not in self.streams:
            return
        self.forget(call.id)
        self._waiting.pop(call.id, None)
        if not call.closed_remote:
            self.write(h2.rst_stream(call.id, h2.NO_ERROR))
        if self.going_away and not self.streams and self.transport is not None:
            self.transport.close()

    async def _stream_requests(self, call: _Call) -> AsyncIterator[Message]:
        """The request messages of a client-streaming or bidi call, as the handler takes them;
        their flow-control window reopens only then."""
        route = call.route
        deframer = call.deframer
        assert deframer is not None
        inbox = call.inbox
        while True:
            if inbox:
                data = inbox.popleft()
                self.ack_data(call, len(data) + 5)
                try:
                    message = route.decode(data)
                except Exception:
                    name = route.method.input_type.DESCRIPTOR.full_name
                    raise RpcError(Code.INVALID_ARGUMENT, f"request is not a valid binary {name}") from None
                yield message
                continue
            if call.failure is not None:
                raise call.failure
            if call.closed_remote:
                if deframer.partial:
                    name = route.method.input_type.DESCRIPTOR.full_name
                    raise RpcError(Code.INVALID_ARGUMENT, f"the request stream ended inside a {name} message")
                return
            if call.id not in self.streams:
                raise asyncio.CancelledError
            call.waiter = self.loop.create_future()
            await call.waiter


class NativeBinding(ServerBinding):
    """The native engine serving one :class:`~protobind.Server` at one address."""

    def __init__(
        self, server: _Server, listener: asyncio.Server, url: str, on_stop: Callable[[], Any]
    ) -> None:
        self._server = server
        self._listener = listener
        self._url = url
        self._on_stop = on_stop
        self._stopped = False

    @property
    def url(self) -> str:
        return self._url

    async def stop(self, grace: float | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        server.stopping = True
        await self._on_stop()
        self._listener.close()
        for connection in list(server.connections):
            connection.close_gracefully()
        tasks = list(server.tasks)
        if tasks and grace:
            await asyncio.wait(tasks, timeout=grace)
        for task in list(server.tasks):
            task.cancel()
        if server.tasks:
            await asyncio.wait(list(server.tasks), timeout=5)
        for connection in list(server.connections):
            if connection.transport is not None:
                connection.transport.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._listener.wait_closed(), 1)


def _tls_context(config: GrpcOptions) -> ssl.SSLContext:
    import tempfile

    assert config.tls_cert is not None and config.tls_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = f"{folder}/cert.pem", f"{folder}/key.pem"
        with open(cert, "wb") as file:
            file.write(config.tls_cert)
        with open(key, "wb") as file:
            file.write(config.tls_key)
        context.load_cert_chain(cert, key)
    if config.tls_ca is not None:
        context.load_verify_locations(cadata=config.tls_ca.decode())
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


async def serve_native(table: EndpointTable, address: Address, config: GrpcOptions) -> NativeBinding:
    """Serve ``table`` at ``address`` with the native engine."""
    from ._services import native_side_services

    extra, on_start, on_stop = native_side_services(table, config)
    server = _Server(table, config, extra)
    loop = asyncio.get_running_loop()
    sock = listen_socket(address.host, address.port or 0, reuse_port=config.reuse_port)
    try:
        context = _tls_context(config) if address.tls else None
        listener = await loop.create_server(
            lambda: _ServerConnection(server), sock=sock, ssl=context, backlog=1024
        )
    except BaseException:
        sock.close()  # a bad certificate or key: the socket is not left open
        raise
    port = sock.getsockname()[1]
    await on_start()
    return NativeBinding(server, listener, f"{address.scheme}://{address.target(port)}", on_stop)
