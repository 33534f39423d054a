"""Codecs: binary protobuf and proto3 canonical JSON.

A codec turns a message into bytes and back. Decoding failures raise ``RpcError(INVALID_ARGUMENT)``
with a message that describes the input, never the library's internals, so transports can pass
the error straight to the caller.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Protocol, TypeVar

__all__ = [
    "CODECS",
    "JSON",
    "PROTO",
    "Codec",
    "JsonCodec",
    "ProtoCodec",
    "codec_for_media_type",
    "codec_named",
    "parse_json",
    "register_codec",
    "response_codec",
]

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from . import _jsonfast
from ._errors import Code, RpcError

M = TypeVar("M", bound=Message)


class Codec(Protocol):
    """Serialize messages. ``name`` is the Connect encoding name (``proto``, ``json``);
    ``content_type`` the media type a transport labels the bytes with."""

    name: str
    content_type: str

    def encode(self, message: Message) -> bytes:
        """The message as bytes."""
        ...

    def decode(self, data: bytes, message_type: type[M]) -> M:
        """Bytes as a ``message_type``; ``RpcError(INVALID_ARGUMENT)`` when they are not one."""
        ...


class ProtoCodec(Codec):
    """Binary protobuf."""

    name = "proto"
    content_type = "application/proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes, message_type: type[M]) -> M:
        try:
            return message_type.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            raise RpcError(
                Code.INVALID_ARGUMENT,
                f"body is not a valid binary {message_type.DESCRIPTOR.full_name}",
            ) from exc


class JsonCodec(Codec):
    """Proto3 canonical JSON, camelCase field names on output, exactly as ``google.protobuf.json_format``
    writes and reads it (through per-message-type tables, ``protobind._jsonfast``, which leave to
    json_format what they do not cover).

    Unknown fields are rejected unless ``ignore_unknown_fields`` is set.
    """

    name = "json"
    content_type = "application/json"

    def __init__(self, *, ignore_unknown_fields: bool = False) -> None:
        self.ignore_unknown_fields = ignore_unknown_fields

    def encode(self, message: Message) -> bytes:
        return _jsonfast.encode(message)

    def decode(self, data: bytes, message_type: type[M]) -> M:
        message = message_type()
        if not data.strip():
            return message  # an empty body is the empty message, as Connect allows
        name = message_type.DESCRIPTOR.full_name
        try:
            value = _loads(data.decode())
        except UnicodeDecodeError:
            raise _invalid(name, "not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise _invalid(name, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        except _DuplicateKey as exc:
            raise _invalid(name, f'the key "{_clip(str(exc))}" appears twice') from None
        except (ValueError, RecursionError):
            raise _invalid(name, "not JSON") from None
        if _jsonfast.parse(value, message, ignore_unknown_fields=self.ignore_unknown_fields):
            return message
        message = message_type()  # json_format decides, errors included
        parse_json(value, message, ignore_unknown_fields=self.ignore_unknown_fields)
        return message


def parse_json(value: Any, message: Message, *, ignore_unknown_fields: bool = False) -> None:
    """Fill ``message`` from ``value``, an already decoded proto3 JSON value.

    Errors are ``RpcError(INVALID_ARGUMENT)`` in one short form that names the field and what was
    wrong, never the parser's own text (which lists every field of the schema and Python
    internals): ``invalid JSON for greeter.v1.HelloRequest: unknown field "nmae"``. Unlike
    ``json_format``, a ``bytes`` value must be valid base64 (json_format drops the characters it
    does not know, so ``"!!!"`` would silently become empty bytes).
    """
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]  # upb's is the same API
    name = descriptor.full_name
    if not isinstance(value, dict) and not name.startswith("google.protobuf."):
        raise _invalid(name, "expected a JSON object")
    bad = _bad_base64(value, descriptor, "")
    if bad is not None:
        raise _invalid(name, f'field "{bad}": not valid base64')
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=ignore_unknown_fields)
    except json_format.ParseError as exc:
        raise _invalid(name, _reason(str(exc), descriptor)) from None
    except (RecursionError, ValueError, TypeError, AttributeError):
        raise _invalid(name, "not a valid message") from None


def _invalid(name: str, reason: str) -> RpcError:
    return RpcError(Code.INVALID_ARGUMENT, f"invalid JSON for {name}: {reason}")


def _clip(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _loads(text: str) -> Any:
    """``json.loads(text, object_pairs_hook=_no_duplicates)`` with one decoder made once."""
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


_NESTED = re.compile(r"Failed to parse (\S+) field: ")
_UNKNOWN = re.compile(r'has no field named "((?:[^"\\]|\\.)*)" at "([^"]*)"')


def _reason(text: str, descriptor: Descriptor) -> str:
    """What json_format's message says, in protobind's words (see :func:`parse_json`)."""
    path: list[str] = []
    while (match := _NESTED.match(text)) is not None:
        path.append(match.group(1))
        text = text[match.end() :]
    unknown = _UNKNOWN.search(text)
    if unknown is not None:
        where = unknown.group(2).partition(".")[2]
        return f'unknown field "{_clip(unknown.group(1))}"' + (f' in "{where}"' if where else "")
    if text.startswith("Failed to load JSON"):
        return "not JSON"
    field = _field_at(descriptor, path)
    shown = ".".join(path) or "?"
    if field is None:
        return f'field "{_clip(shown)}": invalid value'
    if "enum" in text and field.enum_type is not None:
        return f'field "{shown}": not a value of {field.enum_type.full_name}'
    return f'field "{shown}": expected {_expected(field)}'


def _field_at(descriptor: Descriptor, path: list[str]) -> FieldDescriptor | None:
    field: FieldDescriptor | None = None
    current: Descriptor | None = descriptor
    for key in path:
        if current is None:
            return None
        field = _json_fields(current).get(key)
        if field is None:
            return None
        current = field.message_type
    return field


def _expected(field: FieldDescriptor) -> str:
    if _is_map(field):
        return "a JSON object (a map)"
    kind = _KINDS.get(field.type, "a value")
    if field.message_type is not None:
        message = field.message_type.full_name
        kind = _WELL_KNOWN.get(message, f"a JSON object ({message})")
    elif field.enum_type is not None:
        kind = f"a value of {field.enum_type.full_name}"
    return f"a JSON array, each item {kind}" if _is_repeated(field) else kind


_T = FieldDescriptor
_KINDS = {
    _T.TYPE_STRING: "a string",
    _T.TYPE_BYTES: "base64 text",
    _T.TYPE_BOOL: "true or false",
    _T.TYPE_DOUBLE: "a number",
    _T.TYPE_FLOAT: "a number",
    **dict.fromkeys((_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32), "a 32-bit integer"),
    **dict.fromkeys((_T.TYPE_UINT32, _T.TYPE_FIXED32), "an unsigned 32-bit integer"),
    **dict.fromkeys((_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64), "a 64-bit integer (number or string)"),
    **dict.fromkeys((_T.TYPE_UINT64, _T.TYPE_FIXED64), "an unsigned 64-bit integer (number or string)"),
}
_WELL_KNOWN = {
    "google.protobuf.Timestamp": 'an RFC 3339 timestamp such as "2025-01-01T00:00:00Z"',
    "google.protobuf.Duration": 'a duration such as "1.5s"',
    "google.protobuf.FieldMask": 'a field mask such as "a,b.c"',
    "google.protobuf.Struct": "a JSON object",
    "google.protobuf.ListValue": "a JSON array",
    "google.protobuf.StringValue": "a string",
    "google.protobuf.BytesValue": "base64 text",
    "google.protobuf.BoolValue": "true or false",
    "google.protobuf.DoubleValue": "a number",
    "google.protobuf.FloatValue": "a number",
    "google.protobuf.Int32Value": "a 32-bit integer",
    "google.protobuf.UInt32Value": "an unsigned 32-bit integer",
    "google.protobuf.Int64Value": "a 64-bit integer (number or string)",
    "google.protobuf.UInt64Value": "an unsigned 64-bit integer (number or string)",
}


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    return bool(
        _is_repeated(field) and field.message_type is not None and field.message_type.GetOptions().map_entry
    )


@functools.lru_cache(maxsize=1024)
def _json_fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by every key proto3 JSON accepts for them (JSON name and proto name)."""
    fields: dict[str, FieldDescriptor] = {}
    for field in descriptor.fields:
        fields[field.name] = field
        fields[field.json_name] = field
    return fields


