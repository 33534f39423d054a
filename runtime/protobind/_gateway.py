"""``Gateway``: serve the services of one URL (the upstream) on other URLs, with no generated code.

The gateway is a :class:`~protobind.Server` whose handlers forward every call through a
:class:`~protobind.Channel` to the upstream. Both sides are driven by :class:`~protobind.ServiceInfo`
values (from ``.proto`` files or from reflection), whose message classes are made at run time from
the descriptors. So a NATS-only service gets Connect, REST routes and an OpenAPI document on HTTP,
or a gRPC service appears on NATS, by configuration::

    services = load_services(["greeter/v1/greeter.proto"], ["proto"])   # protobind_codegen.descriptors
    gateway = protobind.Gateway(services, upstream="nats://127.0.0.1:4222")
    await gateway.start("http://127.0.0.1:8080", "grpc://127.0.0.1:50051")

Every method kind takes one path (:func:`_relay`): the request metadata (less the headers that
describe the incoming connection), the caller's deadline and cancellation go upstream; response
headers, trailers, messages and errors (code, message, details) come back. A kind one side cannot
carry fails as that side fails it (bidi over HTTP/1.1 is ``UNIMPLEMENTED``). A one-way method is
acknowledged once decoded and forwarded in the background, as any server runs a one-way handler;
a durable one is acknowledged only once the upstream stored it.

Messages are decoded by the listening binding and encoded again for the upstream. Both use the
same dynamic classes, and protobuf keeps fields it does not know, so a gateway built from an older
contract still forwards newer fields in binary. A JSON caller needs the gateway's contract to know
every field it sends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from google.protobuf.message import Message

from ._client import Channel, connect
from ._context import CallInfo, Context
from ._errors import Code, RpcError
from ._interceptors import ClientInterceptor, Handler, ServerInterceptor, chain_server
from ._metadata import Metadata
from ._server import Server
from .endpoints import Endpoint
from .http._wire import PROTOCOL_HEADERS
from .method import MethodInfo, MethodKind, ServiceInfo
from .telemetry import Telemetry, TelemetryOption

__all__ = ["Gateway"]

logger = logging.getLogger("protobind.gateway")

# Headers that describe one hop (the connection, the body's framing, the protocol in use), not the
# call: each binding writes its own, and a forwarded copy would be wrong or refused upstream.
_HOP_HEADERS = PROTOCOL_HEADERS | {"accept", "user-agent"}
_HOP_PREFIXES = (":", "grpc-", "connect-", "nats-", "protobind-")

#: What a caller is told when the call to the upstream failed in the transport, not in a handler.
_TRANSPORT_FAILURE = {
    Code.UNAVAILABLE: "upstream unavailable",
    Code.RESOURCE_EXHAUSTED: "the upstream refused the call: it exceeds a limit (message or metadata size)",
}

#: One upstream call of any kind: ``(request or requests, timeout, metadata, call) -> responses``.
_Upstream = Callable[[Any, "float | None", Metadata, CallInfo], AsyncGenerator[Message, None]]


def _forwarded(metadata: Metadata) -> Metadata:
    """``metadata`` without the per-hop headers."""
    kept = Metadata()
    for key, value in metadata.items():
        if key not in _HOP_HEADERS and not key.startswith(_HOP_PREFIXES):
            kept.add(key, value)
    return kept


def _upstream(channel: Channel, method: MethodInfo[Any, Any]) -> _Upstream:
    """The channel call for ``method``'s kind, as one shape: ``(request(s), call) -> responses``."""
    kind = method.kind

    async def responses(
        request: Any, timeout: float | None, metadata: Metadata, call: CallInfo
    ) -> AsyncGenerator[Message, None]:
        if kind is MethodKind.UNARY:
            yield await channel.unary(method, request, timeout, metadata, call)
        elif kind is MethodKind.CLIENT_STREAMING:
            yield await channel.client_stream(method, request, timeout, metadata, call)
        elif kind is MethodKind.SERVER_STREAMING:
            async for response in channel.server_stream(method, request, timeout, metadata, call):
                yield response
        else:
            async for response in channel.bidi_stream(method, request, timeout, metadata, call):
                yield response

    return responses


