"""``SyncChannel`` and ``connect_sync()``: the blocking client, for scripts, WSGI views and notebooks.

A :class:`SyncChannel` owns one event loop running in a daemon thread and an ordinary
:class:`~protobind.Channel` opened on that loop. A blocking call hands the Channel's coroutine to
the loop and waits for it, so transports, interceptors, deadlines, metadata and errors behave
exactly as in async code: nothing about a call is implemented a second time here.

- Any number of threads may call one SyncChannel at once; their calls run concurrently on its loop.
- Server and bidi streaming return an iterator. One task on the loop reads the response stream,
  at most one message ahead of the consumer (so it waits on the network while the consumer works).
- Client and bidi streaming take any iterable of requests. A list or tuple is passed to the
  Channel as it is; any other iterable (a generator that waits on a ``queue.Queue``, say) is read
  in a daemon thread, one item each time the transport asks for one, so it never blocks the loop.
  (An iterable that blocks for ever after its call has ended keeps that thread.)
- Cancellation: an exception while a call waits (``KeyboardInterrupt`` from Ctrl-C) cancels the call,
  and so does closing a response iterator before its end (``break`` out of the ``for`` loop, or
  ``.close()``); the server sees the cancellation as it does an async caller's.
- :meth:`SyncChannel.close` cancels calls still in flight, closes the connection, stops the loop
  and joins its thread. A closed SyncChannel stays closed (calls raise ``RuntimeError``).

Client interceptors are the ordinary async ones; they run on the channel's loop thread, in a copy
of the calling thread's ``contextvars`` context (so the caller's current OpenTelemetry span is the
parent of the call's span, as in async code).
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from ._client import Channel
from ._context import CallInfo
from ._errors import Code, RpcError
from ._interceptors import ClientInterceptor
from ._metadata import MetadataLike
from .method import MethodInfo
from .telemetry import Telemetry, TelemetryOption

__all__ = ["LoopStopped", "LoopThread", "SyncChannel", "connect_sync"]

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)
T = TypeVar("T")

_thread_names = itertools.count(1)


class LoopThread:
    """An asyncio event loop running in a daemon thread, until :meth:`stop`.

    :meth:`run` runs a coroutine on it and waits; :meth:`submit` runs one and returns a future. Once
    :meth:`stop` has begun, both raise :class:`LoopStopped`; a lock orders them, so every accepted
    coroutine is a task by the time ``stop`` cancels what is left.
    """

    def __init__(self, name: str = "protobind-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-{next(_thread_names)}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread (where waiting on the loop would deadlock)."""
        return threading.get_ident() == self._thread.ident

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; the returned future resolves in the calling thread."""
        with self._lock:
            if self._stopping:
                coro.close()
                raise LoopStopped("the event loop thread is stopped")
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it in the calling thread. An exception while waiting
        (``KeyboardInterrupt``) cancels it; a cancelled ``coro`` raises ``asyncio.CancelledError``."""
        # Cheaper than run_coroutine_threadsafe(...).result(): a bare lock instead of a
        # concurrent.futures.Future and its Condition (see the sync-* pairs in benchmarks/).
        call = _BlockingCall(coro)
        # The handing over is inside the try: a KeyboardInterrupt can arrive in it, after the loop
        # has started the call (and the server has seen it), and must cancel the call as well.
        try:
            if not self.call_soon(call.start):
                coro.close()
                raise LoopStopped("the event loop thread is stopped")
            call.done.acquire()
        except BaseException:
            self.call_soon(call.cancel)
            raise
        assert call.task is not None
        return call.task.result()

    def call_soon(self, callback: Any, *args: Any) -> bool:
        """Run ``callback(*args)`` on the loop; False (and nothing runs) once stopping has begun.

        The callback runs in a copy of the calling thread's ``contextvars`` context (asyncio copies
        it when the callback is scheduled), and so does a task it starts."""
        with self._lock:
            if self._stopping:
                return False
            self.loop.call_soon_threadsafe(callback, *args)
            return True

    def stop(self, last: Coroutine[Any, Any, object] | None = None) -> None:
        """Cancel the tasks still running, await ``last`` (a cleanup), stop the loop, join the thread."""
        if self.in_loop_thread():
            raise RuntimeError("a LoopThread cannot be stopped from its own thread")
        with self._lock:
            if self._stopping:
                if last is not None:
                    last.close()
                return
            self._stopping = True
            done = asyncio.run_coroutine_threadsafe(_shutdown(self.loop, last), self.loop)
        try:
            done.result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()


class LoopStopped(RuntimeError):
    """The :class:`LoopThread` is stopping or stopped and takes no more work."""


