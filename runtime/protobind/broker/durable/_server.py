"""The server side of durable calls: each durable method's consumer pulled by a worker.

Servers pull the calls from a durable consumer per (method, group), run the handler and
acknowledge the message after it succeeded. A handler error is retried with backoff; a call that
cannot succeed (an error code in :data:`FINAL`, or attempts exhausted) goes to the dead letter with
its error in headers, and is acknowledged. A request/response method also stores its reply, in the
reply stream addressed to the caller's group and keyed by call id.

A server publishes nowhere a call chooses: the reply address a call brings must be the reply
subject of a group (one subject token) and of the call's own id (its stored message id), the
group must be one the call's credentials allow (:func:`protobind.auth.reply_group`), and a call
refused before its handler ran (credentials, reply address, headers, body) goes to the dead letter
and is answered nowhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..._context import Context, DeliveryInfo
from ..._errors import Code, RpcError
from ..._metadata import Metadata
from ...auth import CREDENTIAL_HEADERS, reply_group
from ...codec import PROTO, Codec
from ...endpoints import Endpoint, invoke_unary
from ...method import DeliveryOptions
from .._refusals import RefusalLog
from .._wire import (
    error_body,
    error_headers,
    header,
    put_content_type,
    put_response_metadata,
    read_metadata,
    read_request_headers,
)
from ..base import (
    MSG_ID_HEADER,
    BrokerError,
    ConsumerSpec,
    DurableBroker,
    DurableConsumer,
    EngineSettings,
    StoredMessage,
)
from ._names import (
    ATTEMPTS,
    METHOD,
    REPLY_TO,
    ROOT,
    SUBJECT,
    call_stream,
    consumer_name,
    dead_letter_stream,
    dead_letter_subject,
    durable_call_subject,
    reply_group_of,
    reply_subject,
)
from ._settings import PULL_WAIT, delivery_of

__all__ = ["FINAL", "DurableServer"]

logger = logging.getLogger("protobind.broker")

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

_MAX_BATCH = 256


def _ttl(seconds: float) -> float:
    return float(max(1, math.ceil(seconds)))


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
        #: acknowledgements the broker did not take (its connection lost): the broker delivers
        #: those calls again; counted and logged at a bounded rate, not a line per call
        self.unsettled = RefusalLog(logger, "durable calls of %s: %s not sent: %s")
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
                    name=consumer_name(settings, group, method.name),
                    filter_subject=durable_call_subject(settings.prefix, method),
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
        self.unsettled.close()


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
                held.extend(await self.consumer.fetch(min(room, _MAX_BATCH), PULL_WAIT))
            except BrokerError as exc:
                logger.warning("pulling calls of %s failed: %s", self.method.full_name, exc)
                await asyncio.sleep(PULL_WAIT)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self.server.slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("durable call of %s failed", self.method.full_name, exc_info=task.exception())

    async def _keep_alive(self) -> None:
        # a handler still running is not a lost call: restart its ack_wait well before it ends
        interval = max(self.consumer.ack_wait / 3, 0.01)
        while not self._stopping:  # the flag too: see _pull
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
                f"{REPLY_TO} must be {self.prefix}{ROOT}.REPLY.{{group}}.{{call id}} with the call's "
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
            self.server.unsettled.refused(self.method.full_name, what, str(exc))

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
            raise RpcError(Code.UNAVAILABLE, f"the reply could not be stored: {exc}") from None

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
