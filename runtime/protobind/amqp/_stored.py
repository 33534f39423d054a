"""RabbitMQ as protobind's :class:`~protobind.broker.base.DurableBroker` (durable calls).

RabbitMQ has queues, not streams, so a stream is mapped onto queues (docs/brokers.md has the
table, docs/protocols.md the wire rules for other clients):

- Stored messages are published persistent, ``mandatory``, on a channel with publisher
  confirms, to the topic exchange ``{exchange}.durable``; a store returns once RabbitMQ confirmed
  it. A message no queue takes is returned: not stored (:class:`NoStream`).
- A *consumer* is the durable quorum queue ``{stream}.{consumer}`` bound to that exchange with
  the consumer's subject filter: every consumer (a group of servers) gets a copy of each call
  stored after its queue was made, and the group's replicas share it.
- A *stream* is, besides its consumers, the quorum queue ``{stream}``, bound to the stream's
  subjects on ``{exchange}.unclaimed``, the durable exchange's alternate exchange: it keeps the
  messages stored while no consumer's queue matched (calls made before any server ran, dead
  letters nobody reads yet). A consumer made later takes over the ones its filter matches.
- A stream that allows a time to live per message (the engine's reply stream) keeps each subject
  in a durable queue of its own named like the subject, whose messages and the queue itself expire
  after the time to live; such messages go to the binding's own exchange, so a subscriber to the
  subject hears them too. ``last`` reads that queue, ``delete`` removes it.
- Acknowledgements: ``ack`` is ``basic.ack``; ``nak`` without a delay is ``basic.nack`` with
  requeue (quorum queues count it in ``x-delivery-count``); ``nak`` with a delay publishes a copy
  to ``{queue}.retry.{milliseconds}``, a quorum queue whose message TTL dead-letters the copy back
  to the consumer's queue (RabbitMQ has no delayed requeue), then acknowledges the original; the
  copy carries the deliveries made so far in ``Protobind-Delivered`` and its subject in
  ``Protobind-Stored-On``. ``term`` acknowledges. ``in_progress`` does nothing: RabbitMQ redelivers
  an unacknowledged message when its channel closes, and its ``consumer_timeout`` (broker-wide)
  closes a channel that held one too long, so there is no ack wait to extend.
- De-duplication: RabbitMQ has none. A connection does not store a message id again that it
  stored on the same subject within the stream's duplicate window, nor while its first store
  of that id waits for a late confirm (best effort: another connection, or a store whose
  connection was lost before the confirm, may store a second copy).

Like :mod:`.connection`, this module touches aio-pika and aiormq.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustChannel
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from ..broker._subjects import matches, tokens
from ..broker._wire import CONTENT_TYPE, headers_size
from ..broker.base import (
    MSG_ID_HEADER,
    BrokerError,
    ConsumerSpec,
    NoStream,
    NotConnected,
    NotStored,
    PayloadTooLarge,
    StoreAck,
    StreamSpec,
)

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustConnection

    from ._options import Settings

__all__ = [
    "ANSWER_WAIT",
    "CLAIM_WINDOW",
    "DELIVERED",
    "STORED_ON",
    "UNSAFE",
    "Stored",
    "bounded",
    "connected",
    "consume",
    "durable_exchange",
    "kept_queue",
    "raw_channel",
    "routing_pattern",
    "unclaimed_exchange",
]

#: Header of a copy made for a retry: how many deliveries were made before it.
DELIVERED = "Protobind-Delivered"
#: Header of a copy (a retry, or a message moved to a consumer's queue): the subject it was stored on.
STORED_ON = "Protobind-Stored-On"
_INTERNAL = {DELIVERED.lower(), STORED_ON.lower()}
#: Headers RabbitMQ itself adds (redelivery counts, dead-lettering history): not the caller's.
_BROKER_HEADERS = ("x-delivery-count", "x-death", "x-first-death-", "x-last-death-", "x-received-from")
_CONTENT_TYPE = CONTENT_TYPE.lower()
#: Most message ids a connection remembers for de-duplication.
_RECENT_IDS = 100_000
#: Characters AMQP clients refuse in queue names (pamqp among them): they become ``_``.
UNSAFE = re.compile(r"[^a-zA-Z0-9_.:@,/+-]")
_FAILURES = (aiormq.exceptions.AMQPError, RuntimeError, OSError, asyncio.TimeoutError)
#: Most deliveries a claim of unclaimed messages holds unacknowledged at once (see ``_Claim``).
CLAIM_WINDOW = 1000
#: Longest wait for RabbitMQ's answer to a declaration, a cancel or a close (seconds).
ANSWER_WAIT = 10.0

_T = TypeVar("_T")

logger = logging.getLogger("protobind.amqp")


def connected(connection: AbstractRobustConnection) -> bool:
    """Whether ``connection`` is up now (not closed, not between a loss and a reconnection)."""
    return not connection.is_closed and connection.connected.is_set()


async def bounded(connection: AbstractRobustConnection, operation: Awaitable[_T]) -> _T:
    """Await ``operation``, an exchange with RabbitMQ through aio-pika's robust objects, only while
    ``connection`` is up, and then for at most :data:`ANSWER_WAIT` seconds.

    aio-pika's robust channels, queues and connections wait for the next reconnection before they
    send anything, however long the broker stays away: without this, unsubscribing, stopping a
    server or declaring a queue while RabbitMQ is down would never return. While it is down the
    operation runs only up to its first wait (so its own bookkeeping is done: a cancelled consumer
    or a closed channel is not restored after a reconnection), then is cancelled, and this raises
    ``ChannelInvalidStateError``; a late answer raises ``TimeoutError``. Both are among the
    failures callers turn into :class:`~protobind.broker.base.NotConnected` or
    :class:`~protobind.broker.base.BrokerError`."""
    if connected(connection):
        return await asyncio.wait_for(operation, ANSWER_WAIT)
    task = asyncio.ensure_future(operation)
    await asyncio.sleep(0)
    if not task.done():
        task.cancel()
        await asyncio.wait([task])
    if not task.cancelled() and task.exception() is None:
        return task.result()
    raise aiormq.exceptions.ChannelInvalidStateError("the connection to RabbitMQ is lost")


def durable_exchange(exchange: str) -> str:
    """The topic exchange stored messages are published to."""
    return f"{exchange}.durable"


def unclaimed_exchange(exchange: str) -> str:
    """The alternate exchange of :func:`durable_exchange`: what no consumer's queue takes."""
    return f"{exchange}.unclaimed"


