"""Telemetry: OpenTelemetry traces and metrics, and a log line per failed call, on every transport.

Enable it in one place: ``Server(..., telemetry=True)``, ``connect(url, telemetry=True)``, or
``[telemetry] enabled = true`` in ``protobind.toml`` (see :mod:`protobind.config`). Pass a
:class:`Telemetry` instead of ``True`` to choose what is recorded and which providers record it.

When telemetry is off, nothing is installed: no interceptor runs and ``opentelemetry`` is never
imported. When it is on, the ``opentelemetry-api`` package (``pip install 'protobind[otel]'``) is
required; spans and metrics go wherever the OpenTelemetry SDK the application configured sends them
(without an SDK the API is a no-op), or to the exporters ``exporter`` names (``"console"``,
``"otlp"``). The conventions followed are documented in ``docs/observability.md``; this module
only holds the settings, the implementation is in ``protobind._otel`` and
``protobind._otel_export``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._errors import SERVER_ERROR_CODES

if TYPE_CHECKING:
    from ._interceptors import ClientInterceptor, ServerInterceptor
    from ._metadata import Metadata
    from ._otel import ConsumerSpan, Instruments, Registry
    from .method import MethodInfo

__all__ = ["EXPORTERS", "OTLP_PROTOCOLS", "SERVER_ERROR_CODES", "Telemetry", "TelemetryOption"]

#: What ``Telemetry(exporter=...)`` can name: spans and metrics printed on standard output (the
#: OpenTelemetry SDK's console exporters), or sent to an OpenTelemetry collector over OTLP.
EXPORTERS = ("console", "otlp")
#: ``Telemetry(otlp_protocol=...)``: OTLP over gRPC (port 4317) or over HTTP (port 4318).
OTLP_PROTOCOLS = ("grpc", "http/protobuf")


class Telemetry:
    """What protobind records about calls, and where.

    - ``tracing``: a server span per handled call and a client span per call made, with W3C trace
      context (and baggage) carried in the call's metadata on every transport.
    - ``metrics``: call durations (whose counts are the call counts), calls in flight, stream
      message counts and, unless ``message_sizes`` is false, the size of every message (which
      costs a serialization size computation and a histogram measurement per message).
    - ``log_failures`` / ``log_successes``: one line on the ``protobind.server`` logger per call
      that ended with a code other than OK / per successful call.
    - ``tracer_provider`` / ``meter_provider`` / ``propagator``: OpenTelemetry objects to use
      instead of the global ones (tests pass an SDK provider with an in-memory exporter).
    - ``exporter``: ``"console"``, ``"otlp"`` or both: protobind makes OpenTelemetry SDK providers
      of its own that export there (for the providers not given), so no SDK set-up in code is
      needed. ``otlp_endpoint`` is the collector's base URL (default: the exporter's own,
      ``OTEL_EXPORTER_OTLP_ENDPOINT`` or localhost), ``otlp_protocol`` ``"grpc"`` (default) or
      ``"http/protobuf"``, ``service_name`` the ``service.name`` resource attribute (default:
      ``OTEL_SERVICE_NAME``, else the SDK's).

    A ``Telemetry`` may be shared by servers and channels; their instruments are created once.
    """

    __slots__ = (
        "_instruments",
        "exporter",
        "log_failures",
        "log_successes",
        "message_sizes",
        "meter_provider",
        "metrics",
        "otlp_endpoint",
        "otlp_protocol",
        "propagator",
        "service_name",
        "tracer_provider",
        "tracing",
    )

    def __init__(
        self,
        *,
        tracing: bool = True,
        metrics: bool = True,
        log_failures: bool = True,
        log_successes: bool = False,
        message_sizes: bool = True,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        propagator: Any = None,
        exporter: str | Sequence[str] = (),
        otlp_endpoint: str | None = None,
        otlp_protocol: str = "grpc",
        service_name: str | None = None,
    ) -> None:
        from .options import closest

        self.exporter = (exporter,) if isinstance(exporter, str) else tuple(exporter)
        for name in self.exporter:
            if name not in EXPORTERS:
                close = closest(name, EXPORTERS)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise ValueError(f"unknown telemetry exporter {name!r}{hint}; known: {', '.join(EXPORTERS)}")
        if otlp_protocol not in OTLP_PROTOCOLS:
            raise ValueError(f"telemetry.otlp_protocol must be one of {', '.join(OTLP_PROTOCOLS)}")
        for key, text in (("otlp_endpoint", otlp_endpoint), ("service_name", service_name)):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"telemetry.{key} must be a string")
        self.otlp_endpoint = otlp_endpoint
        self.otlp_protocol = otlp_protocol
        self.service_name = service_name
        self.tracing = tracing
        self.metrics = metrics
        self.log_failures = log_failures
        self.log_successes = log_successes
        self.message_sizes = message_sizes
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.propagator = propagator
        self._instruments: Instruments | None = None

    @classmethod
    def from_option(cls, value: TelemetryOption) -> Telemetry | None:
        """``True`` -> default settings, ``False``/``None`` -> off, a ``Telemetry`` -> itself."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Telemetry):
            return value
        raise TypeError(f"telemetry must be a bool or a protobind.Telemetry, not {type(value).__name__}")

    def instruments(self) -> Instruments:
        """The tracer, the meters and the propagator (created on first use: this imports OpenTelemetry)."""
        if self._instruments is None:
            _require_otel()
            from ._otel import Instruments

            if self.exporter:
                from ._otel_export import providers

                tracer_provider, meter_provider = providers(
                    self.exporter, self.otlp_protocol, self.otlp_endpoint, self.service_name
                )
                self.tracer_provider = self.tracer_provider or tracer_provider
                self.meter_provider = self.meter_provider or meter_provider
            self._instruments = Instruments(self)
        return self._instruments

    def server_interceptor(self, urls: Callable[[], Sequence[str]], registry: Registry) -> ServerInterceptor:
        """The interceptor ``Server`` installs first (outermost) when telemetry is on; ``urls``
        gives the URLs the server is bound to (its ``server.address`` attributes), ``registry``
        what their transports declare (the module :mod:`protobind.transport`, which sits above this one)."""
        instruments = self.instruments()  # first: it says what to install when OpenTelemetry is missing
        from ._otel import ServerTelemetry

        return ServerTelemetry(instruments, urls, registry)

    def client_interceptor(self, url: str, registry: Registry) -> ClientInterceptor:
        """The interceptor a ``Channel`` to ``url`` installs first (outermost) when telemetry is on;
        ``registry`` as for :meth:`server_interceptor`."""
        instruments = self.instruments()
        from ._otel import ClientTelemetry

        return ClientTelemetry(instruments, url, registry)

    def consumer_span(
        self,
        destination: str,
        metadata: Metadata,
        *,
        system: str,
        attempt: int = 1,
        consumer_group: str | None = None,
        method: MethodInfo[Any, Any] | None = None,
    ) -> ConsumerSpan:
        """For a broker consumer: a span around processing one delivered message.

        ``with telemetry.consumer_span(subject, metadata, attempt=n) as span:`` starts a CONSUMER span
        that continues the producer's trace (the trace context in ``metadata``) and links to the
        producer's span, records the delivery ``attempt`` (1 = first delivery; more is a
        redelivery, also counted in a metric), and replaces the trace context in ``metadata`` with
        its own, so the server span of the handler that then runs is its child. Call
        ``span.dead_letter()`` when the message is given up on. ``system`` is the broker's
        ``messaging.system`` as it declares it (the engine passes ``Broker.name``).
        """
        instruments = self.instruments()
        from ._otel import ConsumerSpan

        return ConsumerSpan(
            instruments,
            destination,
            metadata,
            attempt=attempt,
            system=system,
            consumer_group=consumer_group,
            method=method,
        )

    def __repr__(self) -> str:
        exporter = f", exporter={self.exporter!r}" if self.exporter else ""
        return (
            f"Telemetry(tracing={self.tracing}, metrics={self.metrics}, "
            f"log_failures={self.log_failures}, log_successes={self.log_successes}{exporter})"
        )


def _require_otel() -> None:
    """Import ``protobind._otel``; an ``ImportError`` with the pip command when OpenTelemetry is missing."""
    try:
        from . import _otel  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "opentelemetry":
            raise ImportError(
                "protobind telemetry needs the OpenTelemetry API: pip install 'protobind[otel]'"
            ) from None
        raise


#: What ``Server(telemetry=...)`` and ``connect(telemetry=...)`` accept.
TelemetryOption = bool | Telemetry | None
