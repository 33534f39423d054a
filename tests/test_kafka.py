"""The Kafka binding against a real Kafka-compatible broker (Tansu, tests/kafka_broker.py): topics
and consumer groups, offsets committed only behind finished calls, rebalances that lose nothing,
and what a plain aiokafka client sends and reads (docs/brokers.md, "Kafka")."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from jobs.v1.jobs_pb2 import Job
from jobs.v1.jobs_protobind import JobsClient

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.kafka._options import settings_from
from protobind.kafka.embedded import start_kafka_broker

from .conformance import SERVICE, Conformance
from .jobs_service import Jobs
from .kafka_broker import kafka_url
from .support import eventually

_names = itertools.count()


class Servers:
    def __init__(self) -> None:
        self.running: list[protobind.Server] = []

    async def start(self, url: str, service: Conformance | None = None) -> Conformance:
        service = service or Conformance()
        server = protobind.Server([service])
        await server.start(url)
        self.running.append(server)
        return service

    async def stop(self, index: int, grace: float = 0.0) -> None:
        await self.running.pop(index).stop(grace)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    try:
        yield started
    finally:
        while started.running:
            await started.stop(0)


@pytest.fixture
def prefix() -> str:
    return f"tk{next(_names)}."


def bootstrap(broker: str) -> str:
    return broker.partition("//")[2]


async def test_a_method_is_a_topic_with_several_partitions_and_groups_fan_out(
    kafka_broker: str, prefix: str, servers: Servers
) -> None:
    billing = [await servers.start(kafka_url(kafka_broker, prefix, queue_group="billing")) for _ in range(2)]
    audit = await servers.start(kafka_url(kafka_broker, prefix, queue_group="audit"))
    async with protobind.connect(kafka_url(kafka_broker, prefix)) as channel:
        client = ConformanceServiceClient(channel)
        await asyncio.gather(*(client.notify(Request(text=f"n{i}")) for i in range(200)))
    expected = {f"n{i}" for i in range(200)}
    await eventually(lambda: set(audit.notified) == expected)
    await eventually(lambda: set(billing[0].notified) | set(billing[1].notified) == expected)
    # the replicas of one group really share the topic's partitions
    assert billing[0].notified and billing[1].notified
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(kafka_broker))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([f"{prefix}{SERVICE}.Notify"])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 4


async def _committed(broker: str, group: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(broker), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {}
        for partition in range(4):
            offset = await consumer.committed(TopicPartition(topic, partition))
            if offset is not None:
                found[partition] = offset
        return found
    finally:
        await consumer.stop()


async def test_offsets_are_committed_only_behind_finished_calls(
    kafka_broker: str, prefix: str, servers: Servers
) -> None:
    service = await servers.start(kafka_url(kafka_broker, prefix, queue_group="ordered"))
    topic = f"{prefix}{SERVICE}.Notify"
    async with protobind.connect(kafka_url(kafka_broker, prefix)) as channel:
        client = ConformanceServiceClient(channel)
        same = {"partition-key": "one"}  # one key: one partition, in order
        await client.notify(Request(text="gate-first"), metadata=same)
        await eventually(lambda: "gate-first" in service.entered)
        for i in range(20):  # these finish while the first one still waits
            await client.notify(Request(text=f"after{i}"), metadata=same)
        await eventually(lambda: len(service.notified) == 20)
        await asyncio.sleep(0.5)  # commits happen after every fetch: give them time to (not) happen
        committed = await _committed(kafka_broker, "ordered", topic)
        assert set(committed.values()) <= {0}, committed  # not past the unfinished first call
        service.gate.set()
        await eventually(lambda: len(service.notified) == 21)
    deadline = time.monotonic() + 10
    while sum((await _committed(kafka_broker, "ordered", topic)).values()) != 21:
        assert time.monotonic() < deadline, "the finished calls were not committed"
        await asyncio.sleep(0.1)


async def test_a_call_cut_off_by_stop_goes_to_the_next_replica(
    kafka_broker: str, prefix: str, servers: Servers
) -> None:
    url = kafka_url(kafka_broker, prefix, queue_group="handover")
    first = await servers.start(url)
    async with protobind.connect(kafka_url(kafka_broker, prefix)) as channel:
        await ConformanceServiceClient(channel).notify(Request(text="gate-unfinished"))
    await eventually(lambda: "gate-unfinished" in first.entered)
    await servers.stop(0, grace=0)  # cancelled in its handler: not finished, not committed
    assert "gate-unfinished" not in first.notified
    second = Conformance()
    second.gate.set()
    await servers.start(url, second)
    await eventually(lambda: "gate-unfinished" in second.notified)


async def test_a_replica_joining_and_one_leaving_during_2000_calls_lose_none(
    kafka_broker: str, prefix: str, servers: Servers
) -> None:
    url = kafka_url(kafka_broker, prefix, queue_group="rebalance", rebalance_grace=5)
    first = await servers.start(url)
    second = Conformance()
    total = 2000
    expected = {f"c{i}" for i in range(total)}

    def handled() -> set[str]:
        return set(first.notified) | set(second.notified)

    async def send(client: ConformanceServiceClient) -> None:
        for start in range(0, total, 50):
            work = Behavior(sleep_ms=5)
            await asyncio.gather(
                *(client.notify(Request(text=f"c{i}", behavior=work)) for i in range(start, start + 50))
            )
            await asyncio.sleep(0.1)  # paced: the run lasts through both rebalances

    async with protobind.connect(kafka_url(kafka_broker, prefix)) as channel:
        sending = asyncio.ensure_future(send(ConformanceServiceClient(channel)))
        await eventually(lambda: len(handled()) >= 300)
        await servers.start(url, second)  # joins: the group rebalances mid-run
        await eventually(lambda: len(second.notified) >= 1)
        await servers.stop(0, grace=5)  # the first leaves: rebalances again, mid-run
        assert not sending.done(), "the run ended before both rebalances: pace it slower"
        await sending
    await eventually(lambda: handled() >= expected, timeout=60)


async def test_a_plain_aiokafka_producer_calls_and_reads_the_reply(
    kafka_broker: str, servers: Servers
) -> None:
    """docs/brokers.md: a call is a record on the method's topic with the reply address in
    Protobind-Reply; the reply comes to that topic with Protobind-Correlation."""
    prefix = f"tk{next(_names)}."
    await servers.start(kafka_url(kafka_broker, prefix))
    boot = bootstrap(kafka_broker)
    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    await admin.start()
    from aiokafka.admin import NewTopic

    await admin.create_topics([NewTopic(f"{prefix}my.replies", 1, 1)])
    await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=boot)
    await consumer.start()
    partition = TopicPartition(f"{prefix}my.replies", 0)
    consumer.assign([partition])
    await consumer.seek_to_end(partition)
    await consumer.position(partition)
    producer = AIOKafkaProducer(bootstrap_servers=boot, acks="all")
    await producer.start()
    try:
        headers: list[tuple[str, bytes]] = [("Protobind-Reply", f"{prefix}my.replies/call-1".encode())]
        await producer.send_and_wait(
            f"{prefix}{SERVICE}.Unary", Request(text="raw").SerializeToString(), headers=headers
        )
        record = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await producer.stop()
        await consumer.stop()
    got: dict[str, Any] = {key: value.decode() for key, value in record.headers}
    assert got["Protobind-Correlation"] == "call-1"
    from protobind.conformance.v1.conformance_pb2 import Response

    assert Response.FromString(record.value).text == "raw"


async def test_bad_kafka_options_are_refused() -> None:
    with pytest.raises(ValueError, match="topic"):
        settings_from("kafka://127.0.0.1:9092", {"topic": "{service}"})
    with pytest.raises(ValueError, match="Kafka URL"):
        settings_from("kafka://", {})
    with pytest.raises(ValueError, match="partitions"):
        settings_from("kafka://127.0.0.1:9092", {"partitions": "0"})


def test_batch_size_defaults_to_several_16k_records_within_max_payload() -> None:
    """aiokafka's 16 KiB batches hold one 16 KiB record: every concurrent sender then waits for
    the batch before its own to be drained, and each wake costs a pass through the whole call
    chain (benchmarks/kafka.py: 1.78 M instructions per 16 KiB one-way call, 0.50 M with 128 KiB)."""
    assert settings_from("kafka://127.0.0.1:9092", {}).batch_size == 128 * 1024
    assert settings_from("kafka://127.0.0.1:9092", {"max_payload": "65536"}).batch_size == 65536
    assert settings_from("kafka://127.0.0.1:9092", {"batch_size": "16384"}).batch_size == 16384
    with pytest.raises(ValueError, match="batch_size must not exceed max_payload"):
        settings_from("kafka://127.0.0.1:9092", {"batch_size": "2000000"})


async def test_a_request_to_a_topic_nobody_created_is_unavailable_at_once(kafka_broker: str) -> None:
    async with protobind.connect(kafka_url(kafka_broker, f"tk{next(_names)}.")) as channel:
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            await ConformanceServiceClient(channel).unary(Request(text="x"), timeout=10)
    assert info.value.code is Code.UNAVAILABLE
    assert time.monotonic() - started < 5


async def test_a_plain_aiokafka_producer_makes_a_durable_call_and_a_consumer_reads_its_dead_letter(
    kafka_broker: str, servers: Servers
) -> None:
    """docs/brokers.md (Kafka, durable calls): a durable call is a record on
    ``{prefix}protobind.calls.{service}.{Method}`` with its call id in ``Nats-Msg-Id``; a call that
    fails for good lands on ``{prefix}protobind.dead.{service}.{Method}`` with its error in
    headers. Submit is one-way and durable; NOT_FOUND cannot be fixed by a retry."""
    from jobs.v1.jobs_pb2 import Job

    from .jobs_service import Jobs

    prefix = f"tk{next(_names)}."
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(kafka_url(kafka_broker, prefix))
    boot = bootstrap(kafka_broker)
    producer = AIOKafkaProducer(bootstrap_servers=boot, acks="all")
    await producer.start()
    try:
        for job in (Job(id="ok"), Job(id="bad", fail_attempts=-1, fail_code=int(Code.NOT_FOUND))):
            headers = [("Nats-Msg-Id", f"raw-{job.id}".encode()), ("x-tenant", b"acme")]
            await producer.send_and_wait(
                f"{prefix}protobind.calls.jobs.v1.Jobs.Submit", job.SerializeToString(), headers=headers
            )
    finally:
        await producer.stop()
    await eventually(lambda: jobs.handled("ok") == [1] and jobs.handled("bad") == [1])
    consumer = AIOKafkaConsumer(
        f"{prefix}protobind.dead.jobs.v1.Jobs.Submit",
        bootstrap_servers=boot,
        group_id=f"{prefix}operator",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await consumer.stop()
        await server.stop(1.0)
    headers = {key: value.decode() for key, value in record.headers}
    assert Job.FromString(record.value).id == "bad"
    assert headers["Nats-Msg-Id"] == "raw-bad"
    assert headers["Protobind-Status"] == str(int(Code.NOT_FOUND))
    assert headers["Nats-Service-Error"] == "job bad failed"
    assert headers["Protobind-Attempts"] == "1"
    assert headers["x-tenant"] == "acme"
    assert jobs.deliveries[0][2] in ("raw-ok", "raw-bad")  # the call id is the record's Nats-Msg-Id


async def _ends_cleanly(closing: Any) -> None:
    """``closing`` returns and raises nothing; the wait is a guard against a hang, far above the
    few ``connect_timeout`` the steps of a close are bounded by."""
    task = asyncio.ensure_future(closing)
    await asyncio.wait({task}, timeout=120)
    assert task.done(), "still closing after 120 s"
    assert not task.cancelled(), "closing ended in a CancelledError nobody asked for"
    assert task.exception() is None, repr(task.exception())


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
async def test_a_server_and_a_client_close_when_their_broker_is_killed_or_stops_answering(fault: str) -> None:
    """A private Tansu killed, or stopped (its sockets open, nothing answered), under a server with
    consumer groups (plain and durable methods) and a client: stop() and close() return, raise
    nothing, and leave no task running. aiokafka's consumer stop lets out a CancelledError of its
    fetch tasks when a fetch failed (the close then stopped there, producer and admin client left
    open, the metadata task of each consumer left running), and half of the control-topic
    subscriptions were skipped by close (their delivery tasks left waiting forever)."""
    url, stop_broker = start_kafka_broker()
    try:
        served = kafka_url(url, "kc.", connect_timeout=2)
        server = protobind.Server([Conformance(), Jobs()])
        await server.start(served)
        channel = protobind.connect(served)
        await ConformanceServiceClient(channel).unary(Request(text="before"))
        assert (await JobsClient(channel).run(Job(id="before"))).id == "before"
        os.kill(stop_broker.process.pid, getattr(signal, fault))
        await _ends_cleanly(server.stop(0))
        await _ends_cleanly(channel.close())
        for _ in range(3):  # cancelled tasks end at their next turn
            await asyncio.sleep(0)
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not left, [task.get_coro() for task in left]
    finally:
        os.kill(stop_broker.process.pid, signal.SIGCONT)
        stop_broker()
