"""Durable calls, written once against :class:`~protobind.broker.base.DurableBroker`.

A method marked ``(protobind.v1.durable)`` is called by storing the call in a stream; the broker
acknowledges the store before the caller returns. Servers pull the calls from a durable consumer
per (method, group), run the handler and acknowledge the message after it succeeded. A handler
error is retried with backoff; a call that cannot succeed (an error code in :data:`FINAL`, or
attempts exhausted) goes to the dead letter with its error in headers, and is acknowledged. A
request/response method also stores its reply, in a reply stream addressed to the caller's group
and keyed by call id, so a caller that restarted still finds it.

Subjects (``{prefix}`` is the binding's subject prefix, ``{service}`` a service's full name):

- calls: ``{prefix}$PROTOBIND.DURABLE.{service}.{Method}``
- dead letters: ``{prefix}$PROTOBIND.DEAD.{service}.{Method}`` (or the method's
  ``dead_letter_subject``)
- replies: ``{prefix}$PROTOBIND.REPLY.{group}.{call id}``

A server publishes nowhere a call chooses: the reply address a call brings must be the reply
subject of a group (one subject token) and of the call's own id (its stored message id), the
group must be one the call's credentials allow (:func:`protobind.auth.reply_group`), and a call
refused before its handler ran (credentials, reply address, headers, body) goes to the dead letter
and is answered nowhere.

docs/messaging.md ("Durable delivery", "Durable request/response") is the user's description;
NATS JetStream (:mod:`protobind.nats.jetstream`) and the in-memory broker implement the interface.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..aio import loop_time
from ..auth import CREDENTIAL_HEADERS, reply_group
from ..codec import PROTO, Codec
from ..context import CallInfo, Context, DeliveryInfo
from ..endpoints import Endpoint, invoke_unary
from ..errors import Code, RpcError
from ..metadata import Metadata
from ..method import DeliveryOptions, MethodInfo
from ..options import OptionReader
from .base import (
    MSG_ID_HEADER,
    BrokerError,
    BrokerMessage,
    ConsumerSpec,
    DurableBroker,
    DurableConsumer,
    DurableSettings,
    EngineSettings,
    NoStream,
    NotStored,
    PayloadTooLarge,
    StoredMessage,
    StreamSpec,
    Unsupported,
)
from .refusals import RefusalLog
from .wire import (
    codec_for,
    error_body,
    error_headers,
    header,
    headers_size,
    publish_error,
    put_content_type,
    put_metadata,
    put_response_metadata,
    read_error,
    read_metadata,
    read_request_headers,
    read_response_headers,
    too_large,
)

__all__ = [
    "DURABLE_CLIENT_OPTIONS",
    "DURABLE_SERVER_OPTIONS",
    "FINAL",
    "DurableClient",
    "DurableReply",
    "DurableServer",
    "durable_settings",
]

logger = logging.getLogger("protobind.broker")

RespT = TypeVar("RespT", bound=Message)

#: Error codes a retry cannot fix: a call failing with one goes to the dead letter at once. Every
#: other code (UNKNOWN, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
#: CANCELLED; an exception that is not an RpcError is INTERNAL) is retried with backoff.
FINAL = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.PERMISSION_DENIED,
        Code.FAILED_PRECONDITION,
        Code.OUT_OF_RANGE,
        Code.UNIMPLEMENTED,
        Code.DATA_LOSS,
        Code.UNAUTHENTICATED,
    }
)

#: Request header: where the reply of a durable request/response call is to be stored.
REPLY_TO = "Protobind-Reply-To"
#: Reply header: the method (``package.Service/Method``) a stored reply answers.
METHOD = "Protobind-Method"
#: Dead-letter headers: deliveries made, and the subject the call was stored on.
ATTEMPTS = "Protobind-Attempts"
SUBJECT = "Protobind-Subject"

_ROOT = "$PROTOBIND"
#: Seconds a consumer waits for messages per pull; a stopping server waits for none of it.
_PULL_WAIT = 1.0
_MAX_BATCH = 256
#: Storing a call: seconds one attempt waits for its acknowledgement, and the pauses between
#: attempts (doubling from the first to the last).
_ATTEMPT_TIMEOUT = 2.0
_FIRST_PAUSE = 0.05
_MAX_PAUSE = 1.0

DURABLE_SERVER_OPTIONS = frozenset(
    {
        "max_deliver",
        "backoff",
        "ack_wait",
        "max_ack_pending",
        "reply_ttl",
        "stream_name",
        "dead_letter_stream",
        "reply_stream",
        "consumer_name",
        "stream_retention",
        "stream_replicas",
        "stream_storage",
        "stream_max_age",
        "stream_max_bytes",
        "store_timeout",
    }
)
DURABLE_CLIENT_OPTIONS = frozenset(
    {
        "ack_wait",
        "max_ack_pending",
        "stream_name",
        "reply_stream",
        "stream_retention",
        "stream_replicas",
        "stream_storage",
        "stream_max_age",
        "stream_max_bytes",
        "reply_group",
        "store_timeout",
    }
)


_CHOICES = {"stream_retention": ("limits", "interest", "workqueue"), "stream_storage": ("file", "memory")}


def durable_settings(transport: str, options: Mapping[str, Any]) -> DurableSettings:
    """The durable options of a binding (URL query or Python values); bad values are errors."""
    reader = OptionReader(transport, options)
    values: dict[str, Any] = {}
    for key in ("max_deliver", "max_ack_pending", "stream_replicas"):
        if reader.given(key):
            values[key] = reader.positive_int(key, 1)
    if reader.given("stream_max_bytes"):
        values["stream_max_bytes"] = reader.positive_int("stream_max_bytes", 1)
    for key in ("ack_wait", "reply_ttl", "store_timeout", "stream_max_age"):
        if reader.given(key):
            values[key] = reader.seconds(key, 1.0)
    if reader.given("backoff"):
        try:
            values["backoff"] = tuple(float(word) for word in reader.words("backoff"))
        except ValueError:
            raise reader.error(
                "backoff", f"must be seconds separated by commas, not {options['backoff']!r}"
            ) from None
        if any(not 0 <= delay < math.inf for delay in values["backoff"]):
            raise reader.error("backoff", f"must be seconds of 0 or more, not {options['backoff']!r}")
    for key in ("stream_name", "dead_letter_stream", "reply_stream", "consumer_name", "reply_group"):
        text = reader.text(key)
        if text is not None:
            values[key] = text
    for key, choices in _CHOICES.items():
        text = reader.text(key)
        if text is not None:
            if text.lower() not in choices:
                raise reader.error(key, f"must be one of {', '.join(choices)}, not {text!r}")
            values[key] = text.lower()
    return DurableSettings(**values)


# --- names ---------------------------------------------------------------------------------------

_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_-]")


def name_token(text: str) -> str:
    """``text`` as one subject token and a valid stream/consumer name (``.`` and others -> ``_``)."""
    return _NOT_IN_NAMES.sub("_", text)


def _name(template: str, settings: EngineSettings, **values: str) -> str:
    fields = {"prefix": name_token(settings.prefix.rstrip(".")), "service": "", "method": "", "group": ""}
    fields.update({key: name_token(value) for key, value in values.items()})
    try:
        return name_token(template.format(**fields)).strip("_")
    except (KeyError, IndexError, ValueError):
        raise ValueError(
            f"name template {template!r} may use {{prefix}}, {{service}}, {{method}} and {{group}} only"
        ) from None


def call_subject(prefix: str, method: MethodInfo[Any, Any]) -> str:
    """Where the durable calls of ``method`` are stored."""
    return f"{prefix}{_ROOT}.DURABLE.{method.service}.{method.name}"


def dead_letter_subject(prefix: str, method: MethodInfo[Any, Any], delivery: DeliveryOptions) -> str:
    """Where the calls of ``method`` that failed for good go."""
    return delivery.dead_letter_subject or f"{prefix}{_ROOT}.DEAD.{method.service}.{method.name}"


def reply_subject(prefix: str, group: str, call_id: str) -> str:
    """Where the reply to call ``call_id`` of the caller group ``group`` is stored."""
    return f"{prefix}{_ROOT}.REPLY.{name_token(group)}.{call_id}"


def _is_token(text: str) -> bool:
    return bool(text) and name_token(text) == text


def reply_group_of(prefix: str, reply_to: str, call_id: str) -> str | None:
    """The caller group of the reply address ``reply_to`` when it is the reply subject of a group
    (one token of letters, digits, ``-`` and ``_``) for the call ``call_id``; else ``None``."""
    head, tail = f"{prefix}{_ROOT}.REPLY.", f".{call_id}"
    if not _is_token(call_id) or not reply_to.startswith(head) or not reply_to.endswith(tail):
        return None
    group = reply_to[len(head) : len(reply_to) - len(tail)]
    return group if _is_token(group) else None


def call_stream(settings: EngineSettings, service: str) -> StreamSpec:
    """The stream protobind creates for the durable calls of ``service`` when none stores them."""
    durable = settings.durable
    return StreamSpec(
        name=_name(durable.stream_name, settings, service=settings.prefix + service),
        subjects=(f"{settings.prefix}{_ROOT}.DURABLE.{service}.*",),
        retention=durable.stream_retention,
        replicas=durable.stream_replicas,
        storage=durable.stream_storage,
        max_age=durable.stream_max_age,
        max_bytes=durable.stream_max_bytes,
    )


def dead_letter_stream(settings: EngineSettings, service: str) -> StreamSpec:
    """The stream for the dead letters of ``service``: kept until an operator removes them."""
    durable = settings.durable
    return StreamSpec(
        name=_name(durable.dead_letter_stream, settings, service=settings.prefix + service),
        subjects=(f"{settings.prefix}{_ROOT}.DEAD.{service}.*",),
        replicas=durable.stream_replicas,
        storage=durable.stream_storage,
    )


def reply_stream(settings: EngineSettings) -> StreamSpec:
    """The stream of the replies to durable calls; each reply lives for its method's reply_ttl."""
    durable = settings.durable
    return StreamSpec(
        name=_name(durable.reply_stream, settings),
        subjects=(f"{settings.prefix}{_ROOT}.REPLY.>",),
        replicas=durable.stream_replicas,
        storage=durable.stream_storage,
        allow_ttl=True,
    )


