"""What the benchmark compares: protobind bindings and the raw libraries under them.

Every peer serves the same call: ``protobind.conformance.v1.ConformanceService/Unary`` takes a
``Request`` with a payload and answers a ``Response`` carrying the same payload, parsed and
serialized on both sides, so raw and protobind peers do the same protobuf work.

``SERVERS[kind](host, nats_url)`` starts a server in the current process and returns
``(url, stop)``; ``CLIENTS[kind](url)`` returns ``(call, close)`` where ``await call(payload)``
makes one call. Transports add their peers here; ``PAIRS`` says which two are compared.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import protobind
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import (
    CONFORMANCE_SERVICE_UNARY,
    ConformanceServiceClient,
    ConformanceServiceService,
)

Stop = Callable[[], Awaitable[None]]
Call = Callable[[bytes], Awaitable[Any]]
Close = Callable[[], Awaitable[None]]
ServerFactory = Callable[[str, "str | None"], Awaitable[tuple[str, Stop]]]
ClientFactory = Callable[[str], Awaitable[tuple[Call, Close]]]

UNARY_PATH = CONFORMANCE_SERVICE_UNARY.path  # /protobind.conformance.v1.ConformanceService/Unary
NATS_SUBJECT = "protobind.conformance.v1.ConformanceService.Unary"

SERVERS: dict[str, ServerFactory] = {}
CLIENTS: dict[str, ClientFactory] = {}
# (label, protobind kind, raw peer kind or None)
PAIRS: list[tuple[str, str, str | None]] = []


class Echo(ConformanceServiceService):
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


async def aiter_once(item: Any) -> AsyncIterator[Any]:
    yield item
