"""What the benchmark compares: protobind bindings and the raw libraries under them.

Every peer serves the same call: ``protobind.conformance.v1.ConformanceService/Unary`` takes a
``Request`` with a payload and answers a ``Response`` carrying the same payload, parsed and
serialized on both sides, so raw and protobind peers do the same protobuf work.

``SERVERS[kind](host, nats_url)`` starts a server in the current process and returns
``(url, stop)``; ``CLIENTS[kind](url)`` returns ``(call, close)`` where ``await call(payload)``
makes one call; ``SYNC_CLIENTS[kind](url)`` the same for blocking clients (``call(payload)``).
Transports add their peers here; ``PAIRS`` says which two are compared.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.empty_pb2 import Empty

import protobind
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import (
    CONFORMANCE_SERVICE_UNARY,
    ConformanceService,
    ConformanceServiceClient,
    ConformanceServiceSyncClient,
)

Stop = Callable[[], Awaitable[None]]
Call = Callable[[bytes], Awaitable[Any]]
Close = Callable[[], Awaitable[None]]
ServerFactory = Callable[[str, "str | None"], Awaitable[tuple[str, Stop]]]
ClientFactory = Callable[[str], Awaitable[tuple[Call, Close]]]
SyncCall = Callable[[bytes], Any]
SyncClientFactory = Callable[[str], tuple[SyncCall, Callable[[], None]]]

UNARY_PATH = CONFORMANCE_SERVICE_UNARY.path  # /protobind.conformance.v1.ConformanceService/Unary
NATS_SUBJECT = "protobind.conformance.v1.ConformanceService.Unary"

SERVERS: dict[str, ServerFactory] = {}
CLIENTS: dict[str, ClientFactory] = {}
SYNC_CLIENTS: dict[str, SyncClientFactory] = {}
# (label, protobind kind, raw peer kind or None)
PAIRS: list[tuple[str, str, str | None]] = []


class Echo(ConformanceService):
    async def unary(self, request: Request, context: protobind.Context) -> Response:
        return Response(payload=request.payload)


async def serve_protobind(url: str) -> tuple[str, Stop]:
    server = protobind.Server([Echo()])
    (bound,) = await server.start(url)
    return bound, lambda: server.stop(grace=1.0)


async def protobind_client(url: str) -> tuple[Call, Close]:
    channel = await protobind.connect(url).open()
    client = ConformanceServiceClient(channel)

    async def call(payload: bytes) -> Any:
        return await client.unary(Request(payload=payload), timeout=30)

    return call, channel.close


# --- inproc: no raw peer; its calls/s is the framework's own per-call cost -----------------------


async def _inproc_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    return await serve_protobind("inproc://bench")


SERVERS["protobind-inproc"] = _inproc_server
CLIENTS["protobind-inproc"] = protobind_client
PAIRS.append(("inproc", "protobind-inproc", None))


# --- gRPC: protobind's grpc:// binding vs a raw grpc.aio server and channel ----------------------


async def _protobind_grpc_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    # the grpcio engine on both protobind sides, as this pair has always measured (the default
    # engine, native, has pairs of its own below)
    bound, stop = await serve_protobind(f"grpc://{host}:0?engine=grpcio")
    return f"{bound}?engine=grpcio", stop


async def _raw_grpc_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import grpc

    async def unary(request: Request, context: Any) -> Response:
        return Response(payload=request.payload)

    handler = grpc.method_handlers_generic_handler(
        "protobind.conformance.v1.ConformanceService",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    return f"grpc://{host}:{port}", lambda: server.stop(1.0)


async def _raw_grpc_client(url: str) -> tuple[Call, Close]:
    import grpc

    channel = grpc.aio.insecure_channel(url.removeprefix("grpc://"))
    unary = channel.unary_unary(
        UNARY_PATH, request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
    )

    async def call(payload: bytes) -> Any:
        return await unary(Request(payload=payload), timeout=30)

    return call, channel.close


SERVERS["protobind-grpc"] = _protobind_grpc_server
CLIENTS["protobind-grpc"] = protobind_client
SERVERS["grpc-aio"] = _raw_grpc_server
CLIENTS["grpc-aio"] = _raw_grpc_client
PAIRS.append(("grpc", "protobind-grpc", "grpc-aio"))


# --- gRPC on the native engine (engine=native) vs grpclib (pure Python, on h2) and raw grpc.aio ------


async def _protobind_grpc_native_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    bound, stop = await serve_protobind(f"grpc://{host}:0?engine=native")
    return f"{bound}?engine=native", stop


async def _grpclib_client(url: str) -> tuple[Call, Close]:
    from urllib.parse import urlsplit

    from grpclib.client import Channel, UnaryUnaryMethod

    parts = urlsplit(url)
    channel = Channel(parts.hostname or "127.0.0.1", parts.port or 80)
    unary = UnaryUnaryMethod(channel, UNARY_PATH, Request, Response)

    async def call(payload: bytes) -> Any:
        return await unary(Request(payload=payload), timeout=30)

    async def close() -> None:
        channel.close()

    return call, close


# registered with the HTTP/2 pairs below, which define the grpclib server


# --- NATS: protobind's nats:// binding vs raw nats-py request/reply ------------------------------


async def _protobind_nats_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    assert nats_url is not None
    return await serve_protobind(nats_url)


async def _raw_nats_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import nats

    assert nats_url is not None
    nc = await nats.connect(nats_url)

    async def respond(msg: Any) -> None:
        request = Request.FromString(msg.data)
        await msg.respond(Response(payload=request.payload).SerializeToString())

    await nc.subscribe(NATS_SUBJECT, queue="raw", cb=respond)
    return nats_url, nc.drain


async def _raw_nats_client(url: str) -> tuple[Call, Close]:
    import nats

    nc = await nats.connect(url)

    async def call(payload: bytes) -> Any:
        msg = await nc.request(NATS_SUBJECT, Request(payload=payload).SerializeToString(), timeout=30)
        return Response.FromString(msg.data)

    return call, nc.drain


async def _faststream_nats_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    """FastStream's NATS RPC: a queue-group subscriber returning the response bytes (FastStream
    answers on the request's reply subject)."""
    from faststream.nats import NatsBroker

    assert nats_url is not None
    broker = NatsBroker(nats_url, logger=None)

    @broker.subscriber(NATS_SUBJECT, queue="faststream")
    async def handle(body: bytes) -> bytes:
        return Response(payload=Request.FromString(body).payload).SerializeToString()

    await broker.start()
    return nats_url, broker.stop


