"""The server side of the broker engine: serve endpoints as subjects on a :class:`Broker`.

A service subscribes once to ``{prefix}{package}.{Service}.*`` in a queue group. A unary call is a
message with a reply address, answered by one reply; a streaming call opens a stream (see
:mod:`protobind.broker._stream`). docs/protocols.md ("NATS request-reply") is the wire description.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from .._aio import Deadlines, Resume, uncancel
from .._context import Context
from .._errors import Code, RpcError
from ..codec import PROTO, Codec
from ..endpoints import Endpoint, check_response, to_rpc_error
from ..transport import ServerBinding
from ._calls import CallRegistry, Route, record, too_big
from ._consumers import ConsumerPool, Consumers
from ._discovery import Discovery
from ._micro import EndpointStats, MicroService, subjects
from ._refusals import RefusalLog
from ._stream import ALIVE
from ._stream_server import StreamCalls
from ._wire import (
    CANCEL_SUBJECT,
    FRAME,
    PROBE_SUBJECT,
    asyncapi_subject,
    codec_for,
    error_body,
    error_headers,
    headers_size,
    method_subject,
    put_content_type,
    put_response_metadata,
    read_request_headers,
    too_large,
)
from .base import Broker, BrokerError, BrokerMessage, DurableBroker, EngineSettings
from .durable._server import DurableServer

if TYPE_CHECKING:
    from ..endpoints import EndpointTable

__all__ = [
    "BrokerBinding",
]

logger = logging.getLogger("protobind.broker")


class BrokerBinding(ServerBinding):
    """A protobind server on one broker connection; it owns the connection and closes it on stop."""

    def __init__(self, server: EndpointTable, url: str, broker: Broker, settings: EngineSettings) -> None:
        self.server = server
        self._url = url
        self.broker = broker
        # a publish without a coroutine when the connection can take the message now (see Broker)
        self._buffer: Callable[[str, bytes, str, dict[str, str] | None], bool] | None = getattr(
            broker, "buffer", None
        )
        self.settings = settings
        self._routes: dict[str, Route] = {}
        self._discovery: Discovery | None = None
        self._service_subs: list[Any] = []
        self._other_subs: list[Any] = []
        self._pool = ConsumerPool(settings.max_concurrency)
        self._consumers: list[Consumers] = []
        # the calls that can be cancelled: unary and one-way ones waiting inside their handler (the
        # others cannot be cancelled anyway), streaming ones; shared with the streaming half
        self._registry = registry = CallRegistry()
        # the registry's tables under names of their own: the unary path reads them on every call
        self._calls = registry.calls
        self._cancelled = registry.cancelled
        self._streaming = StreamCalls(broker, settings, registry, self._refuse)
        self._closing = False
        self._deadlines: Deadlines[str] = Deadlines(self._expire_call)
        self._durable: DurableServer | None = None
        #: messages refused, or one-way messages whose call failed: counted (``refusals.total``,
        #: ``refusals.counts`` by code name) and logged at a bounded rate (docs/security.md)
        self.refusals = RefusalLog(logger, "one-way message on %s failed: %s: %s")
        self._refusal_counter: Any = None  # the telemetry's metric, when metrics are on

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        """Subscribe every service, the stream inbox, cancel notices and discovery; on return,
        callers on other connections can call."""
        settings = self.settings
        broker = self.broker
        broker.on_disconnect(self._on_disconnect)
        telemetry = self.server.telemetry
        if telemetry is not None and telemetry.metrics:
            self._refusal_counter = telemetry.instruments().refused_messages
        try:
            services = []
            for info in self.server.services:
                stats = []
                for method in info.methods:
                    subject = method_subject(settings.prefix, method)
                    route = Route(self.server.endpoints[method.path], EndpointStats(method, subject))
                    self._routes[subject] = route
                    stats.append(route.stats)
                services.append(
                    MicroService(
                        info,
                        stats,
                        self._queue_group(info.name),
                        settings.version,
                        settings.reflection,
                        asyncapi_subject=asyncapi_subject(settings.prefix, info.name),
                    )
                )
            discovery = self._discovery = Discovery(
                services, broker, settings, self._url, self.server.authorize, self._send, self._refuse
            )
            await self._streaming.open_inbox()
            self._other_subs.append(await broker.subscribe(settings.prefix + CANCEL_SUBJECT, self._on_cancel))
            self._other_subs.append(await broker.subscribe(settings.prefix + PROBE_SUBJECT, self._on_probe))
            for subject in subjects(services):
                self._other_subs.append(await broker.subscribe(subject, discovery.on_micro))
            for service in services:
                # one replica of each group answers
                self._other_subs.append(
                    await broker.subscribe(
                        service.asyncapi_subject, self._discovery.on_asyncapi, service.queue_group
                    )
                )
            for info in self.server.services:
                inbound = await broker.pull(
                    f"{settings.prefix}{info.name}.*",
                    self._queue_group(info.name),
                    tuple(method_subject(settings.prefix, method) for method in info.methods),
                )
                consumers = Consumers(inbound, self._on_call, self._pool, settings.max_pending, self._shed)
                self._consumers.append(consumers)
                self._service_subs.append(inbound)
            await self._start_durable()
            # callers on other connections may call as soon as start() returns
            await broker.settle()
        except BaseException:
            await broker.close()
            raise

    async def _start_durable(self) -> None:
        """Serve the durable methods from their streams too (see protobind.broker.durable)."""
        endpoints = [e for e in self.server.endpoints.values() if e.method.durable]
        if not endpoints:
            return
        broker = self.broker
        if not isinstance(broker, DurableBroker):
            raise ValueError(
                f"{', '.join(e.method.full_name for e in endpoints)}: durable methods need a broker "
                f"that stores messages; {broker.name} does not"
            )
        self._durable = DurableServer(
            broker, self.settings, endpoints, self._queue_group, self.server.telemetry, self.server.authorize
        )
        await self._durable.start()

    def _queue_group(self, service: str) -> str:
        # replicas of one deployment share calls; the default group is the service's full name
        return self.settings.queue_group or service

    # --- dispatch ---

    def _on_call(self, msg: BrokerMessage, consumers: Consumers | None = None) -> Awaitable[bool | None]:
        """Serve one call message: the coroutine that does, which a consumer (see
        protobind.broker._consumers) awaits; it never raises. A plain function rather than a
        coroutine of its own: this is the path every small call takes."""
        route = self._routes.get(msg.subject)
        if route is None or route.streaming or route.durable or self._closing:
            return self._on_other_call(msg, route, consumers)
        # _serve, written out on the path of every call
        if msg.reply:
            return self._serve_unary(route, msg, consumers)
        return self._serve_oneway(route, route.inline or route.endpoint, msg, consumers)

    def _serve(self, route: Route, msg: BrokerMessage, consumers: Consumers | None) -> Awaitable[bool | None]:
        if msg.reply:
            return self._serve_unary(route, msg, consumers)
        # Nobody to answer: a one-way method's handler runs as it is; any other method's endpoint
        # runs too (a publish without a reply address is a one-way use of it) and its response
        # is dropped.
        return self._serve_oneway(route, route.inline or route.endpoint, msg, consumers)

    async def _on_durable_call(self, route: Route, msg: BrokerMessage, consumers: Consumers | None) -> None:
        """A message on the subject of a ``(protobind.v1.durable)`` method.

        This is where durable delivery (the broker stores the call, the server acks it after the
        handler succeeded) takes over. Until a broker implements it, the call is served as a plain
        call: at most once, like any other.
        """
        await self._serve(route, msg, consumers)

    async def _on_other_call(
        self, msg: BrokerMessage, route: Route | None, consumers: Consumers | None = None
    ) -> None:
        if route is None:
            await self._refuse(msg, RpcError(Code.UNIMPLEMENTED, f"method {msg.subject} is not served here"))
        elif self._closing:
            await self._refuse(msg, RpcError(Code.UNAVAILABLE, "the server is shutting down"))
        elif route.durable:
            await self._on_durable_call(route, msg, consumers)
        else:
            await self._streaming.admit(route, msg)

    async def _shed(self, msg: BrokerMessage) -> None:
        await self._refuse(msg, RpcError(Code.RESOURCE_EXHAUSTED, "the server is overloaded"))

    async def _refuse(self, msg: BrokerMessage, error: RpcError) -> None:
        if msg.reply:
            try:
                codec = codec_for(msg.headers)
            except RpcError:
                codec = PROTO
            await self._send(msg.reply, error_body(error, codec), error_headers(error, codec))
            self._refused(msg.subject, error, answered=True)
        else:
            self._refused(msg.subject, error)

    def _refused(self, subject: str, error: RpcError, answered: bool = False) -> None:
        """Count a refused message (or a failed one-way call); log it, at a bounded rate, when its
        sender was not told."""
        self.refusals.refused(subject, error.code.name, error.message, answered=answered)
        counter = self._refusal_counter
        if counter is not None:
            attributes = {"messaging.system": self.broker.name, "rpc.response.status_code": error.code.name}
            counter.add(1, attributes)

    async def _on_cancel(self, msg: BrokerMessage) -> None:
        self._cancel_call(msg.data.decode("utf-8", "replace"), _CANCELLED_BY_CLIENT)

    async def _on_probe(self, msg: BrokerMessage) -> None:
        # answer only for calls this replica holds: silence from every replica means the call's
        # server is gone (see BrokerClient's liveness probes)
        key = msg.data.decode("utf-8", "replace")
        if msg.reply and (key in self._calls or any(c.holds(key) for c in self._consumers)):
            await self._send(msg.reply, b"", {FRAME: ALIVE})

    def _cancel_call(self, key: str, reason: RpcError) -> None:
        self._registry.cancel(key, reason)

    async def _on_disconnect(self) -> None:
        self._streaming.connection_lost()

    async def _send(self, subject: str, body: bytes, headers: dict[str, str] | None) -> None:
        """Publish a reply; a reply that cannot be sent is dropped (the caller times out or
        notices the lost connection), never raised into the dispatcher."""
        try:
            await self.broker.publish(subject, body, headers=headers)
        except BrokerError as exc:
            logger.debug("reply to %s dropped: %r", subject, exc)

    # --- unary and one-way calls ---

    async def _serve_unary(self, route: Route, msg: BrokerMessage, consumers: Consumers | None) -> None:
        """A call with a reply address (a one-way method's too: then its endpoint acknowledges);
        messages without one go to _serve_oneway."""
        started = time.perf_counter_ns()
        reply = msg.reply
        codec: Codec = PROTO
        context: Context | None = None
        error: RpcError | None = None
        key: str | None = None
        slot = 0
        broker = self.broker
        try:
            headers = msg.headers
            if headers is None:
                deadline = None
                context = Context(route.method, broker.name, peer=broker.peer_of(reply))
            else:
                codec, timeout_ms, metadata = read_request_headers(headers)
                deadline = None if timeout_ms is None else _deadline(timeout_ms)
                peer = broker.peer_of(reply)
                context = Context(route.method, broker.name, metadata=metadata, deadline=deadline, peer=peer)
            request = _request(codec, msg.data, route.input_type, self.settings.max_message_size)
            # invoke_unary written out: self._deadlines and the consumer pool bound it; the first
            # step runs inline, in a context copy as a task would have (most handlers never wait)
            isolated = contextvars.copy_context()
            handled = isolated.run(route.endpoint.handler, request, context)
            call = handled if type(handled) is CoroutineType else _coroutine(handled)
            try:
                waiting = isolated.run(call.send, None)
            except StopIteration as done:
                response = done.value
            else:
                # the handler waits: from now on the call can be cancelled (deadline, caller, stop)
                key = reply
                slot = self._hold(key, consumers, deadline)
                response = await Resume(call, isolated, waiting)
            body, out = _reply_of(route, response, codec, context, broker.max_payload)
            try:
                buffer = self._buffer
                if buffer is None or not buffer(reply, body, "", out):
                    await broker.publish(reply, body, headers=out)
            except BrokerError as exc:  # dropped: the caller times out or notices the lost connection
                logger.debug("reply to %s dropped: %r", reply, exc)
        except RpcError as exc:
            error = exc
        except Exception as exc:  # the handler's own exception: logged, INTERNAL for the caller
            error = to_rpc_error(exc, context)
        except asyncio.CancelledError:
            if context is not None:
                context.cancel()
            error = self._cancel_reason(key)
            if error is None:
                raise  # not a cancellation of this call: the consumer itself is being cancelled
            if error is _CANCELLED_BY_CLIENT:
                reply = ""  # nobody waits for a reply
        finally:
            if key is not None:
                self._release(key, slot)
        record(route.stats, started, error)
        if error is not None and reply:
            await self._reply_error(route, reply, error, codec, context)

    async def _serve_oneway(
        self, route: Route, inline: Endpoint, msg: BrokerMessage, consumers: Consumers | None
    ) -> bool:
        """A message without a reply address: ``inline``'s handler runs right here, in the
        consumer, and nothing goes back (its result is dropped); an error is logged. No deadline:
        nobody waits for the outcome. False when the server stopped before the handler finished
        (a broker that stores messages delivers it again)."""
        started = time.perf_counter_ns()
        context: Context | None = None
        error: RpcError | None = None
        key = ""
        try:
            headers = msg.headers
            data = msg.data
            if headers is None:
                codec: Codec = PROTO
                context = Context(route.method, self.broker.name)
            else:
                codec, _, metadata = read_request_headers(headers)
                context = Context(route.method, self.broker.name, metadata=metadata)
            request = _request(codec, data, route.input_type, self.settings.max_message_size)
            telemetry = self.server.telemetry
            call: Coroutine[Any, Any, Any]
            if telemetry is not None:
                # a consumer span (child of, and linked to, the producer's) around the handler;
                # it rewrites the trace context in the metadata before the handler's server span
                call = self._consumed(telemetry, route, msg.subject, context, inline, request)
            else:
                awaitable = inline.handler(request, context)
                call = awaitable if type(awaitable) is CoroutineType else _coroutine(awaitable)
            # first step inline, in a copy of the context as a task of its own would have
            isolated = contextvars.copy_context()
            try:
                waiting = isolated.run(call.send, None)
            except StopIteration:
                pass
            else:
                # the handler waits: from now on the call can be cancelled (by stop)
                key = self._registry.one_way_key()
                self._hold(key, consumers, None)
                await Resume(call, isolated, waiting)
        except RpcError as exc:
            error = exc
        except Exception as exc:
            error = to_rpc_error(exc, context)
        except asyncio.CancelledError:
            error = self._cancel_reason(key or None)
            if error is None:
                raise  # not a cancellation of this call: the consumer itself is being cancelled
        finally:
            if key:
                self._release(key, 0)
        if error is None:
            # record() of a call that succeeded, written out
            stats = route.stats
            stats.num_requests += 1
            stats.processing_time += time.perf_counter_ns() - started
            return True
        record(route.stats, started, error)
        # a message without a reply address has nobody to tell: the log (and the count) is all
        self._refused(msg.subject, error)
        return error is not _STOPPED

    async def _consumed(
        self, telemetry: Any, route: Route, subject: str, context: Context, inline: Endpoint, request: Any
    ) -> Any:
        metadata = context.metadata
        group = self._queue_group(route.method.service)
        with telemetry.consumer_span(
            subject, metadata, system=self.broker.name, consumer_group=group, method=route.method
        ):
            return await inline.handler(request, context)

    def _hold(self, key: str, consumers: Consumers | None, deadline: float | None) -> int:
        """A call's handler waits: let another consumer take the next message, and register the
        call under ``key`` so that a deadline (``deadline``), its caller or stop can cancel it.
        Returns the deadline's slot (0: none)."""
        if consumers is not None:
            consumers.waiting()
        task = asyncio.current_task()
        assert task is not None
        self._calls[key] = task
        return 0 if deadline is None else self._deadlines.add(deadline, key)

    def _release(self, key: str, slot: int) -> None:
        """The call held under ``key`` ended: forget it (and its deadline's ``slot``)."""
        del self._calls[key]
        self._cancelled.pop(key, None)
        if slot:
            self._deadlines.discard(slot, key)

    def _cancel_reason(self, key: str | None) -> RpcError | None:
        """Why this binding cancelled the call held under ``key``, and the cancellation withdrawn
        so the consumer goes on to the next message; ``None`` when the cancellation was not this
        binding's (the consumer itself is being cancelled)."""
        reason = None if key is None else self._cancelled.pop(key, None)
        if reason is not None:
            uncancel()
        return reason

    async def _reply_error(
        self, route: Route, reply: str, error: RpcError, codec: Codec, context: Context | None
    ) -> None:
        out = error_headers(error, codec)
        if context is not None:
            try:
                put_response_metadata(out, context)
            except RpcError:
                logger.error("%s set response metadata that NATS cannot carry", route.method.full_name)
                out = error_headers(error, codec)
        await self._send(reply, error_body(error, codec), out)

    def _expire_call(self, key: str) -> None:
        self._cancel_call(key, RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))

    # --- stopping ---

    async def stop(self, grace: float | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._pool.closing = True
        refused = self._streaming.stop_admitting()
        broker = self.broker
        durable = None
        if self._durable is not None:
            durable = asyncio.get_running_loop().create_task(self._durable.stop(grace))
        for sub in self._service_subs:
            with contextlib.suppress(BrokerError):
                await sub.unsubscribe()
        self._service_subs.clear()
        for consumers in self._consumers:
            for msg in consumers.take_remaining():
                refused.append(msg)
                if msg.reply:
                    # answered (refused) below; a one-way message is left to the broker, which
                    # delivers it again if it stores messages
                    consumers.done(msg)
        for msg in refused:
            await self._refuse(msg, RpcError(Code.UNAVAILABLE, "the server is shutting down"))
        busy = set(self._calls.values())
        for consumers in self._consumers:
            for consumer in consumers.tasks:
                if consumer not in busy:
                    consumer.cancel()  # idle: waiting for a message that will not come
        pending = {task for task in busy if not task.done()}
        if pending and grace:
            await asyncio.wait(pending, timeout=grace)
        for key in list(self._calls):
            self._cancel_call(key, _STOPPED)
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        self._streaming.close()
        if durable is not None:
            await durable
        self.refusals.close()
        try:
            await broker.close()
        except Exception as exc:  # closing a broken connection must not fail stop()
            logger.debug("closing the broker connection: %r", exc)


def _deadline(timeout_ms: int) -> float:
    """The deadline (monotonic time) of a call given ``timeout_ms`` milliseconds."""
    if timeout_ms <= 0:
        raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
    return time.monotonic() + timeout_ms / 1000


def _reply_of(
    route: Route, response: Message, codec: Codec, context: Context, max_payload: int
) -> tuple[bytes, dict[str, str] | None]:
    """A unary call's reply: its body and headers (``None`` when a proto reply carries no
    metadata), refused when the broker could not carry it."""
    if type(response) is not route.output_type:
        response = check_response(route.method, response)
    body = response.SerializeToString() if codec is PROTO else codec.encode(response)
    out = None
    if codec is not PROTO or context.response_metadata() != _NO_METADATA:
        out = _response_headers(context, codec)
    size = len(body) if out is None else len(body) + headers_size(out)
    if size > max_payload:
        raise too_large(size, max_payload)
    return body, out


def _request(codec: Codec, data: bytes, message_type: type[Message], limit: int) -> Any:
    """The request in ``data``, at most ``limit`` bytes; the caller's error when it is not one."""
    if len(data) > limit:
        raise too_big(len(data), limit)
    if codec is PROTO:
        try:
            return message_type.FromString(data)
        except Exception:
            return PROTO.decode(data, message_type)  # raises the caller's error
    return codec.decode(data, message_type)


def _coroutine(awaitable: Any) -> Coroutine[Any, Any, Any]:
    """A handler's result as a coroutine (a handler may return any awaitable)."""
    return awaitable if isinstance(awaitable, Coroutine) else _awaited(awaitable)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


_CANCELLED_BY_CLIENT = RpcError(Code.CANCELLED, "cancelled by the client")
#: Context.response_metadata() of a handler that set no response headers or trailers.
_NO_METADATA = (None, None)
_STOPPED = RpcError(Code.UNAVAILABLE, "the server stopped before the call finished")


def _response_headers(context: Context, codec: Codec) -> dict[str, str] | None:
    """The reply's headers: ``None`` (no header block at all) in the common case."""
    headers: dict[str, str] | None = None
    if codec is not PROTO:
        headers = {}
        put_content_type(headers, codec)
    response_headers, trailers = context.response_metadata()
    if response_headers or trailers:
        if headers is None:
            headers = {}
        put_response_metadata(headers, context)
    return headers
