"""The OpenTelemetry side of :mod:`protobind.telemetry`, imported only once telemetry is enabled.

One server interceptor and one client interceptor, the same on every transport: they read and
write the W3C trace context through the call's metadata (which every binding carries: gRPC
metadata, HTTP headers, NATS headers), so the client span is the parent of what goes on the wire
and the server span the child of what came in. Names follow the OpenTelemetry semantic
conventions (RPC spans and metrics, semconv 1.40 and later); docs/observability.md lists them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from ._context import CallInfo, Context
from ._errors import INTERNAL_MESSAGE, SERVER_ERROR_CODES, Code, RpcError
from ._interceptors import Handler, Invoker
from ._metadata import Metadata
from ._version import __version__
from .method import MethodInfo, MethodKind

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.util.types import AttributeValue

    Attributes = dict[str, AttributeValue]

logger = logging.getLogger("protobind.server")


# Advisory histogram buckets: the conventions' HTTP duration buckets with a sub-millisecond end,
# where most RPCs between services on one network land; sizes in powers of four.
DURATION_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075),
    *(0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
)
SIZE_BUCKETS = (0, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
COUNT_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class _MetadataGetter(Getter[Metadata]):
    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [value for value in carrier.get_all(key) if isinstance(value, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return list(carrier)


class _MetadataSetter(Setter[Metadata]):
    def set(self, carrier: Metadata, key: str, value: str) -> None:
        carrier[key] = value


_GETTER = _MetadataGetter()
_SETTER = _MetadataSetter()


class _InFlight:
    """Calls of one method in flight: a plain counter, read by the metrics SDK when it collects,
    which costs a call far less than two measurements of a synchronous UpDownCounter."""

    __slots__ = ("attributes", "value")

    def __init__(self, attributes: Attributes) -> None:
        self.attributes = attributes
        self.value = 0


class _Side:
    """The instruments of one side of a call (``rpc.server.*`` or ``rpc.client.*``)."""

    def __init__(self, meter: metrics.Meter, side: str, sizes: bool) -> None:
        self.server = side == "server"
        self.sizes = sizes
        self._in_flight: dict[tuple[AttributeValue, ...], _InFlight] = {}
        # several event loops (threads) may share one Telemetry
        self._lock = threading.Lock()
        self.duration = meter.create_histogram(
            f"rpc.{side}.call.duration",
            unit="s",
            description=f"Duration of {'incoming' if self.server else 'outgoing'} RPCs.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        meter.create_observable_up_down_counter(
            f"protobind.{side}.active_calls",
            callbacks=[self._observe_in_flight],
            unit="{call}",
            description="Calls in flight.",
        )
        self.request_size = meter.create_histogram(
            f"rpc.{side}.request.size",
            unit="By",
            description="Size of each request message (serialized protobuf).",
            explicit_bucket_boundaries_advisory=SIZE_BUCKETS,
        )
        self.response_size = meter.create_histogram(
            f"rpc.{side}.response.size",
            unit="By",
            description="Size of each response message (serialized protobuf).",
            explicit_bucket_boundaries_advisory=SIZE_BUCKETS,
        )
        self.requests_per_rpc = meter.create_histogram(
            f"rpc.{side}.requests_per_rpc",
            unit="{count}",
            description="Request messages per streaming call.",
            explicit_bucket_boundaries_advisory=COUNT_BUCKETS,
        )
        self.responses_per_rpc = meter.create_histogram(
            f"rpc.{side}.responses_per_rpc",
            unit="{count}",
            description="Response messages per streaming call.",
            explicit_bucket_boundaries_advisory=COUNT_BUCKETS,
        )

    def in_flight(self, attributes: Attributes) -> _InFlight:
        """The in-flight counter of the calls with these attributes (one per method and system)."""
        key = tuple(attributes.values())
        with self._lock:
            counter = self._in_flight.get(key)
            if counter is None:
                counter = self._in_flight[key] = _InFlight(attributes)
        return counter

    def add(self, counter: _InFlight, delta: int) -> None:
        with self._lock:
            counter.value += delta

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            return [Observation(c.value, c.attributes) for c in self._in_flight.values()]


class Settings(Protocol):
    """What this module reads of a :class:`~protobind.Telemetry` (which it does not import: the
    settings sit above their implementation)."""

    tracing: bool
    metrics: bool
    message_sizes: bool
    log_failures: bool
    log_successes: bool
    tracer_provider: Any
    meter_provider: Any
    propagator: TextMapPropagator | None


class Instruments:
    """The tracer, the meters and the propagator one :class:`~protobind.Telemetry` records with."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tracing = settings.tracing
        tracer_provider = settings.tracer_provider if settings.tracing else trace.NoOpTracerProvider()
        self.tracer = trace.get_tracer("protobind", __version__, tracer_provider)
        meter_provider = settings.meter_provider if settings.metrics else metrics.NoOpMeterProvider()
        meter = metrics.get_meter("protobind", __version__, meter_provider)
        sizes = settings.metrics and settings.message_sizes
        self.server = _Side(meter, "server", sizes)
        self.client = _Side(meter, "client", sizes)
        self.process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing one delivered message.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.redeliveries = meter.create_counter(
            "protobind.consumer.redeliveries", unit="{message}", description="Deliveries after the first."
        )
        self.dead_letters = meter.create_counter(
            "protobind.consumer.dead_letters", unit="{message}", description="Messages given up on."
        )
        self.refused_messages = meter.create_counter(
            "protobind.server.refused_messages",
            unit="{message}",
            description="Messages a broker server refused, and one-way messages whose call failed.",
        )
        self._propagator: TextMapPropagator | None = settings.propagator

    def inject(self, metadata: Metadata, ctx: otel_context.Context) -> None:
        (self._propagator or propagate.get_global_textmap()).inject(metadata, ctx, _SETTER)

    def extract(self, metadata: Metadata) -> otel_context.Context:
        return (self._propagator or propagate.get_global_textmap()).extract(metadata, None, _GETTER)

    def start_span(
        self,
        name: str,
        kind: SpanKind,
        parent: otel_context.Context,
        attributes: Attributes,
        links: Iterable[Link] = (),
    ) -> Span:
        if self.tracing:
            return self.tracer.start_span(name, parent, kind, attributes, list(links) or None)
        # Tracing off: hand the incoming trace context on unchanged, so the calls this one makes
        # stay in the caller's trace; a non-recording copy, so that ending it ends nothing.
        return trace.NonRecordingSpan(trace.get_current_span(parent).get_span_context())


