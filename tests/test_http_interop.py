"""Interop with a Connect implementation nobody here wrote: the PyPI `connectrpc` package.

Its stubs for the conformance service are generated in a temporary directory by its own protoc
plugin (`protoc-gen-connectrpc`, option `protobuf=google` so both sides share google.protobuf
message classes). Then the `connectrpc` client calls a protobind HTTP server, and the protobind
client calls a `connectrpc` ASGI app served by uvicorn.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.rpc import error_details_pb2

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import Conformance
from .servers import serve_asgi
from .support import ROOT, eventually

connectrpc = pytest.importorskip("connectrpc")
uvicorn = pytest.importorskip("uvicorn")

from connectrpc.client import ResponseMetadata  # noqa: E402
from connectrpc.code import Code as ConnectCode  # noqa: E402
from connectrpc.compat import google_protobuf_json_codec  # noqa: E402
from connectrpc.errors import ConnectError  # noqa: E402


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    plugin = shutil.which("protoc-gen-connectrpc", path=str(Path(sys.executable).parent)) or shutil.which(
        "protoc-gen-connectrpc"
    )
    if plugin is None:
        pytest.skip("protoc-gen-connectrpc is not installed (pip install protoc-gen-connectrpc)")
    import grpc_tools

    out = tmp_path_factory.mktemp("connectrpc_stubs")
    include = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'idl'}",
            f"-I{include}",
            f"--plugin=protoc-gen-connectrpc={plugin}",
            f"--connectrpc_out={out}",
            "--connectrpc_opt=protobuf=google",
            "protobind/conformance/v1/conformance.proto",
        ],
        check=True,
        cwd=ROOT / "idl",
    )
    # Load it beside protobind's own conformance_pb2, which its relative import then finds.
    name = "protobind.conformance.v1.conformance_connect"
    spec = importlib.util.spec_from_file_location(
        name, out / "protobind" / "conformance" / "v1" / "conformance_connect.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- connectrpc client -> protobind server ---------------------------------------------------------


@pytest.fixture
async def protobind_url() -> AsyncIterator[tuple[str, Conformance]]:
    service = Conformance()
    server = protobind.Server([service])
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        yield url, service
    finally:
        await server.stop(grace=1.0)


@pytest.fixture(params=["proto", "json"])
async def connect_client(
    request: pytest.FixtureRequest, stubs: ModuleType, protobind_url: tuple[str, Conformance]
) -> AsyncIterator[Any]:
    url, _ = protobind_url
    kwargs = {"codec": google_protobuf_json_codec()} if request.param == "json" else {}
    # default settings otherwise: the client gzips its requests, which the server must accept
    async with stubs.ConformanceServiceClient(url, **kwargs) as client:
        yield client


async def test_connectrpc_unary(connect_client: Any) -> None:
    reply = await connect_client.unary(Request(text="hello", payload=b"\x00\x01", number=2**40))
    assert (reply.text, reply.payload, reply.number) == ("hello", b"\x00\x01", 2**40)
    assert reply.transport == "http"
    assert reply.method == "protobind.conformance.v1.ConformanceService/Unary"


async def test_connectrpc_headers_trailers_timeout(connect_client: Any) -> None:
    with ResponseMetadata() as meta:
        reply = await connect_client.unary(
            Request(text="m"), headers={"x-user": "ada", "x-echo-a": "1"}, timeout_ms=5000
        )
    assert reply.metadata["x-user"] == "ada"
    assert 3.0 < reply.time_remaining <= 5.0
    assert meta.headers["x-echo-a-header"] == "1"
    assert meta.trailers["x-echo-a-trailer"] == "1"


async def test_connectrpc_get(connect_client: Any) -> None:
    reply = await connect_client.lookup(Request(text="via get"), use_get=True)
    assert reply.text == "via get"
    assert reply.method.endswith("/Lookup")


async def test_connectrpc_error_with_details(connect_client: Any) -> None:
    behavior = Behavior(error_code=int(Code.NOT_FOUND), error_message="nope", error_detail_reason="MISSING")
    with pytest.raises(ConnectError) as info:
        await connect_client.unary(Request(behavior=behavior))
    assert info.value.code is ConnectCode.NOT_FOUND
    assert info.value.message == "nope"
    (detail,) = info.value.details
    assert detail.type_name == "google.rpc.ErrorInfo"
    assert error_details_pb2.ErrorInfo.FromString(detail.message_bytes).reason == "MISSING"


@pytest.mark.parametrize("code", [c for c in Code if c is not Code.OK])
async def test_connectrpc_sees_every_code(
    stubs: ModuleType, protobind_url: tuple[str, Conformance], code: Code
) -> None:
    url, _ = protobind_url
    async with stubs.ConformanceServiceClient(url) as client:
        with pytest.raises(ConnectError) as info:
            await client.unary(Request(behavior=Behavior(error_code=int(code), error_message="m")))
    assert info.value.code.value == code.connect_name


async def test_connectrpc_internal_error_does_not_leak(connect_client: Any) -> None:
    with pytest.raises(ConnectError) as info:
        await connect_client.unary(Request(behavior=Behavior(raise_exception=True)))
    assert info.value.code is ConnectCode.INTERNAL
    assert "hunter2" not in info.value.message


async def test_connectrpc_deadline(connect_client: Any, protobind_url: tuple[str, Conformance]) -> None:
    _, service = protobind_url
    with pytest.raises(ConnectError) as info:
        await connect_client.unary(Request(text="slow", behavior=Behavior(sleep_ms=5000)), timeout_ms=200)
    assert info.value.code is ConnectCode.DEADLINE_EXCEEDED
    assert await eventually(lambda: "slow" in service.cancelled)


async def test_connectrpc_server_stream(connect_client: Any) -> None:
    with ResponseMetadata() as meta:
        replies = [
            r
            async for r in connect_client.server_stream(
                Request(behavior=Behavior(stream_count=4)), headers={"x-echo-s": "v"}
            )
        ]
    assert [r.index for r in replies] == [0, 1, 2, 3]
    assert meta.headers["x-echo-s-header"] == "v"
    assert meta.trailers["x-echo-s-trailer"] == "v"


async def test_connectrpc_server_stream_error(connect_client: Any) -> None:
    behavior = Behavior(stream_count=5, error_after=2, error_code=int(Code.ABORTED), error_message="mid")
    seen = []
    with pytest.raises(ConnectError) as info:
        async for reply in connect_client.server_stream(Request(behavior=behavior)):
            seen.append(reply.index)
    assert seen == [0, 1]
    assert info.value.code is ConnectCode.ABORTED
    assert info.value.message == "mid"


async def test_connectrpc_client_stream(connect_client: Any) -> None:
    async def requests() -> AsyncIterator[Request]:
        for text in ("a", "b", "c"):
            yield Request(text=text)

    reply = await connect_client.client_stream(requests())
    assert (reply.text, reply.request_count) == ("a,b,c", 3)


async def test_connectrpc_bidi_is_unimplemented(connect_client: Any) -> None:
    async def requests() -> AsyncIterator[Request]:
        yield Request(text="x")

    with pytest.raises(ConnectError) as info:
        async for _ in connect_client.bidi_stream(requests()):
            pass
    assert info.value.code is ConnectCode.UNIMPLEMENTED


# --- protobind client -> connectrpc server ---------------------------------------------------------


def _connect_service(stubs: ModuleType) -> Any:
    from protobuf.wkt import Any as ConnectAny

    def fail(request: Request) -> None:
        behavior = request.behavior
        if behavior.error_code:
            details = []
            if behavior.error_detail_reason:
                info = error_details_pb2.ErrorInfo(reason=behavior.error_detail_reason, domain="connectrpc")
                details.append(
                    ConnectAny(
                        type_url="type.googleapis.com/google.rpc.ErrorInfo", value=info.SerializeToString()
                    )
                )
            code = ConnectCode(Code(behavior.error_code).connect_name)
            raise ConnectError(code, behavior.error_message, details)

    def reply(request: Request, ctx: Any, **fields: Any) -> Response:
        for key, value in ctx.request_headers.items():
            if key.startswith("x-echo-"):
                ctx.response_headers[key + "-header"] = value
                ctx.response_trailers[key + "-trailer"] = value
        timeout = ctx.timeout_ms
        return Response(
            text=request.text,
            payload=request.payload,
            number=request.number,
            metadata={k: v for k, v in ctx.request_headers.items() if k.startswith("x-")},
            time_remaining=-1.0 if timeout is None else timeout / 1000,
            transport="connectrpc",
            **fields,
        )

    class Service(stubs.ConformanceService):  # type: ignore[misc,name-defined]
        async def unary(self, request: Request, ctx: Any) -> Response:
            if request.behavior.sleep_ms:
                await asyncio.sleep(request.behavior.sleep_ms / 1000)
            fail(request)
            return reply(request, ctx)

        async def lookup(self, request: Request, ctx: Any) -> Response:
            return await self.unary(request, ctx)

        async def server_stream(self, request: Request, ctx: Any) -> AsyncIterator[Response]:
            for index in range(request.behavior.stream_count):
                if request.behavior.error_after and index == request.behavior.error_after:
                    fail(request)
                yield reply(request, ctx, index=index)

        async def client_stream(self, requests: AsyncIterator[Request], ctx: Any) -> Response:
            texts = [request.text async for request in requests]
            return reply(Request(text=",".join(texts)), ctx, request_count=len(texts))

    return Service()


@pytest.fixture
async def connectrpc_url(stubs: ModuleType) -> AsyncIterator[str]:
    app = stubs.ConformanceServiceASGIApplication(_connect_service(stubs))
    url, stop = await serve_asgi(app, log_level=None, log_config=None, access_log=False)
    try:
        yield url
    finally:
        await stop()


@pytest.fixture(params=["proto", "json"])
async def pb_client(
    request: pytest.FixtureRequest, connectrpc_url: str
) -> AsyncIterator[ConformanceServiceClient]:
    async with protobind.connect(connectrpc_url, options={"codec": request.param}) as channel:
        yield ConformanceServiceClient(channel)


async def test_protobind_unary_to_connectrpc(pb_client: ConformanceServiceClient) -> None:
    call = protobind.CallInfo()
    reply = await pb_client.unary(
        Request(text="hi", payload=b"\xff", number=-7), metadata={"x-echo-a": "1", "x-user": "ada"}, call=call
    )
    assert (reply.text, reply.payload, reply.number, reply.transport) == ("hi", b"\xff", -7, "connectrpc")
    assert reply.metadata["x-user"] == "ada"
    assert call.headers["x-echo-a-header"] == "1"
    assert call.trailers["x-echo-a-trailer"] == "1"


async def test_protobind_timeout_reaches_connectrpc(pb_client: ConformanceServiceClient) -> None:
    reply = await pb_client.unary(Request(), timeout=5.0)
    assert 3.0 < reply.time_remaining <= 5.0
    with pytest.raises(RpcError) as info:
        await pb_client.unary(Request(behavior=Behavior(sleep_ms=5000)), timeout=0.2)
    assert info.value.code is Code.DEADLINE_EXCEEDED


async def test_protobind_sees_connectrpc_errors(pb_client: ConformanceServiceClient) -> None:
    behavior = Behavior(error_code=int(Code.PERMISSION_DENIED), error_message="no", error_detail_reason="WHY")
    with pytest.raises(RpcError) as info:
        await pb_client.unary(Request(behavior=behavior))
    assert info.value.code is Code.PERMISSION_DENIED
    assert info.value.message == "no"
    (detail,) = info.value.details
    assert isinstance(detail, error_details_pb2.ErrorInfo)
    assert (detail.reason, detail.domain) == ("WHY", "connectrpc")


async def test_protobind_server_stream_from_connectrpc(pb_client: ConformanceServiceClient) -> None:
    replies = [r async for r in pb_client.server_stream(Request(behavior=Behavior(stream_count=3)))]
    assert [r.index for r in replies] == [0, 1, 2]
    behavior = Behavior(stream_count=5, error_after=2, error_code=int(Code.DATA_LOSS), error_message="x")
    seen = []
    with pytest.raises(RpcError) as info:
        async for reply in pb_client.server_stream(Request(behavior=behavior)):
            seen.append(reply.index)
    assert seen == [0, 1]
    assert info.value.code is Code.DATA_LOSS


async def test_protobind_client_stream_to_connectrpc(pb_client: ConformanceServiceClient) -> None:
    reply = await pb_client.client_stream([Request(text=t) for t in "xyz"])
    assert (reply.text, reply.request_count) == ("x,y,z", 3)


async def test_protobind_unknown_method_on_connectrpc(connectrpc_url: str) -> None:
    from greeter.v1.greeter_pb2 import HelloRequest
    from greeter.v1.greeter_protobind import GreeterClient

    async with protobind.connect(connectrpc_url) as channel:
        with pytest.raises(RpcError) as info:
            await GreeterClient(channel).say_hello(HelloRequest(name="x"))
    assert info.value.code is Code.UNIMPLEMENTED
