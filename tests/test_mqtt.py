"""The MQTT 5 binding against Mosquitto: the topic mapping, native request/reply (response topic and
correlation data), shared subscriptions, raw clients (zmqtt, mosquitto_pub/sub), credentials and
TLS, reconnection and faults. The behaviour suite (test_behaviour.py) and the conformance matrix
cover the call semantics shared with the other transports.

Most tests use the machine's Mosquitto (127.0.0.1:1883) through the transport's test harness, with
topics unique to the run; those that stop, restart or configure a broker start a private one
(tests/mosquitto.py)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import zmqtt
from google.rpc import status_pb2

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.mqtt import TRANSPORT
from protobind.mqtt._connection import open_broker, subject_of, topic_of
from protobind.mqtt._options import settings_from

from .conformance import SERVICE, Conformance
from .mosquitto import Mosquitto
from .processes import reap
from .servers import check_groups_fan_out
from .support import eventually
from .tls import self_signed

SERVICE_TOPIC = SERVICE.replace(".", "/")


@pytest.fixture
async def fresh_url() -> AsyncIterator[Callable[[], str]]:
    """A URL on the shared Mosquitto with a topic prefix unique to this run, for each server."""
    async with TRANSPORT.test_harness() as fresh:
        yield fresh


def _prefix_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["prefix"]


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


@pytest.fixture
async def raw(fresh_url: Callable[[], str]) -> AsyncIterator[Any]:
    host, port = _host_port(fresh_url())
    client = zmqtt.create_client(host, port, version="5.0")
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


class Recorder(Conformance):
    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.name = name
        self.calls = 0

    async def unary(self, request: Request, context: protobind.Context) -> Response:
        self.calls += 1
        if request.behavior.error_code:
            return await super().unary(request, context)
        if request.behavior.sleep_ms:
            await asyncio.sleep(request.behavior.sleep_ms / 1000)
        return Response(text=self.name or request.text, transport=context.transport)


def test_import_protobind_loads_no_zmqtt() -> None:
    code = "import sys, protobind, protobind.mqtt; assert 'zmqtt' not in sys.modules, 'zmqtt imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_subjects_map_onto_topics_both_ways() -> None:
    assert topic_of("greeter.v1.Greeter.SayHello") == "greeter/v1/Greeter/SayHello"
    assert topic_of("p.greeter.v1.Greeter.*") == "p/greeter/v1/Greeter/+"
    assert topic_of("$SRV.INFO") == "_SRV/INFO"
    assert topic_of("t0.$PROTOBIND.CANCEL") == "t0/_PROTOBIND/CANCEL"
    assert topic_of("$PROTOBIND.DURABLE.>") == "_PROTOBIND/DURABLE/#"
    for subject in ("greeter.v1.Greeter.SayHello", "$SRV.INFO.x", "t0.$PROTOBIND.ASYNCAPI.a.B"):
        assert subject_of(topic_of(subject)) == subject


async def test_calls_share_one_inbox_with_correlation_data(fresh_url: Callable[[], str], raw: Any) -> None:
    """Every call of a connection names the same response topic, which ends in the connection's
    random client id; the correlation data (a random 128-bit token) tells the calls apart."""
    url = fresh_url()
    prefix = _prefix_of(url)
    server = protobind.Server([Recorder()])
    (bound,) = await server.start(url)
    seen: list[zmqtt.Message] = []
    async with raw.subscribe(f"{prefix}/{SERVICE_TOPIC}/Unary") as spy:

        async def watch() -> None:
            async for message in spy:
                seen.append(message)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            async with protobind.connect(bound) as channel:
                client = ConformanceServiceClient(channel)
                replies = await asyncio.gather(
                    *(client.unary(Request(text=str(i)), timeout=10) for i in range(100))
                )
                assert [r.text for r in replies] == [str(i) for i in range(100)]
                await eventually(lambda: len(seen) == 100)
        finally:
            watcher.cancel()
            await server.stop(0)
    topics = {m.properties.response_topic for m in seen if m.properties}
    assert len(topics) == 1
    (topic,) = topics
    assert topic.startswith("_INBOX/protobind-") and len(topic.rpartition("-")[2]) == 32
    tokens = {m.properties.correlation_data for m in seen if m.properties}
    assert len(tokens) == 100
    assert all(token is not None and len(token) == 32 for token in tokens)


async def test_raw_request_is_answered_on_its_response_topic_with_its_correlation_data(
    fresh_url: Callable[[], str], raw: Any
) -> None:
    url = fresh_url()
    prefix = _prefix_of(url)
    server = protobind.Server([Recorder()])
    await server.start(url)
    try:
        properties = zmqtt.PublishProperties(
            response_topic=f"{prefix}/my/replies",
            correlation_data=b"\x00\xffany bytes",
            user_properties=(("x-tenant", "blue"),),
        )
        answer = await raw.request(
            f"{prefix}/{SERVICE_TOPIC}/Unary",
            Request(text="raw").SerializeToString(),
            timeout=10,
            properties=properties,
        )
        assert answer.topic == f"{prefix}/my/replies"
        assert answer.properties.correlation_data == b"\x00\xffany bytes"
        assert Response.FromString(answer.payload).text == "raw"
        # an error: the status in user properties, a google.rpc.Status body
        bad = Request(behavior=Behavior(error_code=Code.NOT_FOUND.value, error_message="gone"))
        answer = await raw.request(
            f"{prefix}/{SERVICE_TOPIC}/Unary", bad.SerializeToString(), timeout=10, properties=properties
        )
        headers = dict(answer.properties.user_properties)
        assert headers["Protobind-Status"] == str(Code.NOT_FOUND.value)
        status = status_pb2.Status.FromString(answer.payload)
        assert (status.code, status.message) == (Code.NOT_FOUND.value, "gone")
    finally:
        await server.stop(0)


async def test_replicas_share_and_groups_fan_out(fresh_url: Callable[[], str]) -> None:
    """2 groups x 2 replicas x 200 one-way calls: every group handles every call once (shared
    subscriptions ``$share/{group}/...``)."""
    await check_groups_fan_out(fresh_url(), count=200, timeout=30)


async def test_a_call_nobody_serves_ends_at_its_deadline(fresh_url: Callable[[], str]) -> None:
    """MQTT has no "no responders": the broker drops the request without a word."""
    async with protobind.connect(fresh_url()) as channel:
        with pytest.raises(RpcError) as info:
            await ConformanceServiceClient(channel).unary(Request(), timeout=0.5)
    assert info.value.code is Code.DEADLINE_EXCEEDED


async def test_context_transport_is_mqtt(fresh_url: Callable[[], str]) -> None:
    server = protobind.Server([Recorder("x")])
    (bound,) = await server.start(fresh_url())
    try:
        async with protobind.connect(bound) as channel:
            reply = await ConformanceServiceClient(channel).unary(Request(), timeout=10)
        assert reply.transport == "mqtt"
    finally:
        await server.stop(0)


# --- connections, credentials, TLS ---------------------------------------------------------------


async def test_cannot_connect_is_unavailable_without_credentials(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    mosquitto.stop()
    url = f"mqtt://alice:s3cret-pw@127.0.0.1:{port}"
    with pytest.raises(RpcError) as info:
        async with protobind.connect(url) as channel:
            await ConformanceServiceClient(channel).unary(Request(), timeout=5)
    assert info.value.code is Code.UNAVAILABLE
    assert "s3cret-pw" not in str(info.value)
    with pytest.raises(Exception) as served:
        await protobind.Server([Conformance()]).start(url)
    assert "s3cret-pw" not in str(served.value)


def _password_file(directory: Path, user: str, password: str) -> Path:
    path = directory / "passwd"
    path.touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True)
    return path


async def test_credentials_from_the_url_or_options(mosquitto_factory: Any, tmp_path: Path) -> None:
    secrets = _password_file(tmp_path, "svc", "pa:ss@word")
    broker = mosquitto_factory(extra=f"password_file {secrets}")
    base = broker.url + "?prefix=auth"
    server = protobind.Server(
        [Recorder("ok")], transport_options={"mqtt": {"user": "svc", "password": "pa:ss@word"}}
    )
    (bound,) = await server.start(base)
    try:
        assert "pa:ss@word" not in bound and "pa:ss@word" not in repr(server.urls)
        good = f"mqtt://svc:pa%3Ass%40word@127.0.0.1:{broker.port}?prefix=auth"
        async with protobind.connect(good) as channel:
            assert (await ConformanceServiceClient(channel).unary(Request(), timeout=10)).text == "ok"
        bad = f"mqtt://svc:wrong-pw@127.0.0.1:{broker.port}?prefix=auth"
        with pytest.raises(RpcError) as info:
            async with protobind.connect(bad) as channel:
                await ConformanceServiceClient(channel).unary(Request(), timeout=5)
        assert info.value.code is Code.UNAUTHENTICATED
        assert "wrong-pw" not in str(info.value)
    finally:
        await server.stop(0)


async def test_tls_with_a_ca_and_never_plaintext(mosquitto_factory: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = mosquitto_factory(extra=f"certfile {cert}\nkeyfile {key}")
    url = f"mqtts://127.0.0.1:{tls.port}?prefix=tls&tls_ca={cert}"
    server = protobind.Server([Recorder("secure")])
    await server.start(url)
    try:
        async with protobind.connect(url) as channel:
            reply = await ConformanceServiceClient(channel).unary(Request(), timeout=10)
        assert reply.text == "secure"
        # without the CA the broker's certificate is not trusted: refused, not downgraded
        with pytest.raises(RpcError) as info:
            async with protobind.connect(f"mqtts://127.0.0.1:{tls.port}?connect_timeout=1") as channel:
                await ConformanceServiceClient(channel).unary(Request(), timeout=5)
        assert info.value.code is Code.UNAVAILABLE
    finally:
        await server.stop(0)
    # a TLS option against a plaintext broker: an error, nothing sent in plaintext
    plain = mosquitto_factory()
    with pytest.raises(RpcError) as info:
        async with protobind.connect(f"mqtt://127.0.0.1:{plain.port}?tls_ca={cert}&connect_timeout=1") as ch:
            await ConformanceServiceClient(ch).unary(Request(), timeout=5)
    assert info.value.code is Code.UNAVAILABLE


# --- faults --------------------------------------------------------------------------------------


async def test_calls_in_flight_fail_unavailable_when_the_connection_drops_and_recover(
    mosquitto: Mosquitto,
) -> None:
    url = mosquitto.url + "?prefix=faults&reconnect_wait=0.1"
    server = protobind.Server([Recorder("back")])
    await server.start(url)
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            assert (await client.unary(Request(), timeout=10)).text == "back"
            slow = [
                asyncio.ensure_future(client.unary(Request(behavior=Behavior(sleep_ms=30_000)), timeout=60))
                for _ in range(5)
            ]
            await asyncio.sleep(0.2)
            mosquitto.stop(signal.SIGKILL)
            results = await asyncio.wait_for(asyncio.gather(*slow, return_exceptions=True), 10)
            assert all(isinstance(r, RpcError) and r.code is Code.UNAVAILABLE for r in results), results
            mosquitto.start()  # same port: both sides reconnect and subscribe again

            async def works() -> bool:
                try:
                    return (await client.unary(Request(), timeout=1)).text == "back"
                except RpcError:
                    return False

            loop = asyncio.get_running_loop()
            end = loop.time() + 20
            while not await works():
                assert loop.time() < end, "calls did not recover after the broker restarted"
                await asyncio.sleep(0.1)
    finally:
        await server.stop(0)


async def test_close_releases_the_socket_of_a_broker_that_stopped_reading(mosquitto: Mosquitto) -> None:
    """A frozen broker holds DISCONNECT (its socket buffers are full): close still gives the socket
    back at once, instead of leaving it open for the garbage collector (a ResourceWarning that
    fails whichever test runs then)."""
    broker = await open_broker(settings_from(mosquitto.url, {}), "client")
    assert mosquitto.process is not None
    mosquitto.process.send_signal(signal.SIGSTOP)
    try:
        # fill the kernel's buffers both ways until a publish blocks
        while True:
            try:
                await asyncio.wait_for(broker.publish("frozen.topic", b"x" * 1_000_000), 0.5)
            except asyncio.TimeoutError:
                break
        await broker.close()
        assert broker._transport is not None and not broker._transport.is_connected
        assert broker._transport._writer.transport.is_closing()
    finally:
        mosquitto.process.send_signal(signal.SIGCONT)


def test_no_mosquitto_env_leaks_into_ci_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable test broker skips MQTT tests, except under CI=true, where it fails."""
    import unittest

    monkeypatch.setenv("PROTOBIND_TEST_MQTT", "mqtt://127.0.0.1:1")

    async def enter() -> None:
        async with TRANSPORT.test_harness():
            pass

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(unittest.SkipTest) as skipped:
        asyncio.run(enter())
    assert "\n" not in str(skipped.value) and "127.0.0.1:1" in str(skipped.value)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(RuntimeError, match="CI needs an MQTT broker"):
        asyncio.run(enter())