class _Route:
    """What every call of one method (on one transport) shares: names and attribute sets."""

    __slots__ = ("attributes", "by_outcome", "in_flight", "kind", "name", "network_peer", "streaming")

    def __init__(self, side: _Side, method: MethodInfo[Any, Any], attributes: Attributes) -> None:
        self.name = method.full_name
        self.kind = method.kind
        self.streaming = method.kind is not MethodKind.UNARY
        self.attributes = attributes
        #: the calls' ``Context.peer`` is a network address (a server route: its transport says so)
        self.network_peer = False
        self.by_outcome: dict[tuple[Code, str | None], Attributes] = {}
        system = attributes["rpc.system.name"]
        self.in_flight = side.in_flight({"rpc.system.name": system, "rpc.method": method.full_name})

    def outcome_attributes(self, code: Code, error_type: str | None) -> Attributes:
        key = (code, error_type)
        attributes = self.by_outcome.get(key)
        if attributes is None:
            attributes = {**self.attributes, "rpc.response.status_code": code.name}
            if error_type is not None:
                attributes["error.type"] = error_type
            self.by_outcome[key] = attributes
        return attributes


class _Call:
    """One call in flight: its span, the context that makes the span current, its counters."""

    __slots__ = ("ctx", "ended", "requests", "responses", "route", "side", "span", "start")

    def __init__(self, side: _Side, route: _Route, span: Span, ctx: otel_context.Context) -> None:
        self.side = side
        self.route = route
        self.span = span
        self.ctx = ctx
        self.requests = 0
        self.responses = 0
        self.ended = False
        side.add(route.in_flight, 1)
        self.start = time.perf_counter()

    def request(self, message: Message) -> None:
        self.requests += 1
        if self.side.sizes:
            self.side.request_size.record(message.ByteSize(), self.route.attributes)

    def response(self, message: Message) -> None:
        self.responses += 1
        if self.side.sizes:
            self.side.response_size.record(message.ByteSize(), self.route.attributes)

    async def count_requests(self, requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
        async for request in requests:
            self.request(request)
            yield request

    async def stream(
        self,
        responses: AsyncIterator[Message],
        succeeded: Callable[[], object],
        failed: Callable[[BaseException], BaseException | None],
    ) -> AsyncIterator[Message]:
        """Yield ``responses`` with this call's span current while each one is produced (the
        handler of a server stream, or the transport of a client stream, runs in those steps);
        end the call when the stream ends, however it ends."""
        try:
            while True:
                token = otel_context.attach(self.ctx)
                try:
                    response = await anext(responses)
                except StopAsyncIteration:
                    break
                finally:
                    otel_context.detach(token)
                self.response(response)
                yield response
        except BaseException as exc:
            replacement = failed(exc)
            if replacement is None:
                raise
            raise replacement from None
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()
        succeeded()

    def end(
        self, code: Code, description: str, exc: BaseException | None = None, error_type: str = ""
    ) -> float:
        """End the span and record the call's metrics; returns its duration in seconds."""
        elapsed = time.perf_counter() - self.start
        if self.ended:
            return elapsed
        self.ended = True
        failed = code in SERVER_ERROR_CODES if self.side.server else code is not Code.OK
        error = (error_type or code.name) if failed else None
        span = self.span
        if span.is_recording():
            span.set_attribute("rpc.response.status_code", code.name)
            if error is not None:
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR, description))
            if exc is not None:
                span.record_exception(exc)
        span.end()
        route = self.route
        attributes = route.outcome_attributes(code, error)
        side = self.side
        side.duration.record(elapsed, attributes)
        side.add(route.in_flight, -1)
        if route.streaming:
            side.requests_per_rpc.record(self.requests, attributes)
            side.responses_per_rpc.record(self.responses, attributes)
        return elapsed


