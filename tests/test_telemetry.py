"""Telemetry through every transport, recorded by the OpenTelemetry SDK's in-memory exporter and
metric reader: spans, their parent/child structure across hops, status per code, metrics, the
failed-call log line, and the consumer-span helper brokers use."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.empty_pb2 import Empty
from greeter.v1.greeter_pb2 import HelloReply, HelloRequest
from greeter.v1.greeter_protobind import GreeterClient, GreeterService
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import protobind
import protobind.testing
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.endpoints import invoke_unary
from protobind.telemetry import SERVER_ERROR_CODES

from .conformance import SERVICE as CONFORMANCE
from .conformance import Conformance
from .support import ROOT, eventually

Harnesses = dict[str, Callable[[], str]]
#: rpc.system of each transport: its own name, but for HTTP (the Connect protocol)
SYSTEMS: dict[str, str] = collections.defaultdict(lambda: "", {"http": "connectrpc"})


@dataclass
class Otel:
    """An SDK tracer and meter provider that record in memory, and a Telemetry using them."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    telemetry: protobind.Telemetry

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer("test")

    def spans(self, kind: SpanKind | None = None, name: str | None = None) -> list[ReadableSpan]:
        return [
            s
            for s in self.exporter.get_finished_spans()
            if (kind is None or s.kind is kind) and (name is None or s.name == name)
        ]

    def span(self, kind: SpanKind, name: str) -> ReadableSpan:
        (span,) = self.spans(kind, name)
        return span

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found

    def unit(self, metric: str) -> str:
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        return m.unit or ""
        raise AssertionError(f"no metric {metric}")


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = protobind.Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Otel(exporter, reader, tracer_provider, telemetry)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


@contextlib.asynccontextmanager
async def serving(
    services: list[object], transport: str, harnesses: Harnesses, telemetry: Any
) -> AsyncIterator[str]:
    """``protobind.testing.serving`` on a URL from the session's harnesses (one nats-server)."""
    async with protobind.testing.serving(
        services, transport, url=harnesses[transport](), telemetry=telemetry
    ) as url:
        yield url


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


class Observing(Conformance):
    """Records the span and baggage the handler code runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, str | None]] = []

    def _observe(self) -> None:
        current = trace.get_current_span().get_span_context()
        tenant = baggage.get_baggage("tenant")
        self.seen.append((current.span_id, tenant if isinstance(tenant, str) else None))

    async def unary(self, request: Request, context: protobind.Context) -> Response:
        self._observe()
        return await super().unary(request, context)

    async def server_stream(self, request: Request, context: protobind.Context) -> AsyncIterator[Response]:
        async for response in super().server_stream(request, context):
            self._observe()
            yield response


def _requests(n: int) -> list[Request]:
    return [Request(text=str(i)) for i in range(n)]


# --- nothing when disabled ------------------------------------------------------------------------


def test_disabled_telemetry_imports_no_opentelemetry() -> None:
    """``import protobind``, a Server and a Channel and a call without telemetry load no
    opentelemetry module; the same with telemetry on does (so the check can fail)."""
    script = """
import asyncio, sys
import protobind
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceService, ConformanceServiceClient

class Service(ConformanceService):
    async def unary(self, request, context):
        return Response(text=request.text)

async def main(telemetry):
    server = protobind.Server([Service()], telemetry=telemetry)
    await server.start("inproc://x")
    async with protobind.connect("inproc://x", telemetry=telemetry) as channel:
        await ConformanceServiceClient(channel).unary(Request(text="hi"))
    await server.stop()

asyncio.run(main(sys.argv[1] == "on"))
print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""
    outputs = {}
    for mode in ("off", "on"):
        result = subprocess.run(
            [sys.executable, "-c", script, mode], capture_output=True, text=True, cwd=ROOT, check=True
        )
        outputs[mode] = result.stdout.strip()
    assert outputs["off"] == "[]"
    assert "opentelemetry.trace" in outputs["on"]


async def test_no_interceptor_is_installed_when_disabled() -> None:
    server = protobind.Server([Conformance()])
    assert server.telemetry is None and server.interceptors == ()
    channel = protobind.connect("inproc://nowhere", telemetry=False)
    assert channel.telemetry is None and channel.interceptors == ()
    with pytest.raises(TypeError):
        protobind.connect("inproc://nowhere", telemetry="yes")  # type: ignore[arg-type]


