"""The broker interface the request-reply engine runs on, and the engine's settings.

A broker moves messages (a subject, an optional reply address, headers, a body) between
connections: publish, subscribe (optionally in a queue group, where each message goes to one
member), and a private reply inbox. That is all the engine in :mod:`protobind.broker` needs for
unary calls, the three streaming kinds, cancellation, deadlines and discovery. NATS implements
it in :mod:`protobind.nats._connection`; :mod:`protobind.memory._connection` implements it in-process.

Correlation is the inbox's business, not the engine's: the engine asks an :class:`Inbox` for the
reply address of a token and is handed ``(token, message)`` for every reply. NATS builds the
address from the subject (``_INBOX.<random>.<token>``); a broker with a fixed reply topic would
carry the token in a header or a message field instead.

Two rules the engine relies on:

- A request published with a reply address to a subject nobody subscribes to is answered at once
  on that address with a message whose headers hold ``Status: 503`` and whose body is empty
  (NATS's "no responders"). A broker that cannot tell says nothing, and calls end at their deadline.
- Publishing raises :class:`BrokerError` (or a subclass), never the broker library's own errors.

Durable calls (``(protobind.v1.durable)``) need a broker that stores messages: a
:class:`DurableBroker` adds streams (stored subjects), publishing with a store acknowledgement and
a message id for de-duplication, and pull consumers whose messages are acknowledged one by one
(ack, nak with a delay, in-progress, term). NATS JetStream implements it in
:mod:`protobind.nats._jetstream`, the in-memory broker in :mod:`protobind.memory._stored`; the engine
that runs durable calls on it is :mod:`protobind.broker.durable`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..codec import Codec

if TYPE_CHECKING:
    from ._bindings import Bindings

__all__ = [
    "MSG_ID_HEADER",
    "NO_RESPONDERS_STATUS",
    "Broker",
    "BrokerError",
    "BrokerMessage",
    "ConsumerSpec",
    "DurableBroker",
    "DurableConsumer",
    "DurableSettings",
    "EngineSettings",
    "Inbound",
    "Inbox",
    "Mailbox",
    "NoStream",
    "NotConnected",
    "NotStored",
    "PayloadTooLarge",
    "StoreAck",
    "StoredMessage",
    "StreamSpec",
    "Subscription",
    "Unsupported",
]

#: Value of the ``Status`` header of a "no responders" answer (see the module docstring).
NO_RESPONDERS_STATUS = "503"
#: Header carrying a stored message's id (JetStream's de-duplication header); a durable broker
#: adds it to what it stores, so consumers read it back.
MSG_ID_HEADER = "Nats-Msg-Id"


class BrokerMessage(Protocol):
    """A received message. ``reply`` is empty when the sender expects no answer."""

    @property
    def subject(self) -> str:
        """The subject the message was published to."""
        ...

    @property
    def reply(self) -> str:
        """Where to answer; empty when nobody waits for an answer."""
        ...

    @property
    def data(self) -> bytes:
        """The body."""
        ...

    @property
    def headers(self) -> dict[str, str] | None:
        """The headers, or ``None`` when the message has none."""
        ...


class Subscription(Protocol):
    """A subscription; messages reach its callback, one at a time, in arrival order."""

    async def unsubscribe(self) -> None:
        """Stop receiving (messages already received may still be delivered)."""
        ...


class Mailbox:
    """Messages received and not yet taken, oldest first: what a broker hands the engine's
    consumers (see :class:`Inbound`).

    Lighter than ``asyncio.Queue``, since every call passes through one: consumers test and pop
    ``items`` (the deque itself) directly, and the only method on the way of a message is
    :meth:`put`. It has no size bound: the broker applies its own slow-consumer limit before
    putting (``len(items)`` is the count waiting).
    """

    __slots__ = ("_waiters", "items")

    def __init__(self) -> None:
        self.items: collections.deque[BrokerMessage] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def put(self, message: BrokerMessage) -> None:
        """Add ``message`` and wake one waiting consumer (call it on the consumers' loop)."""
        self.items.append(message)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def wait(self) -> None:
        """Return once a message is there (another consumer may have taken it by then)."""
        if self.items:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if self.items and waiter.done() and not waiter.cancelled():
                self._wake()  # this consumer was woken but will not take the message: pass it on
            raise


class Inbound(Subscription, Protocol):
    """A subscription whose messages the engine takes itself from ``mailbox`` (so that several
    consumers serve one subscription without a task per message). After taking a message the
    engine calls ``taken(message)`` (a broker may keep byte counts for slow-consumer limits)."""

    @property
    def mailbox(self) -> Mailbox:
        """Messages received and not yet taken."""
        ...

    def taken(self, message: BrokerMessage) -> None:
        """Bookkeeping after the engine took ``message`` off ``queue``."""
        ...

    def done(self, message: BrokerMessage) -> None:
        """The engine finished with ``message`` (handled, answered or refused). A broker that
        records consumption (Kafka commits offsets) may now count it consumed; a message the engine
        took but never calls this for (the server stopped first) is the broker's to deliver again."""
        ...


class Inbox(Protocol):
    """A private reply inbox of one connection: replies to ``address(token)`` reach the inbox's
    callback as ``(token, message)``. Addresses must be unguessable by other connections."""

    def address(self, token: str) -> str:
        """The reply address for a call identified by ``token``."""
        ...


Callback = Callable[[BrokerMessage], Awaitable[None]]
InboxCallback = Callable[[str, BrokerMessage], Awaitable[None]]


class Broker(Protocol):
    """One connection to a message broker.

    A broker may also have ``buffer(subject, payload, reply="", headers=None) -> bool``: publish
    at once, without awaiting, when the connection can take the message now (``True``), else
    ``False`` and nothing sent, and the engine awaits :meth:`publish` (NATS has it: a publish
    that only appends to the connection's send buffer then costs no coroutine).
    """

    #: reported as :attr:`protobind.Context.transport` for calls served over this broker
    name: str

    @property
    def max_payload(self) -> int:
        """Largest message (headers and body) the broker takes."""
        ...

    @property
    def is_connected(self) -> bool:
        """Whether a publish now can reach the broker."""
        ...

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        """Send one message; the caller has checked its size against :attr:`max_payload`."""
        ...

    async def subscribe(self, subject: str, callback: Callback, queue: str = "") -> Subscription:
        """Call ``callback`` for each message on ``subject`` (``*`` matches one token, ``>`` the
        rest); with ``queue``, each message goes to one member of that queue group."""
        ...

    async def pull(self, subject: str, queue: str = "", subjects: tuple[str, ...] = ()) -> Inbound:
        """Like :meth:`subscribe`, but the engine takes the messages from a queue itself.
        ``subjects``: the subjects ``subject``'s wildcards are to cover, for a broker that cannot
        subscribe to a wildcard (Kafka: a topic per subject); the others ignore it."""
        ...

    async def inbox(self, callback: InboxCallback) -> Inbox:
        """Open a private reply inbox (see :class:`Inbox`)."""
        ...

    def on_disconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` whenever the connection is lost (messages may have been lost too)."""
        ...

    def peer_of(self, reply: str) -> str:
        """A short name for the caller behind a reply address (for :attr:`Context.peer`)."""
        ...

    def asyncapi_bindings(self) -> Bindings:
        """How this broker's subjects appear in the AsyncAPI document (NATS: the subjects; MQTT:
        their topics; RabbitMQ: routing keys on its exchange; Kafka: topics) and its AsyncAPI bindings."""
        ...

    async def settle(self) -> None:
        """Return once every subscription made so far receives messages published by others."""
        ...

    async def close(self) -> None:
        """Close the connection; pending publishes are flushed where the broker can."""
        ...


class BrokerError(Exception):
    """The broker refused or could not take a message."""


class PayloadTooLarge(BrokerError):
    """The message exceeds the broker's payload limit."""


class NotConnected(BrokerError):
    """The connection to the broker is closed or lost."""


class NotStored(BrokerError):
    """A durable publish was not acknowledged: the store refused the message, or its
    acknowledgement did not come in time (it may still have been stored: publish again with the
    same message id)."""


class NoStream(NotStored):
    """No stream stores the subject of a durable publish (or, in a cluster, none answers now)."""


class Unsupported(BrokerError):
    """The broker cannot store messages (NATS: JetStream is not enabled)."""


# --- durable delivery -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A stream to create when no stream stores ``subjects`` yet (an existing one is used as it is).

    ``retention`` is ``limits`` (messages stay until the limits remove them), ``interest`` (until
    every consumer acknowledged them) or ``workqueue``; ``max_age`` 0 and ``max_bytes`` -1 mean no
    limit. ``allow_ttl`` lets messages carry their own time to live (:meth:`DurableBroker.store`).
    """

    name: str
    subjects: tuple[str, ...]
    retention: str = "limits"
    replicas: int = 1
    storage: str = "file"
    max_age: float = 0.0
    max_bytes: int = -1
    duplicate_window: float = 120.0
    allow_ttl: bool = False


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer: created when missing, bound when it exists (never deleted).

    Every message is acknowledged explicitly; one not acknowledged within ``ack_wait`` seconds is
    delivered again. At most ``max_ack_pending`` messages are out unacknowledged at a time, across
    every process pulling from the consumer. A new consumer starts at the stream's first message.
    """

    stream: str
    name: str
    filter_subject: str
    ack_wait: float = 30.0
    max_ack_pending: int = 1000


@dataclass(frozen=True, slots=True)
class StoreAck:
    """The broker's acknowledgement of a stored message; ``duplicate`` when its message id had
    been stored already (within the stream's duplicate window) and this copy was dropped."""

    stream: str
    sequence: int
    duplicate: bool = False


class StoredMessage(Protocol):
    """A message pulled from a durable consumer (or read from a stream by subject)."""

    @property
    def subject(self) -> str:
        """The subject it was stored on."""
        ...

    @property
    def data(self) -> bytes:
        """Its body."""
        ...

    @property
    def headers(self) -> dict[str, str] | None:
        """Its headers (the message id among them)."""
        ...

    @property
    def sequence(self) -> int:
        """Its sequence number in the stream."""
        ...

    @property
    def attempt(self) -> int:
        """How many times it has been delivered, this time included (1 on the first delivery)."""
        ...

    async def ack(self) -> None:
        """Done: never deliver it again to this consumer."""
        ...

    async def nak(self, delay: float = 0.0) -> None:
        """Not done: deliver it again after ``delay`` seconds."""
        ...

    async def in_progress(self) -> None:
        """Still working on it: restart its ``ack_wait``."""
        ...

    async def term(self) -> None:
        """Never deliver it again, although it was not done."""
        ...


class DurableConsumer(Protocol):
    """One process's handle on a durable consumer."""

    @property
    def ack_wait(self) -> float:
        """The consumer's ack wait, in seconds (of the existing consumer, when one was bound)."""
        ...

    async def fetch(self, batch: int, timeout: float) -> list[StoredMessage]:
        """Up to ``batch`` messages; waits up to ``timeout`` seconds for the first one, returns an
        empty list when none came. A broker that already received more (asked for by an earlier
        fetch) returns them all: every message delivered is in the caller's hands. Raises
        :class:`BrokerError` when the broker cannot be asked."""
        ...

    async def close(self) -> None:
        """Stop pulling; messages received and not handed out by :meth:`fetch` are given back
        (nak). The consumer and its state stay in the broker."""
        ...


@runtime_checkable
class DurableBroker(Broker, Protocol):
    """A :class:`Broker` that also stores messages (see the module docstring)."""

    async def ensure_stream(self, spec: StreamSpec) -> str:
        """The name of the stream that stores ``spec.subjects``: an existing stream whose subjects
        cover them is used as it is (never changed), otherwise ``spec`` is created. Raises
        :class:`BrokerError` when neither works (no persistence on the broker, overlapping streams)."""
        ...

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
        """Publish to the stream storing ``subject`` and wait up to ``timeout`` seconds for its
        acknowledgement. A message whose ``msg_id`` was stored within the stream's duplicate window
        is stored once. ``ttl``: seconds the message lives (its stream must allow it). Raises
        :class:`NoStream`, :class:`NotStored`, :class:`PayloadTooLarge` or :class:`NotConnected`."""
        ...

    async def consumer(self, spec: ConsumerSpec) -> DurableConsumer:
        """Create or bind the durable consumer ``spec.name`` and pull from it."""
        ...

    async def last(self, stream: str, subject: str) -> StoredMessage | None:
        """The last message stored on ``subject`` in ``stream`` (not consumed; ``attempt`` 0), or
        ``None``."""
        ...

    async def delete(self, stream: str, sequence: int) -> None:
        """Remove one message from ``stream`` (missing already: nothing happens)."""
        ...


@dataclass(frozen=True, slots=True)
class DurableSettings:
    """A binding's options for durable calls (docs/messaging.md, "Durable delivery").

    The delivery fields override the contract's ``(protobind.v1.delivery)`` for every durable
    method of the binding when set; the ``stream_*`` fields shape the streams protobind creates;
    names are templates (``{service}``, ``{method}``, ``{group}``, ``{prefix}``).
    """

    max_deliver: int | None = None
    backoff: tuple[float, ...] | None = None
    ack_wait: float | None = None
    max_ack_pending: int | None = None
    reply_ttl: float | None = None
    stream_name: str = "PROTOBIND_{service}"
    dead_letter_stream: str = "PROTOBIND_DEAD_{service}"
    reply_stream: str = "PROTOBIND_REPLIES_{prefix}"
    consumer_name: str = "{group}_{method}"
    stream_retention: str = "limits"
    stream_replicas: int = 1
    stream_storage: str = "file"
    stream_max_age: float = 0.0  # 0: no limit
    stream_max_bytes: int = -1  # -1: no limit
    reply_group: str = "default"
    store_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What the engine needs from a binding's options (see docs/protocols.md for each)."""

    prefix: str = ""
    queue_group: str = ""
    max_concurrency: int = 1024
    max_pending: int = 8192
    #: largest request body the server accepts (the broker's max_payload bounds it too)
    max_message_size: int = 4 * 1024 * 1024
    window: int = 64
    heartbeat: float = 5.0
    codec_name: str = "proto"
    version: str = ""
    reflection: bool = True  # micro INFO carries the services' descriptors
    durable: DurableSettings = DurableSettings()

    def codec(self) -> Codec:
        """The codec named by ``codec_name``."""
        from ..codec import codec_named

        return codec_named(self.codec_name)
