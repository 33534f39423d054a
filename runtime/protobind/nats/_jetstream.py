"""NATS JetStream as protobind's :class:`~protobind.broker.base.DurableBroker`.

Streams (nats-py's JetStream management API), stores (a publish answered by JetStream's
``PubAck``; ``Nats-Msg-Id`` for de-duplication, ``Nats-TTL`` for per-message time to live,
nats-server 2.11+), durable pull consumers (explicit acks, ``max_deliver`` unlimited because the
engine counts attempts and dead-letters itself) pulled with JetStream's own protocol
(``$JS.API.CONSUMER.MSG.NEXT``), and reading or deleting one stored message. Only this module and
:mod:`.connection` touch nats-py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from nats import errors as nats_errors
from nats.js import api
from nats.js import errors as js_errors

from ..broker._wire import headers_size
from ..broker.base import (
    MSG_ID_HEADER,
    NO_RESPONDERS_STATUS,
    BrokerError,
    ConsumerSpec,
    NoStream,
    NotConnected,
    NotStored,
    PayloadTooLarge,
    StoreAck,
    StreamSpec,
    Unsupported,
)

__all__ = ["JetStream"]


class Connection(Protocol):
    """What this module uses of the nats-py connection (:class:`.connection.Connection`, whose
    module builds on this one): nats-py's own calls and the connection's quick ``send``."""

    @property
    def max_payload(self) -> int: ...

    def new_inbox(self) -> str: ...

    async def subscribe(
        self, subject: str, queue: str = "", cb: Callable[[Any], Awaitable[None]] | None = None
    ) -> Any: ...

    async def publish(
        self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None
    ) -> None: ...

    async def send(
        self, subject: str, payload: bytes, reply: str = "", headers: Mapping[str, str] | None = None
    ) -> None: ...

    def jetstream(self, **options: Any) -> Any: ...


#: Seconds JetStream's API (stream and consumer management) gets to answer.
_API_TIMEOUT = 5.0
#: JetStream API error codes: "stream name already in use with a different configuration" and
#: "subjects overlap with an existing stream" (another process won a race, or an operator's
#: stream stores the subjects under another name).
_NAME_IN_USE = 10058
_OVERLAP = 10065
#: Seconds after its expiry that a pull request whose end JetStream never announced is given up.
_REQUEST_MARGIN = 1.0


def _error(exc: BaseException, what: str) -> BrokerError:
    # nats-py reports "no responders" to a JetStream API request as a 503 without a description;
    # JetStream itself answers 503 with one (no leader yet, for instance): that one may pass
    if isinstance(exc, nats_errors.NoRespondersError) or (
        isinstance(exc, js_errors.ServiceUnavailableError) and exc.description is None
    ):
        return Unsupported(
            f"{what}: JetStream is not enabled on this NATS server: start it with `nats-server -js` "
            "(for development, `protobind nats-server --js`)"
        )
    if isinstance(exc, js_errors.APIError):
        return BrokerError(f"{what}: {exc.description or type(exc).__name__}")
    if isinstance(exc, (nats_errors.ConnectionClosedError, nats_errors.OutboundBufferLimitError)):
        return NotConnected(f"{what}: not connected")
    if isinstance(exc, (asyncio.TimeoutError, nats_errors.TimeoutError)):
        return BrokerError(f"{what}: JetStream did not answer in time")
    return BrokerError(f"{what}: {type(exc).__name__}")


_FAILURES = (nats_errors.Error, asyncio.TimeoutError, OSError)


class _Stored:
    """A JetStream message. Its ack subject (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream
    seq>...``, or with a domain and an account hash after ``ACK`` in the newer form) gives its
    sequence and attempt; acknowledgements are small publishes to it (empty: ack, ``-NAK``,
    ``+WPI``, ``+TERM``), sent the quick way."""

    __slots__ = ("_client", "_reply", "attempt", "data", "headers", "sequence", "subject")

    def __init__(self, msg: Any, client: Connection) -> None:
        self._client = client
        self.subject: str = msg.subject
        self.data: bytes = msg.data
        self.headers: dict[str, str] | None = msg.headers
        reply: str = msg.reply
        self._reply = reply
        tokens = reply.split(".")
        first = 4 if len(tokens) == 9 else 6  # the older 9-token form has no domain, no hash
        self.attempt = int(tokens[first])
        self.sequence = int(tokens[first + 1])

    async def _send(self, body: bytes) -> None:
        try:
            await self._client.send(self._reply, body)
        except _FAILURES as exc:
            raise _error(exc, "acknowledging a message") from None

    async def ack(self) -> None:
        """Done: JetStream delivers it no more."""
        await self._send(b"")

    async def nak(self, delay: float = 0.0) -> None:
        """Deliver it again after ``delay`` seconds."""
        await self._send(b'-NAK {"delay": %d}' % int(delay * 1e9) if delay else b"-NAK")

    async def in_progress(self) -> None:
        """Restart its ack wait."""
        await self._send(b"+WPI")

    async def term(self) -> None:
        """Never deliver it again."""
        await self._send(b"+TERM")


class _Copy:
    """A message read from a stream (not delivered by a consumer: nothing to acknowledge)."""

    __slots__ = ("attempt", "data", "headers", "sequence", "subject")

    def __init__(self, raw: Any) -> None:
        self.subject: str = raw.subject
        self.data: bytes = raw.data or b""
        self.headers: dict[str, str] | None = raw.headers
        self.sequence: int = raw.seq
        self.attempt = 0

    async def ack(self) -> None:
        """Nothing to acknowledge."""

    async def nak(self, delay: float = 0.0) -> None:
        """Nothing to acknowledge."""

    async def in_progress(self) -> None:
        """Nothing to acknowledge."""

    async def term(self) -> None:
        """Nothing to acknowledge."""


class _Consumer:
    """A pull consumer that hands out messages as they arrive.

    nats-py's ``fetch(batch)`` waits, once a message came, for the rest of the batch until its
    timeout: an idle consumer would sit on a call for a whole pull interval. Here one pull request
    (``$JS.API.CONSUMER.MSG.NEXT``) at a time is open, for as many messages as the caller can take,
    with a reply subject of its own under one wildcard subscription; messages go to a buffer that
    :meth:`fetch` empties at once, so the messages out (buffered or being handled) never exceed
    what the caller asked for. JetStream ends a request with a status message on its reply subject
    (408 when it expires, 409 when it is cut short); one whose end never came (a lost connection,
    a node gone) is given up after its expiry and a margin. Messages carry their own subject, not
    the request's: they count against the open request.
    """

    def __init__(self, client: Any, stream: str, name: str, ack_wait: float) -> None:
        self._client = client
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
        self.ack_wait = ack_wait
        self._prefix = ""
        self._subscription: Any = None
        self._buffer: list[Any] = []
        self._arrived = asyncio.Event()
        self._requests = 0
        #: the open request: its reply token, the messages it may still bring, when to give it up
        self._open: tuple[str, int, float] | None = None

    async def start(self) -> None:
        self._prefix = self._client.new_inbox() + "."
        self._subscription = await self._client.subscribe(self._prefix + "*", cb=self._on_message)

    async def _on_message(self, msg: Any) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        current = self._open
        if status and not msg.data and msg.subject.startswith(self._prefix):
            # anything but a heartbeat ends the request it answers
            if status != "100" and current is not None and msg.subject[len(self._prefix) :] == current[0]:
                self._open = None
                self._arrived.set()
            return
        self._buffer.append(msg)
        if current is not None:
            self._open = None if current[1] <= 1 else (current[0], current[1] - 1, current[2])
        self._arrived.set()

    def _take(self) -> list[Any]:
        # all of it: what is buffered was asked for, and its ack_wait runs
        taken, self._buffer = self._buffer, []
        return [_Stored(msg, self._client) for msg in taken]

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        if self._buffer:
            return self._take()
        now = time.monotonic()
        if self._open is not None and self._open[2] < now:
            self._open = None
        self._arrived.clear()
        if self._open is None:
            self._requests += 1
            token = str(self._requests)
            self._open = (token, batch, now + timeout + _REQUEST_MARGIN)
            request = json.dumps({"batch": batch, "expires": int(timeout * 1e9)}).encode()
            try:
                await self._client.publish(self._next, request, reply=self._prefix + token)
            except _FAILURES as exc:
                self._open = None
                raise _error(exc, "pulling messages") from None
        if not self._buffer:
            # a timer, not asyncio.wait_for: on Python 3.11 that can swallow a cancellation
            timer = asyncio.get_running_loop().call_later(timeout, self._arrived.set)
            try:
                await self._arrived.wait()
            finally:
                timer.cancel()
        return self._take()

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
                for message in self._take():
                    await message.nak()
            except _FAILURES as exc:
                raise _error(exc, "closing a consumer") from None


class _Acks:
    """Store acknowledgements (``PubAck``) for one connection: every store publishes with a reply
    address under one wildcard subscription (a random token per store) and waits for its answer.
    This is nats-py's request without its per-call costs: headers are written by
    :meth:`Connection.send`, and a store that gets no answer is just left to its timeout."""

    def __init__(self, client: Connection) -> None:
        self._client = client
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._starting: asyncio.Lock | None = None

    async def _start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if not self._prefix:
                prefix = self._client.new_inbox() + "."
                await self._client.subscribe(prefix + "*", cb=self._on_ack)
                self._prefix = prefix

    async def _on_ack(self, msg: Any) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> Any:
        """The answer to a publish of ``payload`` to ``subject``, or ``None`` after ``timeout``."""
        if not self._prefix:
            await self._start()
        token = os.urandom(8).hex()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[token] = future
        timer = loop.call_later(timeout, _give_up, future)
        try:
            await self._client.send(subject, payload, self._prefix + token, headers)
            return await future
        finally:
            timer.cancel()
            self._pending.pop(token, None)


def _give_up(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)


class JetStream:
    """The durable half of :class:`~protobind.nats._connection.NatsBroker` (a mixin)."""

    client: Connection
    _js: Any = None
    _acks: _Acks | None = None

    def _jetstream(self) -> Any:
        if self._js is None:
            self._js = self.client.jetstream(timeout=_API_TIMEOUT)
        return self._js

    async def _stream_storing(self, subject: str) -> str | None:
        try:
            return str(await self._jetstream().find_stream_name_by_subject(subject))
        except js_errors.NotFoundError:
            return None

    async def ensure_stream(self, spec: StreamSpec) -> str:
        """The stream storing ``spec.subjects`` (found by subject), or ``spec`` created."""
        try:
            found = await self._stream_storing(spec.subjects[0])
            if found is not None:
                return found
            config = api.StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=api.RetentionPolicy(spec.retention),
                storage=api.StorageType(spec.storage),
                num_replicas=spec.replicas,
                max_age=spec.max_age or None,
                max_bytes=spec.max_bytes,
                duplicate_window=spec.duplicate_window,
                allow_msg_ttl=spec.allow_ttl or None,
            )
            try:
                await self._jetstream().add_stream(config)
            except js_errors.BadRequestError as exc:
                found = await self._stream_storing(spec.subjects[0])
                if exc.err_code in (_NAME_IN_USE, _OVERLAP) and found is not None:
                    return found
                raise
            return spec.name
        except _FAILURES as exc:
            raise _error(exc, f"stream {spec.name}") from None

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
        """A JetStream publish, waiting for its ``PubAck``."""
        out = {**(headers or {}), MSG_ID_HEADER: msg_id}
        if ttl:
            out["Nats-TTL"] = f"{int(ttl)}s"
        size = len(payload) + headers_size(out)
        if size > self.client.max_payload:
            raise PayloadTooLarge(f"{size} bytes exceed the NATS server's max_payload")
        acks = self._acks
        if acks is None:
            acks = self._acks = _Acks(self.client)
        try:
            reply = await acks.request(subject, payload, out, timeout)
        except _FAILURES as exc:
            raise _error(exc, "storing a message") from None
        if reply is None:
            raise NotStored(f"no acknowledgement of the store within {timeout:.3g} s")
        if not reply.data and reply.headers and reply.headers.get("Status") == NO_RESPONDERS_STATUS:
            raise NoStream(f"no stream stores {subject}")
        try:
            answer = json.loads(reply.data)
        except ValueError:
            raise NotStored(f"not a JetStream acknowledgement: {reply.data[:80]!r}") from None
        if "error" in answer:
            raise NotStored(str(answer["error"].get("description", "the store refused the message")))
        return StoreAck(str(answer["stream"]), int(answer["seq"]), bool(answer.get("duplicate")))

    async def consumer(self, spec: ConsumerSpec) -> _Consumer:
        """Bind the durable pull consumer ``spec.name``, created when missing."""
        manager = self._jetstream()._jsm
        try:
            try:
                info = await manager.consumer_info(spec.stream, spec.name)
            except js_errors.NotFoundError:
                config = api.ConsumerConfig(
                    durable_name=spec.name,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    deliver_policy=api.DeliverPolicy.ALL,
                    ack_wait=spec.ack_wait,
                    max_ack_pending=spec.max_ack_pending,
                    max_deliver=-1,
                    filter_subject=spec.filter_subject,
                )
                info = await manager.add_consumer(spec.stream, config)
            # an existing consumer is used as it is: its own ack_wait decides the in-progress acks
            consumer = _Consumer(
                self.client, spec.stream, spec.name, float(info.config.ack_wait or spec.ack_wait)
            )
            await consumer.start()
        except _FAILURES as exc:
            raise _error(exc, f"consumer {spec.name}") from None
        return consumer

    async def last(self, stream: str, subject: str) -> _Copy | None:
        """The last message on ``subject`` in ``stream`` (JetStream's get-last-by-subject)."""
        try:
            raw = await self._jetstream().get_last_msg(stream, subject)
        except js_errors.NotFoundError:
            return None
        except _FAILURES as exc:
            raise _error(exc, f"reading {subject}") from None
        return _Copy(raw)

    async def delete(self, stream: str, sequence: int) -> None:
        """Delete one message from ``stream``."""
        try:
            await self._jetstream().delete_msg(stream, sequence)
        except js_errors.NotFoundError:
            pass
        except _FAILURES as exc:
            raise _error(exc, f"deleting message {sequence} of {stream}") from None