def delivery_of(method: MethodInfo[Any, Any], settings: DurableSettings) -> DeliveryOptions:
    """The contract's delivery options of ``method`` with the deployment's overrides."""
    overrides = {
        key: value
        for key in ("max_deliver", "backoff", "ack_wait", "max_ack_pending", "reply_ttl")
        if (value := getattr(settings, key)) is not None
    }
    return dataclasses.replace(method.delivery, **overrides) if overrides else method.delivery


def _ttl(seconds: float) -> float:
    return float(max(1, math.ceil(seconds)))


def _unavailable(what: str, exc: BrokerError) -> RpcError:
    return RpcError(Code.UNAVAILABLE, f"{what}: {exc}")


def _expire_reply(arrived: asyncio.Future[BrokerMessage]) -> None:
    if not arrived.done():
        arrived.set_exception(RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))


# --- server --------------------------------------------------------------------------------------


class DurableServer:
    """The durable methods of one binding, served from their consumers."""

    def __init__(
        self,
        broker: DurableBroker,
        settings: EngineSettings,
        endpoints: Sequence[Endpoint],
        group_of: Callable[[str], str],
        telemetry: Any = None,
        authorize: Callable[[Metadata, str], RpcError | None] | None = None,
    ) -> None:
        """Serve ``endpoints`` (durable methods); ``group_of(service)`` is the binding's group;
        with ``telemetry`` (a :class:`protobind.Telemetry`) each delivery is a consumer span;
        ``authorize`` (:attr:`protobind.endpoints.EndpointTable.authorize`) admits each call and the
        reply group it names before its handler runs."""
        self.telemetry = telemetry
        self.authorize = authorize
        self.broker = broker
        self.settings = settings
        self._endpoints = endpoints
        self._group_of = group_of
        self.group_of = group_of
        self._workers: list[_Worker] = []
        #: calls sent to the dead letter: counted, and logged at a bounded rate (a sender of bad
        #: calls must not turn the log into a line per call)
        self.dead_letters = RefusalLog(logger, "durable calls of %s go to the dead letter: %s %s")
        #: set whenever a handler ends: workers waiting for a free slot look again
        self.slot_free = asyncio.Event()

    def free_slots(self) -> int:
        """Durable calls this server may still start (``max_concurrency`` across its methods)."""
        return self.settings.max_concurrency - sum(len(worker.running) for worker in self._workers)

    async def start(self) -> None:
        """Create or bind the streams and consumers; calls start flowing to the handlers."""
        settings = self.settings
        streams: dict[str, str] = {}
        try:
            for endpoint in self._endpoints:
                method = endpoint.method
                delivery = delivery_of(method, settings.durable)
                if method.service not in streams:
                    streams[method.service] = await self.broker.ensure_stream(
                        call_stream(settings, method.service)
                    )
                    await self.broker.ensure_stream(dead_letter_stream(settings, method.service))
                group = self._group_of(method.service)
                spec = ConsumerSpec(
                    stream=streams[method.service],
                    name=_name(settings.durable.consumer_name, settings, group=group, method=method.name),
                    filter_subject=call_subject(settings.prefix, method),
                    ack_wait=delivery.ack_wait,
                    max_ack_pending=delivery.max_ack_pending,
                )
                consumer = await self.broker.consumer(spec)
                self._workers.append(_Worker(self, endpoint, consumer, delivery))
        except BrokerError as exc:
            await self.stop(0)
            # the broker's error says what it lacks (NATS: JetStream) and how to turn it on
            raise ConnectionError(f"cannot serve durable methods on {self.broker.name}: {exc}") from None
        for worker in self._workers:
            worker.start()

    async def stop(self, grace: float | None) -> None:
        """Stop pulling, give running handlers ``grace`` seconds, then cancel them (their calls are
        delivered again, to this group's other servers or after a restart)."""
        # first stop pulling: a call given back below must not come back to this server
        for worker in self._workers:
            await worker.stop_pulling()
        running = {task for worker in self._workers for task in worker.running}
        if running and grace:
            await asyncio.wait(running, timeout=grace)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=1.0)
        for worker in self._workers:
            await worker.close()
        self.dead_letters.close()


