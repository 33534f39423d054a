"""The behaviour suite: protobind's own client against protobind's server on every registered
transport (servers.py starts one per test), run again through a gateway by test_gateway.py.

Split with the conformance matrix (test_conformance_matrix.py) by purpose, though many calls are
alike: the matrix checks the runner users run (``python -m protobind.testing.conformance``: every
client pairing, foreign clients included, the documented unsupported cells) in one slow test; this
suite gives each behaviour on each transport a test of its own, which fails by name, sees the
server's log, and is the suite test_gateway.py reruns through a gateway. One-way calls and
``protobind.submit`` are in test_oneway_and_submit.py, the blocking client in test_sync.py.
"""

from __future__ import annotations

import asyncio

import pytest
from google.rpc import error_details_pb2

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request

from .servers import GRPC_GRPCIO, TRANSPORTS
from .support import eventually


@pytest.fixture
def handler_transport(transport: str) -> str:
    """The transport the handler sees (test_gateway.py runs this suite through a gateway)."""
    return "grpc" if transport == GRPC_GRPCIO else transport


@pytest.fixture(params=[*TRANSPORTS, GRPC_GRPCIO])
def transport(request: pytest.FixtureRequest) -> str:
    """Every transport, and grpc:// on its grpcio engine too."""
    return str(request.param)


async def test_unary_roundtrip(client, handler_transport):  # type: ignore[no-untyped-def]
    reply = await client.unary(Request(text="hello", payload=b"\x00\x01", number=2**40))
    assert reply.text == "hello"
    assert reply.payload == b"\x00\x01"
    assert reply.number == 2**40
    assert reply.transport == handler_transport
    assert reply.method == "protobind.conformance.v1.ConformanceService/Unary"
    assert reply.time_remaining == -1.0


async def test_metadata_headers_trailers(client):  # type: ignore[no-untyped-def]
    call = protobind.CallInfo()
    reply = await client.unary(Request(text="m"), metadata={"x-user": "ada", "x-echo-a": "1"}, call=call)
    assert reply.metadata["x-user"] == "ada"
    assert call.headers["x-echo-a-header"] == "1"
    assert call.trailers["x-echo-a-trailer"] == "1"


@pytest.mark.parametrize("code", [c for c in Code if c is not Code.OK])
async def test_every_code_roundtrips(client, code):  # type: ignore[no-untyped-def]
    behavior = Behavior(error_code=int(code), error_message=f"failed with {code.name}")
    with pytest.raises(RpcError) as info:
        await client.unary(Request(behavior=behavior))
    assert info.value.code is code
    assert info.value.message == f"failed with {code.name}"


async def test_error_details(client):  # type: ignore[no-untyped-def]
    behavior = Behavior(error_code=int(Code.NOT_FOUND), error_message="nope", error_detail_reason="MISSING")
    with pytest.raises(RpcError) as info:
        await client.unary(Request(behavior=behavior))
    (detail,) = info.value.details
    assert isinstance(detail, error_details_pb2.ErrorInfo)
    assert detail.reason == "MISSING"
    assert detail.metadata["k"] == "v"


async def test_exception_is_internal_without_leaking(client, caplog):  # type: ignore[no-untyped-def]
    with pytest.raises(RpcError) as info:
        await client.unary(Request(behavior=Behavior(raise_exception=True)))
    assert info.value.code is Code.INTERNAL
    assert "hunter2" not in info.value.message
    assert "ValueError" not in info.value.message
    assert any("hunter2" in str(r.exc_info) for r in caplog.records if r.exc_info)


async def test_deadline_reaches_handler(client):  # type: ignore[no-untyped-def]
    reply = await client.unary(Request(text="d"), timeout=5.0)
    assert 3.0 < reply.time_remaining <= 5.0


async def test_deadline_exceeded_cancels_handler(client, served):  # type: ignore[no-untyped-def]
    _, service = served
    with pytest.raises(RpcError) as info:
        await client.unary(Request(text="slow", behavior=Behavior(sleep_ms=5000)), timeout=0.2)
    assert info.value.code is Code.DEADLINE_EXCEEDED
    assert info.value.message == "deadline exceeded"  # the same words on every transport
    assert await eventually(lambda: "slow" in service.cancelled)
    # the server keeps serving
    assert (await client.unary(Request(text="after"))).text == "after"


