"""asyncio helpers shared by the transports."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = [
    "DeadlineScope",
    "Deadlines",
    "Resume",
    "loop_time",
    "uncancel",
]

T = TypeVar("T")


def loop_time(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    """The event loop's clock reading at the ``time.monotonic()`` instant ``deadline``."""
    # deadlines are time.monotonic() values; the loop's clock is the same in asyncio's default loop,
    # converting keeps timers right on loops where it is not
    return loop.time() + (deadline - time.monotonic())


class Deadlines(Generic[T]):
    """Deadline timers for many calls at once.

    An event-loop timer per call costs a push onto the loop's heap, whose comparisons run in
    Python, plus a cancelled entry left behind: at tens of thousands of calls per second that is a
    large share of a call's cost. Here calls whose deadlines fall in the same millisecond share one
    loop timer, and a call that finishes first just leaves its slot. Deadlines fire up to one
    millisecond late.
    """

    def __init__(self, expire: Callable[[T], None]) -> None:
        self._expire = expire
        self._slots: dict[int, set[T]] = {}
        self._timers: set[int] = set()  # slots with a loop timer pending

    def add(self, deadline: float, item: T) -> int:
        """Expire ``item`` at ``deadline`` (a ``time.monotonic()`` value); returns the slot to
        pass to :meth:`discard`."""
        slot = int(deadline * 1000) + 1
        items = self._slots.get(slot)
        if items is None:
            items = self._slots[slot] = set()
            if slot not in self._timers:
                self._timers.add(slot)
                loop = asyncio.get_running_loop()
                loop.call_at(loop_time(loop, slot / 1000), self._fire, slot)
        items.add(item)
        return slot

    def discard(self, slot: int, item: T) -> None:
        """Forget ``item`` (its call ended before the deadline)."""
        items = self._slots.get(slot)
        if items is not None:
            items.discard(item)
            if not items:
                del self._slots[slot]

    def _fire(self, slot: int) -> None:
        self._timers.discard(slot)
        for item in self._slots.pop(slot, ()):
            self._expire(item)


class Resume(Generic[T]):
    """Go on awaiting a coroutine whose first step already ran, each step in ``context``.

    This is what a task does for its coroutine; it lets a handler that started inline in a
    consumer wait there, in its own context, without a task being created for it.
    """

    __slots__ = ("_context", "_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, T], context: contextvars.Context, waiting: Any) -> None:
        self._coro = coro
        self._context = context
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        run = self._context.run
        waiting = self._waiting
        while True:
            try:
                value = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    waiting = run(coro.throw, exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    waiting = run(coro.send, value)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


def uncancel() -> None:
    # the cancellation was ours and is handled: leave the task as if it never happened (3.11+)
    """Forget a cancellation of the current task that was ours and is handled (Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


class DeadlineScope:
    """Cancel the current task at ``deadline``; turn that cancellation into DEADLINE_EXCEEDED.

    ``async with DeadlineScope(deadline):`` costs nothing when ``deadline`` is ``None``. It is used
    by the server side of every transport around the handler, and by clients that must stop waiting.
    """

    __slots__ = ("_deadline", "_expired", "_handle", "_task")

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> DeadlineScope:
        if self._deadline is not None:
            from ._errors import Code, RpcError

            if self._deadline <= time.monotonic():
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            self._task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(loop_time(loop, self._deadline), self._expire)
        return self

    def _expire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._expired and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            uncancel()
            from ._errors import Code, RpcError

            raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")


#: Event loops :func:`run` can run on: asyncio's own, or uvloop (``pip install 'protobind[speed]'``).
LOOPS = ("asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the event loop called ``name`` (``None``: asyncio's default)."""
    if name not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}, not {name!r}")
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise ImportError("loop = 'uvloop' needs uvloop: pip install 'protobind[speed]'") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """``asyncio.run(main)`` on a new event loop of the kind ``loop`` names (see :data:`LOOPS`)."""
    factory = loop_factory(loop)
    if factory is None:
        return asyncio.run(main)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    new_loop = factory()  # pragma: no cover - Python 3.10 has no Runner
    try:
        asyncio.set_event_loop(new_loop)
        return new_loop.run_until_complete(main)
    finally:
        asyncio.set_event_loop(None)
        new_loop.close()


async def wait_for_stop_signal() -> None:
    """Return on the process's first SIGINT or SIGTERM (handled on the running loop meanwhile)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve_until_signal(
    start: Callable[[], Coroutine[Any, Any, list[str]]],
    stop: Callable[[], Coroutine[Any, Any, None]],
    on_start: Callable[[list[str]], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """``await start()``, then wait for SIGINT/SIGTERM, then ``await stop()``: the body of
    ``Server.run`` and ``Gateway.run``. ``on_start`` gets the bound URLs."""
    urls = await start()
    try:
        if on_start is not None:
            on_start(urls)
        await wait_for_stop_signal()
        if on_stop is not None:
            on_stop()
    finally:
        await stop()


class Slots:
    """A counting semaphore whose release is O(1).

    ``asyncio.Semaphore`` (3.10 to 3.12) may scan its waiters on every release and removes each
    woken waiter from the middle of a deque: quadratic when thousands wait, as they do under a
    flood of calls. Waiters here are served first come, first served.
    """

    __slots__ = ("_waiters", "free")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled waiter is skipped
                waiter.set_result(None)
                return
        self.free += 1