class _Worker:
    """Pulls one consumer's calls and runs them, at most ``max_ack_pending`` at a time (and no
    more than the server's free slots)."""

    def __init__(
        self, server: DurableServer, endpoint: Endpoint, consumer: DurableConsumer, delivery: DeliveryOptions
    ) -> None:
        self.server = server
        self.broker = server.broker
        self.prefix = server.settings.prefix
        self.store_timeout = server.settings.durable.store_timeout
        # a one-way method's endpoint acknowledges at once and runs the handler in the background;
        # a durable delivery needs the handler's outcome to ack or retry: its direct form
        self.endpoint = endpoint if endpoint.direct is None else Endpoint(endpoint.method, endpoint.direct)
        self.method = endpoint.method
        self.consumer = consumer
        self.delivery = delivery
        self.running: dict[asyncio.Task[None], StoredMessage] = {}
        #: pulled, waiting for one of the server's slots (kept alive like the running ones)
        self.held: collections.deque[StoredMessage] = collections.deque()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pull()), loop.create_task(self._keep_alive())]

    async def stop_pulling(self) -> None:
        """Take no more calls; give back those pulled and not started."""
        self._stopping = True
        self.server.slot_free.set()
        puller = self._tasks[0] if self._tasks else None
        if puller is not None:
            puller.cancel()
            await asyncio.gather(puller, return_exceptions=True)
        with contextlib.suppress(BrokerError):
            await self.consumer.close()
            while self.held:
                await self.held.popleft().nak()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _pull(self) -> None:
        loop = asyncio.get_running_loop()
        server = self.server
        held = self.held
        # the flag as well as the cancellation: Python 3.11 can lose a cancellation that meets a
        # wake-up (asyncio.wait_for), and a lost one must not keep a stopping server pulling
        while not self._stopping:
            free = server.free_slots()
            while held and free > 0:
                message = held.popleft()
                task = loop.create_task(self._serve(message))
                self.running[task] = message
                task.add_done_callback(self._done)
                free -= 1
            room = min(self.delivery.max_ack_pending - len(self.running) - len(held), free)
            if room <= 0:
                server.slot_free.clear()
                await server.slot_free.wait()
                continue
            try:
                held.extend(await self.consumer.fetch(min(room, _MAX_BATCH), _PULL_WAIT))
            except BrokerError as exc:
                logger.warning("pulling calls of %s failed: %s", self.method.full_name, exc)
                await asyncio.sleep(_PULL_WAIT)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self.server.slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("durable call of %s failed", self.method.full_name, exc_info=task.exception())

    async def _keep_alive(self) -> None:
        # a handler still running is not a lost call: restart its ack_wait well before it ends
        interval = max(self.consumer.ack_wait / 3, 0.01)
        while True:
            await asyncio.sleep(interval)
            for message in [*self.running.values(), *self.held]:
                try:
                    await message.in_progress()
                except BrokerError as exc:
                    logger.debug("in-progress ack not sent: %r", exc)

    async def _serve(self, message: StoredMessage) -> None:
        telemetry = self.server.telemetry
        if telemetry is None:
            await self._deliver(message, None)
            return
        # one CONSUMER span per delivery: child of and linked to the producer's span, with the
        # attempt number; the handler's SERVER span is its child (docs/observability.md)
        metadata = read_metadata(message.headers)
        with telemetry.consumer_span(
            message.subject,
            metadata,
            attempt=message.attempt,
            system=self.broker.name,
            consumer_group=self.server.group_of(self.method.service),
            method=self.method,
        ) as span:
            await self._deliver(message, (metadata, span))

    async def _deliver(self, message: StoredMessage, traced: tuple[Metadata, Any] | None) -> None:
        headers = message.headers or {}
        # the stored message's own id: the one the stream de-duplicates on (else its sequence)
        call_id = headers.get(MSG_ID_HEADER) or str(message.sequence)
        attempt = message.attempt
        max_attempts = self.delivery.max_deliver
        try:
            codec, _, metadata = read_request_headers(headers)
            if traced is not None:
                metadata = traced[0]  # with the consumer span's trace context
            metadata = metadata or Metadata()
            reply_to = self._admit(headers, metadata, call_id)
            request = codec.decode(message.data, self.method.input_type)
        except RpcError as error:
            # refused before the handler: to the dead letter, answered nowhere (whatever address
            # the call named, and whoever sent it)
            await self._failed(message, call_id, error, traced, PROTO, None, None)
            return
        context: Context | None = None
        try:
            if attempt > max_attempts:
                # the earlier attempts ended without an answer: the handler crashed or hung
                raise RpcError(Code.ABORTED, f"no attempt of {max_attempts} finished")
            context = Context(
                self.method,
                self.broker.name,
                metadata=metadata,
                delivery=DeliveryInfo(call_id, attempt, max_attempts),
            )
            response = await invoke_unary(self.endpoint, request, context)
            if reply_to:
                out: dict[str, str] = {METHOD: self.method.full_name}
                put_content_type(out, codec)
                put_response_metadata(out, context)
                await self._store_reply(reply_to, codec.encode(response), out, call_id)
        except RpcError as error:
            await self._failed(message, call_id, error, traced, codec, context, reply_to)
            return
        except asyncio.CancelledError:
            # the server stops: the call goes at once to another server of the group
            with contextlib.suppress(BrokerError):
                await message.nak()
            raise
        await self._settle(message.ack(), "ack")

    def _admit(self, headers: Mapping[str, str], metadata: Metadata, call_id: str) -> str | None:
        """Where the call's reply goes (``None``: nowhere), once its credentials allow the method
        and the reply group; raises the refusal."""
        authorize = self.server.authorize
        if authorize is not None and (denied := authorize(metadata, self.method.full_name)) is not None:
            raise denied
        reply_to = header(headers, REPLY_TO)
        if self.method.oneway or not reply_to:
            return None
        group = reply_group_of(self.prefix, reply_to, call_id)
        if group is None:
            raise RpcError(
                Code.INVALID_ARGUMENT,
                f"{REPLY_TO} must be {self.prefix}{_ROOT}.REPLY.{{group}}.{{call id}} with the call's "
                f"own message id ({MSG_ID_HEADER}) and a group of letters, digits, '-' and '_'",
            )
        if authorize is not None and (denied := authorize(metadata, reply_group(group))) is not None:
            raise denied
        return reply_subject(self.prefix, group, call_id)

    async def _failed(
        self,
        message: StoredMessage,
        call_id: str,
        error: RpcError,
        traced: tuple[Metadata, Any] | None,
        codec: Codec,
        context: Context | None,
        reply_to: str | None,
    ) -> None:
        """A call that failed: retried, or (a final code, its last attempt) dead-lettered."""
        if error.code in FINAL or message.attempt >= self.delivery.max_deliver:
            if traced is not None:
                traced[1].dead_letter(f"{error.code.name}: {error.message}")
            await self._give_up(message, call_id, error, codec, context, reply_to)
        else:
            await self._retry(message, message.attempt)

    async def _settle(self, step: Any, what: str) -> None:
        try:
            await step
        except BrokerError as exc:
            # the broker delivers the call again: at least once, never lost
            logger.warning("%s of a %s call not sent: %s", what, self.method.full_name, exc)

    async def _retry(self, message: StoredMessage, attempt: int) -> None:
        backoff = self.delivery.backoff
        delay = backoff[min(attempt, len(backoff)) - 1] if backoff else 0.0
        await self._settle(message.nak(delay), "nak")

    async def _store_reply(self, subject: str, body: bytes, headers: dict[str, str], call_id: str) -> None:
        try:
            await self.broker.store(
                subject,
                body,
                headers,
                call_id,
                timeout=self.store_timeout,
                ttl=_ttl(self.delivery.reply_ttl),
            )
        except BrokerError as exc:
            raise _unavailable("the reply could not be stored", exc) from None

    async def _give_up(
        self,
        message: StoredMessage,
        call_id: str,
        error: RpcError,
        codec: Codec,
        context: Context | None,
        reply_to: str | None,
    ) -> None:
        """Dead-letter the call with its error, answer its caller, then acknowledge it."""
        self.server.dead_letters.refused(
            self.method.full_name,
            error.code.name,
            f"(call {call_id}, attempt {message.attempt}): {error.message}",
        )
        # the call as it came, for an operator to replay, but no broker bookkeeping and no
        # credentials: a dead letter is read by operators, not by the caller
        dead = {
            k: v
            for k, v in (message.headers or {}).items()
            if not k.lower().startswith("nats-") and k.lower() not in CREDENTIAL_HEADERS
        }
        dead.update(error_headers(error, PROTO))
        dead[ATTEMPTS] = str(message.attempt)
        dead[SUBJECT] = message.subject
        subject = dead_letter_subject(self.prefix, self.method, self.delivery)
        try:
            await self.broker.store(subject, message.data, dead, call_id, timeout=self.store_timeout)
        except BrokerError as exc:
            logger.error("dead letter of %s call %s not stored: %s", self.method.full_name, call_id, exc)
            await self._retry(message, message.attempt)
            return
        if reply_to:
            out = error_headers(error, codec)
            out[METHOD] = self.method.full_name
            if context is not None:
                with contextlib.suppress(RpcError):
                    put_response_metadata(out, context)
            try:
                await self._store_reply(reply_to, error_body(error, codec), out, call_id)
            except RpcError as exc:
                logger.warning("error reply of %s call %s lost: %s", self.method.full_name, call_id, exc)
        await self._settle(message.ack(), "ack")