# --- raw clients: mosquitto_pub / mosquitto_sub --------------------------------------------------


async def test_mosquitto_pub_and_sub_call_a_service(fresh_url: Callable[[], str]) -> None:
    """The wire rules of docs/protocols.md (MQTT 5) with the Mosquitto command-line clients: a JSON
    request with a response topic, correlation data and a Content-Type user property; the answer
    comes to the response topic with the same correlation data and no Protobind-Status (success)."""
    url = fresh_url()
    prefix = _prefix_of(url)
    host, port = _host_port(url)
    server = protobind.Server([Recorder()])
    await server.start(url)
    reply_topic = f"{prefix}/cli/replies"
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-V", "mqttv5", "-h", host, "-p", str(port), "-t", reply_topic,
        "-C", "1", "-W", "20", "-F", "%D|%P|%p",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        publish = [
            "mosquitto_pub", "-V", "mqttv5", "-h", host, "-p", str(port),
            "-t", f"{prefix}/{SERVICE_TOPIC}/Unary",
            "-D", "PUBLISH", "response-topic", reply_topic,
            "-D", "PUBLISH", "correlation-data", "call-42",
            "-D", "PUBLISH", "user-property", "Content-Type", "application/json",
            "-m", '{"text": "from the shell"}',
        ]  # fmt: skip
        # mosquitto_sub says nothing once it is subscribed: call until it has printed the answer
        # (the handler is idempotent), at most for its own 20 s
        while sub.returncode is None:
            done = await asyncio.create_subprocess_exec(*publish)
            assert await done.wait() == 0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sub.wait(), 0.3)
        assert sub.stdout is not None
        line = (await sub.stdout.read()).decode().strip().splitlines()[0]
    finally:
        await reap(sub)
        await server.stop(0)
    correlation, properties, body = line.split("|", 2)
    assert correlation == "call-42"
    assert "Content-Type:application/json" in properties and "Protobind-Status" not in properties
    assert '"text": "from the shell"' in body or '"text":"from the shell"' in body


