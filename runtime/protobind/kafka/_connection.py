"""The broker engine's :class:`~protobind.broker.base.Broker` on Kafka (aiokafka); the only module
that imports aiokafka.

How the engine's subjects become Kafka topics (docs/brokers.md, "Kafka", is the user's description):

- A method's calls go to one topic, named by the ``topic`` template (default
  ``{prefix}{service}.{method}``). protobind creates it with ``partitions`` partitions when it is
  missing. A queue group is a Kafka consumer group; a new group starts at the topic's oldest record.
  The record key is the call's ``partition-key`` metadata (none: the producer spreads the calls).
- A private inbox is a topic of its own per connection (``protobind.inbox.<random>``, one
  partition, deleted on close); a reply names it as ``<topic>/<correlation>`` and travels with
  the correlation in the ``Protobind-Correlation`` header.
- Every other subject (cancel notices, liveness probes, discovery: the ``$``-subjects) travels on
  one control topic (``control_topic``, one partition) that every connection reads from its end;
  the subject is in the ``Protobind-Subject`` header and matched here.

A reply address travels in the ``Protobind-Reply`` header. Calls are produced with ``acks=all``
and awaited; a group's offsets are committed per partition only up to the oldest message whose
handling has not finished (the engine says so through :meth:`_Inbound.done`), so a crash or a
rebalance delivers unfinished calls again and loses none.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.structs import OffsetAndMetadata

from ..broker._bindings import Bindings, host_of
from ..broker._subjects import matches, tokens
from ..broker._wire import TIMEOUT
from ..broker.base import (
    MSG_ID_HEADER,
    NO_RESPONDERS_STATUS,
    BrokerError,
    BrokerMessage,
    Callback,
    ConsumerSpec,
    DurableBroker,
    InboxCallback,
    Mailbox,
    NotConnected,
    NotStored,
    PayloadTooLarge,
    StoreAck,
    StoredMessage,
    StreamSpec,
    Unsupported,
)
from ..urls import redact_text
from ._options import Settings

__all__ = [
    "CORRELATION",
    "KEY_METADATA",
    "REPLY",
    "SUBJECT",
    "AuthenticationFailed",
    "KafkaBroker",
    "KafkaMessage",
    "open_broker",
]

logger = logging.getLogger("protobind.kafka")

#: Header of a control-topic record: the subject it was published to.
SUBJECT = "Protobind-Subject"
#: Header of a record that expects an answer: where to send it.
REPLY = "Protobind-Reply"
#: Header of a record sent to an inbox topic: which call (or stream) it answers.
CORRELATION = "Protobind-Correlation"
#: Call metadata whose value becomes the record key (calls with one key stay in order).
KEY_METADATA = "partition-key"
#: Headers of a durable call's retry record: its delivery number, and when it is due (ms since
#: the epoch); a consumer holds a record that is not due yet without holding up the others.
ATTEMPT = "Protobind-Attempt"
DUE = "Protobind-Due"
_DURABLE_ROOT = "$PROTOBIND."
#: The durable subjects (after the prefix): stored calls, dead letters, stored replies.
_STORED = tuple(_DURABLE_ROOT + kind for kind in ("DURABLE.", "DEAD.", "REPLY."))
_TRANSPORT_HEADERS = frozenset({SUBJECT, REPLY, CORRELATION})
_INBOX_TOPIC = "protobind.inbox."
#: Records received and not yet finished, per group consumer, before it stops fetching.
_MAX_IN_FLIGHT = 1024
#: Seconds between two commits of a group's finished offsets (a stop or a rebalance commits at once).
_COMMIT_INTERVAL = 0.1
#: Seconds a cancelled task is given to end (its ``finally`` blocks) before closing goes on.
_UNWIND = 1.0
_LEGAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def topic_name(text: str) -> str:
    """``text`` as a legal Kafka topic name (characters other than letters, digits, ``.``, ``_``
    and ``-`` become ``_``; at most 249 characters)."""
    return "".join(c if c in _LEGAL else "_" for c in text)[:249]


class KafkaMessage:
    """One received record as the engine sees it (:class:`~protobind.broker.base.BrokerMessage`)."""

    __slots__ = ("data", "headers", "offset", "reply", "subject", "tracker")

    def __init__(
        self,
        subject: str,
        reply: str,
        data: bytes,
        headers: dict[str, str] | None,
        tracker: _Offsets | None = None,
        offset: int = -1,
    ) -> None:
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers = headers
        self.tracker = tracker
        self.offset = offset


class AuthenticationFailed(ConnectionError):
    """Kafka refused the SASL credentials (or does not offer the mechanism)."""


_NETWORK_ERRORS = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    OSError,
    asyncio.TimeoutError,
)


def _connect_error(settings: Settings, address: str, exc: BaseException) -> ConnectionError:
    """The error of a failed connection attempt to ``address``: the cause, never the credentials."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionError(
            f"TLS with Kafka at {address} failed: the server's certificate: {exc.verify_message}"
        )
    if isinstance(exc, ssl.SSLError):
        reason = redact_text(exc.reason or type(exc).__name__)
        return ConnectionError(
            f"TLS with Kafka at {address} failed ({reason}): does that listener speak TLS?"
        )
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        return AuthenticationFailed(f"Kafka at {address} does not offer SASL {settings.sasl_mechanism}")
    if isinstance(exc, asyncio.TimeoutError) and settings.tls is not None:
        return ConnectionError(
            f"Kafka at {address} did not complete a connection within connect_timeout "
            f"({settings.connect_timeout:g} s): does that listener speak TLS?"
        )
    if settings.sasl_mechanism is not None and not isinstance(exc, _NETWORK_ERRORS):
        # a refusal comes as the broker's error code or, with SCRAM, as a final server message
        # aiokafka cannot parse (KeyError, ValueError): either way the credentials were not taken
        return AuthenticationFailed(
            f"Kafka at {address} refused the credentials of user {settings.user!r} "
            f"({settings.sasl_mechanism})"
        )
    return ConnectionError(f"cannot connect to Kafka at {address}: {type(exc).__name__}")