async def _faststream_nats_client(url: str) -> tuple[Call, Close]:
    from faststream.nats import NatsBroker

    broker = NatsBroker(url, logger=None)
    await broker.connect()

    async def call(payload: bytes) -> Any:
        answer = await broker.request(Request(payload=payload).SerializeToString(), NATS_SUBJECT, timeout=30)
        return Response.FromString(answer.body)

    return call, broker.stop


SERVERS["protobind-nats"] = _protobind_nats_server
CLIENTS["protobind-nats"] = protobind_client
SERVERS["nats-py"] = _raw_nats_server
CLIENTS["nats-py"] = _raw_nats_client
SERVERS["faststream-nats"] = _faststream_nats_server
CLIENTS["faststream-nats"] = _faststream_nats_client
PAIRS.append(("nats", "protobind-nats", "nats-py"))
PAIRS.append(("nats-faststream", "protobind-nats", "faststream-nats"))


# --- one-way over NATS: protobind's one-way method vs raw nats-py publish / queue subscribe ---------
# Throughput is publish-and-handle: the clock runs from the first publish until the server reports
# that it handled the last message. Every message carries the run's message count in `number`; the
# server counts the messages it handled (each parsed) and, at that count, publishes one message on
# ONEWAY_DONE with a nats-py connection of its own (the same for both servers). A one-way client
# "call" is `send(payload, count)`; `done()` waits for the server's report.

NOTIFY_SUBJECT = "protobind.conformance.v1.ConformanceService.Notify"
ONEWAY_DONE = "bench.oneway.done"
OnewayClientFactory = Callable[[str], Awaitable[tuple[Callable[[bytes, int], Awaitable[Any]], Close]]]
ONEWAY_CLIENTS: dict[str, OnewayClientFactory] = {}


class _Counter:
    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.handled = 0

    async def count(self, request: Request) -> None:
        self.handled += 1
        if self.handled == request.number:
            self.handled = 0
            await self.nc.publish(ONEWAY_DONE, b"")


async def _protobind_oneway_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import nats

    assert nats_url is not None
    counter = _Counter(await nats.connect(nats_url))

    class Sink(ConformanceService):
        async def notify(self, request: Request, context: protobind.Context) -> Empty:
            await counter.count(request)
            return Empty()

    server = protobind.Server([Sink()])
    (bound,) = await server.start(nats_url)

    async def stop() -> None:
        await server.stop(grace=1.0)
        await counter.nc.drain()

    return bound, stop


async def _raw_oneway_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import nats

    assert nats_url is not None
    nc = await nats.connect(nats_url)
    counter = _Counter(nc)

    async def handle(msg: Any) -> None:
        await counter.count(Request.FromString(msg.data))

    await nc.subscribe(NOTIFY_SUBJECT, queue="raw", cb=handle)
    await nc.flush()
    return nats_url, nc.drain


async def _protobind_oneway_client(url: str) -> tuple[Callable[[bytes, int], Awaitable[Any]], Close]:
    channel = await protobind.connect(url).open()
    client = ConformanceServiceClient(channel)

    async def send(payload: bytes, count: int) -> None:
        await client.notify(Request(payload=payload, number=count))

    return send, channel.close


async def _raw_oneway_client(url: str) -> tuple[Callable[[bytes, int], Awaitable[Any]], Close]:
    import nats

    nc = await nats.connect(url)

    async def send(payload: bytes, count: int) -> None:
        await nc.publish(NOTIFY_SUBJECT, Request(payload=payload, number=count).SerializeToString())

    return send, nc.drain


SERVERS["protobind-oneway"] = _protobind_oneway_server
ONEWAY_CLIENTS["protobind-oneway"] = _protobind_oneway_client
SERVERS["nats-py-publish"] = _raw_oneway_server
ONEWAY_CLIENTS["nats-py-publish"] = _raw_oneway_client
PAIRS.append(("nats-oneway", "protobind-oneway", "nats-py-publish"))


