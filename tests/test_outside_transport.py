"""A transport from another package declares everything the core needs to know of its protocol,
and the core uses what it declares: the telemetry system name, default port and peer form
(``Transport`` fields), renamed options, a port the ``--workers`` share (its ``reuse_port`` option),
the transports named when durable calls or documents are refused (``durable_calls``,
``documents``), and the optional client capabilities ``reflect``
(:class:`protobind.reflection.Reflective`), ``durable`` (:class:`protobind.durable.DurableTransport`)
and ``asyncapi`` (:class:`protobind.reflection.ServesAsyncAPI`, which ``protobind asyncapi URL``
reads). It is registered as an entry point would register it. A broker from another package gives
its own name to its consumer spans (``messaging.system``). And the core's modules name no transport
(the last test reads them).

The transport is defined here: an in-process one (its binding is a table of served endpoints by
host name) whose durable calls go through a real ``memory://`` broker.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from jobs.v1.jobs_pb2 import Job, JobResult
from jobs.v1.jobs_protobind import JOBS_SUBMIT, JobsService
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import protobind
import protobind.cli
import protobind.transport
from protobind import Code, Context, RpcError
from protobind._context import CallInfo
from protobind._metadata import Metadata
from protobind.broker.durable import DurableClient
from protobind.broker.server import BrokerBinding
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.durable import DurableCalls, DurableTransport
from protobind.endpoints import EndpointTable, invoke_unary
from protobind.memory._connection import open_broker
from protobind.memory._options import settings_from
from protobind.reflection import Reflected, Reflective, descriptor_files, reflect
from protobind.transport import ENTRY_POINT_GROUP, ClientTransport, Transport, loopback_harness
from protobind.workers import _reserve, _shared_port_transports

from .conformance import Conformance

#: The served endpoint tables of this process, by host name.
_BOUND: dict[str, EndpointTable] = {}
#: What every call's ``Context.peer`` says: a network address, as the transport declares.
PEER = "192.0.2.7:5555"


class _Binding:
    def __init__(self, url: str, host: str) -> None:
        self._url = url
        self.host = host

    @property
    def url(self) -> str:
        return self._url

    async def stop(self, grace: float | None) -> None:
        _BOUND.pop(self.host, None)


async def _serve(endpoints: EndpointTable, url: str, options: Mapping[str, Any]) -> _Binding:
    host = urlsplit(url).hostname or ""
    _BOUND[host] = endpoints
    return _Binding(url, host)


class OutsideClient(ClientTransport):
    """Runs each call in the caller's task; reflection from the served table; durable calls on the
    ``memory://`` broker of the same name."""

    def __init__(self, host: str, memory: Any) -> None:
        self.host = host
        self.memory = memory
        self.asked: list[str] = []

    async def unary(self, request: Message, call: CallInfo) -> Message:
        assert call.method is not None
        endpoint = _BOUND[self.host].endpoints[call.method.path]
        context = Context(endpoint.method, "outside", metadata=call.metadata.copy(), peer=PEER)
        return await invoke_unary(endpoint, request, context)

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        raise RpcError(Code.UNIMPLEMENTED, "no streams here")
        yield Empty()  # pragma: no cover (makes this an async generator)

    async def close(self) -> None:
        await self.memory.close()

    async def reflect(self, timeout: float | None, metadata: Metadata) -> Reflected:
        self.asked.append("reflect")
        services = _BOUND[self.host].services
        files = [FileDescriptorProto.FromString(f.serialized_pb) for f in descriptor_files(services)]
        return Reflected.from_files([s.name for s in services], files)

    async def asyncapi(self, timeout: float | None, metadata: Metadata) -> dict[str, Any]:
        self.asked.append("asyncapi")
        return {"asyncapi": "3.0.0", "info": {"title": f"outside {self.host}", "version": "1"}}

    def durable(self) -> DurableClient:
        self.asked.append("durable")
        client: DurableClient = self.memory.durable()
        return client


