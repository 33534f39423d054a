"""Durable calls on MQTT 5: :class:`~protobind.broker.base.DurableBroker` with persistent sessions
and retained messages (docs/brokers.md, "MQTT 5", states what holds and what does not).

- A durable **call** is a QoS 1 PUBLISH to its call topic (``{prefix}_PROTOBIND/DURABLE/{service
  levels}/{Method}``); the broker's PUBACK means it is queued for every persistent session that
  subscribes, which is where it is kept. Each server's consumer (one per method and group) is a
  persistent session (clean start off, a session expiry interval, a stable client id
  ``protobind-{consumer}-{prefix}-{replica}``) subscribed at QoS 1 to
  ``$share/{consumer}/{call topic}``: a group's replicas share the calls, every group gets each.
  A PUBACK with reason 0x10 ("no matching subscribers") means no session keeps the call: the
  store fails (:class:`NoStream`) rather than losing it.
- **ack** is the PUBACK the server sends once the handler finished; **nak** (MQTT has none) is a
  copy published, after the delay, to the group's retry topic ``{prefix}_PROTOBIND/RETRY/{consumer}``
  with the attempt in the user property ``Protobind-Attempt``, then the PUBACK of the original;
  **in-progress** is nothing (MQTT has no acknowledgement timeout); **term** is an ack.
- MQTT does not de-duplicate by message id: a consumer drops a fresh copy of a call id it has
  handled or is handling (the last :data:`SEEN` ids of this process): best effort.
- **Records** (replies and dead letters) are retained messages keyed by call id: a reply at its
  reply topic ``{prefix}_PROTOBIND/REPLY/{group}/{call id}`` (the message expiry interval is the
  reply's time to live), a dead letter at ``{dead-letter topic}/{call id}``. Reading one is
  subscribing to its topic; removing it is publishing an empty retained message there. A record
  whose body is empty (MQTT's way to remove one) is sent as one zero byte with the user property
  ``Protobind-Empty-Body``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
from typing import TYPE_CHECKING, Any, Protocol

from zmqtt import Message as MqttMessage
from zmqtt import MQTTDisconnectedError, MQTTError, PublishProperties, QoS
from zmqtt._internal.packets.publish import Publish

from ..broker._wire import headers_size
from ..broker.base import (
    MSG_ID_HEADER,
    BrokerError,
    ConsumerSpec,
    DurableConsumer,
    NoStream,
    NotConnected,
    NotStored,
    PayloadTooLarge,
    StoreAck,
    StoredMessage,
    StreamSpec,
    Unsupported,
)
from ..broker.durable._names import name_token
from ._topics import subject_of, topic_of

if TYPE_CHECKING:
    from zmqtt import MQTTClient
    from zmqtt import Subscription as MqttSubscription

__all__ = ["ATTEMPT", "EMPTY_BODY", "SEEN", "MqttStore", "record_topic"]


class Connection(Protocol):
    """What this module uses of another MQTT connection it opened (a
    :class:`~protobind.mqtt._connection.MqttBroker`, whose module builds on this one)."""

    client: MQTTClient

    @property
    def is_connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def _subscribe(self, topic: str) -> MqttSubscription: ...

    async def close(self) -> None: ...


logger = logging.getLogger("protobind.mqtt")

#: User property of a retried call: the delivery it is (2 on the first retry).
ATTEMPT = "Protobind-Attempt"
#: User property of a record whose body is empty (its payload is one zero byte).
EMPTY_BODY = "Protobind-Empty-Body"
#: Call ids a consumer remembers to drop fresh copies of.
SEEN = 10_000
_CALLS = "$PROTOBIND.DURABLE."
_REPLIES = "$PROTOBIND.REPLY."
_NO_MATCHING_SUBSCRIBERS = 0x10
_RETAIN_NOT_SUPPORTED = 0x9A


def _level(msg_id: str) -> str:
    # a message id is one topic level: letters, digits, '-' and '_' as they are, anything else hashed
    if msg_id and name_token(msg_id) == msg_id:
        return msg_id
    return "h" + hashlib.sha256(msg_id.encode()).hexdigest()[:32]


def record_topic(subject: str, msg_id: str) -> str:
    """The topic of the record (retained message) ``msg_id`` stored on ``subject``: a reply
    subject already ends with its call id; other records get the message id as a last level."""

    topic = topic_of(subject)
    return topic if _REPLIES in subject else f"{topic}/{_level(msg_id)}"


def _headers(message: MqttMessage) -> dict[str, str]:
    props = message.properties
    return dict(props.user_properties) if props is not None and props.user_properties else {}


async def _publish(
    client: MQTTClient,
    topic: str,
    payload: bytes,
    properties: PublishProperties | None,
    *,
    retain: bool = False,
    qos: QoS = QoS.AT_LEAST_ONCE,
) -> int:
    """Publish and return the PUBACK's reason code (0 for QoS 0). zmqtt's own ``publish`` drops
    the PUBACK, whose 0x10 tells a stored call from one nobody keeps: its protocol is asked."""
    protocol = client._protocol
    if protocol is None:
        raise NotConnected("not connected to MQTT")
    packet = Publish(topic=topic, payload=payload, qos=qos, retain=retain, dup=False, properties=properties)
    try:
        ack = await protocol.publish(packet)
    except MQTTDisconnectedError:
        raise NotConnected("not connected to MQTT") from None
    except MQTTError as exc:
        if getattr(exc, "reason_code", None) == _RETAIN_NOT_SUPPORTED:
            raise Unsupported("the MQTT broker keeps no retained messages") from None
        raise NotStored(f"the MQTT broker refused the message ({exc})") from None
    except (OSError, ValueError) as exc:
        raise BrokerError(type(exc).__name__) from None
    return 0 if ack is None else int(ack.reason_code)


class _Call:
    """A call delivered to a consumer session (:class:`~protobind.broker.base.StoredMessage`)."""

    __slots__ = ("_consumer", "_message", "attempt", "data", "headers", "msg_id", "sequence", "subject")

    def __init__(self, consumer: _Sessions, message: MqttMessage, sequence: int) -> None:
        self._consumer = consumer
        self._message = message
        self.subject = consumer.subject
        self.data = message.payload
        headers = _headers(message)
        try:
            self.attempt = max(1, int(headers.pop(ATTEMPT, "1")))
        except ValueError:
            self.attempt = 1
        self.headers: dict[str, str] | None = headers or None
        self.msg_id = headers.get(MSG_ID_HEADER, "")
        self.sequence = sequence

    async def ack(self) -> None:
        """PUBACK: the broker forgets the call."""
        self._consumer.settled(self)
        await self._consumer.puback(self._message)

    async def nak(self, delay: float = 0.0) -> None:
        """A copy to the group's retry topic after ``delay`` seconds, then the PUBACK."""
        self._consumer.retry(self, delay)

    async def in_progress(self) -> None:
        """Nothing: MQTT has no acknowledgement timeout to restart."""

    async def term(self) -> None:
        """Never again: an ack."""
        await self.ack()