async def _preflight(settings: Settings) -> None:
    """With TLS or SASL: one connection, made and authenticated by aiokafka's own code, to the first
    bootstrap server that takes one, so that a listener that does not speak TLS, a certificate
    that fails verification or refused credentials is an error naming its cause, at once (inside
    its clients aiokafka logs the cause and reports only that it could not bootstrap), and never
    retried (no retry can cure it). Servers refusing the connection are left to the clients."""
    for address in settings.bootstrap:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "9092")
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host.strip("[]"),
                    int(port),
                    client_id=settings.client_id,
                    request_timeout_ms=int(settings.connect_timeout * 1000),
                    **settings.security(),
                ),
                settings.connect_timeout,
            )
        except ssl.SSLError as exc:  # before ValueError: a failed verification is both
            raise _connect_error(settings, address, exc) from None
        except (ConnectionRefusedError, ValueError, kafka_errors.KafkaConnectionError) as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                raise _connect_error(settings, address, exc.__cause__) from None
            continue  # refused or unresolvable: the next server, then the clients, say so
        except Exception as exc:
            raise _connect_error(settings, address, exc) from None
        conn.close()
        return


def _broker_error(exc: BaseException) -> BrokerError:
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, kafka_errors.MessageSizeTooLargeError):
        return PayloadTooLarge("the record exceeds the broker's limit")
    if isinstance(exc, (kafka_errors.KafkaConnectionError, kafka_errors.ProducerClosed, OSError)):
        return NotConnected(f"Kafka connection: {type(exc).__name__}")
    return BrokerError(f"Kafka refused the record: {type(exc).__name__}")


async def _within(bound: float, operation: Awaitable[object], what: str) -> bool:
    """Run ``operation``, one step of closing a connection, for at most ``bound`` seconds; True
    when it ended well. It never raises (the connection is going away whatever it says) and a step
    cut off is logged.

    aiokafka's own stops can wait on a broker that stopped answering (a producer flushing its
    buffer, a consumer leaving its group), and can let out a ``CancelledError`` of their own tasks
    (a consumer's fetcher awaits the fetch tasks it cancelled): run as a task and awaited with
    :func:`asyncio.wait`, neither holds nor cancels the caller, whose own cancellation still
    cancels the step."""
    task = asyncio.ensure_future(operation)
    try:
        await asyncio.wait({task}, timeout=bound)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        logger.warning("closing the Kafka connection: %s did not end within %g s: cut off", what, bound)
        task.cancel()
        await asyncio.wait({task}, timeout=_UNWIND)
    elif task.cancelled():
        logger.debug("closing the Kafka connection: %s ended cancelled", what)
    elif task.exception() is not None:
        logger.debug("closing the Kafka connection: %s failed: %r", what, task.exception())
    else:
        return True
    return False


async def _stop_consumer(consumer: AIOKafkaConsumer, bound: float, what: str) -> None:
    """Stop an aiokafka consumer within ``bound`` seconds. Its stop leaves off early when the
    fetcher's cancelled fetch tasks raise (a fetch that failed, waiting to retry: a broker gone or
    overloaded), and is cut off when leaving the group waits on a coordinator that does not
    answer: either would leave its tasks (heartbeat, fetches, the client's metadata task) running
    and its sockets open, so they are ended here."""
    if await _within(bound, consumer.stop(), what):
        return
    # aiokafka's own attributes (its stop has no way to be cut short cleanly): the group's
    # background tasks, the fetch tasks (each, where its fetcher stops at the first), the client
    coordinator = getattr(consumer, "_coordinator", None)
    for step in ("_stop_heartbeat_task", "_stop_commit_offsets_refresh_task"):
        stop = getattr(coordinator, step, None)
        if stop is not None:
            await _within(_UNWIND, stop(), f"{what}: {step}")
    fetcher = getattr(consumer, "_fetcher", None)
    fetching = [getattr(fetcher, "_fetch_task", None), *getattr(fetcher, "_pending_tasks", ())]
    for task in fetching:
        await _end_task(task, f"{what}: a fetch")
    client = getattr(consumer, "_client", None)
    if client is not None:
        await _within(_UNWIND, client.close(), f"{what}: its client")


async def _stop_producer(producer: AIOKafkaProducer, bound: float) -> None:
    """Flush and stop an aiokafka producer within ``bound`` seconds. Cut off (a broker that does
    not take the buffered records), its stop leaves its flush, its sender task and its client
    running: what was still buffered or unacknowledged fails (those records were never
    acknowledged: their senders get ``NotConnected``), then the sender and the client are ended."""
    if await _within(bound, producer.stop(), "the producer's flush and stop"):
        return
    # aiokafka's own attributes (no public way to give up a flush): the records still buffered or
    # in flight fail, which ends the flush its stop left running and answers their senders
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        accumulator.fail_all(kafka_errors.KafkaConnectionError("the connection was closed"))
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        await _within(_UNWIND, sender.close(), "the producer's sender")
    await _within(_UNWIND, producer.client.close(), "the producer's client")


async def _end_task(task: asyncio.Task[None] | None, what: str) -> None:
    """Cancel one of this module's background tasks and wait (bounded) until it has ended. The
    loops also check a stop flag: Python 3.11's ``asyncio.wait_for`` drops a cancellation that
    arrives as its operation completes, and such a loop would otherwise go on, and this wait with it."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=_UNWIND)
    if not task.done():
        logger.warning("Kafka: %s did not end within %g s of being cancelled", what, _UNWIND)


def _read_headers(raw: Iterable[tuple[str, bytes | None]]) -> tuple[dict[str, str] | None, str, str, str]:
    """(engine headers or None, subject header, reply, correlation) of a record's headers."""
    headers: dict[str, str] | None = None
    subject = reply = correlation = ""
    for key, value in raw:
        text = b"" if value is None else value
        decoded = text.decode("utf-8", "replace")
        if key in _TRANSPORT_HEADERS:
            if key == REPLY:
                reply = decoded
            elif key == SUBJECT:
                subject = decoded
            else:
                correlation = decoded
        else:
            if headers is None:
                headers = {}
            headers[key] = decoded
    return headers, subject, reply, correlation