async def _dial(url: str, options: Mapping[str, Any]) -> OutsideClient:
    host = urlsplit(url).hostname or ""
    memory = await protobind.transport.transport_named("memory").dial(f"memory://{host}", {})
    return OutsideClient(host, memory)


OUTSIDE = Transport(
    name="outside",
    schemes=("outside",),
    extra="",
    serve=_serve,
    dial=_dial,
    test_harness=loopback_harness("outside"),
    server_options=frozenset({"new_name", "reuse_port"}),
    rpc_system="outside-rpc",
    default_ports={"outside": 7070},
    network_peer=True,
    renamed_options={"old_name": "new_name"},
    durable_calls=True,
    documents=frozenset({"asyncapi"}),
)


async def _serve_outside_mq(endpoints: EndpointTable, url: str, options: Mapping[str, Any]) -> BrokerBinding:
    """The broker engine on a broker protobind never heard of: the in-memory hub of the URL's name,
    under the broker's own name."""
    broker = open_broker(f"memory://{urlsplit(url).hostname}", {})
    broker.name = "outside-mq"
    binding = BrokerBinding(endpoints, url, broker, settings_from(options))
    await binding.start()
    return binding


#: A broker transport from another package: serves only (clients reach its hub with ``memory://``).
OUTSIDE_MQ = Transport(
    name="outside-mq",
    schemes=("outside-mq",),
    extra="",
    serve=_serve_outside_mq,
    dial=_dial,
    test_harness=loopback_harness("outside-mq"),
)


@pytest.fixture
def outside(monkeypatch: pytest.MonkeyPatch) -> Iterator[Transport]:
    """OUTSIDE among the ``protobind.transports`` entry points, the registry loaded afresh (and
    restored afterwards)."""
    real = metadata.entry_points

    def entry_points(**params: Any) -> Any:
        found = real(**params)
        if params.get("group") != ENTRY_POINT_GROUP:
            return found
        return [
            *found,
            metadata.EntryPoint("outside", f"{__name__}:OUTSIDE", ENTRY_POINT_GROUP),
            metadata.EntryPoint("outside-mq", f"{__name__}:OUTSIDE_MQ", ENTRY_POINT_GROUP),
        ]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    monkeypatch.setattr(protobind.transport, "_registry", None)
    yield OUTSIDE


