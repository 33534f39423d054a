"""gRPC and gRPC-Web on the HTTP port, beside Connect and REST, chosen per request by content type.

- gRPC (``application/grpc``, ``+proto``, ``+json``) needs HTTP/2 and response trailers (the ASGI
  ``http.response.trailers`` extension): the status ends the response as HTTP/2 trailers.
- gRPC-Web (``application/grpc-web``, ``+proto``, ``+json``) and gRPC-Web-text
  (``application/grpc-web-text``, base64 both ways) work over HTTP/1.1 and HTTP/2: the status
  travels in a last frame of the body (flag ``0x80``), which a browser can read.

Messages are framed as in Connect streams (one flags byte, a 4-byte big-endian length); the status
is ``grpc-status``, ``grpc-message`` and ``grpc-status-details-bin`` (protobind._wire). A request
stream is read as it arrives, so client and bidi streams are full duplex over HTTP/2; over
HTTP/1.1 a bidi call is refused, as Connect refuses it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message
from starlette.types import Receive, Scope, Send

from .._context import Context
from .._errors import Code, RpcError
from .._metadata import Metadata
from .._wire import grpc_deadline, grpc_status_fields, parse_grpc_timeout
from ..codec import Codec
from ..endpoints import Endpoint, invoke_stream, invoke_unary, to_rpc_error
from ..limits import ConcurrencyLimit, ReadTimer
from ..method import MethodKind
from ._watch import BIDI_MESSAGE, ClientGone, Watch, peer
from ._wire import (
    ENVELOPE_HEADER_SIZE,
    FLAG_COMPRESSED,
    PROTOCOL_HEADERS,
    encode_header,
    envelope,
    gunzip,
    metadata_value,
    parse_envelope_header,
)

__all__ = ["GrpcHandler", "Protocol", "grpc_protocol"]

#: The flags byte of a gRPC-Web frame that carries the trailers.
_TRAILER_FRAME = 0x80


@dataclass(frozen=True, slots=True)
class Protocol:
    """How one request speaks gRPC: plain gRPC or gRPC-Web (binary or base64 text), which codec."""

    web: bool
    text: bool
    codec: str  # "proto" or "json"
    content_type: bytes  # of the response


def _protocols() -> dict[bytes, Protocol]:
    table: dict[bytes, Protocol] = {}
    for base, web, text in (
        (b"application/grpc", False, False),
        (b"application/grpc-web", True, False),
        (b"application/grpc-web-text", True, True),
    ):
        for suffix, codec in ((b"", "proto"), (b"+proto", "proto"), (b"+json", "json")):
            table[base + suffix] = Protocol(web, text, codec, base + suffix)
    return table


_PROTOCOLS = _protocols()


def grpc_protocol(headers: list[tuple[bytes, bytes]]) -> Protocol | None:
    """The gRPC flavour a request's content type names, or ``None`` (not a gRPC request)."""
    for name, value in headers:
        if name == b"content-type":
            if not value.startswith(b"application/grpc"):
                return None
            return _PROTOCOLS.get(value.partition(b";")[0].strip().lower())
    return None