# --- spans: every transport, every method kind -----------------------------------------------------


async def test_client_span_is_the_parent_of_the_server_span_for_every_kind(
    otel: Otel, transport: str, harnesses: Harnesses
) -> None:
    service = Observing()
    async with (
        serving([service], transport, harnesses, otel.telemetry) as url,
        protobind.connect(url, telemetry=otel.telemetry) as channel,
    ):
        client = ConformanceServiceClient(channel)
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            with otel.tracer.start_as_current_span("root") as root:
                await client.unary(Request(text="u"))
                assert [
                    r.index async for r in client.server_stream(Request(behavior=Behavior(stream_count=3)))
                ] == [
                    0,
                    1,
                    2,
                ]
                assert (await client.client_stream(_requests(4))).request_count == 4
                # over http:// the client opens an HTTP/2 stream for bidi (option http2=bidi)
                assert len([r async for r in client.bidi_stream(_requests(2))]) == 2
        finally:
            otel_context.detach(token)

    root_trace = root.get_span_context().trace_id
    system = SYSTEMS[transport] or transport
    for method in ("Unary", "ServerStream", "ClientStream", "BidiStream"):
        name = f"{CONFORMANCE}/{method}"
        client_span = otel.span(SpanKind.CLIENT, name)
        assert trace_id(client_span) == root_trace
        assert parent_id(client_span) == root.get_span_context().span_id
        assert client_span.attributes is not None
        assert client_span.attributes["rpc.system.name"] == system
        assert client_span.attributes["rpc.method"] == name
        if transport not in ("inproc", "memory"):
            assert client_span.attributes["server.address"] == "127.0.0.1"
            assert isinstance(client_span.attributes["server.port"], int)
        server_span = otel.span(SpanKind.SERVER, name)
        assert trace_id(server_span) == root_trace
        assert parent_id(server_span) == span_id(client_span)
        assert server_span.attributes is not None
        assert server_span.attributes["rpc.system.name"] == system
        assert server_span.attributes["rpc.method"] == name
        assert server_span.attributes["rpc.response.status_code"] == "OK"
        assert client_span.attributes["rpc.response.status_code"] == "OK"
        assert server_span.status.status_code is StatusCode.UNSET
        assert client_span.status.status_code is StatusCode.UNSET
        if transport in ("grpc", "http"):
            assert server_span.attributes["network.peer.address"] == "127.0.0.1"
            assert server_span.attributes["server.port"] == client_span.attributes["server.port"]

    # the handler's own code runs under the server span, with the caller's baggage (unary and each
    # step of a server stream)
    unary_server = span_id(otel.span(SpanKind.SERVER, f"{CONFORMANCE}/Unary"))
    stream_server = span_id(otel.span(SpanKind.SERVER, f"{CONFORMANCE}/ServerStream"))
    assert service.seen == [(unary_server, "acme")] + [(stream_server, "acme")] * 3


async def test_every_code_sets_the_span_status_per_side(
    otel: Otel, transport: str, harnesses: Harnesses
) -> None:
    async with (
        serving([Conformance()], transport, harnesses, otel.telemetry) as url,
        protobind.connect(url, telemetry=otel.telemetry) as channel,
    ):
        client = ConformanceServiceClient(channel)
        for code in Code:
            with otel.tracer.start_as_current_span(code.name):
                if code is Code.OK:
                    await client.unary(Request())
                else:
                    with pytest.raises(RpcError) as info:
                        await client.unary(
                            Request(behavior=Behavior(error_code=int(code), error_message="m"))
                        )
                    assert info.value.code is code

    name = f"{CONFORMANCE}/Unary"
    roots = {s.name: s for s in otel.spans(SpanKind.INTERNAL)}
    for code in Code:
        root = roots[code.name]
        (client_span,) = [s for s in otel.spans(SpanKind.CLIENT, name) if parent_id(s) == span_id(root)]
        (server_span,) = [
            s for s in otel.spans(SpanKind.SERVER, name) if parent_id(s) == span_id(client_span)
        ]
        for span, failed in ((server_span, code in SERVER_ERROR_CODES), (client_span, code is not Code.OK)):
            assert span.attributes is not None
            assert span.attributes["rpc.response.status_code"] == code.name
            if failed:
                assert span.status.status_code is StatusCode.ERROR, (span.kind, code)
                assert span.status.description == "m"
                assert span.attributes["error.type"] == code.name
            else:
                assert span.status.status_code is StatusCode.UNSET, (span.kind, code)
                assert "error.type" not in span.attributes

    # one duration point per code and side, counted once each
    for side in ("server", "client"):
        points = otel.points(f"rpc.{side}.call.duration")
        assert sorted(p.attributes["rpc.response.status_code"] for p in points) == sorted(
            c.name for c in Code
        )
        assert all(p.count == 1 for p in points)
        assert {p.attributes["rpc.system.name"] for p in points} == {(SYSTEMS[transport] or transport)}


