"""Server performance knobs: the HTTP parser (http_parser option) and the event loop (uvloop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from greeter.v1.greeter_pb2 import HelloRequest
from greeter.v1.greeter_protobind import GreeterClient

import protobind
from protobind import _aio as aio
from protobind.config import Config, ConfigError
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import Conformance
from .library_service import Library
from .support import example_greeter


async def test_httptools_serves_connect_and_rest() -> None:
    server = protobind.Server([example_greeter()])
    (url,) = await server.start("http://127.0.0.1:0?http_parser=httptools")
    try:
        # the parser uvicorn really runs (protobind's subclass answers 431 for oversized headers)
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        assert issubclass(server.bindings[0]._running.server.config.http_protocol_class, HttpToolsProtocol)  # type: ignore[attr-defined]
        async with protobind.connect(url) as channel:
            reply = await GreeterClient(channel).say_hello(HelloRequest(name="Ada"), timeout=10)
        async with httpx.AsyncClient(base_url=url) as http:
            rest = await http.get("/v1/greeter/Bo")
    finally:
        await server.stop(grace=1.0)
    assert reply.message == "Hello, Ada! (via http)"
    assert rest.json() == {"message": "Hello, Bo! (via http)"}


async def test_zttp_is_the_default_and_h11_can_be_chosen() -> None:
    server = protobind.Server([example_greeter()])
    await server.start("http://127.0.0.1:0")
    try:
        # HTTP/1.1 and HTTP/2 on one port (docs/protocols.md, "One port")
        protocol = server.bindings[0]._running.server.config.http_protocol_class  # type: ignore[attr-defined]
        from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol

        assert issubclass(protocol, AutoZttpProtocol)  # protobind's subclass retires HTTP/2 connections
    finally:
        await server.stop(grace=1.0)
    await server.start("http://127.0.0.1:0?http_parser=h11")
    try:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        assert issubclass(server.bindings[0]._running.server.config.http_protocol_class, H11Protocol)  # type: ignore[attr-defined]
    finally:
        await server.stop(grace=1.0)


async def test_httptools_refuses_custom_rest_methods() -> None:
    server = protobind.Server([Library()])
    with pytest.raises(ValueError, match=r"FETCH.*use http_parser=h11"):
        await server.start("http://127.0.0.1:0?http_parser=httptools")
    # h11 and zttp (the default) serve them
    for parser in ("h11", "zttp"):
        (url,) = await server.start(f"http://127.0.0.1:0?http_parser={parser}")
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                response = await http.request("FETCH", "/v1/shelves/1")
        finally:
            await server.stop(grace=1.0)
        assert response.status_code == 200, parser


async def test_unknown_parser_is_refused() -> None:
    server = protobind.Server([example_greeter()])
    with pytest.raises(ValueError, match="http_parser must be one of zttp, h11, httptools"):
        await server.start("http://127.0.0.1:0?http_parser=fast")


def test_server_on_uvloop_serves_every_transport(nats_server: str) -> None:
    async def main() -> list[str]:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        server = protobind.Server([Conformance()])
        urls = await server.start("grpc://127.0.0.1:0", "http://127.0.0.1:0", f"{nats_server}?prefix=uv")
        try:
            texts = []
            for url in urls:
                async with protobind.connect(url) as channel:
                    client = ConformanceServiceClient(channel)
                    texts.append((await client.unary(Request(text=url[:4]), timeout=10)).text)
                    replies = [r async for r in client.server_stream(Request(behavior={"stream_count": 2}))]
                    assert len(replies) == 2
            return texts
        finally:
            await server.stop(grace=1.0)

    assert aio.run(main(), "uvloop") == ["grpc", "http", "nats"]


def test_loop_names_are_checked() -> None:
    with pytest.raises(ValueError, match="loop must be one of asyncio, uvloop"):
        aio.loop_factory("tokio")


def test_config_workers_and_loop(tmp_path: Path) -> None:
    path = tmp_path / "protobind.toml"
    path.write_text('[server]\nworkers = 4\nloop = "uvloop"\n')
    config = Config.load(path, env={})
    assert (config.workers, config.loop) == (4, "uvloop")
    config = Config.load(path, env={"PROTOBIND_WORKERS": "2", "PROTOBIND_LOOP": "asyncio"})
    assert (config.workers, config.loop) == (2, "asyncio")
    assert (Config.load(None, env={}).workers, Config.load(None, env={}).loop) == (1, "asyncio")
    for bad in ("workers = 0", "workers = 1.5", 'workers = "x"', "workers = true", 'loop = "tokio"'):
        path.write_text(f"[server]\n{bad}\n")
        with pytest.raises(ConfigError):
            Config.load(path, env={})
