"""Durable calls on RabbitMQ only (the shared suite, tests/test_durable.py, runs on amqp too): a
server process killed with SIGKILL in the middle of 1,000 calls, raw aio-pika peers following
docs/protocols.md, and faults on a private node (the broker killed and restarted mid-run, the
connection lost with calls in flight, a slow consumer, poison messages, a 10,000-call backlog).
Every node is private (tests/rabbitmq.py): nothing is left on the machine's broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from jobs.v1.jobs_pb2 import Job, JobResult
from jobs.v1.jobs_protobind import JOBS_RUN, JOBS_SUBMIT, JobsClient

import protobind
from protobind import Code, RpcError
from protobind.durable import DurableCalls

from .durable_worker import kill_a_worker_mid_run
from .jobs_service import Jobs
from .rabbitmq import RabbitMQ
from .support import eventually

SERVICE = "jobs.v1.Jobs"
_names = itertools.count()


def _url(base: str, prefix: str, **options: object) -> str:
    query = "".join(f"&{key}={value}" for key, value in options.items())
    return f"{base}?prefix={prefix}{query}"


async def test_a_server_killed_mid_run_loses_none_of_1000_calls(rabbitmq_server: str, tmp_path: Path) -> None:
    url = _url(rabbitmq_server, f"kill{next(_names)}.", max_ack_pending=32)
    # SIGKILL: RabbitMQ requeues what its channel held unacknowledged
    run = await kill_a_worker_mid_run(url, tmp_path / "handled.log", calls=1000, kill_after=250, timeout=120)
    assert len(run.accepted) == len(set(run.accepted)) == 1000
    ids = Counter(mid for mid, _, _ in run.lines)
    assert set(ids) == set(run.accepted)
    after = [at for _, _, at in run.lines if at > run.killed_at]
    print(
        f"\nSIGKILL mid-run (amqp): all 1000 handled, {sum(n - 1 for n in ids.values())} duplicate "
        f"deliveries; first call handled {min(after) - run.killed_at:.2f} s after the kill; attempts "
        f"{sorted(Counter(a for _, a, _ in run.lines).items())}"
    )


# --- raw aio-pika peers, by the wire rules of docs/protocols.md --------------------------------------


@pytest.fixture
async def raw_peer(rabbitmq_server: str) -> AsyncIterator[tuple[Jobs, Any, str]]:
    """Jobs served under a prefix of its own in group ``billing``, and an aio-pika channel with
    publisher confirms on the same node."""
    prefix = f"raw{next(_names)}."
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(_url(rabbitmq_server, prefix, queue_group="billing"))
    connection = await aio_pika.connect(rabbitmq_server)
    try:
        yield jobs, await connection.channel(publisher_confirms=True), prefix
    finally:
        await connection.close()
        await server.stop(0)


async def _publish(channel: Any, routing_key: str, body: bytes, **properties: Any) -> None:
    exchange = await channel.get_exchange("protobind.durable", ensure=False)
    # confirmed and mandatory: returns once RabbitMQ stored it (raises when no queue took it)
    await exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
        routing_key,
        mandatory=True,
    )


async def test_raw_aio_pika_peers_call_read_replies_and_dead_letters(
    raw_peer: tuple[Jobs, Any, str],
) -> None:
    jobs, channel, prefix = raw_peer
    calls = f"{prefix}$PROTOBIND.DURABLE.{SERVICE}"
    # a one-way call: the documented routing key on the durable exchange, binary protobuf
    await _publish(channel, f"{calls}.Submit", Job(id="from-raw").SerializeToString(), message_id="raw-1")
    # JSON, a header of the caller's own, and a failure with FAILED_PRECONDITION (9)
    bad = json.dumps({"id": "raw-bad", "failAttempts": -1, "failCode": 9}).encode()
    await _publish(
        channel,
        f"{calls}.Submit",
        bad,
        message_id="raw-bad",
        content_type="application/json",
        headers={"x-tenant": "acme"},
    )
    # a request/response call: its reply kept in the queue named like the reply subject
    reply_to = f"{prefix}$PROTOBIND.REPLY.ledger.raw-run"
    await _publish(
        channel,
        f"{calls}.Run",
        Job(id="raw-run", payload="p").SerializeToString(),
        message_id="raw-run",
        headers={"Protobind-Reply-To": reply_to},
    )
    await eventually(lambda: {"from-raw", "raw-bad", "raw-run"} <= set(jobs.ids()))
    reply_queue = reply_to.replace("$", "_")
    reply = None
    deadline = time.monotonic() + 20
    while reply is None and time.monotonic() < deadline:
        try:
            queue = await channel.declare_queue(reply_queue, passive=True)
            reply = await queue.get(no_ack=True, fail=False)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            channel = await channel.channel.connection.channel()  # the 404 closed the channel
        if reply is None:
            await asyncio.sleep(0.05)
    assert reply is not None
    assert reply.headers["Protobind-Method"] == f"{SERVICE}/Run"
    assert JobResult.FromString(reply.body) == JobResult(
        id="raw-run", attempt=1, message_id="raw-run", payload="p"
    )
    # the dead letter, in the dead-letter stream's queue (nobody consumes it yet)
    letters = await channel.declare_queue(f"PROTOBIND_DEAD_{prefix.rstrip('.')}_jobs_v1_Jobs", passive=True)
    letter = await letters.get(no_ack=False, timeout=10)
    assert json.loads(letter.body)["id"] == "raw-bad"
    headers = letter.headers
    assert headers["Protobind-Status"] == "9"
    assert headers["Nats-Service-Error"] == "job raw-bad failed"
    assert headers["x-tenant"] == "acme"
    assert headers["Protobind-Subject"] == f"{calls}.Submit"
    assert headers["Nats-Msg-Id"] == "raw-bad"
    await letter.ack()
    # the group's consumer queues
    for method in ("Submit", "Run"):
        await channel.declare_queue(
            f"PROTOBIND_{prefix.rstrip('.')}_jobs_v1_Jobs.billing_{method}", passive=True
        )
    assert jobs.ids() == Counter({"from-raw": 1, "raw-bad": 1, "raw-run": 1})


async def test_a_store_no_queue_takes_is_refused(rabbitmq_server: str) -> None:
    """Unroutable is not stored: a store on a subject of no stream fails (mandatory, returned)."""
    async with protobind.connect(_url(rabbitmq_server, f"nostream{next(_names)}.")) as channel:
        broker: Any = channel.transport.broker  # type: ignore[attr-defined]
        from protobind.broker.base import NoStream

        with pytest.raises(NoStream):
            await broker.store("no.stream.here", b"x", None, "m1", timeout=5)


async def test_a_store_retried_while_its_confirm_is_late_is_stored_once(rabbitmq_server: str) -> None:
    """An attempt that stops waiting for RabbitMQ's confirm does not take its publish back: the
    durable client's next attempt, with the same message id, must wait for that confirm instead
    of storing a second copy (a loaded broker stored 2 or 3 copies of some calls of a backlog)."""
    from protobind.broker.base import NotStored

    prefix = f"late{next(_names)}."
    url = _url(rabbitmq_server, prefix)
    subject = f"{prefix}$PROTOBIND.DURABLE.{SERVICE}.Submit"
    async with protobind.connect(url) as channel:
        await DurableCalls(channel).submit(JOBS_SUBMIT, Job(id="first"))  # declares the stream
        broker: Any = channel.transport.broker  # type: ignore[attr-defined]
        late = 0
        for i in range(20):
            data = Job(id=f"late{i}").SerializeToString()
            try:
                await broker.store(subject, data, None, f"late-{i}", timeout=1e-6)
            except NotStored:  # gave up before the confirm came: the retry below is the client's
                late += 1
            await broker.store(subject, data, None, f"late-{i}", timeout=10)
        assert late > 0
        await DurableCalls(channel).submit(JOBS_SUBMIT, Job(id="last"))
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(url)
    try:
        await eventually(lambda: "last" in jobs.ids(), timeout=60)
        await asyncio.sleep(0.5)  # a second copy, stored before "last", would be handled by now
    finally:
        await server.stop(0)
    assert jobs.ids() == Counter({"first": 1, "last": 1} | {f"late{i}": 1 for i in range(20)})


# --- faults on a private node ------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_broker_killed_and_restarted_mid_run_loses_no_accepted_call(rabbitmq_factory: Any) -> None:
    node: RabbitMQ = rabbitmq_factory()
    url = _url(node.url, "restart.", reconnect_wait=0.5)
    jobs = Jobs()
    jobs.release.clear()  # nothing is handled before the broker dies: every call is in its queue
    server = protobind.Server([jobs])
    await server.start(url)
    try:
        async with protobind.connect(url) as channel:
            client = JobsClient(channel)
            await asyncio.gather(*(client.submit(Job(id=f"b{i}")) for i in range(200)))
            node.stop(signal.SIGKILL)  # confirmed stores are on disk (quorum queues fsync)
            started = time.monotonic()
            with pytest.raises(RpcError) as down:
                await client.submit(Job(id="while-down"), timeout=3)
            assert down.value.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
            assert time.monotonic() - started < 10
            node.start()
            jobs.release.set()
            await eventually(lambda: set(jobs.ids()) >= {f"b{i}" for i in range(200)}, timeout=120)
            await client.submit(Job(id="after"), timeout=30)
            await eventually(lambda: "after" in jobs.ids(), timeout=30)
    finally:
        await server.stop(0)
    assert "while-down" not in jobs.ids()


async def test_a_consume_cancelled_before_rabbitmq_answered_does_not_pass_for_a_consumer(
    rabbitmq_server: str,
) -> None:
    """aiormq records a consumer before it asks RabbitMQ: a ``basic.consume`` cancelled before
    its request went out leaves the channel open with a consumer RabbitMQ never heard of, which
    protobind would take for one that is consuming (and never consume again)."""
    from protobind.amqp._stored import consume

    async def ignore(message: Any) -> None:
        pass

    connection = await aiormq.connect(rabbitmq_server)
    try:
        channel = await connection.channel(publisher_confirms=False)
        declared = await channel.queue_declare(exclusive=True, auto_delete=True)
        pending = asyncio.ensure_future(consume(channel, declared.queue, ignore, "tag-1", no_ack=True))
        await asyncio.sleep(0)  # the request is made, not yet sent
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert channel.is_closed or "tag-1" not in channel.consumers
    finally:
        await connection.close()


def _cut(broker: Any) -> None:
    """Cut the socket under a broker's AMQP connection, as a network failure would."""
    writer = broker.connection.transport.connection._writer_task.get_coro().cr_frame.f_locals["writer"]
    writer.transport.abort()


