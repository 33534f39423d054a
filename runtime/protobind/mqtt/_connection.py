"""The broker engine on an MQTT 5 connection (zmqtt): the only code that touches the MQTT library.

The engine speaks in NATS-like subjects; MQTT has topics. One mapping, both ways
(:func:`topic_of`, :func:`subject_of`), documented in docs/protocols.md ("MQTT 5"):

- ``.`` separates levels: ``greeter.v1.Greeter.SayHello`` is ``greeter/v1/Greeter/SayHello``;
- the wildcards ``*`` (one level) and ``>`` (the rest) are MQTT's ``+`` and ``#``;
- the engine's own levels ``$SRV`` and ``$PROTOBIND`` are ``_SRV`` and ``_PROTOBIND``
  (``$SRV.INFO`` is ``_SRV/INFO``): MQTT keeps topics starting with ``$`` for the broker, which
  neither shares them nor matches them with wildcards;
- a queue group is a shared subscription, ``$share/{group}/{topic}``.

Headers are MQTT 5 user properties. Request/reply is MQTT 5's own: a request names a response
topic and carries correlation data, and the answer goes to that topic with the same correlation
data. Each connection has one inbox topic, ``_INBOX/{client id}`` (the client id is random unless
configured), and the engine's per-call token is the correlation data, so any number of calls share
one subscription. To the engine a reply address is ``{response topic}#{correlation data}`` (``#``
cannot occur in a topic name); a stream frame, which goes to the peer's address and names its own,
carries its own correlation data in the user property ``Protobind-Reply-Correlation``.

MQTT has no "no responders": a request to a topic nobody subscribes to is dropped by the broker
without a word, and the call ends at its deadline (or when its liveness probes go unanswered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from zmqtt import Message as MqttMessage
from zmqtt import (
    MQTTClient,
    MQTTConnectError,
    MQTTDisconnectedError,
    MQTTError,
    PublishProperties,
    QoS,
    ReconnectConfig,
)

from ..broker._bindings import MQTT_BINDING_VERSION, Bindings, host_of
from ..broker.base import (
    BrokerError,
    BrokerMessage,
    Callback,
    DurableBroker,
    InboxCallback,
    Mailbox,
    NotConnected,
)
from ..urls import redact_text
from ._durable import MqttStore
from ._options import MAX_WAITING_BYTES
from ._topics import subject_of, topic_of

if TYPE_CHECKING:
    from zmqtt import Subscription as MqttSubscription

    from ._options import Settings

__all__ = [
    "REPLY_CORRELATION",
    "AuthenticationFailed",
    "MqttBroker",
    "Received",
    "open_broker",
    "subject_of",
    "topic_of",
]

logger = logging.getLogger("protobind.mqtt")

#: User property of a message that goes to a reply address and names its own reply address: the
#: correlation data of that reply address (the message's correlation data is its recipient's).
REPLY_CORRELATION = "Protobind-Reply-Correlation"
#: Largest packet MQTT can carry (its remaining-length field's limit).
MQTT_MAX_PACKET = 268_435_455
#: Room for the fixed header, topic and properties of a PUBLISH, counted against the packet limit.
_ENVELOPE = 1024
_INBOX = "_INBOX/"
_SHARE = "$share/"


def _latin1(data: bytes | None) -> str:
    return data.decode("latin-1") if data else ""


class Received:
    """A message as the engine reads it (:class:`protobind.broker.base.BrokerMessage`)."""

    __slots__ = ("data", "headers", "message", "reply", "subject")

    def __init__(self, message: MqttMessage) -> None:
        self.message = message
        self.subject = subject_of(message.topic)
        self.data = message.payload
        props = message.properties
        self.headers: dict[str, str] | None = None
        self.reply = ""
        if props is not None:
            if props.user_properties:
                self.headers = dict(props.user_properties)
            if props.response_topic:
                corr = _latin1(props.correlation_data)
                if self.headers is not None and REPLY_CORRELATION in self.headers:
                    corr = self.headers.pop(REPLY_CORRELATION)
                self.reply = f"{props.response_topic}#{corr}" if corr else props.response_topic


def _properties(
    target_correlation: bytes | None, reply: str, headers: dict[str, str] | None
) -> PublishProperties:
    pairs: list[tuple[str, str]] = list(headers.items()) if headers else []
    correlation = target_correlation
    response_topic = None
    if reply:
        response_topic, _, reply_corr = reply.partition("#")
        if reply_corr:
            if correlation is None:
                correlation = reply_corr.encode("latin-1")
            else:
                pairs.append((REPLY_CORRELATION, reply_corr))
    return PublishProperties(
        response_topic=response_topic or None,
        correlation_data=correlation,
        user_properties=tuple(pairs),
    )


Deliver = Callable[[Received], "Awaitable[None] | None"]


class _Direct:
    """Stands in for a zmqtt subscription's queue (``Subscription._queue``, whose ``put`` zmqtt's
    reader awaits for each message): the message goes to ``deliver`` right there, with no queue
    and no task in between. For deliveries that never wait (a mailbox, a reply inbox): one that
    waited would hold up the connection's reader."""

    __slots__ = ("_deliver",)

    def __init__(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def put(self, message: MqttMessage) -> None:
        try:
            result = self._deliver(Received(message))
            if result is not None:
                await result
        except Exception:  # a subscriber's failure must not stop the connection's reader
            logger.exception("MQTT subscription callback failed")

    def empty(self) -> bool:
        return True

    def get_nowait(self) -> MqttMessage:
        raise asyncio.QueueEmpty


class _Inbound:
    """A subscription whose messages go to a mailbox (the engine takes them) or to a callback."""

    def __init__(self, mailbox: Mailbox, broker: MqttBroker) -> None:
        self._sub: MqttSubscription | None = None
        self.mailbox = mailbox
        self._broker = broker
        self._task: asyncio.Task[None] | None = None
        #: bytes of the bodies in the mailbox, and the messages dropped over its limits
        self._waiting_bytes = 0
        self.dropped = 0

    def pump(self, deliver: Deliver) -> None:
        """Deliver in a task of its own: for callbacks that may wait (they send answers)."""
        self._task = asyncio.get_running_loop().create_task(self._pump(deliver))

    async def _pump(self, deliver: Deliver) -> None:
        sub = self._sub
        assert sub is not None
        while True:
            try:
                message = await sub.get_message()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client gave up reconnecting, or it was closed
                logger.debug("MQTT subscription ended: %r", exc)
                return
            try:
                result = deliver(Received(message))
                if result is not None:
                    await result
            except Exception:  # a subscriber's failure must not stop delivery
                logger.exception("MQTT subscription callback failed")

    def put(self, message: Received) -> None:
        """Into the mailbox, within the limits of a slow consumer: while ``max_waiting`` messages
        (or MAX_WAITING_BYTES of bodies) wait for busy handlers, a new one is dropped and counted
        (QoS 0: at most once; a caller waits for its deadline). The engine sheds waiting calls
        beyond ``max_pending`` as handlers free up, so this bounds only a flood."""
        size = len(message.data)
        if (
            len(self.mailbox.items) >= self._broker.settings.max_waiting
            or self._waiting_bytes + size > MAX_WAITING_BYTES
        ):
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a log, not a flood
                logger.warning(
                    "slow consumer: %d messages to %s dropped so far (max_waiting %d)",
                    self.dropped,
                    message.subject,
                    self._broker.settings.max_waiting,
                )
            return
        self._waiting_bytes += size
        self.mailbox.put(message)

    def taken(self, message: BrokerMessage) -> None:
        """A consumer took ``message`` from the mailbox."""
        self._waiting_bytes -= len(message.data)

    def done(self, message: BrokerMessage) -> None:
        """MQTT at QoS 0 keeps no record of consumption."""

    async def unsubscribe(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._broker._pumps.discard(self)
        if self._sub is not None:
            with contextlib.suppress(MQTTError, OSError):
                await self._sub.stop()


class _Inbox:
    def __init__(self, topic: str) -> None:
        self.topic = topic

    def address(self, token: str) -> str:
        return f"{self.topic}#{token}"


class AuthenticationFailed(ConnectionError):
    """The MQTT broker refused the credentials (or demanded some that were not given)."""


class _Transport:
    """zmqtt's transport interface on an asyncio stream, reporting a lost connection to its broker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lost: Callable[[], None]):
        self._reader = reader
        self._writer = writer
        self._lost = lost
        self._closed = False

    def _gone(self, text: str) -> MQTTDisconnectedError:
        if not self._closed:
            self._closed = True
            self._lost()
        return MQTTDisconnectedError(text)

    async def read(self, n: int) -> bytes:
        try:
            data = await self._reader.read(max(n, 65536))
        except OSError:
            raise self._gone("connection lost") from None
        if not data:
            raise self._gone("connection closed by the broker")
        return data

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            if self._writer.transport.get_write_buffer_size() > 65536:
                await self._writer.drain()
        except OSError:
            raise self._gone("connection lost") from None

    async def close(self) -> None:
        self._closed = True
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except Exception:
            self._writer.transport.abort()

    def abort(self) -> None:
        """Close the socket now, whatever is still unsent."""
        self._closed = True
        self._writer.transport.abort()

    @property
    def is_connected(self) -> bool:
        return not self._closed


class MqttBroker(MqttStore, DurableBroker):
    """:class:`protobind.broker.base.DurableBroker` on one MQTT 5 connection; durable consumers and
    record readers open connections of their own (:mod:`.durable`)."""

    name = "mqtt"

    def _open_another(self, client_id: str | None, persistent: bool) -> MqttBroker:
        return MqttBroker(self.settings, client_id or new_client_id(), persistent)

    def __init__(self, settings: Settings, client_id: str, persistent: bool = False) -> None:
        """A clean session, or a persistent one (a durable consumer's: the broker keeps its
        subscriptions and the calls queued for it while it is away, ``session_expiry`` seconds)."""
        self.settings = settings
        self.client_id = client_id
        self._disconnect_callbacks: list[Callable[[], Awaitable[None]]] = []
        self._pumps: set[_Inbound] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._transport: _Transport | None = None
        # MQTT's own limit is 256 MiB and a broker may announce a lower one (CONNACK): protobind's
        # max_message_size (default 4 MiB) is the limit of every message either side sends
        self._max_payload = min(MQTT_MAX_PACKET - _ENVELOPE, settings.engine.max_message_size)
        self.client = MQTTClient(
            settings.host,
            settings.port,
            client_id=client_id,
            keepalive=settings.keepalive,
            clean_session=not persistent,
            username=settings.user,
            password=settings.password,
            tls=settings.tls,
            # the first connection is tried once: the caller sees the failure at once
            reconnect=ReconnectConfig(max_attempts=1),
            mqtt_connect_timeout=settings.connect_timeout,
            transport_factory=self._open,
            version="5.0",
            session_expiry_interval=settings.session_expiry if persistent else 0,
            request_problem_information=True,
        )

    async def _open(self, host: str, port: int, tls: ssl.SSLContext | bool | None) -> _Transport:
        context = self.settings.tls
        server_name = (self.settings.tls_server_name or host) if context is not None else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=server_name),
            self.settings.connect_timeout,
        )
        self._transport = _Transport(reader, writer, self._lost)
        return self._transport

    def _lost(self) -> None:
        if self._closing:
            return
        logger.warning("MQTT connection to %s lost", self.settings.shown)
        for callback in self._disconnect_callbacks:
            self._spawn(callback())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def connect(self) -> None:
        """Connect, or raise :class:`ConnectionError` naming the cause (credentials never shown)."""
        shown = self.settings.shown
        budget = 3 * self.settings.connect_timeout + 1.0
        try:
            await asyncio.wait_for(self.client.connect(), budget)
        except MQTTConnectError as exc:
            # 0x86 bad user name or password, 0x87 not authorized (MQTT 5); 4 and 5 in 3.1.1
            if exc.return_code in (0x86, 0x87, 4, 5):
                raise AuthenticationFailed(f"MQTT broker at {shown} refused the credentials") from None
            raise ConnectionError(f"MQTT broker at {shown} refused the connection ({exc})") from None
        except (OSError, asyncio.TimeoutError, MQTTError, ssl.SSLError) as exc:
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else redact_text(str(exc))
            raise ConnectionError(
                f"cannot connect to MQTT at {shown}: {reason or type(exc).__name__}"
            ) from None
        attempts = self.settings.max_reconnect_attempts
        # zmqtt reads its reconnection policy when the connection is lost: from now on, the configured one
        self.client._reconnect = ReconnectConfig(
            initial_delay=self.settings.reconnect_wait,
            max_delay=max(self.settings.reconnect_wait, 5.0),
            max_attempts=None if attempts < 0 else max(1, attempts),
        )
        props = self.client.connection_info.properties
        if props is not None and props.maximum_packet_size:
            self._max_payload = min(self._max_payload, props.maximum_packet_size - _ENVELOPE)

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def is_connected(self) -> bool:
        return self.client._connection_info is not None and not self._closing

    def on_disconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._disconnect_callbacks.append(callback)

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        if "#" in subject:  # a reply address: response topic and correlation data
            topic, _, corr = subject.partition("#")
            correlation: bytes | None = corr.encode("latin-1")
        else:
            topic = topic_of(subject)
            correlation = None
        properties = None
        if reply or headers or correlation:
            properties = _properties(correlation, reply, headers)
        try:
            await self.client.publish(topic, payload, properties=properties)
        except MQTTDisconnectedError:
            raise NotConnected(f"not connected to MQTT at {self.settings.shown}") from None
        except (MQTTError, OSError, ValueError) as exc:
            raise BrokerError(type(exc).__name__) from None

    async def _subscribe(
        self, topic: str, qos: QoS = QoS.AT_MOST_ONCE, direct: Deliver | None = None
    ) -> MqttSubscription:
        """Subscribe to ``topic``; with ``direct``, each message goes to it from zmqtt's reader
        (:class:`_Direct`), else it waits in the subscription's queue for :meth:`get_message`."""
        sub = self.client.subscribe(topic, qos=qos, receive_buffer_size=0)
        if direct is not None:
            sub._queue = _Direct(direct)  # type: ignore[assignment]
        try:
            await sub.start()
        except MQTTDisconnectedError:
            raise NotConnected(f"not connected to MQTT at {self.settings.shown}") from None
        except MQTTError as exc:
            raise BrokerError(f"subscribing to {topic} failed: {type(exc).__name__}") from None
        return sub

    def _filter(self, subject: str, queue: str) -> str:
        topic = topic_of(subject)
        return f"{_SHARE}{queue}/{topic}" if queue else topic

    async def subscribe(self, subject: str, callback: Callback, queue: str = "") -> _Inbound:
        inbound = _Inbound(Mailbox(), self)
        inbound._sub = await self._subscribe(self._filter(subject, queue))
        self._pumps.add(inbound)
        inbound.pump(callback)
        return inbound

    async def pull(self, subject: str, queue: str = "", subjects: tuple[str, ...] = ()) -> _Inbound:
        inbound = _Inbound(Mailbox(), self)
        # straight from zmqtt's reader into the mailbox (put never waits): no task per message
        inbound._sub = await self._subscribe(self._filter(subject, queue), direct=inbound.put)
        self._pumps.add(inbound)
        return inbound

    async def inbox(self, callback: InboxCallback) -> _Inbox:
        # the client id is random (128 bits) unless configured: the topic is not guessable, and a
        # broker ACL such as mosquitto's "pattern read _INBOX/%c" binds it to this connection
        inbox = _Inbox(_INBOX + self.client_id)

        async def on_reply(msg: Received) -> None:
            props = msg.message.properties
            token = _latin1(props.correlation_data) if props is not None else ""
            await callback(token, msg)

        # the engine's inbox callbacks only resolve a future or feed a stream: they never wait, so
        # replies go to them straight from zmqtt's reader
        sub = _Inbound(Mailbox(), self)
        sub._sub = await self._subscribe(inbox.topic, direct=on_reply)
        self._pumps.add(sub)
        return inbox

    def peer_of(self, reply: str) -> str:
        return reply.partition("#")[0]

    def asyncapi_bindings(self) -> MqttBindings:
        """The document's channels are MQTT topics, received at QoS 0 (queue groups: shared subscriptions)."""
        return MqttBindings()

    async def settle(self) -> None:
        """Subscriptions are acknowledged (SUBACK) before :meth:`subscribe` returns."""

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self.close_durable()
        for pump in list(self._pumps):
            if pump._task is not None:
                pump._task.cancel()
        self._pumps.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), 2.0)
        if self._transport is not None:
            # a broker that stopped reading holds DISCONNECT (and the socket) past that wait
            self._transport.abort()
        for task in list(self._background):
            task.cancel()


