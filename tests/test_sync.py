"""The blocking client (``connect_sync`` / ``SyncChannel`` / ``{Service}SyncClient``) on every transport.

These tests are plain blocking code, as the users of the sync client write it: the server runs on
an event loop in another thread (``served_in_thread``).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from google.rpc import error_details_pb2

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request
from protobind.conformance.v1.conformance_protobind import (
    ConformanceServiceClient,
    ConformanceServiceSyncClient,
)
from protobind.sync import LoopThread, _iterate

from .conformance import Conformance
from .servers import TRANSPORTS
from .support import eventually_blocking

CROSS_THREAD_TRANSPORTS = TRANSPORTS


@pytest.fixture(params=CROSS_THREAD_TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def channel(served_in_thread: tuple[str, Conformance]) -> Iterator[protobind.SyncChannel]:
    url, _ = served_in_thread
    with protobind.connect_sync(url) as channel:
        yield channel


@pytest.fixture
def sync_client(channel: protobind.SyncChannel) -> ConformanceServiceSyncClient:
    return ConformanceServiceSyncClient(channel)


@pytest.fixture
def service(served_in_thread: tuple[str, Conformance]) -> Conformance:
    return served_in_thread[1]


def test_unary(sync_client: ConformanceServiceSyncClient, transport: str) -> None:
    reply = sync_client.unary(Request(text="hello", payload=b"\x00\x01", number=2**40), timeout=5.0)
    assert (reply.text, reply.payload, reply.number) == ("hello", b"\x00\x01", 2**40)
    assert reply.transport == transport
    assert reply.method == "protobind.conformance.v1.ConformanceService/Unary"
    assert 3.0 < reply.time_remaining <= 5.0


def test_metadata_headers_trailers(sync_client: ConformanceServiceSyncClient) -> None:
    call = protobind.CallInfo()
    reply = sync_client.unary(Request(text="m"), metadata={"x-user": "ada", "x-echo-a": "1"}, call=call)
    assert reply.metadata["x-user"] == "ada"
    assert call.headers["x-echo-a-header"] == "1"
    assert call.trailers["x-echo-a-trailer"] == "1"


def test_error_with_details(sync_client: ConformanceServiceSyncClient) -> None:
    behavior = Behavior(error_code=int(Code.NOT_FOUND), error_message="nope", error_detail_reason="MISSING")
    call = protobind.CallInfo()
    with pytest.raises(RpcError) as info:
        sync_client.unary(Request(behavior=behavior), metadata={"x-echo-e": "v"}, call=call)
    assert info.value.code is Code.NOT_FOUND
    assert info.value.message == "nope"
    (detail,) = info.value.details
    assert isinstance(detail, error_details_pb2.ErrorInfo)
    assert detail.reason == "MISSING"
    assert call.trailers["x-echo-e-trailer"] == "v"


def test_wrong_request_type_is_refused(sync_client: ConformanceServiceSyncClient) -> None:
    with pytest.raises(TypeError, match=r"takes protobind\.conformance\.v1\.Request"):
        sync_client.unary(Behavior())  # type: ignore[arg-type]


def test_deadline_exceeded_cancels_handler(
    sync_client: ConformanceServiceSyncClient, service: Conformance
) -> None:
    with pytest.raises(RpcError) as info:
        sync_client.unary(Request(text="slow", behavior=Behavior(sleep_ms=5000)), timeout=0.2)
    assert info.value.code is Code.DEADLINE_EXCEEDED
    assert eventually_blocking(lambda: "slow" in service.cancelled)
    assert sync_client.unary(Request(text="after")).text == "after"


def test_oneway_returns_none_before_the_handler_finishes(
    sync_client: ConformanceServiceSyncClient, service: Conformance
) -> None:
    assert sync_client.notify(Request(text="sleepy", behavior=Behavior(sleep_ms=5000))) is None
    assert eventually_blocking(lambda: "sleepy" in service.entered)
    assert "sleepy" not in service.notified  # still sleeping: the call did not wait for it


def test_keyboard_interrupt_cancels_call(
    sync_client: ConformanceServiceSyncClient, service: Conformance
) -> None:
    """Ctrl-C while a call waits: the call is cancelled on the server, the interrupt reaches the caller."""
    main = threading.get_ident()

    def interrupt() -> None:
        if eventually_blocking(service.started.is_set):
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            sync_client.unary(Request(text="interrupted", behavior=Behavior(sleep_ms=10_000)), timeout=30)
    finally:
        interrupter.join()
    assert eventually_blocking(lambda: "interrupted" in service.cancelled)
    assert sync_client.unary(Request(text="after")).text == "after"


def _interrupt_first_hand_over(runner: LoopThread, entered: threading.Event | None) -> Callable[..., Any]:
    """A stand-in for ``runner.loop.call_soon_threadsafe`` whose first use raises KeyboardInterrupt:
    after handing the callback over and waiting for ``entered`` (the call runs on the loop), or
    without handing it over when ``entered`` is None. Later uses hand over as usual."""
    hand_over = runner.loop.call_soon_threadsafe
    interrupted = False

    def interrupt_once(callback: Any, *args: Any) -> Any:
        nonlocal interrupted
        if interrupted:
            return hand_over(callback, *args)
        interrupted = True
        if entered is not None:
            hand_over(callback, *args)
            assert entered.wait(30)
        raise KeyboardInterrupt

    return interrupt_once


@pytest.mark.parametrize("moment", ["before", "after"])
def test_an_interrupt_while_a_call_is_handed_to_the_loop_cancels_it(moment: str) -> None:
    """Ctrl-C may arrive while ``run`` hands the call to the loop, before its wait begins: on a
    loaded machine the call had reached the server by then, and was left running (the keyboard
    interrupt test waited for its cancellation in vain). The interrupt is raised here as the
    handing over ends: once the call runs on the loop, or before it was scheduled."""
    runner = LoopThread("test-interrupted")
    entered, cancelled = threading.Event(), threading.Event()
    interrupt_once = _interrupt_first_hand_over(runner, entered if moment == "after" else None)

    async def call() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    coro = call()
    try:
        runner.loop.call_soon_threadsafe = interrupt_once  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            runner.run(coro)
        assert runner.run(asyncio.sleep(0, "later")) == "later"  # the loop still takes calls
        if moment == "after":
            assert cancelled.wait(30)
        else:
            assert not entered.is_set()
            assert coro.cr_frame is None  # closed: no "never awaited" warning
    finally:
        runner.stop()


def test_an_interrupt_while_a_stream_is_handed_to_the_loop_cancels_it() -> None:
    """The same for a response stream: Ctrl-C once the stream runs on the loop, before the first
    ``next`` waits, ends it (its iterator is closed, as the transport's is for the server)."""
    runner = LoopThread("test-interrupted")
    entered, closed = threading.Event(), threading.Event()
    interrupt_once = _interrupt_first_hand_over(runner, entered)

    async def responses() -> AsyncIterator[int]:
        entered.set()
        try:
            yield 1
            await asyncio.sleep(30)
        finally:
            closed.set()

    try:
        runner.loop.call_soon_threadsafe = interrupt_once  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            next(_iterate(runner, responses()))
        assert closed.wait(30)
    finally:
        runner.stop()


def test_server_stream(sync_client: ConformanceServiceSyncClient) -> None:
    call = protobind.CallInfo()
    replies = sync_client.server_stream(
        Request(text="s", behavior=Behavior(stream_count=5)), metadata={"x-echo-s": "v"}, call=call
    )
    assert isinstance(replies, Iterator)
    assert [r.index for r in replies] == [0, 1, 2, 3, 4]
    assert call.headers["x-echo-s-header"] == "v"
    assert call.trailers["x-echo-s-trailer"] == "v"


def test_server_stream_error_mid_stream(sync_client: ConformanceServiceSyncClient) -> None:
    behavior = Behavior(
        stream_count=5,
        error_after=2,
        error_code=int(Code.ABORTED),
        error_message="mid",
        error_detail_reason="R",
    )
    seen = []
    with pytest.raises(RpcError) as info:
        for reply in sync_client.server_stream(Request(behavior=behavior)):
            seen.append(reply.index)
    assert seen == [0, 1]
    assert (info.value.code, info.value.message) == (Code.ABORTED, "mid")
    assert info.value.details[0].reason == "R"  # type: ignore[attr-defined]


def test_server_stream_deadline(sync_client: ConformanceServiceSyncClient) -> None:
    with pytest.raises(RpcError) as info:
        for _ in sync_client.server_stream(
            Request(behavior=Behavior(stream_count=100, sleep_ms=50)), timeout=0.3
        ):
            pass
    assert info.value.code is Code.DEADLINE_EXCEEDED


def test_closing_a_stream_early_cancels_handler(
    sync_client: ConformanceServiceSyncClient, service: Conformance
) -> None:
    replies = sync_client.server_stream(
        Request(text="early", behavior=Behavior(stream_count=1000, sleep_ms=100))
    )
    assert [next(replies).index, next(replies).index] == [0, 1]
    replies.close()  # what ``break`` out of a for loop does once the iterator is dropped
    assert eventually_blocking(lambda: "early" in service.cancelled)
    assert sync_client.unary(Request(text="after")).text == "after"


def test_client_stream(sync_client: ConformanceServiceSyncClient) -> None:
    reply = sync_client.client_stream([Request(text=str(i)) for i in range(4)])
    assert (reply.request_count, reply.text) == (4, "0,1,2,3")

    def generated() -> Iterator[Request]:
        for i in range(3):
            yield Request(text=f"g{i}")

    call = protobind.CallInfo()
    reply = sync_client.client_stream(generated(), metadata={"x-echo-c": "v"}, call=call)
    assert (reply.request_count, reply.text) == (3, "g0,g1,g2")
    assert call.trailers["x-echo-c-trailer"] == "v"


def test_client_stream_errors(sync_client: ConformanceServiceSyncClient, transport: str) -> None:
    bad = Behavior(error_code=int(Code.FAILED_PRECONDITION), error_message="bad")
    with pytest.raises(RpcError) as info:
        sync_client.client_stream(iter([Request(text="a"), Request(text="b", behavior=bad)]))
    assert info.value.code is Code.FAILED_PRECONDITION

    def failing() -> Iterator[Request]:
        yield Request(text="a")
        raise LookupError("the caller's own iterable failed")

    # The caller's exception ends the call; inproc runs the handler in the caller's task, so there
    # the handler meets it first and the caller gets INTERNAL (as from an async sync_client).
    with pytest.raises(RpcError if transport == "inproc" else LookupError):
        sync_client.client_stream(failing(), timeout=5)
    assert sync_client.unary(Request(text="after")).text == "after"


def test_bidi_ping_pong(sync_client: ConformanceServiceSyncClient, transport: str) -> None:
    """Requests from a generator that blocks on a queue the response loop fills."""
    pending: queue.Queue[Request | None] = queue.Queue()
    pending.put(Request(text="0"))

    def requests() -> Iterator[Request]:
        while (item := pending.get()) is not None:
            yield item

    seen = []
    for reply in sync_client.bidi_stream(requests(), timeout=10):
        seen.append(reply.text)
        pending.put(Request(text=str(len(seen))) if len(seen) < 4 else None)
    assert seen == ["0", "1", "2", "3"]
    bad = Behavior(error_code=int(Code.OUT_OF_RANGE), error_message="too far")
    with pytest.raises(RpcError) as info:
        list(sync_client.bidi_stream([Request(text="a"), Request(behavior=bad)]))
    assert info.value.code is Code.OUT_OF_RANGE


def test_many_threads(sync_client: ConformanceServiceSyncClient) -> None:
    """8 threads x 50 calls (unary, server and sync_client streaming) through one channel at once."""

    def calls(worker: int) -> list[str]:
        texts = [sync_client.unary(Request(text=f"{worker}-{i}"), timeout=30).text for i in range(48)]
        texts += [
            r.text
            for r in sync_client.server_stream(
                Request(text=f"{worker}-s", behavior=Behavior(stream_count=1)), timeout=30
            )
        ]
        texts.append(
            sync_client.client_stream((Request(text=f"{worker}-c") for _ in range(2)), timeout=30).text
        )
        return texts

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(calls, range(8)))
    assert results == [[f"{w}-{i}" for i in range(48)] + [f"{w}-s", f"{w}-c,{w}-c"] for w in range(8)]


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def test_close_stops_threads_and_loop(served_in_thread: tuple[str, Conformance], transport: str) -> None:
    url, _ = served_in_thread
    before = _threads()
    channel = protobind.connect_sync(url)
    client = ConformanceServiceSyncClient(channel)
    assert client.unary(Request(text="x")).text == "x"
    assert client.client_stream(Request(text=str(i)) for i in range(3)).request_count == 3
    assert eventually_blocking(lambda: len(_threads() - before) == 1)  # the loop thread; the reader has ended
    stream = client.server_stream(Request(behavior=Behavior(stream_count=1000, sleep_ms=50)))
    assert next(stream).index == 0
    channel.close()  # with a call in flight: it is cancelled
    with pytest.raises(RpcError) as info:
        for _ in stream:  # a message that arrived before close() may still come out first
            pass
    assert info.value.code is Code.CANCELLED
    assert _threads() - before == set()  # (threads of earlier tests may have ended meanwhile)
    with pytest.raises(RuntimeError, match="closed"):
        client.unary(Request())
    channel.close()  # closing twice is harmless
    assert "closed" in repr(channel)


