"""Run every conformance case against every column (a client calling a protobind server over one
transport) and report the matrix.

Columns: protobind's own client on every registered transport (and with JSON where the transport
offers it), then clients nobody here wrote: stock ``grpc.aio`` against the gRPC binding (and the HTTP
port), gRPC-Web (binary, over HTTP/1.1 and HTTP/2) and ``connectrpc`` (binary and JSON) against the
HTTP binding (and, on request, the HTTP binding on hypercorn and granian), plain ``nats-py``
(binary and JSON) against the NATS binding, plain ``aio-pika`` (binary and JSON) against the
RabbitMQ binding. Each transport gets one server (with its test harness: a private nats-server for
NATS) shared by its columns; a column with server options (another ASGI server) gets a server of
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import importlib.util
import itertools
import traceback
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..._client import RequestStream, _as_async_iterator, connect
from ..._context import CallInfo
from ..._errors import Code, RpcError
from ..._metadata import MetadataLike
from ..._server import Server
from ...conformance.v1.conformance_pb2 import Request, Response
from ...conformance.v1.conformance_protobind import (
    CONFORMANCE_SERVICE_BIDI_STREAM,
    CONFORMANCE_SERVICE_CLIENT_STREAM,
    CONFORMANCE_SERVICE_LOOKUP,
    CONFORMANCE_SERVICE_NOTIFY,
    CONFORMANCE_SERVICE_SERVER_STREAM,
    CONFORMANCE_SERVICE_UNARY,
    ConformanceServiceClient,
)
from ...method import MethodInfo
from ...transport import ClientTransport, transport_named
from .. import transport_names
from ._cases import CASES, UNSUPPORTED, Case, ConformanceClient, Env
from .service import Conformance

__all__ = [
    "COLUMNS_BY_PEER",
    "COLUMNS_BY_SERVER",
    "LIMITS",
    "Cell",
    "Column",
    "Verdict",
    "as_json",
    "columns",
    "format_matrix",
    "run_matrix",
]

MiB = 1024 * 1024

#: Each transport's documented default message size limit (docs/protocols.md); None: no limit.
LIMITS: dict[str, int | None] = {
    "inproc": None,
    "grpc": 4 * MiB,
    "http": 4 * MiB,
    "nats": MiB,
    "memory": MiB,
    "mqtt": 4 * MiB,
    "amqp": 4 * MiB,
    "kafka": MiB,
}
#: Transports whose protobind client can also speak proto3 JSON (client option ``codec=json``).
JSON_TRANSPORTS = ("http", "nats", "mqtt", "amqp", "kafka")

_PLAIN_MQTT = (
    "a plain MQTT request carries one message each way; streams need protobind's frame protocol "
    "(docs/protocols.md, MQTT 5)"
)
_PLAIN_NATS = (
    "a plain NATS request carries one message each way; streams need protobind's frame protocol "
    "(docs/protocols.md, NATS > Streams)"
)
_PLAIN_AMQP = (
    "a plain AMQP request carries one message each way; streams need protobind's frame protocol "
    "(docs/protocols.md, RabbitMQ)"
)


class Verdict(enum.Enum):
    """What one cell came to; the value is its mark in the printed matrix."""

    PASS = "ok"
    FAIL = "FAIL"
    UNSUPPORTED = "no"  # by design of the transport, and refused as documented
    NOT_APPLICABLE = "-"  # the column's client cannot express the case


@dataclass(frozen=True, slots=True)
class Column:
    """One client calling a protobind server over ``transport``."""

    name: str
    transport: str
    client: str  # "protobind", "grpcio", "grpc-web", "connectrpc", "nats-py", "zmqtt" or "aio-pika"
    json: bool = False
    summary: str = ""
    #: client features a case may need that this client lacks -> why
    lacks: Mapping[str, str] = field(default_factory=dict)
    #: modules the client needs (a column whose modules are missing is left out, and said so)
    requires: tuple[str, ...] = ()
    #: the protocol on the wire when the transport's port speaks several (``UNSUPPORTED`` is
    #: keyed by it; empty: the transport's own): gRPC over HTTP/2 on the http:// port is "http2";
    #: protobind's own http:// client, which makes bidi calls over HTTP/2, is "http+h2"
    wire: str = ""
    #: client options (protobind's ``connect(url, options=...)``)
    options: Mapping[str, str] = field(default_factory=dict)
    #: server options (the server's URL query): columns with the same ones share a server
    server_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cell:
    """One case run against one column."""

    case: str
    column: str
    verdict: Verdict
    reason: str = ""
    seconds: float = 0.0


#: Clients nobody here wrote, each against the binding of its protocol.
COLUMNS_BY_PEER: tuple[Column, ...] = (
    Column(
        "grpcio",
        "grpc",
        "grpcio",
        summary="stock grpc.aio client -> protobind gRPC server",
        requires=("grpc",),
    ),
    Column(
        "grpcio@http",
        "http",
        "grpcio",
        summary="stock grpc.aio client -> protobind HTTP server (gRPC over HTTP/2, same port as Connect)",
        requires=("grpc",),
        wire="http2",
    ),
    Column(
        "grpc-web",
        "http",
        "grpc-web",
        summary="gRPC-Web (binary) over HTTP/1.1, spoken on plain httpx -> protobind HTTP server",
        requires=("httpx",),
    ),
    Column(
        "grpc-web@h2",
        "http",
        "grpc-web",
        summary="gRPC-Web (binary) over HTTP/2 (h2c), spoken on plain httpx -> protobind HTTP server",
        requires=("httpx", "h2"),
        wire="http2",
        lacks={
            "full_duplex": "httpx sends the whole request body before it reads the response (as browsers do)",
            "cancel": (
                "httpx (httpcore 1.0) never resets an HTTP/2 stream it stops reading (no RST_STREAM), so the "
                "server is not told; the http@h2 column covers cancellation over HTTP/2"
            ),
        },
    ),
    Column(
        "connectrpc",
        "http",
        "connectrpc",
        summary="connectrpc client (binary) -> protobind HTTP server",
        requires=("connectrpc",),
    ),
    Column(
        "connectrpc+json",
        "http",
        "connectrpc",
        json=True,
        summary="connectrpc client (JSON) -> protobind HTTP server",
        requires=("connectrpc",),
    ),
    Column(
        "nats-py",
        "nats",
        "nats-py",
        summary="plain nats-py requests (binary) -> protobind NATS server",
        lacks={
            "streams": _PLAIN_NATS,
            "request_limit": "nats-py refuses to publish above max_payload itself",
        },
        requires=("nats",),
    ),
    Column(
        "nats-py+json",
        "nats",
        "nats-py",
        json=True,
        summary="plain nats-py requests (JSON) -> protobind NATS server",
        lacks={
            "streams": _PLAIN_NATS,
            "request_limit": "nats-py refuses to publish above max_payload itself",
        },
        requires=("nats",),
    ),
    Column(
        "zmqtt",
        "mqtt",
        "zmqtt",
        summary="plain zmqtt MQTT 5 requests (binary) -> protobind MQTT server",
        lacks={"streams": _PLAIN_MQTT},
        requires=("zmqtt",),
    ),
    Column(
        "zmqtt+json",
        "mqtt",
        "zmqtt",
        json=True,
        summary="plain zmqtt MQTT 5 requests (JSON) -> protobind MQTT server",
        lacks={"streams": _PLAIN_MQTT},
        requires=("zmqtt",),
    ),
    Column(
        "aio-pika",
        "amqp",
        "aio-pika",
        summary="plain aio-pika requests (binary) -> protobind RabbitMQ server",
        lacks={"streams": _PLAIN_AMQP},
        requires=("aio_pika",),
    ),
    Column(
        "aio-pika+json",
        "amqp",
        "aio-pika",
        json=True,
        summary="plain aio-pika requests (JSON) -> protobind RabbitMQ server",
        lacks={"streams": _PLAIN_AMQP},
        requires=("aio_pika",),
    ),
    Column(
        "aiokafka",
        "kafka",
        "aiokafka",
        summary="plain aiokafka producer and consumer (binary) -> protobind Kafka server",
        lacks={
            "streams": "a plain Kafka request carries one record each way; streams need protobind's "
            "frame protocol (docs/brokers.md, Kafka)",
            "request_limit": "aiokafka refuses to produce above its max_request_size itself",
        },
        requires=("aiokafka",),
    ),
)


#: The HTTP binding on the ASGI servers besides uvicorn (option ``asgi_server``, docs/protocols.md,
#: "ASGI servers"): left out of the default run (``columns(asgi_servers=True)``, the runner's
#: ``--asgi-servers``). granian has no gRPC (no ASGI trailers), so its columns are Connect and
#: gRPC-Web.
COLUMNS_BY_SERVER: tuple[Column, ...] = (
    Column(
        "http@hypercorn",
        "http",
        "protobind",
        summary="protobind client, http2=streams -> protobind HTTP server on hypercorn",
        requires=("hypercorn",),
        wire="http+h2",
        options={"http2": "streams"},
        server_options={"asgi_server": "hypercorn"},
    ),
    Column(
        "grpcio@hypercorn",
        "http",
        "grpcio",
        summary="stock grpc.aio client -> protobind HTTP server on hypercorn (gRPC over HTTP/2)",
        requires=("grpc", "hypercorn"),
        wire="http2",
        server_options={"asgi_server": "hypercorn"},
    ),
    Column(
        "http@granian",
        "http",
        "protobind",
        summary="protobind client, http2=streams -> protobind HTTP server on granian",
        requires=("granian",),
        wire="http+h2",
        options={"http2": "streams"},
        server_options={"asgi_server": "granian"},
    ),
    Column(
        "grpc-web@granian",
        "http",
        "grpc-web",
        summary="gRPC-Web (binary) over HTTP/1.1 on plain httpx -> protobind HTTP server on granian",
        requires=("httpx", "granian"),
        server_options={"asgi_server": "granian"},
    ),
)


def columns(asgi_servers: bool = False) -> tuple[list[Column], list[str]]:
    """Every column that can run here (with ``asgi_servers``, :data:`COLUMNS_BY_SERVER` too), and a
    note for each one left out (library not installed)."""
    found: list[Column] = []
    for name in transport_names():
        wire = "http+h2" if name == "http" else ""
        summary = f"protobind client -> protobind {name} server"
        found.append(Column(name, name, "protobind", summary=summary, wire=wire))
        if name in JSON_TRANSPORTS:
            summary = f"protobind client (codec=json) -> protobind {name} server"
            found.append(Column(f"{name}+json", name, "protobind", json=True, summary=summary, wire=wire))
        if name == "grpc":
            # the default engine is protobind's own; this column keeps grpcio's covered (both sides)
            summary = "protobind client, engine=grpcio -> protobind grpc server, engine=grpcio"
            grpcio = {"engine": "grpcio"}
            found.append(
                Column(
                    "grpc@grpcio", name, "protobind", summary=summary, options=grpcio, server_options=grpcio
                )
            )
        if name == "http":
            summary = "protobind client, http2=streams (Connect streams over HTTP/2) -> protobind http server"
            streams = {"http2": "streams"}
            found.append(Column("http@h2", name, "protobind", summary=summary, wire=wire, options=streams))
    left_out = []
    for column in COLUMNS_BY_PEER + (COLUMNS_BY_SERVER if asgi_servers else ()):
        missing = [m for m in column.requires if importlib.util.find_spec(m) is None]
        if column.transport not in transport_names() or missing:
            left_out.append(f"{column.name}: not installed ({', '.join(missing) or column.transport})")
        else:
            found.append(column)
    return found, left_out


# --- clients ---------------------------------------------------------------------------------------


class _ChannelClient(ConformanceServiceClient):
    """protobind's generated client, plus ``call_unary`` for methods outside the contract."""

    async def call_unary(
        self, method: MethodInfo[Request, Response], request: Request, *, timeout: float | None = None
    ) -> Response:
        return await self._channel.unary(method, request, timeout)


