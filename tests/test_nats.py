"""The NATS binding against a real nats-server: wire format, raw nats-py peers, flow control,
cancellation, discovery, reconnection and bad input. The behaviour suite (test_behaviour.py)
covers the call semantics shared with the other transports."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response
from protobind.conformance.v1.conformance_protobind import (
    ConformanceService,
    ConformanceServiceClient,
)
from protobind.nats._connection import CLOSE_WAIT, open_broker
from protobind.nats._options import settings_from
from protobind.nats.embedded import start_nats_server

from .conformance import SERVICE, Conformance
from .nats_server import NatsServers
from .processes import reap
from .servers import check_groups_fan_out
from .support import eventually
from .tls import self_signed

_prefixes = itertools.count()


def _prefix() -> str:
    return f"tn{next(_prefixes)}."


class Served:
    """A protobind server on NATS and what tests need to reach it."""

    def __init__(self, server: protobind.Server, url: str, prefix: str, nats_url: str) -> None:
        self.server = server
        self.url = url
        self.prefix = prefix
        self.nats_url = nats_url

    def subject(self, method: str) -> str:
        return f"{self.prefix}{SERVICE}.{method}"

    @property
    def binding(self) -> Any:
        return self.server.bindings[0]


async def _serve(nats_url: str, service: object, query: str = "", prefix: str | None = None) -> Served:
    prefix = _prefix() if prefix is None else prefix
    server = protobind.Server([service])
    (url,) = await server.start(f"{nats_url}?prefix={prefix}{query}")
    return Served(server, url, prefix, nats_url)


_memory_names = itertools.count()


@pytest.fixture(params=["nats", "memory"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """The broker engine's behaviour does not depend on NATS: these tests run on nats-server and
    on the in-memory broker."""
    if request.param == "nats":
        return str(request.getfixturevalue("nats_server"))
    return f"memory://engine-{next(_memory_names)}"


@pytest.fixture
async def broker_served(broker_url: str) -> AsyncIterator[tuple[Served, Conformance]]:
    service = Conformance()
    served = await _serve(broker_url, service, "&heartbeat=0.2")
    try:
        yield served, service
    finally:
        await served.server.stop(0)


@pytest.fixture
async def nats_served(nats_server: str) -> AsyncIterator[tuple[Served, Conformance]]:
    service = Conformance()
    served = await _serve(nats_server, service, "&heartbeat=0.2")
    try:
        yield served, service
    finally:
        await served.server.stop(grace=1.0)


@pytest.fixture
async def raw(nats_server: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server)
    try:
        yield nc
    finally:
        await nc.close()


async def _settle(nc: Any) -> None:
    """Wait until nc's subscriptions are in place: one nats-py flush does not prove that (its PING
    can overtake a SUB still in the pending buffer), two do."""
    await nc.flush()
    await nc.flush()


# --- the embedded server and the module boundary -------------------------------------------------


def test_import_protobind_loads_no_nats() -> None:
    code = "import sys, protobind; sys.exit(any(m.split('.')[0] == 'nats' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_embedded_server_restarts_on_the_same_port(nats_servers: NatsServers) -> None:
    url, stop = nats_servers.start()
    port = int(url.rsplit(":", 1)[1])
    stop()
    again, _ = nats_servers.start(port)
    assert again == url


# --- load sharing and concurrency ----------------------------------------------------------------


class Recorder(Conformance):
    def __init__(self, name: str = "", delay: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.delay = delay
        self.calls = 0
        self.running = 0
        self.most = 0

    async def unary(self, request: Request, context: protobind.Context) -> Response:
        self.calls += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            delay = request.behavior.sleep_ms / 1000 if request.behavior.sleep_ms else self.delay
            if delay:
                await asyncio.sleep(delay)
        finally:
            self.running -= 1
        return Response(text=self.name or request.text)


async def test_two_replicas_share_the_calls(broker_url: str) -> None:
    first, second = Recorder("a"), Recorder("b")
    one = await _serve(broker_url, first)
    two = await _serve(broker_url, second, prefix=one.prefix)
    try:
        async with protobind.connect(one.url) as channel:
            client = ConformanceServiceClient(channel)
            replies = await asyncio.gather(*(client.unary(Request(), timeout=10) for _ in range(200)))
        assert first.calls + second.calls == 200
        assert first.calls > 0 and second.calls > 0
        assert {r.text for r in replies} == {"a", "b"}
    finally:
        await one.server.stop(0)
        await two.server.stop(0)


async def test_queue_groups_fan_out_and_replicas_share(broker_url: str) -> None:
    """2 groups x 2 replicas x 1,000 one-way calls: every group handles every call once."""
    await check_groups_fan_out(f"{broker_url}?prefix={_prefix()}", count=1000, timeout=60)


async def test_a_slow_call_does_not_hold_up_others(broker_url: str) -> None:
    served = await _serve(broker_url, Recorder())
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            slow = asyncio.ensure_future(client.unary(Request(behavior=Behavior(sleep_ms=3000)), timeout=10))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await asyncio.gather(*(client.unary(Request(), timeout=5) for _ in range(20)))
            assert time.monotonic() - started < 2.0
            assert not slow.done()
            slow.cancel()
    finally:
        await served.server.stop(0)


async def test_handlers_run_concurrently_up_to_max_concurrency(broker_url: str) -> None:
    service = Recorder(delay=0.2)
    served = await _serve(broker_url, service, "&max_concurrency=3")
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            started = time.monotonic()
            await asyncio.gather(*(client.unary(Request(), timeout=10) for _ in range(9)))
            elapsed = time.monotonic() - started
        assert service.most == 3
        assert 0.55 < elapsed < 3.0  # three rounds of three
    finally:
        await served.server.stop(0)


async def test_overload_is_refused_with_resource_exhausted(broker_url: str) -> None:
    service = Recorder(delay=0.3)
    served = await _serve(broker_url, service, "&max_concurrency=1&max_pending=2")
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            results = await asyncio.gather(
                *(client.unary(Request(), timeout=10) for _ in range(12)), return_exceptions=True
            )
        refused = [r for r in results if isinstance(r, RpcError)]
        assert refused and all(r.code is Code.RESOURCE_EXHAUSTED for r in refused)
        assert any(isinstance(r, Response) for r in results)
    finally:
        await served.server.stop(0)


async def test_max_pending_zero_means_no_queue_not_no_calls(broker_url: str) -> None:
    service = Recorder(delay=0.3)
    served = await _serve(broker_url, service, "&max_concurrency=1&max_pending=0")
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            assert isinstance(await client.unary(Request(), timeout=10), Response)  # idle: served
            results = await asyncio.gather(
                *(client.unary(Request(), timeout=10) for _ in range(6)), return_exceptions=True
            )
        assert any(isinstance(r, Response) for r in results)
        assert any(isinstance(r, RpcError) and r.code is Code.RESOURCE_EXHAUSTED for r in results)
    finally:
        await served.server.stop(0)


async def test_without_nats_py_internals_calls_are_still_bounded(
    nats_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protobind.nats import _connection as connection

    monkeypatch.setattr(connection.Connection, "pulled", lambda self, sub, mailbox: False)
    service = Recorder(delay=0.2)
    served = await _serve(nats_server, service, "&max_concurrency=4")
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            await asyncio.gather(*(client.unary(Request(), timeout=10) for _ in range(8)))
        assert service.most == 4
    finally:
        await served.server.stop(0)


async def test_without_nats_py_internals_publishes_go_through_nats_py(
    nats_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection.buffer writes into nats-py's pending buffer itself; where it cannot (another
    nats-py, a full buffer), every publish takes nats-py's own path and calls still work."""
    from protobind.nats import _connection as connection

    taken: list[str] = []

    def refuse(self: Any, subject: str, *args: Any) -> bool:
        taken.append(subject)
        return False

    monkeypatch.setattr(connection.Connection, "buffer", refuse)
    service = Recorder()
    served = await _serve(nats_server, service)
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            assert (await client.unary(Request(text="plain"), timeout=10)).text == "plain"
            await client.notify(Request(text="one-way"))
        await service.until(lambda: service.notified == ["one-way"])
        assert served.subject("Notify") in taken and served.subject("Unary") in taken
    finally:
        await served.server.stop(0)


