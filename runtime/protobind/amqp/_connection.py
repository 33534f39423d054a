"""The broker engine's :class:`~protobind.broker.base.Broker` on RabbitMQ: with :mod:`.stored`
(durable calls), the only code that touches aio-pika (and aiormq, the AMQP client under it).

How the engine's vocabulary maps onto AMQP 0-9-1 (docs/brokers.md has the table, docs/protocols.md
the wire rules):

- A *subject* is a routing key on one topic exchange (option ``exchange``, default ``protobind``);
  subscription wildcards map one to one (``*`` is ``*``, ``>`` is ``#``).
- A *subscription* is a queue bound to that exchange with the subject as its binding key: an
  exclusive queue of the connection, or, for a *queue group*, the queue ``{group}@{subject}``
  that every member consumes from (RabbitMQ hands each message to one consumer of a queue, so
  replicas share it and other groups, with queues of their own, each get every message).
- An *inbox* is an exclusive queue with a random name (``protobind.reply.<128 random bits>``). A
  reply address is ``{queue}#{token}``: the reply is published to the default exchange with the
  queue as routing key and the token as ``correlation_id``, which is RabbitMQ's own RPC pattern,
  so any AMQP client that sets ``reply_to`` and ``correlation_id`` gets its answer. A message that
  both goes to an address and names its own (a stream frame) carries the destination's token as
  ``correlation_id`` and its own in the header ``Protobind-Reply-Id``.
- "No responders": a publish that names a reply address goes out ``mandatory`` on a channel with
  publisher confirms; when RabbitMQ returns it unroutable (no queue bound, or the peer's inbox is
  gone), the sender's own inbox gets the engine's ``Status: 503`` answer at once.
- ``Content-Type`` travels as the ``content_type`` property; every other header in the headers table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection, AbstractRobustQueue
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from ..broker._bindings import AMQP_BINDING_VERSION, Bindings, host_of
from ..broker._wire import CONTENT_TYPE, headers_size
from ..broker.base import (
    NO_RESPONDERS_STATUS,
    BrokerError,
    BrokerMessage,
    Callback,
    InboxCallback,
    Mailbox,
    NotConnected,
    PayloadTooLarge,
)
from ..urls import redact_text
from ._stored import UNSAFE, Stored, bounded, consume, durable_exchange, raw_channel, routing_pattern

if TYPE_CHECKING:
    from ._options import Settings

__all__ = [
    "REPLY_ID",
    "AmqpBroker",
    "AuthenticationFailed",
    "Received",
    "open_broker",
    "queue_name",
    "routing_pattern",
]

logger = logging.getLogger("protobind.amqp")

#: Header of a message sent to an address that also names its sender's own (see the module docstring).
REPLY_ID = "Protobind-Reply-Id"
#: Separates the queue from the token in a reply address.
_SEP = "#"
#: Room left in an AMQP frame for the rest of a content header besides the headers table.
_HEADER_SLACK = 1024
_CONTENT_TYPE = CONTENT_TYPE.lower()


class AuthenticationFailed(ConnectionError):
    """RabbitMQ refused the credentials."""


def queue_name(group: str, subject: str, exchange: str) -> str:
    """The queue of queue group ``group`` on ``subject`` (at most 255 bytes, RabbitMQ's limit)."""
    name = f"{group}@{subject}" if exchange == "protobind" else f"{group}@{subject}@{exchange}"
    # only the characters AMQP clients accept in queue names: others (the ``*`` of a service's
    # subject, the ``$`` of ``$SRV``) become ``_``; a long name keeps its start and a digest
    safe = UNSAFE.sub("_", name)
    if len(safe.encode()) > 200:
        safe = safe[:160] + "@" + hashlib.sha256(name.encode()).hexdigest()[:32]
    return safe


class Received:
    """A message as the engine reads it (``subject``, ``reply``, ``data``, ``headers``)."""

    __slots__ = ("channel", "data", "headers", "reply", "subject", "tag")

    def __init__(
        self,
        subject: str,
        reply: str,
        data: bytes,
        headers: dict[str, str] | None,
        channel: Any = None,
        tag: int = 0,
    ) -> None:
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers = headers
        self.channel = channel  # the aiormq channel it came on, for the acknowledgement
        self.tag = tag


def _headers(properties: Any) -> dict[str, str] | None:
    table = properties.headers
    content_type = properties.content_type
    if not table and not content_type:
        return None
    out: dict[str, str] = {}
    if table:
        for name, value in table.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif not isinstance(value, str):
                value = str(value)
            out[name] = value
    if content_type:
        out[CONTENT_TYPE] = content_type
    return out


def _received(message: DeliveredMessage, subject: str, reply_token: str | None) -> Received:
    """A delivered message for the engine. ``reply_token``: where the sender's token is (``None``:
    in ``correlation_id``, as on a call; else the value of :data:`REPLY_ID`)."""
    properties = message.header.properties
    headers = _headers(properties)
    reply = ""
    reply_to = properties.reply_to
    if reply_to:
        if reply_token is None:
            token = properties.correlation_id or ""
        else:
            token = headers.pop(REPLY_ID, "") if headers else ""
        reply = f"{reply_to}{_SEP}{token}"
    elif headers:
        headers.pop(REPLY_ID, None)
    return Received(subject, reply, message.body, headers or None)


class _Consumer:
    """One basic.consume on the connection's consuming channel, started again whenever it is not
    consuming (see :meth:`AmqpBroker._resume_consumers`)."""

    def __init__(self, broker: AmqpBroker, queue: AbstractRobustQueue, callback: Any, no_ack: bool) -> None:
        self.broker = broker
        self.queue = queue
        self.callback = callback
        self.no_ack = no_ack
        self.tag = f"protobind.{secrets.token_hex(8)}"
        self.active = True

    def consuming(self) -> bool:
        """Whether the consuming channel is open with this consumer on it."""
        try:
            channel = raw_channel(self.broker.consuming)
        except aiormq.exceptions.ChannelInvalidStateError:
            return False
        return not channel.is_closed and self.tag in channel.consumers

    async def start(self) -> None:
        channel = raw_channel(self.broker.consuming)
        # RabbitMQ cancels a consumer whose queue was deleted: look at the consumers again then
        channel.on_consumer_cancel_callbacks.add(self.broker.on_consumer_cancel)
        await consume(channel, self.queue.name, self.callback, self.tag, no_ack=self.no_ack)

    async def stop(self) -> None:
        self.active = False
        self.broker.consumers.discard(self)
        with contextlib.suppress(Exception):
            await raw_channel(self.broker.consuming).basic_cancel(self.tag)
        with contextlib.suppress(Exception):
            # a group's queue goes with its last member; an exclusive one with its connection anyway
            await bounded(self.broker.connection, self.queue.delete(if_unused=True, if_empty=False))


class _Subscription:
    """A callback subscription: messages reach the callback one at a time, in arrival order."""

    def __init__(self, consumer: _Consumer) -> None:
        self.consumer = consumer

    async def unsubscribe(self) -> None:
        await self.consumer.stop()


class _Inbound:
    """A subscription whose messages the engine's consumers take from ``mailbox``; each message is
    acknowledged once taken (RabbitMQ holds back what is beyond the binding's prefetch)."""

    def __init__(self, broker: AmqpBroker) -> None:
        self.broker = broker
        self.mailbox = Mailbox()
        self.consumer: _Consumer | None = None

    def taken(self, message: BrokerMessage) -> None:
        assert isinstance(message, Received)
        self.broker.acknowledge(message.channel, message.tag)

    def done(self, message: BrokerMessage) -> None:
        """Nothing more to record: the message was acknowledged when taken."""

    async def unsubscribe(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


class _Inbox:
    def __init__(self, queue: str) -> None:
        self.prefix = queue + _SEP

    def address(self, token: str) -> str:
        return self.prefix + token


class AmqpBroker(Stored):
    """:class:`protobind.broker.base.DurableBroker` on one RabbitMQ connection (see the module
    docstring; durable calls in :mod:`.stored`)."""

    name = "amqp"

    def __init__(self, connection: AbstractRobustConnection, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self.exchange = settings.exchange
        self.consumers: set[_Consumer] = set()
        self._disconnect_callbacks: list[Callable[[], Awaitable[None]]] = []
        self._inboxes: dict[str, InboxCallback] = {}  # own inbox queue -> its callback
        self._closed = False
        # acknowledgements not yet sent: channel -> highest delivery tag taken (see acknowledge)
        self._acks: dict[Any, int] = {}
        self._ack_scheduled = False
        self.consuming: AbstractRobustChannel
        self._plain: AbstractRobustChannel
        self._confirmed: AbstractRobustChannel
        self._frame_limit = 131072
        self._init_stored()
        #: one look at the consumers at a time (a consumer must not be started twice)
        self._resuming = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self._failing: set[str] = set()  # consumers whose last restart failed (logged once)

    async def open(self) -> None:
        """Open the channels and declare the exchange."""
        connection = self.connection
        self.consuming = await connection.channel(publisher_confirms=False)
        await self.consuming.set_qos(prefetch_count=self.settings.prefetch)
        self._plain = await connection.channel(publisher_confirms=False)
        self._confirmed = await connection.channel(publisher_confirms=True)
        await self.consuming.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        tune = getattr(getattr(connection, "transport", None), "connection", None)
        frame_max = getattr(getattr(tune, "connection_tune", None), "frame_max", 0) or 131072
        self._frame_limit = int(frame_max) - _HEADER_SLACK
        connection.close_callbacks.add(self._on_close)
        connection.reconnect_callbacks.add(self._on_reconnect)
        # aio-pika reopens a channel RabbitMQ closed (an error on it) without its raw consumers
        self.consuming.reopen_callbacks.add(self._on_reopen)
        self._keeper = asyncio.get_running_loop().create_task(self._keep_consuming())

    # --- connection state -----------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        """Largest message body sent or accepted (``max_message_size``)."""
        # RabbitMQ takes up to 128 MiB by default; protobind holds every message, both ways, to the
        # binding's max_message_size (4 MiB by default, as on gRPC and HTTP)
        return self.settings.engine.max_message_size

    @property
    def is_connected(self) -> bool:
        """Whether the connection to RabbitMQ is open now."""
        connection = self.connection
        return not self._closed and not connection.is_closed and connection.connected.is_set()

    def on_disconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` whenever the connection is lost."""
        self._disconnect_callbacks.append(callback)

    async def _on_close(self, *_: Any) -> None:
        if self._closed:
            return
        logger.warning("RabbitMQ connection to %s lost; reconnecting", self.settings.shown)
        self._acks.clear()  # the deliveries of a lost channel are redelivered by RabbitMQ
        for callback in self._disconnect_callbacks:
            await callback()

    async def _on_reconnect(self, *_: Any) -> None:
        # aio-pika has declared the queues and bindings again; consumers are this module's own
        await self._resume_consumers()
        logger.info("RabbitMQ connection to %s restored", self.settings.shown)

    def _on_reopen(self, *_: Any) -> None:
        self._consumers_changed.set()

    def on_consumer_cancel(self, *_: Any) -> None:
        """RabbitMQ cancelled a consumer of the consuming channel: look at the consumers again."""
        self._consumers_changed.set()

    async def _keep_consuming(self) -> None:
        """Every consumer consuming again as soon as it can: after a reconnection, a channel closed
        by RabbitMQ, a consumer RabbitMQ cancelled, or a restart that failed (aio-pika does not try
        again). Looks whenever told something changed and every ``reconnect_wait`` seconds; what is
        consuming costs nothing to look at."""
        changed = self._consumers_changed
        interval = max(self.settings.reconnect_wait, 0.05)
        while not self._closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), interval)
            changed.clear()
            if self.is_connected:
                try:
                    await self._resume_consumers()
                except asyncio.CancelledError:
                    # a request of aiormq cancelled under us (not this task): looked at again later
                    cancelling = getattr(asyncio.current_task(), "cancelling", None)  # Python 3.11+
                    if self._closed or cancelling is None or cancelling():
                        raise
                except Exception as exc:  # never let the keeper die: it is what brings consumers back
                    logger.warning("restarting consumers failed: %s", _reason(exc))

    async def _resume_consumers(self) -> None:
        """Start again each consumer (durable or not) that is not consuming; a failure is logged
        once and tried again at the next look."""
        async with self._resuming:
            failed = await self.resume_durable()
            lost = [
                consumer for consumer in list(self.consumers) if consumer.active and not consumer.consuming()
            ]
            if lost and self.consuming.is_closed:
                try:  # a channel aio-pika gave up restoring (a restore that failed is not tried again)
                    await bounded(self.connection, self.consuming.reopen())
                except (aiormq.exceptions.AMQPError, RuntimeError, OSError, asyncio.TimeoutError) as exc:
                    failed.append(f"the consuming channel ({_reason(exc)})")
                    lost = []
            for consumer in lost:
                if not consumer.active or consumer.consuming():
                    continue
                try:
                    await bounded(self.connection, consumer.start())
                    logger.info("consuming %s again", consumer.queue.name)
                except (aiormq.exceptions.AMQPError, RuntimeError, OSError, asyncio.TimeoutError) as exc:
                    failed.append(f"{consumer.queue.name} ({_reason(exc)})")
            new = set(failed) - self._failing
            if new:
                logger.warning("not consuming again yet, will retry: %s", "; ".join(sorted(new)))
            self._failing = set(failed)

    # --- publishing -------------------------------------------------------------------------------

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        """Publish one message to the exchange with ``subject`` as its routing key."""
        if self._closed:
            raise NotConnected("the AMQP connection is closed")
        content_type = None
        table: dict[str, Any] | None = None
        if headers:
            if headers_size(headers) > self._frame_limit:
                raise PayloadTooLarge("the message's headers exceed the AMQP frame size")
            table = {}
            for name, value in headers.items():
                if name.lower() == _CONTENT_TYPE:
                    content_type = value
                else:
                    table[name] = value
        queue, is_address, token = subject.partition(_SEP)
        reply_to = correlation = None
        if is_address:
            exchange, routing_key, correlation = "", queue, token or None
            if reply:
                reply_to, _, own = reply.partition(_SEP)
                if table is None:
                    table = {}
                table[REPLY_ID] = own
        else:
            exchange, routing_key = self.exchange, subject
            if reply:
                reply_to, _, correlation = reply.partition(_SEP)
        properties = spec.Basic.Properties(
            headers=table,
            content_type=content_type,
            reply_to=reply_to,
            correlation_id=correlation,
            delivery_mode=1,
        )
        try:
            if not reply:
                await raw_channel(self._plain).basic_publish(
                    payload, exchange=exchange, routing_key=routing_key, properties=properties
                )
                return
            result = await raw_channel(self._confirmed).basic_publish(
                payload, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=True
            )
        except (aiormq.exceptions.AMQPError, RuntimeError, OSError, asyncio.TimeoutError) as exc:
            raise _broker_error(exc) from None
        if isinstance(result, DeliveredMessage):
            await self._returned(reply)
        elif isinstance(result, spec.Basic.Nack):
            raise BrokerError("RabbitMQ refused the message")

    async def _returned(self, reply: str) -> None:
        """Nobody took a message that named ``reply``: answer it the engine's "no responders"."""
        queue, _, token = reply.partition(_SEP)
        callback = self._inboxes.get(queue)
        if callback is not None:
            await callback(token, Received(reply, "", b"", {"Status": NO_RESPONDERS_STATUS}))

    # --- receiving --------------------------------------------------------------------------------

    async def _queue(self, subject: str, group: str) -> AbstractRobustQueue:
        channel = self.consuming
        if group:
            name = queue_name(group, subject, self.exchange)
            # shared by the group's members; gone with the last of them (or, if a member vanished
            # without saying so, a minute after the queue was last used)
            declared = channel.declare_queue(
                name, durable=False, auto_delete=True, arguments={"x-expires": 60_000}
            )
        else:
            declared = channel.declare_queue(
                f"protobind.sub.{secrets.token_hex(16)}", exclusive=True, auto_delete=True
            )
        try:
            queue = await bounded(self.connection, declared)
            await bounded(self.connection, queue.bind(self.exchange, routing_pattern(subject)))
        except (aiormq.exceptions.AMQPError, asyncio.TimeoutError) as exc:
            raise _broker_error(exc) from None
        return queue

    async def _consume(self, queue: AbstractRobustQueue, callback: Any, no_ack: bool) -> _Consumer:
        consumer = _Consumer(self, queue, callback, no_ack)
        try:
            async with self._resuming:
                self.consumers.add(consumer)
                await consumer.start()
        except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
            self.consumers.discard(consumer)
            raise _broker_error(exc) from None
        return consumer

    async def subscribe(self, subject: str, callback: Callback, queue: str = "") -> _Subscription:
        """Consume ``subject`` (in the queue of group ``queue``, if given) with ``callback``."""
        lock = asyncio.Lock()

        async def on_message(message: DeliveredMessage) -> None:
            # aiormq runs each delivery in a task of its own, started in arrival order: the lock
            # (first come, first served) keeps them one at a time and in that order
            received = _received(message, message.delivery.routing_key or "", None)  # type: ignore[union-attr]
            async with lock:
                await callback(received)

        amqp_queue = await self._queue(subject, queue)
        return _Subscription(await self._consume(amqp_queue, on_message, no_ack=True))

    async def pull(self, subject: str, queue: str = "", subjects: tuple[str, ...] = ()) -> _Inbound:
        """Consume ``subject`` into a mailbox the engine takes messages from."""
        inbound = _Inbound(self)
        mailbox = inbound.mailbox

        async def on_message(message: DeliveredMessage) -> None:
            delivery: Any = message.delivery
            received = _received(message, delivery.routing_key or "", None)
            received.channel = message.channel
            received.tag = delivery.delivery_tag
            mailbox.put(received)

        amqp_queue = await self._queue(subject, queue)
        inbound.consumer = await self._consume(amqp_queue, on_message, no_ack=False)
        return inbound

    def acknowledge(self, channel: Any, tag: int) -> None:
        """Acknowledge the delivery ``tag`` (and every earlier one of ``channel``): at most one
        ``basic.ack`` per channel per event-loop turn, however many calls were taken in it."""
        acks = self._acks
        if tag > acks.get(channel, 0):
            acks[channel] = tag
        if not self._ack_scheduled:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_acks)

    def _send_acks(self) -> None:
        self._ack_scheduled = False
        acks, self._acks = self._acks, {}
        for channel, tag in acks.items():
            if not channel.is_closed:
                task = asyncio.get_running_loop().create_task(
                    channel.basic_ack(tag, multiple=True, wait=False)
                )
                task.add_done_callback(_ignore)

    async def inbox(self, callback: InboxCallback) -> _Inbox:
        """Open a private reply inbox: an exclusive queue with an unguessable name."""
        # 128 random bits: the queue name is all another connection would need to answer in a
        # server's place, and only this connection may consume from it (exclusive)
        name = f"protobind.reply.{secrets.token_hex(16)}"
        try:
            queue = await bounded(
                self.connection, self.consuming.declare_queue(name, exclusive=True, auto_delete=True)
            )
        except (aiormq.exceptions.AMQPError, asyncio.TimeoutError) as exc:
            raise _broker_error(exc) from None
        self._inboxes[name] = callback

        async def on_reply(message: DeliveredMessage) -> None:
            properties = message.header.properties
            # called right here: the engine's inbox callbacks never wait, so replies keep their order
            await callback(properties.correlation_id or "", _received(message, name, REPLY_ID))

        await self._consume(queue, on_reply, no_ack=True)
        return _Inbox(name)

    def peer_of(self, reply: str) -> str:
        """The caller behind a reply address: its reply queue."""
        return reply.partition(_SEP)[0]

    def asyncapi_bindings(self) -> AmqpBindings:
        """The document's channels are routing keys on this broker's exchange (stored calls: on its
        durable exchange)."""
        return AmqpBindings(self.exchange)

    async def settle(self) -> None:
        """Declarations, bindings and consumers are confirmed by RabbitMQ before they return."""

    async def close(self) -> None:
        """Close the channels and the connection."""
        if self._closed:
            return
        self._closed = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        if self._acks:
            self._send_acks()
            await asyncio.sleep(0)
        try:
            await asyncio.wait_for(self.connection.close(), 5.0)
        except Exception as exc:
            logger.debug("closing the RabbitMQ connection: %s", _reason(exc))
        for storing in list(self._storing.values()):  # confirms that can no longer come
            storing.cancel()


class AmqpBindings(Bindings):
    """The AsyncAPI addressing of the RabbitMQ binding: a channel's address is its routing key on
    the topic exchange ``exchange`` (durable calls and dead letters: on ``{exchange}.durable``)."""

    protocol = "amqp"
    kind = "RabbitMQ routing keys"
    reference = "docs/protocols.md, 'RabbitMQ'"
    schemes = ("amqp", "amqps")

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange

    def address(self, subject: str) -> str:
        return routing_pattern(subject)

    def channel(self, subject: str, stored: bool = False) -> dict[str, Any] | None:
        exchange = durable_exchange(self.exchange) if stored else self.exchange
        return {
            "amqp": {
                "is": "routingKey",
                "exchange": {"name": exchange, "type": "topic", "durable": True, "autoDelete": False},
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        }

    def operation(self, queue: str | None, stored: bool = False) -> dict[str, Any] | None:
        if stored:
            # stored calls and dead letters: persistent and mandatory
            stored_binding = {"deliveryMode": 2, "mandatory": True, "ack": True}
            return {"amqp": {**stored_binding, "bindingVersion": AMQP_BINDING_VERSION}}
        # a queue group is a queue shared by the group's replicas, acknowledged by the server
        return None if queue is None else {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}}

    def received(self, queue: str) -> str:
        return f" Received from the queue group's queue {queue}@<address>."

    def stored_replies(self) -> str:
        return " Each reply is kept in the durable queue named like its routing key ($ -> _)."

    def server(self, url: str) -> dict[str, Any]:
        secure = url.startswith("amqps:")
        return {
            "host": host_of(url),
            "protocol": "amqps" if secure else "amqp",
            "protocolVersion": "0.9.1",
            "description": "RabbitMQ over TLS (amqps://)" if secure else "RabbitMQ",
        }


def _ignore(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a lost channel's acknowledgement: RabbitMQ redelivers those messages


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return redact_text(str(exc) or type(exc).__name__)


def _broker_error(exc: BaseException) -> BrokerError:
    if isinstance(exc, (aiormq.exceptions.ChannelInvalidStateError, RuntimeError, OSError)):
        return NotConnected(f"the AMQP connection is not usable: {type(exc).__name__}")
    if isinstance(exc, aiormq.exceptions.ConnectionClosed):
        return NotConnected("the AMQP connection is closed")
    return BrokerError(type(exc).__name__)


def _is_auth(exc: BaseException) -> bool:
    text = str(exc).upper()
    return isinstance(exc, aiormq.exceptions.ProbableAuthenticationError) or "ACCESS_REFUSED" in text


async def open_broker(settings: Settings, name: str) -> AmqpBroker:
    """Connect to RabbitMQ with ``settings``; bounded in time, never in plaintext when TLS was
    asked for, and no credentials in what it raises or logs."""
    shown = settings.shown
    try:
        connection = await aio_pika.connect_robust(
            host=settings.host,
            port=settings.port,
            login=settings.user,
            password=settings.password,
            virtualhost=settings.vhost,
            ssl=settings.tls is not None,
            ssl_context=settings.tls,
            timeout=settings.connect_timeout,
            client_properties={"connection_name": settings.name or name},
            reconnect_interval=settings.reconnect_wait,
            fail_fast="true",
        )
    except Exception as exc:  # aiormq raises many kinds: each becomes one clear line
        if _is_auth(exc):
            raise AuthenticationFailed(f"RabbitMQ at {shown} refused the credentials") from None
        raise ConnectionError(f"cannot connect to RabbitMQ at {shown}: {_reason(exc)}") from None
    broker = AmqpBroker(connection, settings)
    try:
        await asyncio.wait_for(broker.open(), max(settings.connect_timeout, 1.0) * 2)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 2.0)
        if isinstance(exc, Exception):
            raise ConnectionError(f"cannot use RabbitMQ at {shown}: {_reason(exc)}") from None
        raise
    return broker