@pytest.fixture
def traced() -> Iterator[tuple[protobind.Telemetry, InMemorySpanExporter]]:
    """Telemetry on SDK providers of its own, and the exporter its spans end up in."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider()
    try:
        yield protobind.Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider), exporter
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


def test_it_is_registered_like_any_entry_point(outside: Transport) -> None:
    assert protobind.transport.transport_for_url("outside://svc") is outside
    assert "outside" in [t.name for t in protobind.transport.all_transports()]


async def test_telemetry_reports_what_it_declares(
    outside: Transport, traced: tuple[protobind.Telemetry, InMemorySpanExporter]
) -> None:
    telemetry, exporter = traced
    async with protobind.Server([Conformance()], telemetry=telemetry) as server:
        await server.start("outside://svc")  # no port: the declared default
        async with protobind.connect("outside://svc", telemetry=telemetry) as channel:
            reply = await ConformanceServiceClient(channel).unary(Request(text="hi"))
    assert reply.text == "hi"
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    server_span, client_span = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    for span in (server_span, client_span):
        assert span.attributes is not None
        assert span.attributes["rpc.system.name"] == "outside-rpc"
        assert (span.attributes["server.address"], span.attributes["server.port"]) == ("svc", 7070)
    assert server_span.attributes is not None
    assert server_span.attributes["network.peer.address"] == "192.0.2.7"
    assert server_span.attributes["network.peer.port"] == 5555


async def test_a_renamed_option_is_named_with_its_new_name(outside: Transport) -> None:
    server = protobind.Server([Conformance()], transport_options={"outside": {"old_name": "1"}})
    with pytest.raises(
        ValueError, match=r"unknown outside server option\(s\) old_name \(old_name is now new_name\)"
    ):
        await server.start("outside://renamed")
    await server.stop()


async def test_reflection_uses_its_reflect(outside: Transport) -> None:
    async with (
        protobind.testing.serving([Conformance()], "outside", url="outside://reflected"),
        protobind.connect("outside://reflected") as channel,
    ):
        await channel.open()
        assert isinstance(channel.transport, Reflective)
        reflected = await reflect(channel)
        assert isinstance(channel.transport, OutsideClient)
        assert channel.transport.asked == ["reflect"]
    assert list(reflected.services) == ["protobind.conformance.v1.ConformanceService"]


def test_the_cli_reads_its_asyncapi_document(outside: Transport, capsys: pytest.CaptureFixture[str]) -> None:
    protobind_logger = logging.getLogger("protobind")
    level = protobind_logger.level  # the CLI quiets protobind's warnings: not for the next tests
    try:
        with pytest.raises(SystemExit) as exited:
            protobind.cli.main(["asyncapi", "outside://documented"])
    finally:
        protobind_logger.setLevel(level)
    assert exited.value.code == 0, capsys.readouterr().err
    document = json.loads(capsys.readouterr().out)
    assert document == {"asyncapi": "3.0.0", "info": {"title": "outside documented", "version": "1"}}


class Jobs(JobsService):
    def __init__(self) -> None:
        self.submitted: asyncio.Queue[str] = asyncio.Queue()

    async def submit(self, request: Job, context: Context) -> Empty:
        await self.submitted.put(request.id)
        return Empty()

    async def run(self, request: Job, context: Context) -> JobResult:
        return JobResult(id=request.id)

    async def ping(self, request: Job, context: Context) -> JobResult:
        return JobResult(id=request.id)


async def test_durable_calls_use_its_durable_client(outside: Transport) -> None:
    jobs = Jobs()
    async with (
        protobind.testing.serving([jobs], "memory", url="memory://stored"),
        protobind.connect("outside://stored") as channel,
    ):
        await channel.open()
        assert isinstance(channel.transport, DurableTransport)
        await DurableCalls(channel).submit(JOBS_SUBMIT, Job(id="d1"))
        assert await asyncio.wait_for(jobs.submitted.get(), 30) == "d1"
        assert isinstance(channel.transport, OutsideClient)
        assert channel.transport.asked == ["durable"]


async def test_a_client_without_the_capabilities_is_refused_clearly(outside: Transport) -> None:
    async with (
        protobind.testing.serving([Conformance()], "grpc") as url,
        protobind.connect(url) as channel,
    ):
        await channel.open()
        assert not isinstance(channel.transport, DurableTransport)
        with pytest.raises(RpcError) as refused:
            await DurableCalls(channel).submit(JOBS_SUBMIT, Job(id="d2"))
    assert refused.value.code is Code.UNIMPLEMENTED
    # the transports named are those that declare durable calls, this one among them
    named = refused.value.message.partition("(")[2].partition(")")[0].split(", ")
    assert "outside://" in named and "memory://" in named
    assert "outside-mq://" not in named and "grpc://" not in named


def test_a_refused_document_names_the_transports_that_declare_it(
    outside: Transport, capsys: pytest.CaptureFixture[str]
) -> None:
    protobind_logger = logging.getLogger("protobind")
    level = protobind_logger.level
    try:
        for kind, url in [("asyncapi", "outside-mq://nothing"), ("openapi", "outside://nothing")]:
            with pytest.raises(SystemExit) as exited:
                protobind.cli.main([kind, url])
            assert exited.value.code == 1
            error = capsys.readouterr().err
            assert f"serves no {kind} document" in error
            assert ("outside://" in error.partition(": give ")[2]) is (kind == "asyncapi")
    finally:
        protobind_logger.setLevel(level)


def test_the_workers_share_the_port_of_a_transport_that_takes_reuse_port(outside: Transport) -> None:
    assert outside in _shared_port_transports()
    url, sock = _reserve("outside://127.0.0.1:0")
    assert sock is not None
    try:
        assert urlsplit(url).port == sock.getsockname()[1] != 0
    finally:
        sock.close()
    assert _reserve("outside-mq://127.0.0.1:0") == ("outside-mq://127.0.0.1:0", None)


async def test_a_brokers_consumer_spans_carry_its_own_name(
    outside: Transport, traced: tuple[protobind.Telemetry, InMemorySpanExporter]
) -> None:
    telemetry, exporter = traced
    jobs = Jobs()
    async with (
        protobind.Server([jobs], telemetry=telemetry) as server,
        protobind.connect("memory://queued", telemetry=telemetry) as channel,
    ):
        await server.start("outside-mq://queued")
        await DurableCalls(channel).submit(JOBS_SUBMIT, Job(id="d3"))
        assert await asyncio.wait_for(jobs.submitted.get(), 30) == "d3"
    (consumer,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.system"] == "outside-mq"


#: Where a core module may name a transport, and why.
_MAY_NAME = {
    ("transport.py", "inproc"): "the display order of the built-in transports (decides nothing)",
    ("transport.py", "grpc"): "the display order of the built-in transports",
    ("transport.py", "http"): "the display order of the built-in transports",
    ("transport.py", "nats"): "the display order of the built-in transports",
    ("transport.py", "memory"): "the display order of the built-in transports",
    ("telemetry.py", "grpc"): "the OTLP exporter's protocol, not a transport",
    ("_otel_export.py", "grpc"): "the OTLP exporter's protocol and its library, not a transport",
    ("cli/_dev.py", "grpc"): "the demo shows these three transports by design",
    ("cli/_dev.py", "http"): "the demo shows these three transports by design",
    ("cli/_dev.py", "nats"): "the demo shows these three transports and its nats-server command",
    ("cli/_documents.py", "nats"): "what the .proto-file AsyncAPI builder (protobind_codegen) writes",
    ("cli/_documents.py", "tls"): "what the .proto-file AsyncAPI builder writes",
    ("cli/_documents.py", "mqtt"): "what the .proto-file AsyncAPI builder writes",
    ("cli/_documents.py", "mqtts"): "what the .proto-file AsyncAPI builder writes",
    ("cli/_documents.py", "kafka"): "what the .proto-file AsyncAPI builder writes",
}
#: The transport packages, the engine they share, and what is not the core.
_NOT_CORE = {"inproc", "grpc", "http", "nats", "memory", "amqp", "mqtt", "kafka", "broker", "testing", "v1"}


def _literals(tree: ast.Module) -> Iterator[ast.Constant]:
    """The string constants of a module, docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_the_core_names_no_transport() -> None:
    """What the core knows of a protocol comes from the transport's declaration: no module outside
    the transport packages compares with a transport's name or scheme or spells a URL of one
    (`_MAY_NAME` lists the exceptions, each with its reason)."""
    root = Path(protobind.__file__).parent
    transports = protobind.transport.all_transports()
    names = {t.name for t in transports} | {s for t in transports for s in t.schemes}
    names |= {"connectrpc", "jetstream", "rabbitmq"}
    url = re.compile(r"\b(" + "|".join(sorted(names)) + r")://")
    found = []
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(root).as_posix()
        if module.split("/")[0] in _NOT_CORE or module.startswith("conformance/"):
            continue
        for node in _literals(ast.parse(path.read_text(encoding="utf-8"))):
            named = {node.value.lower()} & names or set(url.findall(node.value))
            found += [
                f"{module}:{node.lineno}: {node.value!r}" for name in named if (module, name) not in _MAY_NAME
            ]
    assert not found, "\n".join(found)