async def test_deadline_exceeded_on_both_sides(otel: Otel, transport: str, harnesses: Harnesses) -> None:
    async with (
        serving([Conformance()], transport, harnesses, otel.telemetry) as url,
        protobind.connect(url, telemetry=otel.telemetry) as channel,
    ):
        with pytest.raises(RpcError) as info:
            await ConformanceServiceClient(channel).unary(
                Request(behavior=Behavior(sleep_ms=10_000)), timeout=0.3
            )
        assert info.value.code is Code.DEADLINE_EXCEEDED
        name = f"{CONFORMANCE}/Unary"
        assert await eventually(lambda: len(otel.spans(SpanKind.SERVER, name)) == 1)
    client_span = otel.span(SpanKind.CLIENT, name)
    assert client_span.attributes is not None
    assert client_span.attributes["rpc.response.status_code"] == "DEADLINE_EXCEEDED"
    assert client_span.status.status_code is StatusCode.ERROR
    # The server stops the handler at its own copy of the deadline, or earlier when it sees the
    # caller, who gave up first, go away (HTTP/1.1, NATS): then the call was cancelled, which is
    # not a server error.
    server_span = otel.span(SpanKind.SERVER, name)
    assert server_span.attributes is not None
    code = server_span.attributes["rpc.response.status_code"]
    assert code in ("DEADLINE_EXCEEDED", "CANCELLED")
    assert (server_span.status.status_code is StatusCode.ERROR) is (code == "DEADLINE_EXCEEDED")


async def test_client_leaving_a_stream_is_cancelled_not_a_server_error(otel: Otel) -> None:
    async with (
        protobind.testing.serving([Conformance()], "grpc", telemetry=otel.telemetry) as url,
        protobind.connect(url, telemetry=otel.telemetry) as channel,
    ):
        client = ConformanceServiceClient(channel)
        responses = client.server_stream(Request(behavior=Behavior(stream_count=1000, sleep_ms=10)))
        async for _ in responses:
            break
        await responses.aclose()
        name = f"{CONFORMANCE}/ServerStream"
        assert await eventually(lambda: len(otel.spans(SpanKind.SERVER, name)) == 1)
    server_span = otel.span(SpanKind.SERVER, name)
    assert server_span.attributes is not None
    assert server_span.attributes["rpc.response.status_code"] == "CANCELLED"
    assert server_span.status.status_code is StatusCode.UNSET


# --- a chain of hops -------------------------------------------------------------------------------


class Forwarder(GreeterService):
    """Service A: answers by calling service B."""

    def __init__(self, downstream: ConformanceServiceClient) -> None:
        self.downstream = downstream

    async def say_hello(self, request: HelloRequest, context: protobind.Context) -> HelloReply:
        reply = await self.downstream.unary(Request(text=request.name))
        return HelloReply(message=f"hello {reply.text}")