async def test_a_unary_method_published_without_a_reply_address_runs_and_answers_nobody(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    """A plain publish (no reply address) to a request/response method runs its handler and
    drops the response; the server stays connected (it must not publish to an empty subject, which
    nats-server answers by closing the connection), and calls made at once do not collide."""
    server, service = nats_served
    slow = Request(text="no-reply-slow", behavior=Behavior(sleep_ms=200)).SerializeToString()
    await raw.publish(server.subject("Unary"), slow)
    await raw.publish(server.subject("Unary"), slow)
    await raw.publish(server.subject("Unary"), Request(text="no-reply").SerializeToString())
    await raw.flush()
    await eventually(lambda: service.entered.count("no-reply-slow") == 2 and "no-reply" in service.entered)
    await asyncio.sleep(0.4)  # both slow handlers finished (and their responses were dropped)
    async with protobind.connect(server.url) as channel:
        reply = await ConformanceServiceClient(channel).unary(Request(text="after"), timeout=5)
    assert reply.text == "after"
    assert server.binding.broker.is_connected


async def test_publishes_go_out_when_nats_py_flusher_task_is_gone(
    nats_served: tuple[Served, Conformance],
) -> None:
    """Connection.buffer hands messages to nats-py's flusher task; when that task is gone (Python
    3.10 cancels it on Ctrl-C), nats-py writes inline and so must every publish."""
    server, service = nats_served
    async with protobind.connect(server.url) as channel:
        client = ConformanceServiceClient(channel)
        assert (await client.unary(Request(text="before"), timeout=5)).text == "before"
        connection = channel.transport.broker.client  # type: ignore[attr-defined]
        connection._flusher_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connection._flusher_task
        await client.notify(Request(text="flusher-gone"))
        await service.until(lambda: "flusher-gone" in service.notified)
        assert (await client.unary(Request(text="after"), timeout=5)).text == "after"


async def test_pulled_messages_keep_nats_py_slow_consumer_rule(nats_server: str) -> None:
    """The server's subscriptions skip nats-py's general delivery path (Connection.pulled); they
    keep its slow-consumer rules: a message that would reach the pending-bytes or message-count
    limit is dropped, and room made by taking messages is used again. Headers and fields arrive intact."""
    from protobind.nats._connection import open_broker
    from protobind.nats._options import settings_from

    broker = await open_broker(settings_from(nats_server, {}), "slow-consumer-test")
    sender = await nats.connect(nats_server)
    try:
        inbound = await broker.pull("tn.slow.*")
        await broker.settle()
        sub = inbound._sub  # type: ignore[attr-defined]
        assert sub._id in broker.client._pulled
        items = inbound.mailbox.items
        sub._pending_bytes_limit = 350  # nats-py's own limit, normally 64 MiB
        for i in range(6):
            await sender.publish(f"tn.slow.{i}", bytes(100), reply=f"r.{i}", headers={"a-b": f"{i}"})
        await sender.flush()
        await broker.settle()
        assert len(items) == 3  # the 4th would make 400 >= 350
        first = items.popleft()
        assert (first.subject, first.reply, first.data, first.headers) == (
            "tn.slow.0",
            "r.0",
            bytes(100),
            {"a-b": "0"},
        )
        inbound.taken(first)
        await sender.publish("tn.slow.again", b"x" * 100)
        await sender.flush()
        await broker.settle()
        assert [m.subject for m in items] == ["tn.slow.1", "tn.slow.2", "tn.slow.again"]
        # and the message-count limit
        sub._pending_msgs_limit = 3
        await sender.publish("tn.slow.over", b"")
        await sender.flush()
        await broker.settle()
        assert len(items) == 3
        await inbound.unsubscribe()
        assert sub._id not in broker.client._pulled
    finally:
        await sender.drain()
        await broker.close()


async def test_header_blocks_are_read_as_nats_py_reads_them() -> None:
    """Connection reads header blocks itself (parse_headers, with a shorter path for a call that
    carries only its deadline); every block gives what nats-py's own parser gives, and
    encode_headers' short path writes what its general path writes."""
    from nats.aio.client import Client

    from protobind.nats._connection import encode_headers, parse_headers

    blocks = [
        b"NATS/1.0\r\nProtobind-Timeout-Ms: 29999\r\n\r\n",
        b"NATS/1.0\r\nProtobind-Timeout-Ms: 1\r\n\r\n",
        b"NATS/1.0\r\nProtobind-Timeout-Ms:  42 \r\n\r\n",
        b"NATS/1.0\r\nProtobind-Timeout-Ms: 4 2\r\n\r\n",
        b"NATS/1.0\r\nProtobind-Timeout-Ms: \r\n\r\n",
        b"NATS/1.0\r\nProtobind-Timeout-Ms: 12\r\nX-Other: a b\r\n\r\n",
        b"NATS/1.0\r\nProtobind-Timeout-Ms: 12\r\n",
        b"NATS/1.0\r\nprotobind-timeout-ms: 12\r\n\r\n",
        b"NATS/1.0\r\nA: 1\r\nB:2\r\n\r\n",
    ]
    nats_py = Client()
    for block in blocks:
        assert parse_headers(block) == await nats_py._process_headers(block), block
    for value in ("1", "29999", "4294967295"):
        general = b"NATS/1.0\r\nProtobind-Timeout-Ms: " + value.encode() + b"\r\n\r\n"
        assert encode_headers({"Protobind-Timeout-Ms": value}) == general
        assert parse_headers(general) == {"Protobind-Timeout-Ms": value}
    assert encode_headers({"Protobind-Timeout-Ms": " 7\n"}) == b"NATS/1.0\r\nProtobind-Timeout-Ms: 7\r\n\r\n"


async def test_a_direct_inbox_runs_its_callback_in_order_even_when_it_waits(nats_server: str) -> None:
    """Inbox messages run their callback as the connection reads them (Connection.direct); a
    callback that waits is finished in a task while later messages wait their turn, so the order
    is nats-py's, and a callback's exception goes to the connection's error callback."""
    from protobind.nats._connection import open_broker
    from protobind.nats._options import settings_from

    broker = await open_broker(settings_from(nats_server, {}), "direct-inbox-test")
    sender = await nats.connect(nats_server)
    seen: list[tuple[str, bytes, str]] = []
    release = asyncio.Event()
    errors: list[BaseException] = []
    broker.client._error_cb = _collect(errors)

    async def callback(token: str, msg: Any) -> None:
        if msg.data == b"wait":
            await release.wait()
        if msg.data == b"fail":
            raise ValueError("callback failed")
        seen.append((token, msg.data, msg.reply))

    try:
        inbox = await broker.inbox(callback)
        await broker.settle()
        assert len(broker.client._direct) == 1
        for data in (b"first", b"wait", b"after-1", b"fail", b"after-2"):
            await sender.publish(inbox.address("t-" + data.decode()), data, reply="r")
        await sender.flush()
        await broker.settle()
        assert seen == [("t-first", b"first", "r")]
        release.set()
        await eventually(lambda: len(seen) == 4)
        assert [data for _, data, _ in seen] == [b"first", b"wait", b"after-1", b"after-2"]
        await eventually(lambda: len(errors) == 1)
        assert str(errors[0]) == "callback failed"
        # and the inline path again once the backlog is done
        await sender.publish(inbox.address("t-last"), b"last")
        await sender.flush()
        await eventually(lambda: len(seen) == 5)
    finally:
        await sender.drain()
        await broker.close()


def _collect(errors: list[BaseException]) -> Any:
    async def error_cb(exc: BaseException) -> None:
        errors.append(exc)

    return error_cb


# --- the client ------------------------------------------------------------------------------------


async def test_unary_calls_share_one_reply_subscription(nats_served: tuple[Served, Conformance]) -> None:
    server, _ = nats_served
    async with protobind.connect(server.url) as channel:
        client = ConformanceServiceClient(channel)
        await client.unary(Request())
        connection = channel.transport.broker.client  # type: ignore[attr-defined]
        subscribes = 0
        original = connection.subscribe

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal subscribes
            subscribes += 1
            return await original(*args, **kwargs)

        connection.subscribe = counting
        replies = await asyncio.gather(*(client.unary(Request(number=i), timeout=5) for i in range(100)))
        assert sorted(r.number for r in replies) == list(range(100))
        assert subscribes == 0


async def test_connect_to_several_servers_and_json_codec(nats_served: tuple[Served, Conformance]) -> None:
    server, _ = nats_served
    host = server.nats_url.removeprefix("nats://")
    url = f"nats://{host},{host}?prefix={server.prefix}&codec=json"
    async with protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        reply = await client.unary(Request(text="j", number=2**40), metadata={"x-a": "1"}, timeout=5)
        assert (reply.text, reply.number, reply.metadata["x-a"]) == ("j", 2**40, "1")
        streamed = [r.index async for r in client.server_stream(Request(behavior=Behavior(stream_count=3)))]
        assert streamed == [0, 1, 2]


async def test_cannot_connect_is_unavailable(nats_servers: NatsServers) -> None:
    url, stop = nats_servers.start()
    stop()
    channel = protobind.connect(url + "?connect_timeout=0.5&reconnect_wait=0.1")
    started = time.monotonic()
    with pytest.raises(RpcError) as info:
        await ConformanceServiceClient(channel).unary(Request(), timeout=5)
    assert info.value.code is Code.UNAVAILABLE
    assert time.monotonic() - started < 3


# --- raw nats-py peers: body, headers, errors ----------------------------------------------------


async def test_raw_client_calls_with_json(nats_served: tuple[Served, Conformance], raw: Any) -> None:
    server, _ = nats_served
    msg = await raw.request(
        server.subject("Unary"),
        b'{"text": "hi", "number": "7"}',
        headers={"Content-Type": "application/json", "x-user": "ada", "Protobind-Timeout-Ms": "5000"},
        timeout=5,
    )
    assert msg.headers["Content-Type"] == "application/json"
    body = json.loads(msg.data)
    assert body["text"] == "hi"
    assert body["number"] == "7"
    assert body["metadata"] == {"x-user": "ada"}
    assert 3.0 < body["timeRemaining"] <= 5.0
    assert body["transport"] == "nats"


async def test_raw_client_calls_with_binary(nats_served: tuple[Served, Conformance], raw: Any) -> None:
    server, _ = nats_served
    msg = await raw.request(server.subject("Unary"), Request(text="bin").SerializeToString(), timeout=5)
    assert msg.headers is None
    assert Response.FromString(msg.data).text == "bin"


async def test_error_reply_headers_and_binary_status(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, _ = nats_served
    request = Request(
        behavior=Behavior(error_code=5, error_message="no\nsuch thing", error_detail_reason="GONE")
    )
    msg = await raw.request(server.subject("Unary"), request.SerializeToString(), timeout=5)
    assert msg.headers["Nats-Service-Error-Code"] == "404"
    assert msg.headers["Nats-Service-Error"] == "no such thing"
    assert msg.headers["Protobind-Status"] == "5"
    status = status_pb2.Status.FromString(msg.data)
    assert (status.code, status.message) == (5, "no\nsuch thing")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "GONE"


async def test_error_reply_as_json(nats_served: tuple[Served, Conformance], raw: Any) -> None:
    server, _ = nats_served
    body = b'{"behavior": {"errorCode": 7, "errorMessage": "denied", "errorDetailReason": "R"}}'
    msg = await raw.request(
        server.subject("Unary"), body, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert msg.headers["Nats-Service-Error-Code"] == "403"
    assert msg.headers["Protobind-Status"] == "7"
    error = json.loads(msg.data)
    assert (error["code"], error["message"]) == ("permission_denied", "denied")
    (detail,) = error["details"]
    assert detail["type"] == "google.rpc.ErrorInfo"
    value = detail["value"]
    decoded = error_details_pb2.ErrorInfo.FromString(base64.b64decode(value + "=" * (-len(value) % 4)))
    assert decoded.reason == "R"


@pytest.mark.parametrize(
    ("body", "headers", "code", "message"),
    [
        (b"", {"Nats-Service-Error-Code": "404", "Nats-Service-Error": "missing"}, Code.NOT_FOUND, "missing"),
        (b"", {"Nats-Service-Error-Code": "418", "Nats-Service-Error": "teapot"}, Code.UNKNOWN, "teapot"),
        (b"\xff\xff\xff not a response", None, Code.INTERNAL, None),
    ],
)
async def test_replies_of_foreign_services(
    nats_server: str, raw: Any, body: bytes, headers: dict[str, str] | None, code: Code, message: str | None
) -> None:
    """A protobind client calling a plain NATS (micro) service."""
    prefix = _prefix()

    async def respond(msg: Any) -> None:
        await raw.publish(msg.reply, body, headers=headers)

    await raw.subscribe(f"{prefix}{SERVICE}.Unary", cb=respond)
    await _settle(raw)
    async with protobind.connect(f"{nats_server}?prefix={prefix}") as channel:
        with pytest.raises(RpcError) as info:
            await ConformanceServiceClient(channel).unary(Request(), timeout=5)
    assert info.value.code is code
    if message is not None:
        assert info.value.message == message


async def test_metadata_binary_and_repeated_values(broker_url: str) -> None:
    seen: dict[str, list[Any]] = {}

    class Echo(ConformanceService):
        async def unary(self, request: Request, context: protobind.Context) -> Response:
            for key in context.metadata:
                seen[key] = context.metadata.get_all(key)
            context.set_header("x-out-bin", b"\x00\xfe")
            context.set_trailer("x-done", "yes")
            return Response()

    served = await _serve(broker_url, Echo())
    try:
        async with protobind.connect(served.url) as channel:
            call = protobind.CallInfo()
            metadata = protobind.Metadata([("x-key-bin", b"\x01\x02"), ("x-key-bin", b"\xff"), ("x-t", "a")])
            metadata.add("x-t", "b")
            await ConformanceServiceClient(channel).unary(Request(), metadata=metadata, call=call, timeout=5)
        assert seen["x-key-bin"] == [b"\x01\x02", b"\xff"]
        assert seen["x-t"] == ["a,b"]  # joined with "," as gRPC allows for repeated headers
        assert call.headers["x-out-bin"] == b"\x00\xfe"
        assert call.trailers["x-done"] == "yes"
    finally:
        await served.server.stop(0)


async def test_no_responders_is_unavailable_at_once(broker_url: str) -> None:
    async with protobind.connect(f"{broker_url}?prefix={_prefix()}") as channel:
        client = ConformanceServiceClient(channel)
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            await client.unary(Request(), timeout=10)
        assert info.value.code is Code.UNAVAILABLE
        with pytest.raises(RpcError) as stream_info:
            async for _ in client.server_stream(Request(), timeout=10):
                pass
        assert stream_info.value.code is Code.UNAVAILABLE
        assert time.monotonic() - started < 2.0  # far from the 10 s timeouts


async def test_deadline_from_a_raw_header_cancels_the_handler(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, service = nats_served
    request = Request(text="late", behavior=Behavior(sleep_ms=3000))
    msg = await raw.request(
        server.subject("Unary"),
        request.SerializeToString(),
        headers={"Protobind-Timeout-Ms": "100"},
        timeout=5,
    )
    assert msg.headers["Protobind-Status"] == str(int(Code.DEADLINE_EXCEEDED))
    assert "late" in service.cancelled


async def test_one_way_publish_runs_the_handler(nats_server: str, raw: Any) -> None:
    service = Recorder()
    served = await _serve(nats_server, service)
    try:
        await raw.publish(served.subject("Unary"), Request().SerializeToString())
        await eventually(lambda: service.calls == 1)
    finally:
        await served.server.stop(1.0)


async def test_oneway_client_publishes_without_a_reply_subject(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, service = nats_served
    seen: list[Any] = []

    async def tap_message(msg: Any) -> None:
        seen.append(msg)

    tap = await raw.subscribe(server.subject("Notify"), cb=tap_message)
    await _settle(raw)
    async with protobind.connect(server.url) as channel:
        assert await ConformanceServiceClient(channel).notify(Request(text="one-way")) is None
    await service.until(lambda: service.notified == ["one-way"])
    await eventually(lambda: len(seen) == 1)
    assert seen[0].reply == ""
    assert Request.FromString(seen[0].data).text == "one-way"
    await tap.unsubscribe()


async def test_oneway_method_called_with_a_reply_is_acknowledged(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, service = nats_served
    msg = await raw.request(server.subject("Notify"), Request(text="gate").SerializeToString(), timeout=5)
    assert (msg.data, msg.headers) == (b"", None)  # Empty, no error, while the handler waits
    await service.until(lambda: "gate" in service.entered)
    assert service.notified == []
    service.gate.set()
    await service.until(lambda: service.notified == ["gate"])
    bad = await raw.request(server.subject("Notify"), b"\xff\xff\xff\xff", timeout=5)
    assert bad.headers["Protobind-Status"] == str(int(Code.INVALID_ARGUMENT))


async def test_bad_oneway_message_is_logged(
    nats_served: tuple[Served, Conformance], raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, service = nats_served
    await raw.publish(server.subject("Notify"), b"\xff\xff\xff\xff")
    await raw.publish(server.subject("Notify"), Request(text="fine").SerializeToString())
    await service.until(lambda: service.notified == ["fine"])
    assert any(
        "INVALID_ARGUMENT" in r.getMessage() and server.subject("Notify") in r.getMessage()
        for r in caplog.records
    )


# --- bad input ----------------------------------------------------------------------------------------


async def test_bad_input_gets_clear_errors_and_service_keeps_serving(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, _ = nats_served

    async def status(subject: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        msg = await raw.request(subject, body, headers=headers, timeout=5)
        return int(msg.headers["Protobind-Status"]), msg.headers["Nats-Service-Error"]

    code, message = await status(server.subject("Unary"), b"\xff\xff\xff\xff garbage")
    assert code == Code.INVALID_ARGUMENT and "Request" in message
    json_headers = {"Content-Type": "application/json"}
    code, message = await status(server.subject("Unary"), b'{"number": "not a number"}', json_headers)
    assert code == Code.INVALID_ARGUMENT
    code, _ = await status(server.subject("Unary"), b'{"noSuchField": 1}', json_headers)
    assert code == Code.INVALID_ARGUMENT
    code, _ = await status(server.subject("Unary"), b"{", json_headers)
    assert code == Code.INVALID_ARGUMENT
    code, message = await status(server.subject("NoSuchMethod"), b"")
    assert code == Code.UNIMPLEMENTED and "NoSuchMethod" in message
    code, _ = await status(server.subject("Unary"), b"", {"Content-Type": "text/plain"})
    assert code == Code.INVALID_ARGUMENT
    code, _ = await status(server.subject("Unary"), b"", {"Protobind-Timeout-Ms": "soon"})
    assert code == Code.INVALID_ARGUMENT
    code, _ = await status(server.subject("Unary"), b"", {"x-k-bin": "%%%"})
    assert code == Code.INVALID_ARGUMENT
    async with protobind.connect(server.url) as channel:
        assert (await ConformanceServiceClient(channel).unary(Request(text="ok"), timeout=5)).text == "ok"


async def test_streaming_method_called_like_unary_is_refused(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, _ = nats_served
    msg = await raw.request(server.subject("ServerStream"), Request().SerializeToString(), timeout=5)
    assert msg.headers["Protobind-Status"] == str(int(Code.INVALID_ARGUMENT))
    assert "Protobind-Frame: open" in msg.headers["Nats-Service-Error"]


async def test_stream_to_an_unknown_method_is_unimplemented(
    broker_served: tuple[Served, Conformance],
) -> None:
    server, _ = broker_served
    method = protobind.MethodInfo(
        name="NoSuchStream",
        service=SERVICE,
        input_type=Request,
        output_type=Response,
        kind=protobind.MethodKind.SERVER_STREAMING,
    )
    async with protobind.connect(server.url) as channel:
        with pytest.raises(RpcError) as info:
            async for _ in channel.server_stream(method, Request(), timeout=5):
                pass
    assert info.value.code is Code.UNIMPLEMENTED


async def test_metadata_that_cannot_be_a_header(broker_url: str) -> None:
    class BadHeaders(Conformance):
        async def unary(self, request: Request, context: protobind.Context) -> Response:
            context.set_header("bad key", "v")
            return Response()

    served = await _serve(broker_url, BadHeaders())
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            with pytest.raises(RpcError) as info:
                await client.unary(Request(), metadata={"bad key": "v"}, timeout=5)
            assert info.value.code is Code.INVALID_ARGUMENT
            with pytest.raises(RpcError) as info:
                await client.unary(Request(), timeout=5)
            assert info.value.code is Code.INTERNAL
    finally:
        await served.server.stop(0)


async def test_messages_above_max_payload_are_resource_exhausted(nats_servers: NatsServers) -> None:
    nats_url, _ = nats_servers.start(config="max_payload: 4096")
    served = await _serve(nats_url, Conformance())
    try:
        async with protobind.connect(served.url) as channel:
            client = ConformanceServiceClient(channel)
            with pytest.raises(RpcError) as info:
                await client.unary(Request(payload=b"x" * 5000), timeout=5)
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            with pytest.raises(RpcError) as info:
                await client.unary(Request(behavior=Behavior(response_size=5000)), timeout=5)
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            with pytest.raises(RpcError) as info:
                await client.client_stream([Request(payload=b"x" * 5000)], timeout=5)
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            # one-way messages: the broker's publish checks the body, the engine the headers
            with pytest.raises(RpcError) as info:
                await client.notify(Request(payload=b"x" * 5000))
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            with pytest.raises(RpcError) as info:
                await client.notify(Request(payload=b"x" * 3000), metadata={"x-big": "y" * 1500})
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            # the connection survived all of that
            assert (await client.unary(Request(text="still"), timeout=5)).text == "still"
    finally:
        await served.server.stop(0)


# --- streaming: flow control, cancellation, liveness ----------------------------------------------


class Streams(ConformanceService):
    def __init__(self) -> None:
        self.produced = 0
        self.consumed = 0
        self.cancelled = asyncio.Event()
        self.paused = asyncio.Event()

    async def server_stream(self, request: Request, context: protobind.Context) -> AsyncIterator[Response]:
        try:
            for index in range(request.behavior.stream_count or 1000):
                self.produced = index + 1
                yield Response(index=index)
                if request.behavior.sleep_ms:
                    await asyncio.sleep(request.behavior.sleep_ms / 1000)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def client_stream(self, requests: AsyncIterator[Request], context: protobind.Context) -> Response:
        async for _ in requests:
            self.consumed += 1
            if self.consumed == 2:
                self.paused.set()
                await asyncio.sleep(0.5)
        return Response(request_count=self.consumed)


async def test_server_stream_flow_control_bounds_a_fast_producer(broker_url: str) -> None:
    service = Streams()
    served = await _serve(broker_url, service, "&window=8")
    try:
        async with protobind.connect(served.url + "&window=8") as channel:
            responses = ConformanceServiceClient(channel).server_stream(Request(), timeout=30)
            first = [(await anext(responses)).index for _ in range(3)]
            await asyncio.sleep(0.3)
            # 8 in flight, plus one produced and waiting for credit
            assert service.produced <= 3 + 8 + 1
            rest = [r.index async for r in responses]
        assert first + rest == list(range(1000))
    finally:
        await served.server.stop(0)


async def test_client_stream_flow_control_bounds_a_fast_producer(broker_url: str) -> None:
    service = Streams()
    served = await _serve(broker_url, service, "&window=4")
    produced = 0

    async def requests() -> AsyncIterator[Request]:
        nonlocal produced
        for _ in range(200):
            produced += 1
            yield Request()

    try:
        async with protobind.connect(served.url) as channel:
            call = asyncio.ensure_future(
                ConformanceServiceClient(channel).client_stream(requests(), timeout=30)
            )
            await asyncio.wait_for(service.paused.wait(), 5)
            await asyncio.sleep(0.2)
            assert produced <= 2 + 4 + 1
            reply = await call
        assert reply.request_count == 200
    finally:
        await served.server.stop(0)


async def test_leaving_a_stream_early_cancels_the_handler(broker_url: str) -> None:
    service = Streams()
    served = await _serve(broker_url, service)
    try:
        async with protobind.connect(served.url) as channel:
            responses = ConformanceServiceClient(channel).server_stream(
                Request(behavior=Behavior(sleep_ms=50)), timeout=30
            )
            assert (await anext(responses)).index == 0
            await responses.aclose()
            await asyncio.wait_for(service.cancelled.wait(), 2)
    finally:
        await served.server.stop(0)


async def test_client_that_vanishes_is_noticed_by_the_server(nats_server: str) -> None:
    service = Streams()
    served = await _serve(nats_server, service, "&heartbeat=0.2")
    try:
        channel = await protobind.connect(served.url + "&heartbeat=0.2").open()
        responses = ConformanceServiceClient(channel).server_stream(
            Request(behavior=Behavior(sleep_ms=100)), timeout=30
        )
        assert (await anext(responses)).index == 0
        # the NATS connection goes away without a word to the server (no cancel frame)
        await channel.transport.broker.client.close()  # type: ignore[attr-defined]
        await asyncio.wait_for(service.cancelled.wait(), 3)
        await channel.close()
    finally:
        await served.server.stop(0)


_SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path[:0] = [{root!r}, {gen!r}]
    import protobind
    from tests.conformance import Conformance

    async def main():
        server = protobind.Server([Conformance()])
        await server.start(sys.argv[1])
        print("READY", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@contextlib.asynccontextmanager
async def _server_process(url: str, gen_dir: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A protobind server of the conformance service on ``url``, in a process of its own (a test
    kills it), ready when entered and reaped when left."""
    script = _SERVER_SCRIPT.format(root=str(gen_dir.parent.parent), gen=str(gen_dir))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, url, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 10)).strip() == b"READY"
        yield process
    finally:
        await reap(process)


async def test_server_that_vanishes_is_noticed_by_the_client(nats_server: str, gen_dir: Path) -> None:
    prefix = _prefix()
    url = f"{nats_server}?prefix={prefix}&heartbeat=0.2"
    async with _server_process(url, gen_dir) as process, protobind.connect(url) as channel:
        responses = ConformanceServiceClient(channel).server_stream(
            Request(behavior=Behavior(stream_count=1000, sleep_ms=100)), timeout=60
        )
        assert (await anext(responses)).index == 0
        process.kill()
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            async for _ in responses:
                pass
        assert info.value.code is Code.UNAVAILABLE
        assert time.monotonic() - started < 3.0


async def test_unary_call_to_a_server_that_vanishes_fails_fast(nats_server: str, gen_dir: Path) -> None:
    """Without liveness probes the caller would wait for its whole deadline (20 s here)."""
    prefix = _prefix()
    url = f"{nats_server}?prefix={prefix}&heartbeat=0.2"
    async with _server_process(url, gen_dir) as process, protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        # a long call that is alive is not disturbed by the probes
        reply = await client.unary(Request(text="slow", behavior=Behavior(sleep_ms=1500)), timeout=20)
        assert reply.text == "slow"
        call = asyncio.ensure_future(client.unary(Request(behavior=Behavior(sleep_ms=15000)), timeout=20))
        await asyncio.sleep(0.5)
        process.kill()
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.code is Code.UNAVAILABLE
        assert time.monotonic() - started < 10.0


async def test_bidi_stream_error_mid_stream_and_trailers(broker_served: tuple[Served, Conformance]) -> None:
    server, _ = broker_served
    failing = Request(text="bad", behavior=Behavior(error_code=int(Code.ABORTED), error_message="stop"))
    call = protobind.CallInfo()
    seen = []
    async with protobind.connect(server.url) as channel:
        with pytest.raises(RpcError) as info:
            async for reply in ConformanceServiceClient(channel).bidi_stream(
                [Request(text="a"), Request(text="b"), failing, Request(text="never")],
                metadata={"x-echo-t": "v"},
                call=call,
                timeout=5,
            ):
                seen.append(reply.text)
    assert seen == ["a", "b"]
    assert (info.value.code, info.value.message) == (Code.ABORTED, "stop")
    assert call.headers["x-echo-t-header"] == "v"
    assert call.trailers["x-echo-t-trailer"] == "v"


async def test_empty_stream_still_delivers_headers_and_trailers(
    broker_served: tuple[Served, Conformance],
) -> None:
    server, _ = broker_served
    call = protobind.CallInfo()
    async with protobind.connect(server.url) as channel:
        replies = [
            r
            async for r in ConformanceServiceClient(channel).server_stream(
                Request(behavior=Behavior(stream_count=0)), metadata={"x-echo-z": "1"}, call=call, timeout=5
            )
        ]
    assert replies == []
    assert call.headers["x-echo-z-header"] == "1"
    assert call.trailers["x-echo-z-trailer"] == "1"


async def test_raw_peer_speaks_the_streaming_protocol(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    """A server stream driven by hand with nats-py, following docs/protocols.md."""
    server, _ = nats_served
    inbox = raw.new_inbox()
    frames: asyncio.Queue[Any] = asyncio.Queue()
    sub = await raw.subscribe(inbox, cb=frames.put)
    request = Request(text="raw", behavior=Behavior(stream_count=6))
    await raw.publish(
        server.subject("ServerStream"),
        request.SerializeToString(),
        reply=inbox,
        headers={"Protobind-Frame": "open", "Protobind-Window": "2", "Protobind-Heartbeat-Ms": "5000"},
    )
    accept = await asyncio.wait_for(frames.get(), 5)
    assert accept.headers["Protobind-Frame"] == "accept"
    server_inbox = accept.reply
    indexes = []
    while True:
        frame = await asyncio.wait_for(frames.get(), 5)
        if frame.headers is None:
            indexes.append(Response.FromString(frame.data).index)
            # acknowledge each message: cumulative count of messages consumed
            # every frame names the sender's inbox as its reply subject: the stream is bound to it
            await raw.publish(
                server_inbox,
                b"",
                reply=inbox,
                headers={"Protobind-Frame": "ack", "Protobind-Ack": str(len(indexes))},
            )
        elif frame.headers["Protobind-Frame"] == "end":
            assert frame.headers["Protobind-Status"] == "0"
            assert frame.headers["Protobind-Count"] == "6"
            break
    assert indexes == list(range(6))
    await sub.unsubscribe()


async def test_a_peer_that_ignores_the_window_is_stopped(
    nats_served: tuple[Served, Conformance], raw: Any
) -> None:
    server, _ = nats_served
    inbox = raw.new_inbox()
    frames: asyncio.Queue[Any] = asyncio.Queue()
    sub = await raw.subscribe(inbox, cb=frames.put)
    await raw.publish(
        server.subject("ClientStream"),
        b"",
        reply=inbox,
        headers={"Protobind-Frame": "open", "Protobind-Window": "4"},
    )
    accept = await asyncio.wait_for(frames.get(), 5)
    window = int(accept.headers["Protobind-Window"])
    for _ in range(window * 3):
        await raw.publish(accept.reply, Request().SerializeToString(), reply=inbox)
    while True:
        frame = await asyncio.wait_for(frames.get(), 5)
        if frame.headers and frame.headers.get("Protobind-Frame") == "end":
            assert frame.headers["Protobind-Status"] == str(int(Code.RESOURCE_EXHAUSTED))
            break
    await sub.unsubscribe()


# --- micro discovery ------------------------------------------------------------------------------


async def _gather_replies(raw: Any, subject: str, wait: float = 0.3) -> list[dict[str, Any]]:
    inbox = raw.new_inbox()
    replies: list[dict[str, Any]] = []

    async def collect(msg: Any) -> None:
        replies.append(json.loads(msg.data))

    sub = await raw.subscribe(inbox, cb=collect)
    await raw.publish(subject, b"", reply=inbox)
    await asyncio.sleep(wait)
    await sub.unsubscribe()
    return replies


async def test_micro_discovery(nats_served: tuple[Served, Conformance], raw: Any) -> None:
    server, _ = nats_served
    async with protobind.connect(server.url) as channel:
        client = ConformanceServiceClient(channel)
        await client.unary(Request(), timeout=5)
        with pytest.raises(RpcError):
            await client.unary(Request(behavior=Behavior(error_code=5, error_message="x")), timeout=5)
    name = "protobind_conformance_v1_ConformanceService"
    (micro,) = server.binding._discovery.services
    ours = micro.id

    for subject in ("$SRV.PING", f"$SRV.PING.{name}", f"$SRV.PING.{name}.{ours}"):
        replies = [r for r in await _gather_replies(raw, subject) if r["id"] == ours]
        assert len(replies) == 1, subject
        ping = ServicePing.from_dict(replies[0])
        assert (ping.name, replies[0]["type"]) == (name, "io.nats.micro.v1.ping_response")

    (info_reply,) = [r for r in await _gather_replies(raw, f"$SRV.INFO.{name}") if r["id"] == ours]
    info = ServiceInfo.from_dict(info_reply)
    assert info_reply["type"] == "io.nats.micro.v1.info_response"
    assert info.metadata["protobind.service"] == SERVICE
    endpoints = {e.name: e for e in info.endpoints}
    assert set(endpoints) == {"Unary", "Lookup", "ServerStream", "ClientStream", "BidiStream", "Notify"}
    assert endpoints["Unary"].subject == server.subject("Unary")
    assert endpoints["Unary"].queue_group == SERVICE  # the default group: the service's full name
    assert endpoints["BidiStream"].metadata["protobind.kind"] == "bidi_streaming"

    (stats_reply,) = await _gather_replies(raw, f"$SRV.STATS.{name}.{ours}")
    stats = ServiceStats.from_dict(stats_reply)
    assert stats_reply["type"] == "io.nats.micro.v1.stats_response"
    unary = next(e for e in stats.endpoints if e.name == "Unary")
    assert (unary.num_requests, unary.num_errors) == (2, 1)
    assert unary.last_error == "NOT_FOUND: x"
    assert unary.processing_time >= unary.average_processing_time > 0
    assert stats.started <= datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    assert await _gather_replies(raw, f"$SRV.INFO.{name}.not-this-one") == []


# --- reconnection, stop, TLS ---------------------------------------------------------------------------


async def test_calls_recover_after_nats_server_restart(nats_servers: NatsServers) -> None:
    nats_url, stop_nats = nats_servers.start()
    port = int(nats_url.rsplit(":", 1)[1])
    served = await _serve(nats_url, Conformance(), "&reconnect_wait=0.1")
    try:
        async with protobind.connect(served.url + "&reconnect_wait=0.1") as channel:
            client = ConformanceServiceClient(channel)
            assert (await client.unary(Request(text="before"), timeout=5)).text == "before"
            in_flight = asyncio.ensure_future(
                client.unary(Request(behavior=Behavior(sleep_ms=2000)), timeout=30)
            )
            await asyncio.sleep(0.1)
            stop_nats()
            started = time.monotonic()
            with pytest.raises(RpcError) as info:
                await in_flight
            assert info.value.code is Code.UNAVAILABLE
            for _ in range(3):
                with pytest.raises(RpcError) as info:
                    await client.unary(Request(text="gap"), timeout=1)
                assert info.value.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
            assert time.monotonic() - started < 5
            nats_servers.start(port)
            deadline = time.monotonic() + 15
            while True:
                try:
                    reply = await client.unary(Request(text="after"), timeout=1)
                    break
                except RpcError as exc:
                    assert exc.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
                    assert time.monotonic() < deadline, "calls did not recover"
                    await asyncio.sleep(0.1)
            assert reply.text == "after"
    finally:
        await served.server.stop(0)


async def test_oneway_calls_during_a_reconnection_wait_in_the_connection(nats_servers: NatsServers) -> None:
    """While the NATS connection is being re-established a one-way call is not refused: its
    message waits in the connection's buffer (as nats-py's publish does) and is sent after
    reconnection; delivery stays at most once (the server may not have resubscribed yet)."""
    nats_url, stop_nats = nats_servers.start()
    port = int(nats_url.rsplit(":", 1)[1])
    service = Recorder()
    served = await _serve(nats_url, service, "&reconnect_wait=0.1")
    try:
        async with protobind.connect(served.url + "&reconnect_wait=0.1") as channel:
            client = ConformanceServiceClient(channel)
            await client.notify(Request(text="before"))
            await service.until(lambda: service.notified == ["before"])
            broker = channel.transport.broker  # type: ignore[attr-defined]
            stop_nats()
            await eventually(lambda: not broker.is_connected)
            assert await client.notify(Request(text="during")) is None  # kept, not refused
            nats_servers.start(port)
            await eventually(lambda: broker.is_connected)
            for attempt in range(50):  # the server resubscribes on its own schedule
                await client.notify(Request(text=f"after-{attempt}"))
                await asyncio.sleep(0.1)
                if any(t.startswith("after-") for t in service.notified):
                    break
            assert any(t.startswith("after-") for t in service.notified)
    finally:
        await served.server.stop(0)


async def test_a_call_while_disconnected_fails_at_once_with_unavailable(nats_servers: NatsServers) -> None:
    """While the connection is down (reconnecting), a unary call is refused at once with
    UNAVAILABLE naming the broker, not kept for after reconnection until its deadline."""
    nats_url, stop_nats = nats_servers.start()
    served = await _serve(nats_url, Conformance(), "&reconnect_wait=0.1")
    try:
        async with protobind.connect(served.url + "&reconnect_wait=0.1") as channel:
            client = ConformanceServiceClient(channel)
            assert (await client.unary(Request(text="before"), timeout=5)).text == "before"
            stop_nats()
            broker = channel.transport.broker  # type: ignore[attr-defined]
            await eventually(lambda: not broker.is_connected)
            started = time.monotonic()
            with pytest.raises(RpcError) as info:
                await client.unary(Request(text="gap"), timeout=20)
            assert (info.value.code, info.value.message) == (Code.UNAVAILABLE, "not connected to nats")
            assert time.monotonic() - started < 2
    finally:
        await served.server.stop(0)


async def test_stop_drains_in_flight_calls_and_refuses_new_ones(broker_url: str) -> None:
    service = Recorder()
    served = await _serve(broker_url, service)
    async with protobind.connect(served.url) as channel:
        client = ConformanceServiceClient(channel)
        slow = asyncio.ensure_future(
            client.unary(Request(text="slow", behavior=Behavior(sleep_ms=300)), timeout=5)
        )
        await eventually(lambda: service.running == 1)
        await served.server.stop(grace=2.0)
        assert (await slow).text == "slow"
        with pytest.raises(RpcError) as info:
            await client.unary(Request(), timeout=5)
        assert info.value.code is Code.UNAVAILABLE


async def test_stop_after_grace_fails_calls_with_unavailable(broker_url: str) -> None:
    service = Recorder()
    served = await _serve(broker_url, service)
    async with protobind.connect(served.url) as channel:
        client = ConformanceServiceClient(channel)
        slow = asyncio.ensure_future(client.unary(Request(behavior=Behavior(sleep_ms=5000)), timeout=10))
        stream = ConformanceServiceClient(channel).server_stream(
            Request(behavior=Behavior(stream_count=100, sleep_ms=100)), timeout=10
        )
        await anext(stream)
        await eventually(lambda: service.running == 1)
        await served.server.stop(grace=0.1)
        with pytest.raises(RpcError) as info:
            await slow
        assert info.value.code is Code.UNAVAILABLE
        with pytest.raises(RpcError) as info:
            async for _ in stream:
                pass
        assert info.value.code is Code.UNAVAILABLE


async def test_tls(nats_servers: NatsServers, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    nats_url, _ = nats_servers.start(args=["--tls", "--tlscert", str(cert), "--tlskey", str(key)])
    assert nats_url.startswith("tls://")
    served = await _serve(nats_url, Conformance(), f"&tls_ca={cert}")
    try:
        async with protobind.connect(served.url) as channel:
            reply = await ConformanceServiceClient(channel).unary(Request(text="secure"), timeout=5)
        assert reply.text == "secure"
    finally:
        await served.server.stop(0)


def test_error_details_of_unknown_types_stay_any() -> None:
    from protobind.broker._wire import error_body, read_error
    from protobind.codec import JSON, PROTO

    unknown = any_pb2.Any(type_url="type.googleapis.com/some.Unknown", value=b"\x08\x01")
    error = RpcError(Code.ABORTED, "m", [unknown])
    for codec in (JSON, PROTO):
        headers = {"Protobind-Status": "10"}
        if codec is JSON:
            headers["Content-Type"] = "application/json"
        back = read_error(headers, error_body(error, codec))
        assert back is not None
        assert back.details[0].type_url == unknown.type_url
        assert back.details[0].value == unknown.value


async def test_json_client_accepts_response_fields_it_does_not_know(nats_server: str, raw: Any) -> None:
    """A server whose contract gained a response field must not break older JSON clients."""
    prefix = _prefix()

    async def answer(msg: Any) -> None:
        await raw.publish(
            msg.reply, b'{"text": "new", "addedLater": 7}', headers={"Content-Type": "application/json"}
        )

    await raw.subscribe(f"{prefix}{SERVICE}.Unary", cb=answer)
    await _settle(raw)
    async with protobind.connect(f"{nats_server}?prefix={prefix}&codec=json") as channel:
        reply = await ConformanceServiceClient(channel).unary(Request(), timeout=5)
    assert reply.text == "new"


# --- the mailbox between a broker and the engine's consumers ------------------------------------


async def test_mailbox_wakes_one_consumer_per_message_and_passes_on_a_lost_wake_up() -> None:
    from protobind.broker.base import Mailbox

    mailbox = Mailbox()
    woken: list[str] = []

    async def consumer(name: str) -> None:
        await mailbox.wait()
        woken.append(name)

    first = asyncio.ensure_future(consumer("first"))
    second = asyncio.ensure_future(consumer("second"))
    await asyncio.sleep(0)
    mailbox.put("m1")  # type: ignore[arg-type]
    # the first waiter is woken, then cancelled before it ran: its wake-up goes to the second
    first.cancel()
    await asyncio.wait_for(second, 5)
    assert woken == ["second"] and first.cancelled()
    assert list(mailbox.items) == ["m1"]
    await asyncio.wait_for(mailbox.wait(), 5)  # a message is there: no waiting


async def test_consumers_take_every_message_in_order_from_the_mailbox() -> None:
    from protobind.broker._consumers import ConsumerPool, Consumers
    from protobind.broker.base import Mailbox

    class Inbound:
        def __init__(self) -> None:
            self.mailbox = Mailbox()

        def taken(self, message: Any) -> None:
            pass

        def done(self, message: Any) -> None:
            pass

        async def unsubscribe(self) -> None:
            pass

    class Message:
        def __init__(self, n: int) -> None:
            self.subject, self.reply, self.data, self.headers = "s", "", b"", None
            self.n = n

    seen: list[int] = []
    release = asyncio.Event()

    async def handle(msg: Any, consumers: Consumers) -> None:
        seen.append(msg.n)
        if msg.n == 0:  # the first handler waits: another consumer takes over
            consumers.waiting()
            await release.wait()

    async def shed(msg: Any) -> None:
        raise AssertionError("one-way messages are never shed")

    inbound = Inbound()
    consumers = Consumers(inbound, handle, ConsumerPool(4), 0, shed)  # type: ignore[arg-type]
    for n in range(100):
        inbound.mailbox.put(Message(n))  # type: ignore[arg-type]
        if n % 7 == 0:
            await asyncio.sleep(0)
    await eventually(lambda: len(seen) == 100)
    assert seen == list(range(100))  # all of them, in order, while the first handler still waits
    release.set()
    await asyncio.sleep(0.01)
    for task in consumers.tasks:
        task.cancel()


async def test_closing_a_connection_the_server_stopped_reading_drops_the_socket() -> None:
    """A private nats-server stopped (SIGSTOP: its socket open, nothing read) under megabytes that
    nats-py still buffers: close() gives the server CLOSE_WAIT seconds, then drops the socket and
    returns (nats-py's own close waited for the buffer to drain, forever)."""
    url, stop = start_nats_server()
    try:
        broker = await open_broker(settings_from(url, {}), "stalled")
        os.kill(stop.process.pid, signal.SIGSTOP)
        # more than the sockets hold; a publish slows down once nats-py's buffer is full: 5 s at most
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + 5
        for _ in range(200):
            if loop.time() > stop_at:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(broker.publish("stalled.subject", b"x" * 500_000), 1.0)
        closing = asyncio.ensure_future(broker.close())
        # a guard against the hang, far above the close's own bound (2 x CLOSE_WAIT)
        await asyncio.wait({closing}, timeout=12 * CLOSE_WAIT)
        assert closing.done(), "close() still waiting on a server that reads nothing"
        assert closing.exception() is None
        assert not broker.client.is_connected
    finally:
        os.kill(stop.process.pid, signal.SIGCONT)
        stop()


async def test_buffered_large_payloads_are_queued_as_they_are_between_joined_small_parts(
    nats_server: str, raw: Any
) -> None:
    """Connection.buffer queues a large payload as it is (the transport hands it to sendmsg
    uncopied) and joins its head to the small part before it (the previous message's end, or a
    small message), so the transport needs no pass to join them; what arrives is every message,
    whole, in order."""
    from protobind.nats._connection import open_broker
    from protobind.nats._options import settings_from
    from protobind.nats._transport import LARGE

    received: list[tuple[bytes, dict[str, str] | None]] = []

    async def keep(msg: Any) -> None:
        received.append((msg.data, msg.headers))

    await raw.subscribe("gathered.>", cb=keep)
    await _settle(raw)
    broker = await open_broker(settings_from(nats_server, {}), "gathered-test")
    try:
        client = broker.client
        large = [bytes([n]) * (LARGE + 1000 * n) for n in range(1, 4)]
        client._pending.clear()  # nothing else queued before the batch (no await below)
        assert client.buffer("gathered.a", large[0], "", {"k": "v"})
        assert client.buffer("gathered.b", b"small")
        assert client.buffer("gathered.c", large[1])
        assert client.buffer("gathered.d", large[2], "reply.to")
        queued = list(client._pending)
        assert [part for part in queued if len(part) >= LARGE] == large
        assert all(any(part is payload for payload in large) for part in queued if len(part) >= LARGE)
        # head, payload, end, small+head, payload, end+head, payload, end (a small message is
        # queued whole, as before: joining it costs the small calls more than it saves)
        assert len(queued) == 8
        await broker.settle()
        await eventually(lambda: len(received) == 4)
        assert [data for data, _ in received] == [large[0], b"small", large[1], large[2]]
        assert received[0][1] == {"k": "v"}
        # the one error buffer() can meet is the broker's own, as publish() reports it
        from protobind.broker.base import BrokerError

        with pytest.raises(BrokerError) as buffered:
            broker.buffer("gathered.e", b"x", "", {"bad name": "v"})
        with pytest.raises(BrokerError) as published:
            await broker.publish("gathered.e", b"x", "", {"bad name": "v"})
        assert type(buffered.value) is type(published.value) is BrokerError
    finally:
        await broker.close()