def test_channel_used_from_another_event_loop(served_in_thread: tuple[str, Conformance]) -> None:
    """An async Channel belongs to the loop that opened it: the same clear error on every transport
    (before, gRPC said "Event loop is closed", HTTP "Session is closed", and NATS hung)."""
    url, _ = served_in_thread
    channel = protobind.connect(url)
    client = ConformanceServiceClient(channel)

    async def call() -> str:
        return (await client.unary(Request(text="loop"), timeout=5)).text

    async def stream() -> list[int]:
        return [r.index async for r in client.server_stream(Request(behavior=Behavior(stream_count=1)))]

    async def call_then_close() -> str:
        try:
            return await call()
        finally:
            await channel.close()

    first = asyncio.new_event_loop()  # as a first asyncio.run() would, minus closing the loop
    try:
        assert first.run_until_complete(call()) == "loop"
        for again in (call, stream):
            with pytest.raises(RuntimeError, match="opened on another event loop"):
                asyncio.run(again())  # type: ignore[arg-type]
        first.run_until_complete(channel.close())
    finally:
        first.close()
    assert asyncio.run(call_then_close()) == "loop"  # closed, it may be opened in another loop
    owner = LoopThread("test-owner")  # the owning loop runs in another thread: close() goes there
    try:
        assert owner.submit(call()).result() == "loop"
        with pytest.raises(RuntimeError, match="opened on another event loop"):
            asyncio.run(call())
        asyncio.run(channel.close())
        assert asyncio.run(call_then_close()) == "loop"
    finally:
        owner.stop()