class Declared(Protocol):
    """What this module reads of a transport's declaration (a :class:`protobind.transport.Transport`:
    the registry sits above this module, so the caller hands its lookups in, see :class:`Registry`)."""

    @property
    def name(self) -> str: ...
    @property
    def rpc_system(self) -> str: ...
    @property
    def default_ports(self) -> Mapping[str, int]: ...
    @property
    def in_process(self) -> bool: ...
    @property
    def network_peer(self) -> bool: ...


class Registry(Protocol):
    """The transport registry's two lookups (the module :mod:`protobind.transport` is one; ``Server``
    and ``Channel`` pass it)."""

    def transport_named(self, name: str) -> Declared: ...
    def transport_for_url(self, url: str) -> Declared: ...


def rpc_system(transport: str, registry: Registry) -> str:
    """``rpc.system.name`` of the calls of a transport (by its name, as ``Context.transport``):
    what it declares, else its name (custom values, as the conventions allow)."""
    try:
        return registry.transport_named(transport).rpc_system or transport
    except ValueError:  # not registered
        return transport


def network_peer(transport: str, registry: Registry) -> bool:
    """Whether the ``Context.peer`` of a transport's calls is a network address."""
    try:
        return registry.transport_named(transport).network_peer
    except ValueError:
        return False