class _PeerClient:
    """The :class:`ConformanceClient` calls, made through a peer's :class:`ClientTransport`."""

    def __init__(self, transport: ClientTransport) -> None:
        self._transport = transport

    async def call_unary(
        self,
        method: MethodInfo[Request, Response],
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Response:
        call = (call or CallInfo()).prepare(method, timeout, metadata)
        return await self._transport.unary(request, call)  # type: ignore[return-value]

    async def notify(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> None:
        # a stock client calls a one-way method as a unary one answered with Empty
        prepared = (call or CallInfo()).prepare(CONFORMANCE_SERVICE_NOTIFY, timeout, metadata)
        await self._transport.unary(request, prepared)

    async def unary(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Response:
        return await self.call_unary(
            CONFORMANCE_SERVICE_UNARY, request, timeout=timeout, metadata=metadata, call=call
        )

    async def lookup(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Response:
        return await self.call_unary(
            CONFORMANCE_SERVICE_LOOKUP, request, timeout=timeout, metadata=metadata, call=call
        )

    async def _stream(
        self,
        method: MethodInfo[Request, Response],
        requests: RequestStream[Request],
        timeout: float | None,
        metadata: MetadataLike | None,
        call: CallInfo | None,
    ) -> AsyncIterator[Response]:
        prepared = (call or CallInfo()).prepare(method, timeout, metadata)
        responses = self._transport.stream(_as_async_iterator(requests), prepared)
        try:
            async for response in responses:
                yield response  # type: ignore[misc]
        finally:
            await responses.aclose()  # type: ignore[attr-defined]

    def server_stream(
        self,
        request: Request,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> AsyncIterator[Response]:
        return self._stream(CONFORMANCE_SERVICE_SERVER_STREAM, [request], timeout, metadata, call)

    async def client_stream(
        self,
        requests: RequestStream[Request],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> Response:
        responses = [
            r
            async for r in self._stream(CONFORMANCE_SERVICE_CLIENT_STREAM, requests, timeout, metadata, call)
        ]
        if len(responses) != 1:
            raise RpcError(Code.INTERNAL, f"client streaming answered {len(responses)} responses")
        return responses[0]

    def bidi_stream(
        self,
        requests: RequestStream[Request],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        call: CallInfo | None = None,
    ) -> AsyncIterator[Response]:
        return self._stream(CONFORMANCE_SERVICE_BIDI_STREAM, requests, timeout, metadata, call)


@contextlib.asynccontextmanager
async def _client(column: Column, url: str) -> AsyncIterator[ConformanceClient]:
    if column.client == "protobind":
        options = dict(column.options) | ({"codec": "json"} if column.json else {})
        async with connect(url, options=options or None) as channel:
            yield _ChannelClient(channel)
        return
    peer: ClientTransport
    if column.client == "grpcio":
        from ._peers import GrpcioPeer

        peer = GrpcioPeer(url)
    elif column.client == "connectrpc":
        from ._peers import ConnectPeer

        peer = ConnectPeer(url, json_codec=column.json, read_max_bytes=LIMITS.get(column.transport))
    elif column.client == "grpc-web":
        from ._peers import GrpcWebPeer

        peer = GrpcWebPeer(url, http2=column.wire == "http2", read_max_bytes=LIMITS.get(column.transport))
    elif column.client == "nats-py":
        from ._peers import NatsPeer

        peer = NatsPeer(url, json_codec=column.json)
    elif column.client == "zmqtt":
        from ._peers import MqttPeer

        peer = MqttPeer(url, json_codec=column.json)
    elif column.client == "aio-pika":
        from ._peers import AmqpPeer

        peer = AmqpPeer(url, json_codec=column.json)
    elif column.client == "aiokafka":
        from ._peers import KafkaPeer

        peer = KafkaPeer(url, json_codec=column.json)
    else:
        raise ValueError(f"unknown client {column.client!r}")
    try:
        yield _PeerClient(peer)
    finally:
        await peer.close()


# --- running ---------------------------------------------------------------------------------------


def _failure(error: BaseException) -> str:
    if isinstance(error, AssertionError):
        text = str(error)
        if not text:  # a bare assert: show its line
            frames = traceback.extract_tb(error.__traceback__)
            text = (frames[-1].line or "assertion failed") if frames else "assertion failed"
        return text
    if isinstance(error, asyncio.TimeoutError):  # TimeoutError from 3.11 on
        return "no result in time (hung?)"
    return f"{type(error).__name__}: {error}"


async def _run_cell(case: Case, column: Column, env: Env, timeout: float) -> Cell:
    loop = asyncio.get_running_loop()
    started = loop.time()

    def cell(verdict: Verdict, reason: str = "") -> Cell:
        return Cell(case.name, column.name, verdict, reason, round(loop.time() - started, 3))

    for need in sorted(case.needs):
        if need in column.lacks:
            return cell(Verdict.NOT_APPLICABLE, column.lacks[need])
    unsupported = UNSUPPORTED.get((case.name, column.wire or column.transport))
    if unsupported is not None:
        # the case is not run: the documented refusal is checked instead
        if unsupported.probe is None:
            return cell(Verdict.UNSUPPORTED, unsupported.reason)
        expected = f"documented as refused with {unsupported.code.name}"
        try:
            await asyncio.wait_for(unsupported.probe(env), timeout)
        except RpcError as error:
            if error.code is unsupported.code:
                return cell(Verdict.UNSUPPORTED, unsupported.reason)
            return cell(Verdict.FAIL, f"{expected}, got {error}")
        except Exception as error:
            return cell(Verdict.FAIL, f"{expected}: {_failure(error)}")
        return cell(Verdict.FAIL, f"{expected}, but it worked")
    try:
        await asyncio.wait_for(case.run(env), timeout)
    except Exception as error:
        return cell(Verdict.FAIL, _failure(error))
    return cell(Verdict.PASS)


async def run_matrix(
    cases: Sequence[Case] = CASES,
    selected: Sequence[Column] | None = None,
    *,
    service_factory: Callable[[], Conformance] = Conformance,
    cell_timeout: float = 30.0,
    on_cell: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    """Run ``cases`` against the columns (default: every column that can run here), one server per
    transport, and return every cell (in column order, then case order)."""
    if selected is None:
        selected, _ = columns()
    unique = itertools.count()
    cells: list[Cell] = []
    async with contextlib.AsyncExitStack() as stack:
        harnesses: dict[str, Callable[[], str]] = {}
        servers: dict[tuple[str, str], tuple[str, Conformance]] = {}
        for key in dict.fromkeys(_server_key(c) for c in selected):
            transport, query = key
            if transport not in harnesses:
                harness = transport_named(transport).test_harness()
                harnesses[transport] = await stack.enter_async_context(harness)
            service = service_factory()
            server = Server([service])
            fresh = harnesses[transport]()
            (url,) = await server.start(f"{fresh}{'&' if '?' in fresh else '?'}{query}" if query else fresh)
            stack.push_async_callback(server.stop, 1.0)
            servers[key] = (url, service)
        for column in selected:
            url, service = servers[_server_key(column)]
            async with _client(column, url) as client:
                for case in cases:
                    marker = f"{case.name} {column.name} {next(unique)}"
                    env = Env(client, service, column.transport, LIMITS.get(column.transport), marker)
                    if case.name.startswith("limits.") and column.transport not in LIMITS:
                        found = Cell(
                            case.name, column.name, Verdict.NOT_APPLICABLE, "the limit is not known here"
                        )
                    else:
                        found = await _run_cell(case, column, env, cell_timeout)
                    cells.append(found)
                    if on_cell is not None:
                        on_cell(found)
    return cells


def _server_key(column: Column) -> tuple[str, str]:
    """The server a column calls: its transport and server options (as a URL query)."""
    return column.transport, urllib.parse.urlencode(sorted(column.server_options.items()))


def format_matrix(cells: Iterable[Cell], selected: Sequence[Column], left_out: Sequence[str] = ()) -> str:
    """The matrix as text: one row per case, one column per client/transport pairing, then the
    reasons for the cells that are not a pass, and a summary."""
    cells = list(cells)
    by_key = {(c.case, c.column): c for c in cells}
    names = list(dict.fromkeys(c.case for c in cells))
    notes: dict[str, int] = {}

    def mark(found: Cell) -> str:
        if found.verdict in (Verdict.UNSUPPORTED, Verdict.NOT_APPLICABLE):
            number = notes.setdefault(found.reason, len(notes) + 1)
            return f"{found.verdict.value}[{number}]"
        return str(found.verdict.value)

    width = max(len(n) for n in names) + 2
    header = "case".ljust(width) + " ".join(c.name.ljust(max(len(c.name), 6)) for c in selected)
    lines = [header, "-" * len(header)]
    for name in names:
        row = [
            mark(by_key[(name, c.name)]).ljust(max(len(c.name), 6))
            for c in selected
            if (name, c.name) in by_key
        ]
        lines.append(name.ljust(width) + " ".join(row).rstrip())
    lines.append("")
    lines.append(
        "ok: passed   FAIL: failed   no[n]: unsupported by design (refused as documented)   "
        "-[n]: the client cannot express it"
    )
    for reason, number in notes.items():
        lines.append(f"  [{number}] {reason}")
    lines.append("columns:")
    lines.extend(f"  {c.name}: {c.summary}" for c in selected)
    lines.extend(f"  (left out) {note}" for note in left_out)
    failures = [c for c in cells if c.verdict is Verdict.FAIL]
    if failures:
        lines.append("failures:")
        # the first line: under pytest, assertion rewriting adds an explanation below it
        lines.extend(f"  {c.case} on {c.column}: {c.reason.partition(chr(10))[0]}" for c in failures)
    counts = {v: sum(1 for c in cells if c.verdict is v) for v in Verdict}
    lines.append(
        f"{len(cells)} cells: {counts[Verdict.PASS]} passed, {counts[Verdict.FAIL]} failed, "
        f"{counts[Verdict.UNSUPPORTED]} unsupported by design, "
        f"{counts[Verdict.NOT_APPLICABLE]} not applicable"
    )
    return "\n".join(lines)


def as_json(cells: Iterable[Cell], selected: Sequence[Column]) -> dict[str, Any]:
    """The matrix as JSON-ready data."""
    return {
        "columns": [
            {
                "name": c.name,
                "transport": c.transport,
                "client": c.client,
                "json": c.json,
                "summary": c.summary,
            }
            for c in selected
        ],
        "cells": [dataclasses.asdict(c) | {"verdict": c.verdict.name.lower()} for c in cells],
    }
