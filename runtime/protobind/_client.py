"""``Channel`` and ``connect()``: the client side that generated clients call into."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from google.protobuf.message import Message

from . import transport as registry
from ._context import CallInfo
from ._errors import Code, RpcError
from ._interceptors import ClientInterceptor, Invoker, chain_client
from ._metadata import Metadata, MetadataLike
from .method import MethodInfo
from .telemetry import Telemetry, TelemetryOption
from .transport import ClientTransport, check_options, query_options, transport_for_url

__all__ = [
    "Channel",
    "RequestStream",
    "connect",
]

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)

P = ParamSpec("P")
R = TypeVar("R")

#: What client-streaming and bidi methods accept as requests.
RequestStream = AsyncIterable[ReqT] | Iterable[ReqT]


async def _as_async_iterator(requests: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


async def _single(request: Any) -> AsyncIterator[Any]:
    yield request


class Channel:
    """A connection to one server URL, shared by any number of generated clients.

    Use it as an async context manager (``async with protobind.connect(url) as channel``), or call
    :meth:`close` when done. It connects on first use if not opened explicitly.
    """

    def __init__(
        self,
        url: str,
        *,
        interceptors: Sequence[ClientInterceptor] = (),
        options: Mapping[str, Any] | None = None,
        telemetry: TelemetryOption = None,
    ) -> None:
        self.url = url
        self.telemetry = Telemetry.from_option(telemetry)
        # telemetry reads no response metadata: only the user's interceptors make collecting it worth it
        self._interceptors_read_metadata = bool(interceptors)
        if self.telemetry is not None:  # outermost: its span is the parent of what goes on the wire
            interceptors = (self.telemetry.client_interceptor(url, registry), *interceptors)
        self.interceptors = tuple(interceptors)
        self._spec = transport_for_url(url)
        self._spec.check_installed(server=False)
        self._options = query_options(url, options)
        check_options(self._spec, self._options, server=False)
        self._transport: ClientTransport | None = None
        self._open_lock: asyncio.Lock | None = None
        # The loop the transport was opened on: its sockets and tasks belong to that loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unary: Invoker = self._unary_first_call
        self._stream: Invoker = self._stream_first_call

    @property
    def transport(self) -> ClientTransport:
        """The open client transport (``RuntimeError`` before :meth:`open`)."""
        if self._transport is None:
            raise RuntimeError("channel is not open")
        return self._transport

    async def open(self) -> Channel:
        """Connect now (otherwise the first call connects)."""
        if self._transport is not None:
            return self
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._transport is None:
                transport: ClientTransport = await self._spec.dial(self.url, self._options)
                self._unary = chain_client(transport.unary, self.interceptors)
                self._stream = chain_client(self._open_stream_with(transport), self.interceptors)
                self._transport = transport
                self._loop = asyncio.get_running_loop()
        return self

    @staticmethod
    def _open_stream_with(transport: ClientTransport) -> Invoker:
        async def open_stream(requests: Any, call: CallInfo) -> Any:
            return transport.stream(requests, call)

        return open_stream

    async def _unary_first_call(self, request: Any, call: CallInfo) -> Any:
        await self.open()
        return await self._unary(request, call)

    async def _stream_first_call(self, requests: Any, call: CallInfo) -> Any:
        await self.open()
        return await self._stream(requests, call)

    def _check_loop(self) -> None:
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            raise RuntimeError(
                "this protobind Channel was opened on another event loop and cannot be used from this "
                "one: open a Channel in each event loop (e.g. inside each asyncio.run()), or use "
                "protobind.connect_sync() from blocking code"
            )

    async def close(self) -> None:
        """Close the connection; calls in flight fail, later calls connect again."""
        transport, self._transport = self._transport, None
        loop, self._loop = self._loop, None
        self._unary = self._unary_first_call
        self._stream = self._stream_first_call
        if transport is None:
            return
        if loop is None or loop is asyncio.get_running_loop():
            await transport.close()
        elif loop.is_running():  # the owning loop runs in another thread: close the connection there
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(transport.close(), loop))
        # else the owning loop has stopped, and with it everything that could close the connection

    async def __aenter__(self) -> Channel:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the four call shapes generated clients use -------------------------------------------

    async def unary(
        self,
        method: MethodInfo[ReqT, RespT],
        request: ReqT,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> RespT:
        """Call a unary method (generated clients do this for you)."""
        # _check_loop and _check_request, written out on the path every small call takes. A loop
        # whose run records its thread (asyncio's own: _thread_id) and runs in this one is the
        # running loop: that answers without get_running_loop(), which costs a getpid() system
        # call per call on Python 3.11.
        loop = self._loop
        if (
            loop is not None
            and getattr(loop, "_thread_id", None) != threading.get_ident()
            and loop is not asyncio.get_running_loop()
        ):
            self._check_loop()
        if not isinstance(request, method.input_type):
            _check_request(method, request)
        if call is None:
            # CallInfo.prepare, written out
            call = CallInfo()
            call.wants_response_metadata = self._interceptors_read_metadata
            call.method = method
            if metadata is not None:
                call.metadata = Metadata(metadata)
            if timeout is not None:
                call.deadline = time.monotonic() + timeout
        else:
            call.prepare(method, timeout, metadata)
        return await self._unary(request, call)  # type: ignore[no-any-return]

    async def server_stream(
        self,
        method: MethodInfo[ReqT, RespT],
        request: ReqT,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> AsyncIterator[RespT]:
        """Call a server-streaming method; iterate the responses."""
        self._check_loop()
        _check_request(method, request)
        call = (call or CallInfo()).prepare(method, timeout, metadata)
        responses = await self._stream(_single(request), call)
        async for response in responses:
            yield response

    async def client_stream(
        self,
        method: MethodInfo[ReqT, RespT],
        requests: RequestStream[ReqT],
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> RespT:
        """Call a client-streaming method with an iterable or async iterable of requests."""
        self._check_loop()
        call = (call or CallInfo()).prepare(method, timeout, metadata)
        responses = await self._stream(_checked(method, requests), call)
        result: RespT | None = None
        async for response in responses:
            result = response
        if result is None:
            raise RpcError(Code.INTERNAL, f"{method.full_name}: server closed the stream without a response")
        return result

    async def bidi_stream(
        self,
        method: MethodInfo[ReqT, RespT],
        requests: RequestStream[ReqT],
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> AsyncIterator[RespT]:
        """Call a bidirectional-streaming method; iterate the responses while requests are sent."""
        self._check_loop()
        call = (call or CallInfo()).prepare(method, timeout, metadata)
        responses = await self._stream(_checked(method, requests), call)
        async for response in responses:
            yield response


def _check_request(method: MethodInfo[Any, Any], request: object) -> None:
    if not isinstance(request, method.input_type):
        raise TypeError(
            f"{method.full_name} takes {method.input_type.DESCRIPTOR.full_name}, not {type(request).__name__}"
        )


async def _checked(
    method: MethodInfo[Any, Any], requests: AsyncIterable[Any] | Iterable[Any]
) -> AsyncIterator[Any]:
    async for request in _as_async_iterator(requests):
        _check_request(method, request)
        yield request


def connect(
    url: str,
    *,
    interceptors: Sequence[ClientInterceptor] = (),
    options: Mapping[str, Any] | None = None,
    telemetry: TelemetryOption = None,
) -> Channel:
    """A :class:`Channel` to ``url`` (``inproc://``, ``grpc://``, ``grpcs://``, ``http://``,
    ``https://``, ``nats://``, ``tls://``). Transport options come from the URL's query string and
    ``options``; ``telemetry=True`` (or a :class:`protobind.Telemetry`) traces and measures every
    call. Use it as ``async with protobind.connect(url) as channel:``."""
    return Channel(url, interceptors=interceptors, options=options, telemetry=telemetry)


# Calls submitted by submit() and not finished: the event loop keeps only weak references to tasks.
_started: set[asyncio.Task[Any]] = set()


def submit(method: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> asyncio.Task[R]:
    """Submit a call and collect its result later: asynchronous request/response in one process.

    ``handle = protobind.submit(client.say_hello, HelloRequest(name="Ada"), timeout=2.0)`` takes
    a generated client method and its arguments, as typed as the method itself, and returns at
    once with an :class:`asyncio.Task`: ``await handle`` gives the reply or raises the call's
    :class:`RpcError`; ``asyncio.gather``, ``asyncio.as_completed`` and ``asyncio.wait`` collect
    many. Calls started one after another from one task are sent in that order, as soon as the
    caller next waits. ``handle.cancel()`` cancels the call as cancelling any caller does.
    """

    async def call() -> R:
        return await method(*args, **kwargs)

    name = getattr(method, "__qualname__", None) or "call"
    task = asyncio.get_running_loop().create_task(call(), name=f"protobind {name}")
    _started.add(task)
    task.add_done_callback(_started.discard)
    return task


def start(method: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> asyncio.Task[R]:
    """Deprecated name of :func:`submit` (it read like ``Server.start``); removed in the next release."""
    warnings.warn(
        "protobind.start() is now protobind.submit(); start will be removed in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return submit(method, *args, **kwargs)
