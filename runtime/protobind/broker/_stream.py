"""One side of a streaming call over a broker: per-call inboxes, credit flow control, heartbeats.

Each side of a stream receives on its own per-call inbox subject and sends to the other side's,
always naming its own inbox as the reply subject, so every frame says where to answer (and an
``open`` that no server takes comes back at once as a "no responders" status).

A stream is bound to its peer: once the peer's inbox is known (from the open or accept frame),
frames that do not name it as their reply address are dropped, and per-call inboxes end in a
random 128-bit token, so another connection can neither guess a stream's address nor speak for
its peer (docs/security.md). A "no responders" status has no reply address and any client can
send the same bytes as the NATS server, so it counts only while the client waits for the server's
first answer (an ``open`` that no server took); a peer that went away later is found by heartbeats.

A data frame is a NATS message without headers whose body is one encoded message; control
frames carry a ``Protobind-Frame`` header. Flow control is credit based: a receiver announces a
window of W messages; the sender keeps at most W unacknowledged data frames in flight, and the
receiver acknowledges cumulatively (``Protobind-Ack: <messages consumed>``) each time its
application has taken W/2 more messages out of the queue. Memory per direction is thus bounded
by W messages whatever the producer's speed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import Code, RpcError
from ._wire import ACK, COUNT, FRAME, HEARTBEAT, MICRO_ERROR_CODE, STATUS, WINDOW, header, headers_size
from .base import NO_RESPONDERS_STATUS, BrokerError

__all__ = [
    "ACCEPT",
    "ACK_FRAME",
    "CANCEL",
    "END",
    "HEADERS",
    "MISSED_HEARTBEATS",
    "OPEN",
    "PING",
    "Heartbeats",
    "Publish",
    "StreamState",
]

logger = logging.getLogger("protobind.broker")

OPEN = "open"
ACCEPT = "accept"
HEADERS = "headers"
END = "end"
ACK_FRAME = "ack"
PING = "ping"
CANCEL = "cancel"
#: answer to a unary call's liveness probe
ALIVE = "alive"

#: A peer is considered gone after this many of its heartbeat intervals without any frame.
MISSED_HEARTBEATS = 3

Publish = Callable[..., Awaitable[None]]


class StreamState:
    """Flow control and liveness of one streaming call, shared by the client and server sides.

    ``feed`` runs in the NATS subscription callback and never blocks: data, header and end frames
    are queued in arrival order for :meth:`receive`; acks, pings and cancels take effect at once.
    """

    __slots__ = (
        "_ack_sent",
        "_acked",
        "_credit_waiter",
        "_queue",
        "_receive_waiter",
        "answered",
        "consumed",
        "error",
        "gone",
        "headers_sent",
        "heartbeat",
        "inbox",
        "last_received",
        "last_sent",
        "max_payload",
        "on_cancel",
        "peer",
        "peer_heartbeat",
        "peer_window",
        "publish",
        "received",
        "sent",
        "window",
    )

    def __init__(
        self,
        inbox: str,
        publish: Publish,
        max_payload: Callable[[], int],
        window: int,
        heartbeat: float,
    ) -> None:
        self.inbox = inbox
        self.publish = publish
        self.max_payload = max_payload
        self.window = window
        self.heartbeat = heartbeat
        self.peer: str | None = None
        #: a frame (an accept, a plain error reply) came from the other side
        self.answered = False
        self.peer_window = 0  # no credit until the peer announced its window
        self.peer_heartbeat = heartbeat
        self.sent = 0
        self._acked = 0
        self.received = 0
        self.consumed = 0
        self._ack_sent = 0
        self._queue: collections.deque[Any] = collections.deque()
        self._receive_waiter: asyncio.Future[None] | None = None
        self._credit_waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.gone = False
        self.headers_sent = False  # the server side's response headers frame (sent at most once)
        self.on_cancel: Callable[[], None] | None = None
        now = time.monotonic()
        self.last_received = now
        self.last_sent = now

    # --- incoming frames (subscription callback) ---------------------------------------------

    def learn_peer(self, headers: dict[str, str] | None, reply: str) -> None:
        """Take the peer's inbox, window and heartbeat from an open or accept frame."""
        if reply:
            self.peer = reply
        window = header(headers, WINDOW)
        try:
            self.peer_window = max(1, int(window or 1))
        except ValueError:
            self.peer_window = 1  # a peer that does not say gets the smallest window that works
        beat = header(headers, HEARTBEAT)
        if beat is not None:
            with contextlib.suppress(ValueError):
                self.peer_heartbeat = max(0.01, int(beat) / 1000)
        self._wake_sender()

    def feed(self, msg: Any) -> None:
        """Take one frame from the broker (see the class docstring); never blocks."""
        headers = msg.headers
        peer = self.peer
        if peer is not None and msg.reply != peer:
            # not from the peer this stream is bound to (a status message has no reply address:
            # once the peer is known, its heartbeats tell whether it is alive): dropped
            return
        if headers is not None and _no_responders(msg):
            if not self.answered:
                # the open found no server (or a forger was first: indistinguishable until the
                # server's first answer, after which such a status is ignored)
                self.peer_gone(RpcError(Code.UNAVAILABLE, "no server is serving this method (no responders)"))
            return
        self.answered = True
        self.last_received = time.monotonic()
        if headers is None:
            self._push(None, msg)
            return
        frame = header(headers, FRAME)
        if frame is None:
            if header(headers, STATUS) is not None or header(headers, MICRO_ERROR_CODE) is not None:
                # a plain error reply (the server refused the call before it became a stream)
                self._push(END, msg)
                return
            self._push(None, msg)
        elif frame == ACK_FRAME:
            try:
                acked = int(header(headers, ACK) or 0)
            except ValueError:
                return
            if acked > self._acked:
                self._acked = acked
                self._wake_sender()
        elif frame == PING:
            pass
        elif frame == CANCEL:
            self.peer_gone(RpcError(Code.CANCELLED, "cancelled by the client"))
        elif frame == ACCEPT:
            self.learn_peer(headers, msg.reply)
        else:
            self._push(frame, msg)

    def _push(self, frame: str | None, msg: Any) -> None:
        if self.peer is None and msg.reply:
            self.peer = msg.reply
        if frame is None:
            self.received += 1
            if self.received - self.consumed > self.window:
                self.fail(RpcError(Code.RESOURCE_EXHAUSTED, "the peer ignored the flow-control window"))
                return
        self._queue.append((frame, msg))
        waiter = self._receive_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        """End the call locally with ``error``: pending and future receive/send calls raise it."""
        if self.error is None:
            self.error = error
        for waiter in (self._receive_waiter, self._credit_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def peer_gone(self, error: RpcError) -> None:
        """The peer cancelled, vanished or stopped answering: nothing more will be sent to it."""
        self.gone = True
        self.fail(error)
        if self.on_cancel is not None:
            self.on_cancel()

    def _wake_sender(self) -> None:
        waiter = self._credit_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the application side -----------------------------------------------------------------

    async def receive(self) -> tuple[str | None, Any]:
        """The next frame as (kind, nats ``Msg``): kind ``None`` for data, else ``headers`` or ``end``.
        Raises the call's error once it failed."""
        while True:
            if self.error is not None:
                raise self.error
            if self._queue:
                item: tuple[str | None, Any] = self._queue.popleft()
                if item[0] is None:
                    self.consumed += 1
                    if self.consumed - self._ack_sent >= max(1, self.window // 2):
                        await self._send_ack()
                return item
            self._receive_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._receive_waiter
            finally:
                self._receive_waiter = None

    async def _send_ack(self) -> None:
        self._ack_sent = self.consumed
        try:
            await self.control(ACK_FRAME, {ACK: str(self.consumed)})
        except RpcError as exc:
            # acks are cumulative: the next one repairs a lost one, and a dead peer is noticed anyway
            logger.debug("ack not sent: %s", exc)

    async def send_data(self, body: bytes) -> None:
        """Send one data frame, first waiting for credit from the peer."""
        await self._wait_for_credit()
        if len(body) > self.max_payload():
            raise RpcError(
                Code.RESOURCE_EXHAUSTED,
                f"message of {len(body)} bytes exceeds the broker's max_payload ({self.max_payload()})",
            )
        self.sent += 1
        await self._publish(body, None)

    async def send_end(self) -> None:
        """Send the client's end frame, first waiting for the peer's inbox: in a call without any
        request it is the first frame, and ``control`` drops frames while the peer is unknown."""
        await self._wait_for_credit(peer_only=True)
        await self.control(END, {COUNT: str(self.sent)})

    async def _wait_for_credit(self, *, peer_only: bool = False) -> None:
        while self.error is None and (
            self.peer is None or (not peer_only and self.sent - self._acked >= self.peer_window)
        ):
            self._credit_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._credit_waiter
            finally:
                self._credit_waiter = None
        if self.error is not None:
            raise self.error

    async def control(self, frame: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        """Send a control frame to the peer (no flow control: control frames are small and few)."""
        if self.peer is None:
            return
        all_headers = {FRAME: frame}
        if headers:
            all_headers.update(headers)
        if len(body) + headers_size(all_headers) > self.max_payload():
            raise RpcError(Code.RESOURCE_EXHAUSTED, "frame exceeds the broker's max_payload")
        await self._publish(body, all_headers)

    async def _publish(self, body: bytes, headers: dict[str, str] | None) -> None:
        assert self.peer is not None
        self.last_sent = time.monotonic()
        try:
            await self.publish(self.peer, body, reply=self.inbox, headers=headers)
        except BrokerError as exc:
            raise RpcError(
                Code.UNAVAILABLE, f"the broker did not take a stream frame: {type(exc).__name__}"
            ) from None

    def announce(self) -> dict[str, str]:
        """Headers that tell the peer our window and heartbeat (sent in open and accept frames)."""
        return {WINDOW: str(self.window), HEARTBEAT: str(max(1, round(self.heartbeat * 1000)))}

    def end_count(self, headers: dict[str, str] | None) -> RpcError | None:
        """Check an end frame's data-frame count against what arrived: frames lost on the way
        (possible across a NATS reconnect) must not pass silently."""
        count = header(headers, COUNT)
        if count is None:
            return None
        try:
            expected = int(count)
        except ValueError:
            return RpcError(Code.DATA_LOSS, f"bad {COUNT} header {count!r}")
        if expected != self.received:
            return RpcError(
                Code.DATA_LOSS, f"stream lost messages: {expected} sent, {self.received} received"
            )
        return None


def _no_responders(msg: Any) -> bool:
    # what the broker answers to a frame that found nobody: no reply address, no body
    return msg.headers.get("Status") == NO_RESPONDERS_STATUS and not msg.data and not msg.reply


class Heartbeats:
    """One ticker per connection for all of its streams: sends a ping on streams that were quiet for
    a heartbeat interval and fails those whose peer was silent for MISSED_HEARTBEATS intervals."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.streams: set[StreamState] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, state: StreamState) -> None:
        """Watch ``state`` (and start the ticker if it is not running)."""
        self.streams.add(state)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, state: StreamState) -> None:
        """Stop watching ``state``."""
        self.streams.discard(state)

    async def _run(self) -> None:
        tick = max(0.005, self.interval / 2)
        while self.streams:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for state in list(self.streams):
                if state.error is not None:
                    continue
                if now - state.last_received > MISSED_HEARTBEATS * state.peer_heartbeat:
                    state.peer_gone(
                        RpcError(Code.UNAVAILABLE, "the other side of the stream stopped responding")
                    )
                elif now - state.last_sent >= state.heartbeat and state.peer is not None:
                    try:
                        await state.control(PING)
                    except Exception as exc:  # a failed ping is noticed by the missing replies
                        logger.debug("heartbeat not sent: %r", exc)

    def close(self) -> None:
        """Stop the ticker and forget every stream."""
        self.streams.clear()
        if self._task is not None:
            self._task.cancel()
