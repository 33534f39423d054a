"""The in-memory broker itself: :class:`MemoryBroker`, a connection to a hub of this process.

Each ``memory://NAME`` is one hub: its subscriptions and its stored-message streams
(:mod:`.stored`). Messages are delivered in order per subscription; a queue group hands each
message to one of its members at random; a request nobody subscribes to is answered with the
no-responders status, as NATS does.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..broker._subjects import matches, tokens
from ..broker.base import (
    MSG_ID_HEADER,
    NO_RESPONDERS_STATUS,
    BrokerMessage,
    Callback,
    ConsumerSpec,
    DurableBroker,
    InboxCallback,
    Mailbox,
    NotConnected,
    PayloadTooLarge,
    StoreAck,
    StreamSpec,
)
from ._stored import PullHandle, StoredCopy, StoredStreams

if TYPE_CHECKING:
    from ..broker._bindings import Bindings

__all__ = ["DEFAULT_MAX_PAYLOAD", "MemoryBroker", "MemoryMessage", "open_broker"]

DEFAULT_MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemoryMessage:
    """One message as subscribers receive it."""

    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None


class _Subscriber:
    """One subscription: a mailbox drained by a delivery task (callback) or by the engine (pull)."""

    def __init__(self, hub: _Hub, subject: str, queue: str, callback: Callback | None) -> None:
        self.hub = hub
        self.pattern = tokens(subject)
        self.group = queue
        self.mailbox = Mailbox()
        self.loop = asyncio.get_running_loop()
        self.active = True
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
            except Exception:  # a subscriber's failure must not stop delivery, as in nats-py
                import logging

                logging.getLogger("protobind.broker").exception("memory broker callback failed")

    def taken(self, message: BrokerMessage) -> None:
        """Nothing to count: the mailbox is this broker's own."""

    def done(self, message: BrokerMessage) -> None:
        """Nothing to record: a memory broker keeps no consumer positions."""

    async def unsubscribe(self) -> None:
        self.active = False
        self.hub.subscribers.discard(self)
        if self._task is not None:
            self._task.cancel()


class _Hub:
    """The shared state of one ``memory://NAME``: its subscriptions."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.subscribers: set[_Subscriber] = set()
        self.stored = StoredStreams()

    def route(self, message: MemoryMessage) -> int:
        # a subscriber may live on another thread's event loop (a blocking client's, say): its
        # mailbox is then fed through that loop, which also wakes it
        here = asyncio.get_running_loop()

        def put(sub: _Subscriber) -> None:
            if sub.loop is here:
                sub.mailbox.put(message)
            else:
                sub.loop.call_soon_threadsafe(sub.mailbox.put, message)

        split = tokens(message.subject)
        groups: dict[str, list[_Subscriber]] = {}
        delivered = 0
        for sub in list(self.subscribers):
            if sub.active and matches(sub.pattern, split):
                if sub.group:
                    groups.setdefault(sub.group, []).append(sub)
                else:
                    put(sub)
                    delivered += 1
        for members in groups.values():
            put(random.choice(members))
            delivered += 1
        return delivered


_hubs: dict[str, _Hub] = {}


class _Inbox:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def address(self, token: str) -> str:
        return self.prefix + token


class MemoryBroker(DurableBroker):
    """:class:`protobind.broker.base.Broker` over a hub in this process."""

    name = "memory"
    #: documented as NATS: the in-memory broker follows NATS's subjects and rules

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub
        self._subscribers: list[_Subscriber] = []
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self._hub.max_payload

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def on_disconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """An in-process broker is never disconnected."""

    def _check(self, payload: bytes = b"", headers: dict[str, str] | None = None) -> None:
        if self._closed:
            raise NotConnected("the memory broker connection is closed")
        size = len(payload) + sum(len(k) + len(v) + 4 for k, v in (headers or {}).items())
        if size > self._hub.max_payload:
            raise PayloadTooLarge(f"{size} bytes exceed max_payload {self._hub.max_payload}")

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        self._check(payload, headers)
        # a copy of the headers: the receiver must not see the sender's later changes
        message = MemoryMessage(subject, reply, bytes(payload), dict(headers) if headers else None)
        if not self._hub.route(message) and reply:
            self._hub.route(MemoryMessage(reply, "", b"", {"Status": NO_RESPONDERS_STATUS}))

    def _add(self, subject: str, queue: str, callback: Callback | None) -> _Subscriber:
        sub = _Subscriber(self._hub, subject, queue, callback)
        self._hub.subscribers.add(sub)
        self._subscribers.append(sub)
        return sub

    async def subscribe(self, subject: str, callback: Callback, queue: str = "") -> _Subscriber:
        return self._add(subject, queue, callback)

    async def pull(self, subject: str, queue: str = "", subjects: tuple[str, ...] = ()) -> _Subscriber:
        return self._add(subject, queue, None)

    async def inbox(self, callback: InboxCallback) -> _Inbox:
        inbox = _Inbox(f"_INBOX.{secrets.token_hex(16)}.")
        start = len(inbox.prefix)

        async def on_reply(message: BrokerMessage) -> None:
            await callback(message.subject[start:], message)

        self._add(inbox.prefix + "*", "", on_reply)
        return inbox

    def peer_of(self, reply: str) -> str:
        return reply.rpartition(".")[0]

    def asyncapi_bindings(self) -> Bindings:
        """The document's channels are the subjects themselves, as on NATS."""
        from ..broker._bindings import Bindings

        return Bindings()

    # --- durable: see stored ---

    async def ensure_stream(self, spec: StreamSpec) -> str:
        self._check()
        return self._hub.stored.ensure(spec)

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
        self._check(payload, headers)
        ack = self._hub.stored.store(subject, payload, headers, msg_id, ttl)
        if not ack.duplicate:  # a stored message is a message: subscribers of its subject see it
            stored = {**(headers or {}), MSG_ID_HEADER: msg_id}
            self._hub.route(MemoryMessage(subject, "", bytes(payload), stored))
        return ack

    async def consumer(self, spec: ConsumerSpec) -> PullHandle:
        self._check()
        return self._hub.stored.consumer(spec, self._check)

    async def last(self, stream: str, subject: str) -> StoredCopy | None:
        self._check()
        return self._hub.stored.last(stream, subject)

    async def delete(self, stream: str, sequence: int) -> None:
        self._check()
        self._hub.stored.delete(stream, sequence)

    async def settle(self) -> None:
        """Subscriptions take effect at once."""

    async def close(self) -> None:
        self._closed = True
        for sub in self._subscribers:
            await sub.unsubscribe()
        self._subscribers.clear()


def open_broker(url: str, options: Mapping[str, Any]) -> MemoryBroker:
    """A connection to the hub ``memory://NAME`` names (created at its first use)."""
    parts = urlsplit(url)
    name = parts.netloc + parts.path
    if not name:
        raise ValueError(f"a memory broker URL needs a name: memory://NAME, got {url!r}")
    hub = _hubs.get(name)
    if hub is None:
        hub = _hubs[name] = _Hub(int(options.get("max_payload", DEFAULT_MAX_PAYLOAD)))
    return MemoryBroker(hub)
