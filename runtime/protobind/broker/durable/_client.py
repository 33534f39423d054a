"""The caller's side of durable calls: store a call, read its stored reply.

A method marked ``(protobind.v1.durable)`` is called by storing the call in a stream; the broker
acknowledges the store before the caller returns. A request/response method's reply is stored in
the reply stream, addressed to the caller's group and keyed by call id, so a caller that
restarted still finds it (:meth:`DurableClient.wait_reply`, :meth:`DurableClient.replies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..._aio import loop_time
from ..._context import CallInfo
from ..._errors import Code, RpcError
from ...codec import Codec
from ...method import DeliveryOptions, MethodInfo
from .._wire import (
    codec_for,
    header,
    headers_size,
    publish_error,
    put_content_type,
    put_metadata,
    read_error,
    read_response_headers,
    too_large,
)
from ..base import (
    BrokerError,
    BrokerMessage,
    ConsumerSpec,
    DurableBroker,
    EngineSettings,
    NoStream,
    NotStored,
    PayloadTooLarge,
    StoredMessage,
    Unsupported,
)
from ._names import (
    METHOD,
    REPLY_TO,
    call_stream,
    consumer_name,
    durable_call_subject,
    group_replies_subject,
    is_token,
    reply_stream,
    reply_subject,
)
from ._settings import PULL_WAIT

__all__ = ["DurableClient", "DurableReply"]

logger = logging.getLogger("protobind.broker")

RespT = TypeVar("RespT", bound=Message)

#: Storing a call: seconds one attempt waits for its acknowledgement, and the pauses between
#: attempts (doubling from the first to the last).
_ATTEMPT_TIMEOUT = 2.0
_FIRST_PAUSE = 0.05
_MAX_PAUSE = 1.0


def _unavailable(what: str, exc: BrokerError) -> RpcError:
    return RpcError(Code.UNAVAILABLE, f"{what}: {exc}")


def _expire_reply(arrived: asyncio.Future[BrokerMessage]) -> None:
    if not arrived.done():
        arrived.set_exception(RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))


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
        elif not is_token(call_id):
            raise ValueError(f"a call id is letters, digits, '-' and '_' only, got {call_id!r}")
        reply_to = None
        if not method.oneway:
            reply_to = reply_subject(settings.prefix, group or settings.durable.reply_group, call_id)
        headers = self._headers(call, reply_to)
        data = self._codec.encode(request)
        size = len(data) + headers_size(headers) + 64  # + the message id header
        if size > self.broker.max_payload:
            raise too_large(size, self.broker.max_payload)
        subject = durable_call_subject(settings.prefix, method)
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

    def _headers(self, call: CallInfo, reply_to: str | None) -> dict[str, str]:
        """The headers of a stored call: content type, the caller's metadata, where its reply
        goes (``reply_to``; ``None``: nowhere, a one-way method)."""
        headers: dict[str, str] = {}
        put_content_type(headers, self._codec)
        metadata = call.outgoing_metadata
        if metadata is not None:
            try:
                put_metadata(headers, metadata)
            except RpcError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, exc.message) from None
        if reply_to is not None:
            headers[REPLY_TO] = reply_to
        return headers

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
        try:
            spec = ConsumerSpec(
                stream=await self._stream(None),
                name=consumer_name(settings, group, "replies"),
                filter_subject=group_replies_subject(settings.prefix, group),
                ack_wait=settings.durable.ack_wait or DeliveryOptions().ack_wait,
                max_ack_pending=settings.durable.max_ack_pending or DeliveryOptions().max_ack_pending,
            )
            consumer = await self.broker.consumer(spec)
        except BrokerError as exc:
            raise _unavailable("cannot read the replies", exc) from None
        try:
            while True:
                try:
                    messages = await consumer.fetch(batch, PULL_WAIT)
                except BrokerError as exc:
                    logger.warning("pulling replies failed: %s", exc)
                    await asyncio.sleep(PULL_WAIT)
                    continue
                for message in messages:
                    reply = DurableReply(message, message.subject.rpartition(".")[2])
                    yield reply
                    await reply.ack()
        finally:
            with contextlib.suppress(BrokerError):
                await consumer.close()