class _BlockingCall(Generic[T]):
    __slots__ = ("coro", "done", "task")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.task: asyncio.Task[T] | None = None

    def start(self) -> None:  # on the loop
        self.task = asyncio.ensure_future(self.coro)
        self.task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[T]) -> None:
        self.done.release()

    def cancel(self) -> None:  # on the loop, after start() if start() was scheduled at all
        if self.task is not None:
            self.task.cancel()
        else:  # interrupted before start() was scheduled: it never runs the coroutine
            self.coro.close()


async def _shutdown(loop: asyncio.AbstractEventLoop, last: Coroutine[Any, Any, object] | None) -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        if last is not None:
            await last
    finally:
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()


class SyncChannel:
    """A blocking connection to one server URL, shared by any number of generated ``...SyncClient``\\ s.

    Same URLs, options and interceptors as :func:`protobind.connect`, and the same four call shapes
    as :class:`protobind.Channel`, blocking. Use it as a context manager
    (``with protobind.connect_sync(url) as channel``) or call :meth:`close` when done. It connects
    on first use if not opened explicitly. Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        interceptors: Sequence[ClientInterceptor] = (),
        options: Mapping[str, Any] | None = None,
        telemetry: TelemetryOption = None,
    ) -> None:
        self.url = url
        self.interceptors = tuple(interceptors)
        self._options = dict(options or {})
        self._telemetry = Telemetry.from_option(telemetry)
        self._lock = threading.Lock()
        self._channel = self._new_channel()  # checks the URL and the options now, as connect() does
        self._state: tuple[LoopThread, Channel] | None = None
        self._closed = False

    def _new_channel(self) -> Channel:
        return Channel(
            self.url, interceptors=self.interceptors, options=self._options, telemetry=self._telemetry
        )

    def _started(self) -> tuple[LoopThread, Channel]:
        state = self._state
        if state is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError("this SyncChannel is closed")
                state = self._state
                if state is None:
                    state = self._state = (LoopThread("protobind-sync"), self._channel)
        if state[0].in_loop_thread():
            raise RuntimeError(
                "a blocking SyncChannel call from its own event loop thread (an interceptor?) would deadlock"
            )
        return state

    def _wait(self, runner: LoopThread, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return runner.run(coro)
        except asyncio.CancelledError:
            raise RpcError(Code.CANCELLED, "call cancelled: the SyncChannel was closed") from None
        except LoopStopped:
            raise RuntimeError("this SyncChannel is closed") from None

    def open(self) -> SyncChannel:
        """Connect now (otherwise the first call connects)."""
        runner, channel = self._started()
        try:
            self._wait(runner, channel.open())
        except BaseException:
            self._stop(closed=False)  # no thread left behind; a later call may try again
            raise
        return self

    def close(self) -> None:
        """Cancel calls in flight, close the connection, stop the loop and its thread."""
        self._stop(closed=True)

    def _stop(self, *, closed: bool) -> None:
        with self._lock:
            self._closed = self._closed or closed
            state, self._state = self._state, None
            if state is not None and not self._closed:
                self._channel = self._new_channel()  # the next loop gets a Channel of its own
        if state is not None:
            runner, channel = state
            runner.stop(channel.close())

    def __enter__(self) -> SyncChannel:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the four call shapes, as on Channel ----------------------------------------------------

    def unary(
        self,
        method: MethodInfo[ReqT, RespT],
        request: ReqT,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> RespT:
        """Call a unary method and wait for its response (generated clients do this for you)."""
        runner, channel = self._started()
        return self._wait(runner, channel.unary(method, request, timeout, metadata, call))

    def server_stream(
        self,
        method: MethodInfo[ReqT, RespT],
        request: ReqT,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Iterator[RespT]:
        """Call a server-streaming method; iterate the responses (the call starts on the first ``next``)."""
        runner, channel = self._started()
        return _iterate(runner, channel.server_stream(method, request, timeout, metadata, call))

    def client_stream(
        self,
        method: MethodInfo[ReqT, RespT],
        requests: Iterable[ReqT],
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> RespT:
        """Call a client-streaming method with any iterable of requests; wait for the response."""
        runner, channel = self._started()
        return self._wait(runner, channel.client_stream(method, _feed(requests), timeout, metadata, call))

    def bidi_stream(
        self,
        method: MethodInfo[ReqT, RespT],
        requests: Iterable[ReqT],
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Iterator[RespT]:
        """Call a bidirectional-streaming method; iterate the responses while the requests are sent."""
        runner, channel = self._started()
        return _iterate(runner, channel.bidi_stream(method, _feed(requests), timeout, metadata, call))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._state is not None else "not started"
        return f"<SyncChannel {self.url.partition(':')[0]}:// {state}>"  # no credentials from the URL


# --- streams ------------------------------------------------------------------------------------

_ITEM, _END, _ERROR = range(3)


class _Pump:
    """One task on the loop reading a response stream into ``out``, at most one message ahead of
    the consumer, which calls :meth:`taken` (on the loop) for each message it takes."""

    def __init__(self, responses: AsyncIterator[Any]) -> None:
        self._responses = responses
        self.out: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._taken = asyncio.Semaphore(0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:  # on the loop
        self._task = asyncio.ensure_future(self._run())
        self._task.add_done_callback(self._finished)

    def taken(self) -> None:  # on the loop
        self._taken.release()

    def cancel(self) -> None:  # on the loop, after start() if start() was scheduled at all
        if self._task is not None:
            self._task.cancel()
        else:  # interrupted before start() was scheduled: the last word is said here
            self.out.put((_ERROR, None))

    async def _run(self) -> None:
        responses = self._responses
        try:
            async for response in responses:
                self.out.put((_ITEM, response))
                await self._taken.acquire()
        finally:
            # Ends the call when the consumer went away: the transport cancels it on the server.
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    def _finished(self, task: asyncio.Task[None]) -> None:
        # The last word always comes from here, also for a task cancelled before it started.
        if task.cancelled():
            self.out.put((_ERROR, None))
        elif (exc := task.exception()) is not None:
            self.out.put((_ERROR, exc))
        else:
            self.out.put((_END, None))


def _iterate(runner: LoopThread, responses: AsyncIterator[RespT]) -> Iterator[RespT]:
    pump = _Pump(responses)
    finished = False
    # The handing over is inside the try, as in LoopThread.run: an interrupt in it cancels the call.
    try:
        if not runner.call_soon(pump.start):
            raise RuntimeError("this SyncChannel is closed")
        while True:
            kind, value = pump.out.get()
            if kind == _ITEM:
                runner.call_soon(pump.taken)  # refused once the channel closes; its shutdown ends the pump
                yield value
                continue
            finished = True
            if kind == _END:
                return
            if value is None:
                raise RpcError(Code.CANCELLED, "call cancelled: the SyncChannel was closed")
            raise value
    finally:
        if not finished and runner.call_soon(pump.cancel) and not runner.in_loop_thread():
            # Wait until the call has ended, so the server has been told when close() returns.
            while pump.out.get()[0] == _ITEM:
                pass


def _feed(requests: Iterable[T]) -> Iterable[T] | AsyncIterator[T]:
    if isinstance(requests, (list, tuple)):
        return requests  # iterating these never blocks the loop
    return _read_in_thread(requests)


async def _read_in_thread(requests: Iterable[T]) -> AsyncIterator[T]:
    """Read a blocking iterable in a daemon thread, one item each time the transport asks."""
    loop = asyncio.get_running_loop()
    demand = threading.Semaphore(0)  # one release per item wanted; the reader never reads ahead
    stopped = False
    waiter: asyncio.Future[tuple[int, Any]] = loop.create_future()  # replaced before each item

    def deliver(future: asyncio.Future[tuple[int, Any]], outcome: tuple[int, Any]) -> None:
        if not future.done():
            future.set_result(outcome)

    def read() -> None:
        iterator = iter(requests)
        while True:
            demand.acquire()
            if stopped:
                return
            outcome: tuple[int, Any]
            try:
                outcome = (_ITEM, next(iterator))
            except StopIteration:
                outcome = (_END, None)
            except BaseException as exc:  # the caller's iterable failed: fail the call with it
                outcome = (_ERROR, exc)
            try:
                loop.call_soon_threadsafe(deliver, waiter, outcome)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                return
            if outcome[0] != _ITEM:
                return

    thread = threading.Thread(target=read, name="protobind-sync-requests", daemon=True)
    thread.start()
    try:
        while True:
            waiter = loop.create_future()
            demand.release()
            kind, value = await waiter
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stopped = True
        demand.release()


def connect_sync(
    url: str,
    *,
    interceptors: Sequence[ClientInterceptor] = (),
    options: Mapping[str, Any] | None = None,
    telemetry: TelemetryOption = None,
) -> SyncChannel:
    """A :class:`SyncChannel` to ``url``: :func:`protobind.connect` for blocking code, with the same
    parameters. Use it as ``with protobind.connect_sync(url) as channel:``."""
    return SyncChannel(url, interceptors=interceptors, options=options, telemetry=telemetry)
