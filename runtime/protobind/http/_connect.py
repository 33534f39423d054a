"""The Connect protocol of the HTTP binding, server side: a raw ASGI app, no framework.

Connect calls are dispatched on ``scope["path"]`` with one dict lookup before any framework code
runs: on a unary call the framework's routing, request and response objects cost about as much as
the RPC itself. Unary calls come as POST (or GET, for methods without side effects), streams as
enveloped messages in one POST body; a gRPC or gRPC-Web request to the same path goes to
:mod:`.grpc`, chosen by its content type. Everything else (google.api.http REST routes,
``/openapi.json``, the 404 for unknown paths, lifespan) goes to the ``fallback`` app that
:mod:`.app` assembles behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from google.protobuf.message import Message

from .._context import Context
from .._errors import Code, RpcError
from .._metadata import Metadata, MetadataValue
from .._wire import HTTP_STATUS, b64decode_lenient
from ..codec import JSON, PROTO, Codec, JsonCodec
from ..endpoints import Endpoint, EndpointTable, invoke_stream, invoke_unary, to_rpc_error
from ..limits import ConcurrencyLimit, ReadTimeout, ReadTimer
from ..method import Idempotency, MethodKind
from ._watch import BIDI_MESSAGE, ClientGone, Watch, Watches, peer
from ._wire import (
    ENVELOPE_HEADER_SIZE,
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    PROTOCOL_HEADERS,
    STREAM_CONTENT_TYPES,
    UNARY_CONTENT_TYPES,
    content_type_codec,
    encode_header,
    end_stream_message,
    envelope,
    error_body,
    gunzip,
    metadata_value,
    parse_envelope_header,
)

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from ._options import ServerOptions

__all__ = ["ConnectApp", "not_found"]

logger = logging.getLogger("protobind.http")


class _ProtocolError(Exception):
    """A request refused before it reaches a handler, with its own HTTP status."""

    def __init__(self, status: int, error: RpcError, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.headers = headers


def _deadline(timeout_ms: bytes | None) -> float | None:
    if timeout_ms is None:
        return None
    if not (0 < len(timeout_ms) <= 10 and timeout_ms.isdigit()):
        raise RpcError(
            Code.INVALID_ARGUMENT, "Connect-Timeout-Ms must be a positive integer of at most 10 digits"
        )
    return time.monotonic() + int(timeout_ms) / 1000


def _add_metadata(headers: list[tuple[bytes, bytes]], metadata: Metadata, prefix: str) -> None:
    for key, value in metadata.items():
        if not prefix and key in PROTOCOL_HEADERS:
            logger.warning("dropped response metadata %r: the HTTP binding sets that header itself", key)
            continue
        header = encode_header(prefix + key, value)
        if header is None:
            logger.warning(
                "dropped response metadata %r: not a valid header (binary values need a -bin key)", key
            )
        else:
            headers.append(header)


def _query(query_string: bytes) -> dict[str, bytes]:
    params: dict[str, bytes] = {}
    for part in query_string.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            key = unquote_to_bytes(name.replace(b"+", b" ")).decode("latin-1")
            params.setdefault(key, unquote_to_bytes(value.replace(b"+", b" ")))
    return params


async def _send_error(
    send: Send,
    error: RpcError,
    status: int | None = None,
    context: Context | None = None,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """A unary-style Connect error: JSON body, HTTP status from the code (or ``status``)."""
    body = error_body(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    if context is not None:
        _add_metadata(headers, context.response_headers, "")
        _add_metadata(headers, context.response_trailers, "trailer-")
    await send(
        {"type": "http.response.start", "status": status or HTTP_STATUS[error.code], "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})


class _Head:
    """What one pass over the request headers finds: protocol headers and the call metadata (the
    :class:`Metadata` is made when the handler or an interceptor first reads it)."""

    __slots__ = ("_other", "content_length", "content_type", "encoding", "timeout_ms", "version")

    def __init__(self, raw_headers: list[tuple[bytes, bytes]], streaming_encoding: bool) -> None:
        self.content_type = ""
        self.encoding: str | None = None
        self.timeout_ms: bytes | None = None
        self.content_length: int | None = None
        self.version: bytes | None = None
        other: list[tuple[str, bytes]] = []
        self._other = other
        encoding_header = "connect-content-encoding" if streaming_encoding else "content-encoding"
        for raw_name, raw_value in raw_headers:
            name = raw_name.decode("latin-1")
            if name in PROTOCOL_HEADERS:
                if name == "content-type":
                    self.content_type = raw_value.decode("latin-1")
                elif name == "connect-timeout-ms":
                    self.timeout_ms = raw_value
                elif name == encoding_header:
                    self.encoding = raw_value.decode("latin-1").strip().lower()
                elif name == "content-length" and raw_value.isdigit():
                    self.content_length = int(raw_value)
                elif name == "connect-protocol-version":
                    self.version = raw_value
                continue
            other.append((name, raw_value))

    def metadata(self) -> list[tuple[str, MetadataValue]]:
        """The call metadata: every request header that is not the protocol's."""
        return [(name, metadata_value(name, value.decode("latin-1"))) for name, value in self._other]

    def check_version(self) -> None:
        """Connect-Protocol-Version may be left out, but when sent it must be 1."""
        if self.version is not None and self.version.strip() != b"1":
            raise _ProtocolError(400, RpcError(Code.INVALID_ARGUMENT, _VERSION_MESSAGE))

    def check_encoding(self) -> bool:
        """Whether the body (or each compressed envelope) is gzip; raise for unknown encodings."""
        encoding = self.encoding
        if encoding is None or encoding == "identity":
            return False
        if encoding == "gzip":
            return True
        raise RpcError(Code.UNIMPLEMENTED, f"unsupported compression {encoding!r}: use gzip or identity")