def server_address(url: str, registry: Registry) -> tuple[str, int | None]:
    """``server.address`` and ``server.port`` of a protobind URL (never its credentials); the port
    is the one the URL's transport declares for its scheme when the URL names none."""
    parts = urlsplit(url)
    try:
        transport = registry.transport_for_url(url)
    except ValueError:  # not registered
        in_process, default_port = False, None
    else:
        in_process, default_port = transport.in_process, transport.default_ports.get(parts.scheme)
    if in_process:
        return parts.netloc + parts.path, None
    first = parts.netloc.rpartition("@")[2].split(",")[0]
    host = urlsplit("//" + first)
    try:
        port = host.port
    except ValueError:
        port = None
    return host.hostname or "", port if port is not None else default_port


def _address_attributes(url: str, registry: Registry) -> Attributes:
    address, port = server_address(url, registry)
    attributes: Attributes = {"server.address": address}
    if port is not None:
        attributes["server.port"] = port
    return attributes


def peer_attributes(peer: str) -> Attributes | None:
    """``network.peer.*`` from ``Context.peer`` as the gRPC (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``,
    ``unix:/path``) and HTTP (``1.2.3.4:5``, ``[::1]:5``) bindings report it."""
    if peer.startswith(("ipv4:", "ipv6:")):
        peer = peer[5:]
    elif peer.startswith("unix:"):
        return {"network.peer.address": peer[5:]}
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return {"network.peer.address": host.strip("[]"), "network.peer.port": int(port)}


class ServerTelemetry:
    """The server interceptor: a SERVER span per call, child of the caller's trace context."""

    def __init__(
        self, instruments: Instruments, urls: Callable[[], Sequence[str]], registry: Registry
    ) -> None:
        self._instruments = instruments
        self._settings = instruments.settings
        self._urls = urls
        self._registry = registry
        self._routes: dict[tuple[str, str], _Route] = {}

    def _route(self, context: Context) -> _Route:
        key = (context.method_info.path, context.transport)
        route = self._routes.get(key)
        if route is not None:
            return route
        attributes: Attributes = {
            "rpc.system.name": rpc_system(context.transport, self._registry),
            "rpc.method": context.method,
        }
        url = self._bound_url(context.transport)
        route = _Route(self._instruments.server, context.method_info, attributes)
        route.network_peer = network_peer(context.transport, self._registry)
        if url is None:
            return route  # not bound yet (a call racing start): no server.address, nothing cached
        attributes.update(_address_attributes(url, self._registry))
        self._routes[key] = route
        return route

    def _bound_url(self, transport: str) -> str | None:
        for url in self._urls():
            if self._registry.transport_for_url(url).name == transport:
                return url
        return None

    async def intercept(self, handler: Handler, request: Any, context: Context) -> Any:
        instruments = self._instruments
        route = self._route(context)
        parent = instruments.extract(context.metadata)
        attributes = route.attributes
        if route.network_peer:
            peer = peer_attributes(context.peer)
            if peer is not None:
                attributes = {**attributes, **peer}
        span = instruments.start_span(route.name, SpanKind.SERVER, parent, attributes)
        call = _Call(instruments.server, route, span, trace.set_span_in_context(span, parent))
        if route.kind.client_streams:
            request = call.count_requests(request)
        else:
            call.request(request)
        token = otel_context.attach(call.ctx)
        try:
            result = await handler(request, context)
        except BaseException as exc:
            replacement = self._failed(call, context, exc)
            if replacement is None:
                raise
            raise replacement from None
        finally:
            otel_context.detach(token)
        if route.kind.server_streams:
            return call.stream(
                result,
                lambda: self._end(call, context, Code.OK),
                lambda exc: self._failed(call, context, exc),
            )
        method = context.method_info
        if not isinstance(result, method.output_type) and not method.oneway:
            # not a response of this method: the call answers INTERNAL (see endpoints.invoke_unary);
            # a one-way handler's result is ignored on every transport
            self._end(call, context, Code.INTERNAL, INTERNAL_MESSAGE)
            return result
        call.response(result)
        self._end(call, context, Code.OK)
        return result

    def _failed(self, call: _Call, context: Context, exc: BaseException) -> BaseException | None:
        """End ``call`` for ``exc``; return the exception to raise instead, or ``None`` to re-raise."""
        if isinstance(exc, RpcError):
            self._end(call, context, exc.code, exc.message)
            return None
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            deadline = context.deadline
            if deadline is not None and time.monotonic() >= deadline:
                self._end(call, context, Code.DEADLINE_EXCEEDED, "deadline exceeded")
            else:
                self._end(call, context, Code.CANCELLED, "call cancelled")
            return None
        if not isinstance(exc, Exception) or not self._settings.log_failures:
            # nothing logs it here: the transport's to_rpc_error logs the traceback as without telemetry
            self._end(call, context, Code.INTERNAL, INTERNAL_MESSAGE, exc, log=False)
            return None
        # Logged once, here, with the traceback and the call's fields; the caller gets a generic
        # INTERNAL, which to_rpc_error passes on without logging the exception a second time.
        self._end(call, context, Code.INTERNAL, INTERNAL_MESSAGE, exc)
        return RpcError(Code.INTERNAL, INTERNAL_MESSAGE)

    def _end(
        self,
        call: _Call,
        context: Context,
        code: Code,
        description: str = "",
        exc: BaseException | None = None,
        *,
        log: bool = True,
    ) -> None:
        if call.ended:
            return
        elapsed = call.end(code, description, exc)
        settings = self._settings
        if log and (settings.log_failures if code is not Code.OK else settings.log_successes):
            _log_call(call.span, context, code, elapsed, exc)


