"""Serving a subscription's messages concurrently without a task per message.

A callback subscription hands its messages to the callback from one task, one at a time: a
callback that awaits a slow handler holds up every message behind it, and one that starts a task
per message pays for that task on every call, more than all the rest of the server's work on a
small call. Here consumers take messages from the subscription's queue (:class:`Inbound`) and run
the handler inline, as a broker's own delivery task runs a callback. A handler that has to wait
says so first (:meth:`Consumers.waiting`), and if no other consumer is free one is started, so a
slow call never holds up the others and consumers are created only when handlers actually wait.
Consumers beyond a couple of idle ones end, so the pool follows the load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .base import Inbound

__all__ = [
    "MAX_IDLE",
    "ConsumerPool",
    "Consumers",
    "Handler",
    "Shed",
]

logger = logging.getLogger("protobind.broker")

#: ``handle(msg, consumers)``: serve one message; call ``consumers.waiting()`` before waiting. It
#: returns ``False`` when the message was not handled after all (the server stopped first): the
#: inbound is then not told it is done (:meth:`Inbound.done`), so a broker may deliver it again.
Handler = Callable[[Any, "Consumers"], Awaitable[bool | None]]
Shed = Callable[[Any], Awaitable[None]]

#: Idle consumers kept per subscription; more than this and an idle consumer ends.
MAX_IDLE = 2


class ConsumerPool:
    """Consumers across a binding's subscriptions; at most ``limit`` (but one per subscription)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.closing = False


class Consumers:
    """The consumers of one subscription."""

    def __init__(
        self, inbound: Inbound, handle: Handler, pool: ConsumerPool, max_pending: int, shed: Shed
    ) -> None:
        """Serve ``inbound`` with ``handle``. While more than ``max_pending`` messages wait, the
        oldest calls go to ``shed`` instead (their callers most likely gave up on them)."""
        self._inbound = inbound
        self._mailbox = inbound.mailbox
        self._handle = handle
        self._pool = pool
        self._max_pending = max_pending
        self._shed = shed
        self._idle = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._spawn()

    def _spawn(self) -> None:
        self._pool.count += 1
        task = asyncio.get_running_loop().create_task(self._consume())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _consume(self) -> None:
        pool = self._pool
        mailbox = self._mailbox
        items = mailbox.items
        inbound = self._inbound
        handle = self._handle
        try:
            while not pool.closing:
                if not items:
                    if self._idle >= MAX_IDLE:
                        return
                    self._idle += 1
                    try:
                        await mailbox.wait()
                    finally:
                        self._idle -= 1
                    continue
                msg = items.popleft()
                inbound.taken(msg)
                handled: bool | None = True
                try:
                    # the messages still waiting behind this one: at most max_pending may (0: none,
                    # a call is served only if a consumer takes it now). A message without a reply
                    # address (one-way) has no caller that gave up on it: never shed, it waits; the
                    # broker's own slow-consumer limit bounds those.
                    if not msg.reply or len(items) <= self._max_pending:
                        handled = await handle(msg, self)
                    else:
                        await self._shed(msg)
                except Exception:  # handle answers every error itself; this is a last resort
                    logger.exception("broker message on %s not handled", msg.subject)
                if handled is not False:
                    inbound.done(msg)
        finally:
            pool.count -= 1

    def waiting(self) -> None:
        """Called by a handler run inline that is about to wait: if no other consumer is free to
        take the next message, start one (up to the pool's limit)."""
        pool = self._pool
        if self._idle == 0 and pool.count < pool.limit and not pool.closing:
            self._spawn()

    def holds(self, reply: str) -> bool:
        """Whether a message answering to ``reply`` waits in the mailbox (for liveness probes; a
        scan, but probes are rare: one per long call per heartbeat interval)."""
        return any(msg.reply == reply for msg in list(self._mailbox.items))

    def done(self, msg: Any) -> None:
        """Tell the inbound that ``msg`` needs no more delivery (refused at shutdown, say)."""
        self._inbound.done(msg)

    def take_remaining(self) -> list[Any]:
        """Messages not yet handled (after unsubscribing, to refuse them)."""
        items = self._mailbox.items
        remaining = list(items)
        items.clear()
        return remaining
