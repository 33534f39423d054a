"""Proto3 JSON as JSON Schema: the schema of each message's JSON form, for the documents that
describe a contract (the OpenAPI document of the HTTP binding, the AsyncAPI document of the NATS
binding). Each message and enum is one schema under ``#/components/schemas/{full name}``, so
recursive messages work; comments become descriptions when the descriptors carry source info.
The rules are listed in docs/protocols.md ("OpenAPI").
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from ._errors import Code

__all__ = [
    "SCHEMAS",
    "WELL_KNOWN",
    "Comments",
    "Schemas",
    "connect_error_schema",
    "decode_comments",
    "encode_comments",
    "enum_of",
    "is_map",
    "is_repeated",
    "message_of",
    "scalar_schema",
]

_T = FieldDescriptor
#: Where the schemas live in both documents.
SCHEMAS = "#/components/schemas/"

_INT32 = {_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32}
_UINT32 = {_T.TYPE_UINT32, _T.TYPE_FIXED32}
_INT64 = {_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64}
_UINT64 = {_T.TYPE_UINT64, _T.TYPE_FIXED64}


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message field."""
    message = field.message_type
    if message is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return message


def enum_of(field: FieldDescriptor) -> EnumDescriptor:
    """The enum type of an enum field."""
    enum = field.enum_type
    if enum is None:
        raise TypeError(f"{field.full_name} is not an enum field")
    return enum


def is_map(field: FieldDescriptor) -> bool:
    """Whether ``field`` is a ``map<K, V>``."""
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.is_repeated
        and message_of(field).GetOptions().map_entry
    )


def is_repeated(field: FieldDescriptor) -> bool:
    """Whether ``field`` is repeated (maps included)."""
    return bool(field.is_repeated)


def scalar_schema(kind: int, *, nullable: bool = False) -> dict[str, Any]:
    """The proto3 JSON schema of a scalar type (``nullable`` adds ``null``, for the wrappers)."""
    schema: dict[str, Any]
    if kind in _INT32:
        schema = {"type": "integer", "format": "int32"}
    elif kind in _UINT32:
        schema = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
    elif kind in _INT64:
        schema = {"type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$"}
    elif kind in _UINT64:
        schema = {"type": ["string", "integer"], "format": "uint64", "pattern": "^[0-9]+$"}
    elif kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        schema = {
            "type": ["number", "string"],
            "format": "double" if kind == _T.TYPE_DOUBLE else "float",
            "description": "A JSON number; NaN, Infinity and -Infinity are strings.",
        }
    elif kind == _T.TYPE_BOOL:
        schema = {"type": "boolean"}
    elif kind == _T.TYPE_BYTES:
        schema = {"type": "string", "format": "byte", "contentEncoding": "base64"}
    else:
        schema = {"type": "string"}
    if nullable:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        schema["type"] = [*types, "null"]
    return schema


def _wrapper(kind: int, what: str) -> dict[str, Any]:
    schema = scalar_schema(kind, nullable=True)
    schema["description"] = f"A {what}, or null (a google.protobuf wrapper)."
    return schema


#: The proto3 JSON forms of the well-known types.
WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "An RFC 3339 timestamp, e.g. 2024-01-02T03:04:05.678Z.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        "description": "Seconds with up to nine fractional digits and an 's' suffix, e.g. 1.5s.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamelCase, e.g. title,author.name.",
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "description": "A message of any type: its JSON form plus '@type' (the type URL); "
        "well-known types put their JSON form under 'value'.",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": _wrapper(_T.TYPE_DOUBLE, "double"),
    "google.protobuf.FloatValue": _wrapper(_T.TYPE_FLOAT, "float"),
    "google.protobuf.Int64Value": _wrapper(_T.TYPE_INT64, "64-bit integer (a JSON string)"),
    "google.protobuf.UInt64Value": _wrapper(_T.TYPE_UINT64, "64-bit unsigned integer (a JSON string)"),
    "google.protobuf.Int32Value": _wrapper(_T.TYPE_INT32, "32-bit integer"),
    "google.protobuf.UInt32Value": _wrapper(_T.TYPE_UINT32, "32-bit unsigned integer"),
    "google.protobuf.BoolValue": _wrapper(_T.TYPE_BOOL, "boolean"),
    "google.protobuf.StringValue": _wrapper(_T.TYPE_STRING, "string"),
    "google.protobuf.BytesValue": _wrapper(_T.TYPE_BYTES, "base64 string"),
}


def encode_comments(text: Mapping[str, str]) -> str:
    """``text`` (element -> comment, :attr:`Comments.text`) as generated code carries it
    (:attr:`protobind.ServiceInfo.comments`): JSON in base64, so the literal has no quotes or
    escapes a formatter would rewrite."""
    return base64.b64encode(json.dumps(dict(sorted(text.items())), ensure_ascii=False).encode()).decode()


def decode_comments(encoded: str) -> dict[str, str]:
    """The inverse of :func:`encode_comments` (``{}`` for ``""``)."""
    if not encoded:
        return {}
    text: dict[str, str] = json.loads(base64.b64decode(encoded))
    return text