async def test_durable_options_mqtt_cannot_honour_are_refused_at_start(fresh_url: Callable[[], str]) -> None:
    """Durable methods run on MQTT (tests/test_durable.py, tests/test_durable_mqtt.py); the options
    it cannot honour are refused with the reason, never accepted and ignored."""
    for option, reason in (
        ("ack_wait=5", "no acknowledgement timeout"),
        ("stream_max_age=60", "broker's configuration"),
        ("stream_name=X", "no streams"),
        ("stream_storage=memory", "broker's configuration"),
    ):
        with pytest.raises(
            ValueError, match=f"mqtt option {option.split('=')[0]} cannot be honoured.*{reason}"
        ):
            await protobind.Server([Recorder()]).start(f"{fresh_url()}&{option}")
        with pytest.raises(ValueError, match="cannot be honoured"):
            await protobind.connect(f"{fresh_url()}&{option}").open()


async def test_asyncapi_document_has_mqtt_topics_and_bindings(fresh_url: Callable[[], str], raw: Any) -> None:
    import json

    url = fresh_url()
    prefix = _prefix_of(url)
    server = protobind.Server([Recorder()])
    await server.start(url)
    try:
        properties = zmqtt.PublishProperties(response_topic=f"{prefix}/doc", correlation_data=b"1")
        answer = await raw.request(
            f"{prefix}/_PROTOBIND/ASYNCAPI/{SERVICE_TOPIC}", b"", timeout=10, properties=properties
        )
    finally:
        await server.stop(0)
    document = json.loads(answer.payload)
    (server_entry,) = document["servers"].values()
    assert server_entry["protocol"] == "mqtt" and server_entry["protocolVersion"] == "5"
    assert "mqtt" in server_entry["bindings"]
    addresses = {c["address"] for c in document["channels"].values() if c["address"]}
    assert f"{prefix}/{SERVICE_TOPIC}/Unary" in addresses
    assert "_SRV/INFO" in addresses and f"{prefix}/_PROTOBIND/CANCEL" in addresses
    assert not any("." in a.replace("v1", "") and "/" not in a for a in addresses)
    unary = next(o for o in document["operations"].values() if o["channel"]["$ref"].endswith("_Unary"))
    assert unary["bindings"] == {"mqtt": {"qos": 0, "bindingVersion": "0.2.0"}}
    assert f"$share/{SERVICE}/" in unary["description"]
    assert "MQTT 5 topics" in document["info"]["description"]


