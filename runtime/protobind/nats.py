"""``nats://host:port[,host:port...]`` and ``tls://``: protobind over NATS request-reply.

The wire rules are in docs/protocols.md ("NATS request-reply"). In short: a service subscribes
once to ``{prefix}{package}.{Service}.*`` in a queue group; a unary call is one request and one
reply (the client multiplexes every reply over one wildcard inbox subscription); streams use
per-call inboxes with credit flow control and heartbeats (``_nats_stream``); errors carry the
NATS micro error headers plus the exact gRPC status; micro discovery is answered per service.

Options, from the URL query string or ``options`` (server = S, client = C):

``prefix`` (S, C)
    Prepended to every call subject; a trailing ``.`` is added when missing. Default none.
``queue_group`` (S)
    Queue group of the service subscriptions. Default ``protobind``.
``max_concurrency`` (S)
    Unary handlers running at once on this binding, and streams running at once; further calls
    wait. Default 1024.
``max_pending`` (S)
    Calls allowed to wait for a handler slot; beyond that a call is refused with
    RESOURCE_EXHAUSTED at once. Default 8192.
``window`` (S, C)
    Flow-control window of each stream direction this side receives, in messages. Default 64.
``heartbeat`` (S, C)
    Seconds between heartbeats on quiet streams; a stream whose peer is silent for three of its
    intervals fails with UNAVAILABLE (the server cancels the handler). Default 5.
``codec`` (C)
    ``proto`` (default) or ``json``: the body encoding the client sends and asks for.
``version`` (S)
    The version reported to micro discovery. Default: the protobind version.
``name``, ``connect_timeout``, ``reconnect_wait``, ``max_reconnect_attempts`` (default -1: for
ever), ``user``, ``password``, ``token``, ``creds`` (a credentials file), ``nkeys_seed`` (a seed
file), ``tls_ca``, ``tls_cert``, ``tls_key``, ``tls_hostname`` (files and names for ``tls://``)
and ``ssl_context`` (Python only) go to the NATS connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
import logging
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast
from urllib.parse import urlsplit

from google.protobuf.message import Message
from nats import errors as nats_errors
from nats.aio.msg import Msg

from . import __version__
from ._nats_client import Connection
from ._nats_delivery import ConsumerPool, Delivery
from ._nats_micro import EndpointStats, MicroService, answers, subjects
from ._nats_stream import ACCEPT, CANCEL, END, HEADERS, OPEN, Heartbeats, StreamState
from ._nats_wire import (
    CANCEL_SUBJECT,
    CONTENT_TYPE,
    COUNT,
    FRAME,
    JSON_CONTENT_TYPE,
    STATUS,
    TIMEOUT,
    TRAILER_PREFIX,
    codec_for,
    error_body,
    error_headers,
    header,
    headers_size,
    put_metadata,
    read_error,
    read_metadata,
    read_request_headers,
    read_response_headers,
)
from .codec import JSON, PROTO, Codec
from .context import CallInfo, Context
from .errors import Code, RpcError
from .method import MethodInfo
from .server import Endpoint, invoke_stream, invoke_unary

if TYPE_CHECKING:
    from .server import Server

__all__ = ["NatsBinding", "NatsTransport", "dial", "serve"]

logger = logging.getLogger("protobind.nats")

T = TypeVar("T")

_SERVER_OPTIONS = {"queue_group", "max_concurrency", "max_pending", "version"}
_CLIENT_OPTIONS = {"codec"}
_CONNECTION_OPTIONS = {
    "prefix",
    "window",
    "heartbeat",
    "name",
    "connect_timeout",
    "reconnect_wait",
    "max_reconnect_attempts",
    "user",
    "password",
    "token",
    "creds",
    "nkeys_seed",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_hostname",
    "ssl_context",
}
_KNOWN_OPTIONS = _SERVER_OPTIONS | _CLIENT_OPTIONS | _CONNECTION_OPTIONS


# --- options and connections ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    servers: list[str]
    prefix: str
    queue_group: str
    max_concurrency: int
    max_pending: int
    window: int
    heartbeat: float
    codec: Codec
    version: str
    connect: dict[str, Any]


def _number(options: Mapping[str, Any], key: str, default: float, kind: type[float] | type[int]) -> Any:
    value = options.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"NATS option {key}={value!r} must be a number") from None


def _settings(url: str, options: Mapping[str, Any]) -> _Settings:
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls"):
        raise ValueError(f"not a NATS URL: {url!r}")
    netloc = parts.netloc
    userinfo, _, hosts = netloc.rpartition("@")
    if not hosts:
        raise ValueError(f"NATS URL needs a host: nats://host:port, got {url!r}")
    auth = userinfo + "@" if userinfo else ""
    servers = [f"{parts.scheme}://{auth}{host.strip()}" for host in hosts.split(",") if host.strip()]
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown NATS option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KNOWN_OPTIONS))}"
        )
    prefix = str(options.get("prefix", "") or "")
    if prefix and not prefix.endswith("."):
        prefix += "."
    codec_name = str(options.get("codec", "proto")).lower()
    if codec_name not in ("proto", "json"):
        raise ValueError(f"NATS option codec={codec_name!r} must be proto or json")
    connect: dict[str, Any] = {
        "connect_timeout": _number(options, "connect_timeout", 2.0, float),
        "reconnect_time_wait": _number(options, "reconnect_wait", 2.0, float),
        "max_reconnect_attempts": _number(options, "max_reconnect_attempts", -1, int),
    }
    if "name" in options:
        connect["name"] = str(options["name"])
    for key in ("user", "password", "token"):
        if key in options:
            connect[key] = str(options[key])
    if "creds" in options:
        connect["user_credentials"] = str(options["creds"])
    if "nkeys_seed" in options:
        connect["nkeys_seed"] = str(options["nkeys_seed"])
    tls = _ssl_context(options)
    if tls is not None:
        connect["tls"] = tls
    if "tls_hostname" in options:
        connect["tls_hostname"] = str(options["tls_hostname"])
    return _Settings(
        servers=servers,
        prefix=prefix,
        queue_group=str(options.get("queue_group", "protobind")),
        max_concurrency=max(1, _number(options, "max_concurrency", 1024, int)),
        max_pending=max(0, _number(options, "max_pending", 8192, int)),
        window=max(1, _number(options, "window", 64, int)),
        heartbeat=max(0.01, _number(options, "heartbeat", 5.0, float)),
        codec=JSON if codec_name == "json" else PROTO,
        version=str(options.get("version", __version__)),
        connect=connect,
    )


def _ssl_context(options: Mapping[str, Any]) -> ssl.SSLContext | None:
    context = options.get("ssl_context")
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise ValueError("NATS option ssl_context must be an ssl.SSLContext")
        return context
    if not any(key in options for key in ("tls_ca", "tls_cert", "tls_key")):
        return None
    context = ssl.create_default_context(cafile=options.get("tls_ca"))
    if "tls_cert" in options:
        context.load_cert_chain(str(options["tls_cert"]), options.get("tls_key"))
    return context


async def _connect(settings: _Settings, **callbacks: Any) -> Connection:
    async def error_cb(exc: Exception) -> None:
        # nats-py reports every failed reconnect attempt here; the default handler logs tracebacks
        logger.warning("NATS connection: %s", exc or type(exc).__name__)

    client = Connection()
    # nats-py retries its first connection as often as later reconnections; when it cannot reach
    # any server now, fail after one more try (the caller sees UNAVAILABLE) rather than hang
    first = {**settings.connect, "max_reconnect_attempts": 1}
    try:
        await client.connect(settings.servers, error_cb=error_cb, **first, **callbacks)
    except (OSError, asyncio.TimeoutError, nats_errors.Error) as exc:
        raise ConnectionError(
            f"cannot connect to NATS at {', '.join(settings.servers)}: {exc or type(exc).__name__}"
        ) from exc
    # nats-py reads its options at each reconnection: from now on, the configured persistence
    client.options["max_reconnect_attempts"] = settings.connect["max_reconnect_attempts"]
    return client


def _subject(prefix: str, method: MethodInfo[Any, Any]) -> str:
    return f"{prefix}{method.service}.{method.name}"


def _publish_error(exc: Exception) -> RpcError:
    """The error a caller sees when NATS refused to send its message."""
    if isinstance(exc, nats_errors.MaxPayloadError):
        return RpcError(Code.RESOURCE_EXHAUSTED, "message exceeds the NATS server's max_payload")
    if isinstance(exc, (nats_errors.ConnectionClosedError, nats_errors.OutboundBufferLimitError)):
        return RpcError(Code.UNAVAILABLE, "not connected to NATS")
    return RpcError(Code.UNAVAILABLE, f"NATS refused the message: {type(exc).__name__}")


def _too_large(size: int, limit: int) -> RpcError:
    return RpcError(
        Code.RESOURCE_EXHAUSTED, f"message of {size} bytes exceeds the NATS server's max_payload ({limit})"
    )


#: An upper bound of the header block of a call without metadata (content type, timeout).
_SMALL_HEADERS = 128


def _loop_time(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    # deadlines are time.monotonic() values; the loop's clock is the same in asyncio's default loop,
    # converting keeps timers right on loops where it is not
    return loop.time() + (deadline - time.monotonic())


class _Deadlines(Generic[T]):
    """Deadline timers for many calls at once.

    An event-loop timer per call costs a push onto the loop's heap, whose comparisons run in
    Python, plus a cancelled entry left behind: at tens of thousands of calls per second that is a
    large share of a call's cost. Here calls whose deadlines fall in the same millisecond share one
    loop timer, and a call that finishes first just leaves its slot. Deadlines fire up to one
    millisecond late.
    """

    def __init__(self, expire: Callable[[T], None]) -> None:
        self._expire = expire
        self._slots: dict[int, set[T]] = {}
        self._timers: set[int] = set()  # slots with a loop timer pending

    def add(self, deadline: float, item: T) -> int:
        slot = int(deadline * 1000) + 1
        items = self._slots.get(slot)
        if items is None:
            items = self._slots[slot] = set()
            if slot not in self._timers:
                self._timers.add(slot)
                loop = asyncio.get_running_loop()
                loop.call_at(_loop_time(loop, slot / 1000), self._fire, slot)
        items.add(item)
        return slot

    def discard(self, slot: int, item: T) -> None:
        items = self._slots.get(slot)
        if items is not None:
            items.discard(item)
            if not items:
                del self._slots[slot]

    def _fire(self, slot: int) -> None:
        self._timers.discard(slot)
        for item in self._slots.pop(slot, ()):
            self._expire(item)


# --- server -----------------------------------------------------------------------------------


class _Route:
    __slots__ = ("endpoint", "input_type", "method", "stats", "streaming")

    def __init__(self, endpoint: Endpoint, stats: EndpointStats) -> None:
        self.endpoint = endpoint
        self.method = endpoint.method
        self.input_type: type[Message] = endpoint.method.input_type
        self.stats = stats
        self.streaming = endpoint.method.kind.client_streams or endpoint.method.kind.server_streams


def _record(stats: EndpointStats, started: int, error: RpcError | None) -> None:
    stats.num_requests += 1
    stats.processing_time += time.perf_counter_ns() - started
    if error is not None:
        stats.num_errors += 1
        stats.last_error = f"{error.code.name}: {error.message}"


class NatsBinding:
    """A protobind server on one NATS connection (see the module docstring for the options)."""

    def __init__(self, server: Server, url: str, settings: _Settings) -> None:
        self.server = server
        self._url = url
        self.settings = settings
        self._nc: Connection | None = None
        self._routes: dict[str, _Route] = {}
        self._micro: list[MicroService] = []
        self._service_subs: list[Any] = []
        self._other_subs: list[Any] = []
        self._pool = ConsumerPool(settings.max_concurrency)
        self._deliveries: list[Delivery] = []
        # fallback when nats-py's pending queue is not reachable: a task per message, bounded
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._fallback_tasks: set[asyncio.Task[None]] = set()
        # reply subject (or a private key for one-way calls) -> the task running that call, for
        # the calls that are waiting inside their handler (the others cannot be cancelled anyway)
        self._calls: dict[str, asyncio.Task[Any]] = {}
        self._streams: dict[str, StreamState] = {}
        self._waiting_streams: collections.deque[tuple[_Route, Msg]] = collections.deque()
        self._running_streams = 0
        self._closing = False
        self._heartbeats = Heartbeats(settings.heartbeat)
        self._stream_inbox = ""
        self._tokens = itertools.count(1)
        self._deadlines: _Deadlines[str] = _Deadlines(self._expire_call)
        # calls this binding cancelled, and why: their CancelledError ends the call, not the consumer
        self._cancelled: dict[str, RpcError] = {}

    @property
    def url(self) -> str:
        return self._url

    @property
    def connection(self) -> Connection:
        if self._nc is None:
            raise RuntimeError("the NATS binding is not started")
        return self._nc

    async def start(self) -> None:
        settings = self.settings
        nc = self._nc = await _connect(
            settings,
            name=settings.connect.get("name", "protobind server"),
            disconnected_cb=self._on_disconnect,
        )
        try:
            services = []
            for info in self.server.services:
                stats = []
                for method in info.methods:
                    subject = _subject(settings.prefix, method)
                    route = _Route(self.server.endpoints[method.path], EndpointStats(method, subject))
                    self._routes[subject] = route
                    stats.append(route.stats)
                services.append(MicroService(info, stats, settings.queue_group, settings.version))
            self._micro = services
            self._stream_inbox = nc.new_inbox() + "."
            self._other_subs.append(await nc.subscribe(self._stream_inbox + "*", cb=self._on_stream_frame))
            self._other_subs.append(await nc.subscribe(settings.prefix + CANCEL_SUBJECT, cb=self._on_cancel))
            for subject in subjects(services):
                self._other_subs.append(await nc.subscribe(subject, cb=self._on_discovery))
            for info in self.server.services:
                await self._subscribe_service(f"{settings.prefix}{info.name}.*")
            # callers on other connections may call as soon as start() returns
            await nc.settle()
        except BaseException:
            await nc.close()
            raise

    async def _subscribe_service(self, subject: str) -> None:
        nc = self.connection
        queue = self.settings.queue_group
        sub = await nc.subscribe(subject, queue=queue)
        delivery = Delivery.attach(sub, self._on_call, self._pool, self.settings.max_pending, self._shed)
        if delivery is None:
            await sub.unsubscribe()
            sub = await nc.subscribe(subject, queue=queue, cb=self._on_call_in_task)
        else:
            self._deliveries.append(delivery)
        self._service_subs.append(sub)

    # --- dispatch ---

    async def _on_call(self, msg: Msg, delivery: Delivery | None = None) -> None:
        """Serve one call message; runs in a consumer (see _nats_delivery) and never raises.
        Unary calls are served right here: this is the path every small call takes."""
        route = self._routes.get(msg.subject)
        if route is None or route.streaming or self._closing:
            await self._on_other_call(msg, route)
        else:
            await self._serve_unary(route, msg, delivery)

    async def _on_other_call(self, msg: Msg, route: _Route | None) -> None:
        if route is None:
            await self._refuse(msg, RpcError(Code.UNIMPLEMENTED, f"method {msg.subject} is not served here"))
        elif self._closing:
            await self._refuse(msg, RpcError(Code.UNAVAILABLE, "the server is shutting down"))
        elif header(msg.headers, FRAME) != OPEN:
            await self._refuse(msg, _not_opened(route))
        elif self._running_streams < self.settings.max_concurrency:
            self._start_stream(route, msg)
        elif len(self._waiting_streams) < self.settings.max_pending:
            self._waiting_streams.append((route, msg))
        else:
            await self._refuse(msg, RpcError(Code.RESOURCE_EXHAUSTED, "the server is overloaded"))

    async def _shed(self, msg: Msg) -> None:
        await self._refuse(msg, RpcError(Code.RESOURCE_EXHAUSTED, "the server is overloaded"))

    async def _on_call_in_task(self, msg: Msg) -> None:
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._on_call(msg))
        self._fallback_tasks.add(task)
        task.add_done_callback(self._fallback_done)

    def _fallback_done(self, task: asyncio.Task[None]) -> None:
        self._fallback_tasks.discard(task)
        self._slots.release()

    def _start_stream(self, route: _Route, msg: Msg) -> None:
        self._running_streams += 1
        key = msg.reply or f"one-way {next(self._tokens)}"
        self._calls[key] = asyncio.get_running_loop().create_task(self._serve_stream(route, msg, key))

    def _stream_done(self, key: str) -> None:
        self._running_streams -= 1
        self._calls.pop(key, None)
        self._cancelled.pop(key, None)
        if self._waiting_streams and not self._closing:
            self._start_stream(*self._waiting_streams.popleft())

    async def _refuse(self, msg: Msg, error: RpcError) -> None:
        if msg.reply:
            try:
                codec = codec_for(msg.headers)
            except RpcError:
                codec = PROTO
            await self._send(msg.reply, error_body(error, codec), error_headers(error, codec))

    async def _on_cancel(self, msg: Msg) -> None:
        self._cancel_call(msg.data.decode("utf-8", "replace"), _CANCELLED_BY_CLIENT)

    def _cancel_call(self, key: str, reason: RpcError) -> None:
        task = self._calls.get(key)
        if task is not None and not task.done() and key not in self._cancelled:
            self._cancelled[key] = reason
            task.cancel()

    async def _on_stream_frame(self, msg: Msg) -> None:
        state = self._streams.get(msg.subject[len(self._stream_inbox) :])
        if state is not None:
            state.feed(msg)

    async def _on_discovery(self, msg: Msg) -> None:
        if msg.reply:
            for body in answers(self._micro, msg.subject):
                await self._send(msg.reply, body, None)

    async def _on_disconnect(self) -> None:
        # frames may be lost while disconnected: streams cannot go on reliably, end them now
        for state in list(self._streams.values()):
            state.peer_gone(RpcError(Code.UNAVAILABLE, "the server lost its NATS connection"))

    async def _send(self, subject: str, body: bytes, headers: dict[str, str] | None) -> None:
        """Publish a reply; a reply that cannot be sent is dropped (the caller times out or
        notices the lost connection), never raised into the dispatcher."""
        try:
            await self.connection.send(subject, body, headers=headers)
        except (nats_errors.Error, OSError) as exc:
            logger.debug("reply to %s dropped: %r", subject, exc)

    # --- unary and one-way calls ---

    async def _serve_unary(self, route: _Route, msg: Msg, delivery: Delivery | None) -> None:
        started = time.perf_counter_ns()
        reply = msg.reply
        codec: Codec = PROTO
        context: Context | None = None
        error: RpcError | None = None
        key: str | None = None
        slot = 0
        try:
            headers = msg.headers
            deadline = None
            if headers is None:
                context = Context(route.method, "nats", peer=reply.rpartition(".")[0])
            else:
                codec, timeout_ms, metadata = read_request_headers(headers)
                if timeout_ms is not None:
                    if timeout_ms <= 0:
                        raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
                    deadline = time.monotonic() + timeout_ms / 1000
                context = Context(
                    route.method, "nats", metadata=metadata, deadline=deadline, peer=reply.rpartition(".")[0]
                )
            if codec is PROTO:
                try:
                    request = route.input_type.FromString(msg.data)
                except Exception:
                    request = PROTO.decode(msg.data, route.input_type)  # raises the caller's error
            else:
                request = codec.decode(msg.data, route.input_type)
            # The deadline is enforced by self._deadlines, far cheaper than a loop timer per call.
            call = invoke_unary(route.endpoint, request, context, enforce_deadline=False)
            # First step inline, in a copy of the context as a task of its own would have: most
            # handlers finish without waiting, and then nothing else is needed.
            isolated = contextvars.copy_context()
            try:
                waiting = isolated.run(call.send, None)
            except StopIteration as done:
                response = done.value
            else:
                # the handler waits: let another consumer take the next message, and from now on
                # the call can be cancelled (deadline, caller, stop)
                if delivery is not None:
                    delivery.waiting()
                key = reply or f"one-way {next(self._tokens)}"
                task = asyncio.current_task()
                assert task is not None
                self._calls[key] = task
                if deadline is not None:
                    slot = self._deadlines.add(deadline, key)
                response = await _Resume(call, isolated, waiting)
            if reply:
                body = response.SerializeToString() if codec is PROTO else codec.encode(response)
                out = _response_headers(context, codec)
                nc = self.connection
                size = len(body) if out is None else len(body) + headers_size(out)
                if size <= nc.max_payload:
                    try:
                        await nc.send(reply, body, headers=out)
                    except (nats_errors.Error, OSError) as exc:
                        logger.debug("reply to %s dropped: %r", reply, exc)
                else:
                    error = _too_large(size, nc.max_payload)
        except RpcError as exc:
            error = exc
        except asyncio.CancelledError:
            reason = None if key is None else self._cancelled.pop(key, None)
            if reason is None:
                raise  # not a cancellation of this call: the consumer itself is being cancelled
            # the cancellation was for this call only: the consumer goes on to the next message
            _uncancel()
            error = reason
            if reason is _CANCELLED_BY_CLIENT:
                reply = ""  # nobody waits for a reply
        finally:
            if key is not None:
                del self._calls[key]
                self._cancelled.pop(key, None)
                if slot:
                    self._deadlines.discard(slot, key)
        stats = route.stats
        stats.num_requests += 1
        stats.processing_time += time.perf_counter_ns() - started
        if error is not None:
            stats.num_errors += 1
            stats.last_error = f"{error.code.name}: {error.message}"
            if reply:
                await self._reply_error(route, reply, error, codec, context)

    async def _reply_error(
        self, route: _Route, reply: str, error: RpcError, codec: Codec, context: Context | None
    ) -> None:
        out = error_headers(error, codec)
        if context is not None:
            try:
                _add_response_metadata(out, context)
            except RpcError:
                logger.error("%s set response metadata that NATS cannot carry", route.method.full_name)
                out = error_headers(error, codec)
        await self._send(reply, error_body(error, codec), out)

    def _expire_call(self, key: str) -> None:
        self._cancel_call(key, RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))

    # --- streaming calls ---

    async def _serve_stream(self, route: _Route, msg: Msg, key: str) -> None:
        started = time.perf_counter_ns()
        settings = self.settings
        token = str(next(self._tokens))
        state = StreamState(
            self._stream_inbox + token,
            self.connection.send,
            lambda: self.connection.max_payload,
            settings.window,
            settings.heartbeat,
        )
        state.learn_peer(msg.headers, msg.reply)
        task = asyncio.current_task()
        assert task is not None

        def cancel_handler() -> None:
            task.cancel()

        state.on_cancel = cancel_handler
        self._streams[token] = state
        self._heartbeats.add(state)
        codec: Codec = PROTO
        context: Context | None = None
        error: RpcError | None = None
        try:
            try:
                codec, timeout_ms, metadata = read_request_headers(msg.headers or {})
                context = Context(
                    route.method,
                    "nats",
                    metadata=metadata,
                    deadline=None if timeout_ms is None else time.monotonic() + timeout_ms / 1000,
                    peer=msg.reply.rpartition(".")[0],
                )
                await state.control(ACCEPT, state.announce())
                await self._run_stream(route, msg, state, codec, context)
            except RpcError as exc:
                error = exc
            except asyncio.CancelledError:
                stopped = self._cancelled.pop(key, None)
                if state.gone:
                    error = state.error if isinstance(state.error, RpcError) else None
                elif stopped is not None:
                    _uncancel()
                    error = stopped
                elif context is not None and context.cancelled():
                    # the deadline struck while we waited for flow-control credit
                    _uncancel()
                    error = RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
                else:
                    raise
            _record(route.stats, started, error)
            if not state.gone and msg.reply:
                await self._end_stream(state, codec, context, error)
        except RpcError as exc:
            logger.debug("stream %s ended without its end frame: %s", key, exc)
        finally:
            self._heartbeats.discard(state)
            self._streams.pop(token, None)
            self._stream_done(key)

    async def _run_stream(
        self, route: _Route, msg: Msg, state: StreamState, codec: Codec, context: Context
    ) -> None:
        method = route.method
        request: Any
        if method.kind.client_streams:
            request = _incoming(state, codec, method.input_type)
        else:
            request = codec.decode(msg.data, method.input_type)
        if method.kind.server_streams:
            responses = cast(AsyncGenerator[Message, None], invoke_stream(route.endpoint, request, context))
            try:
                async for response in responses:
                    if not state.headers_sent:
                        await _send_headers(state, context)
                    await state.send_data(codec.encode(response))
            finally:
                await responses.aclose()
        else:
            response = await invoke_unary(route.endpoint, request, context)
            await _send_headers(state, context)
            await state.send_data(codec.encode(response))

    async def _end_stream(
        self, state: StreamState, codec: Codec, context: Context | None, error: RpcError | None
    ) -> None:
        headers: dict[str, str] = {COUNT: str(state.sent)}
        body = b""
        if error is not None:
            headers.update(error_headers(error, codec))
            body = error_body(error, codec)
        else:
            headers[STATUS] = "0"
        if context is not None:
            try:
                if not state.headers_sent:
                    # headers that never went out with a message still reach the caller
                    await _send_headers(state, context)
                put_metadata(headers, context.response_trailers)
            except RpcError as exc:
                if exc.code is Code.UNAVAILABLE:
                    raise
                logger.error("%s set response metadata that NATS cannot carry: %s", context.method, exc)
        try:
            await state.control(END, headers, body)
        except RpcError as exc:
            if exc.code is not Code.RESOURCE_EXHAUSTED:
                raise
            # trailers too large for one message: the caller still learns how the call ended
            too_large = RpcError(Code.RESOURCE_EXHAUSTED, "the stream's trailers exceed max_payload")
            await state.control(END, {COUNT: str(state.sent), **error_headers(too_large, codec)})

    # --- stopping ---

    async def stop(self, grace: float | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._pool.closing = True
        nc = self._nc
        if nc is None:
            return
        for sub in self._service_subs:
            with contextlib.suppress(nats_errors.Error):
                await sub.unsubscribe()
        self._service_subs.clear()
        refused = [msg for _, msg in self._waiting_streams]
        self._waiting_streams.clear()
        for delivery in self._deliveries:
            refused += delivery.take_remaining()
        for msg in refused:
            await self._refuse(msg, RpcError(Code.UNAVAILABLE, "the server is shutting down"))
        busy = set(self._calls.values())
        for delivery in self._deliveries:
            for consumer in delivery.tasks:
                if consumer not in busy:
                    consumer.cancel()  # idle: waiting for a message that will not come
        pending = {task for task in (*busy, *self._fallback_tasks) if not task.done()}
        if pending and grace:
            await asyncio.wait(pending, timeout=grace)
        for key in list(self._calls):
            self._cancel_call(key, _STOPPED)
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        self._heartbeats.close()
        try:
            await nc.close()
        except Exception as exc:  # closing a broken connection must not fail stop()
            logger.debug("closing the NATS connection: %r", exc)


class _Resume:
    """Go on awaiting a coroutine whose first step already ran, each step in ``context``.

    This is what a task does for its coroutine; it lets a handler that started inline in a
    consumer wait there, in its own context, without a task being created for it.
    """

    __slots__ = ("_context", "_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, T], context: contextvars.Context, waiting: Any) -> None:
        self._coro = coro
        self._context = context
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        run = self._context.run
        waiting = self._waiting
        while True:
            try:
                value = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    waiting = run(coro.throw, exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    waiting = run(coro.send, value)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


def _not_opened(route: _Route) -> RpcError:
    return RpcError(
        Code.INVALID_ARGUMENT,
        f"{route.method.full_name} is a {route.method.kind.value.replace('_', ' ')} method: "
        "start it with a Protobind-Frame: open message (see docs/protocols.md)",
    )


_CANCELLED_BY_CLIENT = RpcError(Code.CANCELLED, "cancelled by the client")
_STOPPED = RpcError(Code.UNAVAILABLE, "the server stopped before the call finished")


def _uncancel() -> None:
    # the cancellation was ours and is handled: leave the task as if it never happened (3.11+)
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def _response_headers(context: Context, codec: Codec) -> dict[str, str] | None:
    """The reply's headers: ``None`` (no header block at all) in the common case."""
    headers: dict[str, str] | None = None
    if codec is JSON:
        headers = {CONTENT_TYPE: JSON_CONTENT_TYPE}
    response_headers, trailers = context.response_metadata()
    if response_headers or trailers:
        if headers is None:
            headers = {}
        _add_response_metadata(headers, context)
    return headers


