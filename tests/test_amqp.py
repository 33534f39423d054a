"""The RabbitMQ binding against the machine's RabbitMQ: routing keys and queue groups, reply queues,
many calls in flight on one connection, raw aio-pika peers, no-responders, security, connection
loss. The behaviour suite (test_behaviour.py) and the conformance matrix cover the call semantics
shared with the other transports.

Every test uses the harness's exchange (one per test run, deleted at the end) and a prefix of its
own; queues are exclusive or go with their last consumer, so nothing is left on the broker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiormq
import pytest

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import SERVICE, Conformance
from .servers import check_groups_fan_out
from .support import eventually

aio_pika = pytest.importorskip("aio_pika")

_prefixes = itertools.count()


@pytest.fixture
def amqp(harnesses: dict[str, Callable[[], str]]) -> str:
    """A fresh bind URL on the machine's RabbitMQ (skips when it is not reachable, fails on CI)."""
    return harnesses["amqp"]()


def _base(url: str) -> str:
    return urlsplit(url)._replace(query="").geturl()


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def _with_prefix(url: str, prefix: str, extra: str = "") -> str:
    query = _query(url)
    return f"{_base(url)}?exchange={query['exchange']}&prefix={prefix}{extra}"


class Served:
    def __init__(self, server: protobind.Server, url: str) -> None:
        self.server = server
        self.url = url
        query = _query(url)
        self.exchange = query["exchange"]
        self.prefix = query["prefix"] + "."

    def subject(self, method: str) -> str:
        return f"{self.prefix}{SERVICE}.{method}"


async def _serve(url: str, service: object, extra: str = "", prefix: str | None = None) -> Served:
    prefix = prefix or f"ta{next(_prefixes)}"
    server = protobind.Server([service])
    (bound,) = await server.start(_with_prefix(url, prefix, extra))
    return Served(server, bound)


@pytest.fixture
async def amqp_served(amqp: str) -> AsyncIterator[tuple[Served, Conformance]]:
    service = Conformance()
    served = await _serve(amqp, service, "&heartbeat=0.3")
    try:
        yield served, service
    finally:
        await served.server.stop(grace=1.0)


@pytest.fixture
async def raw(amqp: str) -> AsyncIterator[Any]:
    connection = await aio_pika.connect(_base(amqp))
    try:
        yield connection
    finally:
        await connection.close()


async def _answered_again(client: ConformanceServiceClient, pause: float) -> str:
    """Call Unary until the broker is back (UNAVAILABLE and DEADLINE_EXCEEDED mean not yet); its text."""
    while True:
        try:
            return (await client.unary(Request(text="after"), timeout=2)).text
        except RpcError as exc:
            if exc.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(pause)


class _RawCaller:
    """What docs/protocols.md (RabbitMQ) tells any AMQP client to do for a unary call."""

    def __init__(self, connection: Any, exchange: str) -> None:
        self.connection = connection
        self.exchange_name = exchange
        self.replies: dict[str, asyncio.Future[Any]] = {}

    async def start(self) -> None:
        self.channel = await self.connection.channel()
        self.exchange = await self.channel.get_exchange(self.exchange_name, ensure=False)
        self.queue = await self.channel.declare_queue("", exclusive=True, auto_delete=True)

        async def on_reply(message: Any) -> None:
            future = self.replies.pop(message.correlation_id, None)
            if future is not None and not future.done():
                future.set_result(message)

        await self.queue.consume(on_reply, no_ack=True)

    async def call(self, routing_key: str, body: bytes, **properties: Any) -> Any:
        correlation = f"c{len(self.replies)}-{time.monotonic_ns()}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.replies[correlation] = future
        message = aio_pika.Message(body, reply_to=self.queue.name, correlation_id=correlation, **properties)
        await self.exchange.publish(message, routing_key)
        return await asyncio.wait_for(future, 10)


# --- the module boundary ---------------------------------------------------------------------------