# --- HTTP: protobind's http:// client + server vs the connectrpc package's client + ASGI server ----
# Both servers run under uvicorn with the same settings; JSON and binary proto are separate pairs.


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connectrpc_stubs() -> Any:
    """connectrpc's generated module for the conformance contract (made with its protoc plugin,
    loaded beside protobind's conformance_pb2 so both use the same message classes)."""
    import importlib.util
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import grpc_tools

    name = "protobind.conformance.v1.conformance_connect"
    if name in sys.modules:
        return sys.modules[name]
    plugin = shutil.which("protoc-gen-connectrpc", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise RuntimeError("protoc-gen-connectrpc is not installed (pip install protoc-gen-connectrpc)")
    idl = Path(__file__).resolve().parent.parent / "idl"
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{idl}",
             f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
             f"--plugin=protoc-gen-connectrpc={plugin}", f"--connectrpc_out={out}",
             "--connectrpc_opt=protobuf=google", "protobind/conformance/v1/conformance.proto"],
            check=True,
        )  # fmt: skip
        spec = importlib.util.spec_from_file_location(
            name, Path(out) / "protobind" / "conformance" / "v1" / "conformance_connect.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


#: uvicorn's HTTP protocol for the ASGI peers: protobind's default (zttp, HTTP/1.1 and HTTP/2 on one
#: port), so both servers of a pair run on the same parser; ``PROTOBIND_BENCH_PEER_HTTP=h11`` (or
#: httptools) for the figures of earlier runs, which served the peers with h11.
PEER_HTTP = "zttp"


async def serve_asgi_peer(app: Any, host: str, http: str | None = None) -> tuple[str, Stop]:
    """``app`` under uvicorn with the settings protobind's HTTP binding gives its own server
    (``http``: the parser, if not :data:`PEER_HTTP`)."""
    import asyncio
    import os

    import uvicorn

    port = _free_port(host)
    http = http or os.environ.get("PROTOBIND_BENCH_PEER_HTTP", PEER_HTTP)
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="off", http=http, http2=http == "zttp",
        log_config=None, access_log=False, server_header=False, timeout_keep_alive=75,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True
        await task

    return f"http://{host}:{port}", stop


async def _protobind_http_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    return await serve_protobind(f"http://{host}:0")


async def _connectrpc_server(host: str, nats_url: str | None, http: str | None = None) -> tuple[str, Stop]:
    stubs = connectrpc_stubs()

    class Service(stubs.ConformanceService):  # type: ignore[misc, name-defined]
        async def unary(self, request: Request, ctx: Any) -> Response:
            return Response(payload=request.payload)

    return await serve_asgi_peer(stubs.ConformanceServiceASGIApplication(Service()), host, http)


def _protobind_http_client(codec: str) -> ClientFactory:
    async def make(url: str) -> tuple[Call, Close]:
        channel = await protobind.connect(url, options={"codec": codec}).open()
        client = ConformanceServiceClient(channel)

        async def call(payload: bytes) -> Any:
            return await client.unary(Request(payload=payload), timeout=30)

        return call, channel.close

    return make


def _connectrpc_client(codec: str) -> ClientFactory:
    async def make(url: str) -> tuple[Call, Close]:
        from connectrpc.compat import google_protobuf_json_codec

        stubs = connectrpc_stubs()
        kwargs: dict[str, Any] = {"codec": google_protobuf_json_codec()} if codec == "json" else {}
        client = stubs.ConformanceServiceClient(url, **kwargs)
        await client.__aenter__()

        async def call(payload: bytes) -> Any:
            return await client.unary(Request(payload=payload))

        async def close() -> None:
            await client.__aexit__(None, None, None)

        return call, close

    return make


for _codec in ("json", "proto"):
    SERVERS[f"protobind-http-{_codec}"] = _protobind_http_server
    CLIENTS[f"protobind-http-{_codec}"] = _protobind_http_client(_codec)
    SERVERS[f"connectrpc-{_codec}"] = _connectrpc_server
    CLIENTS[f"connectrpc-{_codec}"] = _connectrpc_client(_codec)
    PAIRS.append((f"http-{_codec}", f"protobind-http-{_codec}", f"connectrpc-{_codec}"))


# --- HTTP JSON: protobind's http:// server vs FastAPI + pydantic, one plain JSON client for both ---
# The same client posts {"payload": "<base64>"} and decodes the payload of the answer. The FastAPI
# model declares the payload as pydantic's Base64Bytes, so FastAPI decodes and re-encodes it as
# protobind's JSON codec does (a model holding the base64 text as a str would skip that work).
#
# The client is a plain keep-alive HTTP/1.1 pool (protobind's _h1client, which knows nothing of
# Connect: a POST with a JSON body, the response read whole), the same for both servers. Before
# 2026-12-07 it was aiohttp, whose own cost per call (about 450k instructions) was above that of
# either server at 100 B, so both sides ran at the client's pace and the pair measured aiohttp:
# fastapi-json-aiohttp keeps that client for comparison.


async def _fastapi_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    from fastapi import FastAPI
    from pydantic import Base64Bytes, BaseModel

    class Payload(BaseModel):
        payload: Base64Bytes = b""

    app = FastAPI()

    async def unary(request: Payload) -> Payload:
        return Payload(payload=request.payload)

    # this module's annotations are strings (PEP 563) and Payload is local: give FastAPI the types
    unary.__annotations__ = {"request": Payload, "return": Payload}
    app.post(UNARY_PATH)(unary)

    return await serve_asgi_peer(app, host)


async def _json_post_client(url: str) -> tuple[Call, Close]:
    import base64
    import json
    from urllib.parse import urlsplit

    from protobind.http._h1client import H1Pool

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pool = H1Pool(host, port, ssl_context=None, server_name=None, limit=100, max_message_size=1 << 24)
    head = [(b"host", f"{host}:{port}".encode()), (b"content-type", b"application/json")]
    target = UNARY_PATH.encode()

    async def call(payload: bytes) -> Any:
        body = json.dumps({"payload": base64.b64encode(payload).decode()}).encode()
        status, _, data = await pool.request(target, [*head, (b"content-length", b"%d" % len(body))], body)
        answer = json.loads(data)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {answer}")
        return base64.b64decode(answer.get("payload", ""))

    return call, pool.close


async def _json_post_aiohttp_client(url: str) -> tuple[Call, Close]:
    import base64
    import json

    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100), headers={"Content-Type": "application/json"}
    )
    target = url + UNARY_PATH

    async def call(payload: bytes) -> Any:
        body = json.dumps({"payload": base64.b64encode(payload).decode()})
        async with session.post(target, data=body) as response:
            answer = json.loads(await response.read())
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {answer}")
        return base64.b64decode(answer.get("payload", ""))

    return call, session.close


