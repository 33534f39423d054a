"""protobind's spans join traces made by OpenTelemetry's own instrumentations of peers nobody here
wrote: a stock grpcio client and server (opentelemetry-instrumentation-grpc), and httpx and aiohttp
clients (opentelemetry-instrumentation-httpx / -aiohttp-client) calling the HTTP binding."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import grpc
import httpx
import pytest
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import protobind
import protobind.testing
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import SERVICE, Conformance

UNARY = f"/{SERVICE}/Unary"


class Recorder:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.telemetry = protobind.Telemetry(tracer_provider=self.provider, metrics=False)

    def only(self, kind: SpanKind, scope: str) -> ReadableSpan:
        """The one span of ``kind`` recorded by the instrumentation library named ``scope``."""
        (span,) = [
            s
            for s in self.exporter.get_finished_spans()
            if s.kind is kind
            and s.instrumentation_scope is not None
            and s.instrumentation_scope.name.startswith(scope)
        ]
        return span


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    try:
        yield recorder
    finally:
        recorder.provider.shutdown()


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.context is not None and parent.context is not None
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent is not None and child.parent.span_id == parent.context.span_id


async def test_instrumented_grpc_client_calls_protobind(recorder: Recorder) -> None:
    async with protobind.testing.serving([Conformance()], "grpc", telemetry=recorder.telemetry) as url:
        interceptors = aio_client_interceptors(tracer_provider=recorder.provider)
        async with grpc.aio.insecure_channel(url.split("://", 1)[1], interceptors=interceptors) as channel:
            call = channel.unary_unary(
                UNARY, request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
            )
            reply = await call(Request(text="stock"))
    assert reply.text == "stock"
    stock_client = recorder.only(SpanKind.CLIENT, "opentelemetry.instrumentation.grpc")
    protobind_server = recorder.only(SpanKind.SERVER, "protobind")
    assert_child(protobind_server, stock_client)


@pytest.fixture
async def stock_server(recorder: Recorder) -> AsyncIterator[str]:
    async def unary(request: Request, context: grpc.aio.ServicerContext) -> Response:  # type: ignore[type-arg]
        return Response(text=request.text)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
            )
        },
    )
    server = grpc.aio.server(interceptors=[aio_server_interceptor(tracer_provider=recorder.provider)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_protobind_client_calls_an_instrumented_grpc_server(
    recorder: Recorder, stock_server: str
) -> None:
    async with protobind.connect(stock_server, telemetry=recorder.telemetry) as channel:
        reply = await ConformanceServiceClient(channel).unary(Request(text="to stock"))
    assert reply.text == "to stock"
    protobind_client = recorder.only(SpanKind.CLIENT, "protobind")
    stock_server_span = recorder.only(SpanKind.SERVER, "opentelemetry.instrumentation.grpc")
    assert_child(stock_server_span, protobind_client)


async def test_instrumented_httpx_client_calls_protobind(recorder: Recorder) -> None:
    async with (
        protobind.testing.serving([Conformance()], "http", telemetry=recorder.telemetry) as url,
        httpx.AsyncClient() as client,
    ):
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=recorder.provider)
        response = await client.post(f"{url}{UNARY}", json={"text": "from httpx"})
    assert response.status_code == 200 and response.json()["text"] == "from httpx"
    httpx_span = recorder.only(SpanKind.CLIENT, "opentelemetry.instrumentation.httpx")
    assert_child(recorder.only(SpanKind.SERVER, "protobind"), httpx_span)


async def test_instrumented_aiohttp_client_calls_protobind(recorder: Recorder) -> None:
    trace_config = create_trace_config(tracer_provider=recorder.provider)
    async with (
        protobind.testing.serving([Conformance()], "http", telemetry=recorder.telemetry) as url,
        aiohttp.ClientSession(trace_configs=[trace_config]) as session,
        session.post(f"{url}{UNARY}", json={"text": "from aiohttp"}) as response,
    ):
        assert response.status == 200
        assert (await response.json())["text"] == "from aiohttp"
    aiohttp_span = recorder.only(SpanKind.CLIENT, "opentelemetry.instrumentation.aiohttp_client")
    assert_child(recorder.only(SpanKind.SERVER, "protobind"), aiohttp_span)
