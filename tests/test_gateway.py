"""protobind.Gateway: the behaviour suite through a gateway (HTTP -> gateway -> NATS and
NATS -> gateway -> gRPC), REST and OpenAPI for a NATS-only service, and the CLI command.

The gateway knows the services only from their .proto files (dynamic message classes, no
generated code); the upstream is a real protobind server with the conformance service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Request
from protobind_codegen.descriptors import load_services

from . import test_behaviour
from .conformance import Conformance
from .processes import PROTOBIND
from .support import ROOT, example_greeter

# The behaviour suite's tests, collected again in this module, where the fixtures below put a
# gateway between the client (servers.py's fixture, on this module's ``served``) and the service.
globals().update(
    {name: getattr(test_behaviour, name) for name in dir(test_behaviour) if name.startswith("test_")}
)

IDL = ROOT / "idl"
CONFORMANCE_PROTO = str(IDL / "protobind" / "conformance" / "v1" / "conformance.proto")
GREETER_PROTO = ROOT / "examples" / "greeter" / "proto"


#: (the transport callers use, the transport the service is served on)
ROUTES = [("http", "nats"), ("nats", "grpc")]


@pytest.fixture(scope="module")
def conformance_services() -> list[protobind.ServiceInfo]:
    return load_services([CONFORMANCE_PROTO], [str(IDL)])


@pytest.fixture(params=ROUTES, ids=[f"{a}-gateway-{b}" for a, b in ROUTES])
def route(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def transport(route: tuple[str, str]) -> str:
    return route[0]


@pytest.fixture
def handler_transport(route: tuple[str, str]) -> str:
    return route[1]


@pytest.fixture
async def served(
    route: tuple[str, str],
    harnesses: dict[str, Callable[[], str]],
    conformance_services: list[protobind.ServiceInfo],
) -> AsyncIterator[tuple[str, Conformance]]:
    listen, upstream = route
    service = Conformance()
    server = protobind.Server([service])
    (upstream_url,) = await server.start(harnesses[upstream]())
    gateway = protobind.Gateway(conformance_services, upstream_url)
    try:
        (url,) = await gateway.start(harnesses[listen]())
        yield url, service
    finally:
        await gateway.stop(grace=1.0)
        await server.stop(grace=1.0)


def test_gateway_uses_dynamic_classes(conformance_services: list[protobind.ServiceInfo]) -> None:
    (info,) = conformance_services
    assert info.method("Unary").input_type is not Request  # the suite really runs without stubs


UNARY_PATH = "/protobind.conformance.v1.ConformanceService/Unary"


@contextlib.asynccontextmanager
async def http_gateway(
    harnesses: dict[str, Callable[[], str]],
    services: list[protobind.ServiceInfo],
    upstream: str,
    **http_options: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """A real conformance server on ``upstream``'s transport behind an HTTP gateway (with
    ``http_options`` on its HTTP side); the yielded client talks to the gateway as any HTTP caller
    does (raw headers, no protobind)."""
    server = protobind.Server([Conformance()])
    (upstream_url,) = await server.start(harnesses[upstream]())
    try:
        async with protobind.Gateway(
            services, upstream_url, transport_options={"http": http_options}
        ) as gateway:
            (url,) = await gateway.start(harnesses["http"]())
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                yield http
    finally:
        await server.stop(grace=1.0)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("upstream", ["grpc", "http"])
async def test_upstream_down_is_unavailable(
    upstream: str,
    harnesses: dict[str, Callable[[], str]],
    conformance_services: list[protobind.ServiceInfo],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 17 item 5: the caller gets UNAVAILABLE "upstream unavailable"; the transport's text
    (grpc core's or aiohttp's, with the upstream's address) is in the gateway's log only."""
    caplog.set_level(logging.WARNING, logger="protobind")
    server = protobind.Server([Conformance()])
    (upstream_url,) = await server.start(harnesses[upstream]())
    await server.stop(grace=0)
    port = upstream_url.rsplit(":", 1)[1]
    async with protobind.Gateway(conformance_services, upstream_url) as gateway:
        (url,) = await gateway.start(harnesses["http"]())
        async with protobind.connect(url) as channel:
            method = conformance_services[0].method("Unary")
            with pytest.raises(RpcError) as info:
                await channel.unary(method, method.input_type(text="x"), timeout=5)
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.post(UNARY_PATH, json={"text": "x"})
    assert (info.value.code, info.value.message) == (Code.UNAVAILABLE, "upstream unavailable")
    assert answer.status_code == 503
    assert answer.json() == {"code": "unavailable", "message": "upstream unavailable"}
    assert port in caplog.text  # the detail, for the operator
    assert_no_traceback(caplog)