class _Offsets:
    """One assigned partition of a group: which received offsets are still unfinished, and the
    offset that may be committed (everything below it is finished)."""

    __slots__ = ("commit", "committed", "finished", "live", "pending", "running", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: collections.deque[int] = collections.deque()
        self.finished: set[int] = set()
        self.commit = -1  # -1: nothing new to commit
        self.committed = -1
        self.running = 0  # handed to the engine, not finished
        self.live = True

    def add(self, offset: int) -> None:
        self.pending.append(offset)
        self.running += 1

    def finish(self, offset: int) -> None:
        self.running -= 1
        pending = self.pending
        if not pending or pending[0] != offset:
            self.finished.add(offset)
            return
        pending.popleft()
        advance = offset + 1
        finished = self.finished
        while pending and pending[0] in finished:
            advance = pending.popleft()
            finished.discard(advance)
            advance += 1
        self.commit = advance


class _Sub:
    """One subscription: a mailbox, drained by a task of its own (callback) or by the engine (pull)."""

    def __init__(self, broker: KafkaBroker, subject: str, queue: str, callback: Callback | None) -> None:
        self.broker = broker
        self.subject = subject
        self.pattern = tokens(subject)
        self.queue = queue
        self.mailbox = Mailbox()
        self.group: _Group | None = None
        self.reader: _Reader | None = None
        self._task: asyncio.Task[None] | None = None
        if callback is not None:
            self._task = asyncio.get_running_loop().create_task(self._deliver(callback))

    async def _deliver(self, callback: Callback) -> None:
        mailbox = self.mailbox
        while True:
            if not mailbox.items:
                await mailbox.wait()
                continue
            message = mailbox.items.popleft()
            try:
                await callback(message)
            except Exception:  # one failing callback must not end the subscription
                logger.exception("Kafka subscription callback on %s failed", self.subject)
            finally:
                self.done(message)

    def taken(self, message: BrokerMessage) -> None:
        """Nothing to count: the mailbox is this broker's own."""

    def done(self, message: BrokerMessage) -> None:
        """The engine finished with ``message``: its offset may be committed."""
        if self.group is not None:
            self.group.done(message)

    async def unsubscribe(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.broker._forget(self)


class _Inbox:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def address(self, token: str) -> str:
        return self.prefix + token


class _Reader:
    """A consumer outside any group, reading its assigned partitions from their end: the control
    topic and the connection's inbox, or the fan-out subscriptions of a call topic."""

    def __init__(
        self, broker: KafkaBroker, partitions: list[TopicPartition], index: _ReplyIndex | None = None
    ) -> None:
        self.broker = broker
        self.partitions = partitions
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.subs: list[_Sub] = []
        #: replies read from the topic's start and kept by call id (see _ReplyIndex)
        self.index = index

    async def start(self) -> None:
        settings = self.broker.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            **settings.security(),
            client_id=settings.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=int(settings.fetch_wait * 1000),
            request_timeout_ms=int(settings.connect_timeout * 1000) + 30000,
        )
        await consumer.start()
        self.consumer = consumer
        consumer.assign(self.partitions)
        if self.index is not None:
            await consumer.seek_to_beginning(*self.partitions)
        else:
            await consumer.seek_to_end(*self.partitions)
        for tp in self.partitions:
            await consumer.position(tp)  # from here on, what others publish reaches us
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        dispatch = self.broker._dispatch
        while not self._stopping:
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except kafka_errors.KafkaError as exc:
                logger.warning("Kafka fetch failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            for records in batches.values():
                for record in records:
                    if self.index is not None:
                        self.index.add(record)
                    elif record.value is not None:
                        await dispatch(record, self)
            if self.index is not None:
                self.index.progress.set()

    async def stop(self) -> None:
        self._stopping = True
        await _end_task(self._task, "a Kafka reader's fetch loop")
        if self.consumer is not None:
            what = f"the reader of {', '.join(sorted({tp.topic for tp in self.partitions}))}"
            await _stop_consumer(self.consumer, self.broker.settings.connect_timeout, what)


class _Group(ConsumerRebalanceListener):  # type: ignore[misc]
    """One consumer group of this connection: the queue subscriptions of one group name."""

    def __init__(self, broker: KafkaBroker, group_id: str) -> None:
        self.broker = broker
        self.group_id = group_id
        self.subs: dict[str, _Sub] = {}  # topic -> subscription
        self.offsets: dict[TopicPartition, _Offsets] = {}
        self.assigned = asyncio.Event()
        self.in_flight = 0
        self._room = asyncio.Event()
        self._progress = asyncio.Event()
        self._finished = asyncio.Event()  # some offset became committable
        self._committing = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._subscribed: tuple[str, ...] = ()
        self._stopping = False

    async def add(self, topic: str, sub: _Sub) -> None:
        self.subs[topic] = sub
        sub.group = self

    async def remove(self, sub: _Sub) -> None:
        for topic, other in list(self.subs.items()):
            if other is sub:
                del self.subs[topic]

    async def settle(self) -> None:
        """Start the consumer (or subscribe it to topics added since) and wait for the group's
        assignment."""
        topics = tuple(sorted(self.subs))
        if self.consumer is None:
            settings = self.broker.settings
            self.consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.bootstrap,
                **settings.security(),
                client_id=settings.client_id,
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=int(settings.fetch_wait * 1000),
                max_poll_records=_MAX_IN_FLIGHT,
                session_timeout_ms=int(settings.session_timeout * 1000),
                heartbeat_interval_ms=max(100, min(3000, int(settings.session_timeout * 1000) // 5)),
            )
            await self.consumer.start()
        if topics != self._subscribed:
            self.assigned.clear()
            self._subscribed = topics
            if topics:
                self.consumer.subscribe(topics=list(topics), listener=self)
            else:
                self.consumer.unsubscribe()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._committer = asyncio.get_running_loop().create_task(self._commit_finished())
        if topics:
            timeout = self.broker.settings.connect_timeout + self.broker.settings.rebalance_grace
            try:
                await asyncio.wait_for(self.assigned.wait(), timeout)
            except asyncio.TimeoutError:
                raise NotConnected(f"consumer group {self.group_id} got no assignment in time") from None

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while not self._stopping:
            if self.in_flight >= _MAX_IN_FLIGHT:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                batches = await consumer.getmany(
                    timeout_ms=200, max_records=max(1, _MAX_IN_FLIGHT - self.in_flight)
                )
            except kafka_errors.KafkaError as exc:
                logger.warning("Kafka fetch for group %s failed: %r", self.group_id, exc)
                await asyncio.sleep(0.5)
                continue
            now = time.time() * 1000
            for tp, records in batches.items():
                tracker = self.offsets.get(tp)
                sub = self.subs.get(tp.topic)
                if tracker is None or sub is None:
                    continue
                subject = self.broker._subjects.get(tp.topic, tp.topic)
                for record in records:
                    headers, _, reply, _ = _read_headers(record.headers)
                    tracker.add(record.offset)
                    self.in_flight += 1
                    message = KafkaMessage(
                        subject + record.key.decode() if subject.endswith(".") and record.key else subject,
                        reply,
                        record.value or b"",
                        headers,
                        tracker,
                        record.offset,
                    )
                    if record.value is None or (
                        reply and headers is not None and _expired(headers, record.timestamp, now)
                    ):
                        # a tombstone (a deleted reply), or a request whose caller gave up long ago
                        self.done(message)
                        continue
                    due = headers.get(DUE) if headers is not None else None
                    if due is not None and due.isdigit() and int(due) > now:
                        loop = asyncio.get_running_loop()
                        loop.call_later((int(due) - now) / 1000, sub.mailbox.put, message)
                        continue
                    sub.mailbox.put(message)

    async def _commit_finished(self) -> None:
        # commits take a round trip to the group's coordinator: done beside fetching, not in turn,
        # and at most every _COMMIT_INTERVAL (a commit per call would load the broker)
        finished = self._finished
        while True:
            await finished.wait()
            if self._stopping:
                return
            finished.clear()
            await self.commit()
            await asyncio.sleep(_COMMIT_INTERVAL)

    def done(self, message: BrokerMessage) -> None:
        tracker = getattr(message, "tracker", None)
        if tracker is None:
            return
        message.tracker = None  # type: ignore[attr-defined]
        self.in_flight -= 1
        if not self._room.is_set():
            self._room.set()
        if tracker.live:
            tracker.finish(message.offset)  # type: ignore[attr-defined]
            if tracker.commit > tracker.committed:
                self._finished.set()
            if tracker.running == 0:
                self._progress.set()

    async def commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        """Commit every partition's finished prefix that is not committed yet."""
        consumer = self.consumer
        if consumer is None:
            return
        trackers = self.offsets.values() if only is None else [self.offsets[tp] for tp in only]
        offsets = {
            t.tp: OffsetAndMetadata(t.commit, "") for t in trackers if t.commit > t.committed and t.live
        }
        if not offsets:
            return
        try:
            async with self._committing:
                # bounded: aiokafka retries a commit while it looks for the group's coordinator
                await asyncio.wait_for(consumer.commit(offsets), self.broker.settings.connect_timeout)
        except (kafka_errors.KafkaError, asyncio.TimeoutError) as exc:
            # the partitions went to another member: it starts from the last commit (at least once)
            logger.info("Kafka commit for group %s failed: %r", self.group_id, exc)
            return
        for tp, offset in offsets.items():
            tracker = self.offsets.get(tp)
            if tracker is not None:
                tracker.committed = max(tracker.committed, offset.offset)

    # --- rebalances (ConsumerRebalanceListener) ---

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        gone = [tp for tp in revoked if tp in self.offsets]
        if not gone:
            return
        trackers = {self.offsets[tp] for tp in gone}
        # what the engine has not taken yet goes to the partitions' next owner
        for sub in self.subs.values():
            items = sub.mailbox.items
            kept = [m for m in items if getattr(m, "tracker", None) not in trackers]
            if len(kept) != len(items):
                for message in items:
                    tracker = getattr(message, "tracker", None)
                    if tracker in trackers:
                        message.tracker = None  # type: ignore[attr-defined]
                        tracker.running -= 1
                        self.in_flight -= 1
                items.clear()
                items.extend(kept)
        if not self._room.is_set():
            self._room.set()
        # what is running may finish within the grace: then it is committed, not done twice
        deadline = time.monotonic() + self.broker.settings.rebalance_grace
        while any(t.running for t in trackers) and time.monotonic() < deadline:
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), deadline - time.monotonic())
        await self.commit(gone)
        for tp in gone:
            self.offsets.pop(tp).live = False

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self.offsets:
                self.offsets[tp] = _Offsets(tp)
        self.assigned.set()

    async def stop(self) -> None:
        """Stop fetching and committing, commit what is finished, leave the group; every step
        bounded (a broker that stopped answering holds none of them)."""
        self._stopping = True
        # wakes the loops, should a cancellation below be lost (see _end_task)
        self._finished.set()
        self._room.set()
        await _end_task(self._task, f"the fetch loop of consumer group {self.group_id}")
        await _end_task(self._committer, f"the committer of consumer group {self.group_id}")
        if self.consumer is not None:
            await self.commit()
            # leaves the group: the others take the partitions
            what = f"consumer group {self.group_id}"
            await _stop_consumer(self.consumer, self.broker.settings.connect_timeout, what)


class _ReplyIndex:
    """The replies of one reply topic (a caller group's), read from its start and kept by call id
    (the record key) until deleted (a tombstone: the same key, no value)."""

    def __init__(self, broker: KafkaBroker, topic: str, subject: str) -> None:
        self.broker = broker
        self.topic = topic
        self.subject = subject  # the reply subject without its call id
        self.records: dict[str, KafkaMessage] = {}
        self.keys: dict[int, str] = {}  # offset -> call id
        self.waiters: dict[str, list[_Sub]] = {}
        self.progress = asyncio.Event()
        self.reader: _Reader | None = None

    async def start(self) -> None:
        partitions = [TopicPartition(self.topic, 0)]
        await self.broker.ensure_topic(self.topic, 1)
        self.reader = _Reader(self.broker, partitions, self)
        await self.reader.start()

    def add(self, record: Any) -> None:
        key = record.key.decode() if record.key else ""
        old = self.records.pop(key, None)
        if old is not None:
            self.keys.pop(old.offset, None)
        if record.value is None:
            return
        headers, _, _, _ = _read_headers(record.headers)
        message = KafkaMessage(self.subject + key, "", record.value, headers, None, record.offset)
        self.records[key] = message
        self.keys[record.offset] = key
        for sub in self.waiters.get(key, ()):
            sub.mailbox.put(message)

    async def caught_up(self) -> None:
        """Return once every reply stored before this call was read."""
        reader = self.reader
        assert reader is not None and reader.consumer is not None
        consumer = reader.consumer
        tp = reader.partitions[0]
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            self.progress.clear()
            await asyncio.wait_for(self.progress.wait(), self.broker.settings.connect_timeout)


class _Stored:
    """A durable record handed out by a consumer (:class:`~protobind.broker.base.StoredMessage`)."""

    __slots__ = ("attempt", "consumer", "headers", "message", "sequence")

    def __init__(self, consumer: _DurableConsumer | None, message: KafkaMessage, attempt: int | None = None):
        self.consumer = consumer
        self.message = message
        headers = message.headers or {}
        if attempt is None:
            number = headers.get(ATTEMPT, "1")
            attempt = int(number) if number.isdigit() else 1
        self.attempt = attempt
        self.headers: dict[str, str] | None = {k: v for k, v in headers.items() if k not in (ATTEMPT, DUE)}
        self.sequence = message.offset

    @property
    def subject(self) -> str:
        return self.message.subject

    @property
    def data(self) -> bytes:
        return self.message.data

    async def ack(self) -> None:
        if self.consumer is not None:
            self.consumer.sub.done(self.message)

    async def nak(self, delay: float = 0.0) -> None:
        if self.consumer is not None:
            await self.consumer.retry(self, delay)

    async def in_progress(self) -> None:
        """Kafka has no acknowledgement timer to restart: a record stays with its consumer until
        finished or until the group rebalances."""

    async def term(self) -> None:
        await self.ack()


class _DurableConsumer:
    """A durable consumer: a consumer group on the call topic and on the group's retry topic."""

    def __init__(
        self,
        broker: KafkaBroker,
        spec: ConsumerSpec,
        group: _Group,
        sub: _Sub,
        retry: str,
        index: _ReplyIndex | None = None,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.group = group
        self.sub = sub
        self.retry_topic = retry
        #: a caller group's replies: those deleted since (read by call id) are skipped
        self.index = index

    @property
    def ack_wait(self) -> float:
        return self.spec.ack_wait

    async def fetch(self, batch: int, timeout: float) -> list[StoredMessage]:
        mailbox = self.sub.mailbox
        if not mailbox.items:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(mailbox.wait(), timeout)
        out: list[StoredMessage] = []
        items = mailbox.items
        index = self.index
        if index is not None and items:
            try:
                await index.caught_up()
            except (asyncio.TimeoutError, kafka_errors.KafkaError) as exc:
                raise BrokerError(f"reading replies failed: {type(exc).__name__}") from None
        while items and len(out) < batch:
            message = items.popleft()
            assert isinstance(message, KafkaMessage)
            if index is not None and index.keys.get(message.offset) != message.subject.rpartition(".")[2]:
                self.sub.done(message)  # deleted (read by its call id) since it was stored
                continue
            out.append(_Stored(self, message))
        return out

    async def retry(self, stored: _Stored, delay: float) -> None:
        """Deliver ``stored`` again after ``delay`` seconds: a copy goes to the retry topic (read by
        this group only) with its next attempt number and due time; the original is finished, so
        the call topic's partition goes on meanwhile."""
        headers = dict(stored.headers or {})
        headers[ATTEMPT] = str(stored.attempt + 1)
        headers[DUE] = str(int((time.time() + delay) * 1000))
        key = headers.get(MSG_ID_HEADER)
        await self.broker.produce(
            self.retry_topic, stored.data, headers, key, timeout=self.broker.settings.connect_timeout
        )
        self.sub.done(stored.message)

    async def close(self) -> None:
        # what was not handed out stays uncommitted: the group's next member gets it
        self.sub.mailbox.items.clear()
        await self.group.stop()
        self.broker._groups.pop(self.group.group_id, None)


def _expired(headers: dict[str, str], timestamp: int, now: float) -> bool:
    timeout = headers.get(TIMEOUT)
    if timeout is None or not timeout.isdigit() or timestamp <= 0:
        return False
    return timestamp + int(timeout) < now


class KafkaBroker(DurableBroker):
    """:class:`protobind.broker.base.DurableBroker` on aiokafka: one producer, one admin client,
    one reader (control topic and inbox) and a consumer per queue group."""

    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None
        self.admin: AIOKafkaAdminClient | None = None
        self._reader: _Reader | None = None
        self._groups: dict[str, _Group] = {}
        self._fanout: list[_Reader] = []
        self._stopping_readers: set[asyncio.Task[None]] = set()  # of subscriptions ended
        self._control: list[_Sub] = []
        self._inboxes: dict[str, InboxCallback] = {}
        self.inbox_topic = _INBOX_TOPIC + secrets.token_hex(12)
        self._topics: dict[str, str] = {}  # call subject -> topic
        self._ready: dict[str, str] = {}  # call subject -> its topic, known to exist
        self._subjects: dict[str, str] = {}  # topic -> call subject
        self._created: set[str] = set()
        self._indexes: dict[str, _ReplyIndex] = {}
        self._closed = False
        self._disconnect_callbacks: list[Callable[[], Awaitable[None]]] = []

    # --- connecting ---

    async def connect(self) -> None:
        """Start the producer, the admin client and the reader; create the control topic and
        this connection's inbox topic. Raises :class:`ConnectionError` when Kafka cannot be reached."""
        settings = self.settings
        if settings.tls is not None or settings.sasl_mechanism is not None:
            await _preflight(settings)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            **settings.security(),
            client_id=settings.client_id,
            acks="all",
            enable_idempotence=settings.idempotence,
            linger_ms=int(settings.linger * 1000),
            max_batch_size=settings.batch_size,
            max_request_size=settings.max_payload + 1024,
            request_timeout_ms=int(settings.connect_timeout * 1000) + 30000,
        )
        self.admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap,
            **settings.security(),
            client_id=settings.client_id,
            request_timeout_ms=int(settings.connect_timeout * 1000),
        )
        try:
            await asyncio.wait_for(self.producer.start(), settings.connect_timeout)
            await asyncio.wait_for(self.admin.start(), settings.connect_timeout)
            await self.ensure_topic(settings.control_topic, 1)
            await self.ensure_topic(self.inbox_topic, 1)
            self._reader = _Reader(
                self, [TopicPartition(settings.control_topic, 0), TopicPartition(self.inbox_topic, 0)]
            )
            await self._reader.start()
        except (kafka_errors.KafkaError, *_NETWORK_ERRORS) as exc:
            await self.close()
            raise _connect_error(settings, settings.shown, exc) from None

    async def ensure_topic(self, topic: str, partitions: int | None = None) -> bool:
        """Create ``topic`` when it does not exist (an existing one is used as it is); True when
        this call created it."""
        if topic in self._created:
            return False
        assert self.admin is not None
        settings = self.settings
        try:
            response = await self.admin.create_topics(
                [NewTopic(topic, partitions or settings.partitions, settings.replication_factor)]
            )
        except kafka_errors.TopicAlreadyExistsError:
            response = None
        except kafka_errors.KafkaError as exc:
            raise _broker_error(exc) from None
        created = response is not None
        for error in getattr(response, "topic_errors", ()):
            code = error[1]
            if code == kafka_errors.TopicAlreadyExistsError.errno:
                created = False
            elif code != 0:
                raise BrokerError(f"Kafka did not create topic {topic}: error {code}")
        self._created.add(topic)
        return created

    async def partitions(self, topic: str) -> list[TopicPartition]:
        """The partitions of ``topic`` (created when missing)."""
        await self.ensure_topic(topic)
        assert self.admin is not None
        described = await self.admin.describe_topics([topic])
        return [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]

    # --- the Broker interface ---

    @property
    def max_payload(self) -> int:
        return self.settings.max_payload

    @property
    def is_connected(self) -> bool:
        return not self._closed and self.producer is not None

    def on_disconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        # aiokafka reconnects on its own and reports no lost connection; records are not lost
        # meanwhile (they are stored), so nothing calls these
        self._disconnect_callbacks.append(callback)

    def _is_control(self, subject: str) -> bool:
        return subject.startswith("$") or subject[len(self.settings.engine.prefix) :].startswith("$")

    def call_topic(self, subject: str) -> str:
        """The topic of a call subject (``{prefix}{service}.{method}``), by the ``topic`` template."""
        topic = self._topics.get(subject)
        if topic is None:
            prefix = self.settings.engine.prefix
            rest = subject[len(prefix) :] if subject.startswith(prefix) else subject
            service, _, method = rest.rpartition(".")
            topic = topic_name(self.settings.topic.format(prefix=prefix, service=service, method=method))
            self._topics[subject] = topic
            self._subjects[topic] = subject
        return topic

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        producer = self.producer
        if self._closed or producer is None:
            raise NotConnected("the Kafka connection is closed")
        if not headers and not reply:
            # the plain one-way call, on a topic known to exist: the path of most calls
            topic = self._ready.get(subject)
            if topic is not None and len(payload) <= self.settings.max_payload:
                try:
                    await (await producer.send(topic, payload))
                except kafka_errors.KafkaError as exc:
                    raise _broker_error(exc) from None
                return
        out = [(key, value.encode()) for key, value in headers.items()] if headers else []
        if reply:
            out.append((REPLY, reply.encode()))
        size = len(payload) + sum(len(k) + len(v) + 8 for k, v in out)
        if size > self.settings.max_payload:
            raise PayloadTooLarge(f"{size} bytes exceed max_payload {self.settings.max_payload}")
        topic, _, correlation = subject.partition("/")
        partition: int | None = 0
        key: bytes | None = None
        call = False
        if correlation:
            out.append((CORRELATION, correlation.encode()))
        elif self._is_control(subject):
            topic = self.settings.control_topic
            out.append((SUBJECT, subject.encode()))
        else:
            topic = self.call_topic(subject)
            partition = None
            call = True
            if headers and KEY_METADATA in headers:
                key = headers[KEY_METADATA].encode()
            if topic not in self._created and await self.ensure_topic(topic) and reply:
                # nobody ever served this method here: answer as NATS does for no responders
                await self._no_responders(reply)
                return
            self._ready[subject] = topic
        try:
            sent = await producer.send(topic, payload, key=key, partition=partition, headers=out)
            if call:
                await sent  # acks=all: stored before the caller goes on
        except kafka_errors.KafkaError as exc:
            raise _broker_error(exc) from None

    async def _no_responders(self, reply: str) -> None:
        topic, _, correlation = reply.partition("/")
        number, _, token = correlation.partition(".")
        callback = self._inboxes.get(number)
        if topic == self.inbox_topic and callback is not None:
            await callback(token, KafkaMessage(reply, "", b"", {"Status": NO_RESPONDERS_STATUS}))

    async def subscribe(self, subject: str, callback: Callback, queue: str = "") -> _Sub:
        return await self._add(subject, queue, callback)

    async def pull(self, subject: str, queue: str = "", subjects: tuple[str, ...] = ()) -> _Sub:
        return await self._add(subject, queue, None, subjects)

    async def _add(
        self, subject: str, queue: str, callback: Callback | None, subjects: tuple[str, ...] = ()
    ) -> _Sub:
        if self._closed:
            raise NotConnected("the Kafka connection is closed")
        sub = _Sub(self, subject, queue, callback)
        reply = self.durable_topic(subject) if _DURABLE_ROOT + "REPLY." in subject else ("", None)
        if reply[1] is not None:  # a durable reply: found in the reply topic's index
            index = await self._index(reply[0], subject)
            index.waiters.setdefault(reply[1], []).append(sub)
            found = index.records.get(reply[1])
            if found is not None:
                sub.mailbox.put(found)
            return sub
        if self._is_control(subject):
            # queue groups do not apply on the control topic: every subscriber sees the message
            self._control.append(sub)
            return sub
        if "*" in subject or ">" in subject:
            subjects = tuple(s for s in subjects if matches(sub.pattern, tokens(s)))
            if not subjects:
                raise Unsupported(f"Kafka cannot subscribe to {subject}: name the subjects it covers")
        else:
            subjects = (subject,)
        topics = [self.call_topic(s) for s in subjects]
        for topic in topics:
            await self.ensure_topic(topic)
        if queue:
            group = self._groups.get(queue)
            if group is None:
                group = self._groups[queue] = _Group(self, queue)
            for topic in topics:
                await group.add(topic, sub)
        else:
            partitions = [tp for topic in topics for tp in await self.partitions(topic)]
            reader = _Reader(self, partitions)
            reader.subs.append(sub)
            sub.reader = reader
            await reader.start()
            self._fanout.append(reader)
        return sub

    def _forget(self, sub: _Sub) -> None:
        if sub in self._control:
            self._control.remove(sub)
        for index in self._indexes.values():
            for waiting in index.waiters.values():
                if sub in waiting:
                    waiting.remove(sub)
        if sub.group is not None:
            group = sub.group
            for topic, other in list(group.subs.items()):
                if other is sub:
                    del group.subs[topic]
        if sub.reader is not None:
            reader = sub.reader
            self._fanout.remove(reader)
            stopping = asyncio.get_running_loop().create_task(reader.stop())
            self._stopping_readers.add(stopping)  # kept: a task nobody holds can be collected
            stopping.add_done_callback(self._stopping_readers.discard)

    async def _dispatch(self, record: Any, reader: _Reader) -> None:
        headers, subject, reply, correlation = _read_headers(record.headers)
        data = record.value or b""
        topic = record.topic
        if reader is not self._reader:
            message = KafkaMessage(self._subjects.get(topic, topic), reply, data, headers)
            for sub in reader.subs:
                sub.mailbox.put(message)
        elif topic == self.inbox_topic:
            number, _, token = correlation.partition(".")
            callback = self._inboxes.get(number)
            if callback is not None:
                message = KafkaMessage(f"{topic}/{correlation}", reply, data, headers)
                try:
                    await callback(token, message)
                except Exception:
                    logger.exception("Kafka inbox callback failed")
        elif subject:
            split = tokens(subject)
            message = KafkaMessage(subject, reply, data, headers)
            for sub in self._control:
                if matches(sub.pattern, split):
                    sub.mailbox.put(message)

    async def inbox(self, callback: InboxCallback) -> _Inbox:
        number = str(len(self._inboxes))
        self._inboxes[number] = callback
        return _Inbox(f"{self.inbox_topic}/{number}.")

    def peer_of(self, reply: str) -> str:
        return reply.partition("/")[0]

    async def settle(self) -> None:
        try:
            for group in list(self._groups.values()):
                await group.settle()
        except kafka_errors.KafkaError as exc:
            raise _broker_error(exc) from None

    async def close(self) -> None:
        """Stop every consumer, flush and stop the producer, delete the inbox topic. Each step is
        bounded by ``connect_timeout`` and the consumers stop side by side: a consumer leaving its
        group and a producer flushing wait for the broker, and one that stopped answering must not
        hold a closing connection (nor a test's teardown) forever."""
        if self._closed:
            return
        self._closed = True
        delivering = []
        for sub in list(self._control):  # unsubscribe() takes each out of the list
            await sub.unsubscribe()
            delivering.append(sub._task)
        bound = self.settings.connect_timeout
        indexes = [index.reader for index in self._indexes.values() if index.reader is not None]
        readers = [*self._fanout, *indexes, *([self._reader] if self._reader else [])]
        await asyncio.gather(
            *(group.stop() for group in list(self._groups.values())),
            *(reader.stop() for reader in readers),
            *(_end_task(task, "a Kafka subscription's delivery") for task in delivering),
            *list(self._stopping_readers),
            return_exceptions=True,
        )
        if self.producer is not None:
            await _stop_producer(self.producer, bound)  # sends what is still buffered
        if self.admin is not None:
            if self.inbox_topic in self._created:
                what = f"deleting inbox topic {self.inbox_topic}"
                await _within(bound, self.admin.delete_topics([self.inbox_topic]), what)
            await _within(bound, self.admin.close(), "the admin client's close")

    # --- durable calls (DurableBroker) ---

    def durable_topic(self, subject: str) -> tuple[str, str | None]:
        """The topic of a durable subject, and the record key for a reply (its call id).

        ``{prefix}$PROTOBIND.DURABLE.{service}.{Method}`` -> ``{prefix}protobind.calls.{service}.{Method}``,
        ``{prefix}$PROTOBIND.DEAD...`` -> ``{prefix}protobind.dead...``, and
        ``{prefix}$PROTOBIND.REPLY.{group}.{call id}`` -> ``{prefix}protobind.replies.{group}`` keyed by
        the call id. A dead-letter subject of the contract's own is its own topic."""
        prefix = self.settings.engine.prefix
        rest = subject[len(prefix) :] if subject.startswith(prefix) else subject
        key: str | None = None
        if rest.startswith(_DURABLE_ROOT + "REPLY."):
            group, _, key = rest[len(_DURABLE_ROOT) + 6 :].partition(".")
            topic = topic_name(f"{prefix}protobind.replies.{group}")
            self._subjects.setdefault(topic, f"{prefix}{_DURABLE_ROOT}REPLY.{group}.")
            return topic, key
        if rest.startswith(_DURABLE_ROOT + "DURABLE."):
            topic = topic_name(f"{prefix}protobind.calls.{rest[len(_DURABLE_ROOT) + 8 :]}")
        elif rest.startswith(_DURABLE_ROOT + "DEAD."):
            topic = topic_name(f"{prefix}protobind.dead.{rest[len(_DURABLE_ROOT) + 5 :]}")
        elif rest.startswith(_DURABLE_ROOT):
            return topic_name(subject), None
        else:
            topic = topic_name(subject)
        self._subjects.setdefault(topic, subject)
        return topic, key

    async def _index(self, topic: str, subject: str) -> _ReplyIndex:
        index = self._indexes.get(topic)
        if index is None:
            index = self._indexes[topic] = _ReplyIndex(self, topic, subject.rpartition(".")[0] + ".")
            await index.start()
        return index

    async def ensure_stream(self, spec: StreamSpec) -> str:
        """Kafka has no streams over several subjects: each durable subject is a topic of its own,
        created when first used."""
        if self._closed:
            raise NotConnected("the Kafka connection is closed")
        return spec.name

    async def produce(
        self, topic: str, payload: bytes | None, headers: dict[str, str], key: str | None, *, timeout: float
    ) -> Any:
        """Produce one record and wait up to ``timeout`` seconds for Kafka's acknowledgement."""
        producer = self.producer
        if self._closed or producer is None:
            raise NotConnected("the Kafka connection is closed")
        out = [(k, v.encode()) for k, v in headers.items()]
        size = len(payload or b"") + sum(len(k) + len(v) + 8 for k, v in out)
        if size > self.settings.max_payload:
            raise PayloadTooLarge(f"{size} bytes exceed max_payload {self.settings.max_payload}")
        await self.ensure_topic(topic, 1 if topic in self._indexes or ".replies." in topic else None)
        try:
            sent = await producer.send(topic, payload, key=None if key is None else key.encode(), headers=out)
            return await asyncio.wait_for(sent, timeout)
        except asyncio.TimeoutError:
            raise NotStored("Kafka did not acknowledge the record in time") from None
        except kafka_errors.KafkaError as exc:
            raise _broker_error(exc) from None

    async def store(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        msg_id: str,
        *,
        timeout: float,
        ttl: float | None = None,
    ) -> StoreAck:
        """Produce to the subject's topic with ``acks=all``. Kafka does not drop a second record
        with the same message id (only the idempotent producer's own retries): a call stored twice
        is delivered twice. ``ttl`` is not applied (the topic's retention is)."""
        topic, key = self.durable_topic(subject)
        out = {**(headers or {}), MSG_ID_HEADER: msg_id}
        metadata = await self.produce(topic, payload, out, key or msg_id, timeout=timeout)
        return StoreAck(topic, int(metadata.offset))

    async def consumer(self, spec: ConsumerSpec) -> _DurableConsumer:
        filter_subject = spec.filter_subject
        if filter_subject.endswith(">"):
            filter_subject = filter_subject[:-1] + "_"  # a caller group's replies: its reply topic
        topic, _ = self.durable_topic(filter_subject)
        retry = topic_name(f"{topic}.retry.{spec.name}")
        self._subjects.setdefault(retry, self._subjects[topic])
        group_id = f"{topic}:{spec.name}"
        group = _Group(self, group_id)
        self._groups[group_id] = group
        sub = _Sub(self, spec.filter_subject, group_id, None)
        for name in (topic, retry):
            await self.ensure_topic(name, 1 if ".replies." in topic else None)
            await group.add(name, sub)
        try:
            await group.settle()
        except kafka_errors.KafkaError as exc:
            raise _broker_error(exc) from None
        index = None
        if spec.filter_subject.endswith(">"):
            index = await self._index(topic, filter_subject)
        return _DurableConsumer(self, spec, group, sub, retry, index)

    async def last(self, stream: str, subject: str) -> _Stored | None:
        """The reply stored for a reply subject (other subjects are not looked up on Kafka)."""
        topic, key = self.durable_topic(subject)
        if key is None:
            return None
        index = await self._index(topic, subject)
        try:
            await index.caught_up()
        except (asyncio.TimeoutError, kafka_errors.KafkaError) as exc:
            raise BrokerError(f"reading replies failed: {type(exc).__name__}") from None
        found = index.records.get(key)
        return None if found is None else _Stored(None, found, 0)

    async def delete(self, stream: str, sequence: int) -> None:
        """Delete a stored reply: a tombstone (its key, no value) in the reply topic."""
        for index in self._indexes.values():
            key = index.keys.pop(sequence, None)
            if key is not None:
                index.records.pop(key, None)
                await self.produce(index.topic, None, {}, key, timeout=self.settings.connect_timeout)
                return

    def asyncapi_bindings(self) -> KafkaBindings:
        """How this broker's subjects appear in the AsyncAPI document (topics, Kafka bindings)."""
        return KafkaBindings(self)


