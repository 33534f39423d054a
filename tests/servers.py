"""Fixtures that start real servers on 127.0.0.1 and stop them.

``serve_conformance(transport)`` starts a protobind Server with the conformance service bound to
one transport and yields ``(url_for_clients, service)``. Transports register how they bind in
``BIND_URLS``; the behaviour suite in test_behaviour.py runs once per entry of ``TRANSPORTS``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable

import pytest

import protobind

from .conformance import Conformance

_names = itertools.count()

# transport name -> function(request) giving the URL to bind (port 0: any free port)
BIND_URLS: dict[str, Callable[[pytest.FixtureRequest], str]] = {
    "inproc": lambda request: f"inproc://conformance-{next(_names)}",
    "nats": lambda request: f"{request.getfixturevalue('nats_server')}?prefix=t{next(_names)}",
    "http": lambda request: "http://127.0.0.1:0",
    "grpc": lambda request: "grpc://127.0.0.1:0",
}
TRANSPORTS = list(BIND_URLS)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def served(transport: str, request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Conformance]]:
    service = Conformance()
    server = protobind.Server([service])
    (url,) = await server.start(BIND_URLS[transport](request))
    try:
        yield url, service
    finally:
        await server.stop(grace=1.0)