def routing_pattern(subject: str) -> str:
    """The AMQP binding key of an engine subject: ``>`` (the rest) becomes ``#``."""
    if subject == ">" or subject.endswith(".>"):
        return subject[:-1] + "#"
    return subject


def kept_queue(subject: str) -> str:
    """The queue that keeps the messages of ``subject`` in a stream with a time to live: the
    subject, ``$`` and other characters queue names may not hold turned into ``_``."""
    return UNSAFE.sub("_", subject)


def _error(exc: BaseException, what: str) -> BrokerError:
    if isinstance(exc, (aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.ConnectionClosed)):
        return NotConnected(f"{what}: the AMQP connection is not usable")
    if isinstance(exc, (RuntimeError, OSError)):
        return NotConnected(f"{what}: the AMQP connection is not usable ({type(exc).__name__})")
    if isinstance(exc, asyncio.TimeoutError):
        return BrokerError(f"{what}: RabbitMQ did not answer in time")
    if isinstance(exc, aiormq.exceptions.ChannelClosed):
        return BrokerError(f"{what}: RabbitMQ refused it ({exc.args[1] if len(exc.args) > 1 else exc})")
    return BrokerError(f"{what}: {type(exc).__name__}")


def _table(properties: Any) -> dict[str, Any]:
    return dict(properties.headers or {})


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _visible(table: dict[str, Any], content_type: str | None) -> dict[str, str] | None:
    """The headers the engine sees: none of RabbitMQ's own, none of this module's."""
    out = {
        name: _text(value)
        for name, value in table.items()
        if not name.lower().startswith(_BROKER_HEADERS) and name.lower() not in _INTERNAL
    }
    if content_type:
        out[CONTENT_TYPE] = content_type
    return out or None