_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")


def _is_base64(value: Any) -> bool:
    return isinstance(value, str) and _BASE64.fullmatch(value) is not None and len(value.rstrip("=")) % 4 != 1


def _holds_bytes(field: FieldDescriptor) -> bool:
    return field.type == _T.TYPE_BYTES or (
        field.message_type is not None and field.message_type.full_name == "google.protobuf.BytesValue"
    )


@functools.lru_cache(maxsize=1024)
def _may_hold_bytes(descriptor: Descriptor) -> bool:
    """Whether a bytes value can occur anywhere in this message (recursive types: assumed so). Not in
    a well-known type's JSON: the key "value" of an Any is the packed message's, not Any's bytes."""
    if descriptor.full_name.startswith("google.protobuf."):
        return False
    seen: set[str] = set()
    todo = [descriptor]
    while todo:
        current = todo.pop()
        if current.full_name in seen:
            continue
        seen.add(current.full_name)
        for field in current.fields:
            if _holds_bytes(field):
                return True
            if field.message_type is not None and not field.message_type.full_name.startswith(
                "google.protobuf."
            ):
                todo.append(field.message_type)
    return False


def _bad_base64(value: Any, descriptor: Descriptor, path: str) -> str | None:
    """The path of the first bytes field in ``value`` whose text is not base64, or ``None``."""
    if not isinstance(value, dict) or not _may_hold_bytes(descriptor):
        return None
    fields = _json_fields(descriptor)
    for key, item in value.items():
        field = fields.get(key)
        if field is None or item is None:
            continue
        where = f"{path}.{field.name}" if path else field.name
        items: Any
        if _is_map(field) and field.message_type is not None:
            field = field.message_type.fields_by_name["value"]
            items = item.values() if isinstance(item, dict) else ()
        elif _is_repeated(field):
            items = item if isinstance(item, list) else ()
        else:
            items = (item,)
        for element in items:
            if element is None:
                continue
            if _holds_bytes(field):
                if not _is_base64(element):
                    return where
            elif field.message_type is not None:
                bad = _bad_base64(element, field.message_type, where)
                if bad is not None:
                    return bad
    return None