async def test_a_poison_message_is_refused_and_the_server_keeps_serving(
    fresh_url: Callable[[], str], raw: Any
) -> None:
    url = fresh_url()
    prefix = _prefix_of(url)
    server = protobind.Server([Recorder("alive")])
    await server.start(url)
    try:
        properties = zmqtt.PublishProperties(
            response_topic=f"{prefix}/poison",
            correlation_data=b"p",
            user_properties=(("Protobind-Timeout-Ms", "x"),),
        )
        answer = await raw.request(
            f"{prefix}/{SERVICE_TOPIC}/Unary", b"\xff\xff\xff not protobuf", timeout=10, properties=properties
        )
        headers = dict(answer.properties.user_properties)
        assert headers["Protobind-Status"] == str(Code.INVALID_ARGUMENT.value)
        await raw.publish(f"{prefix}/{SERVICE_TOPIC}/Unary", b"\xff\xff garbage one-way")
        async with protobind.connect(url) as channel:
            assert (await ConformanceServiceClient(channel).unary(Request(), timeout=10)).text == "alive"
    finally:
        await server.stop(0)


async def test_a_backlog_of_10000_one_way_calls_is_handled(mosquitto: Mosquitto) -> None:
    """10,000 one-way calls published as fast as the client goes, to a server that handles them
    as they come: none lost on a broker whose queues are large enough (docs/brokers.md)."""
    count = 10_000
    url = mosquitto.url + "?prefix=backlog"
    service = Conformance()
    server = protobind.Server([service])
    await server.start(url)
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            for i in range(count):
                await client.notify(Request(text=str(i)))
        await eventually(lambda: len(service.notified) >= count, timeout=60)
    finally:
        await server.stop(5.0)
    assert sorted(service.notified, key=int) == [str(i) for i in range(count)]