async def test_http_to_a_to_nats_to_b_is_one_trace(otel: Otel, harnesses: Harnesses) -> None:
    service_b = Observing()
    async with (
        serving([service_b], "nats", harnesses, otel.telemetry) as b_url,
        protobind.connect(b_url, telemetry=otel.telemetry) as to_b,
        protobind.testing.serving(
            [Forwarder(ConformanceServiceClient(to_b))], "http", telemetry=otel.telemetry
        ) as a_url,
        protobind.connect(a_url, telemetry=otel.telemetry) as to_a,
    ):
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            with otel.tracer.start_as_current_span("request") as root:
                reply = await GreeterClient(to_a).say_hello(HelloRequest(name="ada"))
        finally:
            otel_context.detach(token)
    assert reply.message == "hello ada"

    a_client = otel.span(SpanKind.CLIENT, "greeter.v1.Greeter/SayHello")
    a_server = otel.span(SpanKind.SERVER, "greeter.v1.Greeter/SayHello")
    b_client = otel.span(SpanKind.CLIENT, f"{CONFORMANCE}/Unary")
    b_server = otel.span(SpanKind.SERVER, f"{CONFORMANCE}/Unary")
    chain = [a_client, a_server, b_client, b_server]
    assert {trace_id(s) for s in chain} == {root.get_span_context().trace_id}
    assert parent_id(a_client) == root.get_span_context().span_id
    assert parent_id(a_server) == span_id(a_client)
    assert parent_id(b_client) == span_id(a_server)
    assert parent_id(b_server) == span_id(b_client)
    assert [s.attributes["rpc.system.name"] for s in chain if s.attributes] == [
        "connectrpc",
        "connectrpc",
        "nats",
        "nats",
    ]
    assert service_b.seen == [(span_id(b_server), "acme")]


async def test_tracing_off_in_the_middle_keeps_the_trace(otel: Otel) -> None:
    """A hop with tracing off makes no spans but hands the trace context on."""
    quiet = protobind.Telemetry(tracing=False, meter_provider=otel.telemetry.meter_provider)
    async with (
        protobind.testing.serving([Conformance()], "inproc", telemetry=otel.telemetry) as b_url,
        protobind.connect(b_url, telemetry=quiet) as to_b,
        protobind.testing.serving(
            [Forwarder(ConformanceServiceClient(to_b))], "inproc", telemetry=quiet
        ) as a_url,
        protobind.connect(a_url, telemetry=otel.telemetry) as to_a,
    ):
        await GreeterClient(to_a).say_hello(HelloRequest(name="ada"))
    a_client = otel.span(SpanKind.CLIENT, "greeter.v1.Greeter/SayHello")
    b_server = otel.span(SpanKind.SERVER, f"{CONFORMANCE}/Unary")
    assert len(otel.spans()) == 2
    assert trace_id(b_server) == trace_id(a_client)
    assert parent_id(b_server) == span_id(a_client)


# --- metrics ---------------------------------------------------------------------------------------


async def test_metrics_names_units_sizes_and_counts(otel: Otel, transport: str, harnesses: Harnesses) -> None:
    service = Conformance()
    async with (
        serving([service], transport, harnesses, otel.telemetry) as url,
        protobind.connect(url, telemetry=otel.telemetry) as channel,
    ):
        client = ConformanceServiceClient(channel)
        message = Request(text="sized", payload=b"x" * 100)
        await client.unary(message)
        assert len([r async for r in client.server_stream(Request(behavior=Behavior(stream_count=5)))]) == 5
        await client.client_stream(_requests(3))

        # in flight: a call the handler holds
        service.started.clear()
        slow = asyncio.create_task(client.unary(Request(text="slow", behavior=Behavior(sleep_ms=10_000))))
        await service.started.wait()
        unary = f"{CONFORMANCE}/Unary"
        active = {
            side: sum(
                p.value
                for p in otel.points(f"protobind.{side}.active_calls")
                if p.attributes["rpc.method"] == unary
            )
            for side in ("server", "client")
        }
        assert active == {"server": 1, "client": 1}
        slow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await slow
        assert sum(p.value for p in otel.points("protobind.client.active_calls")) == 0
    # the server's stop cancelled the held call, if the transport had not already
    assert sum(p.value for p in otel.points("protobind.server.active_calls")) == 0

    for side in ("server", "client"):
        assert otel.unit(f"rpc.{side}.call.duration") == "s"
        assert otel.unit(f"rpc.{side}.request.size") == "By"
        sizes = {p.attributes["rpc.method"]: p for p in otel.points(f"rpc.{side}.request.size")}
        assert sizes[unary].sum >= message.ByteSize()  # the sized call, plus the slow one
        assert sizes[f"{CONFORMANCE}/ClientStream"].count == 3
        responses = {p.attributes["rpc.method"]: p for p in otel.points(f"rpc.{side}.response.size")}
        assert responses[f"{CONFORMANCE}/ServerStream"].count == 5
        per_rpc = {p.attributes["rpc.method"]: p for p in otel.points(f"rpc.{side}.responses_per_rpc")}
        assert per_rpc[f"{CONFORMANCE}/ServerStream"].sum == 5
        assert unary not in per_rpc  # message counts are for streams only
        requests_per_rpc = {
            p.attributes["rpc.method"]: p for p in otel.points(f"rpc.{side}.requests_per_rpc")
        }
        assert requests_per_rpc[f"{CONFORMANCE}/ClientStream"].sum == 3
        durations = [
            p for p in otel.points(f"rpc.{side}.call.duration") if p.attributes["rpc.method"] == unary
        ]
        assert {p.attributes["rpc.response.status_code"] for p in durations} >= {"OK"}
        assert all(p.attributes["rpc.system.name"] == (SYSTEMS[transport] or transport) for p in durations)