PROTO = ProtoCodec()
JSON = JsonCodec()
_LENIENT_JSON = JsonCodec(ignore_unknown_fields=True)

#: Codecs by name; transports look codecs up here, so adding one touches no transport.
CODECS: dict[str, Codec] = {PROTO.name: PROTO, JSON.name: JSON}
#: Other spellings of the binary media type that peers send.
_PROTO_ALIASES = frozenset({"application/protobuf", "application/x-protobuf", "application/octet-stream"})


def response_codec(codec: Codec) -> Codec:
    """The codec a client decodes responses with: JSON ignores fields it does not know, so a server
    whose contract gained a response field does not break older clients (binary protobuf keeps
    unknown fields anyway). Servers stay strict about requests."""
    if codec is PROTO:
        return codec  # the common case, without an isinstance check through Codec's protocol class
    if isinstance(codec, JsonCodec) and not codec.ignore_unknown_fields:
        return _LENIENT_JSON
    return codec


def register_codec(codec: Codec) -> None:
    """Make ``codec`` available to every transport under ``codec.name``."""
    CODECS[codec.name] = codec


def codec_named(name: str) -> Codec:
    """The codec called ``name``, or ``ValueError`` listing the known ones."""
    codec = CODECS.get(name.strip().lower())
    if codec is None:
        raise ValueError(f"unknown codec {name!r}; one of {', '.join(sorted(CODECS))}")
    return codec


def codec_for_media_type(media_type: str) -> Codec | None:
    """The codec whose ``content_type`` is ``media_type`` (parameters ignored), or ``None``."""
    media = media_type.partition(";")[0].strip().lower()
    if media in _PROTO_ALIASES:
        return CODECS[PROTO.name]
    for codec in CODECS.values():
        if codec.content_type == media:
            return codec
    return None
