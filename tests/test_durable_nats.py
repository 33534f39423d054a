"""Durable calls on NATS JetStream only: a server process killed with SIGKILL in the middle of
1,000 calls, a store acknowledgement lost, raw nats-py peers, no JetStream, and a 3-node cluster
losing a node. Each run prints what it measured (duplicates, pauses); ``pytest -s`` shows it."""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from google.protobuf.empty_pb2 import Empty
from jobs.v1.jobs_pb2 import Job
from jobs.v1.jobs_protobind import JOBS_SUBMIT, JobsClient, JobsService

import protobind
from protobind import Code, RpcError
from protobind.durable import DurableCalls
from protobind.nats.embedded import StopServer

from .durable_worker import kill_a_worker_mid_run
from .jobs_service import Jobs
from .nats_server import NatsServers
from .support import eventually, free_port

SUBMIT = "$PROTOBIND.DURABLE.jobs.v1.Jobs.Submit"
RAW = "raw."


@pytest.fixture
def store_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="protobind-js-") as path:
        yield path


def longest_pause(times: list[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


async def test_a_server_killed_mid_run_loses_none_of_1000_calls(
    store_dir: str, nats_servers: NatsServers, tmp_path: Path
) -> None:
    # store_dir first: fixtures are torn down in reverse, so nats-server stops before its store
    # is removed (the other way round it may still be writing there: "Directory not empty")
    nats_url, _ = nats_servers.start(args=["-js", "-sd", store_dir])
    # ack_wait 1 s: the killed server's unacknowledged calls come back a second after it died
    url = f"{nats_url}?prefix=kill.&ack_wait=1&max_ack_pending=32"
    # SIGKILL: no goodbye, calls in its hands unacknowledged
    run = await kill_a_worker_mid_run(url, tmp_path / "handled.log", calls=1000, kill_after=250, timeout=120)
    assert len(run.accepted) == len(set(run.accepted)) == 1000
    ids = Counter(mid for mid, _, _ in run.lines)
    assert set(ids) == set(run.accepted)  # every accepted call handled, nothing else
    duplicates = sum(n - 1 for n in ids.values())
    after_kill = [at for _, _, at in run.lines if at > run.killed_at]
    pause = (min(after_kill) - run.killed_at) if after_kill else 0.0
    print(
        f"\nSIGKILL mid-run: 1000 accepted, {run.handled_before_kill} handled before the kill, all 1000 "
        f"handled; {duplicates} duplicate deliveries (handled before the kill, not yet acknowledged); "
        f"first call handled {pause:.2f} s after the kill; "
        f"redelivered attempts seen: {sorted(Counter(a for _, a, _ in run.lines).items())}"
    )


@pytest.fixture
async def raw_peer(jetstream_server: str) -> AsyncIterator[tuple[Jobs, Any]]:
    """The Jobs service served under the prefix ``raw.`` in group ``billing``, and a nats-py
    connection to the same server."""
    jobs = Jobs()
    server = protobind.Server([jobs])
    await server.start(f"{jetstream_server}?prefix=raw.&queue_group=billing")
    nc = await nats.connect(jetstream_server)
    try:
        yield jobs, nc
    finally:
        await nc.close()
        await server.stop(0)


async def test_a_publish_retried_after_its_ack_was_lost_is_stored_once(
    raw_peer: tuple[Jobs, Any], jetstream_server: str
) -> None:
    jobs, nc = raw_peer
    # the first publish of call "retry-1": its PubAck goes to no one (the ack is lost) ...
    data = Job(id="retry-1").SerializeToString()
    await nc.publish(RAW + SUBMIT, data, headers={"Nats-Msg-Id": "retry-1"})
    await nc.flush()
    # ... so the caller publishes it again, with the same message id
    async with protobind.connect(f"{jetstream_server}?prefix={RAW}") as channel:
        calls = DurableCalls(channel)
        assert await calls.submit(JOBS_SUBMIT, Job(id="retry-1"), call_id="retry-1") == "retry-1"
        await calls.submit(JOBS_SUBMIT, Job(id="marker"))
    await eventually(lambda: "marker" in jobs.ids())
    js = nc.jetstream()
    info = await js.stream_info("PROTOBIND_raw_jobs_v1_Jobs", subjects_filter=RAW + SUBMIT)
    assert info.state.messages == 2  # retry-1 once, and the marker
    assert jobs.ids() == Counter({"retry-1": 1, "marker": 1})


async def test_raw_jetstream_peers_call_and_read_dead_letters(raw_peer: tuple[Jobs, Any]) -> None:
    jobs, nc = raw_peer
    js = nc.jetstream()
    # a plain JetStream publish is a durable call: the documented subject, binary protobuf
    ack = await js.publish(RAW + SUBMIT, Job(id="from-raw").SerializeToString())
    assert ack.stream == "PROTOBIND_raw_jobs_v1_Jobs"
    # and JSON works as on every NATS call; a call failing with FAILED_PRECONDITION (9)
    bad = json.dumps({"id": "raw-bad", "failAttempts": -1, "failCode": 9}).encode()
    headers = {"Content-Type": "application/json", "x-tenant": "acme"}
    await js.publish(RAW + SUBMIT, bad, headers=headers)
    await eventually(lambda: "raw-bad" in jobs.ids() and "from-raw" in jobs.ids())
    # the dead letter, read with nats-py from the documented stream
    sub = await js.pull_subscribe(
        RAW + "$PROTOBIND.DEAD.jobs.v1.Jobs.Submit", stream="PROTOBIND_DEAD_raw_jobs_v1_Jobs"
    )
    (letter,) = await sub.fetch(1, timeout=10)
    assert json.loads(letter.data)["id"] == "raw-bad"
    assert letter.headers["Protobind-Status"] == "9"
    assert letter.headers["Nats-Service-Error"] == "job raw-bad failed"
    assert letter.headers["x-tenant"] == "acme"
    assert letter.headers["Protobind-Subject"] == RAW + SUBMIT
    consumers = await js.consumers_info("PROTOBIND_raw_jobs_v1_Jobs")
    assert sorted(c.name for c in consumers) == ["billing_Run", "billing_Submit"]


async def test_durable_methods_need_jetstream(nats_server: str) -> None:
    """Said once, with what to run: `nats-server -js`, or `protobind nats-server --js` to try it."""
    off = (
        "JetStream is not enabled on this NATS server: start it with `nats-server -js` "
        "(for development, `protobind nats-server --js`)"
    )
    with pytest.raises(ConnectionError) as failed:
        await protobind.Server([Jobs()]).start(f"{nats_server}?prefix=nojs.")
    assert (
        str(failed.value)
        == f"cannot serve durable methods on nats: stream PROTOBIND_nojs_jobs_v1_Jobs: {off}"
    )
    async with protobind.connect(f"{nats_server}?prefix=nojs.") as channel:
        with pytest.raises(RpcError) as refused:
            await JobsClient(channel).submit(Job(id="x"), timeout=5)
    assert refused.value.code is Code.UNAVAILABLE
    assert refused.value.message.endswith(off) and refused.value.message.count("JetStream") == 1


# --- a three-node cluster losing a node --------------------------------------------------------------


@pytest.fixture
def cluster(store_dir: str, nats_servers: NatsServers) -> list[tuple[str, StopServer]]:
    """Three nats-server nodes routed to each other, JetStream on each (R3 streams possible);
    stopped when the test ends."""
    routes = [free_port() for _ in range(3)]
    nodes: list[tuple[str, StopServer]] = []
    for i, port in enumerate(routes):
        others = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes if p != port)
        config = f"""
            server_name: n{i}
            jetstream {{ store_dir: "{Path(store_dir) / f"n{i}"}" }}
            cluster {{ name: protobind, listen: "127.0.0.1:{port}", routes: [{others}] }}
        """
        nodes.append(nats_servers.start(config=config))
    return nodes


async def _when_jetstream_ready(url: str) -> None:
    """A fresh cluster elects its JetStream meta leader within seconds, and only later knows all
    three nodes as peers (until then an R3 stream gets "no suitable peers for placement", as
    seen on a loaded machine): wait until an R3 stream can be made, then remove it."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 60
        while True:
            try:
                await js.add_stream(name="READY", subjects=["protobind.ready"], num_replicas=3)
                await js.delete_stream("READY")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


class Timed(JobsService):
    def __init__(self) -> None:
        self.handled: list[tuple[str, float]] = []

    async def submit(self, request: Job, context: protobind.Context) -> Empty:
        assert context.delivery is not None
        self.handled.append((context.delivery.message_id, time.monotonic()))
        return Empty()


@pytest.mark.slow
async def test_a_cluster_losing_a_node_loses_no_accepted_call(
    cluster: list[tuple[str, StopServer]],
) -> None:
    (url0, stop0), (url1, _), (url2, _) = cluster
    await _when_jetstream_ready(url0)
    options = "?prefix=cl.&stream_replicas=3&ack_wait=2&reconnect_wait=0.2"
    replicas = [Timed(), Timed()]
    servers = []
    for service, url in zip(replicas, (url0, url1), strict=True):  # replicas on nodes 0 and 1
        server = protobind.Server([service])
        await server.start(url + options)
        servers.append(server)
    accepted: list[str] = []
    refused = 0
    killed_at = 0.0
    failed_over = asyncio.Event()  # the replica whose node died serves again, from another node

    def record(service: Timed) -> None:
        if killed_at and any(t > killed_at for _, t in service.handled):
            failed_over.set()

    try:
        async with protobind.connect(url2 + options) as channel:  # the producer on node 2
            calls = DurableCalls(channel)

            async def produce() -> None:
                nonlocal refused
                while len(accepted) < 600 or not failed_over.is_set():
                    try:
                        accepted.append(await calls.submit(JOBS_SUBMIT, Job(), timeout=10))
                    except RpcError:
                        refused += 1  # not accepted: the caller knows, and may try again
                    record(replicas[0])
                    await asyncio.sleep(0.005)

            producing = asyncio.gather(*(produce() for _ in range(4)))
            await eventually(lambda: len(accepted) >= 200, timeout=60)
            stop0.kill()  # node 0 dies: a replica's node, maybe the stream's leader
            killed_at = time.monotonic()
            await asyncio.wait_for(producing, 60)
            done = lambda: {m for s in replicas for m, _ in s.handled} >= set(accepted)  # noqa: E731
            await eventually(done, timeout=120)
    finally:
        for server in servers:
            await server.stop(0)
    ids = Counter(m for s in replicas for m, _ in s.handled)
    assert set(accepted) <= set(ids)
    duplicates = sum(n - 1 for n in ids.values())
    times = [t for s in replicas for _, t in s.handled]
    after = [t for t in times if t > killed_at]
    resumed = min(t for _, t in replicas[0].handled if t > killed_at) - killed_at
    print(
        f"\n3-node cluster, node 0 SIGKILLed: {len(accepted)} calls accepted ({refused} refused while "
        f"the cluster recovered), all handled, {duplicates} duplicate deliveries; first call handled "
        f"{min(after) - killed_at:.2f} s after the kill; longest pause in handling "
        f"{longest_pause(times):.2f} s; the replica of node 0 served again {resumed:.2f} s after the kill"
    )