SERVERS["protobind-http-plainjson"] = _protobind_http_server
CLIENTS["protobind-http-plainjson"] = _json_post_client
SERVERS["fastapi"] = _fastapi_server
CLIENTS["fastapi"] = _json_post_client
PAIRS.append(("fastapi-json", "protobind-http-plainjson", "fastapi"))
SERVERS["protobind-http-plainjson-aiohttp"] = _protobind_http_server
CLIENTS["protobind-http-plainjson-aiohttp"] = _json_post_aiohttp_client
SERVERS["fastapi-aiohttp"] = _fastapi_server
CLIENTS["fastapi-aiohttp"] = _json_post_aiohttp_client
PAIRS.append(("fastapi-json-aiohttp", "protobind-http-plainjson-aiohttp", "fastapi-aiohttp"))


# --- the blocking client (connect_sync) vs the async client, same server: its per-call overhead ---


def _protobind_sync_client(options: dict[str, Any] | None = None) -> SyncClientFactory:
    def make(url: str) -> tuple[SyncCall, Callable[[], None]]:
        channel = protobind.connect_sync(url, options=options).open()
        client = ConformanceServiceSyncClient(channel)

        def call(payload: bytes) -> Any:
            return client.unary(Request(payload=payload), timeout=30)

        return call, channel.close

    return make


_SYNC_PAIRS: list[tuple[str, dict[str, Any] | None]] = [
    ("inproc", None),
    ("grpc", None),
    ("nats", None),
    ("http-proto", {"codec": "proto"}),
]
for _transport, _options in _SYNC_PAIRS:
    SERVERS[f"protobind-sync-{_transport}"] = SERVERS[f"protobind-{_transport}"]
    SYNC_CLIENTS[f"protobind-sync-{_transport}"] = _protobind_sync_client(_options)
    PAIRS.append((f"sync-{_transport}", f"protobind-sync-{_transport}", f"protobind-{_transport}"))


# --- HTTP server knobs: the http_parser option and the uvloop event loop, each against the default
# server (h11 on asyncio's loop) with the same protobind client (binary proto). benchmarks/serve.py
# runs a kind ending in "-uvloop" on uvloop.


def _http_variant(parser: str) -> ServerFactory:
    async def serve(host: str, nats_url: str | None) -> tuple[str, Stop]:
        return await serve_protobind(f"http://{host}:0?http_parser={parser}")

    return serve


for _parser in ("h11", "httptools"):
    for _loop in ("", "-uvloop"):
        _kind = f"protobind-http-{_parser}{_loop}"
        SERVERS[_kind] = _http_variant(_parser)
        CLIENTS[_kind] = _protobind_http_client("proto")
        if _kind != "protobind-http-h11":
            PAIRS.append((f"http-server-{_parser}{_loop}", _kind, "protobind-http-h11"))


# --- HTTP/2 on the http:// port (issue 21): gRPC, Connect over HTTP/2, and each ASGI server --------
# Kinds are named http-SERVER-CLIENT: protobind's http:// server on uvicorn (with zttp, the
# default), hypercorn or granian (option asgi_server), called by protobind's own client (h1: Connect
# over HTTP/1.1, binary proto), by one plain HTTP/2 client posting Connect unary calls (h2:
# protobind's http/_h2client.py, h2c with prior knowledge, 1,000 calls per connection, each call's
# HEADERS and DATA in one write) or by a stock grpc.aio channel (grpcio). The gRPC pairs put the
# same grpc.aio client against protobind's grpc:// server (grpcio) and a grpclib server; the
# Connect-over-HTTP/2 pair puts the same h2 client against connectrpc's ASGI app under the same
# uvicorn and zttp settings.

ASGI_SERVERS = ("uvicorn", "hypercorn", "granian")


def _on_asgi_server(asgi_server: str) -> ServerFactory:
    async def serve(host: str, nats_url: str | None) -> tuple[str, Stop]:
        return await serve_protobind(f"http://{host}:0?asgi_server={asgi_server}")

    return serve


async def _grpcio_client(url: str) -> tuple[Call, Close]:
    import grpc

    channel = grpc.aio.insecure_channel(url.split("://", 1)[1])
    unary = channel.unary_unary(
        UNARY_PATH, request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
    )

    async def call(payload: bytes) -> Any:
        return await unary(Request(payload=payload), timeout=30)

    return call, channel.close


async def _connect_h2_client(url: str) -> tuple[Call, Close]:
    from urllib.parse import urlsplit

    from protobind.http._h2client import H2Connection

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    headers = [("content-type", "application/proto"), ("connect-protocol-version", "1")]
    connections: list[H2Connection] = []

    async def connection() -> H2Connection:
        # a connection carries STREAMS_PER_CONNECTION calls, then new calls go on a fresh one
        if not connections or not connections[-1].usable:
            if connections and connections[-1].idle:
                await connections.pop().close()
            connections.append(await H2Connection.open(host, port, None, None, url))
        return connections[-1]

    async def call(payload: bytes) -> Any:
        # the request's HEADERS and DATA in one write
        stream = (await connection()).start(
            UNARY_PATH, headers, Request(payload=payload).SerializeToString(), True
        )
        try:
            status, _ = await stream.response()
            body = await stream.read_all(1 << 24)
        finally:
            stream.done()
        if status != 200:
            raise RuntimeError(f"HTTP/2 {status}: {body[:200]!r}")
        return Response.FromString(body)

    async def close() -> None:
        for each in connections:
            await each.close()

    return call, close