def _add_response_metadata(headers: dict[str, str], context: Context) -> None:
    response_headers, trailers = context.response_metadata()
    if response_headers:
        put_metadata(headers, response_headers)
    if trailers:
        put_metadata(headers, trailers, prefix=TRAILER_PREFIX)


async def _send_headers(state: StreamState, context: Context) -> None:
    """The response headers frame, once per stream, if the handler set any headers."""
    state.headers_sent = True
    response_headers = context.response_headers
    if response_headers:
        frame: dict[str, str] = {}
        put_metadata(frame, response_headers)
        await state.control(HEADERS, frame)


async def _incoming(state: StreamState, codec: Codec, message_type: type[Message]) -> AsyncIterator[Any]:
    """The requests of a client or bidi stream, as the handler reads them."""
    while True:
        frame, msg = await state.receive()
        if frame is None:
            yield codec.decode(msg.data, message_type)
        elif frame == END:
            error = state.end_count(msg.headers)
            if error is not None:
                raise error
            return


async def serve(server: Server, url: str, options: Mapping[str, Any]) -> NatsBinding:
    binding = NatsBinding(server, url, _settings(url, options))
    await binding.start()
    return binding


# --- client -----------------------------------------------------------------------------------


async def _send_cancel(state: StreamState) -> None:
    try:
        await state.control(CANCEL)
    except RpcError as exc:  # the server notices a vanished client by itself
        logger.debug("cancel frame not sent: %s", exc)


