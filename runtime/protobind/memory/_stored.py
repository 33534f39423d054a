"""Stored-message streams and durable consumers of the in-memory broker: JetStream's semantics.

(A stream here is a sequence of stored messages, as in JetStream; an RPC stream is
:mod:`protobind.broker._stream`.)

What :class:`~protobind.broker.base.DurableBroker` promises, kept in memory per ``memory://NAME``:
a store acknowledged before the publisher goes on, de-duplication by message id within the
stream's duplicate window, per-message time to live, and pull consumers whose messages come back
after a nak (with its delay) or when ``ack_wait`` passes without an ack or an in-progress ack, at
most ``max_ack_pending`` out at a time. Nothing survives the process: that is what users' unit
tests need (no nats-server), and the durable test suite runs on this broker and on JetStream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..broker._subjects import matches, overlap, tokens
from ..broker.base import (
    MSG_ID_HEADER,
    BrokerError,
    ConsumerSpec,
    NoStream,
    NotStored,
    StoreAck,
    StoredMessage,
    StreamSpec,
)

__all__ = ["PullHandle", "StoredCopy", "StoredStreams"]


@dataclass(slots=True)
class _Record:
    sequence: int
    subject: str
    data: bytes
    headers: dict[str, str] | None
    expires: float  # monotonic time; 0: never


@dataclass(slots=True)
class StoredCopy:
    """A stored message handed out by a consumer (or read with ``last``, ``consumer`` ``None``)."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    sequence: int
    attempt: int
    consumer: _Consumer | None = None

    async def ack(self) -> None:
        """Done: not delivered again."""
        if self.consumer is not None:
            self.consumer.settle(self.sequence, None)

    async def nak(self, delay: float = 0.0) -> None:
        """Deliver it again after ``delay`` seconds."""
        if self.consumer is not None:
            self.consumer.settle(self.sequence, time.monotonic() + delay)

    async def in_progress(self) -> None:
        """Restart its ack_wait."""
        if self.consumer is not None:
            self.consumer.touch(self.sequence)

    async def term(self) -> None:
        """Never deliver it again."""
        await self.ack()


@dataclass(slots=True)
class _Consumer:
    stream: _Stream
    spec: ConsumerSpec
    pattern: tuple[str, ...]
    next_sequence: int = 1
    #: sequence -> when its ack_wait ends
    pending: dict[int, float] = field(default_factory=dict)
    #: sequence -> when it may be delivered again
    redeliver: dict[int, float] = field(default_factory=dict)
    deliveries: dict[int, int] = field(default_factory=dict)

    def take(self, batch: int) -> list[StoredMessage]:
        now = time.monotonic()
        for sequence, until in list(self.pending.items()):
            if until <= now:  # ack_wait passed without an ack: deliver it again
                del self.pending[sequence]
                self.redeliver[sequence] = now
        out: list[StoredMessage] = []
        limit = self.spec.max_ack_pending
        for sequence in sorted(s for s, when in self.redeliver.items() if when <= now):
            if len(out) >= batch or len(self.pending) >= limit:
                return out
            del self.redeliver[sequence]
            self._deliver(sequence, now, out)
        stream = self.stream
        while len(out) < batch and len(self.pending) < limit and self.next_sequence <= stream.last_sequence:
            sequence = self.next_sequence
            self.next_sequence += 1
            self._deliver(sequence, now, out)
        return out

    def _deliver(self, sequence: int, now: float, out: list[StoredMessage]) -> None:
        record = self.stream.get(sequence, now)
        if record is None or not matches(self.pattern, tokens(record.subject)):
            self.deliveries.pop(sequence, None)
            return
        attempt = self.deliveries[sequence] = self.deliveries.get(sequence, 0) + 1
        self.pending[sequence] = now + self.spec.ack_wait
        out.append(StoredCopy(record.subject, record.data, record.headers, sequence, attempt, self))

    def next_event(self) -> float:
        """When a message may become deliverable again without a store (0: none pending)."""
        times = [*self.pending.values(), *self.redeliver.values()]
        return min(times) if times else 0.0

    def settle(self, sequence: int, again_at: float | None) -> None:
        """Ack (``again_at`` None) or nak a delivered message."""
        if self.pending.pop(sequence, None) is None:
            return  # already settled, or its ack_wait passed and it is waiting to go out again
        if again_at is None:
            self.deliveries.pop(sequence, None)
            self.stream.acked(sequence)
        else:
            self.redeliver[sequence] = again_at
        self.stream.wake()

    def touch(self, sequence: int) -> None:
        if sequence in self.pending:
            self.pending[sequence] = time.monotonic() + self.spec.ack_wait

    def done_with(self, sequence: int) -> bool:
        return (
            sequence < self.next_sequence and sequence not in self.pending and sequence not in self.redeliver
        )


