"""Durable calls, one suite on three brokers: NATS JetStream (a real nats-server -js), MQTT 5 (a
private Mosquitto: persistent sessions and retained messages, see docs/brokers.md) and the
in-memory broker. Stored before the caller returns, handled at least once, retried with backoff,
dead-lettered with their error, replies stored for the caller's group. NATS-only cases (a server
killed with SIGKILL, a lost store acknowledgement, a cluster) are in test_durable_nats.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats
import pytest
from jobs.v1.jobs_pb2 import Job, JobResult
from jobs.v1.jobs_protobind import JOBS_RUN, JOBS_SUBMIT, JobsClient

import protobind
from protobind import Code, RpcError
from protobind.auth import BearerAuth, BearerToken, reply_group
from protobind.broker.base import ConsumerSpec
from protobind.broker.durable import FINAL
from protobind.broker.durable._names import (
    dead_letter_stream,
    dead_letter_subject,
    reply_group_of,
    reply_stream,
    reply_subject,
)
from protobind.broker.durable._settings import delivery_of
from protobind.durable import DurableCalls
from protobind.transport import transport_for_url

from .jobs_service import Jobs
from .kafka_broker import kafka_url
from .support import eventually

SERVICE = "jobs.v1.Jobs"
_names = itertools.count()


@pytest.fixture(params=["memory", "nats", "mqtt", "amqp", "kafka"])
def durable_url(request: pytest.FixtureRequest) -> str:
    """A broker URL of its own for each test (a fresh prefix gives fresh streams on NATS, fresh
    topics and sessions on MQTT, fresh queues on RabbitMQ: a private node for the session, so
    that nothing stays on the machine's; fresh topics on Kafka)."""
    n = next(_names)
    if request.param == "nats":
        return f"{request.getfixturevalue('jetstream_server')}?prefix=td{n}."
    if request.param == "mqtt":
        # NATS's max_payload (1 MiB) as the message size limit: the same calls are too large
        return f"{request.getfixturevalue('durable_mosquitto').url}?prefix=td{n}&max_message_size=1048576"
    if request.param == "amqp":
        return f"{request.getfixturevalue('rabbitmq_server')}?prefix=td{n}."
    if request.param == "kafka":
        return kafka_url(request.getfixturevalue("kafka_broker"), f"td{n}.")
    return f"memory://durable-{n}"


def mqtt(url: str) -> bool:
    return url.startswith("mqtt")


def replica(url: str, n: int) -> str:
    """The URL of replica ``n`` of a group: on MQTT each replica has a persistent session of its own."""
    return _with(url, replica=n) if mqtt(url) else url


async def prime(url: str, serving: Serving) -> None:
    """On MQTT, a broker keeps calls only for sessions that exist: a server must have started once
    (docs/brokers.md). Elsewhere nothing to do."""
    if mqtt(url):
        await serving.start(url)
        await serving.stop()


def skip_where_lacking(url: str, capability: str) -> None:
    """Skip on a transport that declares it lacks ``capability`` (Transport.lacks), with its reason."""
    reason = transport_for_url(url).lacks.get(capability)
    if reason is not None:
        pytest.skip(reason)


def _with(url: str, **options: object) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


class Serving:
    """protobind servers of the Jobs service started by a test, stopped at its end."""

    def __init__(self) -> None:
        self.servers: list[protobind.Server] = []

    async def start(self, url: str, service: Jobs | None = None, interceptors: Sequence[Any] = ()) -> Jobs:
        service = service or Jobs()
        server = protobind.Server([service], interceptors=interceptors)
        await server.start(url)
        self.servers.append(server)
        return service

    async def stop(self, grace: float = 0.0) -> None:
        servers, self.servers = self.servers, []
        for server in servers:
            await server.stop(grace)


@pytest.fixture
async def serving() -> AsyncIterator[Serving]:
    servers = Serving()
    try:
        yield servers
    finally:
        await servers.stop()


async def dead_letters(channel: protobind.Channel, method: Any, count: int) -> list[Any]:
    """The dead letters of ``method``, read through the broker interface (on NATS, a JetStream
    consumer of the dead-letter stream)."""
    transport: Any = channel.transport
    broker, settings = transport.broker, transport.settings
    stream = await broker.ensure_stream(dead_letter_stream(settings, SERVICE))
    subject = dead_letter_subject(settings.prefix, method, delivery_of(method, settings.durable))
    consumer = await broker.consumer(ConsumerSpec(stream, f"inspect{next(_names)}", subject))
    found: list[Any] = []
    deadline = time.monotonic() + 20
    while len(found) < count and time.monotonic() < deadline:
        for message in await consumer.fetch(count - len(found), 0.5):
            found.append(message)
            await message.ack()
    # nothing beyond what was expected
    found += await consumer.fetch(10, 0.3)
    await consumer.close()
    return found


# --- durable one-way -------------------------------------------------------------------------------


async def test_durable_one_way_calls_are_stored_then_handled_once(durable_url: str, serving: Serving) -> None:
    jobs = await serving.start(durable_url)
    async with protobind.connect(durable_url) as channel:
        client = JobsClient(channel)
        results = await asyncio.gather(*(client.submit(Job(id=f"j{i}")) for i in range(50)))
    assert results == [None] * 50
    await eventually(lambda: len(jobs.deliveries) >= 50)
    assert jobs.ids() == Counter({f"j{i}": 1 for i in range(50)})
    assert {attempt for _, attempt, _ in jobs.deliveries} == {1}
    assert len({message_id for _, _, message_id in jobs.deliveries}) == 50


async def test_calls_made_while_no_server_runs_are_handled_once_it_starts(
    durable_url: str, serving: Serving
) -> None:
    await prime(durable_url, serving)
    async with protobind.connect(durable_url) as channel:
        client = JobsClient(channel)
        for i in range(20):
            await client.submit(Job(id=f"early{i}"))  # stored: nobody serves the method yet
    jobs = await serving.start(durable_url)
    await eventually(lambda: len(jobs.deliveries) >= 20)
    assert jobs.ids() == Counter({f"early{i}": 1 for i in range(20)})


async def test_a_failing_call_is_retried_with_backoff_until_it_succeeds(
    durable_url: str, serving: Serving
) -> None:
    jobs = await serving.start(durable_url)
    async with protobind.connect(durable_url) as channel:
        client = JobsClient(channel)
        await client.submit(Job(id="flaky", fail_attempts=2, fail_code=Code.UNAVAILABLE))
        await client.submit(Job(id="buggy", fail_attempts=1))  # a plain exception: INTERNAL
        await eventually(lambda: len(jobs.handled("flaky")) == 3 and len(jobs.handled("buggy")) == 2)
        assert jobs.handled("flaky") == [1, 2, 3]
        assert jobs.handled("buggy") == [1, 2]
        message_ids = {mid for jid, _, mid in jobs.deliveries if jid == "flaky"}
        assert len(message_ids) == 1  # every delivery of a call carries the same message id
        assert await dead_letters(channel, JOBS_SUBMIT, 0) == []


async def test_exactly_the_failing_calls_reach_the_dead_letter_with_their_error(
    durable_url: str, serving: Serving
) -> None:
    jobs = await serving.start(durable_url)
    async with protobind.connect(durable_url) as channel:
        client = JobsClient(channel)
        for i in range(5):
            await client.submit(Job(id=f"ok{i}"))
            await client.submit(Job(id=f"bad{i}", fail_attempts=-1, fail_code=Code.INVALID_ARGUMENT))
            await client.submit(Job(id=f"down{i}", fail_attempts=-1, fail_code=Code.UNAVAILABLE))
        letters = await dead_letters(channel, JOBS_SUBMIT, 10)
    by_id = {Job.FromString(m.data).id: m for m in letters}
    assert len(letters) == 10
    assert set(by_id) == {f"bad{i}" for i in range(5)} | {f"down{i}" for i in range(5)}
    for i in range(5):
        bad, down = by_id[f"bad{i}"].headers, by_id[f"down{i}"].headers
        # a code no retry can fix goes at once; the others after max_deliver (3) attempts
        assert bad["Protobind-Status"] == str(int(Code.INVALID_ARGUMENT))
        assert bad["Nats-Service-Error"] == f"job bad{i} failed"
        assert bad["Protobind-Attempts"] == "1"
        assert jobs.handled(f"bad{i}") == [1]
        assert down["Protobind-Status"] == str(int(Code.UNAVAILABLE))
        assert down["Nats-Service-Error-Code"] == "503"
        assert down["Protobind-Attempts"] == "3"
        assert jobs.handled(f"down{i}") == [1, 2, 3]
        assert jobs.handled(f"ok{i}") == [1]


def test_the_codes_sent_to_the_dead_letter_at_once() -> None:
    assert {code.name for code in FINAL} == {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }


async def test_an_undecodable_call_goes_to_the_dead_letter(durable_url: str, serving: Serving) -> None:
    jobs = await serving.start(durable_url)
    async with protobind.connect(durable_url) as channel:
        transport: Any = channel.transport
        subject = f"{transport.settings.prefix}$PROTOBIND.DURABLE.{SERVICE}.Submit"
        await transport.durable().submit(JOBS_SUBMIT, Job(id="warm"), protobind.CallInfo())
        await transport.broker.store(subject, b"\xff\xff not protobuf", None, "garbage", timeout=5)
        await transport.broker.store(
            subject, b"{not json", {"Content-Type": "application/json"}, "garbage-json", timeout=5
        )
        letters = await dead_letters(channel, JOBS_SUBMIT, 2)
    assert sorted(m.headers["Nats-Msg-Id"] for m in letters) == ["garbage", "garbage-json"]
    assert {m.headers["Protobind-Status"] for m in letters} == {str(int(Code.INVALID_ARGUMENT))}
    assert jobs.ids() == Counter({"warm": 1})


async def test_a_long_handler_extends_its_ack_wait_instead_of_being_delivered_again(
    durable_url: str, serving: Serving
) -> None:
    if mqtt(durable_url):
        pytest.skip("MQTT has no ack_wait: the option is refused (tests/test_mqtt.py checks that)")
    jobs = await serving.start(_with(durable_url, ack_wait=1))
    async with protobind.connect(durable_url) as channel:
        await JobsClient(channel).submit(Job(id="long", work=3.0))
        await JobsClient(channel).submit(Job(id="after"))
    await eventually(lambda: jobs.running == 0 and len(jobs.deliveries) == 2 and "long" in jobs.ids())
    await asyncio.sleep(1.5)  # more than ack_wait: a missed in-progress ack would show here
    assert jobs.handled("long") == [1]


async def test_max_ack_pending_bounds_the_calls_in_progress(durable_url: str, serving: Serving) -> None:
    jobs = await serving.start(_with(durable_url, max_ack_pending=2))
    async with protobind.connect(durable_url) as channel:
        await asyncio.gather(*(JobsClient(channel).submit(Job(id=f"c{i}", work=0.05)) for i in range(12)))
    await eventually(lambda: len(jobs.deliveries) == 12 and jobs.running == 0)
    assert jobs.most_running == 2


async def test_max_concurrency_bounds_the_durable_calls_of_a_server(
    durable_url: str, serving: Serving
) -> None:
    jobs = await serving.start(_with(durable_url, max_concurrency=3))
    jobs.release.clear()  # handlers hold their slot until released: the bound, not timing, decides
    async with protobind.connect(durable_url) as channel:
        calls = DurableCalls(channel)
        for i in range(8):  # two durable methods, one budget
            await calls.submit(JOBS_SUBMIT, Job(id=f"s{i}"))
            await calls.submit(JOBS_RUN, Job(id=f"r{i}"))
    await eventually(lambda: jobs.running >= 3)
    await asyncio.sleep(0.3)  # room for a fourth handler to start, were the bound not kept
    assert jobs.running == 3
    jobs.release.set()
    await eventually(lambda: len(jobs.deliveries) == 16 and jobs.running == 0)
    assert jobs.most_running == 3


async def test_a_stopped_server_hands_its_unfinished_calls_to_the_next(
    durable_url: str, serving: Serving
) -> None:
    skip_where_lacking(durable_url, "durable.redelivery_count")
    first = Jobs("first")
    first.release.clear()  # its handler never finishes
    await serving.start(durable_url, first)
    async with protobind.connect(durable_url) as channel:
        await JobsClient(channel).submit(Job(id="unfinished"))
    await eventually(lambda: first.running == 1)
    await serving.stop(grace=0)  # the handler is cancelled; the call is not acknowledged
    second = await serving.start(durable_url, Jobs("second"))
    await eventually(lambda: second.handled("unfinished") == [2])
    assert first.handled("unfinished") == [1]


async def test_groups_each_get_every_call_and_replicas_of_a_group_split_them(
    durable_url: str, serving: Serving
) -> None:
    billing = [await serving.start(replica(_with(durable_url, queue_group="billing"), n)) for n in range(2)]
    audit = await serving.start(_with(durable_url, queue_group="audit"))
    async with protobind.connect(durable_url) as channel:
        await asyncio.gather(*(JobsClient(channel).submit(Job(id=f"e{i}", work=0.01)) for i in range(40)))
    expected = Counter({f"e{i}": 1 for i in range(40)})
    await eventually(
        lambda: audit.ids() == expected and sum((b.ids() for b in billing), Counter()) == expected
    )


async def test_submitting_the_same_call_id_again_stores_the_call_once(
    durable_url: str, serving: Serving
) -> None:
    skip_where_lacking(durable_url, "durable.dedupe")
    jobs = await serving.start(durable_url)
    async with protobind.connect(durable_url) as channel:
        calls = DurableCalls(channel)
        first = await calls.submit(JOBS_SUBMIT, Job(id="once"), call_id="order-42-charge")
        again = await calls.submit(JOBS_SUBMIT, Job(id="once"), call_id="order-42-charge")
        await calls.submit(JOBS_SUBMIT, Job(id="marker"))
    assert first == again == "order-42-charge"
    # a consumer hands out calls in the order they were stored: the marker comes after any copy
    await eventually(lambda: "marker" in jobs.ids())
    assert jobs.ids()["once"] == 1
    assert [mid for jid, _, mid in jobs.deliveries if jid == "once"] == ["order-42-charge"]


async def test_a_call_larger_than_the_broker_takes_is_refused(durable_url: str) -> None:
    async with protobind.connect(durable_url) as channel:
        # one byte more than the broker takes (NATS: its max_payload; RabbitMQ: max_message_size)
        size = channel.transport.broker.max_payload + 1  # type: ignore[attr-defined]
        with pytest.raises(RpcError) as refused:
            await JobsClient(channel).submit(Job(payload="x" * size), timeout=10)
    assert refused.value.code is Code.RESOURCE_EXHAUSTED


async def test_submit_checks_its_arguments(durable_url: str) -> None:
    async with protobind.connect(durable_url) as channel:
        calls = DurableCalls(channel)
        with pytest.raises(ValueError, match="call id"):
            await calls.submit(JOBS_SUBMIT, Job(), call_id="a.b")
        with pytest.raises(TypeError):
            await calls.submit(JOBS_SUBMIT, JobResult())  # type: ignore[arg-type]


# --- durable request/response ----------------------------------------------------------------------


async def test_a_durable_request_waits_for_its_stored_reply(durable_url: str, serving: Serving) -> None:
    jobs = await serving.start(durable_url)
    async with protobind.connect(durable_url) as channel:
        client = JobsClient(channel)
        reply = await client.run(Job(id="r1", payload="hello"), timeout=20)
        assert (reply.id, reply.attempt, reply.payload) == ("r1", 1, "hello")
        retried = await client.run(Job(id="r2", fail_attempts=1, fail_code=Code.ABORTED), timeout=20)
        assert retried.attempt == 2
        with pytest.raises(RpcError) as failed:
            await client.run(Job(id="r3", fail_attempts=-1, fail_code=Code.NOT_FOUND), timeout=20)
        assert (failed.value.code, failed.value.message) == (Code.NOT_FOUND, "job r3 failed")
        with pytest.raises(RpcError) as exhausted:
            await client.run(Job(id="r4", fail_attempts=-1, fail_code=Code.UNAVAILABLE), timeout=20)
        assert exhausted.value.code is Code.UNAVAILABLE
    assert jobs.handled("r4") == [1, 2, 3]


async def test_a_restarted_caller_receives_the_replies_to_its_predecessors_calls(
    durable_url: str, serving: Serving
) -> None:
    await prime(durable_url, serving)
    async with protobind.connect(durable_url) as channel:  # the first caller process
        calls = DurableCalls(channel, group="checkout")
        submitted = [await calls.submit(JOBS_RUN, Job(id=f"p{i}", payload=f"#{i}")) for i in range(6)]
        failing = await calls.submit(JOBS_RUN, Job(id="fails", fail_attempts=-1, fail_code=Code.NOT_FOUND))
    # the caller is gone; the calls are handled meanwhile
    await serving.start(durable_url)
    async with protobind.connect(durable_url) as channel:  # its successor, same group
        calls = DurableCalls(channel, group="checkout")
        by_id = await calls.result(JOBS_RUN, submitted[0], timeout=20)  # read by id
        assert (by_id.id, by_id.payload) == ("p0", "#0")
        with pytest.raises(RpcError) as failed:
            await calls.result(JOBS_RUN, failing, timeout=20)
        assert failed.value.code is Code.NOT_FOUND
        received: dict[str, Any] = {}

        async def collect() -> None:
            async for reply in calls.replies():
                received[reply.call_id] = reply
                if len(received) == 5:
                    await reply.ack()
                    return

        await asyncio.wait_for(collect(), 20)
    # the replies read by id were taken out; the others came through the group's consumer
    assert set(received) == set(submitted[1:])
    for i, call_id in enumerate(submitted[1:], start=1):
        reply = received[call_id]
        assert reply.error is None and reply.method == "jobs.v1.Jobs/Run"
        assert reply.response == JobResult(id=f"p{i}", attempt=1, message_id=call_id, payload=f"#{i}")
        assert reply.response_as(JOBS_RUN).payload == f"#{i}"


async def test_another_group_does_not_see_the_replies(durable_url: str, serving: Serving) -> None:
    await serving.start(durable_url)
    async with protobind.connect(durable_url) as channel:
        mine = DurableCalls(channel, group="mine")
        theirs = DurableCalls(channel, group="theirs")
        call_id = await mine.submit(JOBS_RUN, Job(id="private"))
        with pytest.raises(RpcError) as missing:
            await theirs.result(JOBS_RUN, call_id, timeout=0.5)
        assert missing.value.code is Code.DEADLINE_EXCEEDED
        assert (await mine.result(JOBS_RUN, call_id, timeout=20)).id == "private"


# --- security: where a server writes replies --------------------------------------------------------

REPLY_TO = "Protobind-Reply-To"
AUTH_TOKENS = {
    "victim-secret": [f"{SERVICE}/*", reply_group("victim")],
    "attacker-secret": [f"{SERVICE}/*", reply_group("attacker")],
}


class Attacker:
    """Stores durable calls as anyone who may publish to the call subject could, with whatever
    headers it likes: on NATS a raw nats-py JetStream publish, on ``memory://`` a store through the
    broker interface. It listens on subjects the same way."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.channel = protobind.connect(url)
        self.nc: Any = None

    async def __aenter__(self) -> Attacker:
        await self.channel.open()
        transport: Any = self.channel.transport
        self.broker, self.settings = transport.broker, transport.settings
        self.prefix = self.settings.prefix
        # the reply stream, as the callers' first durable call made it
        self.replies = await self.broker.ensure_stream(reply_stream(self.settings))
        if self.url.startswith("nats://"):
            self.nc = await nats.connect(self.url.partition("?")[0])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            await self.nc.close()
        await self.channel.close()

    def reply_to(self, group: str, call_id: str) -> str:
        return f"{self.prefix}$PROTOBIND.REPLY.{group}.{call_id}"

    async def call(self, method: str, body: bytes, headers: dict[str, str]) -> None:
        """Store a call of ``jobs.v1.Jobs/{method}`` with exactly ``headers``."""
        subject = f"{self.prefix}$PROTOBIND.DURABLE.{SERVICE}.{method}"
        if self.nc is not None:
            ack = await self.nc.jetstream().publish(subject, body, headers=headers)
            assert not ack.duplicate
        else:
            msg_id = headers.get("Nats-Msg-Id") or os.urandom(8).hex()
            assert not (await self.broker.store(subject, body, headers, msg_id, timeout=5)).duplicate

    async def listen(self, subject: str) -> list[str]:
        """The subjects of the messages published on ``subject`` from now on."""
        seen: list[str] = []

        async def got(message: Any) -> None:
            seen.append(message.subject)

        if self.nc is not None:
            await self.nc.subscribe(subject, cb=got)
            await self.nc.flush()
        else:
            await self.broker.subscribe(subject, got)
        return seen

    async def stored_reply(self, group: str, call_id: str) -> Any:
        """The reply stored for ``call_id`` of ``group``, or ``None``."""
        return await self.broker.last(self.replies, reply_subject(self.prefix, group, call_id))

    async def refused(self, count: int) -> dict[str, str]:
        """The dead letters of Jobs/Run: call id -> status code, once ``count`` are there."""
        letters = await dead_letters(self.channel, JOBS_RUN, count)
        return {m.headers["Nats-Msg-Id"]: m.headers["Protobind-Status"] for m in letters}


def _status(code: Code) -> str:
    return str(int(code))


async def test_a_call_cannot_address_its_reply_to_another_group_or_another_call(
    durable_url: str, serving: Serving
) -> None:
    """Issue 17: a valid token put its reply into another group's namespace, under a call id of
    its choosing; the victim's result() returned it and replies() delivered a made-up call id."""
    jobs = await serving.start(durable_url, interceptors=[BearerAuth(AUTH_TOKENS)])
    forged = Job(id="forged", payload="the attacker's").SerializeToString()
    token = {"authorization": "Bearer attacker-secret"}
    async with Attacker(durable_url) as attacker:
        # the victim's group and call id, on a message of another id (the call's own id rules)
        await attacker.call("Run", forged, {**token, REPLY_TO: attacker.reply_to("victim", "order-43")})
        # the victim's group under the call's own id: a group this token is not granted
        await attacker.call(
            "Run",
            forged,
            {**token, "Nats-Msg-Id": "order-44", REPLY_TO: attacker.reply_to("victim", "order-44")},
        )
        # its own group and its own id: answered like any call
        await attacker.call(
            "Run",
            forged,
            {**token, "Nats-Msg-Id": "mine-1", REPLY_TO: attacker.reply_to("attacker", "mine-1")},
        )
        refused = await attacker.refused(2)
        assert refused.pop("order-44") == _status(Code.PERMISSION_DENIED)
        assert list(refused.values()) == [_status(Code.INVALID_ARGUMENT)]
        own = DurableCalls(attacker.channel, group="attacker")
        assert (await own.result(JOBS_RUN, "mine-1", timeout=20)).payload == "the attacker's"
        assert await attacker.stored_reply("victim", "order-44") is None

    # the victim's generated client, its token and its group: answered
    victim_url = _with(durable_url, reply_group="victim")
    async with protobind.connect(victim_url, interceptors=[BearerToken("victim-secret")]) as channel:
        assert (await JobsClient(channel).run(Job(id="via-client"), timeout=20)).id == "via-client"
    async with protobind.connect(durable_url) as channel:
        victim = DurableCalls(channel, group="victim")
        metadata = {"authorization": "Bearer victim-secret"}
        for call_id in ("order-43", "order-45"):
            await victim.submit(JOBS_RUN, Job(id=call_id, payload="real"), call_id=call_id, metadata=metadata)
        real = await victim.result(JOBS_RUN, "order-43", timeout=20)
        assert (real.id, real.payload) == ("order-43", "real")
        seen: list[str] = []

        async def collect() -> None:
            async for reply in victim.replies():
                seen.append(reply.call_id)
                if reply.call_id == "order-45":
                    await reply.ack()
                    return

        await asyncio.wait_for(collect(), 20)
    assert seen == ["order-45"]
    assert jobs.handled("forged") == [1]  # the refused calls never reached the handler


async def test_a_call_refused_before_its_handler_writes_nothing_but_its_dead_letter(
    durable_url: str, serving: Serving
) -> None:
    """Issue 17: a call without a token was refused, and its UNAUTHENTICATED reply landed in the
    victim's reply address while the victim's real call was running."""
    jobs = await serving.start(durable_url, interceptors=[BearerAuth(AUTH_TOKENS)])
    jobs.release.clear()
    async with protobind.connect(durable_url) as channel, Attacker(durable_url) as attacker:
        victim = DurableCalls(channel, group="victim")
        metadata = {"authorization": "Bearer victim-secret"}
        await victim.submit(JOBS_RUN, Job(id="order-42"), call_id="order-42", metadata=metadata)
        await eventually(lambda: jobs.running == 1)  # the victim's call is running
        job = Job(id="forged").SerializeToString()
        # no token, naming the running call's address; and no token, self-consistent
        await attacker.call(
            "Run", job, {"Nats-Msg-Id": "anon-1", REPLY_TO: attacker.reply_to("victim", "order-42")}
        )
        await attacker.call(
            "Run", job, {"Nats-Msg-Id": "anon-2", REPLY_TO: attacker.reply_to("victim", "anon-2")}
        )
        # a valid token and address, and a body that is not a Job
        headers = {"authorization": "Bearer attacker-secret", "Nats-Msg-Id": "garbage"}
        await attacker.call(
            "Run", b"\xff\xff not protobuf", {**headers, REPLY_TO: attacker.reply_to("attacker", "garbage")}
        )
        assert await attacker.refused(3) == {
            "anon-1": _status(Code.UNAUTHENTICATED),
            "anon-2": _status(Code.UNAUTHENTICATED),
            "garbage": _status(Code.INVALID_ARGUMENT),
        }
        for group, call_id in (("victim", "order-42"), ("victim", "anon-2"), ("attacker", "garbage")):
            assert await attacker.stored_reply(group, call_id) is None, call_id
        jobs.release.set()
        real = await victim.result(JOBS_RUN, "order-42", timeout=20)
    assert (real.id, real.attempt) == ("order-42", 1)
    assert jobs.ids() == Counter({"order-42": 1})


async def test_a_reply_address_outside_the_reply_namespace_is_refused(
    durable_url: str, serving: Serving
) -> None:
    """Issue 17: ``Protobind-Reply-To: some.internal.subject`` made the server publish there. No
    auth here: the reply namespace holds without it."""
    jobs = await serving.start(durable_url)
    async with Attacker(durable_url) as attacker:
        internal = f"internal{next(_names)}.subject"
        submit = f"{attacker.prefix}$PROTOBIND.DURABLE.{SERVICE}.Submit"
        heard_internal, heard_submit = await attacker.listen(internal), await attacker.listen(submit)
        addresses = {
            "plain": internal,
            "a-call-subject": submit,  # would store a call of Jobs/Submit
            "dotted": attacker.reply_to("a.b", "dotted"),
            "wild": attacker.reply_to("*", "wild"),
            "rest": f"{attacker.prefix}$PROTOBIND.REPLY.>",
            "other-prefix": "elsewhere.$PROTOBIND.REPLY.g.other-prefix",
        }
        job = Job(id="injected").SerializeToString()
        for call_id, address in addresses.items():
            await attacker.call("Run", job, {"Nats-Msg-Id": call_id, REPLY_TO: address})
        refused = await attacker.refused(len(addresses))
        if attacker.nc is not None:
            await attacker.nc.flush()
        assert heard_internal == [] and heard_submit == []  # the server published nothing there
        assert refused == dict.fromkeys(addresses, _status(Code.INVALID_ARGUMENT))
        # the server keeps serving, and a proper address is answered
        fine = Job(id="fine").SerializeToString()
        await attacker.call("Run", fine, {"Nats-Msg-Id": "fine", REPLY_TO: attacker.reply_to("g", "fine")})
        replied = await DurableCalls(attacker.channel, group="g").result(JOBS_RUN, "fine", timeout=20)
        assert replied.id == "fine"
    assert jobs.ids() == Counter({"fine": 1})


@pytest.mark.parametrize(
    ("reply_to", "call_id", "group"),
    [
        ("p.$PROTOBIND.REPLY.checkout.c1", "c1", "checkout"),
        ("p.$PROTOBIND.REPLY.check-out_2.c1", "c1", "check-out_2"),
        ("p.$PROTOBIND.REPLY.checkout.c2", "c1", None),  # another call's id
        ("p.$PROTOBIND.REPLY..c1", "c1", None),  # no group
        ("p.$PROTOBIND.REPLY.c1", "c1", None),  # head and tail overlap
        ("p.$PROTOBIND.REPLY.a.b.c1", "c1", None),  # two tokens
        ("p.$PROTOBIND.REPLY.*.c1", "c1", None),
        ("p.$PROTOBIND.REPLY.>.c1", "c1", None),
        ("$PROTOBIND.REPLY.checkout.c1", "c1", None),  # another prefix
        ("p.$PROTOBIND.REPLY.checkout.a.b", "a.b", None),  # not a call id
        ("p.$PROTOBIND.REPLY.checkout.", "", None),
    ],
)
def test_the_reply_group_of_a_reply_address(reply_to: str, call_id: str, group: str | None) -> None:
    assert reply_group_of("p.", reply_to, call_id) == group


async def test_durable_calls_need_a_broker() -> None:
    async with protobind.connect("inproc://durable-none") as channel:
        with pytest.raises(RpcError) as refused:
            await DurableCalls(channel).submit(JOBS_SUBMIT, Job())
    assert refused.value.code is Code.UNIMPLEMENTED


async def test_bad_durable_options_are_refused(durable_url: str) -> None:
    for option in ("max_deliver=0", "backoff=x", "stream_storage=tape", "ack_wait=-1"):
        with pytest.raises(ValueError, match=option.split("=")[0]):
            await protobind.Server([Jobs()]).start(
                f"{durable_url}{'&' if '?' in durable_url else '?'}{option}"
            )


async def test_each_delivery_is_a_consumer_span_with_its_attempt_in_the_producers_trace(
    durable_url: str,
) -> None:
    """Issue 13 on the durable hop: one trace, a CONSUMER span per delivery (attempt 1, 2, 3)
    linked to the caller's PRODUCER span, the handler's SERVER span inside each, and the last
    attempt of a call that never succeeds marked as dead-lettered."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    telemetry = protobind.Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)
    jobs = Jobs()
    server = protobind.Server([jobs], telemetry=telemetry)
    await server.start(durable_url)
    try:
        async with protobind.connect(durable_url, telemetry=telemetry) as channel:
            await JobsClient(channel).submit(Job(id="flaky", fail_attempts=2, fail_code=Code.UNAVAILABLE))
            await eventually(lambda: len(jobs.handled("flaky")) == 3)
            await asyncio.sleep(0.1)
    finally:
        await server.stop(0)
        tracer_provider.shutdown()
        meter_provider.shutdown()
    spans = exporter.get_finished_spans()
    (producer,) = [s for s in spans if s.kind is SpanKind.PRODUCER]
    consumers = sorted(
        (s for s in spans if s.kind is SpanKind.CONSUMER),
        key=lambda s: s.attributes["protobind.delivery.attempt"],  # type: ignore[index]
    )
    handlers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.attributes["protobind.delivery.attempt"] for s in consumers] == [1, 2, 3]  # type: ignore[index]
    assert len(handlers) == 3
    trace_id = producer.context.trace_id
    consumer_ids = {s.context.span_id for s in consumers}
    for consumer in consumers:
        assert consumer.context.trace_id == trace_id
        assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
        assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    for handler in handlers:
        assert handler.context.trace_id == trace_id
        assert handler.parent is not None and handler.parent.span_id in consumer_ids


async def test_a_gateway_acknowledges_a_durable_call_once_upstream_stored_it(
    durable_url: str, serving: Serving
) -> None:
    """Through a gateway the caller's durable one-way call returns once the upstream broker stored
    it, as it would called directly: stopping the gateway right after loses nothing."""
    from jobs.v1.jobs_protobind import JOBS_SERVICE_INFO

    await prime(durable_url, serving)
    gateway = protobind.Gateway([JOBS_SERVICE_INFO], durable_url)
    (listening,) = await gateway.start(f"inproc://gateway-{next(_names)}")
    try:
        async with protobind.connect(listening) as channel:
            client = JobsClient(channel)
            await asyncio.gather(*(client.submit(Job(id=f"via-gateway{i}")) for i in range(50)))
    finally:
        await gateway.stop(grace=0)  # nothing acknowledged may still be on its way upstream
    jobs = await serving.start(durable_url)
    await eventually(lambda: len(jobs.deliveries) >= 50)
    assert jobs.ids() == Counter({f"via-gateway{i}": 1 for i in range(50)})


async def test_dead_letters_carry_no_credentials_and_are_logged_at_a_bounded_rate(
    durable_url: str, serving: Serving, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead letter keeps the call's metadata for replay, but not its credentials (operators read
    dead letters, and SPEC.md section 7: credentials never appear where others read); and 20 bad calls
    make a line or two in the log, not 20."""
    await serving.start(durable_url, interceptors=[BearerAuth(AUTH_TOKENS)])
    caplog.set_level(logging.WARNING, logger="protobind.broker")
    async with Attacker(durable_url) as attacker:
        headers = {"authorization": "Bearer attacker-secret", "cookie": "session=s3cret", "x-trace": "kept"}
        for n in range(20):
            await attacker.call("Run", b"\xff\xff not protobuf", {**headers, "Nats-Msg-Id": f"bad-{n}"})
        letters = await dead_letters(attacker.channel, JOBS_RUN, 20)
    assert len(letters) == 20
    for letter in letters:
        assert letter.headers["Protobind-Status"] == str(int(Code.INVALID_ARGUMENT))
        assert letter.headers.get("x-trace") == "kept"
        names = {k.lower() for k in letter.headers}
        assert not names & {"authorization", "cookie"}, letter.headers
        assert not any("s3cret" in v or "attacker-secret" in v for v in letter.headers.values())
    lines = [r for r in caplog.records if "dead letter" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]


async def test_acks_the_broker_does_not_take_are_logged_at_a_bounded_rate(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An ack that fails (the broker's connection lost: the broker delivers the call again) is
    counted and logged at a bounded rate: 20 calls made 20 WARNING lines before (seen with a
    RabbitMQ node killed under 200 calls in flight: 200 lines)."""
    from protobind.broker.base import BrokerError
    from protobind.memory._stored import StoredCopy

    async def lost(self: StoredCopy) -> None:
        raise BrokerError("the connection is lost")

    monkeypatch.setattr(StoredCopy, "ack", lost)
    caplog.set_level(logging.WARNING, logger="protobind.broker")
    url = f"memory://acks-{next(_names)}"
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(url)
    try:
        async with protobind.connect(url) as channel:
            client = JobsClient(channel)
            for n in range(20):
                await client.submit(Job(id=f"a{n}"))
        await eventually(lambda: len(set(jobs.ids())) == 20)
    finally:
        await server.stop(0)
    lines = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines
