"""protobind's own http:// client over HTTP/2 (http/_h2client.py): bidi streams full duplex, flow
control, cancellation (RST_STREAM), deadlines, connection rotation, and a clear error from a server
that speaks HTTP/1.1 only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .servers import serving


class Requests:
    """A request stream the test feeds one message at a time."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue()

    def __aiter__(self) -> Requests:
        return self

    async def __anext__(self) -> Request:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item


async def test_bidi_over_http_is_full_duplex() -> None:
    # each request goes out only after the answer to the one before was read: a client (or server)
    # that waited for the whole request stream would never see the first answer. Bound: 10 s.
    async with serving("http") as (url, _), protobind.connect(url) as channel:
        requests = Requests()
        responses = ConformanceServiceClient(channel).bidi_stream(requests, timeout=10)
        seen = []
        for i in range(5):
            requests.queue.put_nowait(Request(text=f"m{i}"))
            answer = await asyncio.wait_for(anext(responses), 10)
            seen.append((answer.text, answer.index, answer.transport))
        requests.queue.put_nowait(None)
        assert [a async for a in responses] == []
    assert seen == [(f"m{i}", i, "http") for i in range(5)]


async def test_bidi_carries_metadata_errors_and_large_messages() -> None:
    async with serving("http") as (url, _), protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        call = protobind.CallInfo()
        # 3 MiB each way: more than zttp's 64 KiB windows, so both sides wait for credit
        big = Request(text="big", payload=b"p" * (3 << 20), behavior=Behavior(response_size=3 << 20))
        requests = [big, Request(text="x")]
        answers = [a async for a in client.bidi_stream(requests, metadata={"x-echo-a": "1"}, call=call)]
        assert [len(a.payload) for a in answers] == [3 << 20, 0]
        assert call.headers["x-echo-a-header"] == "1" and call.trailers["x-echo-a-trailer"] == "1"
        gone = Behavior(error_code=int(Code.NOT_FOUND), error_message="gone")
        failing = Request(text="boom", behavior=gone)
        with pytest.raises(RpcError) as info:
            async for _ in client.bidi_stream([Request(text="ok"), failing]):
                pass
        assert (info.value.code, info.value.message) == (Code.NOT_FOUND, "gone")


async def test_bidi_deadline_reaches_the_server_and_the_caller() -> None:
    async with serving("http") as (url, service), protobind.connect(url) as channel:
        slow = Request(text="slow", behavior=Behavior(sleep_ms=30_000))
        with pytest.raises(RpcError) as info:
            async for _ in ConformanceServiceClient(channel).bidi_stream([slow], timeout=0.5):
                pass
        assert info.value.code is Code.DEADLINE_EXCEEDED
        await service.until(lambda: "slow" in service.cancelled, 10)


async def test_abandoned_bidi_is_reset_and_frees_the_servers_slot() -> None:
    # the caller's task is cancelled while the handler waits for its next request: the client resets
    # the stream (RST_STREAM CANCEL), the server ends the handler, and with max_concurrency=1 (no
    # queue) the next call gets the freed slot. Without the reset, the handler would wait for
    # requests forever and every later call would be refused with RESOURCE_EXHAUSTED.
    async with (
        serving("http", max_concurrency=1, max_pending=0) as (url, _),
        protobind.connect(url) as channel,
    ):
        client = ConformanceServiceClient(channel)
        requests = Requests()
        first = asyncio.Event()

        async def caller() -> None:
            async for _ in client.bidi_stream(requests):
                first.set()

        task = asyncio.create_task(caller())
        requests.queue.put_nowait(Request(text="first"))
        await asyncio.wait_for(first.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(10):
            while True:
                try:
                    answers = [a.text async for a in client.bidi_stream([Request(text="again")])]
                    break
                except RpcError as exc:
                    assert exc.code is Code.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.01)
        assert answers == ["again"]


async def test_failing_request_stream_is_the_callers_error() -> None:
    async def requests() -> AsyncIterator[Request]:
        yield Request(text="one")
        raise LookupError("the caller's own bug")

    async with serving("http") as (url, _), protobind.connect(url) as channel:
        with pytest.raises(LookupError):
            async for _ in ConformanceServiceClient(channel).bidi_stream(requests(), timeout=10):
                pass


async def test_many_streams_move_to_fresh_connections() -> None:
    # 8 callers, 3,200 bidi calls in all, never idle: the server would retire a connection after
    # 3,072 streams with a GOAWAY, on which h2 drops the calls in flight; the client moves new calls
    # to a fresh connection after 1,000 streams, so no call fails. Bound: 120 s.
    async with serving("http") as (url, _), protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)

        async def worker(n: int) -> None:
            for i in range(400):
                answers = [a.text async for a in client.bidi_stream([Request(text=f"{n}:{i}")], timeout=30)]
                assert answers == [f"{n}:{i}"]

        await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(8))), 120)


async def test_every_stream_kind_over_http2_when_asked() -> None:
    async with serving("http") as (url, _), protobind.connect(url, options={"http2": "streams"}) as channel:
        client = ConformanceServiceClient(channel)
        answers = [a.index async for a in client.server_stream(Request(behavior=Behavior(stream_count=3)))]
        assert answers == [0, 1, 2]
        assert (await client.client_stream([Request(text="a"), Request(text="b")])).request_count == 2


