"""Clients nobody here wrote, calling protobind servers: stock ``grpc.aio``, ``connectrpc``, gRPC-Web
spoken over plain ``httpx`` (HTTP/1.1 or HTTP/2), a plain ``nats-py`` connection, a plain ``zmqtt``
(MQTT 5) one, a plain ``aio-pika`` one and a plain ``aiokafka`` producer and consumer.

Each peer is a :class:`~protobind.transport.ClientTransport`: it reads the method, metadata and
deadline from the :class:`~protobind.CallInfo`, speaks its own library's API (following
docs/protocols.md where the library leaves the protocol to its user, as for NATS), and turns what
came back into messages, ``CallInfo.headers`` / ``trailers`` and :class:`~protobind.RpcError`, so
the conformance cases run unchanged against every pairing. Only the decoding of statuses into
``RpcError`` reuses protobind (``RpcError.from_status``, ``unpack_details``): that is data, not
protocol.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from ..._context import CallInfo
from ..._errors import Code, RpcError, unpack_details
from ..._metadata import Metadata, MetadataValue
from ...method import Idempotency, MethodInfo, MethodKind
from ...transport import ClientTransport

__all__ = ["AmqpPeer", "ConnectPeer", "GrpcWebPeer", "GrpcioPeer", "KafkaPeer", "MqttPeer", "NatsPeer"]

_NO_DEADLINE_WAIT = 60.0  # how long a peer waits for a call without a deadline


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _text_metadata(pairs: Any) -> Metadata:
    """Metadata from text ``(key, value)`` pairs, ``-bin`` values base64-decoded (HTTP, NATS)."""
    metadata = Metadata()
    for key, value in pairs:
        metadata.add(key, _b64decode(value) if key.lower().endswith("-bin") else value)
    return metadata


def _wire_text(key: str, value: MetadataValue) -> str:
    if isinstance(value, bytes):
        return _b64encode(value)
    return value


def _method(call: CallInfo) -> MethodInfo[Any, Any]:
    assert call.method is not None, "CallInfo.prepare() sets the method"
    return call.method


async def _first(requests: AsyncIterator[Message]) -> Message:
    async for request in requests:
        return request
    raise RpcError(Code.INTERNAL, "no request to send")


# --- grpc.aio --------------------------------------------------------------------------------------


class GrpcioPeer(ClientTransport):
    """The stock ``grpc.aio`` client: generic multicallables on the method's path, no protobind code
    on the wire."""

    def __init__(self, url: str) -> None:
        import grpc

        self._grpc: Any = grpc
        self._channel: Any = grpc.aio.insecure_channel(urlsplit(url).netloc)

    def _metadata(self, call: CallInfo) -> list[tuple[str, MetadataValue]]:
        return list(call.metadata.items())

    def _error(self, error: Any, call: CallInfo) -> RpcError:
        trailers = error.trailing_metadata() or ()
        self._fill(call, error.initial_metadata() or (), trailers)
        details: list[Message] = []
        for key, value in trailers:
            if key == "grpc-status-details-bin":
                from google.rpc import status_pb2

                details = unpack_details(status_pb2.Status.FromString(value).details)
        return RpcError(Code.from_number(error.code().value[0]), error.details() or "", details)

    @staticmethod
    def _fill(call: CallInfo, headers: Any, trailers: Any) -> None:
        call.headers = Metadata(list(headers))
        call.trailers = Metadata([(k, v) for k, v in trailers if k != "grpc-status-details-bin"])

    async def unary(self, request: Message, call: CallInfo) -> Message:
        method = _method(call)
        callable_ = self._channel.unary_unary(
            method.path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=method.output_type.FromString,
        )
        grpc_call = callable_(request, timeout=call.timeout, metadata=self._metadata(call))
        try:
            response: Message = await grpc_call
        except self._grpc.aio.AioRpcError as error:
            raise self._error(error, call) from None
        except asyncio.CancelledError:
            grpc_call.cancel()
            raise
        self._fill(call, await grpc_call.initial_metadata(), await grpc_call.trailing_metadata())
        return response

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        method = _method(call)
        options: dict[str, Callable[..., Any]] = {
            "request_serializer": lambda m: m.SerializeToString(),
            "response_deserializer": method.output_type.FromString,
        }
        kwargs: dict[str, Any] = {"timeout": call.timeout, "metadata": self._metadata(call)}
        grpc_call: Any
        if method.kind is MethodKind.SERVER_STREAMING:
            grpc_call = self._channel.unary_stream(method.path, **options)(await _first(requests), **kwargs)
        elif method.kind is MethodKind.CLIENT_STREAMING:
            grpc_call = self._channel.stream_unary(method.path, **options)(requests, **kwargs)
        else:
            grpc_call = self._channel.stream_stream(method.path, **options)(requests, **kwargs)
        from ...grpc._wire import ServerStatus

        # grpcio's request writer can lose the race with the server's status: keep the server's
        status = ServerStatus(grpc_call)
        try:
            if method.kind is MethodKind.CLIENT_STREAMING:
                yield await grpc_call
            else:
                async for response in grpc_call:
                    yield response
            self._fill(call, await grpc_call.initial_metadata(), await grpc_call.trailing_metadata())
        except self._grpc.aio.AioRpcError as race:
            error = status.of(race)
            raise self._error(error, call) from None
        finally:
            grpc_call.cancel()  # a no-op once the call is over; ends it when the caller stopped reading

    async def close(self) -> None:
        await self._channel.close(None)


# --- connectrpc ------------------------------------------------------------------------------------


class ConnectPeer(ClientTransport):
    """The ``connectrpc`` package's client (Connect protocol), binary or JSON; GET for
    ``NO_SIDE_EFFECTS`` methods. ``read_max_bytes`` bounds responses as protobind's client does."""

    def __init__(self, url: str, *, json_codec: bool, read_max_bytes: int | None) -> None:
        from connectrpc.client import ConnectClient
        from connectrpc.compat import google_protobuf_binary_codec, google_protobuf_json_codec

        codec = google_protobuf_json_codec() if json_codec else google_protobuf_binary_codec()
        self._client = ConnectClient(url, codec=codec, read_max_bytes=read_max_bytes)

    @staticmethod
    def _method(method: MethodInfo[Any, Any]) -> Any:
        from connectrpc.method import IdempotencyLevel, StreamType
        from connectrpc.method import MethodInfo as ConnectMethod

        stream_type = {
            MethodKind.UNARY: StreamType.UNARY,
            MethodKind.SERVER_STREAMING: StreamType.SERVER_STREAM,
            MethodKind.CLIENT_STREAMING: StreamType.CLIENT_STREAM,
            MethodKind.BIDI_STREAMING: StreamType.BIDI_STREAM,
        }[method.kind]
        level = IdempotencyLevel[method.idempotency.name]
        return ConnectMethod(
            name=method.name,
            service_name=method.service,
            input=method.input_type,
            output=method.output_type,
            idempotency_level=level,
            stream_type=stream_type,
        )

    @staticmethod
    def _call_options(call: CallInfo) -> dict[str, Any]:
        from connectrpc.request import Headers

        headers = Headers()
        for key, value in call.metadata.items():
            headers.add(key, _wire_text(key, value))
        timeout = call.timeout
        return {"headers": headers, "timeout_ms": None if timeout is None else max(1, int(timeout * 1000))}

    @staticmethod
    def _error(error: Any) -> RpcError:
        anys = [
            any_pb2.Any(type_url=f"type.googleapis.com/{d.type_name}", value=d.message_bytes)
            for d in error.details
        ]
        return RpcError(Code.from_connect_name(error.code.value), error.message, unpack_details(anys))

    @staticmethod
    def _fill(call: CallInfo, meta: Any) -> None:
        call.headers = _text_metadata(meta.headers.allitems())
        call.trailers = _text_metadata(meta.trailers.allitems())

    async def unary(self, request: Message, call: CallInfo) -> Message:
        from connectrpc.client import ResponseMetadata
        from connectrpc.errors import ConnectError

        method = _method(call)
        get = method.idempotency is Idempotency.NO_SIDE_EFFECTS
        with ResponseMetadata() as meta:
            try:
                response: Message = await self._client.execute_unary(
                    request=request, method=self._method(method), use_get=get, **self._call_options(call)
                )
            except ConnectError as error:
                raise self._error(error) from None
            finally:
                self._fill(call, meta)
        return response

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        from connectrpc.client import ResponseMetadata
        from connectrpc.errors import ConnectError

        method = _method(call)
        connect_method = self._method(method)
        options = self._call_options(call)
        with ResponseMetadata() as meta:
            try:
                if method.kind is MethodKind.SERVER_STREAMING:
                    request = await _first(requests)
                    async for response in self._client.execute_server_stream(
                        request=request, method=connect_method, **options
                    ):
                        yield response
                elif method.kind is MethodKind.CLIENT_STREAMING:
                    yield await self._client.execute_client_stream(
                        request=requests, method=connect_method, **options
                    )
                else:
                    async for response in self._client.execute_bidi_stream(
                        request=requests, method=connect_method, **options
                    ):
                        yield response
            except ConnectError as error:
                raise self._error(error) from None
            finally:
                self._fill(call, meta)

    async def close(self) -> None:
        await self._client.close()


