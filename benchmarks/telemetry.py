"""Per-call cost of telemetry: the same unary call with telemetry off and on, same process, same run.

    python -m benchmarks.telemetry                         # every transport, 15 rounds of 300 calls
    python -m benchmarks.telemetry --only inproc,grpc --rounds 30

Client and server run in this one process (the server's and the client's telemetry both count,
as on a hop between two services), sequential calls with a 100 B payload. Modes, each with its
own server and channel:

- ``off``: no telemetry (nothing installed);
- ``api``: telemetry on, OpenTelemetry API without an SDK (its no-op providers);
- ``sdk``: telemetry on, the OpenTelemetry SDK recording every span (batch processor, an exporter
  that drops them) and every metric (in-memory reader, aggregated, never collected);
- ``no-sizes``: as ``sdk`` with ``Telemetry(message_sizes=False)``;
- ``traces``: as ``sdk`` with ``Telemetry(metrics=False)``.

Per round the modes run back to back in rotating order, in short rounds so that a change in the
machine's load falls on every mode alike; reported are the medians over rounds of the mean time
per call, and each mode / ``off``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import protobind
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .peers import Echo

MODES = ("off", "api", "sdk", "no-sizes", "traces")
TRANSPORTS = ("inproc", "grpc", "http", "nats")


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _telemetry(mode: str) -> protobind.Telemetry | None:
    if mode == "off":
        return None
    if mode == "api":
        return protobind.Telemetry(
            tracer_provider=trace.NoOpTracerProvider(), meter_provider=metrics.NoOpMeterProvider()
        )
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return protobind.Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        message_sizes=mode != "no-sizes",
        metrics=mode != "traces",
    )


async def _bind(transport: str, mode: str, nats_url: str | None) -> str:
    if transport == "inproc":
        return f"inproc://bench-{mode}"
    if transport == "nats":
        assert nats_url is not None
        return f"{nats_url}?prefix={mode}."
    return f"{transport}://127.0.0.1:0"


async def measure(transport: str, calls: int, rounds: int, nats_url: str | None) -> dict[str, float]:
    servers: list[protobind.Server] = []
    clients: dict[str, Any] = {}
    channels = []
    try:
        for mode in MODES:
            telemetry = _telemetry(mode)
            server = protobind.Server([Echo()], telemetry=telemetry)
            servers.append(server)
            (url,) = await server.start(await _bind(transport, mode, nats_url))
            channel = await protobind.connect(url, telemetry=telemetry).open()
            channels.append(channel)
            clients[mode] = ConformanceServiceClient(channel)
        request = Request(payload=b"x" * 100)
        for client in clients.values():  # warm up
            for _ in range(200):
                await client.unary(request, timeout=30)
        per_call: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_ in range(rounds):
            for mode in MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]:
                client = clients[mode]
                start = time.perf_counter()
                for _ in range(calls):
                    await client.unary(request, timeout=30)
                per_call[mode].append((time.perf_counter() - start) / calls * 1e6)
        return {mode: statistics.median(values) for mode, values in per_call.items()}
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(grace=1.0)


async def main(args: argparse.Namespace) -> None:
    transports = args.only.split(",") if args.only else list(TRANSPORTS)
    nats_url, stop_nats = None, None
    if "nats" in transports:
        from protobind.nats.embedded import start_nats_server

        nats_url, stop_nats = start_nats_server()
    try:
        print("µs per call (ratio to off)\n")
        print("| transport | " + " | ".join(MODES) + " |")
        print("|---" * (len(MODES) + 1) + "|")
        for transport in transports:
            r = await measure(transport, args.calls, args.rounds, nats_url)
            cells = [f"{r['off']:.1f}"] + [f"{r[m]:.1f} ({r[m] / r['off']:.2f}x)" for m in MODES[1:]]
            print(f"| {transport} | " + " | ".join(cells) + " |", flush=True)
    finally:
        if stop_nats is not None:
            stop_nats()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated transports (default: all)")
    parser.add_argument("--calls", type=int, default=300, help="calls per mode and round")
    parser.add_argument("--rounds", type=int, default=15)
    asyncio.run(main(parser.parse_args()))