def _copy_table(table: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in table.items() if not name.lower().startswith(_BROKER_HEADERS)}


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class _Message:
    """A stored message delivered from a consumer's queue (or read from a reply queue)."""

    __slots__ = (
        "_owner",
        "_raw",
        "_settled",
        "attempt",
        "data",
        "headers",
        "sequence",
        "subject",
    )

    def __init__(self, owner: _Consumer | None, raw: AbstractIncomingMessage | None, **fields: Any) -> None:
        self._owner = owner
        self._raw = raw
        self._settled = False
        self.subject: str = fields["subject"]
        self.data: bytes = fields["data"]
        self.headers: dict[str, str] | None = fields["headers"]
        self.sequence: int = fields["sequence"]
        self.attempt: int = fields["attempt"]

    async def ack(self) -> None:
        """Done: ``basic.ack``."""
        await self._settle("ack")

    async def nak(self, delay: float = 0.0) -> None:
        """Deliver it again: at once (requeued), or after ``delay`` (a copy through a retry queue)."""
        owner = self._owner
        if owner is None or self._raw is None or self._settled:
            return
        if delay <= 0:
            await self._settle("nack")
            return
        await owner.retry_later(self._raw, self.subject, self.attempt, delay)
        await self._settle("ack")

    async def in_progress(self) -> None:
        """Nothing to do: RabbitMQ has no ack wait per message (see the module docstring)."""

    async def term(self) -> None:
        """Never deliver it again: acknowledged."""
        await self._settle("ack")

    async def _settle(self, how: str) -> None:
        raw = self._raw
        if raw is None or self._settled:
            return
        self._settled = True
        try:
            if how == "ack":
                await raw.ack()
            else:
                await raw.nack(requeue=True)
        except _FAILURES as exc:
            # the channel is gone: RabbitMQ redelivers the message, which is at least once
            raise _error(exc, "acknowledging a message") from None


class _Consumer:
    """A consumer's queue, consumed on an AMQP channel of its own whose prefetch is
    ``max_ack_pending``; deliveries wait in a buffer that :meth:`fetch` empties.

    The consumer is this module's, not aio-pika's robust one: aio-pika's restore of consumers
    after a reconnection can be cancelled halfway, and then does not finish the reconnection's
    work, which left a server taking no calls after a broker restart.
    :meth:`resume` consumes again whenever :meth:`consuming` is false: the broker calls it after
    each reconnection and whenever a channel closed or RabbitMQ cancelled a consumer, and again
    every ``reconnect_wait`` seconds while it fails (see ``AmqpBroker``)."""

    def __init__(
        self, owner: Stored, queue: str, ack_wait: float, prefetch: int, *, keyed: bool = False
    ) -> None:
        self._owner = owner
        #: a consumer of a stream that keeps each subject: a message whose subject's queue is gone
        #: (read by subject and deleted) is dropped
        self._keyed = keyed
        self.queue = queue
        self.ack_wait = ack_wait
        self.prefetch = prefetch
        #: the aiormq channel consuming the queue (``None`` before the first consume and once closed)
        self._channel: Any = None
        self._tag = f"protobind.{secrets.token_hex(8)}"
        self._closed = False
        self._buffer: list[_Message] = []
        self._arrived = asyncio.Event()

    def consuming(self) -> bool:
        """Whether RabbitMQ is delivering the queue to this consumer now (as far as it told us)."""
        channel = self._channel
        return channel is not None and not channel.is_closed and self._tag in channel.consumers

    async def resume(self) -> bool:
        """Consume the queue unless already consuming (or closed): on the consumer's channel if it
        is still open (RabbitMQ cancelled the consumer), else on a new one. Whether it consumed."""
        if self._closed or self.consuming():
            return False
        channel = self._channel
        if channel is None or channel.is_closed:
            # a channel that failed halfway is not kept: aiormq closes it (a refused or cancelled
            # request closes its channel), and the next attempt opens another
            channel = await self._owner.open_raw_channel()
            await channel.basic_qos(prefetch_count=self.prefetch)
            channel.on_consumer_cancel_callbacks.add(self._cancelled)
            channel.closing.add_done_callback(self._lost)
            self._channel = channel
        await consume(channel, self.queue, self._deliver, self._tag, no_ack=False)
        return True

    def _cancelled(self, frame: Any) -> None:
        if getattr(frame, "consumer_tag", None) == self._tag:
            self._owner.consumer_lost()

    def _lost(self, _: asyncio.Future[Any]) -> None:
        if not self._closed:
            self._owner.consumer_lost()

    async def _deliver(self, message: DeliveredMessage) -> None:
        await self._on_message(aio_pika.IncomingMessage(message, no_ack=False))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        table = _table(message)
        subject = _text(table.get(STORED_ON) or message.routing_key or "")
        if self._keyed and not await self._owner.is_kept(subject):
            with contextlib.suppress(*_FAILURES):
                await message.ack()
            return
        headers = _visible(table, message.content_type)
        if message.message_id and (headers is None or MSG_ID_HEADER not in headers):
            # a raw client's message id property is the call id as well as the header
            headers = {**(headers or {}), MSG_ID_HEADER: message.message_id}
        # deliveries before this copy was made, and those of this copy RabbitMQ counted (requeues)
        attempt = _int(table.get(DELIVERED)) + _int(table.get("x-delivery-count")) + 1
        self._buffer.append(
            _Message(
                self,
                message,
                subject=subject,
                data=message.body,
                headers=headers,
                sequence=self._owner.next_sequence(),
                attempt=attempt,
            )
        )
        self._arrived.set()

    async def retry_later(
        self, raw: AbstractIncomingMessage, subject: str, attempt: int, delay: float
    ) -> None:
        await self._owner.delay_copy(self.queue, raw, subject, attempt, delay)

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        if not self._buffer:
            self._arrived.clear()
            timer = asyncio.get_running_loop().call_later(timeout, self._arrived.set)
            try:
                await self._arrived.wait()
            finally:
                timer.cancel()
        taken, self._buffer = self._buffer, []
        return taken

    async def close(self) -> None:
        self._closed = True
        self._owner.forget_consumer(self)
        channel, self._channel = self._channel, None
        if channel is None:
            return
        connection = self._owner.connection
        with contextlib.suppress(*_FAILURES):
            await bounded(connection, channel.basic_cancel(self._tag))
        taken, self._buffer = self._buffer, []
        for message in taken:
            with contextlib.suppress(BrokerError):
                await message.nak()
        with contextlib.suppress(*_FAILURES):
            await bounded(connection, channel.close())