async def test_nats_upstream_gone_is_unavailable_without_internals(
    harnesses: dict[str, Callable[[], str]],
    conformance_services: list[protobind.ServiceInfo],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No server on the subject: the NATS client's own message names the method, not the NATS
    server's address, so it passes on as it is."""
    caplog.set_level(logging.WARNING, logger="protobind")
    server = protobind.Server([Conformance()])
    (upstream_url,) = await server.start(harnesses["nats"]())
    await server.stop(grace=0)
    async with protobind.Gateway(conformance_services, upstream_url) as gateway:
        (url,) = await gateway.start(harnesses["http"]())
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.post(UNARY_PATH, json={"text": "x"})
    assert answer.status_code == 503
    assert answer.json()["code"] == "unavailable"
    assert "127.0.0.1" not in answer.text and upstream_url.rsplit(":", 1)[1] not in answer.text
    assert_no_traceback(caplog)


@pytest.mark.parametrize("upstream", ["grpc", "http"])
async def test_oversized_headers_are_refused_before_forwarding(
    upstream: str,
    harnesses: dict[str, Callable[[], str]],
    conformance_services: list[protobind.ServiceInfo],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Headers over the gateway's max_header_size (16 KiB by default) are refused by its HTTP side
    as any protobind HTTP server refuses them, 431 and RESOURCE_EXHAUSTED without listing them,
    before anything goes upstream (it was 429 with grpc core's list of every header and its size)."""
    caplog.set_level(logging.WARNING, logger="protobind")
    headers = {f"x-header-{i}": "v" * 1000 for i in range(20)}
    async with http_gateway(harnesses, conformance_services, upstream) as http:
        refused = await http.post(UNARY_PATH, json={"text": "x"}, headers=headers)
        after = await http.post(UNARY_PATH, json={"text": "after"})
    assert refused.status_code == 431, refused.text
    assert refused.json()["code"] == "resource_exhausted"
    assert "x-header" not in refused.text and "vvvv" not in refused.text
    assert "upstream call" not in caplog.text  # never forwarded
    assert_no_traceback(caplog)
    assert after.json()["text"] == "after"


async def test_metadata_the_upstream_refuses_as_too_large_is_not_listed(
    harnesses: dict[str, Callable[[], str]],
    conformance_services: list[protobind.ServiceInfo],
    caplog: pytest.LogCaptureFixture,
    grpc_engine: str,
) -> None:
    """Headers the gateway takes (a larger max_header_size) but its gRPC upstream refuses:
    RESOURCE_EXHAUSTED (HTTP 429) with a plain message, on either engine. The native server
    answers with its own status; with grpcio, core refuses them and its list of the headers goes
    to the gateway's log only."""
    caplog.set_level(logging.WARNING, logger="protobind")
    headers = {f"x-header-{i}": "v" * 1000 for i in range(20)}
    async with http_gateway(harnesses, conformance_services, "grpc", max_header_size=65536) as http:
        refused = await http.post(UNARY_PATH, json={"text": "x"}, headers=headers)
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "resource_exhausted"
    assert "x-header" not in refused.text and "user-agent" not in refused.text and "vvvv" not in refused.text
    if grpc_engine == "grpcio":
        assert "received metadata size exceeds" in caplog.text and "x-header-0" in caplog.text
    assert_no_traceback(caplog)


@pytest.mark.parametrize(
    ("upstream", "value"),
    [("grpc", "caf\xe9".encode("latin-1")), ("grpc", b"a\x01b"), ("http", b"a\x01b"), ("http", b"a\x7fb")],
    ids=["grpc-latin1", "grpc-control", "http-control", "http-delete"],
)
async def test_metadata_the_upstream_cannot_carry_is_invalid_argument(
    upstream: str,
    value: bytes,
    harnesses: dict[str, Callable[[], str]],
    conformance_services: list[protobind.ServiceInfo],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A header value the upstream's transport cannot carry is the caller's error (400), not the
    gateway's (it was 500 with a traceback in the log)."""
    caplog.set_level(logging.WARNING, logger="protobind")
    async with http_gateway(harnesses, conformance_services, upstream) as http:
        answer = await http.post(UNARY_PATH, json={"text": "x"}, headers={"x-odd": value})
    assert answer.status_code == 400, answer.text
    if answer.headers.get("content-type", "").startswith("application/json"):
        assert answer.json()["code"] == "invalid_argument"
        assert "'x-odd'" in answer.json()["message"]
    else:
        # the HTTP/1.1 parser (zttp) refuses a control character in a header before protobind sees it
        assert value != "caf\xe9".encode("latin-1") and answer.text == "Invalid HTTP request received."
    assert not [r for r in caplog.records if r.name.startswith("protobind")], caplog.text


@pytest.mark.parametrize("upstream", ["grpc", "http"])
async def test_a_handlers_own_unavailable_passes_unchanged(
    upstream: str, harnesses: dict[str, Callable[[], str]], conformance_services: list[protobind.ServiceInfo]
) -> None:
    behavior = {"errorCode": int(Code.UNAVAILABLE), "errorMessage": "db down", "errorDetailReason": "R"}
    async with http_gateway(harnesses, conformance_services, upstream) as http:
        answer = await http.post(UNARY_PATH, json={"behavior": behavior})
    assert answer.status_code == 503
    body = answer.json()
    assert (body["code"], body["message"]) == ("unavailable", "db down")
    assert len(body["details"]) == 1


def test_gateway_needs_a_service() -> None:
    with pytest.raises(ValueError, match="at least one service"):
        protobind.Gateway([], "grpc://127.0.0.1:1")


@pytest.fixture
async def greeter_on_nats(harnesses: dict[str, Callable[[], str]]) -> AsyncIterator[str]:
    server = protobind.Server([example_greeter()])
    (url,) = await server.start(harnesses["nats"]())
    try:
        yield url
    finally:
        await server.stop(grace=1.0)


async def test_nats_service_gets_rest_routes_and_openapi(greeter_on_nats: str) -> None:
    services = load_services([str(GREETER_PROTO)], [str(GREETER_PROTO)])
    async with protobind.Gateway(services, greeter_on_nats) as gateway:
        (url,) = await gateway.start("http://127.0.0.1:0")
        async with httpx.AsyncClient(base_url=url) as http:
            rest = await http.get("/v1/greeter/Ada")
            document = (await http.get("/openapi.json")).json()
            bad = await http.post("/v1/greeter:sayHello", json={})
    assert rest.status_code == 200
    assert rest.json() == {"message": "Hello, Ada! (via nats)"}
    assert rest.headers["x-greeter"] == "v1"
    assert "/v1/greeter/{name}" in document["paths"]
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_argument"


async def test_cli_gateway(greeter_on_nats: str) -> None:
    """`protobind gateway` serves until SIGTERM, then stops cleanly."""
    process = await asyncio.create_subprocess_exec(
        *PROTOBIND,
        "gateway",
        "--proto",
        str(GREETER_PROTO / "greeter" / "v1" / "greeter.proto"),
        "-I",
        str(GREETER_PROTO),
        "--upstream",
        greeter_on_nats,
        "--listen",
        "grpc://127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert "greeter.v1.Greeter" in line, line
        url = line.split(" on ")[-1].strip()
        (info,) = load_services([str(GREETER_PROTO)], [str(GREETER_PROTO)])
        method = info.method("SayHello")
        async with protobind.connect(url) as channel:
            reply = await channel.unary(method, method.input_type(name="Bo"), timeout=10)
        assert reply.message == "Hello, Bo! (via nats)"
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err
        assert b"stopping" in out
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_cli_gateway_usage_errors() -> None:
    result = subprocess.run(
        [*PROTOBIND, "gateway", "--upstream", "grpc://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--listen" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("traced", [False, True], ids=["transparent", "traced"])
async def test_trace_context_crosses_the_gateway(
    traced: bool, harnesses: dict[str, Callable[[], str]], conformance_services: list[protobind.ServiceInfo]
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = protobind.Telemetry(tracer_provider=provider, metrics=False)
    server = protobind.Server([Conformance()], telemetry=telemetry)
    (upstream_url,) = await server.start(harnesses["nats"]())
    gateway = protobind.Gateway(conformance_services, upstream_url, telemetry=telemetry if traced else None)
    try:
        (url,) = await gateway.start(harnesses["http"]())
        async with protobind.connect(url, telemetry=telemetry) as channel:
            method = conformance_services[0].method("Unary")
            await channel.unary(method, method.input_type(text="t"), timeout=10)
    finally:
        await gateway.stop(grace=1.0)
        await server.stop(grace=1.0)
        provider.shutdown()
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans if s.context is not None}) == 1
    kinds = sorted(s.kind.name for s in spans)
    assert kinds == (["CLIENT", "CLIENT", "SERVER", "SERVER"] if traced else ["CLIENT", "SERVER"])
    (caller,) = [s for s in spans if s.kind is SpanKind.CLIENT and s.parent is None]
    (handler,) = [s for s in spans if s.kind is SpanKind.SERVER and "nats" in str(s.attributes)]
    if not traced:  # the gateway hands the caller's context on untouched
        assert handler.parent is not None and caller.context is not None
        assert handler.parent.span_id == caller.context.span_id


async def test_gateway_serves_grpc_web_for_a_nats_only_service(
    harnesses: dict[str, Callable[[], str]], conformance_services: list[protobind.ServiceInfo]
) -> None:
    """A browser's gRPC-Web (binary, HTTP/1.1) reaches a service served on NATS only: unary, a
    server stream, an error with its details, through the gateway's http:// listener."""
    from google.rpc import error_details_pb2

    from protobind import CallInfo
    from protobind.conformance.v1.conformance_pb2 import Behavior
    from protobind.conformance.v1.conformance_protobind import (
        CONFORMANCE_SERVICE_SERVER_STREAM,
        CONFORMANCE_SERVICE_UNARY,
    )
    from protobind.testing.conformance._peers import GrpcWebPeer

    async def requests(*items: Request) -> AsyncIterator[Request]:
        for item in items:
            yield item

    server = protobind.Server([Conformance()])
    (upstream_url,) = await server.start(harnesses["nats"]())
    try:
        async with protobind.Gateway(conformance_services, upstream_url) as gateway:
            (url,) = await gateway.start(harnesses["http"]())
            peer = GrpcWebPeer(url, http2=False, read_max_bytes=None)
            try:
                call = CallInfo().prepare(CONFORMANCE_SERVICE_UNARY, 10, {"x-echo-g": "v"})
                reply = await peer.unary(Request(text="web"), call)
                assert (reply.text, reply.transport) == ("web", "nats")  # the handler ran on NATS
                assert call.headers.get("x-echo-g-header") == "v"
                assert call.trailers.get("x-echo-g-trailer") == "v"

                stream = CallInfo().prepare(CONFORMANCE_SERVICE_SERVER_STREAM, 10, None)
                ask = Request(text="s", behavior=Behavior(stream_count=3))
                assert [r.index async for r in peer.stream(requests(ask), stream)] == [0, 1, 2]

                failing = Behavior(
                    error_code=int(Code.FAILED_PRECONDITION),
                    error_message="not yet",
                    error_detail_reason="WAIT",
                )
                with pytest.raises(RpcError) as caught:
                    await peer.unary(
                        Request(behavior=failing), CallInfo().prepare(CONFORMANCE_SERVICE_UNARY, 10, None)
                    )
            finally:
                await peer.close()
    finally:
        await server.stop(grace=1.0)
    error = caught.value
    assert (error.code, error.message) == (Code.FAILED_PRECONDITION, "not yet")
    (detail,) = error.details
    assert isinstance(detail, error_details_pb2.ErrorInfo) and detail.reason == "WAIT"
