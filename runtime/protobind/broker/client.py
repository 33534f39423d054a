"""The client side of the broker engine: calls as messages on a :class:`Broker`.

Every unary reply arrives on one private inbox and is matched to its call by token; streams use
per-call tokens on the same inbox (see :mod:`protobind.broker._stream`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from .._aio import Deadlines, loop_time
from .._context import CallInfo
from .._errors import Code, RpcError
from .._metadata import Metadata
from ..codec import PROTO, Codec, response_codec
from ..method import MethodInfo
from ..reflection import Reflected
from ..transport import ClientTransport
from ._micro import INFO_SUBJECT, asyncapi_subjects, reflected
from ._stream import CANCEL, END, HEADERS, OPEN, Heartbeats, StreamState
from ._wire import (
    CANCEL_SUBJECT,
    FRAME,
    PROBE_SUBJECT,
    TIMEOUT,
    codec_for,
    headers_size,
    method_subject,
    publish_error,
    put_content_type,
    put_metadata,
    read_error,
    read_metadata,
    read_response_headers,
    too_large,
)
from .base import (
    NO_RESPONDERS_STATUS,
    Broker,
    BrokerError,
    BrokerMessage,
    DurableBroker,
    EngineSettings,
    Inbox,
)
from .durable._client import DurableClient

__all__ = [
    "BrokerClient",
    "dial_broker",
]

logger = logging.getLogger("protobind.broker")

#: Size allowance for the headers of a call without metadata (content type, timeout): a few
#: dozen bytes, so counting them exactly is not worth it on every call.
_SMALL_HEADERS = 128
_EMPTY = Empty()
#: Reply tokens of liveness probes start with this (call tokens are hex: never a "p").
_PROBE = "p"
#: Probe intervals without an answer after which a unary call's server is considered gone.
_MISSED_PROBES = 2
#: Discovery replies come from every service instance: gathering stops after this long without one.
_DISCOVERY_QUIET = 0.3


async def _send_cancel(state: StreamState) -> None:
    try:
        await state.control(CANCEL)
    except RpcError as exc:  # the server notices a vanished client by itself
        logger.debug("cancel frame not sent: %s", exc)


def _decode_response(codec: Codec, data: bytes, message_type: type[Message]) -> Message:
    if codec is PROTO:
        try:
            return message_type.FromString(data)
        except Exception:
            pass  # the codec's path below raises the caller's error
    try:
        return response_codec(codec).decode(data, message_type)
    except RpcError as exc:
        # the server sent what the method's response type cannot be: the server's fault, as in gRPC
        raise RpcError(Code.INTERNAL, f"invalid response: {exc.message}") from None


def _end_of_stream(state: StreamState, msg: BrokerMessage, call: CallInfo) -> None:
    """The server's end frame ``msg``: the call's trailers; raises the call's error, if any."""
    call.trailers = read_metadata(msg.headers)
    error = read_error(msg.headers or {}, msg.data) or state.end_count(msg.headers)
    if error is not None:
        raise error


class _Tokens:
    """Call tokens: 32 hex digits of ``os.urandom``, drawn 4 KiB at a time (a system call per 256
    calls instead of one per call). One per client, used on its loop only; a forked child draws
    afresh, so it never repeats its parent's tokens."""

    __slots__ = ("_at", "_forks", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._forks = _forks[0]

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool) or self._forks != _forks[0]:
            self._pool = os.urandom(4096)
            self._forks = _forks[0]
            at = 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


#: How many times this process is a forked child (see _Tokens).
_forks = [0]


def _forked() -> None:
    _forks[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _expire(future: asyncio.Future[BrokerMessage]) -> None:
    if not future.done():
        future.set_exception(RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))