def _log_call(span: Span, context: Context, code: Code, elapsed: float, exc: BaseException | None) -> None:
    """The one line per call: ERROR with the traceback for a handler exception, WARNING for the
    codes that are server errors, INFO for the rest (the caller's doing, and successes)."""
    if exc is not None:
        level = logging.ERROR
    elif code in SERVER_ERROR_CODES:
        level = logging.WARNING
    else:
        level = logging.INFO
    if not logger.isEnabledFor(level):
        return
    span_context = span.get_span_context()
    trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else ""
    duration_ms = round(elapsed * 1000, 3)
    logger.log(
        level,
        "call %s method=%s transport=%s code=%s duration_ms=%s trace_id=%s",
        "ok" if code is Code.OK else "failed",
        context.method,
        context.transport,
        code.name,
        duration_ms,
        trace_id or "-",
        exc_info=exc,
        extra={
            "rpc_method": context.method,
            "rpc_transport": context.transport,
            "rpc_code": code.name,
            "duration_ms": duration_ms,
            "trace_id": trace_id,
        },
    )


class ClientTelemetry:
    """The client interceptor: a CLIENT span per call, whose context goes out in the metadata."""

    def __init__(self, instruments: Instruments, url: str, registry: Registry) -> None:
        self._instruments = instruments
        name = registry.transport_for_url(url).name
        self._attributes: Attributes = {"rpc.system.name": rpc_system(name, registry)}
        self._attributes.update(_address_attributes(url, registry))
        self._routes: dict[str, _Route] = {}

    def _route(self, method: MethodInfo[Any, Any]) -> _Route:
        route = self._routes.get(method.path)
        if route is None:
            route = self._routes[method.path] = _Route(
                self._instruments.client, method, {**self._attributes, "rpc.method": method.full_name}
            )
        return route

    async def intercept(self, invoker: Invoker, request: Any, call: CallInfo) -> Any:
        assert call.method is not None
        instruments = self._instruments
        route = self._route(call.method)
        parent = otel_context.get_current()
        # a one-way or durable call hands a message to the transport: a PRODUCER, whose consumer
        # span on the other side links back to it
        method = call.method
        kind = SpanKind.PRODUCER if method.oneway or method.durable else SpanKind.CLIENT
        span = instruments.start_span(route.name, kind, parent, route.attributes)
        state = _Call(instruments.client, route, span, trace.set_span_in_context(span, parent))
        instruments.inject(call.metadata, state.ctx)
        if isinstance(request, Message):
            state.request(request)
        else:
            request = state.count_requests(request)
        token = otel_context.attach(state.ctx)
        try:
            result = await invoker(request, call)
        except BaseException as exc:
            _client_failed(state, call, exc)
            raise
        finally:
            otel_context.detach(token)
        if isinstance(result, Message):
            state.response(result)
            state.end(Code.OK, "")
            return result
        return state.stream(
            result, lambda: state.end(Code.OK, ""), lambda exc: _client_failed(state, call, exc)
        )


