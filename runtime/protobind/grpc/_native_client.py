"""The native gRPC engine's client: gRPC over one HTTP/2 connection on an asyncio protocol.

A unary call is one write (HEADERS and DATA with END_STREAM) and one future, resolved by the
response's trailers; streams hand their messages over as they arrive, reopening the flow-control
window as the caller reads them. The connection is opened at the first call and again after it is
lost or the server sent GOAWAY; a unary call the server refused unprocessed (GOAWAY above its
stream, REFUSED_STREAM) is sent once more on a fresh connection, as gRPC's transparent retry does.
New streams wait while the server's SETTINGS_MAX_CONCURRENT_STREAMS are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.message import Message
from google.rpc import status_pb2

from .._aio import Deadlines
from .._context import CallInfo
from .._errors import Code, RpcError, unpack_details
from .._metadata import Metadata
from .._wire import GRPC_DETAILS_KEY, b64decode_lenient
from ..method import MethodInfo, MethodKind
from ..reflection import Reflected
from ..transport import ClientTransport, network_reason
from . import _h2 as h2
from ._messages import ACCEPT_ENCODING, Deframer, encode_timeout, envelope, message_encoding, metadata_fields
from ._options import Address, GrpcOptions

__all__ = ["NativeTransport", "TransportFailure", "dial_native"]

_DETAILS = GRPC_DETAILS_KEY.encode()


class TransportFailure(Exception):
    """The cause of an error this engine made itself (the connection, the peer's HTTP/2), not one
    the server's application sent: a gateway logs its words instead of passing them on, as it does
    grpc core's."""


def _failure(code: Code, message: str) -> RpcError:
    error = RpcError(code, message)
    error.__cause__ = TransportFailure(message)
    return error


class _Retry(Exception):
    """The server did not process the stream: it may be sent again."""


class _ClientCall(h2.StreamBase):
    """One call's stream: what came back so far."""

    __slots__ = (
        "connection",
        "deframer",
        "done",
        "error",
        "headers",
        "inbox",
        "retry",
        "slot",
        "trailers",
        "waiter",
    )

    def __init__(self, connection: _ClientConnection, stream_id: int, limit: int) -> None:
        super().__init__(stream_id, connection.peer_initial_window)
        self.connection = connection
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.deframer = Deframer(limit)
        self.inbox: deque[bytes] = deque()
        self.error: RpcError | None = None
        self.retry = False
        self.done = False
        self.waiter: asyncio.Future[None] | None = None
        self.slot = 0

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something more arrived (a message, the end, an error)."""
        waiter = self.waiter = self.connection.loop.create_future()
        await waiter


class _ClientConnection(h2.Connection):
    def __init__(self, authority: bytes, scheme: bytes, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self._next_id = 1
        self.ready: asyncio.Future[None] = self.loop.create_future()
        # a call that gave up waiting (its deadline) leaves nobody to read a failed handshake
        self.ready.add_done_callback(_retrieved)
        self._slots: deque[asyncio.Future[None]] = deque()
        self.deadlines: Deadlines[_ClientCall] = Deadlines(self._expire)
        self.prefix = h2.METHOD_POST + scheme + h2.encode_indexed_name(h2.AUTHORITY, authority)
        self.suffix = (
            h2.encode_indexed_name(h2.CONTENT_TYPE, b"application/grpc")
            + h2.encode_literal(b"te", b"trailers")
            # responses may come compressed (grpc core's servers compress when set to)
            + h2.encode_literal(b"grpc-accept-encoding", ACCEPT_ENCODING)
        )
        self.user_agent = h2.encode_indexed_name(h2.USER_AGENT, b"protobind-native")

    @property
    def usable(self) -> bool:
        return not self.closed and self.goaway_received is None and self._next_id < 2**31 - 2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(h2.client_preface(self.header_limit))

    def _settings(self, payload: bytes) -> None:
        super()._settings(payload)
        if not self.ready.done():
            self.ready.set_result(None)
        self._release_slots()

    def lost(self, exc: Exception | None) -> None:
        error = _failure(Code.UNAVAILABLE, "the connection to the server was lost")
        if not self.ready.done():
            self.ready.set_exception(error)
        for call in list(self.streams.values()):
            # a stream the server never answered a byte of may not have been processed; only
            # unary calls are sent again (their request is whole), and only when nothing came back
            call.retry = call.headers is None
            self._end(call, error)
        self.streams.clear()
        self._release_slots()

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        for stream_id, call in list(self.streams.items()):
            if stream_id > last_stream_id:
                call.retry = True
                self.forget(stream_id)
                self._end(call, _failure(Code.UNAVAILABLE, "the server is going away"))
        self._release_slots()
        if not self.streams and self.transport is not None:
            self.transport.close()

    # --- streams --------------------------------------------------------------------------------

    async def open(self, block: bytes, data: bytes, end: bool, deadline: float | None) -> _ClientCall:
        """A new stream with the request header ``block`` and ``data`` (``end``: END_STREAM)."""
        while len(self.streams) >= self.peer_max_streams and self.usable:
            slot = self.loop.create_future()
            self._slots.append(slot)
            if deadline is None:
                await slot
                continue
            try:
                await asyncio.wait_for(slot, max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded") from None
        if not self.usable:
            raise _Retry
        stream_id = self._next_id
        self._next_id += 2
        call = _ClientCall(self, stream_id, self.limit)
        self.streams[stream_id] = call
        if deadline is not None:
            call.slot = self.deadlines.add(deadline, call)
        self.send(
            call, self.header_frames(stream_id, block, not data and end), data, None, end and bool(data)
        )
        return call

    def _release_slots(self) -> None:
        while self._slots and (len(self.streams) < self.peer_max_streams or not self.usable):
            slot = self._slots.popleft()
            if not slot.done():
                slot.set_result(None)

    def forget(self, stream_id: int) -> None:
        super().forget(stream_id)
        if self._slots:
            self._release_slots()
        if self.goaway_received is not None and not self.streams and self.transport is not None:
            self.transport.close()

    def _end(self, call: _ClientCall, error: RpcError | None) -> None:
        if call.done:
            return
        call.done = True
        call.error = call.error or error
        if call.slot:
            self.deadlines.discard(call.slot, call)
        call.wake()

    def _expire(self, call: _ClientCall) -> None:
        if not call.done:
            self.cancel(call, RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))

    def cancel(self, call: _ClientCall, error: RpcError) -> None:
        """Give up on ``call``: RST_STREAM CANCEL, ``error`` for whoever waits."""
        if call.id in self.streams:
            self.reset_stream(call.id, h2.CANCEL)
        self._end(call, error)

    def on_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], fits: bool, end: bool) -> None:
        call = self.streams.get(stream_id)
        if call is None:
            return
        if not fits:
            self.cancel(
                call,
                _failure(Code.RESOURCE_EXHAUSTED, f"response headers larger than {self.header_limit} bytes"),
            )
            return
        if call.headers is None:
            call.headers = fields
            try:
                call.deframer.encoding = message_encoding(fields)
            except RpcError as error:  # an encoding this client did not offer
                self.cancel(call, _failure(Code.INTERNAL, f"the server's response: {error.message}"))
                return
            if not end:
                call.wake()
                return
        if not end:
            self.reset_stream(stream_id, h2.PROTOCOL_ERROR)
            self._end(call, _failure(Code.INTERNAL, "the server sent a second header block without ending"))
            return
        call.trailers = fields
        self.forget(stream_id)
        self._end(call, None)

    def on_data(self, stream_id: int, data: bytes, end: bool) -> None:
        call = self.streams.get(stream_id)
        if call is None:
            return
        try:
            call.inbox.extend(call.deframer.feed(data))
        except RpcError as error:
            self.cancel(call, error)
            return
        if end:  # a response must end with trailers
            self.forget(stream_id)
            self._end(call, _failure(Code.INTERNAL, "the server ended the response without a status"))
            return
        call.wake()

    def on_reset(self, stream_id: int, code: int) -> None:
        call = self.streams.get(stream_id)
        if call is None:
            return
        self.forget(stream_id)
        if code == h2.REFUSED_STREAM:
            call.retry = True
            error = _failure(Code.UNAVAILABLE, "the server refused the stream")
        elif code == h2.CANCEL:
            error = _failure(Code.CANCELLED, "the server cancelled the call")
        elif code == h2.NO_ERROR and call.trailers is not None:
            error = None
        else:
            error = _failure(Code.INTERNAL, f"the server reset the stream (HTTP/2 error {code})")
        self._end(call, error)


def _status(call: _ClientCall) -> tuple[RpcError | None, Metadata, Metadata]:
    """The outcome of a finished call: its error (``None``: OK), headers and trailers."""
    headers = _metadata(call.headers or [])
    if call.error is not None:
        return call.error, headers, Metadata()
    fields = call.trailers or []
    http_status = b"200"
    code: int | None = None
    message = ""
    details: list[Message] = []
    trailers = Metadata()
    for name, value in fields:
        if name == b"grpc-status":
            try:
                code = int(value)
            except ValueError:
                code = int(Code.UNKNOWN)
        elif name == b"grpc-message":
            message = _percent_decode(value)
        elif name == _DETAILS:
            status = status_pb2.Status()
            with contextlib.suppress(Exception):
                status.ParseFromString(b64decode_lenient(value.decode("latin-1")))
                details = unpack_details(status.details)
        elif name == b":status":
            http_status = value
        elif name[:1] != b":" and name != b"content-type":
            _add(trailers, name, value)
    if call.headers is None or call.trailers is call.headers:
        headers = Metadata()
    if code is None:
        if http_status != b"200":
            code_of = _HTTP_CODES.get(http_status, Code.UNKNOWN)
            return _failure(code_of, f"HTTP status {http_status.decode()}"), headers, trailers
        return _failure(Code.INTERNAL, "the server sent no grpc-status"), headers, trailers
    if code == 0:
        return None, headers, trailers
    if code == Code.DEADLINE_EXCEEDED and "Deadline Exceeded" in message:
        message = "deadline exceeded"  # grpc core's words: every transport says it the same way
    return RpcError(Code.from_number(code), message, details), headers, trailers


_HTTP_CODES = {
    b"400": Code.INTERNAL,
    b"401": Code.UNAUTHENTICATED,
    b"403": Code.PERMISSION_DENIED,
    b"404": Code.UNIMPLEMENTED,
    b"429": Code.UNAVAILABLE,
    b"502": Code.UNAVAILABLE,
    b"503": Code.UNAVAILABLE,
    b"504": Code.UNAVAILABLE,
}


def _percent_decode(value: bytes) -> str:
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(value).decode("utf-8", "replace")


def _add(metadata: Metadata, name: bytes, value: bytes) -> None:
    key = name.decode("latin-1")
    if key.endswith("-bin"):
        try:
            metadata.add(key, b64decode_lenient(value.decode("latin-1")))
            return
        except ValueError:
            pass
    metadata.add(key, value.decode("latin-1"))


def _metadata(fields: list[tuple[bytes, bytes]]) -> Metadata:
    metadata = Metadata()
    for name, value in fields:
        if name[:1] != b":" and name != b"content-type" and name != _DETAILS:
            _add(metadata, name, value)
    return metadata


class NativeTransport(ClientTransport):
    """The client half of the native engine: one HTTP/2 connection, opened when first needed."""

    def __init__(self, address: Address, config: GrpcOptions) -> None:
        self._address = address
        self._config = config
        self._limit = config.limits.max_message_size
        self._connection: _ClientConnection | None = None
        self._connecting: asyncio.Future[_ClientConnection] | None = None
        self._ssl: ssl.SSLContext | None = _client_tls(config) if address.tls else None
        self._heads: dict[str, bytes] = {}
        self._closed = False

    async def _connected(self, deadline: float | None = None) -> _ClientConnection:
        """The connection, opened first if need be (waiting at most until ``deadline``)."""
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        if self._closed:
            raise _failure(Code.UNAVAILABLE, "the channel is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_retrieved)
        connecting = self._connecting
        try:
            if deadline is None:
                return await asyncio.shield(connecting)
            # the connection goes on being opened for the calls after this one
            return await asyncio.wait_for(asyncio.shield(connecting), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded") from None
        except asyncio.CancelledError:
            if connecting.cancelled() and self._closed:  # by close(), not the caller's own
                raise _failure(Code.UNAVAILABLE, "the channel is closed") from None
            raise
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _ClientConnection:
        address = self._address
        authority = address.target(address.port or (443 if address.tls else 80)).encode()
        scheme = h2.SCHEME_HTTPS if address.tls else h2.SCHEME_HTTP
        loop = asyncio.get_running_loop()
        try:
            transport, connection = await loop.create_connection(
                lambda: _ClientConnection(authority, scheme, self._limit),
                address.host,
                address.port or (443 if address.tls else 80),
                ssl=self._ssl,
                server_hostname=(self._config.tls_server_name or address.host) if self._ssl else None,
            )
            try:
                # the server's SETTINGS: a peer that accepted but says nothing is not a gRPC server
                await asyncio.wait_for(asyncio.shield(connection.ready), 20)
                if self._closed:
                    raise _failure(Code.UNAVAILABLE, "the channel is closed")
            except BaseException:
                transport.close()
                raise
        except ssl.SSLError as exc:
            message = f"TLS handshake with {address.target()} failed: {exc.reason}"
            raise RpcError(Code.UNAVAILABLE, message) from TransportFailure(message)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = network_reason(exc) if isinstance(exc, OSError) else "timed out"
            message = f"cannot connect to {address.target()}: {reason}"
            raise RpcError(Code.UNAVAILABLE, message) from TransportFailure(message)
        self._connection = connection
        return connection

    def _block(self, connection: _ClientConnection, method: MethodInfo[Any, Any], call: CallInfo) -> bytes:
        head = self._heads.get(method.path)
        if head is None:
            head = self._heads[method.path] = h2.encode_indexed_name(h2.PATH, method.path.encode())
        block = connection.prefix + head + connection.suffix
        deadline = call.deadline
        if deadline is not None:
            block += h2.encode_literal(b"grpc-timeout", encode_timeout(deadline - time.monotonic()))
        metadata = call.outgoing_metadata
        if metadata:
            block += metadata_fields(metadata, strict=True)
        return block + connection.user_agent

    def _request(self, message: Message) -> bytes:
        data = message.SerializeToString()
        if len(data) > self._limit:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"the request is larger than {self._limit} bytes")
        return envelope(data)

    async def unary(self, request: Message, call: CallInfo) -> Message:
        method = call.method
        assert method is not None
        data = self._request(request)
        for attempt in (0, 1):
            connection = await self._connected(call.deadline)
            if call.deadline is not None and call.deadline <= time.monotonic():
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            try:
                stream = await connection.open(
                    self._block(connection, method, call), data, True, call.deadline
                )
            except _Retry:
                continue
            try:
                while not stream.done:
                    await stream.wait()
            except asyncio.CancelledError:
                connection.cancel(stream, RpcError(Code.CANCELLED, "call cancelled"))
                raise
            if stream.retry and attempt == 0:
                continue
            return self._unary_result(stream, method, call)
        raise _failure(Code.UNAVAILABLE, "the server refused the call twice")

    def _unary_result(self, stream: _ClientCall, method: MethodInfo[Any, Any], call: CallInfo) -> Message:
        error, headers, trailers = _status(stream)
        if headers:
            call.headers = headers
        if trailers:
            call.trailers = trailers
        if error is not None:
            raise error
        if len(stream.inbox) != 1:
            raise RpcError(Code.INTERNAL, f"the server sent {len(stream.inbox)} responses to a unary call")
        try:
            return method.output_type.FromString(stream.inbox[0])  # type: ignore[no-any-return]
        except Exception:
            raise RpcError(
                Code.INTERNAL,
                f"the server sent a response that is not a valid {method.output_type.DESCRIPTOR.full_name}",
            ) from None

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        method = call.method
        assert method is not None
        connection = await self._connected(call.deadline)
        block = self._block(connection, method, call)
        writer: asyncio.Task[None] | None = None
        if method.kind.client_streams:
            try:
                stream = await connection.open(block, b"", False, call.deadline)
            except _Retry:
                raise _failure(Code.UNAVAILABLE, "the server is going away") from None
            writer = asyncio.ensure_future(self._write(connection, stream, requests))
        else:
            data = self._request(await anext(requests))
            try:
                stream = await connection.open(block, data, True, call.deadline)
            except _Retry:
                raise _failure(Code.UNAVAILABLE, "the server is going away") from None
        try:
            first = True
            while True:
                if stream.inbox:
                    data = stream.inbox.popleft()
                    connection.ack_data(stream, len(data) + 5)
                    if first:
                        first = False
                        call.headers = _metadata(stream.headers or [])
                    try:
                        message = method.output_type.FromString(data)
                    except Exception:
                        name = method.output_type.DESCRIPTOR.full_name
                        raise RpcError(
                            Code.INTERNAL, f"the server sent a response that is not a valid {name}"
                        ) from None
                    yield message
                    continue
                if stream.done:
                    break
                await stream.wait()
            _raise_request_failure(writer)
            error, headers, trailers = _status(stream)
            call.headers = headers
            call.trailers = trailers
            if error is not None:
                raise error
        finally:
            if writer is not None and not writer.done():
                writer.cancel()
            if not stream.done or stream.id in connection.streams:
                connection.cancel(stream, RpcError(Code.CANCELLED, "call cancelled"))

    async def _write(
        self, connection: _ClientConnection, stream: _ClientCall, requests: AsyncIterator[Message]
    ) -> None:
        try:
            async for request in requests:
                if stream.done or stream.id not in connection.streams:
                    return
                if (
                    not connection.send(stream, b"", self._request(request), None, False)
                    or connection._paused
                ):
                    await connection.drained(stream)
            if not stream.done and stream.id in connection.streams:
                connection.send(stream, b"", b"", None, True)
        except RpcError as error:
            connection.cancel(stream, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            connection.cancel(stream, RpcError(Code.CANCELLED, "the request iterator failed"))
            raise

    async def reflect(self, timeout: float | None, metadata: Metadata) -> Reflected:
        """The server's services and descriptors, from gRPC server reflection (v1, else v1alpha)."""
        from grpc_reflection.v1alpha import reflection_pb2

        from ._reflection import ask
        from ._services import REFLECTION_V1, REFLECTION_V1ALPHA

        for service in (REFLECTION_V1, REFLECTION_V1ALPHA):
            method: MethodInfo[Any, Any] = MethodInfo(
                name="ServerReflectionInfo",
                service=service,
                input_type=reflection_pb2.ServerReflectionRequest,
                output_type=reflection_pb2.ServerReflectionResponse,
                kind=MethodKind.BIDI_STREAMING,
            )
            exchange = _Exchange(self, method, timeout, metadata)
            try:
                return await ask(exchange, reflection_pb2)
            except RpcError as error:
                if error.code is Code.UNIMPLEMENTED and service == REFLECTION_V1:
                    continue
                if error.code is Code.UNIMPLEMENTED:
                    raise RpcError(Code.UNIMPLEMENTED, "the server does not serve gRPC reflection") from None
                raise
            finally:
                await exchange.close()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()  # a connection still being opened is closed too
        connection = self._connection
        if connection is not None and connection.transport is not None:
            for call in list(connection.streams.values()):
                connection.cancel(call, RpcError(Code.CANCELLED, "the channel was closed"))
            connection.transport.close()


class _Exchange:
    """A bidi call driven one request and one response at a time (for the reflection client)."""

    def __init__(
        self,
        transport: NativeTransport,
        method: MethodInfo[Any, Any],
        timeout: float | None,
        metadata: Metadata,
    ) -> None:
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        info = CallInfo()
        info.prepare(method, timeout, metadata)
        self._responses = transport.stream(self._requests(), info)

    async def _requests(self) -> AsyncIterator[Message]:
        while (request := await self._queue.get()) is not None:
            yield request

    async def write(self, request: Message) -> None:
        await self._queue.put(request)

    async def read(self) -> Any:
        try:
            return await anext(self._responses)
        except StopAsyncIteration:
            return None

    async def done_writing(self) -> None:
        await self._queue.put(None)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._responses.aclose()  # type: ignore[attr-defined]


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as read: the caller that waited for it may have gone."""
    if not future.cancelled():
        future.exception()


def _raise_request_failure(writer: asyncio.Task[None] | None) -> None:
    if writer is not None and writer.done() and not writer.cancelled():
        failure = writer.exception()
        if failure is not None:
            raise failure


def _client_tls(config: GrpcOptions) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=config.tls_ca.decode() if config.tls_ca else None)
    if config.tls_cert is not None and config.tls_key is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            cert, key = f"{folder}/cert.pem", f"{folder}/key.pem"
            with open(cert, "wb") as file:
                file.write(config.tls_cert)
            with open(key, "wb") as file:
                file.write(config.tls_key)
            context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


async def dial_native(address: Address, config: GrpcOptions) -> NativeTransport:
    """A native-engine client for ``address`` (connects at the first call)."""
    return NativeTransport(address, config)
