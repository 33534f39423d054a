"""The gRPC server binding: the engine's choice, and the grpcio engine's server (every endpoint as a
grpc.aio generic method handler)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from .._context import Context
from .._errors import Code, RpcError
from .._wire import grpc_deadline
from ..endpoints import Endpoint, invoke_stream, invoke_unary
from ..limits import ConcurrencyLimit, ReadTimer
from ..method import MethodInfo, MethodKind
from ..transport import ServeFunction, ServerBinding, listen_socket
from ._options import Address, GrpcOptions, parse_address, server_options
from ._services import Health, add_reflection
from ._wire import _TO_GRPC, DETAILS_KEY, WireMetadata, _deserializer, _wire

if TYPE_CHECKING:
    from ..endpoints import EndpointTable

__all__ = [
    "GrpcBinding",
    "serve",
]

#: What grpcio's ``read()`` returns once the request stream has ended.
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


# --- server ---------------------------------------------------------------------------------------


class GrpcBinding(ServerBinding):
    """A grpc.aio server serving one :class:`~protobind.Server` at one address."""

    def __init__(self, server: Any, url: str, health: Health | None, timer: ReadTimer) -> None:
        self._server = server
        self._url = url
        self._health = health
        self._timer = timer
        self._stopped = False

    @property
    def url(self) -> str:
        return self._url

    async def stop(self, grace: float | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._health is not None:
            await self._health.shutting_down()
        # grpcio refuses new calls at once and cancels what is left when the grace period ends;
        # a grace of 0 or None cancels in-flight calls immediately.
        await self._server.stop(grace or None)
        self._timer.close()


async def serve(server: EndpointTable, url: str, options: Mapping[str, Any]) -> ServerBinding:
    """Serve ``server``'s endpoints at ``url`` on the native engine, or on a grpc.aio server with
    ``engine=grpcio`` (_options.py decides)."""
    address = parse_address(url, need_port=True)
    config = server_options(address, options)
    if config.engine == "native":
        from ._native_server import serve_native

        return await serve_native(server, address, config)
    grpc_server = grpc.aio.server(options=config.server_channel_args())
    try:
        return await _start(grpc_server, server, address, config)
    except BaseException:
        # An unstarted grpc.aio server still needs stopping, or its finalizer runs on a dead loop.
        await grpc_server.stop(None)
        raise


async def _start(
    grpc_server: Any, server: EndpointTable, address: Address, config: GrpcOptions
) -> GrpcBinding:
    limit = config.limits.concurrency_limit()
    timer = ReadTimer(config.limits.body_timeout)
    for info in server.services:
        handlers = {
            m.name: _method_handler(server.endpoints[m.path], limit, timer)
            for m in info.methods
            if m.path in server.endpoints
        }
        # Generic handlers only: grpcio's "registered methods" cost more per call than they save
        # (measured with callgrind, grpcio 1.85: each registered method adds work to every call).
        grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(info.name, handlers),))
    health = None
    extra_names = []
    if config.health:
        from grpc_health.v1 import health as grpc_health

        health = Health(grpc_server, ["", *(s.name for s in server.services)], server.authorize)
        extra_names.append(grpc_health.SERVICE_NAME)
    if config.reflection:
        add_reflection(grpc_server, server.services, extra_names, server.authorize)
    port = _bind(grpc_server, address, config)
    await grpc_server.start()
    if health is not None:
        await health.serving()
    return GrpcBinding(grpc_server, f"{address.scheme}://{address.target(port)}", health, timer)


def _bind(grpc_server: Any, address: Address, config: GrpcOptions) -> int:
    target = address.target()
    if address.port:
        # Bind the port once ourselves first: when it is taken, grpc core would write its own error
        # line to stderr and report no reason; this fails with one line that names both.
        reuse_port = bool(dict(config.server_channel_args()).get("grpc.so_reuseport"))
        listen_socket(address.host, address.port, reuse_port=reuse_port).close()
    try:
        if address.tls:
            assert config.tls_key is not None and config.tls_cert is not None
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key, config.tls_cert)],
                root_certificates=config.tls_ca,
                require_client_auth=config.tls_ca is not None,
            )
            port = grpc_server.add_secure_port(target, credentials)
        else:
            port = grpc_server.add_insecure_port(target)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {target}: gRPC could not bind it") from exc
    if not port:
        raise OSError(f"cannot listen on {target}: gRPC could not bind it")
    return int(port)


def _method_handler(endpoint: Endpoint, limit: ConcurrencyLimit, timer: ReadTimer) -> Any:
    method = endpoint.method
    deserialize = _deserializer(method.input_type)
    serialize = method.output_type.SerializeToString
    kind = method.kind
    # Unary and server-streaming methods are registered as client-streaming / bidi handlers that
    # read their one request themselves: grpcio's own unary path never answers a call whose
    # request stream ends without a complete message (it returns without a status, and the call
    # stays open until the client gives up), and it has no time limit on reading the request.
    if kind is MethodKind.UNARY:
        return grpc.stream_unary_rpc_method_handler(
            _unary_handler(endpoint, limit, timer),
            request_deserializer=deserialize,
            response_serializer=serialize,
        )
    if kind is MethodKind.SERVER_STREAMING:
        return grpc.stream_stream_rpc_method_handler(
            _server_stream_handler(endpoint, limit, timer),
            request_deserializer=deserialize,
            response_serializer=serialize,
        )
    if kind is MethodKind.CLIENT_STREAMING:
        return grpc.stream_unary_rpc_method_handler(
            _client_stream_handler(endpoint, limit),
            request_deserializer=deserialize,
            response_serializer=serialize,
        )
    return grpc.stream_stream_rpc_method_handler(
        _bidi_handler(endpoint, limit), request_deserializer=deserialize, response_serializer=serialize
    )


def _context(method: MethodInfo[Any, Any], rpc: Any) -> Context:
    remaining = rpc.time_remaining()
    return Context(
        method,
        "grpc",
        metadata_source=rpc.invocation_metadata,
        deadline=None if remaining is None else grpc_deadline(remaining),
        peer=rpc.peer(),
    )


def _invalid(method: MethodInfo[Any, Any]) -> RpcError:
    return RpcError(
        Code.INVALID_ARGUMENT, f"request is not a valid binary {method.input_type.DESCRIPTOR.full_name}"
    )


async def _read_one(rpc: Any, method: MethodInfo[Any, Any], timer: ReadTimer) -> Message:
    """The single request of a unary or server-streaming call, read within ``body_timeout``."""
    return await timer.run(_only_request(rpc, method))


async def _only_request(rpc: Any, method: MethodInfo[Any, Any]) -> Message:
    request = await rpc.read()
    if request is _EOF:
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f"the request stream ended without a complete {method.input_type.DESCRIPTOR.full_name} message",
        )
    if request is None:
        raise _invalid(method)
    # The stream must end here. Its end came with the message (every gRPC client half-closes a
    # unary or server-streaming call as it sends the request), so this read does not wait; a
    # second message is gRPC's "request cardinality violation" (doc/statuscodes.md).
    if await rpc.read() is not _EOF:
        raise RpcError(
            Code.UNIMPLEMENTED,
            f"{method.full_name} takes exactly one request message; the request stream held more",
        )
    return request  # type: ignore[no-any-return]


async def _requests(
    request_iterator: AsyncIterator[Message | None], rpc: Any, method: MethodInfo[Any, Any]
) -> AsyncIterator[Message]:
    async for request in request_iterator:
        if request is None:
            raise _invalid(method)
        yield request
    # grpcio ends the request stream the same way whether the caller half-closed or went away;
    # a cancellation reaches this task only when core's separate "call closed" event is handled.
    # One more read costs a round trip through core's completion queue, which delivers that
    # event first if the caller is gone, so a handler never mistakes an abandoned call for a
    # complete request stream.
    with contextlib.suppress(Exception):
        await rpc.read()
    if rpc.cancelled():
        raise asyncio.CancelledError


async def _send_headers(rpc: Any, context: Context) -> None:
    headers, _ = context.response_metadata()
    if headers:
        await rpc.send_initial_metadata(_wire(headers, strict=False))


def _set_trailers(rpc: Any, context: Context) -> None:
    _, trailers = context.response_metadata()
    if trailers:
        rpc.set_trailing_metadata(_wire(trailers, strict=False))


async def _fail(rpc: Any, error: RpcError, context: Context | None, headers_sent: bool = False) -> NoReturn:
    """End the call with ``error``: the code and message as gRPC status, the whole error (details
    included) as ``google.rpc.Status`` in ``grpc-status-details-bin``, plus the handler's trailers."""
    # OK cannot be an error status on the wire.
    code = error.code if error.code is not Code.OK else Code.UNKNOWN
    status = status_pb2.Status(code=int(code), message=error.message, details=error.packed_details())
    trailers: WireMetadata = ()
    if context is not None:
        if not headers_sent:
            await _send_headers(rpc, context)
        _, handler_trailers = context.response_metadata()
        if handler_trailers:
            trailers = _wire(handler_trailers, strict=False)
    await rpc.abort(_TO_GRPC[code], error.message, (*trailers, (DETAILS_KEY, status.SerializeToString())))
    raise AssertionError("grpc abort() returned")  # pragma: no cover


