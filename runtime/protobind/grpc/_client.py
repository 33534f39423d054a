"""The gRPC client transport: the engine's choice, and the grpcio engine's client (one cached
grpc.aio multicallable per method)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from .._context import CallInfo
from .._errors import Code, RpcError, unpack_details
from .._metadata import Metadata
from ..method import MethodInfo, MethodKind
from ..reflection import Reflected
from ..transport import ClientTransport, DialFunction
from ._options import client_options, parse_address
from ._wire import DETAILS_KEY, ServerStatus, _deserializer, _wire, from_grpc_code

__all__ = [
    "GrpcTransport",
    "dial",
]

# --- client ---------------------------------------------------------------------------------------


async def dial(url: str, options: Mapping[str, Any]) -> ClientTransport:
    """A client of ``url`` (``grpc://`` or ``grpcs://``): the native engine's, or a grpc.aio channel
    with ``engine=grpcio`` (_options.py decides)."""
    address = parse_address(url, need_port=False)
    config = client_options(address, options)
    if config.engine == "native":
        from ._native_client import dial_native

        return await dial_native(address, config)
    target = address.target()
    if address.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=config.tls_ca, private_key=config.tls_key, certificate_chain=config.tls_cert
        )
        channel = grpc.aio.secure_channel(target, credentials, options=config.client_channel_args())
    else:
        channel = grpc.aio.insecure_channel(target, options=config.client_channel_args())
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
    code = from_grpc_code(exc.code())
    message = exc.details() or ""
    if code is Code.DEADLINE_EXCEEDED and "Deadline Exceeded" in message:
        # grpc core's own words (`Deadline Exceeded`, `Stream removed (Deadline Exceeded)`):
        # every transport says it the same way
        message = "deadline exceeded"
    return RpcError(code, message, details)


#: Codes whose status text gRPC core writes without naming anything ("Deadline Exceeded").
_PLAIN_CODES = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})


def _library(exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError | None:
    """``exc`` when its status may be gRPC core's own, to chain to the :class:`RpcError`.

    A status that came with trailers was sent by the server's application (a protobind server
    always sends ``grpc-status-details-bin``). One without may come from core, on either side (a
    connection failure, a limit of the peer's core), and its text can name addresses or list
    the request's headers (see :class:`~protobind.RpcError`).
    """
    return None if exc.trailing_metadata() or exc.code() in _PLAIN_CODES else exc


class GrpcTransport(ClientTransport):
    """The client half: one grpc.aio channel, one multicallable per method path."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._callables: dict[str, Any] = {}

    async def reflect(self, timeout: float | None, metadata: Metadata) -> Reflected:
        """The server's services and descriptors, from gRPC server reflection (v1, else v1alpha)."""
        from ._reflection import fetch

        return await fetch(self._channel, timeout, _wire(metadata, strict=True))

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
        metadata = call.outgoing_metadata
        wire = None if metadata is None else _wire(metadata, strict=True)
        grpc_call = multicallable(request, timeout=_timeout(call), metadata=wire)
        try:
            response = await grpc_call
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, call) from _library(exc)
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
        outgoing = call.outgoing_metadata
        metadata = None if outgoing is None else _wire(outgoing, strict=True)
        writer: asyncio.Task[None] | None = None
        status: ServerStatus | None = None
        if method.kind.client_streams:
            grpc_call = multicallable(timeout=_timeout(call), metadata=metadata)
            status = ServerStatus(grpc_call)
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
            if status is not None:
                exc = status.of(exc)
            raise _error(exc, call) from _library(exc)
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


# mypy checks this module's dial against the transport interface (TRANSPORT imports it lazily)
_CHECK: DialFunction = dial
