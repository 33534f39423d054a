"""Server limits shared by every binding: how many handlers run at once, how many calls may wait
for one, and how long a request may take to arrive.

A binding reads a :class:`ServerLimits` from its options once, makes one :class:`ConcurrencyLimit`
and one :class:`ReadTimer` per binding, and passes the limit to
:func:`protobind.endpoints.invoke_unary` / :func:`~protobind.endpoints.invoke_stream`, which hold a slot
for the whole call. Exceeding a limit gives the same status on every transport (docs/security.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from ._errors import Code, RpcError
from .options import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING,
    OptionReader,
)

__all__ = ["OVERLOADED", "ConcurrencyLimit", "ReadTimeout", "ReadTimer", "ServerLimits"]

T = TypeVar("T")

#: The message of the RESOURCE_EXHAUSTED answer to a call refused by :class:`ConcurrencyLimit`.
OVERLOADED = "the server is overloaded: too many calls in progress, try again later"


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The limit options of a server binding, parsed (see docs/security.md for their meaning)."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_pending: int = DEFAULT_MAX_PENDING
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    @classmethod
    def read(cls, reader: OptionReader) -> ServerLimits:
        """The limits in ``reader``'s options, defaults for the ones not given."""
        return cls(
            max_message_size=reader.positive_int("max_message_size", DEFAULT_MAX_MESSAGE_SIZE),
            max_header_size=reader.positive_int("max_header_size", DEFAULT_MAX_HEADER_SIZE),
            max_concurrency=reader.positive_int("max_concurrency", DEFAULT_MAX_CONCURRENCY),
            max_pending=reader.count("max_pending", DEFAULT_MAX_PENDING),
            body_timeout=reader.seconds("body_timeout", DEFAULT_BODY_TIMEOUT),
        )

    @property
    def admitted(self) -> int:
        """Calls the binding takes in at once, running or waiting, but at least 1,000: the default
        bound of what a transport holds below the limiter (gRPC streams per connection and core's
        queue of calls not yet picked up, HTTP connections), so that overload meets the limiter
        and its RESOURCE_EXHAUSTED first."""
        return max(1000, self.max_concurrency + self.max_pending)

    def concurrency_limit(self) -> ConcurrencyLimit:
        """A fresh limiter with these bounds (one per binding)."""
        return ConcurrencyLimit(self.max_concurrency, self.max_pending)


class ConcurrencyLimit:
    """At most ``max_concurrency`` calls run at once; up to ``max_pending`` more wait, in arrival
    order, for a slot; a call beyond that is refused at once with RESOURCE_EXHAUSTED.
    ``max_pending=0`` means no queue: a call that finds every slot taken is refused."""

    __slots__ = ("_running", "_waiters", "max_concurrency", "max_pending")

    def __init__(self, max_concurrency: int, max_pending: int) -> None:
        if max_concurrency < 1 or max_pending < 0:
            raise ValueError("max_concurrency must be positive and max_pending not negative")
        self.max_concurrency = max_concurrency
        self.max_pending = max_pending
        self._running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def running(self) -> int:
        """Calls holding a slot."""
        return self._running

    @property
    def pending(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if all are taken; raise RpcError(RESOURCE_EXHAUSTED) when the
        line is full. Every successful ``acquire`` needs one :meth:`release`."""
        if self._running < self.max_concurrency:
            self._running += 1
            return
        if len(self._waiters) >= self.max_pending:
            raise RpcError(Code.RESOURCE_EXHAUSTED, OVERLOADED)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as this call was cancelled
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the longest-waiting call, or to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; _running stays
                return
        self._running -= 1


class ReadTimeout(RpcError):
    """DEADLINE_EXCEEDED because the request did not arrive within ``body_timeout`` (a binding
    may close the connection it came on)."""


class ReadTimer:
    """Fail reads of a request that take longer than ``timeout`` seconds with DEADLINE_EXCEEDED.

    One coarse periodic check per binding instead of a loop timer per call: a read is cancelled
    between ``timeout`` and ``timeout`` plus a quarter of it (at most one second) after it began.
    """

    __slots__ = ("_expired", "_handle", "_reads", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._reads: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._handle: asyncio.TimerHandle | None = None

    async def run(self, read: Awaitable[T]) -> T:
        """Await ``read`` (in the current task) within the time limit."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always inside a task on asyncio
            return await read
        loop = asyncio.get_running_loop()
        self._reads[task] = loop.time() + self.timeout
        if self._handle is None:
            self._handle = loop.call_later(self._interval(), self._check)
        try:
            return await read
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                uncancel = getattr(task, "uncancel", None)
                if uncancel is not None:
                    uncancel()
                raise ReadTimeout(
                    Code.DEADLINE_EXCEEDED,
                    f"the request did not arrive within {self.timeout:g} s (option body_timeout)",
                ) from None
            raise
        finally:
            self._reads.pop(task, None)

    def _interval(self) -> float:
        return min(max(self.timeout / 4, 0.01), 1.0)

    def _check(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in list(self._reads.items()):
            if deadline <= now:
                del self._reads[task]
                self._expired.add(task)
                task.cancel()
        if self._reads:
            self._handle = loop.call_later(self._interval(), self._check)

    def close(self) -> None:
        """Stop the periodic check (when the binding stops)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