# Every handler below passes enforce_deadline=False: gRPC core itself cancels the handler's task when
# the call's deadline passes (and the caller's own core reports DEADLINE_EXCEEDED), so a second,
# Python-level timer per call would only cost time.


def _unary_handler(
    endpoint: Endpoint, limit: ConcurrencyLimit, timer: ReadTimer
) -> Callable[[Any, Any], Any]:
    method = endpoint.method

    async def handle(request_iterator: Any, rpc: Any) -> Message:
        try:
            request = await _read_one(rpc, method, timer)
        except RpcError as error:
            await _fail(rpc, error, None)
        context = _context(method, rpc)
        try:
            response = await invoke_unary(endpoint, request, context, enforce_deadline=False, limit=limit)
        except RpcError as error:
            await _fail(rpc, error, context)
        # Inline rather than through the helpers: this is every unary call's path.
        headers, trailers = context.response_metadata()
        if headers:
            await rpc.send_initial_metadata(_wire(headers, strict=False))
        if trailers:
            rpc.set_trailing_metadata(_wire(trailers, strict=False))
        return response

    return handle


def _client_stream_handler(endpoint: Endpoint, limit: ConcurrencyLimit) -> Callable[[Any, Any], Any]:
    method = endpoint.method

    async def handle(request_iterator: AsyncIterator[Message | None], rpc: Any) -> Message:
        context = _context(method, rpc)
        try:
            response = await invoke_unary(
                endpoint,
                _requests(request_iterator, rpc, method),
                context,
                enforce_deadline=False,
                limit=limit,
            )
        except RpcError as error:
            await _fail(rpc, error, context)
        headers, trailers = context.response_metadata()
        if headers:
            await rpc.send_initial_metadata(_wire(headers, strict=False))
        if trailers:
            rpc.set_trailing_metadata(_wire(trailers, strict=False))
        return response

    return handle