class Stored:
    """The durable half of :class:`~protobind.amqp._connection.AmqpBroker` (a mixin)."""

    connection: AbstractRobustConnection
    settings: Settings
    exchange: str
    _frame_limit: int
    _confirmed: AbstractRobustChannel

    _stored_ready: bool = False
    _admin_channel: AbstractChannel | None = None
    _streams: dict[str, StreamSpec]
    _recent: collections.OrderedDict[tuple[str, str], float]
    _storing: dict[tuple[str, str], asyncio.Future[Any]]
    _retry_queues: set[str]
    _kept: dict[int, str]
    _sequences: itertools.count[int]
    _durable_consumers: set[_Consumer]
    _consumers_changed: asyncio.Event

    def next_sequence(self) -> int:
        """The next local sequence number (a stored message's id when the caller gave none)."""
        return next(self._sequences)

    def _bounded(self, operation: Awaitable[_T]) -> Awaitable[_T]:
        return bounded(self.connection, operation)

    def _init_stored(self) -> None:
        self._streams = {}
        self._recent = collections.OrderedDict()
        self._storing = {}
        self._retry_queues = set()
        self._kept = {}
        self._sequences = itertools.count(1)
        self._durable_consumers = set()
        #: set when a consumer (durable or not) may have stopped consuming; see ``AmqpBroker``
        self._consumers_changed = asyncio.Event()

    async def _admin(self) -> AbstractChannel:
        """A channel for declarations (opened again after RabbitMQ closed it over an error)."""
        channel = self._admin_channel
        if channel is None or channel.is_closed:
            opened: AbstractChannel = await self._bounded(self.connection.channel(publisher_confirms=False))
            channel = self._admin_channel = opened
        return channel

    async def _exchanges(self) -> None:
        if self._stored_ready:
            return
        channel = await self._admin()
        unclaimed = unclaimed_exchange(self.exchange)
        await self._bounded(channel.declare_exchange(unclaimed, aio_pika.ExchangeType.TOPIC, durable=True))
        await self._bounded(
            channel.declare_exchange(
                durable_exchange(self.exchange),
                aio_pika.ExchangeType.TOPIC,
                durable=True,
                arguments={"alternate-exchange": unclaimed},
            )
        )
        self._stored_ready = True

    async def _declare_queue(self, name: str, arguments: dict[str, Any], *, quorum: bool = True) -> Any:
        """Declare a durable queue; one that exists with other arguments is used as it is."""
        channel = await self._admin()
        args = {"x-queue-type": "quorum", **arguments} if quorum else arguments
        try:
            return await self._bounded(channel.declare_queue(name, durable=True, arguments=args))
        except aiormq.exceptions.ChannelPreconditionFailed:
            channel = await self._admin()
            return await self._bounded(channel.declare_queue(name, passive=True))

    async def ensure_stream(self, spec: StreamSpec) -> str:
        """The stream ``spec``: the queue of its unclaimed messages (see the module docstring)."""
        self._streams[spec.name] = spec
        try:
            await self._exchanges()
            arguments: dict[str, Any] = {}
            if spec.max_age:
                arguments["x-message-ttl"] = int(spec.max_age * 1000)
            if spec.max_bytes > 0:
                arguments["x-max-length-bytes"] = spec.max_bytes
            if spec.replicas > 1:
                arguments["x-quorum-initial-group-size"] = spec.replicas
            queue = await self._declare_queue(spec.name, arguments)
            for subject in spec.subjects:
                await self._bounded(queue.bind(unclaimed_exchange(self.exchange), routing_pattern(subject)))
        except _FAILURES as exc:
            raise _error(exc, f"stream {spec.name}") from None
        return spec.name

    def _duplicate(self, subject: str, msg_id: str) -> bool:
        recent = self._recent
        key = (subject, msg_id)
        seen = recent.get(key)
        if seen is None:
            return False
        window = max((s.duplicate_window for s in self._streams.values()), default=120.0)
        if time.monotonic() - seen > window:
            del recent[key]
            return False
        return True

    def _remember(self, subject: str, msg_id: str) -> None:
        recent = self._recent
        recent[(subject, msg_id)] = time.monotonic()
        recent.move_to_end((subject, msg_id))
        while len(recent) > _RECENT_IDS:
            recent.popitem(last=False)

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
        """A persistent, mandatory publish, returned once RabbitMQ confirmed it."""
        if len(payload) > self.settings.engine.max_message_size:
            raise PayloadTooLarge(f"{len(payload)} bytes exceed max_message_size")
        table: dict[str, Any] = {MSG_ID_HEADER: msg_id}
        content_type = None
        for name, value in (headers or {}).items():
            if name.lower() == _CONTENT_TYPE:
                content_type = value
            else:
                table[name] = value
        if headers_size(table) > self._frame_limit:
            raise PayloadTooLarge("the message's headers exceed the AMQP frame size")
        if self._duplicate(subject, msg_id):
            return StoreAck("", 0, duplicate=True)
        if not connected(self.connection):
            raise NotConnected("storing a message: the connection to RabbitMQ is lost")
        # A store whose confirm is late is not abandoned: an attempt that gives up waiting leaves it
        # running, and a new attempt with the same message id waits for that confirm instead of
        # publishing a second copy (the durable client retries with the same id).
        key = (subject, msg_id)
        storing = self._storing.get(key)
        if storing is None:
            storing = asyncio.ensure_future(self._store(subject, payload, table, content_type, msg_id, ttl))
            self._storing[key] = storing
            storing.add_done_callback(functools.partial(self._stored, key))
        try:
            result = await asyncio.wait_for(asyncio.shield(storing), timeout)
        except asyncio.TimeoutError:
            raise NotStored(f"no confirmation of the store within {timeout:.3g} s") from None
        except _FAILURES as exc:
            raise _error(exc, "storing a message") from None
        if isinstance(result, DeliveredMessage):
            raise NoStream(f"no queue stores {subject}")
        if isinstance(result, spec.Basic.Nack):
            raise NotStored("RabbitMQ refused to store the message")
        return StoreAck("", self.next_sequence())

    def _stored(self, key: tuple[str, str], storing: asyncio.Future[Any]) -> None:
        """A store ended, awaited or not: confirmed, its id is remembered; failed, it is forgotten
        so that the next attempt publishes again."""
        del self._storing[key]
        if storing.cancelled() or storing.exception() is not None:
            return
        if isinstance(storing.result(), spec.Basic.Ack):
            self._remember(*key)

    async def _store(
        self,
        subject: str,
        payload: bytes,
        table: dict[str, Any],
        content_type: str | None,
        msg_id: str,
        ttl: float | None,
    ) -> Any:
        await self._exchanges()
        expiration = None
        if ttl:
            expiration = str(max(1, int(ttl * 1000)))
            await self._keep(subject, expiration)
        properties = spec.Basic.Properties(
            headers=table,
            content_type=content_type,
            message_id=msg_id,
            delivery_mode=2,
            expiration=expiration,
        )
        channel = raw_channel(self._confirmed)
        if ttl:
            # to the subject's own queue, through the binding's exchange (its subscribers hear it);
            # a copy to the consumers' queues, if any stream has one (a raw caller may have none)
            result = await channel.basic_publish(
                payload, exchange=self.exchange, routing_key=subject, properties=properties, mandatory=True
            )
            if isinstance(result, spec.Basic.Ack):
                copy = await channel.basic_publish(
                    payload,
                    exchange=durable_exchange(self.exchange),
                    routing_key=subject,
                    properties=properties,
                )
                if isinstance(copy, spec.Basic.Nack):
                    return copy
            return result
        # to the consumers' queues (or the stream's own, when none matches)
        return await channel.basic_publish(
            payload,
            exchange=durable_exchange(self.exchange),
            routing_key=subject,
            properties=properties,
            mandatory=True,
        )

    async def _keep(self, subject: str, milliseconds: str) -> None:
        """Declare the queue that keeps ``subject`` (for ``milliseconds``)."""
        queue = await self._declare_queue(
            kept_queue(subject),
            {"x-message-ttl": int(milliseconds), "x-expires": int(milliseconds)},
            quorum=False,
        )
        await self._bounded(queue.bind(self.exchange, subject))

    async def is_kept(self, subject: str) -> bool:
        """Whether the queue keeping ``subject`` is still there (not read and deleted, not expired)."""
        channel = await self._bounded(self.connection.channel(publisher_confirms=False))
        try:
            await self._bounded(channel.declare_queue(kept_queue(subject), passive=True))
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            with contextlib.suppress(*_FAILURES):
                await self._bounded(channel.close())

    async def consumer(self, spec: ConsumerSpec) -> _Consumer:
        """The consumer's queue, made and bound when missing, then consumed (and consumed again
        after each reconnection, see :class:`_Consumer`)."""
        stream = self._streams.get(spec.stream)
        name = f"{spec.stream}.{spec.name}"
        consumer = _Consumer(
            self, name, spec.ack_wait, spec.max_ack_pending, keyed=stream is not None and stream.allow_ttl
        )
        try:
            await self._exchanges()
            arguments: dict[str, Any] = {}
            if stream is not None and stream.max_age:
                arguments["x-message-ttl"] = int(stream.max_age * 1000)
            queue = await self._declare_queue(name, arguments)
            await self._bounded(
                queue.bind(durable_exchange(self.exchange), routing_pattern(spec.filter_subject))
            )
            await self._claim(spec.stream, name, spec.filter_subject)
            await self._bounded(consumer.resume())
        except _FAILURES as exc:
            await consumer.close()
            raise _error(exc, f"consumer {spec.name}") from None
        self._durable_consumers.add(consumer)
        return consumer

    async def open_raw_channel(self) -> Any:
        """A new aiormq channel on the connection as it is now (no aio-pika restore: gone with it)."""
        transport = self.connection.transport
        if transport is None or not connected(self.connection):
            raise aiormq.exceptions.ChannelInvalidStateError("the connection to RabbitMQ is lost")
        return await transport.connection.channel(publisher_confirms=False)

    def consumer_lost(self) -> None:
        """A consumer's channel closed or RabbitMQ cancelled a consumer: look at them all again."""
        self._consumers_changed.set()

    def forget_consumer(self, consumer: _Consumer) -> None:
        self._durable_consumers.discard(consumer)

    async def resume_durable(self) -> list[str]:
        """Consume again with every durable consumer that is not consuming (see
        :class:`_Consumer`); the queues of those that could not, each with the reason."""
        failed = []
        for consumer in list(self._durable_consumers):
            try:
                if await self._bounded(consumer.resume()):
                    logger.info("consuming %s again", consumer.queue)
            except _FAILURES as exc:
                failed.append(f"{consumer.queue} ({_error(exc, 'consuming')})")
        return failed

    async def _claim(self, stream: str, queue: str, filter_subject: str) -> None:
        """Move the unclaimed messages of ``stream`` that ``filter_subject`` matches to ``queue``
        (see :class:`_Claim`)."""
        channel = await self._bounded(self.connection.channel(publisher_confirms=False))
        try:
            holding = await self._bounded(channel.declare_queue(stream, passive=True))
            left = holding.declaration_result.message_count
            if left:
                await _Claim(self, raw_channel(channel), queue, filter_subject).run(stream, left)
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass  # no stream queue (made by an operator under another name): nothing to claim
        finally:
            with contextlib.suppress(*_FAILURES):
                await self._bounded(channel.close())

    async def _copy(
        self, queue: str, body: bytes, content_type: str | None, message_id: str | None, table: dict[str, Any]
    ) -> None:
        """Store a copy of a message in ``queue`` (through the default exchange), confirmed."""
        properties = spec.Basic.Properties(
            headers=table, content_type=content_type, message_id=message_id, delivery_mode=2
        )
        result = await raw_channel(self._confirmed).basic_publish(
            body, exchange="", routing_key=queue, properties=properties, mandatory=True
        )
        if not isinstance(result, spec.Basic.Ack):
            raise BrokerError(f"the copy to {queue} was not stored")

    async def delay_copy(
        self, queue: str, raw: AbstractIncomingMessage, subject: str, attempt: int, delay: float
    ) -> None:
        """Publish a copy of ``raw`` that comes back to ``queue`` after ``delay`` seconds."""
        milliseconds = max(1, int(delay * 1000))
        retry = f"{queue}.retry.{milliseconds}"
        table = _copy_table(_table(raw))
        table[DELIVERED] = attempt
        table[STORED_ON] = subject
        try:
            if retry not in self._retry_queues:
                await self._declare_queue(
                    retry,
                    {
                        "x-message-ttl": milliseconds,
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": queue,
                        "x-dead-letter-strategy": "at-least-once",
                        "x-overflow": "reject-publish",
                        "x-expires": milliseconds + 600_000,
                    },
                )
                self._retry_queues.add(retry)
            await self._copy(retry, raw.body, raw.content_type, raw.message_id, table)
        except _FAILURES as exc:
            self._retry_queues.discard(retry)
            raise _error(exc, "delaying a retry") from None

    async def last(self, stream: str, subject: str) -> _Message | None:
        """The message kept on ``subject`` (streams with a time to live: the subject's queue)."""
        try:
            channel = await self._bounded(self.connection.channel(publisher_confirms=False))
        except _FAILURES as exc:
            raise _error(exc, f"reading {subject}") from None
        try:
            queue = await self._bounded(channel.declare_queue(kept_queue(subject), passive=True))
            message = None
            # the last of the queue's messages (a reply queue holds one); all go back on close
            while (got := await self._bounded(queue.get(no_ack=False, fail=False))) is not None:
                message = got
            if message is None:
                return None
            sequence = self.next_sequence()
            self._kept[sequence] = subject
            return _Message(
                None,
                None,
                subject=subject,
                data=message.body,
                headers=_visible(_table(message), message.content_type),
                sequence=sequence,
                attempt=0,
            )
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        except _FAILURES as exc:
            raise _error(exc, f"reading {subject}") from None
        finally:
            with contextlib.suppress(*_FAILURES):
                await self._bounded(channel.close())

    async def delete(self, stream: str, sequence: int) -> None:
        """Remove the message :meth:`last` returned as ``sequence``: its subject's queue goes."""
        subject = self._kept.pop(sequence, None)
        if subject is None:
            return
        try:
            channel = await self._admin()
            await self._bounded(channel.queue_delete(kept_queue(subject)))
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass
        except _FAILURES as exc:
            raise _error(exc, f"deleting {subject}") from None