def _decode_response(codec: Codec, data: bytes, message_type: type[Message]) -> Message:
    try:
        return codec.decode(data, message_type)
    except RpcError as exc:
        # the server sent what the method's response type cannot be: the server's fault, as in gRPC
        raise RpcError(Code.INTERNAL, f"invalid response: {exc.message}") from None


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))


class NatsTransport:
    """The client side: one NATS connection, one wildcard subscription for every reply."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self._nc: Connection | None = None
        self._inbox = ""
        self._unary: dict[str, asyncio.Future[Msg]] = {}
        self._streams: dict[str, StreamState] = {}
        self._subjects: dict[str, str] = {}
        self._next_token = itertools.count(1).__next__
        self._deadlines: _Deadlines[asyncio.Future[Msg]] = _Deadlines(_expire)
        self._heartbeats = Heartbeats(settings.heartbeat)
        self._background: set[asyncio.Task[Any]] = set()
        self._codec = settings.codec
        self._closed = False

    async def start(self) -> None:
        nc = self._nc = await _connect(
            self.settings,
            name=self.settings.connect.get("name", "protobind client"),
            disconnected_cb=self._on_disconnect,
        )
        try:
            self._inbox = nc.new_inbox() + "."
            await nc.subscribe(self._inbox + "*", cb=self._on_reply)
            await nc.flush()
        except BaseException:
            await nc.close()
            raise

    @property
    def connection(self) -> Connection:
        if self._nc is None:
            raise RuntimeError("the NATS transport is not started")
        return self._nc

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox) :]
        future = self._unary.get(token)
        if future is not None:
            if not future.done():
                future.set_result(msg)
            return
        state = self._streams.get(token)
        if state is not None:
            state.feed(msg)

    async def _on_disconnect(self) -> None:
        # a reply published while we were away is lost for good: fail those calls now, not never
        self._fail_all(RpcError(Code.UNAVAILABLE, "lost the connection to NATS"))

    def _fail_all(self, error: RpcError) -> None:
        # one exception object per call: each is raised, and given a traceback, in its own task
        for future in list(self._unary.values()):
            if not future.done():
                future.set_exception(RpcError(error.code, error.message))
        for state in list(self._streams.values()):
            state.peer_gone(RpcError(error.code, error.message))

    def _subject_of(self, method: MethodInfo[Any, Any]) -> str:
        subject = self._subjects[method.path] = _subject(self.settings.prefix, method)
        return subject

    def _request_headers(self, call: CallInfo, codec: Codec) -> dict[str, str]:
        headers: dict[str, str] = {}
        if codec is JSON:
            headers[CONTENT_TYPE] = JSON_CONTENT_TYPE
        if call.deadline is not None:
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded before the call was sent")
            headers[TIMEOUT] = str(max(1, int(remaining * 1000)))
        if call.metadata:
            try:
                put_metadata(headers, call.metadata)
            except RpcError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, exc.message) from None
        return headers

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _announce_cancel(self, reply: str) -> None:
        try:
            await self.connection.send(self.settings.prefix + CANCEL_SUBJECT, reply.encode())
        except (nats_errors.Error, OSError) as exc:
            logger.debug("cancel notice not sent: %r", exc)

    async def unary(self, request: Message, call: CallInfo) -> Message:
        method = call.method
        assert method is not None
        subject = self._subjects.get(method.path) or self._subject_of(method)
        codec = self._codec
        data = codec.encode(request)
        headers = None
        size = len(data)
        if call.metadata or call.deadline is not None or codec is not PROTO:
            headers = self._request_headers(call, codec)
            # without metadata the headers are a few dozen bytes; only metadata can make them large
            size += headers_size(headers) if call.metadata else _SMALL_HEADERS
        nc = self.connection
        if size > nc.max_payload:
            raise _too_large(size, nc.max_payload)
        if not nc.is_connected:
            raise RpcError(Code.UNAVAILABLE, "not connected to NATS")
        token = str(self._next_token())
        reply = self._inbox + token
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._unary[token] = future
        slot = 0
        if call.deadline is not None:
            slot = self._deadlines.add(call.deadline, future)
        try:
            await nc.send(subject, data, reply, headers)
            msg = await future
        except asyncio.CancelledError:
            # cancelling this task also cancelled the future it awaited
            if future.cancelled() or not future.done():
                self._spawn(self._announce_cancel(reply))
            raise
        except (nats_errors.Error, OSError) as exc:
            raise _publish_error(exc) from None
        finally:
            del self._unary[token]
            if slot:
                self._deadlines.discard(slot, future)
        out = msg.headers
        if out is None:
            return _decode_response(codec, msg.data, method.output_type)
        return self._unary_result(msg, out, call, subject)

    def _unary_result(self, msg: Msg, headers: dict[str, str], call: CallInfo, subject: str) -> Message:
        assert call.method is not None
        if headers.get("Status") == "503" and not msg.data:
            raise RpcError(Code.UNAVAILABLE, f"no server is serving {subject} (no responders)")
        call.headers, call.trailers = read_response_headers(headers)
        error = read_error(headers, msg.data)
        if error is not None:
            raise error
        return _decode_response(codec_for(headers), msg.data, call.method.output_type)

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        method = call.method
        assert method is not None
        subject = self._subjects.get(method.path) or self._subject_of(method)
        codec = self._codec
        nc = self.connection
        token = str(self._next_token())
        settings = self.settings
        state = StreamState(
            self._inbox + token, nc.send, lambda: nc.max_payload, settings.window, settings.heartbeat
        )
        headers = {FRAME: OPEN, **state.announce(), **self._request_headers(call, codec)}
        body = b""
        if not method.kind.client_streams:
            body = codec.encode(await anext(requests))
        size = len(body) + headers_size(headers)
        if size > nc.max_payload:
            raise _too_large(size, nc.max_payload)
        if not nc.is_connected:
            raise RpcError(Code.UNAVAILABLE, "not connected to NATS")
        loop = asyncio.get_running_loop()
        timer = None
        if call.deadline is not None:
            timer = loop.call_at(
                _loop_time(loop, call.deadline),
                state.fail,
                RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"),
            )
        self._streams[token] = state
        self._heartbeats.add(state)
        sender: asyncio.Task[None] | None = None
        finished = False
        try:
            try:
                await nc.send(subject, body, state.inbox, headers)
            except (nats_errors.Error, OSError) as exc:
                raise _publish_error(exc) from None
            if method.kind.client_streams:
                sender = loop.create_task(self._send_requests(state, requests, codec))
            output_type = method.output_type
            while True:
                frame, msg = await state.receive()
                if frame is None:
                    yield _decode_response(codec, msg.data, output_type)
                elif frame == HEADERS:
                    call.headers = read_metadata(msg.headers)
                elif frame == END:
                    finished = True
                    call.trailers = read_metadata(msg.headers)
                    error = read_error(msg.headers or {}, msg.data) or state.end_count(msg.headers)
                    if error is not None:
                        raise error
                    return
        finally:
            if timer is not None:
                timer.cancel()
            self._heartbeats.discard(state)
            self._streams.pop(token, None)
            if sender is not None and not sender.done():
                sender.cancel()
            if not finished and not state.gone and state.peer is not None:
                # the caller stopped early or the call failed here: let the server stop the handler
                self._spawn(_send_cancel(state))

    async def _send_requests(
        self, state: StreamState, requests: AsyncIterator[Message], codec: Codec
    ) -> None:
        try:
            async for request in requests:
                await state.send_data(codec.encode(request))
            await state.control(END, {COUNT: str(state.sent)})
        except Exception as exc:
            # the request iterator failed (the caller sees its exception) or the call already ended
            if state.error is None:
                state.fail(exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fail_all(RpcError(Code.CANCELLED, "the channel was closed"))
        self._heartbeats.close()
        for task in list(self._background):
            if not task.done():
                await asyncio.wait([task], timeout=1.0)
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception as exc:
                logger.debug("closing the NATS connection: %r", exc)


async def dial(url: str, options: Mapping[str, Any]) -> NatsTransport:
    transport = NatsTransport(_settings(url, options))
    try:
        await transport.start()
    except ConnectionError as exc:
        raise RpcError(Code.UNAVAILABLE, str(exc)) from exc
    return transport