def _client_failed(state: _Call, call: CallInfo, exc: BaseException) -> None:
    if isinstance(exc, RpcError):
        state.end(exc.code, exc.message)
    elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        deadline = call.deadline
        if deadline is not None and time.monotonic() >= deadline:
            state.end(Code.DEADLINE_EXCEEDED, "deadline exceeded")
        else:
            state.end(Code.CANCELLED, "call cancelled")
    else:
        # no status came back: error.type names the exception, as the conventions ask
        state.end(Code.UNKNOWN, type(exc).__name__, exc, f"{type(exc).__module__}.{type(exc).__qualname__}")


class ConsumerSpan:
    """A CONSUMER span around processing one message a broker delivered; see
    :meth:`protobind.Telemetry.consumer_span`."""

    def __init__(
        self,
        instruments: Instruments,
        destination: str,
        metadata: Metadata,
        *,
        attempt: int,
        system: str,
        consumer_group: str | None,
        method: MethodInfo[Any, Any] | None,
    ) -> None:
        self._instruments = instruments
        self._metadata = metadata
        self.attempt = attempt
        self.destination = destination
        self.dead_lettered = False
        self._metric_attributes: Attributes = {
            "messaging.system": system,
            "messaging.operation.name": "process",
            "messaging.destination.name": destination,
        }
        if consumer_group:
            self._metric_attributes["messaging.consumer.group.name"] = consumer_group
        self._span_attributes: Attributes = {
            **self._metric_attributes,
            "messaging.operation.type": "process",
            "protobind.delivery.attempt": attempt,
        }
        if method is not None:
            self._span_attributes["rpc.method"] = method.full_name
        self.span: Span = trace.INVALID_SPAN
        self._token: Token[otel_context.Context] | None = None
        self._start = 0.0

    def __enter__(self) -> ConsumerSpan:
        instruments = self._instruments
        producer = instruments.extract(self._metadata)
        producer_span = trace.get_current_span(producer).get_span_context()
        # The producer's span is both the parent (the consumer's work stays in the producer's
        # trace, as one trace across the broker hop) and a link that carries the attempt number.
        attempt: Attributes = {"protobind.delivery.attempt": self.attempt}
        links = [Link(producer_span, attempt)] if producer_span.is_valid else []
        self.span = instruments.start_span(
            f"process {self.destination}", SpanKind.CONSUMER, producer, self._span_attributes, links
        )
        ctx = trace.set_span_in_context(self.span, producer)
        instruments.inject(self._metadata, ctx)
        self._token = otel_context.attach(ctx)
        if self.attempt > 1:
            instruments.redeliveries.add(1, self._metric_attributes)
        self._start = time.perf_counter()
        return self

    def dead_letter(self, reason: str = "") -> None:
        """Mark the message as given up on (moved to a dead-letter subject, or dropped)."""
        self.dead_lettered = True
        event: Attributes = {"protobind.delivery.attempt": self.attempt, "reason": reason}
        self.span.add_event("protobind.dead_letter", event)
        self._instruments.dead_letters.add(1, self._metric_attributes)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        attributes = self._metric_attributes
        if exc is not None:
            error_type = exc.code.name if isinstance(exc, RpcError) else type(exc).__qualname__
            attributes = {**attributes, "error.type": error_type}
            if self.span.is_recording():
                self.span.set_attribute("error.type", error_type)
                self.span.set_status(Status(StatusCode.ERROR, str(exc) if isinstance(exc, RpcError) else ""))
        self._instruments.process_duration.record(time.perf_counter() - self._start, attributes)
        self.span.end()