class _Claim:
    """The unclaimed messages of a stream moved to a consumer's queue, pipelined.

    They are consumed on a channel of the claim's own with a window of :data:`CLAIM_WINDOW`
    unacknowledged deliveries: each one the filter matches is copied to the consumer's queue
    (many confirmed copies in flight at once) and acknowledged once its copy is confirmed; the
    others stay unacknowledged, so each is looked at once, and go back to the stream's queue when
    the channel closes. If those others fill the window, RabbitMQ pushes nothing more, and the
    rest is read with ``basic.get`` (which no window holds back), still with copies in flight.
    """

    def __init__(self, owner: Stored, channel: Any, queue: str, filter_subject: str) -> None:
        self.owner = owner
        self.channel = channel
        self.queue = queue
        self.filter = tokens(filter_subject)
        self.arrived: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self.slots = asyncio.Semaphore(CLAIM_WINDOW)
        self.copies: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None
        self.held = 0  # looked at, not matched, left unacknowledged

    async def run(self, stream: str, left: int) -> None:
        connection = self.owner.connection
        channel = self.channel
        try:
            await bounded(connection, channel.basic_qos(prefetch_count=CLAIM_WINDOW))
            consuming = await bounded(
                connection, channel.basic_consume(stream, self.arrived.put, no_ack=False)
            )
            try:
                while left > 0 and self.held < CLAIM_WINDOW and self.failure is None:
                    try:
                        message = await asyncio.wait_for(self.arrived.get(), ANSWER_WAIT)
                    except asyncio.TimeoutError:
                        break  # fewer than counted: expired, or another server's claim took them
                    left -= 1
                    await self._look(message)
            finally:
                # deliveries not looked at stay unacknowledged: back to the stream's queue on close
                with contextlib.suppress(*_FAILURES):
                    await bounded(connection, channel.basic_cancel(consuming.consumer_tag))
            while left > 0 and self.held >= CLAIM_WINDOW and self.failure is None:
                message = await bounded(connection, channel.basic_get(stream, no_ack=False))
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                left -= 1
                await self._look(message)
        finally:
            await asyncio.gather(*self.copies, return_exceptions=True)
        if self.failure is not None:
            raise self.failure

    async def _look(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        table = _table(properties)
        subject = _text(table.get(STORED_ON) or message.delivery.routing_key or "")  # type: ignore[union-attr]
        if not matches(self.filter, tokens(subject)):
            self.held += 1
            return
        copied = _copy_table(table)
        copied[STORED_ON] = subject
        await self.slots.acquire()
        task = asyncio.ensure_future(self._move(message, properties, copied))
        self.copies.add(task)
        task.add_done_callback(self.copies.discard)

    async def _move(self, message: DeliveredMessage, properties: Any, table: dict[str, Any]) -> None:
        try:
            await self.owner._copy(
                self.queue, message.body, properties.content_type, properties.message_id, table
            )
            await self.channel.basic_ack(message.delivery.delivery_tag, wait=False)  # type: ignore[union-attr]
        except Exception as exc:  # kept for run() to raise; the message goes back with the channel
            if self.failure is None:
                self.failure = exc
        finally:
            self.slots.release()


async def consume(channel: Any, queue: str, callback: Any, tag: str, *, no_ack: bool) -> None:
    """``basic.consume`` on the aiormq ``channel``. aiormq records the consumer before it asks
    RabbitMQ; a request that failed or was cancelled before RabbitMQ answered leaves that record on
    a channel that may stay open, which would pass for a consumer that is consuming: it goes."""
    try:
        await channel.basic_consume(queue, callback, no_ack=no_ack, consumer_tag=tag)
    except BaseException:
        channel.consumers.pop(tag, None)
        raise


def raw_channel(channel: AbstractRobustChannel) -> Any:
    """The aiormq channel under an aio-pika one now (a new one after each reconnection); read on
    every publish, so without aio-pika's deprecated property or an await."""
    underlay = getattr(channel, "_channel", None)
    if underlay is None:
        raise aiormq.exceptions.ChannelInvalidStateError("the channel is not open")
    return underlay.channel