async def _write_stream(
    endpoint: Endpoint, request: Any, rpc: Any, context: Context, limit: ConcurrencyLimit
) -> None:
    headers_sent = False
    try:
        # aclosing: when a write fails or the call is cancelled between two responses, the
        # handler's generator must still be closed here, in this task, not later by the GC.
        stream = invoke_stream(endpoint, request, context, enforce_deadline=False, limit=limit)
        async with contextlib.aclosing(stream) as responses:
            async for response in responses:
                if not headers_sent:
                    headers_sent = True
                    await _send_headers(rpc, context)
                await rpc.write(response)
    except RpcError as error:
        await _fail(rpc, error, context, headers_sent)
    if not headers_sent:
        await _send_headers(rpc, context)
    _set_trailers(rpc, context)


def _server_stream_handler(
    endpoint: Endpoint, limit: ConcurrencyLimit, timer: ReadTimer
) -> Callable[[Any, Any], Any]:
    method = endpoint.method

    async def handle(request_iterator: Any, rpc: Any) -> None:
        try:
            request = await _read_one(rpc, method, timer)
        except RpcError as error:
            await _fail(rpc, error, None)
        await _write_stream(endpoint, request, rpc, _context(method, rpc), limit)

    return handle


def _bidi_handler(endpoint: Endpoint, limit: ConcurrencyLimit) -> Callable[[Any, Any], Any]:
    method = endpoint.method

    async def handle(request_iterator: AsyncIterator[Message | None], rpc: Any) -> None:
        await _write_stream(
            endpoint, _requests(request_iterator, rpc, method), rpc, _context(method, rpc), limit
        )

    return handle


# mypy checks this module's serve against the transport interface (TRANSPORT imports it lazily)
_CHECK: ServeFunction = serve