class _Sessions:
    """One server's durable consumer: a persistent session subscribed to its calls and its retry
    topic, messages handed out as they arrive (at most ``max_ack_pending`` out: the session's
    receive maximum)."""

    def __init__(self, session: Connection, spec: ConsumerSpec, retry_topic: str) -> None:

        self.session = session
        self.subject = spec.filter_subject
        self.ack_wait = spec.ack_wait
        self.retry_topic = retry_topic
        share = f"$share/{spec.name}/"
        self._filters = (share + topic_of(spec.filter_subject), share + retry_topic)
        self._subs: list[MqttSubscription] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._buffer: list[_Call] = []
        self._arrived = asyncio.Event()
        self._sequence = itertools.count(1)
        #: call ids out now -> fresh copies of them held until the call is settled
        self._active: dict[str, list[_Call]] = {}
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._retries: set[asyncio.Task[None]] = set()
        #: set when the consumer closes: delayed retries go out at once
        self._hurry = asyncio.Event()
        self._closed = False

    async def start(self) -> None:
        for topic_filter in self._filters:
            sub = self.session.client.subscribe(
                topic_filter, qos=QoS.AT_LEAST_ONCE, auto_ack=False, receive_buffer_size=0
            )
            try:
                await sub.start()
            except MQTTError as exc:
                raise BrokerError(f"subscribing to {topic_filter} failed: {type(exc).__name__}") from None
            self._subs.append(sub)
            self._pumps.append(asyncio.get_running_loop().create_task(self._pump(sub)))

    async def _pump(self, sub: MqttSubscription) -> None:
        while True:
            try:
                message = await sub.get_message()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client gave up reconnecting, or it was closed
                logger.debug("MQTT durable subscription ended: %r", exc)
                return
            call = _Call(self, message, next(self._sequence))
            if call.msg_id:
                if call.attempt == 1 and call.msg_id in self._seen:
                    await self.puback(message)  # a copy of a call handled here already
                    continue
                held = self._active.get(call.msg_id)
                if held is not None and call.attempt == 1:
                    held.append(call)  # a copy of a call out now: settled with it
                    continue
                self._active.setdefault(call.msg_id, [])
            self._buffer.append(call)
            self._arrived.set()

    async def puback(self, message: MqttMessage) -> None:
        try:
            await message.ack()
        except (MQTTError, OSError) as exc:
            raise NotConnected(f"acknowledging a call: {type(exc).__name__}") from None

    def settled(self, call: _Call) -> None:
        """``call`` is done with (acked, retried or given up): its held copies are acked."""
        if not call.msg_id:
            return
        for copy in self._active.pop(call.msg_id, ()):
            self._spawn(self.puback(copy._message))
        self._seen[call.msg_id] = None
        self._seen.move_to_end(call.msg_id)
        while len(self._seen) > SEEN:
            self._seen.popitem(last=False)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def retry(self, call: _Call, delay: float) -> None:
        self._spawn(self._retry(call, delay))

    async def _retry(self, call: _Call, delay: float) -> None:
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):  # a closing consumer hands it on now
                await asyncio.wait_for(self._hurry.wait(), delay)
        headers = {**(call.headers or {}), ATTEMPT: str(call.attempt + 1)}
        try:
            await _publish(
                self.session.client,
                self.retry_topic,
                call.data,
                PublishProperties(user_properties=tuple(headers.items())),
            )
            call._consumer.settled(call)
            await self.puback(call._message)
        except BrokerError as exc:
            # not acknowledged: the broker delivers the call again when the session reconnects
            logger.warning("retry of durable call %s not sent: %s", call.msg_id, exc)

    async def fetch(self, batch: int, timeout: float) -> list[StoredMessage]:
        if not self._buffer and not self._closed:
            self._arrived.clear()
            timer = asyncio.get_running_loop().call_later(timeout, self._arrived.set)
            try:
                await self._arrived.wait()
            finally:
                timer.cancel()
        # at most ``batch``: the rest wait here (unacknowledged, so still the broker's to redeliver)
        taken: list[StoredMessage] = list(self._buffer[:batch])
        del self._buffer[:batch]
        return taken

    async def close(self) -> None:
        """Stop taking calls; those received and not handed out go back to the group."""
        self._closed = True
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for sub in self._subs:
            await sub.detach()  # the session keeps its subscriptions while the server is away
        taken, self._buffer = self._buffer, []
        for call in taken:
            await call.nak()
        self._hurry.set()  # delayed retries are published now

    async def wait_retries(self) -> None:
        """Let the retries started go out (before the session's connection closes)."""
        if self._retries:
            await asyncio.wait(list(self._retries), timeout=2.0)


