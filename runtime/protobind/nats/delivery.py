"""Serving a subscription's messages concurrently without a task per message.

nats-py hands the messages of a callback subscription to the callback from one task, one at a
time: a callback that awaits a slow handler holds up every message behind it, and one that starts
a task per message pays for that task on every call, more than all the rest of the server's work
on a small call. Here consumers take messages from the subscription's pending queue and run the
handler inline, as nats-py's own delivery task runs a callback. A handler that has to wait says so
first (:meth:`Delivery.waiting`), and if no other consumer is free one is started, so a slow call
never holds up the others and consumers are created only when handlers actually wait. Consumers
beyond a couple of idle ones end, so the pool follows the load.

This reads two private attributes of nats-py's ``Subscription``, ``_pending_queue`` and
``_pending_size``, exactly as nats-py's delivery loop does; :meth:`Delivery.attach` returns ``None``
when a nats-py version lacks them, and the caller falls back to a callback subscription.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("protobind.nats")

#: ``handle(msg, delivery)``: serve one message; call ``delivery.waiting()`` before waiting.
Handler = Callable[[Any, "Delivery"], Awaitable[None]]
Shed = Callable[[Any], Awaitable[None]]

#: Idle consumers kept per subscription; more than this and an idle consumer ends.
MAX_IDLE = 2


class ConsumerPool:
    """Consumers across a binding's subscriptions; at most ``limit`` (but one per subscription)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.closing = False


class Delivery:
    """The consumers of one subscription."""

    def __init__(
        self,
        sub: Any,
        queue: asyncio.Queue[Any],
        handle: Handler,
        pool: ConsumerPool,
        max_pending: int,
        shed: Shed,
    ) -> None:
        self._sub = sub
        self._queue = queue
        self._handle = handle
        self._pool = pool
        self._max_pending = max_pending
        self._shed = shed
        self._idle = 0
        self.tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def attach(
        cls,
        sub: Any,
        handle: Handler,
        pool: ConsumerPool,
        max_pending: int,
        shed: Shed,
    ) -> Delivery | None:
        """Serve ``sub`` (a subscription made without a callback) with ``handle``, or ``None`` if this
        nats-py does not expose the pending queue this relies on. While more than ``max_pending``
        messages wait, the oldest go to ``shed`` instead (the caller most likely gave up on them)."""
        queue = getattr(sub, "_pending_queue", None)
        if not isinstance(queue, asyncio.Queue) or not isinstance(getattr(sub, "_pending_size", None), int):
            return None
        delivery = cls(sub, queue, handle, pool, max_pending, shed)
        delivery._spawn()
        return delivery

    def _spawn(self) -> None:
        self._pool.count += 1
        task = asyncio.get_running_loop().create_task(self._consume())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _consume(self) -> None:
        pool = self._pool
        queue = self._queue
        sub = self._sub
        handle = self._handle
        try:
            while not pool.closing:
                if queue.empty():
                    if self._idle >= MAX_IDLE:
                        return
                    self._idle += 1
                    try:
                        msg = await queue.get()
                    finally:
                        self._idle -= 1
                else:
                    msg = queue.get_nowait()
                # the bookkeeping nats-py's own delivery loop does: its slow-consumer limit counts bytes
                sub._pending_size -= len(msg.data)
                try:
                    if queue.qsize() < self._max_pending:
                        await handle(msg, self)
                    else:
                        await self._shed(msg)
                except Exception:  # handle answers every error itself; this is a last resort
                    logger.exception("NATS message on %s not handled", msg.subject)
                finally:
                    queue.task_done()
        finally:
            pool.count -= 1

    def waiting(self) -> None:
        """Called by a handler run inline that is about to wait: if no other consumer is free to
        take the next message, start one (up to the pool's limit)."""
        pool = self._pool
        if self._idle == 0 and pool.count < pool.limit and not pool.closing:
            self._spawn()

    def backlog(self) -> int:
        return self._queue.qsize()

    def take_remaining(self) -> list[Any]:
        """Messages not yet handled (after unsubscribing, to refuse them)."""
        remaining = []
        while not self._queue.empty():
            remaining.append(self._queue.get_nowait())
            self._queue.task_done()
        return remaining
