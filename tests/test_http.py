"""The HTTP binding (Connect protocol): raw requests as the docs show them, bad input, CORS,
mounting, TLS, and the protobind client's own behaviour. Interop with the `connectrpc` package is
in test_http_interop.py; the shared behaviour suite runs over http:// in test_behaviour.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import struct
import subprocess
import sys
import textwrap
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from google.rpc import error_details_pb2

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import Conformance
from .support import ROOT, eventually
from .tls import self_signed

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")

SERVICE = "/protobind.conformance.v1.ConformanceService"
JSON_HEADERS = {"content-type": "application/json"}

# SPEC.md section 4, written out again here as the test's own oracle
SPEC_STATUS = {
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


async def _start(
    url: str = "http://127.0.0.1:0", **options: Any
) -> tuple[protobind.Server, str, Conformance]:
    service = Conformance()
    server = protobind.Server([service], transport_options={"http": options})
    (bound,) = await server.start(url)
    return server, bound, service


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[str, Conformance]]:
    server, url, service = await _start()
    try:
        yield url, service
    finally:
        await server.stop(grace=1.0)


@pytest.fixture
async def raw(http_server: tuple[str, Conformance]) -> AsyncIterator[httpx.AsyncClient]:
    url, _ = http_server
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield client


def _envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _envelopes(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        out.append((flags, body[5 : 5 + size]))
        body = body[5 + size :]
    return out


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


# --- the server, driven by plain httpx (no protobind code on the client side) --------------------


async def test_bound_url_reports_real_port(http_server: tuple[str, Conformance]) -> None:
    url, _ = http_server
    assert url.startswith("http://127.0.0.1:")
    assert not url.endswith(":0")


async def test_unary_json(raw: httpx.AsyncClient) -> None:
    response = await raw.post(
        f"{SERVICE}/Unary", json={"text": "hi", "number": "12"}, headers={"x-user": "ada"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["text"] == "hi"
    assert body["number"] == "12"  # int64 is a string in proto3 JSON
    assert body["transport"] == "http"
    assert body["metadata"] == {"x-user": "ada"}


async def test_unary_proto(raw: httpx.AsyncClient) -> None:
    response = await raw.post(
        f"{SERVICE}/Unary",
        content=Request(text="bin", payload=b"\x00\xff").SerializeToString(),
        headers={"content-type": "application/proto", "connect-protocol-version": "1"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"
    reply = Response.FromString(response.content)
    assert (reply.text, reply.payload) == ("bin", b"\x00\xff")


async def test_unary_gzip_request(raw: httpx.AsyncClient) -> None:
    body = gzip.compress(json.dumps({"text": "zipped"}).encode())
    response = await raw.post(
        f"{SERVICE}/Unary", content=body, headers={**JSON_HEADERS, "content-encoding": "gzip"}
    )
    assert response.status_code == 200
    assert response.json()["text"] == "zipped"


async def test_get_json_for_side_effect_free_method(raw: httpx.AsyncClient) -> None:
    params = {"connect": "v1", "encoding": "json", "message": json.dumps({"text": "got it"})}
    response = await raw.get(f"{SERVICE}/Lookup", params=params)
    assert response.status_code == 200
    assert response.json()["text"] == "got it"


async def test_get_base64_proto_and_gzip(raw: httpx.AsyncClient) -> None:
    message = Request(text="b64").SerializeToString()
    params = {
        "encoding": "proto",
        "base64": "1",
        "message": base64.urlsafe_b64encode(message).decode().rstrip("="),
    }
    response = await raw.get(f"{SERVICE}/Lookup", params=params)
    assert response.status_code == 200
    assert Response.FromString(response.content).text == "b64"
    zipped = base64.urlsafe_b64encode(gzip.compress(message)).decode()
    params = {"encoding": "proto", "base64": "1", "compression": "gzip", "message": zipped}
    response = await raw.get(f"{SERVICE}/Lookup", params=params)
    assert Response.FromString(response.content).text == "b64"


async def test_get_refused_for_methods_with_side_effects(raw: httpx.AsyncClient) -> None:
    response = await raw.get(f"{SERVICE}/Unary", params={"encoding": "json", "message": "{}"})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST, OPTIONS"
    assert response.json()["code"] == "unimplemented"
    assert "NO_SIDE_EFFECTS" in response.json()["message"]


async def test_timeout_header_sets_deadline(raw: httpx.AsyncClient) -> None:
    response = await raw.post(f"{SERVICE}/Unary", json={}, headers={"connect-timeout-ms": "5000"})
    assert 3.0 < response.json()["timeRemaining"] <= 5.0
    slow = {"behavior": {"sleepMs": 5000}}
    response = await raw.post(f"{SERVICE}/Unary", json=slow, headers={"connect-timeout-ms": "100"})
    assert response.status_code == 504
    assert response.json()["code"] == "deadline_exceeded"


async def test_headers_and_trailers(raw: httpx.AsyncClient) -> None:
    response = await raw.post(f"{SERVICE}/Unary", json={}, headers={"x-echo-a": "1"})
    assert response.headers["x-echo-a-header"] == "1"
    assert response.headers["trailer-x-echo-a-trailer"] == "1"


class _BinaryEcho:
    """Sends every request ``-bin`` entry back as a header and a trailer, under the same key."""

    async def intercept(self, handler: Any, request: Any, context: protobind.Context) -> Any:
        for key, value in context.metadata.items():
            if key.endswith("-bin"):
                assert isinstance(value, bytes)
                context.set_header(key, value)
                context.set_trailer(key, value)
        context.set_header("x-bad", b"\x00 not text")  # dropped: binary value under a text key
        return await handler(request, context)


async def test_binary_metadata() -> None:
    blob = b"\x00\x01\xfe"
    server = protobind.Server([Conformance()], interceptors=[_BinaryEcho()])
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            headers = {"x-blob-bin": base64.b64encode(blob).decode()}  # padded is accepted too
            response = await client.post(f"{SERVICE}/Unary", json={}, headers=headers)
        assert response.status_code == 200
        # binary values travel as unpadded base64
        assert response.headers["x-blob-bin"] == base64.b64encode(blob).decode().rstrip("=")
        assert _b64decode(response.headers["trailer-x-blob-bin"]) == blob
        assert "x-bad" not in response.headers
        call = protobind.CallInfo()
        async with protobind.connect(url) as channel:
            await ConformanceServiceClient(channel).unary(
                Request(), metadata={"x-k-bin": b"\xff\x00"}, call=call
            )
        assert call.headers["x-k-bin"] == b"\xff\x00"
        assert call.trailers["x-k-bin"] == b"\xff\x00"
    finally:
        await server.stop(0)


async def test_error_body_and_details(raw: httpx.AsyncClient) -> None:
    behavior = {
        "errorCode": int(Code.NOT_FOUND),
        "errorMessage": "no such thing",
        "errorDetailReason": "MISSING",
    }
    response = await raw.post(f"{SERVICE}/Unary", json={"behavior": behavior}, headers={"x-echo-e": "1"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.headers["trailer-x-echo-e-trailer"] == "1"
    body = response.json()
    assert body["code"] == "not_found"
    assert body["message"] == "no such thing"
    (detail,) = body["details"]
    assert detail["type"] == "google.rpc.ErrorInfo"
    assert "=" not in detail["value"]
    info = error_details_pb2.ErrorInfo.FromString(_b64decode(detail["value"]))
    assert info.reason == "MISSING"


@pytest.mark.parametrize("code", list(SPEC_STATUS))
async def test_status_mapping(raw: httpx.AsyncClient, code: Code) -> None:
    response = await raw.post(f"{SERVICE}/Unary", json={"behavior": {"errorCode": int(code)}})
    assert response.status_code == SPEC_STATUS[code]
    assert response.json()["code"] == code.connect_name


async def test_exception_text_never_leaks(raw: httpx.AsyncClient) -> None:
    response = await raw.post(f"{SERVICE}/Unary", json={"behavior": {"raiseException": True}})
    assert response.status_code == 500
    assert response.json() == {"code": "internal", "message": "internal error"}
    assert "hunter2" not in response.text


# --- streaming, raw -------------------------------------------------------------------------------


async def test_server_stream_raw(raw: httpx.AsyncClient) -> None:
    request = json.dumps({"text": "s", "behavior": {"streamCount": 3}}).encode()
    response = await raw.post(
        f"{SERVICE}/ServerStream",
        content=_envelope(request),
        headers={"content-type": "application/connect+json", "x-echo-s": "v"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/connect+json"
    assert response.headers["x-echo-s-header"] == "v"
    frames = _envelopes(response.content)
    assert [flags for flags, _ in frames] == [0, 0, 0, 2]
    assert [json.loads(data).get("index", 0) for _, data in frames[:3]] == [0, 1, 2]
    assert json.loads(frames[-1][1]) == {"metadata": {"x-echo-s-trailer": ["v"]}}


async def test_server_stream_error_in_end_message(raw: httpx.AsyncClient) -> None:
    behavior = Behavior(stream_count=5, error_after=2, error_code=int(Code.ABORTED), error_message="mid")
    response = await raw.post(
        f"{SERVICE}/ServerStream",
        content=_envelope(Request(behavior=behavior).SerializeToString()),
        headers={"content-type": "application/connect+proto"},
    )
    assert response.status_code == 200  # stream errors travel in the end-of-stream message
    frames = _envelopes(response.content)
    assert [Response.FromString(data).index for _, data in frames[:-1]] == [0, 1]
    flags, end = frames[-1]
    assert flags == 2
    assert json.loads(end)["error"] == {"code": "aborted", "message": "mid"}


async def test_client_stream_raw(raw: httpx.AsyncClient) -> None:
    body = b"".join(_envelope(Request(text=t).SerializeToString()) for t in "abc")
    response = await raw.post(
        f"{SERVICE}/ClientStream", content=body, headers={"content-type": "application/connect+proto"}
    )
    frames = _envelopes(response.content)
    assert [flags for flags, _ in frames] == [0, 2]
    reply = Response.FromString(frames[0][1])
    assert (reply.text, reply.request_count) == ("a,b,c", 3)


async def test_client_stream_gzip_envelopes(raw: httpx.AsyncClient) -> None:
    body = b"".join(_envelope(gzip.compress(json.dumps({"text": t}).encode()), 1) for t in "xy")
    response = await raw.post(
        f"{SERVICE}/ClientStream",
        content=body,
        headers={"content-type": "application/connect+json", "connect-content-encoding": "gzip"},
    )
    frames = _envelopes(response.content)
    assert json.loads(frames[0][1])["text"] == "x,y"


async def test_bidi_answers_unimplemented_raw(raw: httpx.AsyncClient) -> None:
    response = await raw.post(
        f"{SERVICE}/BidiStream",
        content=_envelope(b"{}"),
        headers={"content-type": "application/connect+json"},
    )
    assert response.status_code == 200
    ((flags, end),) = _envelopes(response.content)
    assert flags == 2
    error = json.loads(end)["error"]
    assert error["code"] == "unimplemented"
    assert "HTTP/2" in error["message"] and "grpc://" in error["message"]
    # a caller that does not speak Connect streaming gets the same answer as a plain error
    response = await raw.post(f"{SERVICE}/BidiStream", json={})
    assert response.status_code == 501
    assert response.json()["code"] == "unimplemented"


async def test_protobind_client_calls_bidi_over_http2(http_server: tuple[str, Conformance]) -> None:
    # the client switches to HTTP/2 for bidi streams (tests/test_http_client_h2.py has the rest)
    url, _ = http_server
    async with protobind.connect(url) as channel:
        answers = [a.text async for a in ConformanceServiceClient(channel).bidi_stream([Request(text="x")])]
    assert answers == ["x"]


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "invalid JSON for protobind.conformance.v1.Request: not JSON"),
        (b'{"number": "twelve"}', 'invalid JSON for protobind.conformance.v1.Request: field "number"'),
        (b'{"text": 12}', 'field "text": expected a string'),
        (b'{"text": "x", "colour": "red"}', 'unknown field "colour"'),
        (b"\xff\xfe", "UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
async def test_malformed_json_is_invalid_argument(raw: httpx.AsyncClient, body: bytes, fragment: str) -> None:
    response = await raw.post(f"{SERVICE}/Unary", content=body, headers=JSON_HEADERS)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "invalid_argument"
    assert fragment in error["message"]
    assert "Traceback" not in error["message"]
    # the server keeps serving
    assert (await raw.post(f"{SERVICE}/Unary", json={"text": "ok"})).json()["text"] == "ok"


async def test_oneway_is_acknowledged_once_decoded(
    raw: httpx.AsyncClient, http_server: tuple[str, Conformance]
) -> None:
    _, service = http_server
    response = await raw.post(f"{SERVICE}/Notify", json={"text": "gate"})
    assert (response.status_code, response.json()) == (200, {})
    await service.until(lambda: "gate" in service.entered)
    assert service.notified == []  # answered while the handler waits
    service.gate.set()
    await service.until(lambda: service.notified == ["gate"])
    bad = await raw.post(f"{SERVICE}/Notify", content=b'{"text": 12}', headers=JSON_HEADERS)
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_argument")
    proto = await raw.post(
        f"{SERVICE}/Notify", content=b"\xff\xff", headers={"content-type": "application/proto"}
    )
    assert (proto.status_code, proto.json()["code"]) == (400, "invalid_argument")


async def test_malformed_proto_is_invalid_argument(raw: httpx.AsyncClient) -> None:
    response = await raw.post(
        f"{SERVICE}/Unary", content=b"\xff\xff\xff", headers={"content-type": "application/proto"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"


async def test_unknown_fields_accepted_when_configured() -> None:
    server, url, _ = await _start(ignore_unknown_fields="true")
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post(f"{SERVICE}/Unary", json={"text": "x", "colour": "red"})
        assert response.status_code == 200
        assert response.json()["text"] == "x"
    finally:
        await server.stop(0)


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/xml", "application/connect+json"])
async def test_wrong_content_type_is_415(raw: httpx.AsyncClient, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await raw.post(f"{SERVICE}/Unary", content=b"{}", headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.headers["accept-post"]
    assert "unsupported content type" in response.json()["message"]


async def test_streaming_method_with_unary_content_type_is_415(raw: httpx.AsyncClient) -> None:
    response = await raw.post(f"{SERVICE}/ServerStream", json={})
    assert response.status_code == 415
    assert "application/connect+json" in response.json()["message"]


async def test_body_over_limit_is_413() -> None:
    server, url, _ = await _start(max_message_size=1000)
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post(f"{SERVICE}/Unary", json={"text": "x" * 2000})
            assert response.status_code == 413
            assert response.json()["code"] == "resource_exhausted"
            # a gzip bomb is measured after inflating
            bomb = gzip.compress(json.dumps({"text": "y" * 100_000}).encode())
            assert len(bomb) < 1000
            response = await client.post(
                f"{SERVICE}/Unary", content=bomb, headers={**JSON_HEADERS, "content-encoding": "gzip"}
            )
            assert response.json()["code"] == "resource_exhausted"
            # chunked body without Content-Length
            response = await client.post(
                f"{SERVICE}/Unary", content=_chunks([b'{"text": "', b"z" * 2000, b'"}']), headers=JSON_HEADERS
            )
            assert response.status_code == 413
            assert (await client.post(f"{SERVICE}/Unary", json={"text": "fits"})).status_code == 200
        async with protobind.connect(url) as channel:
            with pytest.raises(RpcError) as info:
                await ConformanceServiceClient(channel).unary(Request(text="x" * 2000))
        assert info.value.code is Code.RESOURCE_EXHAUSTED
    finally:
        await server.stop(0)


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize("path", ["/nope.v1.Nothing/Call", f"{SERVICE}/NoSuchMethod", "/", "/favicon.ico"])
async def test_unknown_route_is_404_connect_error(raw: httpx.AsyncClient, path: str) -> None:
    response = await raw.post(path, json={})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "unimplemented"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"connect-timeout-ms": "soon"}, "invalid_argument"),
        ({"connect-timeout-ms": "12345678901"}, "invalid_argument"),
        ({"content-encoding": "br"}, "unimplemented"),
        ({"content-encoding": "gzip"}, "invalid_argument"),  # the body is not gzip
    ],
)
async def test_bad_protocol_headers(raw: httpx.AsyncClient, headers: dict[str, str], code: str) -> None:
    response = await raw.post(f"{SERVICE}/Unary", content=b"{}", headers={**JSON_HEADERS, **headers})
    assert response.json()["code"] == code


async def test_bad_streaming_bodies(raw: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/connect+proto"}
    for body in (b"\x00\x00", _envelope(b"x") + b"\x00", _envelope(b"\xff\xff")):
        response = await raw.post(f"{SERVICE}/ServerStream", content=body, headers=headers)
        (frame,) = _envelopes(response.content)
        assert json.loads(frame[1])["error"]["code"] == "invalid_argument"
    response = await raw.post(f"{SERVICE}/ClientStream", content=_envelope(b"x")[:-1], headers=headers)
    (frame,) = _envelopes(response.content)
    assert json.loads(frame[1])["error"]["code"] == "invalid_argument"


async def test_other_http_methods_are_405(raw: httpx.AsyncClient) -> None:
    response = await raw.request("PUT", f"{SERVICE}/Unary", json={})
    assert response.status_code == 405
    assert response.json()["code"] == "unimplemented"


# --- CORS -------------------------------------------------------------------------------------------


async def test_cors_preflight_and_exposed_headers() -> None:
    server, url, _ = await _start(cors_origins="https://app.example")
    origin = {"origin": "https://app.example"}
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            preflight = await client.options(
                f"{SERVICE}/Unary",
                headers={
                    **origin,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": (
                        "content-type,connect-protocol-version,connect-timeout-ms,x-user"
                    ),
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://app.example"
            assert "POST" in preflight.headers["access-control-allow-methods"]
            allowed = preflight.headers["access-control-allow-headers"].lower()
            for name in ("content-type", "connect-protocol-version", "connect-timeout-ms", "x-user"):
                assert name in allowed
            response = await client.post(f"{SERVICE}/Unary", json={"text": "c"}, headers=origin)
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "https://app.example"
            assert "connect-content-encoding" in response.headers["access-control-expose-headers"].lower()
            other = await client.options(
                f"{SERVICE}/Unary",
                headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
            )
            assert other.status_code == 400
    finally:
        await server.stop(0)


async def test_no_cors_unless_configured(raw: httpx.AsyncClient) -> None:
    response = await raw.post(f"{SERVICE}/Unary", json={}, headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


# --- the ASGI app on its own, prefixes, hooks for REST and OpenAPI --------------------------------


async def test_asgi_app_mounted_in_starlette() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from protobind.http import asgi_app

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    app = Starlette(routes=[Route("/", home), Mount("/rpc", app=asgi_app([Conformance()]))])
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/")).text == "home"
        response = await client.post(f"/rpc{SERVICE}/Unary", json={"text": "mounted"})
        assert response.status_code == 200
        assert response.json()["text"] == "mounted"
        missing = await client.post("/rpc/nope.X/Y", json={})
        assert missing.status_code == 404
        assert missing.json()["code"] == "unimplemented"


async def test_url_prefix() -> None:
    server, url, _ = await _start("http://127.0.0.1:0/api/v1/")
    try:
        assert url.endswith("/api/v1")
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{url}{SERVICE}/Unary", json={"text": "p"})
            assert response.json()["text"] == "p"
            root = url.rsplit("/api/v1", 1)[0]
            assert (await client.post(f"{root}{SERVICE}/Unary", json={})).status_code == 404
        async with protobind.connect(url) as channel:
            assert (await ConformanceServiceClient(channel).unary(Request(text="q"))).text == "q"
        async with protobind.connect(root) as channel:
            with pytest.raises(RpcError) as info:
                await ConformanceServiceClient(channel).unary(Request())
        assert info.value.code is Code.UNIMPLEMENTED
    finally:
        await server.stop(0)


async def test_rest_routes_and_openapi_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    seen: dict[str, Any] = {}

    def rest_routes(server: protobind.Server, *, ignore_unknown_fields: bool, **limits: Any) -> list[Route]:
        seen["ignore_unknown_fields"] = ignore_unknown_fields

        async def hello(request: Any) -> PlainTextResponse:
            return PlainTextResponse("rest")

        return [Route("/v1/hello", hello)]

    def openapi_document(services: list[protobind.ServiceInfo]) -> dict[str, Any]:
        return {"openapi": "3.1.0", "services": [s.name for s in services]}

    monkeypatch.setitem(sys.modules, "protobind.http._rest", types.SimpleNamespace(rest_routes=rest_routes))
    monkeypatch.setitem(
        sys.modules, "protobind.http.openapi", types.SimpleNamespace(openapi_document=openapi_document)
    )
    server, url, _ = await _start(ignore_unknown_fields=True)
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/v1/hello")).text == "rest"
            document = (await client.get("/openapi.json")).json()
            assert document["services"] == ["protobind.conformance.v1.ConformanceService"]
            assert (await client.post(f"{SERVICE}/Unary", json={"text": "still"})).json()["text"] == "still"
        assert seen == {"ignore_unknown_fields": True}
    finally:
        await server.stop(0)


# --- the protobind client ---------------------------------------------------------------------------


class _PeerRecorder:
    def __init__(self) -> None:
        self.peers: list[str] = []

    async def intercept(self, handler: Any, request: Any, context: protobind.Context) -> Any:
        self.peers.append(context.peer)
        return await handler(request, context)


async def test_client_reuses_keep_alive_connections() -> None:
    recorder = _PeerRecorder()
    server = protobind.Server([Conformance()], interceptors=[recorder])
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            for i in range(20):
                assert (await client.unary(Request(text=str(i)))).text == str(i)
            replies = [r async for r in client.server_stream(Request(behavior=Behavior(stream_count=2)))]
            assert len(replies) == 2
            assert (await client.client_stream([Request(text="a")])).text == "a"
        # unary calls go through the client's own pool (http/_h1client.py), streams through aiohttp's:
        # one kept-alive connection each
        assert len(set(recorder.peers[:20])) == 1
        assert len(set(recorder.peers[20:])) == 1
        assert recorder.peers[0].startswith("127.0.0.1:")
    finally:
        await server.stop(0)


@pytest.mark.parametrize("codec", ["json", "proto"])
async def test_client_codecs(http_server: tuple[str, Conformance], codec: str) -> None:
    url, _ = http_server
    async with protobind.connect(f"{url}?codec={codec}") as channel:
        client = ConformanceServiceClient(channel)
        reply = await client.unary(Request(text="c", payload=b"\x00", number=-(2**60)))
        assert (reply.text, reply.payload, reply.number) == ("c", b"\x00", -(2**60))
        replies = [r async for r in client.server_stream(Request(behavior=Behavior(stream_count=3)))]
        assert [r.index for r in replies] == [0, 1, 2]
        reply = await client.client_stream([Request(text="a"), Request(text="b")])
        assert reply.text == "a,b"


async def test_client_stream_request_iterator_error_reaches_caller(
    http_server: tuple[str, Conformance],
) -> None:
    url, _ = http_server

    async def requests() -> AsyncIterator[Request]:
        yield Request(text="a")
        raise KeyError("caller's own bug")

    async with protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        with pytest.raises(KeyError):
            await client.client_stream(requests())
        assert (await client.unary(Request(text="after"))).text == "after"


async def test_client_stops_reading_server_stream_early(http_server: tuple[str, Conformance]) -> None:
    url, service = http_server
    async with protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        stream = client.server_stream(
            Request(text="early", behavior=Behavior(stream_count=1000, sleep_ms=20))
        )
        async for reply in stream:
            if reply.index == 2:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        assert await eventually(lambda: "early" in service.cancelled)
        assert (await client.unary(Request(text="next"))).text == "next"


async def _raw_http_server(answers: list[bytes]) -> tuple[Any, str, list[bytes]]:
    """A bare HTTP/1.1 server on 127.0.0.1 answering its n-th request with ``answers[n]`` (raw
    bytes, closing the connection when the answer says ``connection: close``): how to stop it,
    its URL, and the requests it read."""
    seen: list[bytes] = []
    handlers: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                seen.append(head + await reader.readexactly(length))
                answer = answers[len(seen) - 1]
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)

    async def stop() -> None:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*handlers), 10)

    return stop, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen


async def test_client_unary_reads_chunked_and_close_delimited_responses() -> None:
    """Connect servers other than protobind's may send a unary answer chunked, or end it by
    closing the connection; the client's own HTTP/1.1 pool (http/_h1client.py) reads both, and
    opens a new connection after a `connection: close`."""
    body = Response(text="ok").SerializeToString()
    chunked = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/proto\r\ntransfer-encoding: chunked\r\n"
        b"x-extra: one\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    closing = b"HTTP/1.1 200 OK\r\ncontent-type: application/proto\r\nconnection: close\r\n\r\n" + body
    stop, url, seen = await _raw_http_server([chunked, closing, chunked])
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            call = protobind.CallInfo()
            assert (await client.unary(Request(text="a"), call=call)).text == "ok"
            assert call.headers["x-extra"] == "one"
            assert (await client.unary(Request(text="b"), timeout=5)).text == "ok"
            assert (await client.unary(Request(text="c"))).text == "ok"
        assert len(seen) == 3
        assert b"connect-timeout-ms: " in seen[1] and b"connect-protocol-version: 1" in seen[1]
    finally:
        await stop()


async def test_client_unary_does_not_reuse_a_connection_answered_413() -> None:
    """A server may answer 413 before reading the body and close the connection a moment later
    (hypercorn does): the client's HTTP/1.1 pool must not send its next call on it (it did,
    and that call failed UNAVAILABLE with a broken pipe)."""
    reply = Response(text="ok").SerializeToString()
    refused = b'{"code":"resource_exhausted","message":"too large"}'
    connections: list[asyncio.Task[Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.append(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if length > 1000:  # refused unread, then the connection closed a moment later
                    writer.write(
                        b"HTTP/1.1 413 Content Too Large\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(refused), refused)
                    )
                    await asyncio.sleep(0.3)
                    break
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/proto\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(reply), reply)
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            with pytest.raises(RpcError) as info:
                await client.unary(Request(text="x" * 5000), timeout=5)
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            assert (await client.unary(Request(text="small"), timeout=5)).text == "ok"
        assert len(connections) == 2
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*connections), 10)


async def test_client_unary_refuses_an_announced_oversized_response() -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-type: application/proto\r\ncontent-length: 5000\r\n\r\n" + b"\0" * 5000
    stop, url, _ = await _raw_http_server([big])
    try:
        async with protobind.connect(url, options={"max_message_size": 1000}) as channel:
            with pytest.raises(RpcError) as info:
                await ConformanceServiceClient(channel).unary(Request(), timeout=5)
        assert info.value.code is Code.RESOURCE_EXHAUSTED
    finally:
        await stop()


async def test_client_unary_calls_wait_for_one_of_max_connections() -> None:
    recorder = _PeerRecorder()
    server = protobind.Server([Conformance()], interceptors=[recorder])
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        async with protobind.connect(url, options={"max_connections": 2}) as channel:
            client = ConformanceServiceClient(channel)
            slow = Request(text="slow", behavior=Behavior(sleep_ms=50))
            replies = await asyncio.gather(*(client.unary(slow, timeout=10) for _ in range(8)))
        assert [r.text for r in replies] == ["slow"] * 8
        assert len(set(recorder.peers)) == 2
    finally:
        await server.stop(0)


async def test_client_unreachable_server_is_unavailable() -> None:
    server, url, _ = await _start()
    await server.stop(0)
    async with protobind.connect(url) as channel:
        with pytest.raises(RpcError) as info:
            await ConformanceServiceClient(channel).unary(Request(), timeout=5)
    assert info.value.code is Code.UNAVAILABLE
    # aiohttp's words (with the address): the error keeps aiohttp's exception as its cause
    assert isinstance(info.value.__cause__, (aiohttp.ClientError, OSError))


async def test_client_refuses_metadata_http_cannot_carry(http_server: tuple[str, Conformance]) -> None:
    """Before sending, as the other clients do; aiohttp raised ValueError from deep inside."""
    async with protobind.connect(http_server[0]) as channel:
        client = ConformanceServiceClient(channel)
        for bad in ({"x-bad": "a\x01b"}, {"x-bad": "line\nbreak"}, {"x-bad": "a\x7f"}, {"x bad": "v"}):
            stream = client.server_stream(Request(), metadata=bad)
            calls = (client.unary(Request(), metadata=bad), anext(stream))
            for call in calls:
                with pytest.raises(RpcError) as info:
                    await call
                assert info.value.code is Code.INVALID_ARGUMENT
                assert "cannot be sent as an HTTP header" in info.value.message
        assert (await client.unary(Request(text="ok"), metadata={"x-fine": "caf\xe9\tok"})).text == "ok"


async def test_stop_lets_in_flight_calls_finish() -> None:
    server, url, service = await _start()
    async with protobind.connect(url) as channel:
        client = ConformanceServiceClient(channel)
        call = asyncio.ensure_future(client.unary(Request(text="slow", behavior=Behavior(sleep_ms=300))))
        # In flight is once the handler runs: a fixed pause could end before a loaded machine sent
        # the call, which the stopping server would then refuse.
        await service.until(lambda: "slow" in service.entered)
        await server.stop(grace=5.0)
        assert (await call).text == "slow"
        with pytest.raises(RpcError) as info:
            await client.unary(Request(), timeout=5)
        assert info.value.code is Code.UNAVAILABLE


def test_error_from_non_connect_responses() -> None:
    from protobind.http._wire import error_from_body

    assert error_from_body(503, b"<html>busy</html>").code is Code.UNAVAILABLE
    assert error_from_body(404, b"").code is Code.UNIMPLEMENTED
    assert error_from_body(400, b"{}").code is Code.INTERNAL
    assert error_from_body(418, b"teapot").code is Code.UNKNOWN
    error = error_from_body(429, b'{"code": "resource_exhausted", "message": "slow down"}')
    assert (error.code, error.message) == (Code.RESOURCE_EXHAUSTED, "slow down")


def test_status_table_matches_spec() -> None:
    from protobind.http import HTTP_STATUS

    assert {code: status for code, status in HTTP_STATUS.items() if code is not Code.OK} == SPEC_STATUS


async def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown http server option"):
        await protobind.Server([Conformance()]).start("http://127.0.0.1:0?max_body=1")
    with pytest.raises(ValueError, match="tls_cert"):
        await protobind.Server([Conformance()]).start("https://127.0.0.1:0")
    with pytest.raises(ValueError, match="codec"):
        async with protobind.connect("http://127.0.0.1:1?codec=xml"):
            pass


# --- TLS --------------------------------------------------------------------------------------------


async def test_https(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    cert, key = map(str, self_signed(tmp_path))
    server, url, _ = await _start("https://127.0.0.1:0", tls_cert=cert, tls_key=key)
    try:
        assert url.startswith("https://127.0.0.1:")
        async with protobind.connect(url, options={"tls_ca": cert}) as channel:
            assert (await ConformanceServiceClient(channel).unary(Request(text="tls"))).text == "tls"
        async with protobind.connect(url) as channel:  # the system CAs do not trust it
            with pytest.raises(RpcError) as info:
                await ConformanceServiceClient(channel).unary(Request(), timeout=5)
        assert info.value.code is Code.UNAVAILABLE
    finally:
        await server.stop(0)


# --- process hygiene --------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_import_protobind_loads_no_http_library() -> None:
    result = _python(
        """
        import sys, protobind
        loaded = [m for m in ("starlette", "uvicorn", "aiohttp", "pyqwest") if m in sys.modules]
        assert not loaded, loaded
        """
    )
    assert result.returncode == 0, result.stderr


def test_client_does_not_load_the_server_stack() -> None:
    result = _python(
        """
        import asyncio, sys, protobind
        async def main():
            async with protobind.connect("http://127.0.0.1:9") as channel:
                await channel.open()
        asyncio.run(main())
        assert "aiohttp" in sys.modules
        loaded = [m for m in ("starlette", "uvicorn") if m in sys.modules]
        assert not loaded, loaded
        """
    )
    assert result.returncode == 0, result.stderr


def test_process_exit_is_clean_after_http_calls() -> None:
    script = """
        import asyncio, sys
        sys.path.insert(0, ".")
        import protobind
        from tests.conformance import Conformance
        from protobind.conformance.v1.conformance_pb2 import Request
        from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

        async def main():
            server = protobind.Server([Conformance()])
            (url,) = await server.start("http://127.0.0.1:0")
            channel = protobind.connect(url)
            client = ConformanceServiceClient(channel)
            await asyncio.gather(*(client.unary(Request(text="x")) for _ in range(50)))
            if sys.argv[-1] == "close":
                await channel.close()
            await server.stop(1)

        asyncio.run(main())
    """
    failures = []
    for run in range(8):
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script), "close" if run % 2 else "leave-open"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        # no abort, and nothing on stderr either (a forgotten channel is closed at loop end)
        if result.returncode != 0 or result.stderr.strip():
            failures.append((result.returncode, result.stderr[-500:]))
    assert not failures


async def test_a_connect_stream_cancelled_in_send_closes_the_handler_before_the_binding_returns() -> None:
    """A cancellation that lands in send() (the client went away, the deadline passed while the
    server waited to write) ends the handler's stream before the binding returns, as on the gRPC
    bindings, not when the collector or a later loop turn gets to it. Driven through the ASGI app,
    whose send() raises as a cancelled write does."""
    from protobind.http import asgi_app

    service = Conformance()
    app = asgi_app([service])
    request = Request(text="closed-in-send", behavior=Behavior(stream_count=1000))
    body = request.SerializeToString()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{SERVICE}/ServerStream",
        "raw_path": f"{SERVICE}/ServerStream".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/connect+proto")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    messages = [{"type": "http.request", "body": struct.pack(">BI", 0, len(body)) + body, "more_body": False}]
    bodies = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never says it left
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal bodies
        if message["type"] == "http.response.body" and message.get("more_body"):
            bodies += 1
            if bodies == 2:
                raise asyncio.CancelledError  # the write is cancelled while the handler is mid-stream

    await app(scope, receive, send)
    # no await since the app returned: the handler's stream was closed within it
    assert "closed-in-send" in service.cancelled