async def test_bidi_against_an_http1_only_server_says_why() -> None:
    async with serving("http", http_parser="h11") as (url, _), protobind.connect(url) as channel:
        with pytest.raises(RpcError) as info:
            async for _ in ConformanceServiceClient(channel).bidi_stream([Request(text="x")], timeout=10):
                pass
    assert info.value.code is Code.UNAVAILABLE
    assert "does not speak HTTP/2" in info.value.message


async def test_http2_off_refuses_bidi_without_sending() -> None:
    async with serving("http") as (url, _), protobind.connect(url, options={"http2": "off"}) as channel:
        with pytest.raises(RpcError) as info:
            async for _ in ConformanceServiceClient(channel).bidi_stream([Request(text="x")]):
                pass
    assert info.value.code is Code.UNIMPLEMENTED
    with pytest.raises(ValueError, match="http2"):
        async with protobind.connect("http://127.0.0.1:1", options={"http2": "maybe"}):
            pass


async def test_streams_in_flight_finish_after_a_goaway(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server retires a busy connection with GOAWAY NO_ERROR naming the largest stream id (here
    # at its second stream instead of its 3,072nd): every stream it took may finish. The client
    # that ran on the `h2` package took any GOAWAY as the end of the connection and failed both
    # calls in flight; now they finish, and the next call goes on a fresh connection.
    from protobind.http import _h2drain as h2drain

    monkeypatch.setattr(h2drain, "FORCE_DRAIN_AFTER", 2)
    async with serving("http") as (url, _), protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        requests = Requests()
        responses = client.bidi_stream(requests, timeout=10)
        requests.queue.put_nowait(Request(text="a"))
        assert (await asyncio.wait_for(anext(responses), 10)).text == "a"
        # the connection's second stream: the server sends its GOAWAY on taking it
        assert [a.text async for a in client.bidi_stream([Request(text="b")], timeout=10)] == ["b"]
        requests.queue.put_nowait(Request(text="c"))
        assert (await asyncio.wait_for(anext(responses), 10)).text == "c"
        requests.queue.put_nowait(None)
        assert [a async for a in responses] == []
        assert [a.text async for a in client.bidi_stream([Request(text="d")], timeout=10)] == ["d"]


async def test_a_request_body_can_go_with_its_headers() -> None:
    # start(..., body, end=True): HEADERS and DATA in one write, as far as the server's window
    # allows (zttp's is 64 KiB); the rest of a larger body follows as the window opens
    from urllib.parse import urlsplit

    from protobind.http._h2client import H2Connection

    async with serving("http") as (url, _):
        parts = urlsplit(url)
        connection = await H2Connection.open(parts.hostname or "", parts.port or 0, None, None, url)
        try:
            headers = [("content-type", "application/proto"), ("connect-protocol-version", "1")]
            for size in (10, 200_000):
                body = Request(text="one", payload=b"p" * size).SerializeToString()
                path = f"{urlsplit(url).path}/protobind.conformance.v1.ConformanceService/Unary"
                stream = connection.start(path, headers, body, True)
                status, _ = await asyncio.wait_for(stream.response(), 10)
                answer = Response.FromString(await asyncio.wait_for(stream.read_all(1 << 24), 10))
                stream.done()
                assert (status, answer.text, len(answer.payload)) == (200, "one", size)
            assert connection.idle
        finally:
            await connection.close()


async def test_responses_come_in_frames_as_large_as_the_client_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    # the client takes frames of up to 64 KiB (SETTINGS_MAX_FRAME_SIZE, HTTP/2's default being
    # 16 KiB): a response of 40 kB comes in one DATA frame, a larger one in frames of 64 KiB
    from urllib.parse import urlsplit

    from protobind.http import _h2client
    from protobind.http._h2client import H2Connection

    frames: list[int] = []
    on_data = H2Connection.on_data

    def counted(self: H2Connection, stream_id: int, data: bytes, end: bool) -> None:
        if data:
            frames.append(len(data))
        on_data(self, stream_id, data, end)

    monkeypatch.setattr(H2Connection, "on_data", counted)
    async with serving("http") as (url, _):
        parts = urlsplit(url)
        connection = await H2Connection.open(parts.hostname or "", parts.port or 0, None, None, url)
        try:
            headers = [("content-type", "application/proto"), ("connect-protocol-version", "1")]
            path = f"{parts.path}/protobind.conformance.v1.ConformanceService/Unary"
            for size in (40_000, 200_000):
                frames.clear()
                body = Request(behavior=Behavior(response_size=size)).SerializeToString()
                stream = connection.start(path, headers, body, True)
                status, _ = await asyncio.wait_for(stream.response(), 10)
                answer = Response.FromString(await asyncio.wait_for(stream.read_all(1 << 24), 10))
                stream.done()
                assert (status, len(answer.payload)) == (200, size)
                assert max(frames) == min(_h2client.MAX_FRAME, sum(frames)), frames
        finally:
            await connection.close()