async def _pinged(client: JobsClient) -> Code:
    """Call the plain (not durable) Ping until a server answers; the code it answered with."""
    while True:
        try:
            await client.ping(Job(id="ping"), timeout=2)
            return Code.OK
        except RpcError as exc:
            if exc.code not in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED):
                return exc.code
            await asyncio.sleep(0.1)


async def test_consumers_consume_again_when_the_consume_restoring_one_is_cancelled(
    rabbitmq_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defect a broker restart under load met: after a reconnection, the ``basic.consume``
    restoring the server's durable consumer is cancelled (as a timeout cancels it). The server
    still handles durable calls stored afterwards, and its plain consumers answer a plain call
    (aio-pika gave up the reconnection's callbacks then, so neither came back before)."""
    url = _url(rabbitmq_server, f"restore{next(_names)}.", reconnect_wait=0.2)
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(url)
    armed = False
    cancelled: list[str] = []
    basic_consume = aiormq.Channel.basic_consume

    async def cancelled_once(channel: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        queue = kwargs.get("queue", args[0] if args else "")
        if armed and queue.endswith("_Submit"):
            armed = False
            cancelled.append(queue)
            raise asyncio.CancelledError
        return await basic_consume(channel, *args, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "basic_consume", cancelled_once)
    try:
        async with protobind.connect(url) as channel:
            client = JobsClient(channel)
            await client.submit(Job(id="before"))
            await eventually(lambda: "before" in jobs.ids())
            armed = True
            _cut(server.bindings[0].broker)  # type: ignore[attr-defined]
            await eventually(lambda: cancelled, timeout=30)
            await client.submit(Job(id="after"), timeout=30)
            await eventually(lambda: "after" in jobs.ids(), timeout=30)
            assert await asyncio.wait_for(_pinged(client), 30) is Code.UNIMPLEMENTED
    finally:
        await server.stop(0)
    # "before" may be handled twice: its acknowledgement may not have reached RabbitMQ before the cut
    assert set(jobs.ids()) == {"before", "after"}


@pytest.mark.slow
async def test_a_consumer_whose_channel_rabbitmq_closed_consumes_again_though_its_first_consume_fails(
    rabbitmq_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ closes the channel of a durable consumer that held a call past its
    ``consumer_timeout`` (here 1 s), with the connection up; the first ``basic.consume`` that would
    restore the consumer times out. The server consumes again all the same, and handles the held
    call and one stored afterwards (aio-pika's restore of that channel was not tried again)."""
    node: RabbitMQ = rabbitmq_factory(consumer_timeout=1.0)
    url = _url(node.url, "closed.", reconnect_wait=0.2)
    jobs = Jobs()
    jobs.release.clear()
    server = protobind.Server([jobs])
    await server.start(url)
    failed: list[str] = []
    basic_consume = aiormq.Channel.basic_consume

    async def fails_once(channel: Any, *args: Any, **kwargs: Any) -> Any:
        queue = kwargs.get("queue", args[0] if args else "")
        if not failed and queue.endswith("_Submit"):
            failed.append(queue)
            raise asyncio.TimeoutError
        return await basic_consume(channel, *args, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "basic_consume", fails_once)
    try:
        async with protobind.connect(url) as channel:
            client = JobsClient(channel)
            await client.submit(Job(id="held"))
            await eventually(lambda: failed, timeout=60)  # the channel closed, its consume failed
            jobs.release.set()
            await client.submit(Job(id="after"), timeout=30)
            await eventually(lambda: "after" in jobs.ids(), timeout=30)
    finally:
        await server.stop(0)
    assert set(jobs.ids()) == {"held", "after"}


async def test_a_slow_consumer_holds_at_most_max_ack_pending(rabbitmq_server: str) -> None:
    url = _url(rabbitmq_server, f"slow{next(_names)}.", max_ack_pending=4)
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(url)
    try:
        async with protobind.connect(url) as channel:
            await asyncio.gather(
                *(JobsClient(channel).submit(Job(id=f"s{i}", work=0.02)) for i in range(100))
            )
        await eventually(lambda: len(jobs.deliveries) == 100 and jobs.running == 0, timeout=60)
    finally:
        await server.stop(0)
    assert jobs.most_running <= 4
    assert jobs.ids() == Counter({f"s{i}": 1 for i in range(100)})


async def test_poison_messages_go_to_the_dead_letter_and_the_server_keeps_serving(
    raw_peer: tuple[Jobs, Any, str],
) -> None:
    jobs, channel, prefix = raw_peer
    submit = f"{prefix}$PROTOBIND.DURABLE.{SERVICE}.Submit"
    poison = [
        (b"\xff\xfe garbage", {}),  # not protobuf
        (b"", {"content_type": "application/x-unknown"}),  # a codec nobody knows
        (Job(id="odd-headers").SerializeToString(), {"headers": {"Protobind-Timeout": "soon", "n": 7}}),
    ]
    for n, (body, properties) in enumerate(poison):
        await _publish(channel, submit, body, message_id=f"poison-{n}", **properties)
    await _publish(channel, submit, Job(id="healthy").SerializeToString(), message_id="healthy")
    await eventually(lambda: "healthy" in jobs.ids())
    letters = await channel.declare_queue(f"PROTOBIND_DEAD_{prefix.rstrip('.')}_jobs_v1_Jobs", passive=True)
    found = {}
    deadline = time.monotonic() + 20
    while len(found) < 2 and time.monotonic() < deadline:
        letter = await letters.get(no_ack=True, fail=False)
        if letter is None:
            await asyncio.sleep(0.05)
            continue
        found[letter.message_id] = letter.headers["Protobind-Status"]
    assert found["poison-0"] == found["poison-1"] == str(int(Code.INVALID_ARGUMENT))
    assert "healthy" in jobs.ids()


async def test_calls_stored_before_any_server_are_claimed_by_the_method_they_are_for(
    rabbitmq_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submit and Run calls stored while no server ran wait in the stream's queue; each method's
    consumer claims its own (pipelined copies) and leaves the other's. A claim window of 3 makes
    the other method's calls fill it, so the rest is read one by one: every call still handled once."""
    from protobind.amqp import _stored as stored

    monkeypatch.setattr(stored, "CLAIM_WINDOW", 3)
    url = _url(rabbitmq_server, f"claim{next(_names)}.")
    async with protobind.connect(url) as channel:
        calls = DurableCalls(channel)
        for i in range(20):
            await calls.submit(JOBS_SUBMIT, Job(id=f"s{i}"))
            await calls.submit(JOBS_RUN, Job(id=f"r{i}"))
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(url)
    try:
        expected = {f"s{i}" for i in range(20)} | {f"r{i}" for i in range(20)}
        await eventually(lambda: set(jobs.ids()) >= expected, timeout=60)
    finally:
        await server.stop(0)
    assert jobs.ids() == Counter({name: 1 for name in expected})


@pytest.mark.slow
@pytest.mark.timeout(900)  # stores 10,000 calls, then waits up to 300 s for them: 90 s in a full run
async def test_a_backlog_of_10000_calls_is_handled_once_a_server_starts(rabbitmq_server: str) -> None:
    # a store's budget sized for a loaded machine: 500 stores in flight on a shared broker
    url = _url(rabbitmq_server, f"backlog{next(_names)}.", max_ack_pending=256, store_timeout=60)
    count = 10_000
    started = time.monotonic()
    async with protobind.connect(url) as channel:
        client = JobsClient(channel)
        for start in range(0, count, 500):
            await asyncio.gather(*(client.submit(Job(id=f"k{i}")) for i in range(start, start + 500)))
    stored = time.monotonic() - started
    jobs = Jobs()
    server = protobind.Server([jobs])
    started = time.monotonic()
    await server.start(url)
    try:
        await eventually(lambda: len(jobs.deliveries) >= count, timeout=300)
        drained = time.monotonic() - started
    finally:
        await server.stop(0)
    ids = jobs.ids()
    assert len(ids) == count and set(ids.values()) == {1}
    print(
        f"\n10,000-call backlog (amqp): stored in {stored:.1f} s ({count / stored:.0f}/s), "
        f"handled in {drained:.1f} s"
    )


# --- discovery ------------------------------------------------------------------------------------


async def test_describe_and_the_asyncapi_document_over_amqp(
    raw_peer: tuple[Jobs, Any, str], rabbitmq_server: str
) -> None:
    import subprocess
    import sys

    from .support import ROOT

    _, channel, prefix = raw_peer
    # the AsyncAPI document, asked for by a raw AMQP request (reply_to + correlation_id)
    inbox = await channel.declare_queue("", exclusive=True)
    exchange = await channel.get_exchange("protobind", ensure=False)
    await exchange.publish(
        aio_pika.Message(b"", reply_to=inbox.name, correlation_id="doc"),
        f"{prefix}$PROTOBIND.ASYNCAPI.{SERVICE}",
        mandatory=True,
    )
    answer = await inbox.get(timeout=10, fail=False)
    deadline = time.monotonic() + 10
    while answer is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        answer = await inbox.get(fail=False)
    assert answer is not None
    document = json.loads(answer.body)
    (server_entry,) = document["servers"].values()
    assert (server_entry["protocol"], server_entry["protocolVersion"]) == ("amqp", "0.9.1")
    assert "guest" not in json.dumps(server_entry)
    assert "RabbitMQ routing keys" in document["info"]["description"]
    channels = document["channels"]
    submit = channels["jobs_v1_Jobs_Submit"]
    assert submit["address"] == f"{prefix}$PROTOBIND.DURABLE.{SERVICE}.Submit"
    assert submit["bindings"]["amqp"]["is"] == "routingKey"
    assert submit["bindings"]["amqp"]["exchange"]["name"] == "protobind.durable"
    dead = channels["jobs_v1_Jobs_Submit_dead_letter"]
    assert dead["bindings"]["amqp"]["exchange"]["name"] == "protobind.durable"
    ping = channels["jobs_v1_Jobs_Ping"]
    assert ping["bindings"]["amqp"]["exchange"]["name"] == "protobind"
    operation = document["operations"]["jobs_v1_Jobs_Submit"]
    assert operation["bindings"]["amqp"]["deliveryMode"] == 2
    assert operation["bindings"]["amqp"]["mandatory"] is True
    assert document["operations"]["jobs_v1_Jobs_Ping"]["bindings"]["amqp"]["ack"] is True
    # `protobind describe` by reflection over amqp://
    url = f"{rabbitmq_server}?prefix={prefix}"
    described = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "protobind", "describe", url, SERVICE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert described.returncode == 0, described.stderr
    assert described.stdout.startswith(f"{SERVICE} is a service:\n")
    assert "rpc Submit" in described.stdout
