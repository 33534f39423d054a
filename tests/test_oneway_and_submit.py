"""One-way calls and ``protobind.submit`` (asynchronous request/response), through every transport
(docs/messaging.md).

Nothing here is timed: "the call returns at once" is shown by a handler that waits for an event
only the test sets, after the call has returned; a caller that waited for the handler would never
get there (and the bounded wait fails the test instead).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request
from protobind.conformance.v1.conformance_protobind import (
    CONFORMANCE_SERVICE_NOTIFY,
    ConformanceServiceClient,
)

from .conformance import Conformance
from .servers import TRANSPORTS

#: Transports whose one-way call is a message nobody answers: errors before the handler are
#: logged by the server instead of reaching the caller.
UNANSWERED = {"nats", "memory", "amqp", "mqtt", "kafka"}


async def test_oneway_returns_before_the_handler_finishes(
    client: ConformanceServiceClient, served: tuple[str, Conformance]
) -> None:
    _, service = served
    assert await asyncio.wait_for(client.notify(Request(text="gate-1")), 20) is None
    await service.until(lambda: "gate-1" in service.entered)
    assert service.notified == []  # the handler is still waiting for the gate
    service.gate.set()
    await service.until(lambda: "gate-1" in service.notified)


async def test_oneway_caller_does_not_wait_for_a_slow_handler(
    client: ConformanceServiceClient, served: tuple[str, Conformance]
) -> None:
    _, service = served
    await asyncio.wait_for(client.notify(Request(text="slow", behavior=Behavior(sleep_ms=5000))), 20)
    await asyncio.wait_for(client.notify(Request(text="quick")), 20)
    await service.until(lambda: "quick" in service.notified)
    assert "slow" in service.entered and "slow" not in service.notified


async def test_oneway_handler_errors_are_logged_not_sent(
    client: ConformanceServiceClient, served: tuple[str, Conformance], caplog: pytest.LogCaptureFixture
) -> None:
    _, service = served
    caplog.set_level(logging.WARNING, logger="protobind")
    failing = Behavior(error_code=int(Code.FAILED_PRECONDITION), error_message="no stock")
    assert await client.notify(Request(text="fails", behavior=failing)) is None
    assert await client.notify(Request(text="raises", behavior=Behavior(raise_exception=True))) is None
    await service.until(lambda: {"fails", "raises"} <= set(service.notified))
    await _until_logged(caplog, lambda text: "FAILED_PRECONDITION: no stock" in text)
    await _until_logged(caplog, lambda text: "hunter2" in text)
    # the server goes on serving
    assert (await client.unary(Request(text="after"))).text == "after"


async def _until_logged(caplog: pytest.LogCaptureFixture, found: Callable[[str], bool]) -> None:
    # the handler's task logs right after it records the call: give it a few turns of the loop
    for _ in range(200):
        if any(found(record.getMessage() + str(record.exc_info)) for record in caplog.records):
            return
        await asyncio.sleep(0.01)
    raise AssertionError([r.getMessage() for r in caplog.records])


async def test_many_calls_started_from_one_task_and_collected_later(
    client: ConformanceServiceClient, served: tuple[str, Conformance]
) -> None:
    _, service = served
    handles = [protobind.submit(client.unary, Request(text=f"gate-{i}"), timeout=30) for i in range(8)]
    # every call reached a handler while none has answered: they run at once, from this one task
    await service.until(lambda: len(service.entered) == 8)
    assert not any(handle.done() for handle in handles)
    service.gate.set()
    replies = [reply.text for reply in await asyncio.gather(*handles)]
    assert replies == [f"gate-{i}" for i in range(8)]


async def test_started_call_reports_its_error_and_can_be_cancelled(
    client: ConformanceServiceClient, served: tuple[str, Conformance]
) -> None:
    _, service = served
    failing = protobind.submit(
        client.unary, Request(behavior=Behavior(error_code=int(Code.NOT_FOUND), error_message="gone"))
    )
    with pytest.raises(RpcError) as info:
        await failing
    assert info.value.code is Code.NOT_FOUND
    waiting = protobind.submit(client.unary, Request(text="gate-cancel"))
    await service.until(lambda: "gate-cancel" in service.entered)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    one_way = protobind.submit(client.notify, Request(text="started"))
    assert await one_way is None
    await service.until(lambda: "started" in service.notified)


class _Refuse:
    async def intercept(self, handler: protobind.Handler, request: Any, context: protobind.Context) -> Any:
        if context.metadata.get("x-token") != "ok":
            raise RpcError(Code.UNAUTHENTICATED, "who are you?")
        return await handler(request, context)


async def test_interceptors_see_oneway_calls_and_can_refuse_them(
    transport: str, harnesses: dict[str, Callable[[], str]], caplog: pytest.LogCaptureFixture
) -> None:
    service = Conformance()
    server = protobind.Server([service], interceptors=[_Refuse()])
    (url,) = await server.start(harnesses[transport]())
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            await client.notify(Request(text="allowed"), metadata={"x-token": "ok"})
            await service.until(lambda: "allowed" in service.notified)
            if transport in UNANSWERED:
                await client.notify(Request(text="refused"))
                await _until_logged(caplog, lambda text: "UNAUTHENTICATED: who are you?" in text)
            else:
                with pytest.raises(RpcError) as info:
                    await client.notify(Request(text="refused"))
                assert info.value.code is Code.UNAUTHENTICATED
        assert "refused" not in service.entered
    finally:
        await server.stop(grace=1.0)


async def test_stop_drains_oneway_handlers(transport: str, harnesses: dict[str, Callable[[], str]]) -> None:
    service = Conformance()
    server = protobind.Server([service])
    (url,) = await server.start(harnesses[transport]())
    async with protobind.connect(url) as channel:
        await ConformanceServiceClient(channel).notify(Request(text="gate-drain"))
    await service.until(lambda: "gate-drain" in service.entered)
    stopping = asyncio.ensure_future(server.stop(grace=30.0))
    await asyncio.sleep(0.1)
    assert not stopping.done()  # stop() waits for the handler, which waits for the gate
    service.gate.set()
    await asyncio.wait_for(stopping, 30)
    assert service.notified == ["gate-drain"]


async def test_stop_cancels_oneway_handlers_after_the_grace(
    transport: str, harnesses: dict[str, Callable[[], str]]
) -> None:
    service = Conformance()
    server = protobind.Server([service])
    (url,) = await server.start(harnesses[transport]())
    async with protobind.connect(url) as channel:
        long = Request(text="long", behavior=Behavior(sleep_ms=60000))
        await ConformanceServiceClient(channel).notify(long)
    await service.until(lambda: "long" in service.entered)
    await asyncio.wait_for(server.stop(grace=0.2), 30)
    assert service.cancelled == ["long"]


async def test_oneway_burst_then_close_delivers_every_message(
    transport: str, harnesses: dict[str, Callable[[], str]]
) -> None:
    """A one-way call may return before its message left the process (NATS: it is in the
    connection's buffer, as a plain publish is); closing the channel writes what is buffered."""
    service = Conformance()
    server = protobind.Server([service])
    (url,) = await server.start(harnesses[transport]())
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            await asyncio.gather(*(client.notify(Request(text=f"burst-{i}")) for i in range(500)))
        # the channel is closed: every message had to be written before that
        await service.until(lambda: len([t for t in service.notified if t.startswith("burst-")]) == 500)
        assert sorted(service.notified) == sorted(f"burst-{i}" for i in range(500))
    finally:
        await server.stop(grace=1.0)


def test_generated_oneway_method_is_marked() -> None:
    assert CONFORMANCE_SERVICE_NOTIFY.oneway
    assert not CONFORMANCE_SERVICE_NOTIFY.durable


@pytest.mark.parametrize("acknowledging", [t for t in TRANSPORTS if t not in UNANSWERED])
async def test_oneway_handlers_beyond_max_oneway_wait_before_acknowledgement(
    acknowledging: str, harnesses: dict[str, Callable[[], str]]
) -> None:
    service = Conformance()
    server = protobind.Server([service], max_oneway=1)
    (url,) = await server.start(harnesses[acknowledging]())
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            await client.notify(Request(text="gate-first"))
            second = asyncio.ensure_future(client.notify(Request(text="second")))
            await service.until(lambda: "gate-first" in service.entered)
            await asyncio.sleep(0.1)
            assert not second.done()  # no slot: not acknowledged while the first handler runs
            service.gate.set()
            await asyncio.wait_for(second, 20)
            await service.until(lambda: service.notified == ["gate-first", "second"])
    finally:
        await server.stop(grace=1.0)


async def test_start_is_a_deprecated_alias_of_submit() -> None:
    async def answer(value: int) -> int:
        return value

    with pytest.warns(DeprecationWarning, match="protobind.submit"):
        task = protobind.start(answer, 7)
    assert await task == 7