async def test_client_cancel_cancels_handler(client, served):  # type: ignore[no-untyped-def]
    _, service = served
    task = asyncio.ensure_future(client.unary(Request(text="cancel-me", behavior=Behavior(sleep_ms=5000))))
    await asyncio.wait_for(service.started.wait(), 5)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await eventually(lambda: "cancel-me" in service.cancelled)


async def test_server_stream(client):  # type: ignore[no-untyped-def]
    replies = [r async for r in client.server_stream(Request(text="s", behavior=Behavior(stream_count=5)))]
    assert [r.index for r in replies] == [0, 1, 2, 3, 4]


async def test_server_stream_error_mid_stream(client):  # type: ignore[no-untyped-def]
    behavior = Behavior(stream_count=5, error_after=2, error_code=int(Code.ABORTED), error_message="mid")
    seen = []
    with pytest.raises(RpcError) as info:
        async for reply in client.server_stream(Request(behavior=behavior)):
            seen.append(reply.index)
    assert seen == [0, 1]
    assert info.value.code is Code.ABORTED
    assert info.value.message == "mid"


async def test_server_stream_trailers(client):  # type: ignore[no-untyped-def]
    call = protobind.CallInfo()
    replies = [
        r
        async for r in client.server_stream(
            Request(behavior=Behavior(stream_count=2)), metadata={"x-echo-s": "v"}, call=call
        )
    ]
    assert len(replies) == 2
    assert call.headers["x-echo-s-header"] == "v"
    assert call.trailers["x-echo-s-trailer"] == "v"


async def test_server_stream_deadline(client):  # type: ignore[no-untyped-def]
    behavior = Behavior(stream_count=100, sleep_ms=50)
    with pytest.raises(RpcError) as info:
        async for _ in client.server_stream(Request(behavior=behavior), timeout=0.3):
            pass
    assert info.value.code is Code.DEADLINE_EXCEEDED
    assert info.value.message == "deadline exceeded"


async def test_client_stream(client):  # type: ignore[no-untyped-def]
    reply = await client.client_stream([Request(text=str(i)) for i in range(4)])
    assert reply.request_count == 4
    assert reply.text == "0,1,2,3"


async def test_client_stream_async_iterable(client):  # type: ignore[no-untyped-def]
    async def requests():  # type: ignore[no-untyped-def]
        for i in range(3):
            await asyncio.sleep(0)
            yield Request(text=str(i))

    reply = await client.client_stream(requests())
    assert reply.request_count == 3


async def test_client_stream_error(client):  # type: ignore[no-untyped-def]
    behavior = Behavior(error_code=int(Code.FAILED_PRECONDITION), error_message="bad")
    with pytest.raises(RpcError) as info:
        await client.client_stream([Request(text="a"), Request(text="b", behavior=behavior)])
    assert info.value.code is Code.FAILED_PRECONDITION


async def test_bidi_ping_pong(client, transport):  # type: ignore[no-untyped-def]
    # over http:// the client makes the call over HTTP/2 (full duplex), through the gateway too
    queue: asyncio.Queue[Request | None] = asyncio.Queue()
    await queue.put(Request(text="0"))

    async def requests():  # type: ignore[no-untyped-def]
        while (item := await queue.get()) is not None:
            yield item

    seen = []
    async for reply in client.bidi_stream(requests()):
        seen.append(reply.text)
        await queue.put(Request(text=str(len(seen))) if len(seen) < 4 else None)
    assert seen == ["0", "1", "2", "3"]


#: Brokers that cannot tell that nobody serves a subject (docs/brokers.md): such a call ends at its
#: deadline.
SILENT_BROKERS = frozenset({"mqtt"})


async def test_unimplemented_method(served, transport, handler_transport):  # type: ignore[no-untyped-def]
    from greeter.v1.greeter_pb2 import HelloRequest
    from greeter.v1.greeter_protobind import GreeterClient

    url, _ = served
    silent = bool({transport, handler_transport} & SILENT_BROKERS)
    async with protobind.connect(url) as channel:
        with pytest.raises(RpcError) as info:
            await GreeterClient(channel).say_hello(HelloRequest(name="x"), timeout=1 if silent else 5)
    expected = {Code.UNIMPLEMENTED, Code.UNAVAILABLE} | ({Code.DEADLINE_EXCEEDED} if silent else set())
    assert info.value.code in expected