#: Request headers that belong to gRPC itself, never to call metadata.
_GRPC_HEADERS = frozenset({"grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "x-grpc-web"})


class _Head:
    """The request headers: deadline, compression, call metadata."""

    __slots__ = ("encoding", "metadata", "timeout")

    def __init__(self, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.timeout: str | None = None
        self.encoding: str | None = None
        metadata = self.metadata = Metadata()
        for raw_name, raw_value in raw_headers:
            name = raw_name.decode("latin-1")
            if name in PROTOCOL_HEADERS or name in _GRPC_HEADERS:
                if name == "grpc-timeout":
                    self.timeout = raw_value.decode("latin-1")
                elif name == "grpc-encoding":
                    self.encoding = raw_value.decode("latin-1").strip().lower()
                continue
            metadata.add(name, metadata_value(name, raw_value.decode("latin-1")))

    def deadline(self) -> float | None:
        if self.timeout is None:
            return None
        try:
            return grpc_deadline(parse_grpc_timeout(self.timeout))
        except ValueError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, str(exc)) from None

    def gzipped(self) -> bool:
        encoding = self.encoding
        if encoding is None or encoding == "identity":
            return False
        if encoding == "gzip":
            return True
        raise RpcError(Code.UNIMPLEMENTED, f"unsupported grpc-encoding {encoding[:40]!r}: use gzip")


def _add_metadata(headers: list[tuple[bytes, bytes]], metadata: Metadata) -> None:
    """Response metadata as headers (or trailers); what HTTP or gRPC owns is left out."""
    for key, value in metadata.items():
        if key in PROTOCOL_HEADERS or key.startswith("grpc-"):
            continue
        header = encode_header(key, value)
        if header is not None:
            headers.append(header)


class _Reader:
    """The request messages, decoded as they arrive (base64 first for gRPC-Web-text)."""

    __slots__ = ("_buffer", "_codec", "_gzipped", "_input", "_limit", "_receive", "_text", "_watch", "more")

    def __init__(
        self,
        receive: Receive,
        protocol: Protocol,
        codec: Codec,
        input_type: type[Message],
        limit: int,
        gzipped: bool,
        watch: Watch,
    ) -> None:
        self._receive = receive
        self._text = bytearray() if protocol.text else None
        self._codec = codec
        self._input = input_type
        self._limit = limit
        self._gzipped = gzipped
        self._watch = watch
        self._buffer = bytearray()
        self.more = True

    async def _fill(self) -> None:
        """Read one more chunk of the body into the buffer."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        self.more = message.get("more_body", False)
        if self._text is not None:
            text = self._text
            text += chunk
            # every 4 base64 characters decode on their own, padded or not: decode whole groups
            usable = len(text) - len(text) % 4 if self.more else len(text)
            try:
                chunk = base64.b64decode(bytes(text[:usable]), validate=True) if usable else b""
            except (binascii.Error, ValueError):
                raise RpcError(Code.INVALID_ARGUMENT, "a grpc-web-text request body is not base64") from None
            del text[:usable]
        self._buffer += chunk
        if not self.more:
            self._watch.arm()

    def _next(self) -> Message | None:
        """The next whole message in the buffer, if there is one."""
        buffer = self._buffer
        if len(buffer) < ENVELOPE_HEADER_SIZE:
            return None
        flags, size = parse_envelope_header(bytes(buffer[:ENVELOPE_HEADER_SIZE]))
        if size > self._limit:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"a request message is larger than {self._limit} bytes")
        end = ENVELOPE_HEADER_SIZE + size
        if len(buffer) < end:
            return None
        data = bytes(buffer[ENVELOPE_HEADER_SIZE:end])
        del buffer[:end]
        if flags & FLAG_COMPRESSED:
            if not self._gzipped:
                raise RpcError(Code.INTERNAL, "a compressed message arrived without grpc-encoding")
            data = gunzip(data, self._limit)
        try:
            message: Message = self._codec.decode(data, self._input)
        except RpcError:
            raise
        except Exception:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"request is not a valid {self._input.DESCRIPTOR.full_name}"
            ) from None
        return message

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            message = self._next()
            if message is not None:
                yield message
                continue
            if not self.more:
                if self._buffer:
                    raise RpcError(Code.INVALID_ARGUMENT, "the request body ends inside a message")
                return
            try:
                await self._fill()
            except ClientGone:
                self._watch.client_went_away()
                raise RpcError(Code.CANCELLED, "the client went away") from None

    async def single(self, method: str) -> Message:
        """The one request of a unary or server-streaming call."""
        found: Message | None = None
        while True:
            message = self._next()
            if message is not None:
                if found is not None:
                    raise RpcError(Code.UNIMPLEMENTED, f"{method} takes exactly one request message")
                found = message
                continue
            if not self.more:
                break
            await self._fill()
        if self._buffer:
            raise RpcError(Code.INVALID_ARGUMENT, "the request body ends inside a message")
        if found is None:
            raise RpcError(Code.INVALID_ARGUMENT, "the request stream ended without a message")
        return found


class _Output:
    """The response: headers, messages, and the status as trailers (gRPC) or a trailer frame."""

    __slots__ = ("_context", "_protocol", "_send", "_trailers", "started")

    def __init__(self, send: Send, protocol: Protocol, trailers: bool) -> None:
        self._send = send
        self._protocol = protocol
        self._trailers = trailers and not protocol.web  # gRPC with real HTTP trailers
        self._context: Context | None = None
        self.started = False

    def bind(self, context: Context) -> None:
        self._context = context

    async def _start(self, extra: Sequence[tuple[bytes, bytes]] = (), trailers: bool = True) -> None:
        self.started = True
        headers = [(b"content-type", self._protocol.content_type), *extra]
        if self._context is not None:
            _add_metadata(headers, self._context.response_headers)
        await self._send(
            {"type": "http.response.start", "status": 200, "headers": headers, "trailers": trailers}
        )

    async def message(self, data: bytes) -> None:
        if not self.started:
            await self._start(trailers=self._trailers)
        frame = envelope(data)
        if self._protocol.text:
            frame = base64.b64encode(frame)
        await self._send({"type": "http.response.body", "body": frame, "more_body": True})

    async def finish(self, error: RpcError | None) -> None:
        fields = [(name.encode(), value.encode()) for name, value in grpc_status_fields(error)]
        if self._context is not None:
            _add_metadata(fields, self._context.response_trailers)
        if self._protocol.web:
            if not self.started:
                await self._start(trailers=False)
            block = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
            frame = envelope(block, _TRAILER_FRAME)
            if self._protocol.text:
                frame = base64.b64encode(frame)
            await self._send({"type": "http.response.body", "body": frame})
        elif self._trailers:
            if not self.started:
                await self._start()
            await self._send({"type": "http.response.body", "body": b""})
            await self._send({"type": "http.response.trailers", "headers": fields, "more_trailers": False})
        else:
            # no trailers on this connection: a "trailers-only" answer, the status in the headers
            await self._start(fields, trailers=False)
            await self._send({"type": "http.response.body", "body": b""})


_NEEDS_HTTP2 = (
    "gRPC needs HTTP/2 with trailers and this connection has none: call over HTTP/2 (h2c or TLS "
    "ALPN), or use gRPC-Web or Connect"
)


class GrpcHandler:
    """Serves gRPC and gRPC-Web calls of the HTTP binding's endpoint table."""

    def __init__(
        self, limit: int, concurrency: ConcurrencyLimit, timer: ReadTimer, json: Codec, proto: Codec
    ) -> None:
        self._limit = limit
        self._concurrency = concurrency
        self._timer = timer
        self._codecs = {"json": json, "proto": proto}

    async def __call__(
        self, endpoint: Endpoint, protocol: Protocol, scope: Scope, receive: Receive, send: Send
    ) -> None:
        method = endpoint.method
        http2 = scope.get("http_version") == "2"
        trailers = http2 and "http.response.trailers" in scope.get("extensions", {})
        output = _Output(send, protocol, trailers)
        context: Context | None = None
        watch: Watch | None = None
        error: RpcError | None = None
        try:
            try:
                if not protocol.web and not trailers:
                    raise RpcError(Code.UNIMPLEMENTED, _NEEDS_HTTP2)
                if method.kind is MethodKind.BIDI_STREAMING and not http2:
                    raise RpcError(Code.UNIMPLEMENTED, BIDI_MESSAGE.format(method=method.full_name))
                head = _Head(scope["headers"])
                context = Context(
                    method, "http", metadata=head.metadata, deadline=head.deadline(), peer=peer(scope)
                )
                output.bind(context)
                codec = self._codecs[protocol.codec]
                watch = Watch(receive, context)
                gzipped = head.gzipped()
                reader = _Reader(receive, protocol, codec, method.input_type, self._limit, gzipped, watch)
                if method.kind is MethodKind.UNARY or method.kind is MethodKind.SERVER_STREAMING:
                    request: object = await self._timer.run(reader.single(method.full_name))
                else:
                    request = reader.messages()
                if method.kind is MethodKind.UNARY or method.kind is MethodKind.CLIENT_STREAMING:
                    response = await invoke_unary(endpoint, request, context, limit=self._concurrency)
                    await output.message(codec.encode(response))
                else:
                    stream = invoke_stream(endpoint, request, context, limit=self._concurrency)
                    async with contextlib.aclosing(stream) as responses:
                        async for response in responses:
                            await output.message(codec.encode(response))
            except RpcError as exc:
                error = exc
            except ClientGone:
                return
            except Exception as exc:
                error = to_rpc_error(exc, context)
            if watch is not None:
                watch.stop()
        except asyncio.CancelledError:
            if watch is not None:
                watch.stop()
                if watch.gone:
                    return  # the client went away: nobody to answer
            error = RpcError(Code.UNAVAILABLE, "server is shutting down")
        await output.finish(error)