class _Stream:
    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.patterns = [tokens(s) for s in spec.subjects]
        self.records: dict[int, _Record] = {}
        self.last_sequence = 0
        self.ids: dict[str, tuple[int, float]] = {}
        self.consumers: dict[str, _Consumer] = {}
        self.waiters: list[asyncio.Future[None]] = []

    def stores(self, subject: tuple[str, ...]) -> bool:
        return any(matches(p, subject) for p in self.patterns)

    def get(self, sequence: int, now: float) -> _Record | None:
        record = self.records.get(sequence)
        if record is not None and record.expires and record.expires <= now:
            del self.records[sequence]
            return None
        return record

    def store(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str, ttl: float | None
    ) -> StoreAck:
        now = time.monotonic()
        window = self.spec.duplicate_window
        seen = self.ids.get(msg_id)
        if seen is not None and now - seen[1] < window:
            return StoreAck(self.spec.name, seen[0], duplicate=True)
        if len(self.ids) > 10000:
            self.ids = {k: v for k, v in self.ids.items() if now - v[1] < window}
        self.last_sequence += 1
        sequence = self.last_sequence
        self.ids[msg_id] = (sequence, now)
        lifetime = ttl or self.spec.max_age
        self.records[sequence] = _Record(
            sequence, subject, data, headers, now + lifetime if lifetime else 0.0
        )
        if self.spec.retention != "limits" and not self._interested(subject):
            del self.records[sequence]  # as JetStream: nobody will ever ack it
        elif self.spec.max_bytes >= 0:
            size = sum(len(r.data) for r in self.records.values())
            for old in list(self.records):
                if size <= self.spec.max_bytes:
                    break
                size -= len(self.records.pop(old).data)
        self.wake()
        return StoreAck(self.spec.name, sequence)

    def _interested(self, subject: str) -> bool:
        split = tokens(subject)
        return any(matches(c.pattern, split) for c in self.consumers.values())

    def acked(self, sequence: int) -> None:
        if self.spec.retention == "limits":
            return
        record = self.records.get(sequence)
        if record is not None:
            split = tokens(record.subject)
            if all(c.done_with(sequence) for c in self.consumers.values() if matches(c.pattern, split)):
                del self.records[sequence]

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PullHandle:
    """One process's pull handle on a consumer."""

    def __init__(self, consumer: _Consumer, check: Callable[[], None]) -> None:
        self._consumer = consumer
        self._check = check
        self._closed = False

    @property
    def ack_wait(self) -> float:
        """The consumer's ack wait, in seconds."""
        return self._consumer.spec.ack_wait

    async def fetch(self, batch: int, timeout: float) -> list[StoredMessage]:
        """Up to ``batch`` messages, waiting up to ``timeout`` seconds for the first."""
        consumer = self._consumer
        stream = consumer.stream
        deadline = time.monotonic() + timeout
        while True:
            self._check()
            if self._closed:
                return []
            out = consumer.take(batch)
            now = time.monotonic()
            if out or now >= deadline:
                return out
            wake_at = deadline
            event = consumer.next_event()
            if event:
                wake_at = min(wake_at, max(event, now + 0.001))
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            stream.waiters.append(waiter)
            timer = loop.call_later(wake_at - now, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if waiter in stream.waiters:
                    stream.waiters.remove(waiter)

    async def close(self) -> None:
        """Stop pulling (the consumer stays)."""
        self._closed = True


class StoredStreams:
    """The stored-message streams of one ``memory://NAME``."""

    def __init__(self) -> None:
        self.streams: dict[str, _Stream] = {}

    def ensure(self, spec: StreamSpec) -> str:
        """The stream storing ``spec.subjects``: an overlapping one, or ``spec`` created."""
        wanted = [tokens(s) for s in spec.subjects]
        for stream in self.streams.values():
            if any(overlap(p, w) for p in stream.patterns for w in wanted):
                return stream.spec.name
        if spec.name in self.streams:
            raise BrokerError(f"stream {spec.name} exists and does not store {', '.join(spec.subjects)}")
        self.streams[spec.name] = _Stream(spec)
        return spec.name

    def store(
        self, subject: str, data: bytes, headers: dict[str, str] | None, msg_id: str, ttl: float | None
    ) -> StoreAck:
        """Store a message in the stream that stores ``subject``."""
        split = tokens(subject)
        for stream in self.streams.values():
            if stream.stores(split):
                if ttl and not stream.spec.allow_ttl:
                    raise NotStored(f"stream {stream.spec.name} does not allow per-message TTL")
                stored = {**(headers or {}), MSG_ID_HEADER: msg_id}
                return stream.store(subject, bytes(data), stored, msg_id, ttl)
        raise NoStream(f"no stream stores {subject}")

    def stream(self, name: str) -> _Stream:
        """The stream called ``name``."""
        stream = self.streams.get(name)
        if stream is None:
            raise BrokerError(f"no stream {name}")
        return stream

    def consumer(self, spec: ConsumerSpec, check: Callable[[], None]) -> PullHandle:
        """A pull handle on the consumer ``spec.name``, created when missing."""
        stream = self.stream(spec.stream)
        consumer = stream.consumers.get(spec.name)
        if consumer is None:
            consumer = stream.consumers[spec.name] = _Consumer(stream, spec, tokens(spec.filter_subject))
        return PullHandle(consumer, check)

    def last(self, name: str, subject: str) -> StoredCopy | None:
        """The last message stored on ``subject`` in stream ``name``."""
        stream = self.stream(name)
        now = time.monotonic()
        for sequence in reversed(list(stream.records)):
            record = stream.get(sequence, now)
            if record is not None and record.subject == subject:
                return StoredCopy(record.subject, record.data, record.headers, sequence, 0)
        return None

    def delete(self, name: str, sequence: int) -> None:
        """Remove one message."""
        self.stream(name).records.pop(sequence, None)
