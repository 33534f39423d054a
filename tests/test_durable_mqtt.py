"""Durable calls on MQTT 5 only (the shared suite is tests/test_durable.py): a server process
killed with SIGKILL mid-run, a call nobody keeps, a backlog within Mosquitto's default queue
limit, and raw clients (zmqtt, mosquitto_pub/mosquitto_sub) calling and reading dead letters by
the wire rules of docs/protocols.md. Each runs on a private Mosquitto."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import zmqtt
from jobs.v1.jobs_pb2 import Job
from jobs.v1.jobs_protobind import JOBS_SUBMIT, JobsClient

import protobind
from protobind import Code, RpcError
from protobind.durable import DurableCalls

from .durable_worker import kill_a_worker_mid_run
from .jobs_service import Jobs
from .mosquitto import Mosquitto
from .support import eventually

SUBMIT_TOPIC = "_PROTOBIND/DURABLE/jobs/v1/Jobs/Submit"


async def run(*command: str, check: bool = True) -> bytes:
    """Run a mosquitto command-line client; its standard output."""
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, check=check, timeout=15)
    return done.stdout


async def test_a_call_no_server_session_keeps_is_refused_not_lost(mosquitto: Mosquitto) -> None:
    """Mosquitto keeps a QoS 1 message only for sessions subscribed to it; its PUBACK says when
    there is none (0x10): the call fails with UNAVAILABLE instead of vanishing."""
    url = f"{mosquitto.url}?prefix=nobody&store_timeout=0.5"
    async with protobind.connect(url) as channel:
        with pytest.raises(RpcError) as refused:
            await JobsClient(channel).submit(Job(id="lost?"))
    assert refused.value.code is Code.UNAVAILABLE
    assert "no server session keeps the calls" in refused.value.message
    assert "127.0.0.1" not in refused.value.message


async def test_a_server_killed_mid_run_loses_none_of_300_calls(mosquitto: Mosquitto, tmp_path: Path) -> None:
    url = f"{mosquitto.url}?prefix=kill"
    # SIGKILL: the calls in its hands are not acknowledged; the next worker has the same session
    # (same client id): the broker hands back what the dead one held
    run = await kill_a_worker_mid_run(url, tmp_path / "handled.log", calls=300, kill_after=60, timeout=60)
    assert len(run.accepted) == len(set(run.accepted)) == 300
    ids = Counter(mid for mid, _, _ in run.lines)
    assert set(ids) == set(run.accepted)
    print(
        f"\nMQTT SIGKILL mid-run: 300 accepted, {run.handled_before_kill} handled before the kill, all "
        f"handled; {sum(n - 1 for n in ids.values())} duplicate deliveries"
    )


async def test_a_backlog_within_mosquittos_default_queue_limit_is_handled(
    mosquitto_factory: object,
) -> None:
    """max_queued_messages is 1000 by default: 900 calls made while the server is away all wait."""
    broker: Mosquitto = mosquitto_factory(extra="max_queued_messages 1000")  # type: ignore[operator]
    url = f"{broker.url}?prefix=backlog"
    server = protobind.Server([Jobs()])
    await server.start(url)
    await server.stop(0)  # its session stays, subscribed
    async with protobind.connect(url) as channel:
        calls = DurableCalls(channel)
        for i in range(900):
            await calls.submit(JOBS_SUBMIT, Job(id=f"b{i}"))
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(url)
    try:
        await eventually(lambda: len(jobs.deliveries) >= 900, timeout=60)
        assert jobs.ids() == Counter({f"b{i}": 1 for i in range(900)})
    finally:
        await server.stop(0)


@pytest.mark.skipif(not shutil.which("mosquitto_pub"), reason="needs mosquitto_pub and mosquitto_sub")
async def test_raw_mosquitto_clients_call_and_read_dead_letters(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """docs/protocols.md, "MQTT 5", durable calls: a QoS 1 publish with the call id in
    ``Nats-Msg-Id``; dead letters are retained at ``{dead-letter topic}/{call id}`` with the
    error in user properties, read by subscribing and removed by an empty retained message."""
    url = f"{mosquitto.url}?prefix=raw&queue_group=billing"
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(url)
    host = ["-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "mqttv5"]
    dead = "raw/_PROTOBIND/DEAD/jobs/v1/Jobs/Submit"
    try:
        for call_id, job in (("ok-1", Job(id="ok")), ("bad-1", Job(id="bad", fail_attempts=-1, fail_code=3))):
            body = tmp_path / f"{call_id}.bin"
            body.write_bytes(job.SerializeToString())
            publish = ["-q", "1", "-t", f"raw/{SUBMIT_TOPIC}", "-f", str(body)]
            await run(
                "mosquitto_pub", *host, *publish, "-D", "publish", "user-property", "Nats-Msg-Id", call_id
            )
        await eventually(lambda: len(jobs.deliveries) == 2)
        # every dead letter is there for a subscriber, whenever it comes: a retained message
        read = await run("mosquitto_sub", *host, "-t", f"{dead}/+", "-C", "1", "-W", "10", "-F", "%t|%P|%x")
        topic, properties, body_hex = read.decode().strip().split("|")
        assert topic == f"{dead}/bad-1"
        assert "Protobind-Status:3" in properties and "Nats-Service-Error:job bad failed" in properties
        assert "Protobind-Attempts:1" in properties and "Nats-Msg-Id:bad-1" in properties
        assert Job.FromString(bytes.fromhex(body_hex)).id == "bad"
        # read: removed with an empty retained message; nothing is left
        await run("mosquitto_pub", *host, "-t", f"{dead}/bad-1", "-r", "-n")
        assert await run("mosquitto_sub", *host, "-t", f"{dead}/+", "-C", "1", "-W", "1", check=False) == b""
        assert jobs.ids() == Counter({"ok": 1, "bad": 1})
    finally:
        await server.stop(0)


async def test_raw_zmqtt_client_calls_and_reads_dead_letters(mosquitto: Mosquitto) -> None:
    """The same wire rules with a few lines of an MQTT 5 library (zmqtt): a QoS 1 call whose PUBACK
    says it is stored, the dead letter read from its retained topic with the error in user
    properties, and removed by an empty retained message."""
    url = f"{mosquitto.url}?prefix=zraw"
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(url)
    dead = "zraw/_PROTOBIND/DEAD/jobs/v1/Jobs/Submit"
    raw = zmqtt.create_client("127.0.0.1", mosquitto.port, version="5.0")
    await raw.connect()
    try:
        bad = Job(id="bad", fail_attempts=-1, fail_code=3)
        # A subscriber that is already there gets the dead letter as it is published. Retain As
        # Published keeps the flag the server set, so the test does not depend on whether the letter
        # is stored before or after the subscription (a race that once failed CI).
        async with raw.subscribe(f"{dead}/+", qos=zmqtt.QoS.AT_LEAST_ONCE, retain_as_published=True) as live:
            await raw.publish(
                f"zraw/{SUBMIT_TOPIC}",
                bad.SerializeToString(),
                qos=zmqtt.QoS.AT_LEAST_ONCE,
                properties=zmqtt.PublishProperties(user_properties=(("Nats-Msg-Id", "zbad-1"),)),
            )
            published = await asyncio.wait_for(live.get_message(), 10)
        assert published.topic == f"{dead}/zbad-1" and published.retain
        assert len(jobs.deliveries) == 1
        # one that comes later finds it stored: the broker sends it as a retained message
        async with raw.subscribe(f"{dead}/+", qos=zmqtt.QoS.AT_LEAST_ONCE) as letters:
            letter = await asyncio.wait_for(letters.get_message(), 10)
        assert letter.topic == f"{dead}/zbad-1" and letter.retain
        assert letter.properties is not None
        properties = dict(letter.properties.user_properties)
        assert properties["Protobind-Status"] == "3" and properties["Nats-Service-Error"] == "job bad failed"
        assert properties["Protobind-Attempts"] == "1" and properties["Nats-Msg-Id"] == "zbad-1"
        assert Job.FromString(letter.payload) == bad
        # read: removed with an empty retained message; a new subscriber finds nothing
        await raw.publish(f"{dead}/zbad-1", b"", qos=zmqtt.QoS.AT_LEAST_ONCE, retain=True)
        async with raw.subscribe(f"{dead}/+") as letters:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(letters.get_message(), 0.5)
    finally:
        await raw.disconnect()
        await server.stop(0)
