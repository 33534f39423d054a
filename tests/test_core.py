"""The core without a network: codes, errors, metadata, codecs, interceptors, a Server and a channel
over inproc://, the Slots of protobind._aio. What importing protobind gives is in test_public_api.py, the
checks of docs against the code in test_docs.py."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

import protobind
from protobind import Code, Metadata, RpcError
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import Conformance


def test_codes_match_grpc() -> None:
    assert len(Code) == 17
    assert Code.OK == 0 and Code.UNAUTHENTICATED == 16 and Code.DATA_LOSS == 15
    assert Code.CANCELLED.connect_name == "canceled"
    for code in Code:
        assert Code.from_connect_name(code.connect_name) is code
    assert Code.from_number(99) is Code.UNKNOWN
    assert Code.from_connect_name("bogus") is Code.UNKNOWN


def test_code_prints_as_its_name() -> None:
    """``print(err.code)`` shows ``INVALID_ARGUMENT``, as grpcio users expect, not ``3``."""
    code = Code.INVALID_ARGUMENT
    assert str(code) == f"{code}" == format(code) == "%s" % code == "INVALID_ARGUMENT"  # noqa: UP031 (as logging)
    assert f"{code:>18}" == "  INVALID_ARGUMENT"  # a string format spec pads the name
    assert f"{code:d}" == "3" and f"{code:02x}" == "03" and int(code) == 3  # a numeric one: the number
    assert repr(code) == "<Code.INVALID_ARGUMENT: 3>"
    err = RpcError(code, "name is required")
    assert str(err) == "INVALID_ARGUMENT: name is required" and str(RpcError(Code.NOT_FOUND)) == "NOT_FOUND"
    assert repr(err) == "RpcError(INVALID_ARGUMENT, 'name is required', details=0)"


def test_error_status_roundtrip_with_details() -> None:
    info = error_details_pb2.ErrorInfo(reason="R", domain="d")
    unknown = any_pb2.Any(type_url="type.googleapis.com/not.a.Known", value=b"\x01")
    err = RpcError(Code.NOT_FOUND, "missing", [info, unknown])
    back = RpcError.from_status(err.to_status())
    assert back.code is Code.NOT_FOUND and back.message == "missing"
    assert back.details[0] == info
    assert back.details[1] == unknown  # an unknown type stays an Any
    assert str(err) == "NOT_FOUND: missing"


def test_metadata_is_case_insensitive_and_multi_valued() -> None:
    md = Metadata({"X-User": "ada"})
    md.add("x-tag", "a")
    md.add("X-Tag", "b")
    assert md["x-user"] == "ada" and "X-USER" in md
    assert md.get_all("x-tag") == ["a", "b"]
    assert list(md.items()) == [("x-user", "ada"), ("x-tag", "a"), ("x-tag", "b")]
    md["x-tag"] = "c"
    assert md.get_all("X-TAG") == ["c"]
    assert Metadata([("a", "1"), ("A", "2")]).get_all("a") == ["1", "2"]
    assert md == {"x-user": "ada", "x-tag": "c"}


def test_codecs() -> None:
    from protobind.codec import JSON, PROTO, JsonCodec

    msg = Request(text="é", number=2**53 + 1, labels={"k": "v"})
    assert PROTO.decode(PROTO.encode(msg), Request) == msg
    data = JSON.encode(msg)
    assert b'"number":"9007199254740993"' in data  # int64 as a string, proto3 JSON
    assert JSON.decode(data, Request) == msg
    assert JSON.decode(b"", Request) == Request()
    with pytest.raises(RpcError) as info:
        JSON.decode(b'{"nope": 1}', Request)
    assert info.value.code is Code.INVALID_ARGUMENT and "nope" in info.value.message
    assert JsonCodec(ignore_unknown_fields=True).decode(b'{"nope":1,"text":"t"}', Request).text == "t"
    for bad in (b"{", b"\xff\xfe", b'{"number": "x"}', b"[1]"):
        with pytest.raises(RpcError) as info:
            JSON.decode(bad, Request)
        assert info.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(RpcError) as info:
        PROTO.decode(b"\xff\xff\xff", Request)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_codecs_left_the_top_level_with_a_deprecation_path() -> None:
    """``protobind.JSON`` and the other codec names are no longer API (``protobind.__all__``); for
    one release they still resolve, with a warning naming their module."""
    from protobind import codec

    for name in ("JSON", "PROTO", "Codec", "JsonCodec", "ProtoCodec"):
        assert name not in protobind.__all__
        with pytest.warns(
            DeprecationWarning, match=f"protobind.{name} is deprecated: import it from protobind.codec"
        ):
            assert getattr(protobind, name) is getattr(codec, name)
    with pytest.raises(AttributeError):
        protobind.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    # generated code calls it; not API
    assert "check_generated_api" not in protobind.__all__ and callable(protobind.check_generated_api)


class Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def intercept(self, next_: Any, request: Any, ctx: Any) -> Any:
        self.log.append(f"{self.name}>")
        try:
            return await next_(request, ctx)
        finally:
            self.log.append(f"<{self.name}")


class Deny:
    async def intercept(self, next_: Any, request: Any, context: protobind.Context) -> Any:
        if context.metadata.get("authorization") != "Bearer ok":
            raise RpcError(Code.UNAUTHENTICATED, "no token")
        return await next_(request, context)


class AddToken:
    async def intercept(self, next_: Any, request: Any, call: protobind.CallInfo) -> Any:
        call.metadata["authorization"] = "Bearer ok"
        return await next_(request, call)


async def test_interceptors_order_and_auth() -> None:
    log: list[str] = []
    server = protobind.Server(
        [Conformance()], interceptors=[Recorder("s1", log), Recorder("s2", log), Deny()]
    )
    await server.start("inproc://interceptors")
    try:
        async with protobind.connect("inproc://interceptors") as plain:
            with pytest.raises(RpcError) as info:
                await ConformanceServiceClient(plain).unary(Request(text="x"))
            assert info.value.code is Code.UNAUTHENTICATED
        log.clear()
        channel = protobind.connect("inproc://interceptors", interceptors=[Recorder("c1", log), AddToken()])
        async with channel:
            client = ConformanceServiceClient(channel)
            reply = await client.unary(Request(text="x"))
            assert isinstance(reply, Response)
            assert log == ["c1>", "s1>", "s2>", "<s2", "<s1", "<c1"]
            # the same interceptors see streaming calls
            log.clear()
            got = [r async for r in client.server_stream(Request(behavior={"stream_count": 2}))]
            assert len(got) == 2 and log[0] == "c1>" and "s1>" in log
    finally:
        await server.stop()


async def test_server_rejects_non_services_and_duplicates() -> None:
    with pytest.raises(TypeError, match="not a protobind service"):
        protobind.Server([object()])
    with pytest.raises(ValueError, match="registered twice"):
        protobind.Server([Conformance(), Conformance()])


async def test_unknown_scheme_and_unbound_inproc() -> None:
    with pytest.raises(ValueError, match="scheme must be one of"):
        protobind.connect("ftp://x")
    async with protobind.connect("inproc://nobody") as channel:
        with pytest.raises(RpcError) as info:
            await ConformanceServiceClient(channel).unary(Request())
        assert info.value.code is Code.UNAVAILABLE


async def test_graceful_stop_inproc() -> None:
    import asyncio

    service = Conformance()
    server = protobind.Server([service])
    await server.start("inproc://drain")
    async with protobind.connect("inproc://drain") as channel:
        client = ConformanceServiceClient(channel)
        slow = asyncio.ensure_future(client.unary(Request(text="slow", behavior={"sleep_ms": 200})))
        await service.started.wait()
        await server.stop(grace=2.0)
        assert (await slow).text == "slow"  # the in-flight call finished
        with pytest.raises(RpcError) as info:
            await client.unary(Request())
        assert info.value.code is Code.UNAVAILABLE  # new calls are refused


async def test_slots_are_first_come_first_served_and_survive_cancellation() -> None:
    import asyncio

    from protobind._aio import Slots

    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []

    async def take(name: str) -> None:
        await slots.acquire()
        order.append(name)
        slots.release()

    first = asyncio.ensure_future(take("a"))
    gone = asyncio.ensure_future(take("gone"))
    last = asyncio.ensure_future(take("b"))
    await asyncio.sleep(0)
    gone.cancel()
    slots.release()
    await asyncio.gather(first, last)
    assert order == ["a", "b"]
    assert slots.free == 1