class _Record:
    """A retained record read from its topic (a reply or a dead letter)."""

    __slots__ = ("_store", "attempt", "data", "headers", "sequence", "subject", "topic")

    def __init__(self, store: MqttStore, message: MqttMessage, sequence: int) -> None:

        self._store = store
        self.topic = message.topic
        self.subject = subject_of(message.topic)
        headers = _headers(message)
        self.data = b"" if headers.pop(EMPTY_BODY, None) is not None else message.payload
        self.headers: dict[str, str] | None = headers or None
        self.sequence = sequence
        self.attempt = 1

    async def ack(self) -> None:
        """Read: remove the record."""
        await self._store.clear(self.topic)

    async def nak(self, delay: float = 0.0) -> None:
        """Kept: it is there for the next reader."""

    async def in_progress(self) -> None:
        """Nothing to extend."""

    async def term(self) -> None:
        """Remove the record."""
        await self.ack()


class _Records:
    """A reader of the records under a filter, on a connection of its own (zmqtt subscribes a
    filter once per connection): the retained ones at once, new ones as they are stored."""

    def __init__(self, store: MqttStore, connection: Connection, topic_filter: str) -> None:
        self._store = store
        self._connection = connection
        self._filter = topic_filter
        self._buffer: list[_Record] = []
        self._arrived = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self.ack_wait = 30.0

    async def start(self) -> None:
        sub = await self._connection._subscribe(self._filter)
        self._pump = asyncio.get_running_loop().create_task(self._read(sub))

    async def _read(self, sub: MqttSubscription) -> None:
        while True:
            try:
                message = await sub.get_message()
            except asyncio.CancelledError:
                raise
            except Exception:
                return
            if message.payload:  # an empty one is a record being removed
                self._buffer.append(_Record(self._store, message, self._store.next_sequence()))
                self._arrived.set()

    async def fetch(self, batch: int, timeout: float) -> list[StoredMessage]:
        if not self._buffer:
            self._arrived.clear()
            timer = asyncio.get_running_loop().call_later(timeout, self._arrived.set)
            try:
                await self._arrived.wait()
            finally:
                timer.cancel()
        taken: list[StoredMessage] = list(self._buffer)
        self._buffer.clear()
        return taken

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        await self._connection.close()