#: Version of the AsyncAPI Kafka bindings used in the document.
KAFKA_BINDING_VERSION = "0.5.0"


class KafkaBindings(Bindings):
    """The AsyncAPI addressing of the Kafka binding: a channel's address is its topic."""

    protocol = "kafka"
    kind = "Kafka topics"
    reference = "docs/brokers.md, 'Kafka'"
    schemes = ("kafka",)

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    def _topic(self, subject: str) -> tuple[str, int]:
        broker = self.broker
        prefix = broker.settings.engine.prefix
        rest = subject[len(prefix) :] if subject.startswith(prefix) else subject
        if rest.startswith(_STORED):
            topic, key = broker.durable_topic(subject)
            return topic, 1 if key is not None else broker.settings.partitions
        if broker._is_control(subject):
            return broker.settings.control_topic, 1
        return broker.call_topic(subject), broker.settings.partitions

    def address(self, subject: str) -> str:
        return self._topic(subject)[0]

    def channel(self, subject: str, stored: bool = False) -> dict[str, Any] | None:
        topic, partitions = self._topic(subject)
        binding: dict[str, Any] = {
            "topic": topic,
            "partitions": partitions,
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
        if topic == self.broker.settings.control_topic:
            # many subjects share the control topic: the record's Protobind-Subject header says which
            binding["x-protobind-subject"] = subject
        return {"kafka": binding}

    def operation(self, queue: str | None, stored: bool = False) -> dict[str, Any] | None:
        if queue is None:
            return None
        return {
            "kafka": {"groupId": {"type": "string", "enum": [queue]}, "bindingVersion": KAFKA_BINDING_VERSION}
        }

    def server(self, url: str) -> dict[str, Any]:
        return {"host": host_of(url), "protocol": "kafka", "description": "Kafka (acks=all)"}


async def open_broker(settings: Settings) -> KafkaBroker:
    """Connect to Kafka with ``settings``."""
    broker = KafkaBroker(settings)
    await broker.connect()
    return broker