class BrokerClient(ClientTransport):
    """The client side: one broker connection, one private inbox for every reply. It owns the
    connection and closes it on :meth:`close`."""

    def __init__(self, broker: Broker, settings: EngineSettings) -> None:
        self.settings = settings
        self.broker = broker
        # a publish without a coroutine when the connection can take the message now (see Broker)
        self._buffer: Callable[[str, bytes, str, dict[str, str] | None], bool] | None = getattr(
            broker, "buffer", None
        )
        self._inbox: Inbox | None = None
        self._unary: dict[str, asyncio.Future[BrokerMessage]] = {}
        # liveness of long unary calls: when each pending call started
        self._since: dict[str, float] = {}
        self._probes: dict[str, int] = {}  # token -> probes in a row that got no answer
        self._alive: set[str] = set()  # tokens whose last probe was answered
        self._liveness: asyncio.Task[None] | None = None
        self._streams: dict[str, StreamState] = {}
        self._subjects: dict[str, str] = {}
        self._deadlines: Deadlines[asyncio.Future[BrokerMessage]] = Deadlines(_expire)
        self._heartbeats = Heartbeats(settings.heartbeat)
        self._background: set[asyncio.Task[Any]] = set()
        self._codec = settings.codec()
        self._collectors: dict[str, asyncio.Queue[BrokerMessage]] = {}
        self._closed = False
        self._durable: DurableClient | None = None
        self._tokens = _Tokens()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the last unary call

    async def start(self) -> None:
        """Open the reply inbox."""
        broker = self.broker
        broker.on_disconnect(self._on_disconnect)
        try:
            self._inbox = await broker.inbox(self._on_reply)
            await broker.settle()
        except BaseException:
            await broker.close()
            raise

    async def _on_reply(self, token: str, msg: BrokerMessage) -> None:
        if token.startswith(_PROBE):
            self._on_probe_answer(token[len(_PROBE) :], msg)
            return
        future = self._unary.get(token)
        if future is not None:
            if not future.done():
                future.set_result(msg)
            return
        state = self._streams.get(token)
        if state is not None:
            state.feed(msg)
            return
        collector = self._collectors.get(token)
        if collector is not None:
            collector.put_nowait(msg)

    async def _on_disconnect(self) -> None:
        # a reply published while we were away is lost for good: fail those calls now, not never
        self._fail_all(RpcError(Code.UNAVAILABLE, f"lost the connection to {self.broker.name}"))

    def _fail_all(self, error: RpcError) -> None:
        # one exception object per call: each is raised, and given a traceback, in its own task
        for future in list(self._unary.values()):
            if not future.done():
                future.set_exception(RpcError(error.code, error.message))
        for state in list(self._streams.values()):
            state.peer_gone(RpcError(error.code, error.message))

    # --- liveness of long unary calls ---
    #
    # A unary call has no heartbeat of its own: its reply is the only message. When one is still
    # pending after a heartbeat interval, the client asks every replica (PROBE_SUBJECT) whether it
    # holds the call; the one that does answers. Two intervals without an answer mean the server
    # that took the call is gone: the call fails UNAVAILABLE instead of waiting for its deadline.
    # Short calls cost one dict entry and no messages.

    def _watch(self, token: str) -> None:
        self._since[token] = time.monotonic()
        if self._liveness is None or self._liveness.done():
            self._liveness = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        interval = self.settings.heartbeat
        while self._since and not self._closed:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for token, started in list(self._since.items()):
                if now - started < interval:
                    continue
                unanswered = 0
                if token in self._probes and token not in self._alive:
                    unanswered = self._probes[token] + 1
                if unanswered >= _MISSED_PROBES:
                    self._server_gone(token)
                    continue
                self._probes[token] = unanswered
                self._alive.discard(token)
                await self._probe(token)

    async def _probe(self, token: str) -> None:
        assert self._inbox is not None
        try:
            await self.broker.publish(
                self.settings.prefix + PROBE_SUBJECT,
                self._inbox.address(token).encode(),
                self._inbox.address(_PROBE + token),
            )
        except BrokerError as exc:
            logger.debug("liveness probe not sent: %r", exc)

    def _on_probe_answer(self, token: str, msg: BrokerMessage) -> None:
        if token not in self._since:
            return
        headers = msg.headers or {}
        # "no responders" (no replica listens at all) is no answer: any client can send the same
        # status, and a call whose server is gone fails after the missed probes anyway
        if headers.get("Status") != NO_RESPONDERS_STATUS or msg.data:
            self._alive.add(token)

    def _server_gone(self, token: str) -> None:
        future = self._unary.get(token)
        if future is not None and not future.done():
            gone = "the server handling the call went away (no answer to liveness probes)"
            future.set_exception(RpcError(Code.UNAVAILABLE, gone))

    def _subject_of(self, method: MethodInfo[Any, Any]) -> str:
        subject = self._subjects[method.path] = method_subject(self.settings.prefix, method)
        return subject

    def _request_headers(self, call: CallInfo, codec: Codec, with_deadline: bool = True) -> dict[str, str]:
        headers: dict[str, str] = {}
        put_content_type(headers, codec)
        if call.deadline is not None and with_deadline:
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded before the call was sent")
            headers[TIMEOUT] = str(max(1, int(remaining * 1000)))
        metadata = call.outgoing_metadata
        if metadata is not None:
            try:
                put_metadata(headers, metadata)
            except RpcError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, exc.message) from None
        return headers

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _announce_cancel(self, reply: str) -> None:
        try:
            await self.broker.publish(self.settings.prefix + CANCEL_SUBJECT, reply.encode())
        except BrokerError as exc:
            logger.debug("cancel notice not sent: %r", exc)

    async def reflect(self, timeout: float | None, metadata: Metadata) -> Reflected:
        """The services under this client's prefix and their descriptors, from micro ``$SRV.INFO``.

        Every service instance answers, so replies are gathered until none came for
        ``_DISCOVERY_QUIET`` seconds (or ``timeout`` passed)."""
        return reflected(await self._discover(timeout, metadata), self.settings.prefix)

    async def asyncapi(self, timeout: float | None, metadata: Metadata) -> dict[str, Any]:
        """The AsyncAPI document of the services under this client's prefix: each service's own
        (asked on the subject its ``$SRV.INFO`` names), merged into one."""
        from ._asyncapi import merge_documents

        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        documents = []
        for subject in asyncapi_subjects(await self._discover(timeout, metadata), self.settings.prefix):
            left = None if end is None else max(0.0, end - loop.time())
            replies = await self._ask(subject, left, metadata, every=False)
            if not replies:
                raise RpcError(Code.DEADLINE_EXCEEDED, f"no AsyncAPI document from {subject} in time")
            headers, data = replies[0]
            error = read_error(headers, data) if headers else None
            if error is not None:
                raise error
            try:
                documents.append(json.loads(data))
            except ValueError:
                raise RpcError(Code.INTERNAL, f"{subject} did not answer a JSON document") from None
        return merge_documents(documents, self.broker.asyncapi_bindings())

    async def _discover(
        self, timeout: float | None, metadata: Metadata
    ) -> list[tuple[dict[str, str] | None, bytes]]:
        """Every ``$SRV.INFO`` reply; ``DEADLINE_EXCEEDED`` when none came in time."""
        got = await self._ask(INFO_SUBJECT, timeout, metadata, every=True)
        if not got:
            raise RpcError(Code.DEADLINE_EXCEEDED, "no service answered NATS micro discovery in time")
        return got

    async def _ask(
        self, subject: str, timeout: float | None, metadata: Metadata, *, every: bool
    ) -> list[tuple[dict[str, str] | None, bytes]]:
        """Publish an empty request to ``subject`` with ``metadata``; the (headers, body) of the
        first reply, or with ``every`` of each reply until none came for ``_DISCOVERY_QUIET``
        seconds; nothing when no reply came within ``timeout``."""
        assert self._inbox is not None
        token = self._tokens.next()
        replies: asyncio.Queue[BrokerMessage] = asyncio.Queue()
        self._collectors[token] = replies
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        got: list[tuple[dict[str, str] | None, bytes]] = []
        try:
            headers: dict[str, str] | None = None
            if metadata:
                headers = {}
                put_metadata(headers, metadata)
            await self.broker.publish(subject, b"", self._inbox.address(token), headers)
            while not got or every:
                wait = None if end is None else end - loop.time()
                if got:
                    wait = _DISCOVERY_QUIET if wait is None else min(wait, _DISCOVERY_QUIET)
                try:
                    msg = await asyncio.wait_for(replies.get(), wait)
                except asyncio.TimeoutError:
                    break
                got.append((msg.headers, msg.data))
        except BrokerError as exc:
            raise publish_error(exc) from None
        finally:
            del self._collectors[token]
        return got

    def durable(self) -> DurableClient:
        """Durable calls on this connection (``UNIMPLEMENTED`` when the broker stores nothing)."""
        if self._durable is None:
            broker = self.broker
            if not isinstance(broker, DurableBroker):
                raise RpcError(Code.UNIMPLEMENTED, f"the {broker.name} broker does not store messages")
            self._durable = DurableClient(broker, self.settings, self._codec)
        return self._durable

    def _headers_of(
        self, call: CallInfo, method: MethodInfo[Any, Any], codec: Codec, size: int
    ) -> tuple[dict[str, str] | None, int]:
        """The headers of a call's message (``None`` when it needs none) and the message's size
        with them (``size``: its body's)."""
        metadata = call.outgoing_metadata
        deadline = call.deadline
        if metadata is None and codec is PROTO and deadline is not None and not method.oneway:
            # _request_headers for the common case (only the deadline), written out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded before the call was sent")
            return {TIMEOUT: str(max(1, int(remaining * 1000)))}, size + _SMALL_HEADERS
        if metadata is not None or (deadline is not None and not method.oneway) or codec is not PROTO:
            headers = self._request_headers(call, codec, with_deadline=not method.oneway)
            # without metadata the headers are a few dozen bytes; only metadata can make them large
            return headers, size + (headers_size(headers) if metadata is not None else _SMALL_HEADERS)
        return None, size

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, remembered: asking asyncio costs a getpid() system call on Python 3.11."""
        loop = self._loop
        if loop is None or getattr(loop, "_thread_id", None) != threading.get_ident():
            # not (or no longer) asyncio's loop running in this thread, which is the running loop
            # (see Channel.unary): ask
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def unary(self, request: Message, call: CallInfo) -> Message:
        method = call.method
        assert method is not None
        if method.durable:
            return await self.durable().unary(request, call)
        subject = self._subjects.get(method.path) or self._subject_of(method)
        codec = self._codec
        data = request.SerializeToString() if codec is PROTO else codec.encode(request)
        headers, size = self._headers_of(call, method, codec, len(data))
        broker = self.broker
        if method.oneway:
            # One message without a reply address, done once handed to the broker connection (as
            # a plain publish is). Nothing comes back, not even "no responders": at most once. The
            # broker checks the size and the connection (a reconnecting NATS connection keeps the
            # message for after reconnection); headers are counted here, since it may count the body only.
            if headers is not None and size > broker.max_payload:
                raise too_large(size, broker.max_payload)
            try:
                buffer = self._buffer
                if buffer is None or not buffer(subject, data, "", headers):
                    await broker.publish(subject, data, "", headers)
            except BrokerError as exc:
                raise publish_error(exc) from None
            # one-way methods answer google.protobuf.Empty (the generator enforces it): one instance
            return _EMPTY if method.output_type is Empty else method.output_type()
        if size > broker.max_payload:
            raise too_large(size, broker.max_payload)
        assert self._inbox is not None
        # random, not a counter: a reply address is all another connection would need to answer
        # in the server's place
        token = self._tokens.next()
        reply = self._inbox.address(token)
        future: asyncio.Future[BrokerMessage] = self._running_loop().create_future()
        self._unary[token] = future
        self._watch(token)
        slot = 0
        if call.deadline is not None:
            slot = self._deadlines.add(call.deadline, future)
        try:
            buffer = self._buffer
            if buffer is None or not buffer(subject, data, reply, headers):
                # buffer() refuses a message when not connected (among other cases): only then is
                # it worth asking (a reconnecting connection's publish keeps the call for later)
                if not broker.is_connected:
                    raise RpcError(Code.UNAVAILABLE, f"not connected to {broker.name}")
                await broker.publish(subject, data, reply, headers)
            msg = await future
        except asyncio.CancelledError:
            # cancelling this task also cancelled the future it awaited
            if future.cancelled() or not future.done():
                self._spawn(self._announce_cancel(reply))
            raise
        except BrokerError as exc:
            raise publish_error(exc) from None
        finally:
            self._forget(token, slot, future)
        out = msg.headers
        if out is None:
            return _decode_response(codec, msg.data, method.output_type)
        return self._unary_result(msg, out, call, subject)

    def _forget(self, token: str, slot: int, future: asyncio.Future[BrokerMessage]) -> None:
        """The unary call ``token`` ended: no reply, probe or deadline (``slot``) is awaited."""
        del self._unary[token]
        del self._since[token]
        if self._probes:
            self._probes.pop(token, None)
            self._alive.discard(token)
        if slot:
            self._deadlines.discard(slot, future)

    def _unary_result(
        self, msg: BrokerMessage, headers: dict[str, str], call: CallInfo, subject: str
    ) -> Message:
        assert call.method is not None
        if headers.get("Status") == NO_RESPONDERS_STATUS and not msg.data:
            raise RpcError(Code.UNAVAILABLE, f"no server is serving {subject} (no responders)")
        call.headers, call.trailers = read_response_headers(headers)
        error = read_error(headers, msg.data)
        if error is not None:
            raise error
        return _decode_response(codec_for(headers), msg.data, call.method.output_type)

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        method = call.method
        assert method is not None
        subject = self._subjects.get(method.path) or self._subject_of(method)
        codec = self._codec
        broker = self.broker
        assert self._inbox is not None
        token = self._tokens.next()
        settings = self.settings
        state = StreamState(
            self._inbox.address(token),
            broker.publish,
            lambda: broker.max_payload,
            settings.window,
            settings.heartbeat,
        )
        headers, body = await self._open_frame(state, requests, call, codec)
        loop = asyncio.get_running_loop()
        timer = None
        if call.deadline is not None:
            expired = RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            timer = loop.call_at(loop_time(loop, call.deadline), state.fail, expired)
        self._streams[token] = state
        self._heartbeats.add(state)
        sender: asyncio.Task[None] | None = None
        finished = False
        try:
            try:
                await broker.publish(subject, body, state.inbox, headers)
            except BrokerError as exc:
                raise publish_error(exc) from None
            if method.kind.client_streams:
                sender = loop.create_task(self._send_requests(state, requests, codec))
            output_type = method.output_type
            while True:
                frame, msg = await state.receive()
                if frame is None:
                    yield _decode_response(codec, msg.data, output_type)
                    continue
                if frame == HEADERS:
                    call.headers = read_metadata(msg.headers)
                elif frame == END:
                    finished = True
                    _end_of_stream(state, msg, call)
                    return
        finally:
            if timer is not None:
                timer.cancel()
            self._heartbeats.discard(state)
            self._streams.pop(token, None)
            if sender is not None and not sender.done():
                sender.cancel()
            if not finished and not state.gone and state.peer is not None:
                # the caller stopped early or the call failed here: let the server stop the handler
                self._spawn(_send_cancel(state))

    async def _open_frame(
        self, state: StreamState, requests: AsyncIterator[Message], call: CallInfo, codec: Codec
    ) -> tuple[dict[str, str], bytes]:
        """The headers and body of the message opening a stream call (with its first request,
        unless the client streams); raises when it cannot be sent."""
        assert call.method is not None
        broker = self.broker
        headers = {FRAME: OPEN, **state.announce(), **self._request_headers(call, codec)}
        body = b""
        if not call.method.kind.client_streams:
            body = codec.encode(await anext(requests))
        size = len(body) + headers_size(headers)
        if size > broker.max_payload:
            raise too_large(size, broker.max_payload)
        if not broker.is_connected:
            raise RpcError(Code.UNAVAILABLE, f"not connected to {broker.name}")
        return headers, body

    async def _send_requests(
        self, state: StreamState, requests: AsyncIterator[Message], codec: Codec
    ) -> None:
        try:
            async for request in requests:
                await state.send_data(codec.encode(request))
            await state.send_end()
        except Exception as exc:
            # the request iterator failed (the caller sees its exception) or the call already ended
            if state.error is None:
                state.fail(exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fail_all(RpcError(Code.CANCELLED, "the channel was closed"))
        if self._liveness is not None:
            self._liveness.cancel()
        self._heartbeats.close()
        for task in list(self._background):
            if not task.done():
                await asyncio.wait([task], timeout=1.0)
        try:
            await self.broker.close()
        except Exception as exc:
            logger.debug("closing the broker connection: %r", exc)


async def dial_broker(
    opening: Awaitable[Broker], settings: EngineSettings, refused: type[ConnectionError]
) -> BrokerClient:
    """A started client on the connection ``opening`` makes: a broker package's ``dial``. The
    connection's ``refused`` error (credentials refused) is ``UNAUTHENTICATED``, any other
    ConnectionError ``UNAVAILABLE``; both keep their message, which the broker wrote without secrets."""
    try:
        broker = await opening
    except refused as exc:
        raise RpcError(Code.UNAUTHENTICATED, str(exc)) from None
    except ConnectionError as exc:
        raise RpcError(Code.UNAVAILABLE, str(exc)) from None
    client = BrokerClient(broker, settings)
    await client.start()
    return client
