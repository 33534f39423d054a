"""The HTTP binding mounted in a FastAPI application: calls, and one OpenAPI document for both."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate
from pydantic import BaseModel

import protobind
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.http import asgi_app, merge_openapi, openapi_for
from protobind.http.openapi import merge_documents

from .conformance import Conformance
from .servers import serve_asgi

UNARY = "/protobind.conformance.v1.ConformanceService/Unary"


class Greeting(BaseModel):
    text: str


def _host_app() -> tuple[FastAPI, protobind.Server]:
    app = FastAPI(title="host")

    @app.get("/hello")
    async def hello() -> Greeting:
        return Greeting(text="hi")

    server = protobind.Server([Conformance()])
    app.mount("/rpc", asgi_app(server))
    merge_openapi(app, server, "/rpc")
    return app, server


@pytest.fixture
async def host_url() -> AsyncIterator[str]:
    app, _ = _host_app()
    url, stop = await serve_asgi(app, http="h11")
    try:
        yield url
    finally:
        await stop()


async def test_host_openapi_includes_the_mounted_routes(host_url: str) -> None:
    async with httpx.AsyncClient(base_url=host_url, timeout=10) as client:
        host = (await client.get("/openapi.json")).json()
        mounted = (await client.get("/rpc/openapi.json")).json()
        assert (await client.get("/hello")).json() == {"text": "hi"}
    validate(host)
    assert host["info"]["title"] == "host"
    assert "/hello" in host["paths"] and f"/rpc{UNARY}" in host["paths"]
    assert UNARY not in host["paths"]
    assert {"Greeting", "protobind.conformance.v1.Request", "protobind.ConnectError"} <= set(
        host["components"]["schemas"]
    )
    assert "protobind.conformance.v1.ConformanceService" in [t["name"] for t in host["tags"]]
    # the mounted app's own document: paths below the mount, which its servers entry names
    validate(mounted)
    assert mounted["servers"] == [{"url": "/rpc"}]
    assert UNARY in mounted["paths"]


async def test_calls_through_the_mount(host_url: str) -> None:
    async with protobind.connect(f"{host_url}/rpc") as channel:
        reply = await ConformanceServiceClient(channel).unary(Request(text="mounted"), timeout=10)
    assert (reply.text, reply.transport) == ("mounted", "http")


def test_merging_is_idempotent_and_refuses_conflicts() -> None:
    app, server = _host_app()
    first = app.openapi()
    assert app.openapi() == first  # FastAPI caches the document; merging again changes nothing
    extra = openapi_for(server, prefix="/rpc")
    assert all(path.startswith("/rpc/") for path in extra["paths"])
    host: dict[str, Any] = {
        "components": {"schemas": {"protobind.conformance.v1.Request": {"type": "string"}}}
    }
    with pytest.raises(ValueError, match=re.escape("protobind.conformance.v1.Request")):
        merge_documents(host, extra)


async def test_url_prefix_is_the_documents_server() -> None:
    server = protobind.Server([Conformance()])
    (url,) = await server.start("http://127.0.0.1:0/api/v2")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            document = (await client.get(f"{url}/openapi.json")).json()
    finally:
        await server.stop(0)
    assert document["servers"] == [{"url": "/api/v2"}]
    assert UNARY in document["paths"]