class Comments:
    """Leading comments by element (``full name`` or ``service/method``), from source info and
    from what generated code carries (``encoded``: :func:`encode_comments` texts, so a running
    server's documents describe its API as ``protobind openapi``/``asyncapi`` do)."""

    def __init__(
        self, files: Iterable[descriptor_pb2.FileDescriptorProto], encoded: Iterable[str] = ()
    ) -> None:
        self.text: dict[str, str] = {}
        for text in encoded:
            self.text.update(decode_comments(text))
        for file in files:
            locations = {
                tuple(loc.path): loc.leading_comments.strip()
                for loc in file.source_code_info.location
                if loc.leading_comments.strip()
            }
            if locations:
                self._walk(file, locations)

    def _walk(self, file: descriptor_pb2.FileDescriptorProto, locations: dict[tuple[int, ...], str]) -> None:
        prefix = file.package + "." if file.package else ""

        def message(proto: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
            name = scope + proto.name
            self._put(name, locations.get(path))
            for i, field in enumerate(proto.field):
                self._put(f"{name}.{field.name}", locations.get((*path, 2, i)))
            for i, nested in enumerate(proto.nested_type):
                message(nested, (*path, 3, i), name + ".")
            for i, enum in enumerate(proto.enum_type):
                self._put(f"{name}.{enum.name}", locations.get((*path, 4, i)))
            for i, oneof in enumerate(proto.oneof_decl):
                self._put(f"{name}.{oneof.name}", locations.get((*path, 8, i)))

        for i, msg in enumerate(file.message_type):
            message(msg, (4, i), prefix)
        for i, enum in enumerate(file.enum_type):
            self._put(prefix + enum.name, locations.get((5, i)))
        for i, service in enumerate(file.service):
            self._put(prefix + service.name, locations.get((6, i)))
            for j, method in enumerate(service.method):
                self._put(f"{prefix}{service.name}/{method.name}", locations.get((6, i, 2, j)))

    def _put(self, key: str, text: str | None) -> None:
        if text:
            self.text[key] = text

    def get(self, key: str) -> str | None:
        """The comment of ``key`` (a full name, or ``package.Service/Method``), if any."""
        return self.text.get(key)


class Schemas:
    """Builds ``components/schemas``; each message and enum once, recursion through ``$ref``."""

    def __init__(self, comments: Comments) -> None:
        self.comments = comments
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, descriptor: Descriptor | EnumDescriptor) -> dict[str, Any]:
        """A ``$ref`` to the schema of a message or enum, adding it (and what it uses) on first use."""
        name = descriptor.full_name
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: a recursive reference finds the name taken
            if isinstance(descriptor, EnumDescriptor):
                self.schemas[name] = self._enum(descriptor)
            else:
                self.schemas[name] = self._message(descriptor)
        return {"$ref": SCHEMAS + name}

    def _enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        schema: dict[str, Any] = {"type": "string", "enum": [value.name for value in enum.values]}
        text = self.comments.get(enum.full_name)
        note = "Written as the value's name; the number is accepted on input too."
        schema["description"] = f"{text}\n\n{note}" if text else note
        return schema

    def _message(self, message: Descriptor) -> dict[str, Any]:
        if message.full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[message.full_name])
        schema: dict[str, Any] = {"type": "object"}
        text = self.comments.get(message.full_name)
        properties: dict[str, Any] = {}
        for field in message.fields:
            properties[field.json_name] = self.field(field)
        if properties:
            schema["properties"] = properties
        notes = []
        constraints = []
        for oneof, members in _real_oneofs(message):
            names = [field.json_name for field in members]
            listed = ", ".join(f"`{n}`" for n in names)
            about = self.comments.get(f"{message.full_name}.{oneof}")
            notes.append(f"At most one of {listed} is set (oneof `{oneof}`{': ' + about if about else ''}).")
            present = [{"required": [n]} for n in names]
            constraints.append({"oneOf": [*present, {"not": {"anyOf": present}}]})
        if constraints:
            schema["allOf"] = constraints
        description = "\n\n".join(part for part in (text, *notes) if part)
        if description:
            schema["description"] = description
        return schema

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of a field as it appears in its message's JSON."""
        if is_map(field):
            value = message_of(field).fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.single(value)}
        elif is_repeated(field):
            schema = {"type": "array", "items": self.single(field)}
        else:
            schema = self.single(field)
        text = self.comments.get(field.full_name)
        if text:
            schema = {**schema, "description": text}
        return schema

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of ``field`` (an element, for repeated fields)."""
        if field.type in (_T.TYPE_MESSAGE, _T.TYPE_GROUP):
            return self.ref(message_of(field))
        if field.type == _T.TYPE_ENUM:
            return self.ref(enum_of(field))
        return scalar_schema(field.type)


def _real_oneofs(message: Descriptor) -> list[tuple[str, list[FieldDescriptor]]]:
    """(name, members) of each oneof but the synthetic ones of proto3 ``optional`` fields."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    synthetic = {f.name for f in proto.field if f.proto3_optional}
    groups: list[tuple[str, list[FieldDescriptor]]] = []
    for oneof in message.oneofs:
        members = list(oneof.fields)
        if len(members) == 1 and members[0].name in synthetic:
            continue
        groups.append((oneof.name, members))
    return groups


def connect_error_schema() -> dict[str, Any]:
    """The Connect error object (the JSON form of an error on HTTP, and on NATS for JSON calls)."""
    codes = [code.connect_name for code in Code if code is not Code.OK]
    return {
        "type": "object",
        "description": "A Connect error. The HTTP status follows the code (as Connect and "
        "gRPC-Gateway map gRPC codes).",
        "properties": {
            "code": {"type": "string", "enum": codes},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {
                            "type": "string",
                            "description": "Full name of the detail message, e.g. google.rpc.ErrorInfo.",
                        },
                        "value": {
                            "type": "string",
                            "contentEncoding": "base64",
                            "description": "The detail in binary protobuf, base64 without padding.",
                        },
                        "debug": {"description": "The detail in JSON form, when the server adds it."},
                    },
                    "required": ["type", "value"],
                },
            },
        },
        "required": ["code"],
    }