# --- gRPC-Web over httpx ----------------------------------------------------------------------------

#: gRPC's reading of an HTTP status when a response carries no grpc-status (the gRPC HTTP/2 spec).
_HTTP_TO_GRPC = {400: Code.INTERNAL, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED}
_HTTP_TO_GRPC |= {404: Code.UNIMPLEMENTED, 429: Code.UNAVAILABLE, 502: Code.UNAVAILABLE}
_HTTP_TO_GRPC |= {503: Code.UNAVAILABLE, 504: Code.UNAVAILABLE}
#: Response headers of HTTP or gRPC-Web itself, never metadata.
_WEB_OWN_HEADERS = frozenset(
    {"content-type", "content-length", "date", "server", "connection", "transfer-encoding", "vary"}
)


class GrpcWebPeer(ClientTransport):
    """The gRPC-Web protocol (binary, ``application/grpc-web+proto``) as a browser library speaks it,
    written here on plain ``httpx`` from the protocol's description: each message framed (flags
    byte, 4-byte big-endian length), metadata as headers (``-bin`` in base64), the deadline as
    ``grpc-timeout``; the answer's messages are frames of the body and its status is the last frame
    (flags ``0x80``: ``name: value`` lines), or the headers of a "trailers-only" answer. Over HTTP/1.1
    (``http2=False``) or HTTP/2 with prior knowledge. ``read_max_bytes`` bounds response messages.
    Cancelling a call closes its stream (HTTP/1.1: its connection)."""

    def __init__(self, url: str, *, http2: bool, read_max_bytes: int | None) -> None:
        import httpx

        self._httpx: Any = httpx
        self._client: Any = httpx.AsyncClient(base_url=url.rstrip("/"), http1=not http2, http2=http2)
        self._limit = read_max_bytes

    @staticmethod
    def _headers(call: CallInfo) -> list[tuple[str, str]]:
        headers = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")]
        headers.extend((key, _wire_text(key, value)) for key, value in call.metadata.items())
        timeout = call.timeout
        if timeout is not None:
            headers.append(("grpc-timeout", f"{max(1, int(timeout * 1000))}m"))
        return headers

    @staticmethod
    async def _body(requests: AsyncIterator[Message]) -> AsyncIterator[bytes]:
        async for request in requests:
            data = request.SerializeToString()
            yield bytes([0]) + len(data).to_bytes(4, "big") + data

    @staticmethod
    def _status(fields: Any) -> RpcError | None:
        """The call's error from its status fields, ``None`` when OK; RpcError(INTERNAL) when the
        fields hold no status."""
        found = {k.lower(): v for k, v in fields}
        status = found.get("grpc-status")
        if status is None:
            return RpcError(Code.INTERNAL, "the response ended without a grpc-status")
        if status == "0":
            return None
        details = found.get("grpc-status-details-bin")
        if details is not None:
            from google.rpc import status_pb2

            return RpcError.from_status(status_pb2.Status.FromString(_b64decode(details)))
        return RpcError(Code.from_number(int(status)), unquote(found.get("grpc-message", "")))

    async def _call(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        method = _method(call)
        httpx = self._httpx
        timeout = call.timeout
        # the server answers DEADLINE_EXCEEDED itself at the deadline; wait a little longer
        wait = _NO_DEADLINE_WAIT if timeout is None else max(timeout, 0) + 2.0
        body: bytes | AsyncIterator[bytes] = self._body(requests)
        if method.kind in (MethodKind.UNARY, MethodKind.SERVER_STREAMING):
            body = b"".join([frame async for frame in self._body(requests)])  # with a Content-Length
        request = self._client.build_request(
            "POST", method.path, headers=self._headers(call), content=body, timeout=wait
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise RpcError(Code.DEADLINE_EXCEEDED, "no answer in time") from None
        except httpx.HTTPError as error:
            raise RpcError(Code.UNAVAILABLE, f"the request failed: {error}") from None
        try:
            metadata = [
                (k, v) for k, v in response.headers.multi_items() if k.lower() not in _WEB_OWN_HEADERS
            ]
            if "grpc-status" in response.headers:  # trailers-only: the status is in the headers
                call.headers = Metadata()
                call.trailers = _text_metadata((k, v) for k, v in metadata if not k.startswith("grpc-"))
                failed = self._status(metadata)
                if failed is not None:
                    raise failed
                return
            if response.status_code != 200:
                code = _HTTP_TO_GRPC.get(response.status_code, Code.UNKNOWN)
                raise RpcError(code, f"HTTP status {response.status_code}")
            call.headers = _text_metadata(metadata)
            buffer = bytearray()
            async for chunk in response.aiter_raw():
                buffer += chunk
                while len(buffer) >= 5:
                    flags, size = buffer[0], int.from_bytes(buffer[1:5], "big")
                    if self._limit is not None and size > self._limit:
                        raise RpcError(
                            Code.RESOURCE_EXHAUSTED, f"a response is larger than {self._limit} bytes"
                        )
                    if len(buffer) < 5 + size:
                        break
                    data = bytes(buffer[5 : 5 + size])
                    del buffer[: 5 + size]
                    if flags & 0x80:
                        lines = (line.partition(":") for line in data.decode().split("\r\n") if line)
                        fields = [(name.strip().lower(), value.strip()) for name, _, value in lines]
                        call.trailers = _text_metadata((k, v) for k, v in fields if not k.startswith("grpc-"))
                        failed = self._status(fields)
                        if failed is not None:
                            raise failed
                        return
                    yield method.output_type.FromString(data)
            raise RpcError(Code.INTERNAL, "the response ended without its trailer frame")
        except httpx.TimeoutException:
            raise RpcError(Code.DEADLINE_EXCEEDED, "no answer in time") from None
        except httpx.HTTPError as error:
            raise RpcError(Code.UNAVAILABLE, f"the response failed: {error}") from None
        finally:
            await response.aclose()

    async def unary(self, request: Message, call: CallInfo) -> Message:
        responses = [r async for r in self._call(_one(request), call)]
        if len(responses) != 1:
            raise RpcError(Code.INTERNAL, f"a unary call answered {len(responses)} messages")
        return responses[0]

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        responses = self._call(requests, call)
        try:
            async for response in responses:
                yield response
        finally:
            await responses.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self._client.aclose()


async def _one(message: Message) -> AsyncIterator[Message]:
    yield message


# --- nats-py ---------------------------------------------------------------------------------------

#: Reply headers that belong to the protocol, not to the handler's response metadata.
_NATS_PROTOCOL_HEADERS = ("protobind-", "nats-", "content-type", "status", "description")


class NatsPeer(ClientTransport):
    """A plain ``nats-py`` connection doing what docs/protocols.md (NATS) tells any NATS client to
    do for a unary call: a request on ``{prefix}{package}.{Service}.{Method}``, metadata and
    ``Protobind-Timeout-Ms`` in headers, binary or JSON bodies, errors read from
    ``Protobind-Status`` and the body, cancellation published to ``{prefix}$PROTOBIND.CANCEL``.
    Streams need protobind's frame protocol, which this peer does not speak."""

    def __init__(self, url: str, *, json_codec: bool) -> None:
        parts = urlsplit(url)
        prefix = dict(parse_qsl(parts.query)).get("prefix", "")
        self._prefix = prefix + "." if prefix and not prefix.endswith(".") else prefix
        self._server = f"nats://{parts.netloc}"
        self._json = json_codec
        self._nc: Any = None

    async def _connection(self) -> Any:
        if self._nc is None:
            import nats

            self._nc = await nats.connect(servers=[self._server], name="conformance nats-py peer")
        return self._nc

    def _headers(self, call: CallInfo) -> dict[str, str]:
        headers: dict[str, str] = {}
        for key, value in call.metadata.items():
            text = _wire_text(key, value)
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        timeout = call.timeout
        if timeout is not None:
            headers["Protobind-Timeout-Ms"] = str(max(1, int(timeout * 1000)))
        if self._json:
            headers["Content-Type"] = "application/json"
        return headers

    def _encode(self, message: Message) -> bytes:
        return json_format.MessageToJson(message).encode() if self._json else message.SerializeToString()

    def _error(self, data: bytes) -> RpcError:
        if not self._json:
            from google.rpc import status_pb2

            return RpcError.from_status(status_pb2.Status.FromString(data))
        body = json.loads(data)
        anys = [
            any_pb2.Any(type_url=f"type.googleapis.com/{d['type']}", value=_b64decode(d["value"]))
            for d in body.get("details", ())
        ]
        return RpcError(
            Code.from_connect_name(body.get("code", "")), body.get("message", ""), unpack_details(anys)
        )

    async def unary(self, request: Message, call: CallInfo) -> Message:
        method = _method(call)
        nc = await self._connection()
        inbox = nc.new_inbox()
        subscription = await nc.subscribe(inbox, max_msgs=1)
        try:
            await nc.publish(
                f"{self._prefix}{method.service}.{method.name}",
                self._encode(request),
                reply=inbox,
                headers=self._headers(call),
            )
            timeout = call.timeout
            # the server answers DEADLINE_EXCEEDED itself at the deadline; wait a little longer
            wait = _NO_DEADLINE_WAIT if timeout is None else max(timeout, 0) + 2.0
            try:
                reply = await subscription.next_msg(timeout=wait)
            except asyncio.CancelledError:
                await nc.publish(f"{self._prefix}$PROTOBIND.CANCEL", inbox.encode())
                raise
        finally:
            await subscription.unsubscribe()
        return self._reply(reply, method, call)

    def _reply(self, reply: Any, method: MethodInfo[Any, Any], call: CallInfo) -> Message:
        headers = dict(reply.headers or {})
        if headers.get("Status") == "503":
            raise RpcError(Code.UNAVAILABLE, "no responders")
        own = [(k, v) for k, v in headers.items() if not k.lower().startswith(_NATS_PROTOCOL_HEADERS)]
        call.headers = _text_metadata((k, v) for k, v in own if not k.lower().startswith("trailer-"))
        call.trailers = _text_metadata((k[8:], v) for k, v in own if k.lower().startswith("trailer-"))
        status = next((v for k, v in headers.items() if k.lower() == "protobind-status"), None)
        if status is not None and status != "0":
            raise self._error(reply.data)
        try:
            response: Message = method.output_type()
            if self._json:
                json_format.Parse(reply.data, response)
            else:
                response.ParseFromString(reply.data)
            return response
        except (json_format.ParseError, binascii.Error, ValueError) as error:
            raise RpcError(Code.INTERNAL, f"cannot parse the reply: {error}") from None

    def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        raise RpcError(Code.UNIMPLEMENTED, "this peer makes plain NATS requests: no streams")

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


class _Reply:
    """A plain peer's answer in the shape :meth:`NatsPeer._reply` reads."""

    def __init__(self, headers: dict[str, str], data: bytes) -> None:
        self.headers = headers
        self.data = data


# --- zmqtt (MQTT 5) ----------------------------------------------------------------------------------


class MqttPeer(NatsPeer):
    """A plain zmqtt MQTT 5 client doing what docs/protocols.md (MQTT 5) tells any MQTT client to do
    for a unary call: a PUBLISH to ``{prefix}/{package levels}/{Service}/{Method}`` with a response
    topic and correlation data, metadata and ``Protobind-Timeout-Ms`` as user properties; the answer
    comes to the response topic with the same correlation data, its status and metadata in user
    properties, as on NATS. Cancellation is a PUBLISH to ``{prefix}/_PROTOBIND/CANCEL`` whose body
    is ``{response topic}#{correlation data}``."""

    def __init__(self, url: str, *, json_codec: bool) -> None:
        super().__init__(url, json_codec=json_codec)
        parts = urlsplit(url)
        self._topics = self._prefix.replace(".", "/")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 1883
        self._client: Any = None

    async def _connection(self) -> Any:
        if self._client is None:
            import zmqtt

            client = zmqtt.create_client(self._host, self._port, version="5.0")
            await client.connect()
            self._client = client
        return self._client

    async def unary(self, request: Message, call: CallInfo) -> Message:
        import os

        import zmqtt

        method = _method(call)
        client = await self._connection()
        topic = "/".join((self._topics + f"{method.service}.{method.name}").split("."))
        reply_topic = f"conformance/reply/{os.urandom(16).hex()}"
        correlation = os.urandom(8).hex().encode()
        properties = zmqtt.PublishProperties(
            response_topic=reply_topic,
            correlation_data=correlation,
            user_properties=tuple(self._headers(call).items()),
        )
        timeout = call.timeout
        # the server answers DEADLINE_EXCEEDED itself at the deadline; wait a little longer
        wait = _NO_DEADLINE_WAIT if timeout is None else max(timeout, 0) + 2.0
        try:
            answer = await client.request(topic, self._encode(request), timeout=wait, properties=properties)
        except asyncio.CancelledError:
            cancel = f"{reply_topic}#{correlation.decode()}".encode()
            await client.publish(f"{self._topics}_PROTOBIND/CANCEL", cancel)
            raise
        except asyncio.TimeoutError:
            raise RpcError(Code.DEADLINE_EXCEEDED, "no answer in time") from None
        props = answer.properties
        headers = dict(props.user_properties) if props is not None else {}
        return self._reply(_Reply(headers, answer.payload), method, call)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.disconnect()


# --- aio-pika -------------------------------------------------------------------------------------


class AmqpPeer(NatsPeer):
    """A plain ``aio-pika`` connection doing what docs/protocols.md (RabbitMQ) tells any AMQP client
    to do for a unary call: publish to the topic exchange (``protobind``, or the URL's ``exchange``)
    with the routing key ``{prefix}{package}.{Service}.{Method}``, ``reply_to`` an exclusive queue
    of its own and a ``correlation_id``, ``mandatory`` (a returned message: nobody serves it);
    metadata and ``Protobind-Timeout-Ms`` in the headers table, JSON as ``content_type``; the reply
    comes to that queue with the same ``correlation_id``; cancellation is a message to
    ``{prefix}$PROTOBIND.CANCEL`` whose body is ``{reply_to}#{correlation_id}``. Headers and error
    bodies read as on NATS. No streams (they need the engine's frame protocol)."""

    def __init__(self, url: str, *, json_codec: bool) -> None:
        super().__init__(url, json_codec=json_codec)
        parts = urlsplit(url)
        self._exchange = dict(parse_qsl(parts.query)).get("exchange", "protobind")
        self._server = parts._replace(query="").geturl()
        self._channel: Any = None
        self._queue: Any = None
        self._waiting: dict[str, asyncio.Future[Any]] = {}

    async def _connection(self) -> Any:
        if self._nc is None:
            import aio_pika

            self._nc = await aio_pika.connect(self._server, client_properties={"connection_name": "peer"})
            self._channel = await self._nc.channel()  # publisher confirms: returns are reported
            self._queue = await self._channel.declare_queue("", exclusive=True, auto_delete=True)

            async def on_reply(message: Any) -> None:
                future = self._waiting.pop(message.correlation_id or "", None)
                if future is not None and not future.done():
                    future.set_result(message)

            await self._queue.consume(on_reply, no_ack=True)
        return self._nc

    async def unary(self, request: Message, call: CallInfo) -> Message:
        import aio_pika
        from aiormq.abc import DeliveredMessage

        method = _method(call)
        await self._connection()
        headers = self._headers(call)
        content_type = headers.pop("Content-Type", None)
        correlation = os.urandom(10).hex()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        exchange = await self._channel.get_exchange(self._exchange, ensure=False)
        message = aio_pika.Message(
            self._encode(request),
            headers=headers,  # type: ignore[arg-type]
            content_type=content_type,
            reply_to=self._queue.name,
            correlation_id=correlation,
        )
        try:
            returned = await exchange.publish(
                message, f"{self._prefix}{method.service}.{method.name}", mandatory=True
            )
            if isinstance(returned, DeliveredMessage):  # RabbitMQ returned it: unroutable
                raise RpcError(Code.UNAVAILABLE, "no queue is bound to the method's routing key")
            timeout = call.timeout
            wait = _NO_DEADLINE_WAIT if timeout is None else max(timeout, 0) + 2.0
            try:
                reply = await asyncio.wait_for(future, wait)
            except asyncio.CancelledError:
                cancel = aio_pika.Message(f"{self._queue.name}#{correlation}".encode())
                await exchange.publish(cancel, f"{self._prefix}$PROTOBIND.CANCEL")
                raise
        finally:
            self._waiting.pop(correlation, None)
        found = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (reply.headers or {}).items()}
        if reply.content_type:
            found["Content-Type"] = reply.content_type
        return self._reply(_Reply(found, reply.body), method, call)

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


# --- aiokafka --------------------------------------------------------------------------------------


class KafkaPeer(NatsPeer):
    """A plain ``aiokafka`` producer and consumer doing what docs/brokers.md (Kafka) tells any
    Kafka client to do for a unary call: a record on the method's topic
    (``{prefix}{package}.{Service}.{Method}``) with the reply address ``<topic>/<correlation>`` in
    ``Protobind-Reply``, metadata and ``Protobind-Timeout-Ms`` in headers (as on NATS); the reply
    arrives on the peer's own topic with the correlation in ``Protobind-Correlation``; a
    cancellation goes to the control topic with ``Protobind-Subject: {prefix}$PROTOBIND.CANCEL``."""

    def __init__(self, url: str, *, json_codec: bool) -> None:
        super().__init__(url, json_codec=json_codec)
        self._bootstrap = urlsplit(url).netloc
        self._topic = f"conformance.replies.{base64.b32encode(os.urandom(10)).decode().lower()}"
        self._producer: Any = None
        self._consumer: Any = None
        self._waiting: dict[str, asyncio.Future[_Reply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def _connection(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
            from aiokafka.admin import AIOKafkaAdminClient, NewTopic

            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(self._topic, 1, 1)])
            finally:
                await admin.close()
            producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all")
            await producer.start()
            consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, fetch_max_wait_ms=50)
            await consumer.start()
            partition = TopicPartition(self._topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_end(partition)
            await consumer.position(partition)
            self._producer, self._consumer = producer, consumer
            self._reader = asyncio.get_running_loop().create_task(self._read())
        return self._producer

    async def _read(self) -> None:
        async for record in self._consumer:
            headers = {key: (value or b"").decode() for key, value in record.headers}
            future = self._waiting.get(headers.pop("Protobind-Correlation", ""))
            if future is not None and not future.done():
                future.set_result(_Reply(headers, record.value or b""))

    async def unary(self, request: Message, call: CallInfo) -> Message:
        method = _method(call)
        producer = await self._connection()
        correlation = os.urandom(8).hex()
        reply_to = f"{self._topic}/{correlation}"
        future: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        headers = [(k, v.encode()) for k, v in self._headers(call).items()]
        headers.append(("Protobind-Reply", reply_to.encode()))
        try:
            await producer.send_and_wait(
                f"{self._prefix}{method.service}.{method.name}", self._encode(request), headers=headers
            )
            timeout = call.timeout
            wait = _NO_DEADLINE_WAIT if timeout is None else max(timeout, 0) + 2.0
            try:
                reply = await asyncio.wait_for(future, wait)
            except asyncio.TimeoutError:
                # no answer at all: what any Kafka client would report after its own wait
                raise RpcError(Code.DEADLINE_EXCEEDED, "no reply in time") from None
            except asyncio.CancelledError:
                cancel = [("Protobind-Subject", f"{self._prefix}$PROTOBIND.CANCEL".encode())]
                control = "protobind.control"
                await producer.send_and_wait(control, reply_to.encode(), headers=cancel, partition=0)
                raise
        finally:
            del self._waiting[correlation]
        return self._reply(reply, method, call)

    def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        raise RpcError(Code.UNIMPLEMENTED, "this peer makes plain Kafka requests: no streams")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._producer is not None:
            await self._producer.stop()
            await self._consumer.stop()
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([self._topic])
            finally:
                await admin.close()