def test_blocking_call_from_the_channels_own_loop_is_refused(
    served_in_thread: tuple[str, Conformance],
) -> None:
    url, _ = served_in_thread
    holder: list[ConformanceServiceSyncClient] = []

    class CallsBack:
        async def intercept(self, invoker: protobind.Invoker, request: Any, call: protobind.CallInfo) -> Any:
            holder[0].unary(Request(text="inner"))
            return await invoker(request, call)

    with protobind.connect_sync(url, interceptors=[CallsBack()]) as channel:
        holder.append(ConformanceServiceSyncClient(channel))
        with pytest.raises(RuntimeError, match="deadlock"):
            holder[0].unary(Request(text="outer"))


def test_connect_sync_checks_the_url() -> None:
    with pytest.raises(ValueError, match="scheme must be one of"):
        protobind.connect_sync("ftp://127.0.0.1:1")


_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="unset")


class CallerToMetadata:
    """A client interceptor that reads a context variable the calling thread set."""

    async def intercept(self, invoker: protobind.Invoker, request: Any, call: protobind.CallInfo) -> Any:
        call.metadata["x-caller"] = _caller.get()
        return await invoker(request, call)


def test_the_callers_context_reaches_interceptors(served_in_thread: tuple[str, Conformance]) -> None:
    url, _ = served_in_thread
    with protobind.connect_sync(url, interceptors=[CallerToMetadata()]) as channel:
        client = ConformanceServiceSyncClient(channel)
        token = _caller.set("thread-a")
        try:
            assert client.unary(Request()).metadata["x-caller"] == "thread-a"
            replies = client.server_stream(Request(behavior=Behavior(stream_count=1)))
            assert [r.metadata["x-caller"] for r in replies] == ["thread-a"]
        finally:
            _caller.reset(token)
        assert client.unary(Request()).metadata["x-caller"] == "unset"


def test_client_spans_are_children_of_the_callers_span(served_in_thread: tuple[str, Conformance]) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    url, _ = served_in_thread
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = protobind.Telemetry(tracer_provider=provider, metrics=False)
    try:
        with protobind.connect_sync(url, telemetry=telemetry) as channel:
            client = ConformanceServiceSyncClient(channel)
            with provider.get_tracer("test").start_as_current_span("root") as root:
                client.unary(Request())
                assert len(list(client.server_stream(Request(behavior=Behavior(stream_count=2))))) == 2
        spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
        assert sorted(s.name.rpartition("/")[2] for s in spans) == ["ServerStream", "Unary"]
        for span in spans:
            assert span.parent is not None and span.parent.span_id == root.get_span_context().span_id
    finally:
        provider.shutdown()
