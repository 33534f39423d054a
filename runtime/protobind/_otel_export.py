"""The exporters ``Telemetry(exporter=...)`` names (``[telemetry] exporter`` in protobind.toml):
OpenTelemetry SDK providers of protobind's own, so ``protobind serve`` shows or ships its spans and
metrics with no SDK set-up in code. Imported only when an exporter is named.

- ``console``: the SDK's console exporters; each span is printed (as JSON, on standard output)
  when it ends, the metrics every minute and at exit.
- ``otlp``: an OpenTelemetry collector, over gRPC or HTTP (``opentelemetry-exporter-otlp``):
  spans in batches, metrics every minute, both flushed at exit.

The providers are not made global: they record protobind's spans and metrics; a span a handler
starts with the global tracer is exported only if the application set up the SDK itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["providers"]


def _sdk() -> tuple[Any, Any, Any]:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("opentelemetry"):
            raise ImportError(
                "a telemetry exporter needs the OpenTelemetry SDK: pip install 'protobind[otel]'"
            ) from None
        raise
    return TracerProvider, MeterProvider, Resource


def _otlp(protocol: str, endpoint: str | None) -> tuple[Any, Any]:
    """The OTLP span and metric exporters for ``protocol`` (``grpc`` or ``http/protobuf``)."""
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=endpoint), OTLPMetricExporter(endpoint=endpoint)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HTTPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPSpanExporter
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(("opentelemetry", "grpc", "requests", "google")):
            raise ImportError(
                f"telemetry exporter 'otlp' ({protocol}) needs opentelemetry-exporter-otlp: "
                "pip install 'protobind[otlp]'"
            ) from None
        raise
    # an explicit endpoint of the HTTP exporters is the signal's own URL; the base URL is ours
    base = endpoint.rstrip("/") if endpoint else None
    return (
        HTTPSpanExporter(endpoint=f"{base}/v1/traces" if base else None),
        HTTPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None),
    )


def providers(
    exporter: Sequence[str], otlp_protocol: str, otlp_endpoint: str | None, service_name: str | None
) -> tuple[Any, Any]:
    """A tracer provider and a meter provider exporting to each of ``exporter`` (the settings of
    :class:`~protobind.Telemetry` of the same names)."""
    tracer_provider_class, meter_provider_class, resource_class = _sdk()
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    span_processors: list[Any] = []
    metric_readers: list[Any] = []
    for name in exporter:
        if name == "console":
            span_processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
            metric_readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        else:
            span_exporter, metric_exporter = _otlp(otlp_protocol, otlp_endpoint)
            span_processors.append(BatchSpanProcessor(span_exporter))
            metric_readers.append(PeriodicExportingMetricReader(metric_exporter))
    attributes = {"service.name": service_name} if service_name else {}
    resource = resource_class.create(attributes)  # also reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    tracer_provider = tracer_provider_class(resource=resource)
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    meter_provider = meter_provider_class(metric_readers=metric_readers, resource=resource)
    return tracer_provider, meter_provider
