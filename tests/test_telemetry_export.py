"""`[telemetry] exporter` / `Telemetry(exporter=...)`: protobind's spans printed by `protobind
serve` (console) or received by an OTLP receiver over HTTP and gRPC (a stdlib HTTP server and a
stock grpcio server decoding the OTLP protos); and the pip command in the error when OpenTelemetry,
its SDK or the OTLP exporter is missing."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

import protobind
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import SERVICE as CONFORMANCE
from .conformance import Conformance
from .processes import serve_one_call
from .support import ROOT


def test_console_exporter_prints_the_spans_of_protobind_serve(tmp_path: Path) -> None:
    """`[telemetry] exporter = "console"` and nothing else: each span on stdout as it ends."""
    out, _ = serve_one_call(tmp_path, toml='[telemetry]\nexporter = "console"\nservice_name = "shop"\n')
    decoder = json.JSONDecoder()
    spans = []
    text = out[out.index("{") :]
    while text:
        document, end = decoder.raw_decode(text)
        if "span_id" in document.get("context", {}):
            spans.append(document)
        text = text[end:]
        text = text[text.find("{") :] if "{" in text else ""
    (span,) = [s for s in spans if s["name"] == f"{CONFORMANCE}/Unary"]
    assert span["kind"] == "SpanKind.SERVER"
    assert span["attributes"]["rpc.system.name"] == "grpc"
    assert span["attributes"]["rpc.response.status_code"] == "OK"
    assert span["resource"]["attributes"]["service.name"] == "shop"


# --- OTLP ------------------------------------------------------------------------------------------


def _span_names(request: trace_service_pb2.ExportTraceServiceRequest) -> list[tuple[str, str]]:
    return [
        (
            span.name,
            next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name"),
        )
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


@pytest.fixture
def otlp_http() -> Iterator[tuple[str, queue.Queue[list[tuple[str, str]]]]]:
    """An OTLP/HTTP receiver: each trace export's (span name, service.name) pairs."""
    received: queue.Queue[list[tuple[str, str]]] = queue.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces":
                received.put(_span_names(trace_service_pb2.ExportTraceServiceRequest.FromString(body)))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            else:
                answer = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def otlp_grpc() -> Iterator[tuple[str, queue.Queue[list[tuple[str, str]]]]]:
    """An OTLP/gRPC receiver (grpcio): each trace export's (span name, service.name) pairs."""
    received: queue.Queue[list[tuple[str, str]]] = queue.Queue()

    def export_traces(request: trace_service_pb2.ExportTraceServiceRequest, context: Any) -> Any:
        received.put(_span_names(request))
        return trace_service_pb2.ExportTraceServiceResponse()

    def export_metrics(request: Any, context: Any) -> Any:
        return metrics_service_pb2.ExportMetricsServiceResponse()

    handlers = [
        grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    export_traces,
                    request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                    response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
                )
            },
        ),
        grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.metrics.v1.MetricsService",
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    export_metrics,
                    request_deserializer=metrics_service_pb2.ExportMetricsServiceRequest.FromString,
                    response_serializer=metrics_service_pb2.ExportMetricsServiceResponse.SerializeToString,
                )
            },
        ),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_otlp_exporter_sends_the_spans_to_a_collector(
    protocol: str, otlp_http: Any, otlp_grpc: Any
) -> None:
    endpoint, received = otlp_http if protocol == "http/protobuf" else otlp_grpc
    telemetry = protobind.Telemetry(
        exporter="otlp", otlp_endpoint=endpoint, otlp_protocol=protocol, service_name="shop"
    )
    async with (
        protobind.testing.serving([Conformance()], "grpc", telemetry=telemetry) as url,
        protobind.connect(url) as channel,
    ):
        await ConformanceServiceClient(channel).unary(Request(text="a"), timeout=10)
    assert telemetry.tracer_provider.force_flush(10_000)
    names: list[tuple[str, str]] = []
    while (f"{CONFORMANCE}/Unary", "shop") not in names:
        names += received.get(timeout=10)
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


# --- what to install -------------------------------------------------------------------------------


def _without(modules: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as if ``modules`` were not installed."""
    hide = "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    return subprocess.run(
        [sys.executable, "-c", f"import sys\n{hide}{code}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_opentelemetry_says_what_to_install(tmp_path: Path) -> None:
    result = _without(
        ["opentelemetry"],
        "import protobind\n"
        "try:\n"
        "    protobind.Server([], telemetry=True)\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n",
    )
    assert result.stdout == (
        "ImportError protobind telemetry needs the OpenTelemetry API: pip install 'protobind[otel]'\n"
    ), result.stderr
    config = tmp_path / "protobind.toml"
    config.write_text("[telemetry]\nenabled = true\n")
    serve = _without(
        ["opentelemetry"],
        "from protobind.cli import main\n"
        "main(['serve', 'tests.conformance:Conformance', '--bind', 'inproc://x', "
        f"'--config', {str(config)!r}])",
    )
    assert serve.returncode == 1
    assert serve.stderr == (
        "protobind serve: protobind telemetry needs the OpenTelemetry API: pip install 'protobind[otel]'\n"
    )


@pytest.mark.parametrize(
    ("hidden", "exporter", "message"),
    [
        (
            "opentelemetry.sdk",
            "console",
            "a telemetry exporter needs the OpenTelemetry SDK: pip install 'protobind[otel]'",
        ),
        (
            "opentelemetry.exporter",
            "otlp",
            "telemetry exporter 'otlp' (grpc) needs opentelemetry-exporter-otlp: "
            "pip install 'protobind[otlp]'",
        ),
    ],
)
def test_missing_exporter_packages_say_what_to_install(hidden: str, exporter: str, message: str) -> None:
    result = _without(
        [hidden],
        "import protobind\n"
        "try:\n"
        f"    protobind.Server([], telemetry=protobind.Telemetry(exporter={exporter!r}))\n"
        "except ImportError as exc:\n"
        "    print(exc)\n",
    )
    assert result.stdout == message + "\n", result.stderr
