"""RESTful routes from ``google.api.http`` annotations, for the HTTP binding's starlette app.

:func:`rest_routes` turns every ``google.api.http`` binding of every unary method of a
:class:`~protobind.Server` into a starlette route. A request is built from the path variables, the
query string and the JSON body; the response is the proto3 JSON of the response message (or of its
``response_body`` field). Errors are the Connect error JSON with the Connect HTTP status, as on the
Connect routes. Streaming methods are not bound (logged at start-up); they stay reachable on their
Connect route.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import re
import time
from typing import Any
from urllib.parse import parse_qsl, unquote

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from starlette.datastructures import Headers, URLPath
from starlette.requests import ClientDisconnect, Request
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from .._context import Context
from .._errors import Code, RpcError
from .._metadata import Metadata
from .._schemas import enum_of, is_map, is_repeated, message_of
from .._wire import HTTP_STATUS, TRAILER_PREFIX, b64decode_lenient, connect_error
from ..codec import JsonCodec, parse_json
from ..endpoints import Endpoint, EndpointTable, invoke_unary, to_rpc_error
from ..limits import ConcurrencyLimit, ReadTimeout, ReadTimer
from ..options import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE
from ._rule import (
    HttpBinding,
    collect_bindings,
    decode_path_value,
)
from ._wire import PROTOCOL_HEADERS, encode_header, metadata_value

logger = logging.getLogger("protobind.http._rest")

__all__ = ["rest_routes"]

_T = FieldDescriptor
_INT_RANGES = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}
_INTEGER = re.compile(r"-?[0-9]+\Z")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}
#: Well-known types given as one string in a query parameter (their proto3 JSON form).
_STRING_WKT = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}
_TIMEOUT = re.compile(r"[0-9]{1,10}\Z")


def rest_routes(
    server: EndpointTable,
    *,
    ignore_unknown_fields: bool,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    concurrency: ConcurrencyLimit | None = None,
    timer: ReadTimer | None = None,
) -> list[BaseRoute]:
    """Starlette routes serving the ``google.api.http`` bindings of ``server``'s unary methods.

    ``ignore_unknown_fields`` accepts JSON body fields and query parameters that the request
    message does not have; a body larger than ``max_message_size`` bytes is refused with 413
    (``resource_exhausted``), as on the Connect routes. The HTTP binding passes its
    ``concurrency`` limit and body read ``timer`` (408 when the body is too slow) so that REST
    and Connect calls share them.

    Bindings with equivalent templates share one route, so a wrong HTTP method answers 405 with an
    ``Allow`` header. Routes come most specific first (a verb suffix, then literal segments before
    ``*`` before ``**``). Raises ``ValueError`` at once for an invalid rule or for two bindings with
    the same HTTP method and equivalent templates.
    """
    skipped: list[Any] = []
    bindings = collect_bindings(server.services, skipped=skipped)
    for method in skipped:
        logger.warning(
            "%s has a google.api.http rule but is %s: REST routes serve unary methods only, "
            "call it on its Connect route %s",
            method.full_name,
            method.kind.value.replace("_", "-"),
            method.path,
        )
    handler = _RestHandler(
        server,
        ignore_unknown_fields=ignore_unknown_fields,
        max_message_size=max_message_size,
        concurrency=concurrency,
        timer=timer or ReadTimer(DEFAULT_BODY_TIMEOUT),
    )
    routes: dict[Any, RestRoute] = {}
    for binding in bindings:
        shape = binding.template.shape
        if shape not in routes:
            routes[shape] = RestRoute(handler)
        routes[shape].add(binding)
    return list(routes.values())


class RestRoute(BaseRoute):
    """The bindings (one per HTTP method) whose templates match the same paths."""

    def __init__(self, handler: _RestHandler) -> None:
        self.handler = handler
        self.bindings: dict[str, HttpBinding] = {}

    def add(self, binding: HttpBinding) -> None:
        self.bindings[binding.http_method] = binding

    @property
    def template(self) -> str:
        return next(iter(self.bindings.values())).template.text

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        raw_path = _raw_route_path(scope)
        binding = self.bindings.get(scope["method"]) or next(iter(self.bindings.values()))
        values = binding.template.match(raw_path)
        if values is None:
            return Match.NONE, {}
        if scope["method"] not in self.bindings:
            return Match.PARTIAL, {}
        return Match.FULL, {"protobind.rest": (binding, values)}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = scope.get("protobind.rest")
        if matched is None or matched[0] not in self.bindings.values():
            allowed = ", ".join(sorted(self.bindings))
            err = RpcError(Code.UNIMPLEMENTED, f"{scope['method']} is not allowed here; use {allowed}")
            await _send_json(send, 405, connect_error(err), None, [(b"allow", allowed.encode())])
            return
        binding, values = matched
        await self.handler.serve(binding, values, scope, receive, send)

    def __repr__(self) -> str:
        verbs = ",".join(sorted(self.bindings))
        return f"RestRoute({verbs} {self.template})"


def _raw_route_path(scope: Scope) -> str:
    """The still percent-encoded request path below the app's root path."""
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    route_path = path[len(root) :] if root and path.startswith(root) else path
    raw_bytes = scope.get("raw_path")
    if not isinstance(raw_bytes, bytes) or not raw_bytes:
        return route_path
    raw = raw_bytes.decode("latin-1")
    if not root:
        return raw
    # Drop leading raw segments until what is left decodes to the route path.
    parts = raw.split("/")
    for start in range(1, len(parts)):
        candidate = "/" + "/".join(parts[start:])
        if unquote(candidate, errors="replace") == route_path:
            return candidate
    return route_path


