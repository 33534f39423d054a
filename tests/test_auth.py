"""protobind.auth on every transport: UNAUTHENTICATED without a valid token, PERMISSION_DENIED for a
valid token outside its methods; also guarding gRPC health and reflection and /openapi.json."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import httpx
import pytest

import protobind
from protobind import Code, RpcError
from protobind._metadata import Metadata
from protobind.auth import OPENAPI_METHOD, BearerAuth, BearerToken
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import SERVICE, Conformance
from .servers import TRANSPORTS

AUTH = BearerAuth(
    {
        "admin-token": ["*"],
        "reader-token": [f"{SERVICE}/Lookup", "grpc.health.v1.Health/*"],
    }
)


@pytest.fixture(params=TRANSPORTS)
async def guarded(
    request: pytest.FixtureRequest, harnesses: dict[str, Callable[[], str]]
) -> AsyncIterator[str]:
    server = protobind.Server([Conformance()], interceptors=[AUTH])
    (url,) = await server.start(harnesses[str(request.param)]())
    try:
        yield url
    finally:
        await server.stop(1.0)


async def _call(url: str, token: str | None, method: str = "unary") -> str:
    interceptors = [BearerToken(token)] if token else []
    async with protobind.connect(url, interceptors=interceptors) as channel:
        client = ConformanceServiceClient(channel)
        try:
            reply = await getattr(client, method)(Request(text="hi"), timeout=10)
        except RpcError as error:
            return error.code.name
        return str(reply.text)


async def test_tokens_are_checked_the_same_on_every_transport(guarded: str) -> None:
    assert await _call(guarded, None) == "UNAUTHENTICATED"
    assert await _call(guarded, "wrong-token") == "UNAUTHENTICATED"
    assert await _call(guarded, "admin-token-but-longer") == "UNAUTHENTICATED"
    assert await _call(guarded, "admin-token") == "hi"
    assert await _call(guarded, "reader-token", "lookup") == "hi"
    assert await _call(guarded, "reader-token", "unary") == "PERMISSION_DENIED"


def test_authorize_reads_scheme_and_header() -> None:
    assert AUTH.authorize(Metadata({"authorization": "Bearer admin-token"}), f"{SERVICE}/Unary") is None
    assert AUTH.authorize(Metadata({"authorization": "bearer admin-token"}), f"{SERVICE}/Unary") is None
    basic = AUTH.authorize(Metadata({"authorization": "Basic admin-token"}), f"{SERVICE}/Unary")
    assert basic is not None and basic.code is Code.UNAUTHENTICATED
    keys = BearerAuth(["k1"], header="x-api-key", scheme=None, public=["grpc.health.v1.Health/*"])
    assert keys.authorize(Metadata({"x-api-key": "k1"}), "a.B/C") is None
    assert keys.authorize(Metadata(), "grpc.health.v1.Health/Check") is None
    refused = keys.authorize(Metadata({"x-api-key": "k2"}), "a.B/C")
    assert refused is not None and refused.code is Code.UNAUTHENTICATED
    assert "k1" not in repr(keys) and "secret" not in repr(BearerToken("secret"))
    with pytest.raises(ValueError):
        BearerAuth([])


@pytest.mark.usefixtures("grpc_engine")
async def test_grpc_health_and_reflection_are_guarded() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = protobind.Server([Conformance()], interceptors=[AUTH])
    (url,) = await server.start("grpc://127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(url.removeprefix("grpc://")) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED
            reader = (("authorization", "Bearer reader-token"),)
            ok = await health.Check(health_pb2.HealthCheckRequest(), timeout=5, metadata=reader)
            assert ok.status == health_pb2.HealthCheckResponse.SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            refusals = ((None, grpc.StatusCode.UNAUTHENTICATED), (reader, grpc.StatusCode.PERMISSION_DENIED))
            for metadata, code in refusals:
                # The call's own status: reading the responses races grpcio's request sender, which
                # may report its write after the server's refusal as "Internal error from Core".
                refused = reflection.ServerReflectionInfo(iter([ask]), timeout=5, metadata=metadata)
                assert await refused.code() is code
            admin = (("authorization", "Bearer admin-token"),)
            info = reflection.ServerReflectionInfo(iter([ask]), timeout=5, metadata=admin)
            answers = [answer async for answer in info]
            assert SERVICE in [s.name for s in answers[0].list_services_response.service]
    finally:
        await server.stop(0)


async def test_openapi_document_is_guarded() -> None:
    auth = BearerAuth({"admin": ["*"], "caller": [f"{SERVICE}/*"]})
    server = protobind.Server([Conformance()], interceptors=[auth])
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            denied = await client.get("/openapi.json")
            assert denied.status_code == 401 and denied.json()["code"] == "unauthenticated"
            caller = await client.get("/openapi.json", headers={"authorization": "Bearer caller"})
            assert caller.status_code == 403, OPENAPI_METHOD
            ok = await client.get("/openapi.json", headers={"authorization": "Bearer admin"})
            assert ok.status_code == 200 and ok.json()["openapi"].startswith("3.1")
            unauthenticated = await client.post(f"/{SERVICE}/Unary", json={})
            assert unauthenticated.status_code == 401
            assert unauthenticated.headers["www-authenticate"] == "Bearer"
    finally:
        await server.stop(0)