async def test_a_slow_server_refuses_beyond_max_pending_and_serves_the_rest(
    fresh_url: Callable[[], str],
) -> None:
    url = fresh_url()
    server = protobind.Server([Recorder("slow")])
    await server.start(url + "&max_concurrency=1&max_pending=2")
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            calls = [client.unary(Request(behavior=Behavior(sleep_ms=200)), timeout=20) for _ in range(8)]
            results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await server.stop(0)
    served = [r for r in results if isinstance(r, Response)]
    refused = [r for r in results if isinstance(r, RpcError)]
    assert served and refused
    assert all(r.code is Code.RESOURCE_EXHAUSTED for r in refused)


async def test_a_flood_to_a_stuck_server_is_held_within_max_waiting_and_the_rest_dropped(
    fresh_url: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/brokers.md, "A slow server": while a server's handlers are busy, it holds at most
    `max_waiting` calls of a method in memory (one-way calls are never shed by max_pending); a
    flood beyond that is dropped and logged, not queued without bound, and the server serves again
    once free. (Calls with a caller are also refused RESOURCE_EXHAUSTED beyond max_pending: the
    test before this one.)"""
    url = fresh_url()
    service = Conformance()  # one-way calls whose text starts with "gate" wait for service.gate
    server = protobind.Server([service])
    await server.start(url + "&max_concurrency=1&max_pending=2&max_waiting=50")
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            await client.notify(Request(text="gate-first"))
            await service.until(lambda: len(service.entered) == 1)  # the only handler slot is taken
            for i in range(500):
                await client.notify(Request(text=f"gate-{i}"))
            # every one-way call published is either waiting (at most max_waiting) or dropped
            (inbound,) = [
                p
                for p in server.bindings[0].broker._pumps
                if p._sub._filters[0].endswith("/ConformanceService/+")
            ]
            await eventually(lambda: len(inbound.mailbox.items) + inbound.dropped == 500, timeout=20)
            assert len(inbound.mailbox.items) == 50 and inbound.dropped == 450
            assert "slow consumer: 256 messages" in caplog.text
            service.gate.set()
            await service.until(lambda: len(service.notified) == 51)
            # free again: served
            assert (await client.unary(Request(text="after"), timeout=10)).text == "after"
    finally:
        await server.stop(0)
