"""Fixtures that start real servers on 127.0.0.1 and stop them.

The transports come from protobind's registry; each one's test harness (a nats-server for NATS, a
free port for gRPC and HTTP) is started once per session. ``served`` starts a protobind Server with
the conformance service bound to one transport and yields ``(url_for_clients, service)``, and
``client`` is a client of it; the behaviour suite in test_behaviour.py runs once per registered
transport. ``served_in_thread`` does the same on an event loop in another thread, for tests written
as blocking code. ``serving`` is the conformance service on one transport in a test's own
server, with options. ``serve_asgi`` serves any ASGI application with uvicorn; ``check_groups_fan_out``
is the queue-group check every broker's suite makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import unittest
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

import protobind
import protobind.testing
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.sync import LoopThread
from protobind.testing import transport_names
from protobind.transport import transport_named

from .conformance import Conformance
from .support import eventually

TRANSPORTS = transport_names()
#: grpc:// on its grpcio engine (option engine=grpcio; the native engine is the default), for the
#: suites that run on it as well
GRPC_GRPCIO = "grpc-grpcio"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def harnesses() -> AsyncIterator[dict[str, Callable[[], str]]]:
    """Every transport's harness, entered for the whole session. Entered here, on the session's
    event loop: a harness is an async generator, and a test's loop finalizes the async generators
    first run on it when it closes."""
    async with contextlib.AsyncExitStack() as stack:
        found: dict[str, Callable[[], str]] = {}
        for name in TRANSPORTS:
            try:
                found[name] = await stack.enter_async_context(transport_named(name).test_harness())
            except unittest.SkipTest as exc:  # its broker is not running here: skip its tests only
                found[name] = functools.partial(pytest.skip, str(exc))
        if "grpc" in found:
            found[GRPC_GRPCIO] = lambda: "grpc://127.0.0.1:0?engine=grpcio"
        yield found


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)


@pytest.fixture
async def served(
    transport: str, harnesses: dict[str, Callable[[], str]]
) -> AsyncIterator[tuple[str, Conformance]]:
    service = Conformance()
    server = protobind.Server([service])
    (url,) = await server.start(harnesses[transport]())
    if transport == GRPC_GRPCIO:
        url += "?engine=grpcio"  # the client on the same engine
    try:
        yield url, service
    finally:
        await server.stop(grace=1.0)


@pytest.fixture
async def client(served: tuple[str, Conformance]) -> AsyncIterator[ConformanceServiceClient]:
    """A client of ``served``'s conformance service (a module that overrides ``served``, such as
    test_gateway.py, gets a client of its own server)."""
    url, _ = served
    async with protobind.connect(url) as channel:
        yield ConformanceServiceClient(channel)


@contextlib.asynccontextmanager
async def serving(transport: str, **options: Any) -> AsyncIterator[tuple[str, Conformance]]:
    """The conformance service on ``transport`` (at its harness's address) with the transport
    ``options``, in a server of the caller's own: (the URL clients use, the service)."""
    service = Conformance()
    async with protobind.testing.serving([service], transport, options=options) as url:
        yield url, service


@pytest.fixture
def served_in_thread(
    transport: str, harnesses: dict[str, Callable[[], str]]
) -> Iterator[tuple[str, Conformance]]:
    host = LoopThread("test-server")
    service = Conformance()
    server = protobind.Server([service])
    try:
        (url,) = host.submit(server.start(harnesses[transport]())).result()
        try:
            yield url, service
        finally:
            host.submit(server.stop(grace=1.0)).result()
    finally:
        host.stop()


async def serve_asgi(app: Any, **config: Any) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Serve the ASGI ``app`` with uvicorn on a free port of 127.0.0.1 (``config``: more
    ``uvicorn.Config`` arguments); its base URL and a coroutine function that stops it."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", "lifespan": "off", **config}))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True
        await task
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


async def check_groups_fan_out(url: str, count: int, timeout: float) -> None:
    """Two queue groups of two replicas each, served on ``url`` (a broker URL with a query of its
    own, such as a fresh prefix): ``count`` one-way calls made on ``url`` are handled once by every
    group, and both replicas of each group take part."""
    groups = {group: (Conformance(), Conformance()) for group in ("billing", "audit")}
    servers = []
    for group, replicas in groups.items():
        for replica in replicas:
            server = protobind.Server([replica])
            await server.start(f"{url}&queue_group={group}")
            servers.append(server)
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            for i in range(count):
                await client.notify(Request(text=str(i)))

        def handled(group: str) -> list[str]:
            first, second = groups[group]
            return first.notified + second.notified

        await eventually(lambda: all(len(handled(group)) >= count for group in groups), timeout=timeout)
    finally:
        for server in servers:
            await server.stop(5.0)  # drains the handlers: nothing is still counting
    for group, (first, second) in groups.items():
        assert sorted(handled(group), key=int) == [str(i) for i in range(count)], group
        assert first.notified and second.notified, group  # the replicas shared the group's calls


#: The engines behind grpc:// (option ``engine``): the gRPC suites run on each
GRPC_ENGINES = ("native", "grpcio")


@pytest.fixture(params=GRPC_ENGINES)
def grpc_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test once per gRPC engine: PROTOBIND_GRPC_ENGINE chooses it for every grpc:// server
    and client the test makes without the option ``engine`` (stock grpcio peers are unaffected)."""
    monkeypatch.setenv("PROTOBIND_GRPC_ENGINE", str(request.param))
    yield str(request.param)