# --- client --------------------------------------------------------------------------------------


class DurableReply:
    """A stored reply to a durable request/response call, as a caller reads it."""

    def __init__(self, message: StoredMessage | BrokerMessage, call_id: str) -> None:
        self.call_id = call_id
        self._message = message
        headers = message.headers or {}
        #: ``package.Service/Method`` of the call
        self.method: str = header(headers, METHOD) or ""
        #: the call's error, or ``None`` when the handler succeeded
        self.error: RpcError | None = read_error(headers, message.data)
        self.headers, self.trailers = read_response_headers(headers)
        self._acked = False

    def response_as(self, method: MethodInfo[Any, RespT]) -> RespT:
        """The response, decoded as ``method``'s output type; raises the call's error."""
        if self.error is not None:
            raise self.error
        try:
            return codec_for(self._message.headers).decode(self._message.data, method.output_type)
        except RpcError as exc:
            raise RpcError(Code.INTERNAL, f"invalid reply: {exc.message}") from None

    @property
    def response(self) -> Message | None:
        """The response (its type found from the method's name among the loaded protobuf
        modules), or ``None`` when the call failed (see :attr:`error`)."""
        if self.error is not None:
            return None
        from google.protobuf import descriptor_pool, message_factory

        service, _, name = self.method.partition("/")
        try:
            descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
        except KeyError:
            raise RpcError(Code.INTERNAL, f"reply of unknown method {self.method!r}") from None
        output = message_factory.GetMessageClass(descriptor.output_type)
        return codec_for(self._message.headers).decode(self._message.data, output)

    async def ack(self) -> None:
        """Done with this reply: the group will not receive it again."""
        if not self._acked and hasattr(self._message, "ack"):
            self._acked = True
            with contextlib.suppress(BrokerError):
                await self._message.ack()

    def __repr__(self) -> str:
        status = "ok" if self.error is None else self.error.code.name
        return f"DurableReply(call_id={self.call_id!r}, method={self.method!r}, {status})"