class _TooLarge(Exception):
    """The request body is over the size limit."""


class _RestHandler:
    def __init__(
        self,
        server: EndpointTable,
        *,
        ignore_unknown_fields: bool,
        max_message_size: int,
        concurrency: ConcurrencyLimit | None,
        timer: ReadTimer,
    ) -> None:
        self.server = server
        self.max_message_size = max_message_size
        self.concurrency = concurrency
        self.timer = timer
        self.ignore_unknown_fields = ignore_unknown_fields
        self.codec = JsonCodec(ignore_unknown_fields=ignore_unknown_fields)

    async def serve(
        self,
        binding: HttpBinding,
        values: dict[str, tuple[str, bool]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        endpoint: Endpoint = self.server.endpoints[binding.method.path]
        context: Context | None = None
        try:
            request = Request(scope, receive)
            try:
                body = await self.timer.run(self._read_body(request))
            except ClientDisconnect:
                return
            except _TooLarge:
                too_large = RpcError(
                    Code.RESOURCE_EXHAUSTED, f"request body is larger than {self.max_message_size} bytes"
                )
                await _send_json(send, 413, connect_error(too_large), None)
                return
            except ReadTimeout as slow:
                await _send_json(send, 408, connect_error(slow), None, [(b"connection", b"close")])
                return
            context = Context(
                endpoint.method,
                "http",
                metadata=_metadata(request.headers),
                deadline=_deadline(request.headers),
                peer=_peer(scope),
            )
            message = self.build_request(binding, values, scope.get("query_string", b""), body)
            response = await _run(endpoint, message, context, receive, self.concurrency)
            if response is None:
                return  # the caller went away: nobody to answer
            status, payload = 200, _response_json(binding, response)
        except RpcError as exc:
            status, payload = HTTP_STATUS[exc.code], connect_error(exc)
        except asyncio.CancelledError:
            # the server is stopping and its grace period ran out
            stopping = RpcError(Code.UNAVAILABLE, "server is shutting down")
            status, payload = HTTP_STATUS[stopping.code], connect_error(stopping)
        except Exception as exc:  # a bug of ours: logged, never sent
            error = to_rpc_error(exc, context)
            status, payload = HTTP_STATUS[error.code], connect_error(error)
        await _send_json(send, status, payload, context)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_message_size
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def build_request(
        self, binding: HttpBinding, values: dict[str, tuple[str, bool]], query: bytes, body: bytes
    ) -> Message:
        """The request message: the body first, then the query string, then the path (which wins)."""
        message_type = binding.method.input_type
        if binding.body == "*":
            message: Message = self.codec.decode(body, message_type)
        else:
            message = message_type()
            if binding.body_field is not None:
                self._decode_body_field(message, binding.body_field, body)
            elif body.strip():
                raise RpcError(
                    Code.INVALID_ARGUMENT,
                    f"{binding.http_method} {binding.template} takes no request body; "
                    "send the fields in the query string",
                )
        self._apply_query(message, binding, query)
        for var, fields in zip(binding.template.variables, binding.path_fields, strict=True):
            raw, multi = values[var.name]
            try:
                text = decode_path_value(raw, multi)
            except UnicodeDecodeError:
                raise RpcError(
                    Code.INVALID_ARGUMENT, f"path variable {var.name}: not valid percent-encoded UTF-8"
                ) from None
            _set_field(message, fields, [text], f"path variable {var.name}")
        return message

    def _decode_body_field(self, message: Message, field: FieldDescriptor, body: bytes) -> None:
        if not body.strip():
            return
        if field.type == _T.TYPE_MESSAGE and not is_repeated(field):
            sub_type: Any = type(getattr(message, field.name))
            getattr(message, field.name).CopyFrom(self.codec.decode(body, sub_type))
            return
        try:
            value = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise RpcError(Code.INVALID_ARGUMENT, f"body is not valid JSON for field {field.name}") from None
        parse_json({field.json_name: value}, message, ignore_unknown_fields=self.ignore_unknown_fields)

    def _apply_query(self, message: Message, binding: HttpBinding, query: bytes) -> None:
        if not query:
            return
        try:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise RpcError(Code.INVALID_ARGUMENT, "query string is not valid percent-encoded UTF-8") from None
        grouped: dict[str, list[str]] = {}
        for key, value in pairs:
            grouped.setdefault(key, []).append(value)
        path_bound = [tuple(f.name for f in fields) for fields in binding.path_fields]
        for key, texts in grouped.items():
            source = f"query parameter {key!r}"
            if binding.body == "*":
                if self.ignore_unknown_fields:
                    continue
                raise RpcError(
                    Code.INVALID_ARGUMENT,
                    f"{source}: {binding.http_method} {binding.template} takes every field in the "
                    "body, not in the query string",
                )
            fields = _resolve(binding.method.input_type.DESCRIPTOR, key)
            if fields is None:
                if self.ignore_unknown_fields:
                    continue
                raise RpcError(
                    Code.INVALID_ARGUMENT, f"{source}: no such field in {message.DESCRIPTOR.full_name}"
                )
            names = tuple(f.name for f in fields)
            if binding.body_field is not None and fields[0] is binding.body_field:
                raise RpcError(Code.INVALID_ARGUMENT, f"{source}: {fields[0].name} is sent in the body")
            for bound in path_bound:
                n = min(len(bound), len(names))
                if bound[:n] == names[:n]:
                    raise RpcError(Code.INVALID_ARGUMENT, f"{source}: {'.'.join(bound)} is set by the path")
            _set_field(message, fields, texts, source)


@functools.lru_cache(maxsize=512)
def _field_names(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by proto name and by JSON name."""
    names: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        names[field.json_name] = field
    for field in descriptor.fields:
        names[field.name] = field
    return names


def _resolve(descriptor: Descriptor, key: str) -> tuple[FieldDescriptor, ...] | None:
    """``page.size`` -> the fields along the path (proto or JSON names), or ``None``."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in key.split("."):
        if current is None:
            return None
        field = _field_names(current).get(part)
        if field is None:
            return None
        fields.append(field)
        nested = message_of(field) if field.type == _T.TYPE_MESSAGE else None
        current = nested if nested is not None and not is_repeated(field) and not _is_wkt(nested) else None
    return tuple(fields)


def _is_wkt(descriptor: Descriptor) -> bool:
    return descriptor.full_name.startswith("google.protobuf.")


def _set_field(message: Message, fields: tuple[FieldDescriptor, ...], texts: list[str], source: str) -> None:
    """Set the field at the end of ``fields`` from text values (a repeated field takes them all)."""
    target: Any = message
    for field in fields[:-1]:
        target = getattr(target, field.name)
    leaf = fields[-1]
    if is_map(leaf):
        raise RpcError(Code.INVALID_ARGUMENT, f"{source}: map fields cannot be set from the URL")
    if leaf.type == _T.TYPE_MESSAGE:
        if is_repeated(leaf):
            raise RpcError(
                Code.INVALID_ARGUMENT, f"{source}: repeated message fields cannot be set from the URL"
            )
        if len(texts) > 1:
            raise RpcError(Code.INVALID_ARGUMENT, f"{source}: given {len(texts)} times, expected once")
        _set_wkt(getattr(target, leaf.name), leaf, texts[0], source)
        return
    values = [_scalar(leaf, text, source) for text in texts]
    if is_repeated(leaf):
        getattr(target, leaf.name).extend(values)
        return
    if len(values) > 1:
        raise RpcError(Code.INVALID_ARGUMENT, f"{source}: given {len(values)} times, expected once")
    setattr(target, leaf.name, values[0])


def _set_wkt(sub: Message, field: FieldDescriptor, text: str, source: str) -> None:
    wkt = message_of(field)
    name = wkt.full_name
    if name in _WRAPPERS:
        sub.value = _scalar(wkt.fields_by_name["value"], text, source)  # type: ignore[attr-defined]
        return
    if name in _STRING_WKT:
        try:
            json_format.ParseDict(text, sub)  # type: ignore[arg-type]  # a WKT's JSON is a string
        except (json_format.ParseError, ValueError, TypeError):
            raise RpcError(
                Code.INVALID_ARGUMENT, f"{source}: {text!r} is not a valid {name} in proto3 JSON form"
            ) from None
        return
    raise RpcError(
        Code.INVALID_ARGUMENT,
        f"{source}: {field.name} is a message ({name}); set its fields instead, e.g. {field.name}.<field>",
    )


def _scalar(field: FieldDescriptor, text: str, source: str) -> Any:
    kind = field.type
    if kind == _T.TYPE_STRING:
        return text
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        if not _INTEGER.match(text) or not low <= int(text) <= high:
            raise RpcError(Code.INVALID_ARGUMENT, f"{source}: {text!r} is not a valid {_type_name(field)}")
        return int(text)
    if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        if text in _FLOAT_WORDS:
            return _FLOAT_WORDS[text]
        if not _FLOAT.match(text):
            raise RpcError(Code.INVALID_ARGUMENT, f"{source}: {text!r} is not a valid {_type_name(field)}")
        return float(text)
    if kind == _T.TYPE_BOOL:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise RpcError(Code.INVALID_ARGUMENT, f"{source}: {text!r} is not a bool (use true or false)")
    if kind == _T.TYPE_ENUM:
        enum = enum_of(field)
        by_name = enum.values_by_name.get(text)
        if by_name is not None:
            return by_name.number
        if _INTEGER.match(text) and int(text) in enum.values_by_number:
            return int(text)
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f"{source}: {text!r} is not a value of {enum.full_name} "
            f"({', '.join(v.name for v in enum.values)})",
        )
    if kind == _T.TYPE_BYTES:
        try:
            return b64decode_lenient(text)
        except ValueError:
            raise RpcError(Code.INVALID_ARGUMENT, f"{source}: bytes must be base64") from None
    raise RpcError(Code.INVALID_ARGUMENT, f"{source}: fields of this type cannot be set from the URL")


def _type_name(field: FieldDescriptor) -> str:
    names = {
        _T.TYPE_DOUBLE: "double",
        _T.TYPE_FLOAT: "float",
        _T.TYPE_INT32: "int32",
        _T.TYPE_SINT32: "sint32",
        _T.TYPE_SFIXED32: "sfixed32",
        _T.TYPE_UINT32: "uint32",
        _T.TYPE_FIXED32: "fixed32",
        _T.TYPE_INT64: "int64",
        _T.TYPE_SINT64: "sint64",
        _T.TYPE_SFIXED64: "sfixed64",
        _T.TYPE_UINT64: "uint64",
        _T.TYPE_FIXED64: "fixed64",
    }
    return names.get(field.type, "value")


def _metadata(headers: Headers) -> Metadata:
    """Request headers as call metadata, as on the Connect routes: HTTP's and Connect's own headers
    are left out; ``-bin`` values are base64-decoded."""
    metadata = Metadata()
    for key, value in headers.items():
        if key not in PROTOCOL_HEADERS:
            metadata.add(key, metadata_value(key, value))
    return metadata


def _deadline(headers: Headers) -> float | None:
    timeout = headers.get("connect-timeout-ms")
    if timeout is None:
        return None
    if not _TIMEOUT.match(timeout.strip()):
        raise RpcError(Code.INVALID_ARGUMENT, "Connect-Timeout-Ms must be a whole number of milliseconds")
    return time.monotonic() + int(timeout) / 1000


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


async def _run(
    endpoint: Endpoint,
    message: Message,
    context: Context,
    receive: Receive,
    concurrency: ConcurrencyLimit | None,
) -> Message | None:
    """Run the handler; if the caller disconnects first, cancel it and return ``None``."""
    call = asyncio.ensure_future(invoke_unary(endpoint, message, context, limit=concurrency))
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({call, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        context.cancel()
        call.cancel()
        watch.cancel()
        raise
    watch.cancel()
    if call.done():
        return call.result()
    context.cancel()
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    return None


async def _disconnected(receive: Receive) -> None:
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return


def _response_json(binding: HttpBinding, response: Message) -> Any:
    field = binding.response_field
    if field is None:
        return json_format.MessageToDict(response)
    if field.type == _T.TYPE_MESSAGE and not is_repeated(field):
        return json_format.MessageToDict(getattr(response, field.name))
    whole = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    return whole.get(field.json_name)


async def _send_json(
    send: Send,
    status: int,
    payload: Any,
    context: Context | None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a JSON answer with the call's response headers, and its trailers as ``Trailer-`` headers."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend(extra or ())
    if context is not None:
        for prefix, metadata in (("", context.response_headers), (TRAILER_PREFIX, context.response_trailers)):
            for key, value in metadata.items():
                header = encode_header(prefix + key, value)
                if header is None:
                    logger.warning("dropped response metadata %r: its value contains a line break", key)
                else:
                    headers.append(header)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
