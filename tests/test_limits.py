"""Concurrency limits and the shared option vocabulary, on the gRPC and HTTP bindings (NATS has its
own suite): ``max_concurrency`` calls run, ``max_pending`` more wait, the next is refused with
RESOURCE_EXHAUSTED; ``max_pending=0`` means no queue, not "refuse everything"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.limits import ConcurrencyLimit
from protobind.options import OptionReader

from .conformance import Conformance
from .support import eventually

SOCKET_TRANSPORTS = ["grpc", "http"]


class Gate(Conformance):
    """``text="block"`` calls wait until released; ``running`` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.release = asyncio.Event()

    async def unary(self, request: Request, context: protobind.Context) -> Response:
        if request.text == "block":
            self.running += 1
            try:
                await self.release.wait()
            finally:
                self.running -= 1
        return Response(text=request.text)

    async def server_stream(self, request: Request, context: protobind.Context) -> AsyncIterator[Response]:
        yield Response(index=0)
        await self.release.wait()  # the stream stays open (and holds its slot) until released
        yield Response(index=1)


async def _serve(transport: str, service: Gate, **options: Any) -> tuple[protobind.Server, str]:
    server = protobind.Server([service], transport_options={transport: options})
    (url,) = await server.start(f"{transport}://127.0.0.1:0")
    return server, url


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    service = Gate()
    yield service
    service.release.set()


@pytest.mark.parametrize("transport", SOCKET_TRANSPORTS)
async def test_no_queue_refuses_only_when_every_slot_is_taken(transport: str, gate: Gate) -> None:
    server, url = await _serve(transport, gate, max_concurrency=1, max_pending=0)
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            # idle server: max_pending=0 must not refuse (NATS once did)
            assert (await client.unary(Request(text="idle"), timeout=10)).text == "idle"
            blocked = asyncio.ensure_future(client.unary(Request(text="block"), timeout=30))
            await eventually(lambda: gate.running == 1)
            with pytest.raises(RpcError) as refused:
                await client.unary(Request(text="extra"), timeout=10)
            assert refused.value.code is Code.RESOURCE_EXHAUSTED
            assert "overloaded" in refused.value.message
            gate.release.set()
            assert (await blocked).text == "block"
            assert (await client.unary(Request(text="after"), timeout=10)).text == "after"
    finally:
        await server.stop(1.0)


@pytest.mark.parametrize("transport", SOCKET_TRANSPORTS)
async def test_queue_holds_max_pending_calls_and_refuses_the_next(transport: str, gate: Gate) -> None:
    server, url = await _serve(transport, gate, max_concurrency=1, max_pending=1)
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            first = asyncio.ensure_future(client.unary(Request(text="block"), timeout=30))
            await eventually(lambda: gate.running == 1)
            # two more while the slot is taken: one waits in the queue, the other is refused
            more = [
                asyncio.ensure_future(client.unary(Request(text=f"more-{i}"), timeout=30)) for i in range(2)
            ]
            done, _ = await asyncio.wait(more, return_when=asyncio.FIRST_COMPLETED, timeout=20)
            assert len(done) == 1
            (refused,) = done
            with pytest.raises(RpcError) as error:
                refused.result()
            assert error.value.code is Code.RESOURCE_EXHAUSTED
            gate.release.set()
            assert (await first).text == "block"
            (waiting,) = [task for task in more if task is not refused]
            assert (await waiting).text.startswith("more-")
    finally:
        await server.stop(1.0)


@pytest.mark.parametrize("transport", SOCKET_TRANSPORTS)
async def test_streams_hold_a_slot_until_they_end(transport: str, gate: Gate) -> None:
    server, url = await _serve(transport, gate, max_concurrency=1, max_pending=0)
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            stream = client.server_stream(Request(text="s"), timeout=10)
            first = await anext(stream)  # the stream is open and holds the only slot
            assert first.index == 0
            with pytest.raises(RpcError) as refused:
                await client.unary(Request(text="extra"), timeout=10)
            assert refused.value.code is Code.RESOURCE_EXHAUSTED
            gate.release.set()
            assert [r.index async for r in stream] == [1]
            assert (await client.unary(Request(text="after"), timeout=10)).text == "after"
    finally:
        await server.stop(1.0)


async def test_limiter_hands_slots_over_in_arrival_order_and_survives_cancellation() -> None:
    limit = ConcurrencyLimit(1, 2)
    await limit.acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await limit.acquire()
        order.append(name)
        limit.release()

    a = asyncio.ensure_future(wait("a"))
    b = asyncio.ensure_future(wait("b"))
    await asyncio.sleep(0)
    assert limit.pending == 2
    a.cancel()  # a waiter that gives up leaves the line
    with pytest.raises(asyncio.CancelledError):
        await a
    assert limit.pending == 1
    limit.release()
    await b
    assert order == ["b"]
    assert (limit.running, limit.pending) == (0, 0)


@pytest.mark.parametrize(
    ("transport", "old", "new"),
    [
        ("grpc", "cert", "tls_cert"),
        ("grpc", "ca", "tls_ca"),
        ("grpc", "server_name", "tls_server_name"),
        ("http", "max_body_size", "max_message_size"),
    ],
)
async def test_renamed_options_say_the_new_name(transport: str, old: str, new: str) -> None:
    side_server = old != "server_name"
    with pytest.raises(ValueError, match=f"{old} is now {new}"):
        if side_server:
            await protobind.Server([Conformance()], transport_options={transport: {old: "x"}}).start(
                f"{transport}://127.0.0.1:0"
            )
        else:
            protobind.connect(f"{transport}://127.0.0.1:1", options={old: "x"})


@pytest.mark.parametrize("transport", SOCKET_TRANSPORTS)
@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("max_concurrency", "0", "positive integer"),
        ("max_concurrency", "lots", "integer"),
        ("max_pending", "-1", "0 or more"),
        ("body_timeout", "0", "positive number of seconds"),
        ("max_message_size", "1.5", "integer"),
    ],
)
async def test_bad_limit_values_name_transport_and_option(
    transport: str, option: str, value: str, problem: str
) -> None:
    server = protobind.Server([Conformance()])
    with pytest.raises(ValueError, match=f"{transport} option {option} must be .*{problem}"):
        await server.start(f"{transport}://127.0.0.1:0?{option}={value}")
    assert server.urls == []


def test_option_reader_parses_each_kind() -> None:
    reader = OptionReader(
        "x", {"a": "yes", "b": "3", "c": "0", "d": "0.5", "e": " a, b ,", "f": "-----BEGIN X-----"}
    )
    assert reader.flag("a", False) is True
    assert reader.positive_int("b", 1) == 3
    assert reader.count("c", 1) == 0
    assert reader.seconds("d", 1.0) == 0.5
    assert reader.words("e") == ("a", "b")
    assert reader.pem("f") == b"-----BEGIN X-----"
    assert reader.text("missing") is None
    with pytest.raises(ValueError, match="x option a must be an integer"):
        reader.positive_int("a", 1)
