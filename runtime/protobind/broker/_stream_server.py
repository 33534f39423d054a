"""The streaming half of the engine's server binding (:class:`~protobind.broker.server.BrokerBinding`):
:class:`StreamCalls` admits the messages that open a stream (at most ``max_concurrency`` at a time,
``max_pending`` more waiting), serves each as a task over a :class:`~._stream.StreamState` at the
binding's stream inbox, and ends it with its status. The calls it runs are in the binding's
:class:`~._calls.CallRegistry`, so cancel notices, probes, deadlines and ``stop`` reach them as they
reach unary calls. docs/protocols.md ("NATS request-reply", streams) is the wire description.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from .._aio import uncancel
from .._context import Context
from .._errors import Code, RpcError
from ..codec import PROTO, Codec
from ..endpoints import invoke_stream, invoke_unary
from ._calls import CallRegistry, Route, record, too_big
from ._stream import ACCEPT, END, HEADERS, OPEN, Heartbeats, StreamState
from ._wire import COUNT, FRAME, STATUS, error_body, error_headers, header, put_metadata, read_request_headers
from .base import Broker, BrokerMessage, EngineSettings, Inbox

__all__ = ["StreamCalls"]

logger = logging.getLogger("protobind.broker")

Refuse = Callable[[BrokerMessage, RpcError], Awaitable[None]]


class StreamCalls:
    """The streaming calls of one binding: admission, the streams by inbox token, heartbeats."""

    def __init__(
        self, broker: Broker, settings: EngineSettings, registry: CallRegistry, refuse: Refuse
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.registry = registry
        self._refuse = refuse
        self._streams: dict[str, StreamState] = {}
        self._waiting: collections.deque[tuple[Route, BrokerMessage]] = collections.deque()
        self._running = 0
        self._closing = False
        self._heartbeats = Heartbeats(settings.heartbeat)
        self._inbox: Inbox | None = None

    async def open_inbox(self) -> None:
        """Subscribe the inbox the streams' frames come to."""
        self._inbox = await self.broker.inbox(self._on_frame)

    async def admit(self, route: Route, msg: BrokerMessage) -> None:
        """A message on a streaming method's subject: start its stream, or queue it, or refuse it."""
        if header(msg.headers, FRAME) != OPEN:
            await self._refuse(msg, _not_opened(route))
        elif self._running < self.settings.max_concurrency:
            self._start(route, msg)
        elif len(self._waiting) < self.settings.max_pending:
            self._waiting.append((route, msg))
        else:
            await self._refuse(msg, RpcError(Code.RESOURCE_EXHAUSTED, "the server is overloaded"))

    def stop_admitting(self) -> list[BrokerMessage]:
        """Start no more streams; the messages that were waiting, for the binding to refuse."""
        self._closing = True
        refused = [msg for _, msg in self._waiting]
        self._waiting.clear()
        return refused

    def close(self) -> None:
        """Stop the heartbeats (after the streams ended)."""
        self._heartbeats.close()

    def connection_lost(self) -> None:
        """Frames may be lost while disconnected: streams cannot go on reliably, end them now."""
        for state in list(self._streams.values()):
            state.peer_gone(RpcError(Code.UNAVAILABLE, "the server lost its broker connection"))

    def _start(self, route: Route, msg: BrokerMessage) -> None:
        self._running += 1
        registry = self.registry
        key = msg.reply or registry.one_way_key()
        registry.calls[key] = asyncio.get_running_loop().create_task(self._serve(route, msg, key))

    def _done(self, key: str) -> None:
        self._running -= 1
        self.registry.calls.pop(key, None)
        self.registry.cancelled.pop(key, None)
        if self._waiting and not self._closing:
            self._start(*self._waiting.popleft())

    async def _on_frame(self, token: str, msg: BrokerMessage) -> None:
        state = self._streams.get(token)
        if state is not None:
            state.feed(msg)

    async def _serve(self, route: Route, msg: BrokerMessage, key: str) -> None:
        started = time.perf_counter_ns()
        broker = self.broker
        # unguessable: the address is all another connection would need to speak into this stream
        token = secrets.token_hex(16)
        state = self._open(token, msg)
        codec: Codec = PROTO
        context: Context | None = None
        error: RpcError | None = None
        try:
            try:
                codec, timeout_ms, metadata = read_request_headers(msg.headers or {})
                context = Context(
                    route.method,
                    broker.name,
                    metadata=metadata,
                    deadline=None if timeout_ms is None else time.monotonic() + timeout_ms / 1000,
                    peer=broker.peer_of(msg.reply),
                )
                await state.control(ACCEPT, state.announce())
                await self._run(route, msg, state, codec, context)
            except RpcError as exc:
                error = exc
            except asyncio.CancelledError:
                ends, error = self._cancelled(key, state, context)
                if not ends:
                    raise
            record(route.stats, started, error)
            if not state.gone and msg.reply:
                await self._end(state, codec, context, error)
        except RpcError as exc:
            logger.debug("stream %s ended without its end frame: %s", key, exc)
        finally:
            self._heartbeats.discard(state)
            self._streams.pop(token, None)
            self._done(key)

    def _open(self, token: str, msg: BrokerMessage) -> StreamState:
        """The server's side of the stream ``msg`` opens, at the inbox under ``token``;
        cancelled, it cancels the task serving it."""
        broker = self.broker
        assert self._inbox is not None
        state = StreamState(
            self._inbox.address(token),
            broker.publish,
            lambda: broker.max_payload,
            self.settings.window,
            self.settings.heartbeat,
        )
        state.learn_peer(msg.headers, msg.reply)
        task = asyncio.current_task()
        assert task is not None

        def cancel_handler() -> None:
            task.cancel()

        state.on_cancel = cancel_handler
        self._streams[token] = state
        self._heartbeats.add(state)
        return state

    def _cancelled(
        self, key: str, state: StreamState, context: Context | None
    ) -> tuple[bool, RpcError | None]:
        """Whether the cancellation of the stream call ``key`` is one the call ends on (its peer
        gone, the binding's stop or a cancel notice, its deadline), and with what error (``None``:
        nobody to tell); ``(False, None)``: the serving task itself is being cancelled."""
        stopped = self.registry.cancelled.pop(key, None)
        if state.gone:
            return True, state.error if isinstance(state.error, RpcError) else None
        if stopped is not None:
            uncancel()
            return True, stopped
        if context is not None and context.cancelled():
            # the deadline struck while the call waited for flow-control credit
            uncancel()
            return True, RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
        return False, None

    async def _run(
        self, route: Route, msg: BrokerMessage, state: StreamState, codec: Codec, context: Context
    ) -> None:
        method = route.method
        request: Any
        if method.kind.client_streams:
            request = _incoming(state, codec, method.input_type, self.settings.max_message_size)
        else:
            if len(msg.data) > self.settings.max_message_size:
                raise too_big(len(msg.data), self.settings.max_message_size)
            request = codec.decode(msg.data, method.input_type)
        if method.kind.server_streams:
            responses = invoke_stream(route.endpoint, request, context)
            try:
                async for response in responses:
                    if not state.headers_sent:
                        await _send_headers(state, context)
                    await state.send_data(codec.encode(response))
            finally:
                await responses.aclose()
        else:
            response = await invoke_unary(route.endpoint, request, context)
            await _send_headers(state, context)
            await state.send_data(codec.encode(response))

    async def _end(
        self, state: StreamState, codec: Codec, context: Context | None, error: RpcError | None
    ) -> None:
        headers: dict[str, str] = {COUNT: str(state.sent)}
        body = b""
        if error is not None:
            headers.update(error_headers(error, codec))
            body = error_body(error, codec)
        else:
            headers[STATUS] = "0"
        if context is not None:
            try:
                if not state.headers_sent:
                    # headers that never went out with a message still reach the caller
                    await _send_headers(state, context)
                put_metadata(headers, context.response_trailers)
            except RpcError as exc:
                if exc.code is Code.UNAVAILABLE:
                    raise
                logger.error("%s set response metadata that NATS cannot carry: %s", context.method, exc)
        try:
            await state.control(END, headers, body)
        except RpcError as exc:
            if exc.code is not Code.RESOURCE_EXHAUSTED:
                raise
            # trailers too large for one message: the caller still learns how the call ended
            too_large = RpcError(Code.RESOURCE_EXHAUSTED, "the stream's trailers exceed max_payload")
            await state.control(END, {COUNT: str(state.sent), **error_headers(too_large, codec)})


def _not_opened(route: Route) -> RpcError:
    return RpcError(
        Code.INVALID_ARGUMENT,
        f"{route.method.full_name} is a {route.method.kind.value.replace('_', ' ')} method: "
        "start it with a Protobind-Frame: open message (see docs/protocols.md)",
    )


async def _send_headers(state: StreamState, context: Context) -> None:
    """The response headers frame, once per stream, if the handler set any headers."""
    state.headers_sent = True
    response_headers = context.response_headers
    if response_headers:
        frame: dict[str, str] = {}
        put_metadata(frame, response_headers)
        await state.control(HEADERS, frame)


async def _incoming(
    state: StreamState, codec: Codec, message_type: type[Message], limit: int
) -> AsyncIterator[Any]:
    """The requests of a client or bidi stream, as the handler reads them."""
    while True:
        frame, msg = await state.receive()
        if frame is None:
            if len(msg.data) > limit:
                raise too_big(len(msg.data), limit)
            yield codec.decode(msg.data, message_type)
        elif frame == END:
            error = state.end_count(msg.headers)
            if error is not None:
                raise error
            return