async def _grpclib_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    class Echo:
        async def unary(self, stream: Any) -> None:
            request = await stream.recv_message()
            await stream.send_message(Response(payload=request.payload))

        def __mapping__(self) -> dict[str, Handler]:
            return {UNARY_PATH: Handler(self.unary, Cardinality.UNARY_UNARY, Request, Response)}

    server = Server([Echo()])
    await server.start(host, 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return f"http://{host}:{port}", stop


async def _protobind_grpc_on_grpc(host: str, nats_url: str | None) -> tuple[str, Stop]:
    return await serve_protobind(f"grpc://{host}:0?engine=grpcio")  # the grpcio server these pairs name


async def _connectrpc_zttp(host: str, nats_url: str | None) -> tuple[str, Stop]:
    return await _connectrpc_server(host, nats_url, http="zttp")


_H2_CLIENTS: dict[str, ClientFactory] = {
    "h1": _protobind_http_client("proto"),
    "h2": _connect_h2_client,
    "grpcio": _grpcio_client,
}
for _server in ASGI_SERVERS:
    for _client, _factory in _H2_CLIENTS.items():
        if _server == "granian" and _client == "grpcio":
            continue  # no ASGI trailers: granian refuses gRPC
        SERVERS[f"http-{_server}-{_client}"] = _on_asgi_server(_server)
        CLIENTS[f"http-{_server}-{_client}"] = _factory
SERVERS["grpc-grpcio"] = _protobind_grpc_on_grpc
CLIENTS["grpc-grpcio"] = _grpcio_client
SERVERS["grpclib-grpcio"] = _grpclib_server
CLIENTS["grpclib-grpcio"] = _grpcio_client
SERVERS["connectrpc-uvicorn-h2"] = _connectrpc_zttp
CLIENTS["connectrpc-uvicorn-h2"] = _connect_h2_client
PAIRS.append(("grpc-on-http", "http-uvicorn-grpcio", "grpc-grpcio"))
PAIRS.append(("grpc-on-http-grpclib", "http-uvicorn-grpcio", "grpclib-grpcio"))
PAIRS.append(("connect-h2", "http-uvicorn-h2", "connectrpc-uvicorn-h2"))
for _server in ("hypercorn", "granian"):
    for _client in _H2_CLIENTS:
        if f"http-{_server}-{_client}" in SERVERS:
            PAIRS.append(
                (f"asgi-{_server}-{_client}", f"http-{_server}-{_client}", f"http-uvicorn-{_client}")
            )


# --- MQTT 5: protobind's mqtt:// binding vs raw zmqtt request/response vs FastStream ---------------
#
# All on the machine's Mosquitto (PROTOBIND_BENCH_MQTT), each server under a topic prefix of its own.
# The raw peer is zmqtt, the library protobind's binding uses: a subscription whose messages are
# answered on their response topic with their correlation data, and ``client.request``. FastStream's
# MQTT broker (also zmqtt underneath) answers with a subscriber that returns the response bytes,
# called with ``broker.request``.

MQTT_URL = "mqtt://127.0.0.1:1883"
MQTT_TOPIC = NATS_SUBJECT.replace(".", "/")


def _mqtt_prefix() -> str:
    import os

    return f"bench-{os.urandom(4).hex()}"


async def _protobind_mqtt_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import os

    return await serve_protobind(
        f"{os.environ.get('PROTOBIND_BENCH_MQTT', MQTT_URL)}?prefix={_mqtt_prefix()}"
    )


def _mqtt_address(url: str) -> tuple[str, int, str]:
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883, dict(parse_qsl(parts.query)).get("prefix", "")


async def _raw_mqtt_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import asyncio
    import os

    import zmqtt

    url = f"{os.environ.get('PROTOBIND_BENCH_MQTT', MQTT_URL)}?prefix={_mqtt_prefix()}"
    mqtt_host, port, prefix = _mqtt_address(url)
    client = zmqtt.create_client(mqtt_host, port, version="5.0")
    await client.connect()
    sub = client.subscribe(f"$share/raw/{prefix}/{MQTT_TOPIC}", receive_buffer_size=0)
    await sub.start()

    async def serve() -> None:
        async for message in sub:
            props = message.properties
            request = Request.FromString(message.payload)
            await client.publish(
                props.response_topic,
                Response(payload=request.payload).SerializeToString(),
                properties=zmqtt.PublishProperties(correlation_data=props.correlation_data),
            )

    task = asyncio.get_running_loop().create_task(serve())

    async def stop() -> None:
        task.cancel()
        await client.disconnect()

    return url, stop


async def _raw_mqtt_client(url: str) -> tuple[Call, Close]:
    import zmqtt

    mqtt_host, port, prefix = _mqtt_address(url)
    client = zmqtt.create_client(mqtt_host, port, version="5.0")
    await client.connect()
    topic = f"{prefix}/{MQTT_TOPIC}"
    reply = zmqtt.PublishProperties(response_topic=f"_bench/{prefix}/reply")

    async def call(payload: bytes) -> Any:
        answer = await client.request(
            topic, Request(payload=payload).SerializeToString(), timeout=30, properties=reply
        )
        return Response.FromString(answer.payload)

    return call, client.disconnect


async def _faststream_mqtt_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import os

    from faststream.mqtt import MQTTBroker

    url = f"{os.environ.get('PROTOBIND_BENCH_MQTT', MQTT_URL)}?prefix={_mqtt_prefix()}"
    mqtt_host, port, prefix = _mqtt_address(url)
    broker = MQTTBroker(f"mqtt://{mqtt_host}:{port}", logger=None)

    @broker.subscriber(f"$share/fs/{prefix}/{MQTT_TOPIC}")
    async def handle(body: bytes) -> bytes:
        return Response(payload=Request.FromString(body).payload).SerializeToString()

    await broker.start()
    return url, broker.stop


async def _faststream_mqtt_client(url: str) -> tuple[Call, Close]:
    from faststream.mqtt import MQTTBroker

    mqtt_host, port, prefix = _mqtt_address(url)
    broker = MQTTBroker(f"mqtt://{mqtt_host}:{port}", logger=None)
    await broker.connect()
    topic = f"{prefix}/{MQTT_TOPIC}"

    async def call(payload: bytes) -> Any:
        answer = await broker.request(Request(payload=payload).SerializeToString(), topic, timeout=30)
        return Response.FromString(answer.body)

    return call, broker.stop


# --- one-way over MQTT: protobind's one-way method vs raw zmqtt publish / shared subscription -------
# As the NATS one-way pair, with the "handled the last one" report published on the same broker,
# at `{prefix}/bench/oneway/done` (oneway_watcher below is the driver's side of it).

MQTT_NOTIFY_TOPIC = NOTIFY_SUBJECT.replace(".", "/")


async def _mqtt_connect(url: str) -> tuple[Any, str]:
    import zmqtt

    mqtt_host, port, prefix = _mqtt_address(url)
    client = zmqtt.create_client(mqtt_host, port, version="5.0")
    await client.connect()
    return client, prefix


#: MQTT one-way runs: messages per run unless ``--messages`` says otherwise (see ONEWAY_MESSAGES).
MQTT_ONEWAY_MESSAGES = 50_000
#: Seconds without a message after which an MQTT one-way server reports a burst it did not get all of.
MQTT_QUIET = 2.0
#: Messages per one-way run by kind, where it differs from ``--messages``' default.
ONEWAY_MESSAGES = {"protobind-mqtt-oneway": MQTT_ONEWAY_MESSAGES, "zmqtt-publish": MQTT_ONEWAY_MESSAGES}


class _MqttCounter(_Counter):
    """:class:`_Counter` for QoS 0, where Mosquitto may drop messages under load (its queue for a
    subscriber is bounded): a burst that stopped arriving short of its count is reported after
    ``MQTT_QUIET`` seconds of silence, with how many messages were handled and when the last one
    was (JSON; a complete burst's report is empty). The reports go at QoS 1."""

    def __init__(self, client: Any, prefix: str) -> None:
        import zmqtt

        super().__init__(None)
        self.client = client
        self.topic = f"{prefix}/bench/oneway/done"
        self.last = 0.0
        self._quiet: Any = None
        self._qos = zmqtt.QoS.AT_LEAST_ONCE

    def start(self) -> None:
        import asyncio

        self._quiet = asyncio.get_running_loop().create_task(self._watch_quiet())

    async def _watch_quiet(self) -> None:
        import asyncio
        import json

        while True:
            await asyncio.sleep(MQTT_QUIET / 4)
            if self.handled and time.time() - self.last > MQTT_QUIET:
                report = json.dumps({"handled": self.handled, "last": self.last}).encode()
                self.handled = 0
                await self.client.publish(self.topic, report, qos=self._qos)

    async def stop(self) -> None:
        if self._quiet is not None:
            self._quiet.cancel()
        await self.client.disconnect()

    async def count(self, request: Request) -> None:
        self.handled += 1
        self.last = time.time()
        if self.handled == request.number:
            self.handled = 0
            await self.client.publish(self.topic, b"", qos=self._qos)


async def _protobind_mqtt_oneway_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import os

    url = f"{os.environ.get('PROTOBIND_BENCH_MQTT', MQTT_URL)}?prefix={_mqtt_prefix()}"
    counter = _MqttCounter(*await _mqtt_connect(url))
    counter.start()

    class Sink(ConformanceService):
        async def notify(self, request: Request, context: protobind.Context) -> Empty:
            await counter.count(request)
            return Empty()

    server = protobind.Server([Sink()])
    (bound,) = await server.start(url)

    async def stop() -> None:
        await server.stop(grace=1.0)
        await counter.stop()

    return bound, stop


async def _raw_mqtt_oneway_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import asyncio
    import os

    url = f"{os.environ.get('PROTOBIND_BENCH_MQTT', MQTT_URL)}?prefix={_mqtt_prefix()}"
    client, prefix = await _mqtt_connect(url)
    counter = _MqttCounter(client, prefix)
    counter.start()
    sub = client.subscribe(f"$share/raw/{prefix}/{MQTT_NOTIFY_TOPIC}", receive_buffer_size=0)
    await sub.start()

    async def serve() -> None:
        async for message in sub:
            await counter.count(Request.FromString(message.payload))

    task = asyncio.get_running_loop().create_task(serve())

    async def stop() -> None:
        task.cancel()
        await counter.stop()

    return url, stop


async def _raw_mqtt_oneway_client(url: str) -> tuple[Callable[[bytes, int], Awaitable[Any]], Close]:
    client, prefix = await _mqtt_connect(url)
    topic = f"{prefix}/{MQTT_NOTIFY_TOPIC}"

    async def send(payload: bytes, count: int) -> None:
        await client.publish(topic, Request(payload=payload, number=count).SerializeToString())

    return send, client.disconnect


async def oneway_watcher(url: str) -> tuple[Any, Close]:
    """The driver's side of a one-way run: a queue that gets the body of each report of the server
    at ``url`` (empty: it handled the last message of the burst; else JSON, see _MqttCounter), and
    how to stop watching."""
    import asyncio

    done: asyncio.Queue[bytes] = asyncio.Queue()
    if url.startswith(("mqtt://", "mqtts://")):
        import zmqtt

        client, prefix = await _mqtt_connect(url)
        sub = client.subscribe(
            f"{prefix}/bench/oneway/done", qos=zmqtt.QoS.AT_LEAST_ONCE, receive_buffer_size=0
        )
        await sub.start()

        async def watch() -> None:
            async for message in sub:
                done.put_nowait(bytes(message.payload))

        task = asyncio.get_running_loop().create_task(watch())

        async def stop() -> None:
            task.cancel()
            await client.disconnect()

        return done, stop
    import nats

    watcher = await nats.connect(done_url(url))

    async def report(msg: Any) -> None:
        done.put_nowait(msg.data)

    await watcher.subscribe(ONEWAY_DONE, cb=report)
    await watcher.flush()
    return done, watcher.drain


# --- RabbitMQ: protobind's amqp:// binding vs raw aio-pika RPC and FastStream's RabbitMQ RPC -------
#
# The machine's RabbitMQ ($PROTOBIND_BENCH_AMQP_URL, default guest@127.0.0.1:5672). Each server uses
# names of its own and removes them when it stops. The raw aio-pika peer is RabbitMQ's RPC pattern
# written by hand: a server queue, an exclusive reply queue per client, correlation ids, many calls
# in flight. FastStream's is its documented RPC (`broker.request`).

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _amqp_base() -> str:
    import os

    return os.environ.get("PROTOBIND_BENCH_AMQP_URL", AMQP_URL)


async def _serve_amqp(service: object) -> tuple[str, Stop]:
    """``service`` served on the machine's RabbitMQ, on an exchange of its own (deleted at the stop)."""
    import secrets

    exchange = f"protobind.bench.{secrets.token_hex(4)}"
    server = protobind.Server([service])
    (url,) = await server.start(f"{_amqp_base()}?exchange={exchange}")

    async def stop_and_clean() -> None:
        import aio_pika

        await server.stop(grace=1.0)
        connection = await aio_pika.connect(_amqp_base())
        async with connection:
            await (await connection.channel()).exchange_delete(exchange)

    return url, stop_and_clean


async def _protobind_amqp_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    return await _serve_amqp(Echo())


async def _raw_amqp_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import secrets

    import aio_pika

    connection = await aio_pika.connect(_amqp_base())
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(f"bench.raw.{secrets.token_hex(4)}", auto_delete=True)

    async def respond(message: Any) -> None:
        request = Request.FromString(message.body)
        reply = aio_pika.Message(
            Response(payload=request.payload).SerializeToString(), correlation_id=message.correlation_id
        )
        await channel.default_exchange.publish(reply, message.reply_to)
        await message.ack()

    await queue.consume(respond)
    return f"{_amqp_base()}?queue={queue.name}", connection.close


async def _raw_amqp_client(url: str) -> tuple[Call, Close]:
    import asyncio
    import os
    from urllib.parse import parse_qsl, urlsplit

    import aio_pika

    parts = urlsplit(url)
    target = dict(parse_qsl(parts.query))["queue"]
    connection = await aio_pika.connect(parts._replace(query="").geturl())
    channel = await connection.channel()
    replies = await channel.declare_queue("", exclusive=True)
    waiting: dict[str, asyncio.Future[Any]] = {}

    async def on_reply(message: Any) -> None:
        future = waiting.pop(message.correlation_id, None)
        if future is not None:
            future.set_result(message)

    await replies.consume(on_reply, no_ack=True)

    async def call(payload: bytes) -> Any:
        correlation = os.urandom(16).hex()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting[correlation] = future
        message = aio_pika.Message(
            Request(payload=payload).SerializeToString(), reply_to=replies.name, correlation_id=correlation
        )
        await channel.default_exchange.publish(message, target)
        return Response.FromString((await asyncio.wait_for(future, 30)).body)

    return call, connection.close


async def _faststream_amqp_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import secrets

    from faststream.rabbit import RabbitBroker, RabbitQueue

    broker = RabbitBroker(_amqp_base(), logger=None)
    name = f"bench.faststream.{secrets.token_hex(4)}"

    @broker.subscriber(RabbitQueue(name, auto_delete=True))
    async def unary(body: bytes) -> bytes:
        request = Request.FromString(body)
        return Response(payload=request.payload).SerializeToString()

    await broker.start()
    return f"{_amqp_base()}?queue={name}", broker.stop


async def _faststream_amqp_client(url: str) -> tuple[Call, Close]:
    from urllib.parse import parse_qsl, urlsplit

    from faststream.rabbit import RabbitBroker

    parts = urlsplit(url)
    target = dict(parse_qsl(parts.query))["queue"]
    broker = RabbitBroker(parts._replace(query="").geturl(), logger=None)
    await broker.connect()

    async def call(payload: bytes) -> Any:
        reply = await broker.request(Request(payload=payload).SerializeToString(), queue=target, timeout=30)
        return Response.FromString(reply.body)

    return call, broker.stop


SERVERS["protobind-mqtt"] = _protobind_mqtt_server
CLIENTS["protobind-mqtt"] = protobind_client
SERVERS["zmqtt"] = _raw_mqtt_server
CLIENTS["zmqtt"] = _raw_mqtt_client
SERVERS["faststream-mqtt"] = _faststream_mqtt_server
CLIENTS["faststream-mqtt"] = _faststream_mqtt_client
PAIRS.append(("mqtt", "protobind-mqtt", "zmqtt"))
PAIRS.append(("mqtt-faststream", "protobind-mqtt", "faststream-mqtt"))
SERVERS["protobind-mqtt-oneway"] = _protobind_mqtt_oneway_server
ONEWAY_CLIENTS["protobind-mqtt-oneway"] = _protobind_oneway_client
SERVERS["zmqtt-publish"] = _raw_mqtt_oneway_server
ONEWAY_CLIENTS["zmqtt-publish"] = _raw_mqtt_oneway_client
PAIRS.append(("mqtt-oneway", "protobind-mqtt-oneway", "zmqtt-publish"))
SERVERS["protobind-amqp"] = _protobind_amqp_server
CLIENTS["protobind-amqp"] = protobind_client
SERVERS["aio-pika"] = _raw_amqp_server
CLIENTS["aio-pika"] = _raw_amqp_client
SERVERS["faststream-rabbit"] = _faststream_amqp_server
CLIENTS["faststream-rabbit"] = _faststream_amqp_client
PAIRS.append(("amqp", "protobind-amqp", "aio-pika"))
PAIRS.append(("amqp-faststream", "protobind-amqp", "faststream-rabbit"))


# --- one-way over RabbitMQ: protobind's one-way method vs raw aio-pika publish / manual-ack consume -
# As nats-oneway: the server reports the last message of a burst on ONEWAY_DONE over NATS (the run's
# nats-server, named in the URL's `done` parameter, which the clients leave out). protobind publishes
# a one-way call without confirms to the topic exchange and its server acknowledges what it took
# (docs/brokers.md); the raw peer publishes to a queue of its own, no confirms, and its consumer
# (prefetch 1000) parses each message and acknowledges it.


def _without_done(url: str) -> tuple[str, dict[str, str]]:
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.pop("done", None)
    return parts._replace(query=urlencode(query)).geturl(), query


def done_url(url: str) -> str:
    """Where a one-way server reports its bursts: the URL's `done` parameter, else the URL itself."""
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query)).get("done", url)