class DurableClient:
    """The caller's side of durable calls on one broker connection."""

    def __init__(self, broker: DurableBroker, settings: EngineSettings, codec: Codec) -> None:
        self.broker = broker
        self.settings = settings
        self._codec = codec
        self._streams: dict[str, str] = {}

    async def _stream(self, service: str | None) -> str:
        """The stream of ``service``'s calls (``None``: of the replies), found or made once."""
        key = service or ""
        name = self._streams.get(key)
        if name is None:
            settings = self.settings
            spec = reply_stream(settings) if service is None else call_stream(settings, service)
            name = self._streams[key] = await self.broker.ensure_stream(spec)
        return name

    async def submit(
        self,
        method: MethodInfo[Any, Any],
        request: Message,
        call: CallInfo,
        *,
        call_id: str | None = None,
        group: str | None = None,
    ) -> str:
        """Store one call and return its id once the broker acknowledged it. A request/response
        method's reply will be stored for ``group`` (default: the ``reply_group`` option).

        A store that fails (no acknowledgement, a stream leader being elected) is tried again with
        the same message id, so it is stored once, for up to ``store_timeout`` seconds or until
        the call's deadline."""
        settings = self.settings
        if call_id is None:
            call_id = os.urandom(16).hex()
        elif not _is_token(call_id):
            raise ValueError(f"a call id is letters, digits, '-' and '_' only, got {call_id!r}")
        headers: dict[str, str] = {}
        put_content_type(headers, self._codec)
        metadata = call.outgoing_metadata
        if metadata is not None:
            try:
                put_metadata(headers, metadata)
            except RpcError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, exc.message) from None
        if not method.oneway:
            headers[REPLY_TO] = reply_subject(settings.prefix, group or settings.durable.reply_group, call_id)
        data = self._codec.encode(request)
        size = len(data) + headers_size(headers) + 64  # + the message id header
        if size > self.broker.max_payload:
            raise too_large(size, self.broker.max_payload)
        subject = call_subject(settings.prefix, method)
        give_up = time.monotonic() + settings.durable.store_timeout
        if call.deadline is not None:
            give_up = min(give_up, call.deadline)
        pause = _FIRST_PAUSE
        error: BrokerError = NotStored("no time was left to store it")
        while True:
            try:
                if not method.oneway:
                    await self._stream(None)
                await self._stream(method.service)
                timeout = min(give_up - time.monotonic(), _ATTEMPT_TIMEOUT)
                if timeout > 0:
                    await self.broker.store(subject, data, headers, call_id, timeout=timeout)
                    return call_id
            except (PayloadTooLarge, Unsupported) as exc:
                raise publish_error(exc) from None
            except BrokerError as exc:
                # the ack may just be lost: the same message id is stored once however often we ask
                if isinstance(exc, NoStream):  # deleted since we looked? look again
                    self._streams.pop(method.service, None)
                error = exc
            now = time.monotonic()
            if now >= give_up:
                if call.deadline is not None and now >= call.deadline:
                    raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded before the call was stored")
                raise _unavailable(f"{method.full_name} call not stored", error) from None
            await asyncio.sleep(min(pause, give_up - now))
            pause = min(pause * 2, _MAX_PAUSE)

    async def unary(self, request: Message, call: CallInfo) -> Message:
        """A durable call made through a generated client: a one-way method returns once the call
        is stored; a request/response method waits for its stored reply."""
        method = call.method
        assert method is not None
        call_id = await self.submit(method, request, call)
        if method.oneway:
            empty: Message = method.output_type()
            return empty
        group = self.settings.durable.reply_group
        reply = await self.wait_reply(call_id, group, call.deadline)
        call.headers, call.trailers = reply.headers, reply.trailers
        response: Message = reply.response_as(method)
        return response

    async def wait_reply(self, call_id: str, group: str, deadline: float | None) -> DurableReply:
        """The reply to ``call_id``, waiting for it until ``deadline``; it is removed from the
        reply stream once read."""
        subject = reply_subject(self.settings.prefix, group, call_id)
        arrived: asyncio.Future[BrokerMessage] = asyncio.get_running_loop().create_future()

        async def on_reply(message: BrokerMessage) -> None:
            if not arrived.done():
                arrived.set_result(message)

        broker = self.broker
        try:
            stream = await self._stream(None)
            subscription = await broker.subscribe(subject, on_reply)
            try:
                await broker.settle()
                stored = await broker.last(stream, subject)
                if stored is None:
                    # a timer, not asyncio.wait_for: on Python 3.11 that can swallow a cancellation
                    timer = None
                    if deadline is not None:
                        loop = asyncio.get_running_loop()
                        timer = loop.call_at(loop_time(loop, deadline), _expire_reply, arrived)
                    try:
                        await asyncio.shield(arrived)
                    finally:
                        if timer is not None:
                            timer.cancel()
                    stored = await broker.last(stream, subject)
            finally:
                with contextlib.suppress(BrokerError):
                    await subscription.unsubscribe()
            if stored is not None:
                await broker.delete(stream, stored.sequence)
                return DurableReply(stored, call_id)
            return DurableReply(arrived.result(), call_id)
        except BrokerError as exc:
            raise _unavailable("reading the reply failed", exc) from None

    async def replies(self, group: str, batch: int = 64) -> AsyncIterator[DurableReply]:
        """Every reply stored for ``group``, from the group's durable consumer. A reply is
        acknowledged when the next one is asked for (or by :meth:`DurableReply.ack`); one not
        acknowledged within ack_wait is delivered again."""
        settings = self.settings
        token = name_token(group)
        try:
            spec = ConsumerSpec(
                stream=await self._stream(None),
                name=_name(settings.durable.consumer_name, settings, group=token, method="replies"),
                filter_subject=f"{settings.prefix}{_ROOT}.REPLY.{token}.>",
                ack_wait=settings.durable.ack_wait or DeliveryOptions().ack_wait,
                max_ack_pending=settings.durable.max_ack_pending or DeliveryOptions().max_ack_pending,
            )
            consumer = await self.broker.consumer(spec)
        except BrokerError as exc:
            raise _unavailable("cannot read the replies", exc) from None
        try:
            while True:
                try:
                    messages = await consumer.fetch(batch, _PULL_WAIT)
                except BrokerError as exc:
                    logger.warning("pulling replies failed: %s", exc)
                    await asyncio.sleep(_PULL_WAIT)
                    continue
                for message in messages:
                    reply = DurableReply(message, message.subject.rpartition(".")[2])
                    yield reply
                    await reply.ack()
        finally:
            with contextlib.suppress(BrokerError):
                await consumer.close()