class _StreamReply:
    """The response of one Connect stream: its headers go out before the first message (or the
    end-of-stream message), with the call's response headers once there is a call."""

    __slots__ = ("content_type", "context", "send", "started", "unread", "watch")

    def __init__(self, send: Send, codec_name: str) -> None:
        self.send = send
        self.content_type = b"application/connect+" + codec_name.encode()
        self.started = False
        self.unread = False  # the answer comes before the request body was read to its end
        self.context: Context | None = None
        self.watch: Watch | None = None

    async def start(self) -> None:
        self.started = True
        headers = [(b"content-type", self.content_type)]
        if self.unread:
            headers.extend(_CLOSE)
        if self.context is not None:
            _add_metadata(headers, self.context.response_headers, "")
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def end(self, error: RpcError | None) -> None:
        """The end-of-stream message, with ``error`` (``None``: success) and the trailers."""
        if not self.started:
            await self.start()
        trailers = self.context.response_trailers if self.context is not None else Metadata()
        await self.send({"type": "http.response.body", "body": end_stream_message(error, trailers)})


class ConnectApp:
    """ASGI app serving every endpoint of a :class:`~protobind.Server` with the Connect protocol.

    ``fallback`` receives every request that is not a Connect call (and non-HTTP scopes).
    """

    def __init__(
        self,
        server: EndpointTable,
        options: ServerOptions,
        fallback: ASGIApp,
        concurrency: ConcurrencyLimit,
        timer: ReadTimer,
    ) -> None:
        self._endpoints = server.endpoints
        self._prefix = options.prefix
        self._limit = options.limits.max_message_size
        self._concurrency = concurrency
        self._timer = timer
        self._json: Codec = JsonCodec(ignore_unknown_fields=True) if options.ignore_unknown_fields else JSON
        self._fallback = fallback
        self._watches = Watches()
        from ._grpc import GrpcHandler, grpc_protocol

        # gRPC and gRPC-Web on the same port, chosen by content type (http/_grpc.py)
        self._grpc = GrpcHandler(self._limit, concurrency, timer, self._json, PROTO)
        self._grpc_protocol = grpc_protocol

    def _inflate(self, data: bytes) -> bytes:
        """gunzip within the size limit; a body that inflates past it is refused like a plain
        oversized body (413)."""
        try:
            return gunzip(data, self._limit)
        except RpcError as exc:
            if exc.code is Code.RESOURCE_EXHAUSTED:
                raise _too_large(self._limit) from None
            raise

    def _codec(self, name: str) -> Codec:
        return PROTO if name == "proto" else self._json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._fallback(scope, receive, send)
            return
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            # mounted under a prefix by a parent app (Starlette's Mount, uvicorn's --root-path)
            path = path[len(root_path) :]
        if self._prefix:
            if not (path.startswith(self._prefix) and path[len(self._prefix) : len(self._prefix) + 1] == "/"):
                await not_found(scope, receive, send)
                return
            path = path[len(self._prefix) :]
            scope = dict(scope, root_path=root_path + self._prefix)
        endpoint = self._endpoints.get(path)
        if endpoint is None:
            await self._fallback(scope, receive, send)
            return
        try:
            method = scope["method"]
            if method == "POST":
                grpc = self._grpc_protocol(scope["headers"])
                if grpc is not None:
                    await self._grpc(endpoint, grpc, scope, receive, send)
                elif endpoint.method.kind is MethodKind.UNARY:
                    await self._post_unary(endpoint, scope, receive, send)
                else:
                    await self._stream(endpoint, scope, receive, send)
            elif method == "GET":
                await self._get(endpoint, scope, receive, send)
            elif method == "OPTIONS":
                # not a CORS preflight (CORSMiddleware answers those): say which methods work
                headers = [(b"allow", _allowed(endpoint)), (b"content-length", b"0")]
                await send({"type": "http.response.start", "status": 204, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
            else:
                raise _ProtocolError(
                    405,
                    RpcError(
                        Code.UNIMPLEMENTED,
                        f"{endpoint.method.full_name} is called with {_allowed(endpoint).decode()}",
                    ),
                    ((b"allow", _allowed(endpoint)),),
                )
        except _ProtocolError as exc:
            await _send_error(send, exc.error, exc.status, extra=exc.headers)

    # --- unary ------------------------------------------------------------------------------------

    async def _read_body(self, receive: Receive, head: _Head) -> bytes:
        """The whole request body, within ``max_message_size`` and ``body_timeout``."""
        return await self._timer.run(self._receive_body(receive, head))

    async def _receive_body(self, receive: Receive, head: _Head) -> bytes:
        limit = self._limit
        if head.content_length is not None and head.content_length > limit:
            raise _too_large(limit)
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            size = len(body)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientGone
        if len(body) > limit:
            raise _too_large(limit)
        return body

    async def _post_unary(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        head = _Head(scope["headers"], False)
        head.check_version()
        codec_name = content_type_codec(head.content_type, UNARY_CONTENT_TYPES)
        if codec_name is None:
            raise _unsupported_media_type(head.content_type, endpoint)
        try:
            gzipped = head.check_encoding()
            body = await self._read_body(receive, head)
            if gzipped:
                body = self._inflate(body)
        except ReadTimeout as exc:
            raise _too_slow(exc) from None
        except RpcError as exc:
            await _send_error(send, exc)
            return
        except ClientGone:
            return  # nobody to answer
        await self._unary(endpoint, self._codec(codec_name), codec_name, body, head, scope, receive, send)

    async def _get(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        method = endpoint.method
        if method.kind is not MethodKind.UNARY or method.idempotency is not Idempotency.NO_SIDE_EFFECTS:
            raise _ProtocolError(
                405,
                RpcError(
                    Code.UNIMPLEMENTED,
                    f"{method.full_name} accepts GET only when marked idempotency_level = NO_SIDE_EFFECTS;"
                    " call it with POST",
                ),
                ((b"allow", _allowed(endpoint)),),
            )
        head = _Head(scope["headers"], False)
        head.check_version()
        params = _query(scope.get("query_string", b""))
        if params.get("connect", b"v1") != b"v1":
            raise _ProtocolError(400, RpcError(Code.INVALID_ARGUMENT, _VERSION_MESSAGE))
        codec_name = params.get("encoding", b"").decode("latin-1")
        if codec_name not in ("json", "proto"):
            raise _ProtocolError(
                415,
                RpcError(
                    Code.INVALID_ARGUMENT, "GET needs the query parameter encoding=json or encoding=proto"
                ),
            )
        if "message" not in params:
            raise _ProtocolError(
                400, RpcError(Code.INVALID_ARGUMENT, "GET needs the query parameter message (the request)")
            )
        try:
            data = params["message"]
            if params.get("base64") == b"1":
                try:
                    data = b64decode_lenient(data.decode("latin-1"))
                except ValueError:
                    raise RpcError(
                        Code.INVALID_ARGUMENT, "the message parameter is not valid base64"
                    ) from None
            if len(data) > self._limit:
                raise _too_large(self._limit)
            compression = params.get("compression", b"identity").decode("latin-1")
            if compression == "gzip":
                data = self._inflate(data)
            elif compression != "identity":
                raise RpcError(
                    Code.UNIMPLEMENTED, f"unsupported compression {compression!r}: use gzip or identity"
                )
        except RpcError as exc:
            await _send_error(send, exc)
            return
        await self._unary(endpoint, self._codec(codec_name), codec_name, data, head, scope, receive, send)

    async def _unary(
        self,
        endpoint: Endpoint,
        codec: Codec,
        codec_name: str,
        body: bytes,
        head: _Head,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        context: Context | None = None
        watch: Watch | None = None
        try:
            try:
                request = codec.decode(body, endpoint.method.input_type)
                context = Context(
                    endpoint.method,
                    "http",
                    metadata_source=head.metadata,
                    deadline=None if head.timeout_ms is None else _deadline(head.timeout_ms),
                    peer=peer(scope),
                )
                watch = Watch(receive, context, self._watches)
                watch.arm()
                response = await invoke_unary(endpoint, request, context, limit=self._concurrency)
                watch.stop()
                data = codec.encode(response)
            except RpcError as exc:
                if watch is not None:
                    watch.stop()
                await _send_error(send, exc, context=context)
                return
            headers = [
                (b"content-type", b"application/proto" if codec_name == "proto" else b"application/json"),
                (b"content-length", b"%d" % len(data)),
            ]
            # Context's own fields, read here so that a call without response metadata (most)
            # does not make two empty Metadata objects to find out
            if context._headers is not None or context._trailers is not None:
                _add_metadata(headers, context.response_headers, "")
                _add_metadata(headers, context.response_trailers, "trailer-")
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": data})
        except asyncio.CancelledError:
            if watch is not None:
                watch.stop()
                if watch.gone:
                    return  # the client went away: nobody to answer
            # the server is stopping and its grace period ran out
            await _send_error(send, RpcError(Code.UNAVAILABLE, "server is shutting down"), context=context)

    # --- streams ----------------------------------------------------------------------------------

    async def _stream(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        method = endpoint.method
        head = _Head(scope["headers"], True)
        head.check_version()
        codec_name = content_type_codec(head.content_type, STREAM_CONTENT_TYPES)
        if codec_name is None:
            if method.kind is MethodKind.BIDI_STREAMING:
                # even a caller that does not speak Connect streaming should learn why
                raise _ProtocolError(
                    HTTP_STATUS[Code.UNIMPLEMENTED],
                    RpcError(Code.UNIMPLEMENTED, BIDI_MESSAGE.format(method=method.full_name)),
                )
            raise _unsupported_media_type(head.content_type, endpoint)
        reply = _StreamReply(send, codec_name)
        error: RpcError | None = None
        try:
            try:
                await self._run_stream(endpoint, scope, receive, head, self._codec(codec_name), reply)
            except RpcError as exc:
                error = exc
                reply.unread = isinstance(exc, ReadTimeout)
            except _ProtocolError as exc:
                error = exc.error
            except ClientGone:
                return
            except Exception as exc:
                error = to_rpc_error(exc, reply.context)
            if reply.watch is not None:
                reply.watch.stop()
        except asyncio.CancelledError:
            watch = reply.watch
            if watch is not None:
                watch.stop()
                if watch.gone:
                    return
            error = RpcError(Code.UNAVAILABLE, "server is shutting down")
        await reply.end(error)

    async def _run_stream(
        self,
        endpoint: Endpoint,
        scope: Scope,
        receive: Receive,
        head: _Head,
        codec: Codec,
        reply: _StreamReply,
    ) -> None:
        """Run a server- or client-streaming call and send its messages; :meth:`_stream` turns what
        it raises into the end-of-stream message."""
        method = endpoint.method
        bidi = method.kind is MethodKind.BIDI_STREAMING
        if bidi and scope.get("http_version") != "2":
            raise RpcError(Code.UNIMPLEMENTED, BIDI_MESSAGE.format(method=method.full_name))
        gzipped = head.check_encoding()
        deadline = _deadline(head.timeout_ms)
        context = reply.context = Context(
            method, "http", metadata_source=head.metadata, deadline=deadline, peer=peer(scope)
        )
        watch = reply.watch = Watch(receive, context, self._watches)
        send = reply.send
        if method.kind is MethodKind.SERVER_STREAMING or bidi:
            if bidi:  # over HTTP/2: full duplex, requests read as they arrive
                request: Any = self._messages(receive, codec, gzipped, endpoint, watch)
            else:
                request = await self._single_message(receive, head, codec, gzipped, endpoint)
                watch.arm()
            stream = invoke_stream(endpoint, request, context, limit=self._concurrency)
            # aclosing, as the gRPC bindings do: a cancellation that lands in send() (the client went
            # away, the deadline) closes the handler's stream here and now, not when it is collected
            async with contextlib.aclosing(stream) as responses:
                async for response in responses:
                    data = codec.encode(response)
                    if not reply.started:
                        await reply.start()
                    await send({"type": "http.response.body", "body": envelope(data), "more_body": True})
        else:
            requests = self._messages(receive, codec, gzipped, endpoint, watch)
            response = await invoke_unary(endpoint, requests, context, limit=self._concurrency)
            data = codec.encode(response)
            await reply.start()
            await send({"type": "http.response.body", "body": envelope(data), "more_body": True})

    async def _single_message(
        self, receive: Receive, head: _Head, codec: Codec, gzipped: bool, endpoint: Endpoint
    ) -> Message:
        body = await self._read_body(receive, head)
        if len(body) < ENVELOPE_HEADER_SIZE:
            raise RpcError(Code.INVALID_ARGUMENT, "the request body holds no enveloped message")
        flags, size = parse_envelope_header(body[:ENVELOPE_HEADER_SIZE])
        if ENVELOPE_HEADER_SIZE + size != len(body):
            raise RpcError(
                Code.INVALID_ARGUMENT, "a server-streaming request holds exactly one enveloped message"
            )
        return self._decode(flags, body[ENVELOPE_HEADER_SIZE:], codec, gzipped, endpoint)

    def _decode(self, flags: int, data: bytes, codec: Codec, gzipped: bool, endpoint: Endpoint) -> Message:
        if flags & FLAG_COMPRESSED:
            if not gzipped:
                raise RpcError(
                    Code.INVALID_ARGUMENT, "a compressed message arrived without Connect-Content-Encoding"
                )
            data = gunzip(data, self._limit)  # too large: resource_exhausted in the end-of-stream message
        message: Message = codec.decode(data, endpoint.method.input_type)
        return message

    async def _messages(
        self, receive: Receive, codec: Codec, gzipped: bool, endpoint: Endpoint, watch: Watch
    ) -> AsyncIterator[Message]:
        """The request messages of a client stream, decoded as they arrive."""
        buffer = bytearray()
        more = True
        limit = self._limit
        while True:
            while len(buffer) >= ENVELOPE_HEADER_SIZE:
                flags, size = parse_envelope_header(bytes(buffer[:ENVELOPE_HEADER_SIZE]))
                if size > limit:
                    raise RpcError(Code.RESOURCE_EXHAUSTED, f"a request message is larger than {limit} bytes")
                end = ENVELOPE_HEADER_SIZE + size
                if len(buffer) < end:
                    break
                data = bytes(buffer[ENVELOPE_HEADER_SIZE:end])
                del buffer[:end]
                if flags & FLAG_END_STREAM:
                    continue
                yield self._decode(flags, data, codec, gzipped, endpoint)
            if not more:
                if buffer:
                    raise RpcError(Code.INVALID_ARGUMENT, "the request body ends inside an enveloped message")
                return
            message = await receive()
            if message["type"] == "http.disconnect":
                watch.client_went_away()
                raise RpcError(Code.CANCELLED, "the client went away")
            buffer += message.get("body", b"")
            more = message.get("more_body", False)
            if not more:
                watch.arm()


#: Sent with the answer to a request whose body was too slow: such a sender must not keep the
#: connection. (A 413 leaves it open: the server drops the rest of the body, and closing while
#: the client still sends would make it lose the answer.)
_CLOSE = ((b"connection", b"close"),)

_VERSION_MESSAGE = "unsupported Connect protocol version: send Connect-Protocol-Version: 1 (or connect=v1)"


def _too_large(limit: int) -> _ProtocolError:
    return _ProtocolError(
        413, RpcError(Code.RESOURCE_EXHAUSTED, f"request body is larger than {limit} bytes")
    )


def _too_slow(error: RpcError) -> _ProtocolError:
    return _ProtocolError(408, error, _CLOSE)


def _allowed(endpoint: Endpoint) -> bytes:
    """The methods a Connect route answers, for ``Allow``."""
    method = endpoint.method
    if method.kind is MethodKind.UNARY and method.idempotency is Idempotency.NO_SIDE_EFFECTS:
        return b"GET, POST, OPTIONS"
    return b"POST, OPTIONS"


def _unsupported_media_type(content_type: str, endpoint: Endpoint) -> _ProtocolError:
    if endpoint.method.kind is MethodKind.UNARY:
        accepted = "application/json, application/proto"
    else:
        accepted = "application/connect+json, application/connect+proto"
    shown = content_type or "none"
    return _ProtocolError(
        415,
        RpcError(
            Code.INVALID_ARGUMENT,
            f"unsupported content type {shown[:100]!r} for {endpoint.method.full_name}: use {accepted}",
        ),
        ((b"accept-post", accepted.encode()),),
    )


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """A Connect-style 404 (UNIMPLEMENTED) for a path nothing serves; websockets are closed."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    path = scope.get("path", "")
    error = RpcError(Code.UNIMPLEMENTED, f"no RPC method or route at {path[:200]}")
    await _send_error(send, error, 404)