async def _protobind_amqp_oneway_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import nats

    assert nats_url is not None
    counter = _Counter(await nats.connect(nats_url))

    class Sink(ConformanceService):
        async def notify(self, request: Request, context: protobind.Context) -> Empty:
            await counter.count(request)
            return Empty()

    bound, stop = await _serve_amqp(Sink())

    async def stop_all() -> None:
        await stop()
        await counter.nc.drain()

    return f"{bound}&done={nats_url}", stop_all


async def _raw_amqp_oneway_server(host: str, nats_url: str | None) -> tuple[str, Stop]:
    import secrets

    import aio_pika
    import nats

    assert nats_url is not None
    counter = _Counter(await nats.connect(nats_url))
    connection = await aio_pika.connect(_amqp_base())
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(f"bench.raw.oneway.{secrets.token_hex(4)}", auto_delete=True)

    async def handle(message: Any) -> None:
        await counter.count(Request.FromString(message.body))
        await message.ack()

    await queue.consume(handle)

    async def stop() -> None:
        await connection.close()
        await counter.nc.drain()

    return f"{_amqp_base()}?queue={queue.name}&done={nats_url}", stop


async def _protobind_amqp_oneway_client(url: str) -> tuple[Callable[[bytes, int], Awaitable[Any]], Close]:
    return await _protobind_oneway_client(_without_done(url)[0])