class MqttStore:
    """The durable half of :class:`~protobind.mqtt._connection.MqttBroker` (a mixin)."""

    client: MQTTClient
    settings: Any
    _max_payload: int
    _sessions: list[_Sessions] | None = None
    _opened: list[Connection] | None = None
    _reader: Connection | None = None
    _reading: asyncio.Lock | None = None
    _sequences: itertools.count[int] | None = None
    #: sequence numbers of records handed out -> their topics (for :meth:`delete`)
    _record_topics: dict[int, str] | None = None

    def next_sequence(self) -> int:
        """The next local sequence number (a stored message's id when the caller gave none)."""
        if self._sequences is None:
            self._sequences = itertools.count(1)
        return next(self._sequences)

    def _open_another(self, client_id: str | None, persistent: bool) -> Connection:
        """A new connection to the same broker (a new client id when ``None``): the connection
        class mixing this in says how."""
        raise NotImplementedError

    async def _connection(self, client_id: str | None = None, *, persistent: bool = False) -> Connection:
        connection = self._open_another(client_id, persistent)
        try:
            await connection.connect()
        except ConnectionError as exc:
            raise NotConnected(str(exc)) from None
        if self._opened is None:
            self._opened = []
        self._opened.append(connection)
        return connection

    async def ensure_stream(self, spec: StreamSpec) -> str:
        """Nothing to create: calls are kept by the servers' sessions, records are retained."""
        return spec.name

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
        """A QoS 1 publish of a call (kept by the sessions subscribed), or a retained record."""

        user = {**(headers or {}), MSG_ID_HEADER: msg_id}
        call = _CALLS in subject
        if not call and not payload:
            payload, user[EMPTY_BODY] = b"\0", "1"
        size = len(payload) + headers_size(user) + len(subject)
        if size > self._max_payload:
            raise PayloadTooLarge(f"{size} bytes exceed the MQTT message size limit")
        topic = topic_of(subject) if call else record_topic(subject, msg_id)
        properties = PublishProperties(
            user_properties=tuple(user.items()),
            message_expiry_interval=int(ttl) if ttl and not call else None,
        )
        try:
            code = await asyncio.wait_for(
                _publish(self.client, topic, payload, properties, retain=not call), timeout
            )
        except asyncio.TimeoutError:
            raise NotStored(f"no acknowledgement of the store within {timeout:.3g} s") from None
        if call and code == _NO_MATCHING_SUBSCRIBERS:
            raise NoStream(
                f"no server session keeps the calls of {topic}: a server of the method must have "
                "started once (docs/brokers.md, MQTT 5)"
            )
        return StoreAck(stream="", sequence=0)

    async def consumer(self, spec: ConsumerSpec) -> DurableConsumer:
        """A server's persistent session for calls; a reader for records (replies, dead letters)."""

        if _CALLS not in spec.filter_subject:
            topic = topic_of(spec.filter_subject)
            records = _Records(self, await self._connection(), topic if topic.endswith("#") else f"{topic}/+")
            await records.start()
            return records
        settings = self.settings
        parts = ["protobind", spec.name, name_token(settings.engine.prefix.rstrip(".")), settings.replica]
        client_id = "-".join(part for part in parts if part)
        session = await self._connection(client_id, persistent=True)
        retry_topic = topic_of(f"{settings.engine.prefix}$PROTOBIND.RETRY.{spec.name}")
        consumer = _Sessions(session, spec, retry_topic)
        await consumer.start()
        if self._sessions is None:
            self._sessions = []
        self._sessions.append(consumer)
        return consumer

    async def last(self, stream: str, subject: str) -> _Record | None:
        """The record at ``subject``'s topic: subscribed to on a reader connection of this one,
        with a PINGREQ's answer as the end of what the broker sends on subscribing."""

        if self._reading is None:
            self._reading = asyncio.Lock()
        async with self._reading:
            if self._reader is None or not self._reader.is_connected:
                self._reader = await self._connection()
            reader = self._reader
            sub = await reader._subscribe(topic_of(subject))
            found: MqttMessage | None = None
            try:
                await reader.client.ping(timeout=5.0)
                # what came before the PINGRESP is in the subscription's queue (zmqtt's own)
                queue: asyncio.Queue[MqttMessage] = sub._queue
                while not queue.empty():
                    message = queue.get_nowait()
                    if message.payload:
                        found = message
            except MQTTError as exc:
                raise BrokerError(f"reading {subject}: {type(exc).__name__}") from None
            finally:
                with contextlib.suppress(MQTTError, OSError):
                    await sub.stop()
        if found is None:
            return None
        record = _Record(self, found, self.next_sequence())
        if self._record_topics is None:
            self._record_topics = {}
        self._record_topics[record.sequence] = record.topic
        return record

    async def delete(self, stream: str, sequence: int) -> None:
        """Remove a record read with :meth:`last`."""
        topic = (self._record_topics or {}).pop(sequence, None)
        if topic is not None:
            await self.clear(topic)

    async def clear(self, topic: str) -> None:
        """Remove the record at ``topic`` (an empty retained message)."""
        await _publish(self.client, topic, b"", None, retain=True)

    async def close_durable(self) -> None:
        """Close the sessions and readers this connection opened (sessions stay on the broker)."""
        for consumer in self._sessions or ():
            await consumer.wait_retries()
        for connection in self._opened or ():
            await connection.close()
        self._sessions, self._opened, self._reader = None, None, None
