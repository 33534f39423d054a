"""Telemetry: OpenTelemetry traces and metrics, and a log line per failed call, on every transport.

Enable it in one place: ``Server(..., telemetry=True)``, ``connect(url, telemetry=True)``, or
``[telemetry] enabled = true`` in ``protobind.toml`` (see :mod:`protobind.config`). Pass a
:class:`Telemetry` instead of ``True`` to choose what is recorded and which providers record it.

When telemetry is off, nothing is installed: no interceptor runs and ``opentelemetry`` is never
imported. When it is on, the ``opentelemetry-api`` package (``pip install 'protobind[otel]'``) is
required; spans and metrics go wherever the OpenTelemetry SDK the application configured sends them
(without an SDK the API is a no-op). The conventions followed are documented in
``docs/observability.md``; this module only holds the settings, the implementation is in
``protobind._otel``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import Code

if TYPE_CHECKING:
    from ._otel import ConsumerSpan, Instruments
    from .interceptors import ClientInterceptor, ServerInterceptor
    from .metadata import Metadata
    from .method import MethodInfo
    from .server import Server

__all__ = ["SERVER_ERROR_CODES", "Telemetry", "TelemetryOption"]

#: Codes that mark a *server* span as failed (the OpenTelemetry gRPC conventions; protobind applies
#: them on every transport). The other codes are the caller's doing; on a client span every code
#: but OK is an error.
SERVER_ERROR_CODES = frozenset(
    {
        Code.UNKNOWN,
        Code.DEADLINE_EXCEEDED,
        Code.UNIMPLEMENTED,
        Code.INTERNAL,
        Code.UNAVAILABLE,
        Code.DATA_LOSS,
    }
)


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

    A ``Telemetry`` may be shared by servers and channels; their instruments are created once.
    """

    __slots__ = (
        "_instruments",
        "log_failures",
        "log_successes",
        "message_sizes",
        "meter_provider",
        "metrics",
        "propagator",
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
    ) -> None:
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
            try:
                from ._otel import Instruments
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.split(".")[0] == "opentelemetry":
                    raise ImportError(
                        "protobind telemetry needs the OpenTelemetry API: pip install 'protobind[otel]'"
                    ) from exc
                raise
            self._instruments = Instruments(self)
        return self._instruments

    def server_interceptor(self, server: Server) -> ServerInterceptor:
        """The interceptor ``Server`` installs first (outermost) when telemetry is on."""
        from ._otel import ServerTelemetry

        return ServerTelemetry(self.instruments(), server)

    def client_interceptor(self, url: str) -> ClientInterceptor:
        """The interceptor a ``Channel`` to ``url`` installs first (outermost) when telemetry is on."""
        from ._otel import ClientTelemetry

        return ClientTelemetry(self.instruments(), url)

    def consumer_span(
        self,
        destination: str,
        metadata: Metadata,
        *,
        attempt: int = 1,
        system: str = "nats",
        consumer_group: str | None = None,
        method: MethodInfo[Any, Any] | None = None,
    ) -> ConsumerSpan:
        """For a broker consumer: a span around processing one delivered message.

        ``with telemetry.consumer_span(subject, metadata, attempt=n) as span:`` starts a CONSUMER span
        that continues the producer's trace (the trace context in ``metadata``) and links to the
        producer's span, records the delivery ``attempt`` (1 = first delivery; more is a
        redelivery, also counted in a metric), and replaces the trace context in ``metadata`` with
        its own, so the server span of the handler that then runs is its child. Call
        ``span.dead_letter()`` when the message is given up on.
        """
        from ._otel import ConsumerSpan

        return ConsumerSpan(
            self.instruments(),
            destination,
            metadata,
            attempt=attempt,
            system=system,
            consumer_group=consumer_group,
            method=method,
        )

    def __repr__(self) -> str:
        return (
            f"Telemetry(tracing={self.tracing}, metrics={self.metrics}, "
            f"log_failures={self.log_failures}, log_successes={self.log_successes})"
        )


#: What ``Server(telemetry=...)`` and ``connect(telemetry=...)`` accept.
TelemetryOption = bool | Telemetry | None