async def _raw_amqp_oneway_client(url: str) -> tuple[Callable[[bytes, int], Awaitable[Any]], Close]:
    import aio_pika

    base, query = _without_done(url)
    connection = await aio_pika.connect(base.partition("?")[0])
    channel = await connection.channel(publisher_confirms=False)
    exchange = channel.default_exchange
    target = query["queue"]

    async def send(payload: bytes, count: int) -> None:
        await exchange.publish(
            aio_pika.Message(Request(payload=payload, number=count).SerializeToString()), target
        )

    return send, connection.close


SERVERS["protobind-amqp-oneway"] = _protobind_amqp_oneway_server
ONEWAY_CLIENTS["protobind-amqp-oneway"] = _protobind_amqp_oneway_client
SERVERS["aio-pika-publish"] = _raw_amqp_oneway_server
ONEWAY_CLIENTS["aio-pika-publish"] = _raw_amqp_oneway_client
PAIRS.append(("amqp-oneway", "protobind-amqp-oneway", "aio-pika-publish"))

# the native gRPC engine's pairs (above): grpclib's client against grpclib's server
SERVERS["protobind-grpc-native"] = _protobind_grpc_native_server
CLIENTS["protobind-grpc-native"] = protobind_client
SERVERS["grpclib"] = _grpclib_server
CLIENTS["grpclib"] = _grpclib_client
PAIRS.append(("grpc-native", "protobind-grpc-native", "grpclib"))
PAIRS.append(("grpc-native-aio", "protobind-grpc-native", "grpc-aio"))
PAIRS.append(("grpc-grpclib", "protobind-grpc", "grpclib"))