async def _relay(upstream: _Upstream, request: Any, context: Context) -> AsyncIterator[Message]:
    """Run one call upstream and yield its responses; its headers reach ``context`` before the
    first response, its trailers when it ends (also when it fails: errors pass through)."""
    call = CallInfo()
    headers_copied = False

    def copy(metadata: Metadata, add: Callable[[str, str | bytes], None]) -> None:
        for key, value in _forwarded(metadata).items():
            add(key, value)

    try:
        # aclosing: when the caller goes away, the upstream call is cancelled here and now
        async with contextlib.aclosing(
            upstream(request, context.time_remaining(), _forwarded(context.metadata), call)
        ) as responses:
            async for response in responses:
                if not headers_copied:
                    headers_copied = True
                    copy(call.headers, context.set_header)
                yield response
    except RpcError as error:
        if error.__cause__ is None:
            raise  # the upstream's own answer (or protobind's), passed on as it is
        # The transport's words (an address, a library's message, a list of headers): for the log.
        logger.warning("upstream call %s failed: %s: %s", context.method, error.code.name, error.message)
        message = _TRANSPORT_FAILURE.get(error.code, "upstream call failed")
        raise RpcError(error.code, message, error.details) from None
    finally:
        if not headers_copied:
            copy(call.headers, context.set_header)
        copy(call.trailers, context.set_trailer)


def _handler(channel: Channel, method: MethodInfo[Any, Any]) -> Handler:
    upstream = _upstream(channel, method)
    if method.kind.server_streams:

        async def open_stream(request: Any, context: Context) -> AsyncIterator[Message]:
            return _relay(upstream, request, context)

        return open_stream

    async def single(request: Any, context: Context) -> Message | None:
        last = None
        async for response in _relay(upstream, request, context):
            last = response
        return last

    return single


class Gateway(Server):
    """A :class:`~protobind.Server` that serves the services of ``upstream`` (a URL) by forwarding
    every call there: ``start(*urls)``, ``stop(grace)``, ``run(*urls, loop=...)`` as for a server.

    ``services`` describes what to forward (:class:`~protobind.ServiceInfo` values, e.g. from
    ``protobind_codegen.descriptors.load_services`` or from reflection). ``interceptors`` run on
    the listening side, ``client_interceptors`` on the upstream channel; ``transport_options``
    are the listening bindings' options (as for a server), ``upstream_options`` the channel's.
    ``telemetry`` traces and measures both sides (a server span per call received, a client span
    per call forwarded); without it, trace context in the metadata passes through unchanged.
    """

    def __init__(
        self,
        services: Iterable[ServiceInfo],
        upstream: str,
        *,
        interceptors: Sequence[ServerInterceptor] = (),
        client_interceptors: Sequence[ClientInterceptor] = (),
        transport_options: Mapping[str, Mapping[str, Any]] | None = None,
        upstream_options: Mapping[str, Any] | None = None,
        telemetry: TelemetryOption = None,
    ) -> None:
        telemetry = Telemetry.from_option(telemetry)
        super().__init__(
            (), interceptors=interceptors, transport_options=transport_options, telemetry=telemetry
        )
        self.channel = connect(
            upstream, interceptors=client_interceptors, options=upstream_options, telemetry=telemetry
        )
        for info in services:
            handlers = {m.name: _handler(self.channel, m) for m in info.methods}
            self.add_handlers(info, handlers)
            for method in info.methods:
                if method.oneway and method.durable:
                    # A durable call is stored before its caller returns: here, that is once the
                    # upstream stored it. So no early acknowledgement with the forward left to the
                    # background (a gateway stopped after it would lose the call).
                    forward = chain_server(handlers[method.name], self.interceptors)
                    self.endpoints[method.path] = Endpoint(method, forward, forward)
        if not self.services:
            raise ValueError("a gateway needs at least one service to forward")

    async def start(self, *urls: str) -> list[str]:
        """Connect to the upstream, then listen on ``urls``; return the bound URLs."""
        await self.channel.open()
        try:
            return await super().start(*urls)
        except BaseException:
            await self.channel.close()
            raise

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop listening (in-flight calls get ``grace`` seconds), then close the upstream channel."""
        await super().stop(grace)
        await self.channel.close()