def test_import_protobind_loads_no_aio_pika() -> None:
    code = (
        "import sys, protobind, protobind.amqp; from protobind.transport import all_transports; "
        "all_transports(); print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aio_pika', 'aiormq', 'pamqp')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- raw aio-pika peers: the wire rules --------------------------------------------------------------


async def test_raw_client_calls_with_json_and_binary(
    amqp_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, _ = amqp_served
    caller = _RawCaller(raw, server.exchange)
    await caller.start()
    reply = await caller.call(
        server.subject("Unary"),
        json.dumps({"text": "hi"}).encode(),
        content_type="application/json",
        headers={"x-user": "ada"},
    )
    assert reply.content_type == "application/json"
    body = json.loads(reply.body)
    assert body["text"] == "hi"
    assert body["transport"] == "amqp"
    assert body["metadata"]["x-user"] == "ada"
    binary = await caller.call(server.subject("Unary"), Request(text="bin").SerializeToString())
    assert Response.FromString(binary.body).text == "bin"


async def test_the_asyncapi_document_names_the_exchange_the_broker_declares(
    amqp_served: tuple[Served, Conformance], raw: Any
) -> None:
    """The exchange in the document is the one the server's broker uses (option ``exchange``, here
    the harness's own, not the default ``protobind``): the amqp broker declares it."""
    server, _ = amqp_served
    assert server.exchange != "protobind"
    caller = _RawCaller(raw, server.exchange)
    await caller.start()
    reply = await caller.call(f"{server.prefix}$PROTOBIND.ASYNCAPI.{SERVICE}", b"")
    document = json.loads(reply.body)
    unary = document["channels"]["protobind_conformance_v1_ConformanceService_Unary"]
    assert unary["bindings"]["amqp"]["exchange"]["name"] == server.exchange
    assert document["info"]["description"].count("RabbitMQ") >= 1


async def test_raw_client_reads_errors_from_headers(
    amqp_served: tuple[Served, Conformance], raw: Any
) -> None:
    from google.rpc import status_pb2

    server, _ = amqp_served
    caller = _RawCaller(raw, server.exchange)
    await caller.start()
    behavior = Behavior(error_code=int(Code.NOT_FOUND), error_message="nope")
    reply = await caller.call(server.subject("Unary"), Request(behavior=behavior).SerializeToString())
    assert reply.headers["Protobind-Status"] == "5"
    assert reply.headers["Nats-Service-Error-Code"] == "404"
    status = status_pb2.Status.FromString(reply.body)
    assert (status.code, status.message) == (5, "nope")


async def test_raw_publish_without_reply_to_runs_a_one_way_handler(
    amqp_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, service = amqp_served
    channel = await raw.channel()
    exchange = await channel.get_exchange(server.exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(Request(text="fire").SerializeToString()), server.subject("Notify")
    )
    await eventually(lambda: "fire" in service.notified)


# --- request/reply the RabbitMQ way -------------------------------------------------------------------


class Gate(Conformance):
    """Holds every unary call until ``count`` of them are running at once."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.running = 0
        self.all_in = asyncio.Event()

    async def unary(self, request: Request, context: protobind.Context) -> Response:
        self.running += 1
        if self.running >= self.count:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 20)
        return Response(text=request.text)


async def test_many_calls_in_flight_on_one_connection(amqp: str) -> None:
    """200 calls from one channel are all in their handlers at once (FastStream's RabbitMQ RPC
    allows one call at a time per connection): replies are matched by correlation id."""
    gate = Gate(200)
    served = await _serve(amqp, gate)
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            replies = await asyncio.gather(
                *(client.unary(Request(text=str(i)), timeout=30) for i in range(200))
            )
        assert [r.text for r in replies] == [str(i) for i in range(200)]
    finally:
        await served.server.stop(0)


async def test_reply_queue_is_unguessable_and_only_its_connection_consumes_it(
    amqp_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, _ = amqp_served
    async with protobind.connect(server.url) as channel:
        client = ConformanceServiceClient(channel)
        await client.unary(Request(), timeout=5)
        broker = channel._transport.broker  # type: ignore[attr-defined]
        (queue,) = broker._inboxes
        assert queue.startswith("protobind.reply.") and len(queue.rpartition(".")[2]) == 32  # 128 bits
        other = await raw.channel()
        with pytest.raises(aiormq.exceptions.ChannelLockedResource):
            stolen = await other.declare_queue(queue, passive=True)
            await stolen.consume(lambda _: None)
        # the client is unharmed
        assert (await client.unary(Request(text="still"), timeout=5)).text == "still"


async def test_another_client_cannot_inject_into_cancel_or_end_a_stream(
    amqp_served: tuple[Served, Conformance], raw: Any
) -> None:
    """An attacker that opened a stream of its own learns the server's inbox queue; frames it
    sends there, for any token, do not reach the victim's stream."""
    server, _ = amqp_served
    channel = await raw.channel()
    exchange = await channel.get_exchange(server.exchange, ensure=False)
    own = await channel.declare_queue("", exclusive=True)
    frames: asyncio.Queue[Any] = asyncio.Queue()
    await own.consume(frames.put, no_ack=True)
    await exchange.publish(
        aio_pika.Message(
            b"",
            reply_to=own.name,
            correlation_id="a" * 32,
            headers={"Protobind-Frame": "open", "Protobind-Window": "8"},
        ),
        server.subject("BidiStream"),
    )
    accept = await asyncio.wait_for(frames.get(), 5)
    assert accept.headers["Protobind-Frame"] == "accept"
    server_queue = accept.reply_to
    token = accept.headers["Protobind-Reply-Id"]
    assert len(token) == 32  # 128 random bits, not a counter

    async with protobind.connect(server.url) as protobind_channel:
        client = ConformanceServiceClient(protobind_channel)
        sent: asyncio.Queue[Request] = asyncio.Queue()

        async def requests() -> AsyncIterator[Request]:
            while (item := await sent.get()).text != "END":
                yield item

        call = client.bidi_stream(requests(), timeout=20)
        await sent.put(Request(text="LEGIT-1"))
        replies = [(await anext(call)).text]
        victims = [s for s in server.server.bindings[0]._streaming._streams if s != token]
        guesses = [*victims, token, *(f"{n:032x}" for n in range(20))]
        default = channel.default_exchange
        for guess in guesses:
            for headers in (
                {},
                {"Protobind-Frame": "cancel"},
                {"Protobind-Frame": "end", "Protobind-Status": "14", "Protobind-Count": "0"},
            ):
                body = Request(text="INJECTED").SerializeToString() if not headers else b""
                await default.publish(
                    aio_pika.Message(
                        body,
                        correlation_id=guess,
                        reply_to=own.name,
                        headers={**headers, "Protobind-Reply-Id": "a" * 32},
                    ),
                    server_queue,
                )
        await asyncio.sleep(0.3)
        await sent.put(Request(text="LEGIT-2"))
        replies.append((await anext(call)).text)
        await sent.put(Request(text="END"))
        replies += [reply.text async for reply in call]
    assert replies == ["LEGIT-1", "LEGIT-2"]


async def test_no_responders_is_unavailable_at_once(amqp: str) -> None:
    """Nobody serves the routing key: RabbitMQ returns the mandatory request and the call fails at
    once, without a deadline to wait for."""
    async with protobind.connect(_with_prefix(amqp, "nobody")) as channel:
        with pytest.raises(RpcError) as info:
            await asyncio.wait_for(ConformanceServiceClient(channel).unary(Request()), 5)
        assert info.value.code is Code.UNAVAILABLE
        with pytest.raises(RpcError) as stream_info:
            await asyncio.wait_for(
                ConformanceServiceClient(channel).client_stream([Request()]),
                5,
            )
        assert stream_info.value.code is Code.UNAVAILABLE


# --- one-way and fan-out ----------------------------------------------------------------------------


async def test_queue_groups_fan_out_and_replicas_share(amqp: str) -> None:
    """2 groups x 2 replicas x 300 one-way calls: every group handles every call once, and both
    replicas of a group take part (a group is one queue its replicas consume from)."""
    await check_groups_fan_out(_with_prefix(amqp, f"ta{next(_prefixes)}"), count=300, timeout=60)


async def test_group_queue_is_named_and_bound_as_documented(
    amqp_served: tuple[Served, Conformance], raw: Any
) -> None:
    from protobind.amqp._connection import queue_name

    server, _ = amqp_served
    channel = await raw.channel()
    name = queue_name(SERVICE, f"{server.prefix}{SERVICE}.*", server.exchange)
    assert name == f"{SERVICE}@{server.prefix}{SERVICE}._@{server.exchange}"
    queue = await channel.declare_queue(name, passive=True)  # exists: declared by the server
    assert queue.declaration_result.consumer_count == 1


# --- security, connections -----------------------------------------------------------------------


async def test_authentication_failure_is_unauthenticated_and_hides_the_password(amqp: str) -> None:
    parts = urlsplit(amqp)
    bad = f"amqp://guest:sup3rsecret@{parts.hostname}:{parts.port}/"
    with pytest.raises(RpcError) as info:
        async with protobind.connect(bad):
            pass
    assert info.value.code is Code.UNAUTHENTICATED
    assert "sup3rsecret" not in str(info.value)
    server = protobind.Server([Conformance()])
    with pytest.raises(Exception) as serve_info:
        await server.start(bad)
    assert "sup3rsecret" not in str(serve_info.value)


async def test_amqps_never_falls_back_to_plaintext_and_is_bounded(amqp: str) -> None:
    parts = urlsplit(amqp)
    started = time.monotonic()
    with pytest.raises(RpcError) as info:
        async with protobind.connect(f"amqps://guest:guest@{parts.hostname}:{parts.port}/?connect_timeout=2"):
            pass
    assert info.value.code is Code.UNAVAILABLE
    assert time.monotonic() - started < 20


async def test_cannot_connect_is_unavailable() -> None:
    with pytest.raises(RpcError) as info:
        async with protobind.connect("amqp://guest:guest@127.0.0.1:1/?connect_timeout=2"):
            pass
    assert info.value.code is Code.UNAVAILABLE
    assert "127.0.0.1:1" in info.value.message


async def test_connection_loss_fails_calls_in_flight_and_calls_recover(
    amqp_served: tuple[Served, Conformance],
) -> None:
    """The client's socket is cut with a call in flight: the call fails UNAVAILABLE (no hang), and
    once aio-pika has reconnected (same reply queue, declared again) calls work again."""
    server, _ = amqp_served
    async with protobind.connect(server.url + "&reconnect_wait=0.2") as channel:
        client = ConformanceServiceClient(channel)
        assert (await client.unary(Request(text="before"), timeout=5)).text == "before"
        pending = asyncio.ensure_future(client.unary(Request(behavior=Behavior(sleep_ms=3000)), timeout=20))
        await asyncio.sleep(0.3)
        broker = channel._transport.broker  # type: ignore[attr-defined]
        # the socket under aiormq's writer task, cut as a network failure would
        writer = broker.connection.transport.connection._writer_task.get_coro().cr_frame.f_locals["writer"]
        writer.transport.abort()
        with pytest.raises(RpcError) as info:
            await asyncio.wait_for(pending, 10)
        assert info.value.code is Code.UNAVAILABLE

        assert await asyncio.wait_for(_answered_again(client, 0.1), 20) == "after"


@pytest.mark.slow
async def test_the_broker_killed_with_calls_in_flight_never_hangs_a_call_a_stop_or_a_close(
    rabbitmq_factory: Any,
) -> None:
    """A private node SIGKILLed with unary calls in flight: they end UNAVAILABLE as soon as the
    loss is seen (not at their 60 s deadline); a call while it is down is UNAVAILABLE at once;
    calls work again once it is back; and with it down again, Server.stop and the channel's close
    return (aio-pika's robust queues and channels would wait for a reconnection that never comes)."""
    node = rabbitmq_factory()
    service = Conformance()
    server = protobind.Server([service])
    (url,) = await server.start(f"{node.url}?prefix=lost&reconnect_wait=0.3")
    channel = protobind.connect(url)
    client = ConformanceServiceClient(channel)
    try:
        calls = [asyncio.ensure_future(client.unary(Request(text=f"gate{i}"), timeout=60)) for i in range(20)]
        await service.until(lambda: len(service.entered) == 20)
        node.stop(signal.SIGKILL)
        lost = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
        assert time.monotonic() - lost < 10  # not the 60 s deadline
        assert all(isinstance(r, RpcError) and r.code is Code.UNAVAILABLE for r in results), results
        started = time.monotonic()
        with pytest.raises(RpcError) as down:
            await asyncio.wait_for(client.unary(Request(text="while-down"), timeout=60), 30)
        assert down.value.code is Code.UNAVAILABLE
        assert time.monotonic() - started < 5

        node.start()

        assert await asyncio.wait_for(_answered_again(client, 0.2), 120) == "after"
        node.stop(signal.SIGKILL)
        await eventually(lambda: not channel.transport.broker.is_connected)  # type: ignore[attr-defined]
        started = time.monotonic()
        await asyncio.wait_for(server.stop(0), 60)
        await asyncio.wait_for(channel.close(), 60)
        assert time.monotonic() - started < 20
    finally:
        await asyncio.wait_for(server.stop(0), 60)
        await asyncio.wait_for(channel.close(), 60)


async def test_server_start_and_connect_against_a_dead_port_fail_within_a_bound() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"amqp://guest:guest@127.0.0.1:{port}/?connect_timeout=2"
    started = time.monotonic()
    with pytest.raises(RpcError) as info:
        async with protobind.connect(url) as channel:
            await ConformanceServiceClient(channel).unary(Request(text="x"), timeout=5)
    assert info.value.code is Code.UNAVAILABLE
    server = protobind.Server([Conformance()])
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        await server.start(url)
    await server.stop(0)
    assert time.monotonic() - started < 20


# --- discovery and the CLI -------------------------------------------------------------------------


async def test_reflection_and_cli_over_amqp(amqp_served: tuple[Served, Conformance]) -> None:
    from protobind.reflection import reflect

    server, _ = amqp_served
    async with protobind.connect(server.url) as channel:
        reflected = await reflect(channel, timeout=5)
    assert SERVICE in reflected.services
    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "protobind", "list", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout
    called = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "protobind",
            "call",
            server.url,
            f"{SERVICE}/Unary",
            '{"text": "cli"}',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["text"] == "cli"