# --- logs ------------------------------------------------------------------------------------------


def _server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "protobind.server"]


async def test_one_log_line_per_failed_call(
    otel: Otel, transport: str, harnesses: Harnesses, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protobind.server")
    async with (
        serving([Conformance()], transport, harnesses, otel.telemetry) as url,
        protobind.connect(url, telemetry=otel.telemetry) as channel,
    ):
        client = ConformanceServiceClient(channel)
        await client.unary(Request(text="fine"))
        assert _server_records(caplog) == []  # no line for a successful call

        with pytest.raises(RpcError) as info:
            await client.unary(Request(behavior=Behavior(raise_exception=True)))
        assert info.value.code is Code.INTERNAL and "hunter2" not in info.value.message
        (record,) = _server_records(caplog)
        caplog.clear()
        server_span = otel.spans(SpanKind.SERVER)[-1]
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None and "hunter2" in str(
            record.exc_info[1]
        )  # traceback: server log only
        message = record.getMessage()
        assert f"method={CONFORMANCE}/Unary" in message and f"transport={transport}" in message
        assert "code=INTERNAL" in message and "duration_ms=" in message
        assert f"trace_id={trace_id(server_span):032x}" in message
        assert (
            record.__dict__["rpc_code"] == "INTERNAL"
            and record.__dict__["trace_id"] == f"{trace_id(server_span):032x}"
        )

        with pytest.raises(RpcError):
            await client.unary(Request(behavior=Behavior(error_code=int(Code.NOT_FOUND))))
        (record,) = _server_records(caplog)
        caplog.clear()
        assert record.levelno == logging.INFO and record.exc_info is None
        assert "code=NOT_FOUND" in record.getMessage()

        with pytest.raises(RpcError):
            await client.unary(Request(behavior=Behavior(error_code=int(Code.UNAVAILABLE))))
        (record,) = _server_records(caplog)
        caplog.clear()
        assert record.levelno == logging.WARNING

        # an exception in the middle of a server stream: one line as well
        with pytest.raises(RpcError) as info:
            [
                r
                async for r in client.server_stream(
                    Request(behavior=Behavior(stream_count=3, error_after=1, raise_exception=True))
                )
            ]
        assert info.value.code is Code.INTERNAL
        (record,) = _server_records(caplog)
        assert record.levelno == logging.ERROR and "ServerStream" in record.getMessage()


async def test_log_successes_and_no_telemetry_log_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="protobind.server")
    telemetry = protobind.Telemetry(tracing=False, metrics=False, log_successes=True)
    async with (
        protobind.testing.serving([Conformance()], "inproc", telemetry=telemetry) as url,
        protobind.connect(url) as channel,
    ):
        await ConformanceServiceClient(channel).unary(Request())
    (record,) = _server_records(caplog)
    assert record.levelno == logging.INFO and record.getMessage().startswith("call ok ")
    assert "trace_id=-" in record.getMessage()
    caplog.clear()

    # without telemetry, a handler exception is still logged once, with its traceback
    async with (
        protobind.testing.serving([Conformance()], "grpc") as url,
        protobind.connect(url) as channel,
    ):
        with pytest.raises(RpcError):
            await ConformanceServiceClient(channel).unary(Request(behavior=Behavior(raise_exception=True)))
    (record,) = _server_records(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "code=INTERNAL" in record.getMessage()


# --- the consumer span brokers use ---------------------------------------------------------------


async def test_consumer_span_links_the_producer_and_counts_attempts(otel: Otel) -> None:
    destination = "orders.v1.Orders.Place"
    producer_metadata = protobind.Metadata()
    with otel.tracer.start_as_current_span("publish", kind=SpanKind.PRODUCER) as producer:
        otel.telemetry.instruments().inject(producer_metadata, otel_context.get_current())
    assert "traceparent" in producer_metadata

    # the handler of the message runs as it will behind a broker consumer: with the metadata the
    # consumer span rewrote, through the server's endpoint (and so its telemetry interceptor)
    server = protobind.Server([Conformance()], telemetry=otel.telemetry)
    table = server.table()  # what a binding gets
    assert table.telemetry is otel.telemetry
    endpoint = table.endpoints[f"/{CONFORMANCE}/Unary"]
    method = endpoint.method
    for attempt in (1, 2, 3):
        metadata = producer_metadata.copy()
        with (
            contextlib.suppress(RpcError),
            otel.telemetry.consumer_span(
                destination, metadata, system="nats", attempt=attempt, consumer_group="orders", method=method
            ) as consumer,
        ):
            assert trace.get_current_span() is consumer.span
            assert metadata["traceparent"] != producer_metadata["traceparent"]
            code = Code.UNAVAILABLE if attempt < 3 else Code.OK
            context = protobind.Context(method, "nats", metadata=metadata)
            await invoke_unary(endpoint, Request(behavior=Behavior(error_code=int(code))), context)
            if attempt == 3:
                consumer.dead_letter("gave up")  # (a real consumer would not after a success)
    assert trace.get_current_span() is trace.INVALID_SPAN

    consumers = otel.spans(SpanKind.CONSUMER)
    handlers = otel.spans(SpanKind.SERVER)
    assert len(consumers) == 3 and len(handlers) == 3
    for attempt, (consumer_span, handler_span) in enumerate(zip(consumers, handlers, strict=True), start=1):
        assert consumer_span.name == f"process {destination}"
        assert trace_id(consumer_span) == producer.get_span_context().trace_id
        assert parent_id(consumer_span) == producer.get_span_context().span_id
        (link,) = consumer_span.links
        assert link.context.span_id == producer.get_span_context().span_id
        assert link.attributes is not None and link.attributes["protobind.delivery.attempt"] == attempt
        assert consumer_span.attributes is not None
        assert consumer_span.attributes["protobind.delivery.attempt"] == attempt
        assert consumer_span.attributes["messaging.system"] == "nats"
        assert consumer_span.attributes["messaging.destination.name"] == destination
        assert consumer_span.attributes["messaging.consumer.group.name"] == "orders"
        assert consumer_span.attributes["messaging.operation.type"] == "process"
        assert parent_id(handler_span) == span_id(consumer_span)
        failed = attempt < 3
        assert (consumer_span.status.status_code is StatusCode.ERROR) is failed
        assert (handler_span.status.status_code is StatusCode.ERROR) is failed  # UNAVAILABLE
    assert [e.name for e in consumers[2].events] == ["protobind.dead_letter"]
    assert sum(p.value for p in otel.points("protobind.consumer.redeliveries")) == 2
    assert sum(p.value for p in otel.points("protobind.consumer.dead_letters")) == 1
    assert sum(p.count for p in otel.points("messaging.process.duration")) == 3


def test_consumer_span_without_a_producer_context_starts_a_trace(otel: Otel) -> None:
    with otel.telemetry.consumer_span("jobs", protobind.Metadata(), system="nats", attempt=1) as consumer:
        pass
    assert consumer.span.get_span_context().is_valid
    (span,) = otel.spans(SpanKind.CONSUMER)
    assert span.parent is None and span.links == ()


# --- helpers -------------------------------------------------------------------------------------


def test_server_address_never_carries_credentials() -> None:
    from protobind import transport as registry
    from protobind._otel import peer_attributes, server_address

    assert server_address("nats://user:secret@10.0.0.1:4223,10.0.0.2:4224", registry) == ("10.0.0.1", 4223)
    assert server_address("grpc://[::1]:50051", registry) == ("::1", 50051)
    assert server_address("http://example.com/api", registry) == ("example.com", 80)
    assert server_address("inproc://svc", registry) == ("svc", None)
    assert server_address("memory://Orders", registry) == ("Orders", None)
    assert peer_attributes("ipv6:[::1]:5000") == {"network.peer.address": "::1", "network.peer.port": 5000}
    assert peer_attributes("127.0.0.1:80") == {"network.peer.address": "127.0.0.1", "network.peer.port": 80}
    assert peer_attributes("unix:/tmp/s") == {"network.peer.address": "/tmp/s"}
    assert peer_attributes("") is None


@pytest.mark.parametrize("transport", ["nats", "memory"])
async def test_a_one_way_message_over_a_broker_is_one_trace_producer_consumer_server(
    otel: Otel, transport: str, harnesses: dict[str, Callable[[], str]]
) -> None:
    service = Conformance()
    server = protobind.Server([service], telemetry=otel.telemetry)
    (url,) = await server.start(harnesses[transport]())
    try:
        async with protobind.connect(url, telemetry=otel.telemetry) as channel:
            await ConformanceServiceClient(channel).notify(Request(text="event"))
            await service.until(lambda: service.notified)
            await asyncio.sleep(0.05)
    finally:
        await server.stop(1.0)
    (producer,) = otel.spans(SpanKind.PRODUCER)
    (consumer,) = otel.spans(SpanKind.CONSUMER)
    (handler,) = otel.spans(SpanKind.SERVER)
    assert trace_id(consumer) == trace_id(handler) == trace_id(producer)
    assert parent_id(consumer) == span_id(producer)
    (link,) = consumer.links
    assert link.context.span_id == span_id(producer)
    assert consumer.attributes is not None and consumer.attributes["protobind.delivery.attempt"] == 1
    assert parent_id(handler) == span_id(consumer)


class WrongResponse(Conformance):
    async def unary(self, request: Request, context: protobind.Context) -> Response:
        return Request(text="not a response")  # type: ignore[return-value]


async def test_a_handler_returning_the_wrong_type_fails_its_server_span(
    otel: Otel, transport: str, harnesses: Harnesses
) -> None:
    """The caller gets INTERNAL; the server span and duration point say INTERNAL too, not OK."""
    async with (
        serving([WrongResponse()], transport, harnesses, otel.telemetry) as url,
        protobind.connect(url, telemetry=otel.telemetry) as channel,
    ):
        with pytest.raises(RpcError) as info:
            await ConformanceServiceClient(channel).unary(Request())
        assert info.value.code is Code.INTERNAL
    server_span = otel.span(SpanKind.SERVER, f"{CONFORMANCE}/Unary")
    assert server_span.status.status_code is StatusCode.ERROR
    assert server_span.attributes is not None
    assert server_span.attributes["rpc.response.status_code"] == "INTERNAL"
    (point,) = otel.points("rpc.server.call.duration")
    assert point.attributes["rpc.response.status_code"] == "INTERNAL"


def test_the_docs_say_what_a_wrong_response_type_does_to_the_span() -> None:
    """docs/observability.md says it in one voice, as the test above checks: INTERNAL, never OK."""
    text = " ".join((ROOT / "docs" / "observability.md").read_text().split())
    sentences = [
        s for s in re.split(r"(?<=\.) ", text) if "wrong type" in s or "other than its method's response" in s
    ]
    assert sentences, "docs/observability.md no longer says what a wrong response type does"
    for sentence in sentences:
        assert "INTERNAL" in sentence and "`OK`" not in sentence, sentence


class ReturnsNothing(Conformance):
    async def notify(self, request: Request, context: protobind.Context) -> Empty:
        await super().notify(request, context)
        return None  # type: ignore[return-value]


async def test_a_one_way_handler_returning_nothing_is_not_a_failure(
    otel: Otel, transport: str, harnesses: Harnesses
) -> None:
    """A one-way handler's result is ignored on every transport: returning None is no error."""
    service = ReturnsNothing()
    async with (
        serving([service], transport, harnesses, otel.telemetry) as url,
        protobind.connect(url, telemetry=otel.telemetry) as channel,
    ):
        await ConformanceServiceClient(channel).notify(Request(text="nothing back"))
        await service.until(lambda: service.notified)
        await asyncio.sleep(0.05)
    for span in otel.spans(SpanKind.SERVER):
        assert span.status.status_code is StatusCode.UNSET, span.attributes