class MqttBindings(Bindings):
    """The AsyncAPI addressing of the MQTT 5 binding: a channel's address is its topic."""

    protocol = "mqtt"
    kind = "MQTT 5 topics"
    reference = "docs/protocols.md, 'MQTT 5'"
    schemes = ("mqtt", "mqtts")

    def address(self, subject: str) -> str:
        return topic_of(subject)

    def operation(self, queue: str | None, stored: bool = False) -> dict[str, Any] | None:
        # calls and answers go at QoS 0
        return None if queue is None else {"mqtt": {"qos": 0, "bindingVersion": MQTT_BINDING_VERSION}}

    def received(self, queue: str) -> str:
        return f" Received on the shared subscription $share/{queue}/<address>."

    def server(self, url: str) -> dict[str, Any]:
        secure = url.startswith("mqtts:")
        return {
            "host": host_of(url),
            "protocol": "secure-mqtt" if secure else "mqtt",
            "protocolVersion": "5",
            "description": "MQTT 5 over TLS (mqtts://)" if secure else "MQTT 5",
            "bindings": {"mqtt": {"cleanSession": True, "bindingVersion": MQTT_BINDING_VERSION}},
        }


def new_client_id() -> str:
    """A random MQTT client identifier: 128 bits, so inbox topics cannot be guessed."""
    return "protobind-" + os.urandom(16).hex()


async def open_broker(settings: Settings, role: str) -> MqttBroker:
    """Connect to the MQTT broker with ``settings``."""
    broker = MqttBroker(settings, settings.client_id or new_client_id())
    await broker.connect()
    return broker
