"""``grpc://host:port`` and ``grpcs://host:port``: standard gRPC over grpcio's asyncio API.

Server side, every endpoint of the :class:`~protobind.Server` becomes a grpcio method handler in
one generic handler per service, with the message classes' own ``FromString`` /
``SerializeToString`` as (de)serializers, so no protoc ``_pb2_grpc`` module is needed and
grpcio's C core does the framing. Client side, each method path gets one cached grpcio
multicallable per channel. Errors travel as gRPC status plus a ``google.rpc.Status`` in
``grpc-status-details-bin``, which is what ``grpcio-status`` and other gRPC stacks read.

Options (URL query string or ``options``), see docs/protocols.md: ``max_message_size`` (bytes,
default 4 MiB), ``cert`` / ``key`` / ``ca`` (PEM paths or PEM bytes), ``server_name`` (client),
``health`` / ``reflection`` (server, default true).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from ._grpc_config import Address, GrpcOptions, client_options, parse_address, server_options
from ._grpc_services import Health, add_reflection
from .context import CallInfo, Context
from .errors import Code, RpcError, unpack_details
from .metadata import Metadata
from .method import MethodInfo, MethodKind
from .server import Endpoint, invoke_stream, invoke_unary

if TYPE_CHECKING:
    from .server import Server

logger = logging.getLogger("protobind.grpc")

DETAILS_KEY = "grpc-status-details-bin"

# The one mapping between protobind's codes and grpcio's; both use gRPC's names.
_TO_GRPC: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in Code}
_FROM_GRPC: dict[grpc.StatusCode, Code] = {status: code for code, status in _TO_GRPC.items()}


def to_grpc_code(code: Code) -> grpc.StatusCode:
    return _TO_GRPC[code]


def from_grpc_code(status: grpc.StatusCode | None) -> Code:
    return _FROM_GRPC.get(status, Code.UNKNOWN) if status is not None else Code.UNKNOWN


WireMetadata = tuple[tuple[str, str | bytes], ...]


_KEY = re.compile(r"[0-9a-z_.\-]+\Z")
_TEXT = re.compile(r"[\x20-\x7e]*\Z")


def _wire_pair(key: str, value: str | bytes) -> tuple[str, str | bytes] | None:
    """One entry as grpcio wants it (``-bin`` keys carry bytes, every other key printable ASCII),
    or ``None`` when gRPC cannot carry it: core would fail the whole call on such an entry."""
    if not _KEY.match(key) or key.startswith("grpc-"):
        return None
    if key.endswith("-bin"):
        return key, value if isinstance(value, bytes) else value.encode()
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return (key, value) if _TEXT.match(value) else None


def _wire(metadata: Metadata, *, strict: bool) -> WireMetadata:
    """``metadata`` for grpcio. Entries gRPC cannot carry raise ``ValueError`` when ``strict``
    (a caller's own request metadata), otherwise they are logged and left out (a handler's
    response metadata: the call itself should still succeed)."""
    pairs: list[tuple[str, str | bytes]] = []
    for key, value in metadata.items():
        pair = _wire_pair(key, value)
        if pair is not None:
            pairs.append(pair)
        elif strict:
            raise ValueError(
                f"metadata {key!r} cannot be sent over gRPC: keys are lower-case [0-9a-z_.-] and not "
                "grpc-*, values of keys not ending in -bin are printable ASCII"
            )
        else:
            logger.error("response metadata %r left out: not valid gRPC metadata", key)
    return tuple(pairs)


def _deserializer(message_type: type[Message]) -> Callable[[bytes], Message | None]:
    """Parse, or give ``None`` for bytes that are not the message: grpcio would otherwise turn a
    parse error into UNKNOWN with the exception text in the status message."""
    parse = message_type.FromString

    def deserialize(data: bytes) -> Message | None:
        try:
            return parse(data)
        except Exception:
            return None

    return deserialize


# --- server ---------------------------------------------------------------------------------------


class GrpcBinding:
    """A grpc.aio server serving one :class:`~protobind.Server` at one address."""

    def __init__(self, server: Any, url: str, health: Health | None) -> None:
        self._server = server
        self._url = url
        self._health = health
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


async def serve(server: Server, url: str, options: Mapping[str, Any]) -> GrpcBinding:
    address = parse_address(url, need_port=True)
    config = server_options(address, options)
    # so_reuseport off: binding a port another server holds must fail, not silently share it.
    grpc_server = grpc.aio.server(options=[*config.channel_args(), ("grpc.so_reuseport", 0)])
    try:
        return await _start(grpc_server, server, address, config)
    except BaseException:
        # An unstarted grpc.aio server still needs stopping, or its finalizer runs on a dead loop.
        await grpc_server.stop(None)
        raise


async def _start(grpc_server: Any, server: Server, address: Address, config: GrpcOptions) -> GrpcBinding:
    for info in server.services:
        handlers = {
            m.name: _method_handler(server.endpoints[m.path])
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

        health = Health(grpc_server, ["", *(s.name for s in server.services)])
        extra_names.append(grpc_health.SERVICE_NAME)
    if config.reflection:
        add_reflection(grpc_server, server.services, extra_names)
    port = _bind(grpc_server, address, config)
    await grpc_server.start()
    if health is not None:
        await health.serving()
    return GrpcBinding(grpc_server, f"{address.scheme}://{address.target(port)}", health)


def _bind(grpc_server: Any, address: Address, config: GrpcOptions) -> int:
    target = address.target()
    try:
        if address.tls:
            assert config.key is not None and config.cert is not None
            credentials = grpc.ssl_server_credentials(
                [(config.key, config.cert)],
                root_certificates=config.ca,
                require_client_auth=config.ca is not None,
            )
            port = grpc_server.add_secure_port(target, credentials)
        else:
            port = grpc_server.add_insecure_port(target)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC server to {target}") from exc
    if not port:
        raise OSError(f"cannot bind gRPC server to {target}")
    return int(port)


def _method_handler(endpoint: Endpoint) -> Any:
    method = endpoint.method
    deserialize = _deserializer(method.input_type)
    serialize = method.output_type.SerializeToString
    kind = method.kind
    if kind is MethodKind.UNARY:
        return grpc.unary_unary_rpc_method_handler(
            _unary_handler(endpoint), request_deserializer=deserialize, response_serializer=serialize
        )
    if kind is MethodKind.SERVER_STREAMING:
        return grpc.unary_stream_rpc_method_handler(
            _server_stream_handler(endpoint), request_deserializer=deserialize, response_serializer=serialize
        )
    if kind is MethodKind.CLIENT_STREAMING:
        return grpc.stream_unary_rpc_method_handler(
            _client_stream_handler(endpoint), request_deserializer=deserialize, response_serializer=serialize
        )
    return grpc.stream_stream_rpc_method_handler(
        _bidi_handler(endpoint), request_deserializer=deserialize, response_serializer=serialize
    )


def _deadline(remaining: float) -> float:
    """The caller's deadline as well as ``grpc-timeout`` tells it, never later than the real one.

    gRPC core rounds the timeout it sends *up* to a coarser unit as it grows (1 ms below 1 s,
    10 ms below 10 s, 100 ms below 100 s, then seconds), from a clock it may have read a little
    earlier, so a 5 s timeout can arrive as 5.01 s. Taking one such step off keeps a handler from
    planning with time its caller will not wait for.
    """
    if remaining < 1.0:
        slack = 0.001
    elif remaining < 10.0:
        slack = 0.01
    elif remaining < 100.0:
        slack = 0.1
    else:
        slack = 1.0
    return time.monotonic() + max(0.0, remaining - slack)


def _context(method: MethodInfo[Any, Any], rpc: Any) -> Context:
    remaining = rpc.time_remaining()
    return Context(
        method,
        "grpc",
        metadata_source=rpc.invocation_metadata,
        deadline=None if remaining is None else _deadline(remaining),
        peer=rpc.peer(),
    )


def _invalid(method: MethodInfo[Any, Any]) -> RpcError:
    return RpcError(
        Code.INVALID_ARGUMENT, f"request is not a valid binary {method.input_type.DESCRIPTOR.full_name}"
    )


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


def _unary_handler(endpoint: Endpoint) -> Callable[[Any, Any], Any]:
    method = endpoint.method

    async def handle(request: Message | None, rpc: Any) -> Message:
        if request is None:
            await _fail(rpc, _invalid(method), None)
        context = _context(method, rpc)
        try:
            response = await invoke_unary(endpoint, request, context, enforce_deadline=False)
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


def _client_stream_handler(endpoint: Endpoint) -> Callable[[Any, Any], Any]:
    method = endpoint.method

    async def handle(request_iterator: AsyncIterator[Message | None], rpc: Any) -> Message:
        context = _context(method, rpc)
        try:
            response = await invoke_unary(
                endpoint, _requests(request_iterator, rpc, method), context, enforce_deadline=False
            )
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


async def _write_stream(endpoint: Endpoint, request: Any, rpc: Any, context: Context) -> None:
    headers_sent = False
    try:
        # aclosing: when a write fails or the call is cancelled between two responses, the
        # handler's generator must still be closed here, in this task, not later by the GC.
        stream = cast(
            "AsyncGenerator[Message, None]", invoke_stream(endpoint, request, context, enforce_deadline=False)
        )
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


def _server_stream_handler(endpoint: Endpoint) -> Callable[[Any, Any], Any]:
    method = endpoint.method

    async def handle(request: Message | None, rpc: Any) -> None:
        if request is None:
            await _fail(rpc, _invalid(method), None)
        await _write_stream(endpoint, request, rpc, _context(method, rpc))

    return handle


def _bidi_handler(endpoint: Endpoint) -> Callable[[Any, Any], Any]:
    method = endpoint.method

    async def handle(request_iterator: AsyncIterator[Message | None], rpc: Any) -> None:
        await _write_stream(endpoint, _requests(request_iterator, rpc, method), rpc, _context(method, rpc))

    return handle


# --- client ---------------------------------------------------------------------------------------


async def dial(url: str, options: Mapping[str, Any]) -> GrpcTransport:
    address = parse_address(url, need_port=False)
    config = client_options(address, options)
    target = address.target()
    if address.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=config.ca, private_key=config.key, certificate_chain=config.cert
        )
        channel = grpc.aio.secure_channel(target, credentials, options=config.channel_args())
    else:
        channel = grpc.aio.insecure_channel(target, options=config.channel_args())
    return GrpcTransport(channel)


def _metadata(pairs: Any) -> Metadata:
    """grpcio's response metadata as protobind's, without the status details (already in the error)."""
    metadata = Metadata()
    for key, value in pairs:
        if key != DETAILS_KEY:
            metadata.add(key, value)
    return metadata


def _timeout(call: CallInfo) -> float | None:
    deadline = call.deadline
    return None if deadline is None else deadline - time.monotonic()


def _bad_response(method: MethodInfo[Any, Any]) -> RpcError:
    return RpcError(
        Code.INTERNAL,
        f"the server sent a response that is not a valid {method.output_type.DESCRIPTOR.full_name}",
    )


def _error(exc: grpc.aio.AioRpcError, call: CallInfo) -> RpcError:
    """The :class:`RpcError` for a failed grpcio call; headers and trailers go to ``call``."""
    initial = exc.initial_metadata()
    if initial:
        call.headers = _metadata(initial)
    details: list[Message] = []
    trailers = Metadata()
    trailing: Any = exc.trailing_metadata() or ()
    for key, value in trailing:
        if key == DETAILS_KEY:
            status = status_pb2.Status()
            with contextlib.suppress(Exception):
                status.ParseFromString(value)
                details = unpack_details(status.details)
        else:
            trailers.add(key, value)
    call.trailers = trailers
    return RpcError(from_grpc_code(exc.code()), exc.details() or "", details)


class GrpcTransport:
    """The client half: one grpc.aio channel, one multicallable per method path."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._callables: dict[str, Any] = {}

    def _callable(self, method: MethodInfo[Any, Any]) -> Any:
        factory = {
            MethodKind.UNARY: self._channel.unary_unary,
            MethodKind.SERVER_STREAMING: self._channel.unary_stream,
            MethodKind.CLIENT_STREAMING: self._channel.stream_unary,
            MethodKind.BIDI_STREAMING: self._channel.stream_stream,
        }[method.kind]
        multicallable = factory(
            method.path,
            request_serializer=method.input_type.SerializeToString,
            response_deserializer=_deserializer(method.output_type),
        )
        self._callables[method.path] = multicallable
        return multicallable

    async def unary(self, request: Message, call: CallInfo) -> Message:
        method = call.method
        assert method is not None
        multicallable = self._callables.get(method.path) or self._callable(method)
        metadata = call.metadata
        grpc_call = multicallable(
            request, timeout=_timeout(call), metadata=_wire(metadata, strict=True) if metadata else None
        )
        try:
            response = await grpc_call
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, call) from None
        if call.wants_response_metadata:
            # Each of these awaits costs about as much as all the rest of this method.
            headers = await grpc_call.initial_metadata()
            if headers:
                call.headers = _metadata(headers)
            trailers = await grpc_call.trailing_metadata()
            if trailers:
                call.trailers = _metadata(trailers)
        if response is None:
            raise _bad_response(method)
        return response  # type: ignore[no-any-return]

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        method = call.method
        assert method is not None
        multicallable = self._callables.get(method.path) or self._callable(method)
        metadata = _wire(call.metadata, strict=True) if call.metadata else None
        writer: asyncio.Task[None] | None = None
        if method.kind.client_streams:
            grpc_call = multicallable(timeout=_timeout(call), metadata=metadata)
            writer = asyncio.ensure_future(_write_requests(grpc_call, requests))
            writer.add_done_callback(_cancel_call_on_failure(grpc_call))
        else:
            grpc_call = multicallable(await anext(requests), timeout=_timeout(call), metadata=metadata)
        try:
            if method.kind.server_streams:
                first = True
                async for response in grpc_call:
                    if first:
                        first = False
                        call.headers = _metadata(await grpc_call.initial_metadata())
                    if response is None:
                        raise _bad_response(method)
                    yield response
            else:
                response = await grpc_call
                if response is None:
                    raise _bad_response(method)
                call.headers = _metadata(await grpc_call.initial_metadata())
                yield response
            call.headers = _metadata(await grpc_call.initial_metadata())
            call.trailers = _metadata(await grpc_call.trailing_metadata())
        except grpc.aio.AioRpcError as exc:
            _raise_request_failure(writer)
            raise _error(exc, call) from None
        except asyncio.CancelledError:
            # A failing request iterator cancels the gRPC call; surface its exception instead.
            _raise_request_failure(writer)
            raise
        finally:
            if writer is not None and not writer.done():
                writer.cancel()
            if not grpc_call.done():
                grpc_call.cancel()

    async def close(self) -> None:
        await self._channel.close()


async def _write_requests(grpc_call: Any, requests: AsyncIterator[Message]) -> None:
    async for request in requests:
        try:
            await grpc_call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # The call already ended (the server answered or failed); the reader reports it.
            return
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await grpc_call.done_writing()


def _cancel_call_on_failure(grpc_call: Any) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            grpc_call.cancel()

    return done


def _raise_request_failure(writer: asyncio.Task[None] | None) -> None:
    if writer is not None and writer.done() and not writer.cancelled():
        failure = writer.exception()
        if failure is not None:
            raise failure
