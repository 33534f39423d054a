"""Durable one-way calls: protobind vs the raw client, publish + handle throughput, on JetStream
(raw nats-py) or on RabbitMQ (``--broker amqp``: raw aio-pika).

    python -m benchmarks.durable                      # 20,000 messages of 100 B, 3 rounds
    python -m benchmarks.durable --messages 50000 --payload 16384
    python -m benchmarks.durable --broker amqp        # a private rabbitmq-server node (tests/rabbitmq.py)

Both sides do the same work over the same nats-server (JetStream, file storage): a publisher
process stores ``--messages`` events with ``--concurrency`` publishes in flight, each waiting for
its JetStream acknowledgement and carrying a ``Nats-Msg-Id`` (de-duplication); a consumer process
pulls them from a durable pull consumer, parses each as ``bench.v1.Event`` and acknowledges it.

- protobind: ``SinkClient.ingest(event)`` (a method marked oneway + durable) against a
  ``protobind.Server`` whose handler parses nothing more (the runtime decoded the event).
- raw: nats-py ``js.publish(subject, bytes, headers={"Nats-Msg-Id": ...})`` and
  ``js.pull_subscribe(...)``/``fetch(batch=64)``, ``Event.FromString``, ``msg.ack()``.

On RabbitMQ, protobind stores each call with a persistent, mandatory publish confirmed by the
broker in a quorum queue per consumer and acknowledges each handled call (docs/brokers.md); the raw
side does the same by hand with aio-pika: a durable quorum queue, ``publisher_confirms=True``,
persistent messages with a ``message_id``, ``mandatory``, and a consumer with the same prefetch as
protobind's ``max_ack_pending`` (1000) that parses each event and acknowledges it.

Throughput = messages / (last message handled - first publish). The two sides run back to back,
in alternating order, each on fresh streams; figures are medians over ``--rounds`` with min-max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def _stubs() -> None:
    """Generate benchmarks/gen from benchmarks/proto when needed; make it importable."""
    sys.path.insert(0, str(ROOT / "examples"))
    from _support import generate_stubs

    generate_stubs(HERE)


# --- the two consumers and publishers (each runs in a process of its own) ------------------------


async def consume(side: str, url: str, prefix: str, count: int) -> dict[str, float]:
    _stubs()
    from bench.v1.bench_pb2 import Event

    done = asyncio.Event()
    times: list[float] = []

    def handled() -> None:
        times.append(time.monotonic())
        if len(times) == count:
            done.set()

    if side == "protobind":
        from bench.v1.bench_protobind import SinkService
        from google.protobuf.empty_pb2 import Empty

        import protobind

        class Sink(SinkService):
            async def ingest(self, request: Event, context: protobind.Context) -> Empty:
                handled()
                return Empty()

        server = protobind.Server([Sink()])
        await server.start(f"{url}?prefix={prefix}")
        print("READY", flush=True)
        await done.wait()
        await server.stop(grace=1.0)
    elif url.startswith("amqp"):
        import aio_pika

        connection = await aio_pika.connect(url)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(
            f"{prefix}raw.events", durable=True, arguments={"x-queue-type": "quorum"}
        )

        async def on_event(message: Any) -> None:
            Event.FromString(message.body)
            await message.ack()
            handled()

        tag = await queue.consume(on_event)
        print("READY", flush=True)
        await done.wait()
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        await connection.close()
    else:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        subject = f"{prefix}raw.events"
        await js.add_stream(name=f"{prefix.strip('.')}_RAW", subjects=[subject])
        sub = await js.pull_subscribe(subject, durable="raw", stream=f"{prefix.strip('.')}_RAW")
        print("READY", flush=True)
        while not done.is_set():
            try:
                messages = await sub.fetch(64, timeout=1)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in messages:
                Event.FromString(msg.data)
                await msg.ack()
                handled()
        await nc.flush()  # the last acks
        await nc.close()
    return {"first_handled": times[0], "last_handled": times[-1]}


async def publish(
    side: str, url: str, prefix: str, count: int, size: int, concurrency: int
) -> dict[str, float]:
    _stubs()
    from bench.v1.bench_pb2 import Event

    payload = b"x" * size
    left = count
    if side == "protobind":
        from bench.v1.bench_protobind import SinkClient

        import protobind

        channel = await protobind.connect(f"{url}?prefix={prefix}").open()
        client = SinkClient(channel)
        await client.ingest(Event(payload=payload))  # creates the stream; counted below
        left -= 1

        async def send() -> None:
            await client.ingest(Event(payload=payload), timeout=30)

        close = channel.close
    elif url.startswith("amqp"):
        import aio_pika

        connection = await aio_pika.connect(url)
        confirmed = await connection.channel(publisher_confirms=True)

        async def send() -> None:
            message = aio_pika.Message(
                Event(payload=payload).SerializeToString(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=os.urandom(16).hex(),
            )
            await confirmed.default_exchange.publish(
                message, f"{prefix}raw.events", mandatory=True, timeout=30
            )

        await send()
        left -= 1
        close = connection.close
    else:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        subject = f"{prefix}raw.events"

        async def send() -> None:
            data = Event(payload=payload).SerializeToString()
            await js.publish(subject, data, timeout=30, headers={"Nats-Msg-Id": os.urandom(16).hex()})

        await send()
        left -= 1
        close = nc.drain

    async def worker(n: int) -> None:
        for _ in range(n):
            await send()

    started = time.monotonic()
    share, extra = divmod(left, concurrency)
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))
    ended = time.monotonic()
    await close()
    return {"publish_start": started, "publish_end": ended}


# --- the driver ----------------------------------------------------------------------------------


def _json_line(proc: subprocess.Popen[str]) -> dict[str, float]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            result: dict[str, float] = json.loads(line)
            return result
    raise RuntimeError(f"no result from {proc.args!r}")


def run_side(side: str, url: str, prefix: str, args: argparse.Namespace) -> dict[str, float]:
    me = [sys.executable, "-m", "benchmarks.durable"]
    consumer = subprocess.Popen(
        [*me, "consume", side, url, prefix, str(args.messages)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert consumer.stdout is not None
    if consumer.stdout.readline().strip() != "READY":
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


def _broker(kind: str) -> tuple[str, Any]:
    """A broker of this run's own: nats-server with JetStream, or a private rabbitmq-server node."""
    store = tempfile.mkdtemp(prefix=f"protobind-bench-{kind}-")
    if kind == "nats":
        from protobind.nats.embedded import start_nats_server

        return start_nats_server(args=["-js", "-sd", store])
    import shutil

    sys.path.insert(0, str(ROOT))
    from tests.rabbitmq import RabbitMQ

    node = RabbitMQ(Path(store))
    node.start()

    def stop() -> None:
        node.stop()
        shutil.rmtree(store, ignore_errors=True)

    return node.url, stop


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker", choices=("nats", "amqp"), default="nats")
    args = parser.parse_args()
    url, stop = _broker(args.broker)
    results: dict[str, list[dict[str, float]]] = {"protobind": [], "raw": []}
    try:
        for round_ in range(args.rounds):
            order = ["protobind", "raw"] if round_ % 2 == 0 else ["raw", "protobind"]
            for side in order:
                result = run_side(side, url, f"r{round_}{side[0]}.", args)
                results[side].append(result)
                print(f"round {round_ + 1} {side:9} {result['msgs_per_s']:,.0f} msgs/s", flush=True)
    finally:
        stop()
    ours = [r["msgs_per_s"] for r in results["protobind"]]
    raw = [r["msgs_per_s"] for r in results["raw"]]
    raw_name = "raw aio-pika" if args.broker == "amqp" else "raw nats-py"
    print(
        f"\ndurable one-way on {args.broker}, {args.payload} B, {args.messages:,} messages, "
        f"{args.concurrency} in flight"
    )
    for side, label in (("protobind", "protobind  "), ("raw", raw_name)):
        handled = _summary([r["msgs_per_s"] for r in results[side]])
        published = _summary([r["publish_per_s"] for r in results[side]])
        print(f"{label} {handled} msgs/s  (publishing alone {published} msgs/s)")
    print(f"ratio protobind / raw: {statistics.median(ours) / statistics.median(raw):.2f}x")


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
