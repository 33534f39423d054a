"""The broker interface the request-reply engine runs on, and the engine's settings.

A broker moves messages (a subject, an optional reply address, headers, a body) between
connections: publish, subscribe (optionally in a queue group, where each message goes to one
member), and a private reply inbox. That is all the engine in :mod:`protobind.broker` needs for
unary calls, the three streaming kinds, cancellation, deadlines and discovery. NATS implements
it in :mod:`protobind.nats.connection`; :mod:`protobind.broker.memory` implements it in-process.

Correlation is the inbox's business, not the engine's: the engine asks an :class:`Inbox` for the
reply address of a token and is handed ``(token, message)`` for every reply. NATS builds the
address from the subject (``_INBOX.<random>.<token>``); a broker with a fixed reply topic would
carry the token in a header or a message field instead.

Two rules the engine relies on:

- A request published with a reply address to a subject nobody subscribes to is answered at once
  on that address with a message whose headers hold ``Status: 503`` and whose body is empty
  (NATS's "no responders"). A broker that cannot tell says nothing, and calls end at their deadline.
- Publishing raises :class:`BrokerError` (or a subclass), never the broker library's own errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..codec import Codec

__all__ = [
    "NO_RESPONDERS_STATUS",
    "Broker",
    "BrokerError",
    "BrokerMessage",
    "EngineSettings",
    "Inbound",
    "Inbox",
    "NotConnected",
    "PayloadTooLarge",
    "Subscription",
]

#: Value of the ``Status`` header of a "no responders" answer (see the module docstring).
NO_RESPONDERS_STATUS = "503"


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


class Inbound(Subscription, Protocol):
    """A subscription whose messages the engine takes itself from ``queue`` (so that several
    consumers serve one subscription without a task per message). After taking a message the
    engine calls ``taken(message)`` (a broker may keep byte counts for slow-consumer limits)."""

    @property
    def queue(self) -> asyncio.Queue[BrokerMessage]:
        """Messages received and not yet taken."""
        ...

    def taken(self, message: BrokerMessage) -> None:
        """Bookkeeping after the engine took ``message`` off ``queue``."""
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
    """One connection to a message broker."""

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

    async def flush(self) -> None:
        """Return once every message published so far has left this process: handed to the
        broker's connection (written to its socket), not waiting in a client-side buffer."""
        ...

    async def subscribe(self, subject: str, callback: Callback, queue: str = "") -> Subscription:
        """Call ``callback`` for each message on ``subject`` (``*`` matches one token, ``>`` the
        rest); with ``queue``, each message goes to one member of that queue group."""
        ...

    async def pull(self, subject: str, queue: str = "") -> Inbound:
        """Like :meth:`subscribe`, but the engine takes the messages from a queue itself."""
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

    def codec(self) -> Codec:
        """The codec named by ``codec_name``."""
        from ..codec import codec_named

        return codec_named(self.codec_name)
