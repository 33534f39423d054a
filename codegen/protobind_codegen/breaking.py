"""``protobind breaking``: the changes in NEW that break clients (or servers) built from OLD.

Rules and their ids follow buf's breaking-change rules; a level is a set of rules (buf's categories):

- ``WIRE``: binary protobuf clients keep working.
- ``WIRE_JSON`` (default): binary and proto3 JSON clients keep working. protobind serves JSON on every
  transport (Connect, REST routes, NATS with ``Content-Type: application/json``), so this is the
  promise "old clients keep working" means.
- ``FILE``: generated code keeps compiling and importing: no renames, no moves between files.

Where protobind's promise is wider than a message encoding, it adds rules (``origin`` "protobind" in
:data:`RULES`): deleted services and methods break callers at every level (buf checks them at FILE
only); ``google.api.http`` routes, bodies and response bodies (old REST clients); the
``(protobind.v1.oneway)`` and ``(protobind.v1.durable)`` method options; and a field or enum value
deleted from a request message even with its name reserved, because protobind's servers reject JSON
that names an unknown field or enum value, reserved or not (only the HTTP server's
``ignore_unknown_fields`` option relaxes that).

Elements are matched by full name, fields by number, enum values by number, files by import name.
Editions features that change encodings (presence, enum openness, UTF-8 checks, JSON format) are
resolved from the element, its enclosing messages and its file. Not checked: options of other
languages' generators (``go_package``, ``java_*``, ``ctype``, ``jstype`` ...), changes inside
extension fields, and ``PACKAGE``-level rules.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from google.protobuf import descriptor_pb2
from google.protobuf.message import Message

from protobind.cli._codegen import FORMATS, LEVELS

from .breaking_sides import LoadedSide, Side, load_sides

__all__ = ["FORMATS", "LEVELS", "RULES", "Finding", "Rule", "breaking_changes", "compare", "render"]

FDP = descriptor_pb2.FieldDescriptorProto
FeatureSet = descriptor_pb2.FeatureSet

# LEVELS (least to most strict; WIRE_JSON is the default) and FORMATS are the command line's
# choices, declared where `protobind breaking --help` finds them without this package.
_F = "FILE"


@dataclass(frozen=True)
class Rule:
    """A breaking-change rule: the levels that include it, where it comes from, what it protects."""

    levels: frozenset[str]
    origin: str  # "buf" (same id and meaning as buf's rule) or "protobind"
    summary: str


def _rule(levels: str, summary: str, origin: str = "buf") -> Rule:
    return Rule(frozenset({"W": "WIRE", "J": "WIRE_JSON", "F": "FILE"}[c] for c in levels), origin, summary)


# The one table of rules: id -> levels (W: WIRE, J: WIRE_JSON, F: FILE) and summary. docs/cli.md
# shows it to users (tests/test_breaking.py checks that every id is there).
RULES: dict[str, Rule] = {
    "FILE_NO_DELETE": _rule("F", "files are not deleted"),
    "FILE_SAME_PACKAGE": _rule("WJF", "files keep their package"),
    "FILE_SAME_SYNTAX": _rule("F", "files keep their syntax or edition"),
    "SERVICE_NO_DELETE": _rule(
        "WJF", "services are not deleted (at FILE: nor moved to another file)", "protobind"
    ),
    "RPC_NO_DELETE": _rule("WJF", "methods are not deleted", "protobind"),
    "RPC_SAME_REQUEST_TYPE": _rule("WJF", "methods keep their request type"),
    "RPC_SAME_RESPONSE_TYPE": _rule("WJF", "methods keep their response type"),
    "RPC_SAME_CLIENT_STREAMING": _rule("WJF", "methods keep client streaming or unary requests"),
    "RPC_SAME_SERVER_STREAMING": _rule("WJF", "methods keep server streaming or unary responses"),
    "RPC_SAME_IDEMPOTENCY_LEVEL": _rule(
        "WJF", "methods keep idempotency_level (HTTP GET needs NO_SIDE_EFFECTS)"
    ),
    "RPC_SAME_ONEWAY": _rule("WJF", "methods keep (protobind.v1.oneway)", "protobind"),
    "RPC_SAME_DURABLE": _rule("WJF", "methods keep (protobind.v1.durable)", "protobind"),
    "RPC_HTTP_ROUTE_NO_DELETE": _rule(
        "JF", "google.api.http routes (verb and path) are not removed", "protobind"
    ),
    "RPC_SAME_HTTP_BODY": _rule("JF", "google.api.http routes keep their body", "protobind"),
    "RPC_SAME_HTTP_RESPONSE_BODY": _rule(
        "JF", "google.api.http routes keep their response_body", "protobind"
    ),
    "MESSAGE_NO_DELETE": _rule("F", "messages are not deleted (nor moved to another file)"),
    "MESSAGE_SAME_JSON_FORMAT": _rule("JF", "messages keep JSON support (features.json_format)"),
    "MESSAGE_SAME_REQUIRED_FIELDS": _rule("WJF", "messages neither gain nor lose required fields"),
    "RESERVED_MESSAGE_NO_DELETE": _rule("WJF", "reserved numbers and names of messages stay reserved"),
    "EXTENSION_MESSAGE_NO_DELETE": _rule("F", "extension ranges are not deleted"),
    "EXTENSION_NO_DELETE": _rule("F", "extensions are not deleted"),
    "ONEOF_NO_DELETE": _rule("F", "oneofs are not deleted"),
    "FIELD_NO_DELETE": _rule("F", "fields are not deleted"),
    "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED": _rule("WJ", "deleted fields have their number reserved"),
    "FIELD_NO_DELETE_UNLESS_NAME_RESERVED": _rule("J", "deleted fields have their name reserved"),
    "FIELD_NO_DELETE_IN_JSON_REQUEST": _rule(
        "J", "no field is deleted from a request message (protobind rejects unknown JSON names)", "protobind"
    ),
    "FIELD_SAME_NAME": _rule("JF", "fields keep their name"),
    "FIELD_SAME_JSON_NAME": _rule("JF", "fields keep their JSON name"),
    "FIELD_SAME_TYPE": _rule("F", "fields keep their type (maps: key and value type)"),
    "FIELD_WIRE_JSON_COMPATIBLE_TYPE": _rule(
        "J", "field types change only within binary+JSON compatible sets"
    ),
    "FIELD_WIRE_COMPATIBLE_TYPE": _rule("W", "field types change only within binary compatible sets"),
    "FIELD_SAME_CARDINALITY": _rule("F", "fields keep optional/implicit/required/repeated/map"),
    "FIELD_WIRE_JSON_COMPATIBLE_CARDINALITY": _rule("J", "cardinality changes only between optional kinds"),
    "FIELD_WIRE_COMPATIBLE_CARDINALITY": _rule(
        "W", "cardinality changes only between optional kinds, or repeated and map"
    ),
    "FIELD_SAME_ONEOF": _rule("WJF", "fields stay in (or out of) the same oneof"),
    "FIELD_SAME_DEFAULT": _rule("WJF", "fields keep their default value"),
    "FIELD_SAME_UTF8_VALIDATION": _rule("F", "string fields keep their UTF-8 validation"),
    "ENUM_NO_DELETE": _rule("F", "enums are not deleted (nor moved to another file)"),
    "ENUM_SAME_TYPE": _rule("F", "enums stay open or closed"),
    "ENUM_SAME_JSON_FORMAT": _rule("JF", "enums keep JSON support (features.json_format)"),
    "ENUM_VALUE_NO_DELETE": _rule("F", "enum values are not deleted"),
    "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED": _rule(
        "WJ", "deleted enum values have their number reserved"
    ),
    "ENUM_VALUE_NO_DELETE_UNLESS_NAME_RESERVED": _rule("J", "deleted enum values have their name reserved"),
    "ENUM_VALUE_NO_DELETE_IN_JSON_REQUEST": _rule(
        "J", "no enum value used by a request is deleted (protobind rejects unknown JSON names)", "protobind"
    ),
    "ENUM_VALUE_SAME_NAME": _rule("JF", "enum values keep their name"),
    "RESERVED_ENUM_NO_DELETE": _rule("WJF", "reserved numbers and names of enums stay reserved"),
}

# Field numbers inside descriptor.proto, for source locations and option lookups.
_FILE_PACKAGE, _FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE, _FILE_EXTENSION, _FILE_SYNTAX = 2, 4, 5, 6, 7, 12
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_EXT_RANGE, _MSG_EXTENSION, _MSG_RESERVED = 2, 3, 4, 5, 6, 9
_ENUM_VALUE, _ENUM_RESERVED = 2, 4
_SERVICE_METHOD = 2
_METHOD_INPUT, _METHOD_OUTPUT, _METHOD_OPTIONS = 2, 3, 4
_METHOD_CLIENT_STREAMING, _METHOD_SERVER_STREAMING = 5, 6
_IDEMPOTENCY_LEVEL = 34
# Method options read by number (see _method_options): google.api.http, and protobind.v1.oneway /
# protobind.v1.durable from idl/protobind/v1/options.proto.
_HTTP, _ONEWAY, _DURABLE = 72295728, 51201, 51202

_COMPOSITE = (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP, FDP.TYPE_ENUM)
_SCALAR_NAMES = {value: name[5:].lower() for name, value in FDP.Type.items()}

# Kinds that read each other's bytes (protobuf's "updating a message type" rules); string may
# become bytes but not back (bytes need not be UTF-8).
_WIRE_GROUPS = [
    {FDP.TYPE_INT32, FDP.TYPE_INT64, FDP.TYPE_UINT32, FDP.TYPE_UINT64, FDP.TYPE_BOOL},
    {FDP.TYPE_SINT32, FDP.TYPE_SINT64},
    {FDP.TYPE_FIXED32, FDP.TYPE_SFIXED32},
    {FDP.TYPE_FIXED64, FDP.TYPE_SFIXED64},
]
# ... and also read each other's proto3 JSON (64-bit integers are JSON strings, 32-bit are numbers).
_WIRE_JSON_GROUPS = [
    {FDP.TYPE_INT32, FDP.TYPE_UINT32},
    {FDP.TYPE_INT64, FDP.TYPE_UINT64},
    {FDP.TYPE_FIXED32, FDP.TYPE_SFIXED32},
    {FDP.TYPE_FIXED64, FDP.TYPE_SFIXED64},
]

_KINDS = {
    (False, False): "unary",
    (False, True): "server streaming",
    (True, False): "client streaming",
    (True, True): "bidi streaming",
}

_FEATURE_ENUMS = {
    "field_presence": FeatureSet.FieldPresence,
    "enum_type": FeatureSet.EnumType,
    "utf8_validation": FeatureSet.Utf8Validation,
    "json_format": FeatureSet.JsonFormat,
}
# Feature values each syntax implies (protobuf's edition defaults for proto2, proto3 and 2023).
_FEATURE_DEFAULTS = {
    "proto2": {
        "field_presence": "EXPLICIT",
        "enum_type": "CLOSED",
        "utf8_validation": "NONE",
        "json_format": "LEGACY_BEST_EFFORT",
    },
    "proto3": {
        "field_presence": "IMPLICIT",
        "enum_type": "OPEN",
        "utf8_validation": "VERIFY",
        "json_format": "ALLOW",
    },
    "editions": {
        "field_presence": "EXPLICIT",
        "enum_type": "OPEN",
        "utf8_validation": "VERIFY",
        "json_format": "ALLOW",
    },
}


@dataclass(frozen=True)
class Finding:
    """One breaking change, located in NEW (or where a deleted element would be)."""

    file: str
    line: int
    column: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.rule}: {self.message}"


class _File:
    def __init__(self, proto: descriptor_pb2.FileDescriptorProto, display: str) -> None:
        self.proto = proto
        self.display = display
        self._spans = {tuple(loc.path): tuple(loc.span) for loc in proto.source_code_info.location}

    def position(self, path: tuple[int, ...]) -> tuple[int, int]:
        """1-based line and column of ``path``, or of its nearest enclosing element."""
        while path:
            span = self._spans.get(path)
            if span:
                return span[0] + 1, span[1] + 1
            path = path[:-1]
        return 1, 1


T = TypeVar("T", bound=Message)


@dataclass(frozen=True)
class _Node(Generic[T]):
    """A named element of an input file, with its source path and enclosing messages."""

    full: str
    proto: T
    file: _File
    path: tuple[int, ...]
    scopes: tuple[descriptor_pb2.DescriptorProto, ...] = ()

    def at(self, *sub: int) -> tuple[_File, tuple[int, ...]]:
        return self.file, (*self.path, *sub)


_Where = tuple[_File, tuple[int, ...]] | str


class _Contract:
    """The elements of one side's input files, by full name; ``types`` covers dependencies too."""

    def __init__(self, side: LoadedSide) -> None:
        self.side = side
        self.files: dict[str, _File] = {}
        self.messages: dict[str, _Node[descriptor_pb2.DescriptorProto]] = {}
        self.enums: dict[str, _Node[descriptor_pb2.EnumDescriptorProto]] = {}
        self.services: dict[str, _Node[descriptor_pb2.ServiceDescriptorProto]] = {}
        self.extensions: dict[str, _Node[descriptor_pb2.FieldDescriptorProto]] = {}
        self.types: dict[str, descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto] = {}
        for proto in side.files:
            file = _File(proto, side.display(proto.name))
            is_input = proto.name in side.inputs
            if is_input:
                self.files[proto.name] = file
            self._walk(file, proto.package, proto.message_type, proto.enum_type, (), (), is_input)
            if is_input:
                for i, service in enumerate(proto.service):
                    full = _join(proto.package, service.name)
                    self.services[full] = _Node(full, service, file, (_FILE_SERVICE, i))
                for i, ext in enumerate(proto.extension):
                    full = _join(proto.package, ext.name)
                    self.extensions[full] = _Node(full, ext, file, (_FILE_EXTENSION, i))

    def _walk(
        self,
        file: _File,
        prefix: str,
        messages: Sequence[descriptor_pb2.DescriptorProto],
        enums: Sequence[descriptor_pb2.EnumDescriptorProto],
        path: tuple[int, ...],
        scopes: tuple[descriptor_pb2.DescriptorProto, ...],
        is_input: bool,
    ) -> None:
        message_tag, enum_tag = (_MSG_NESTED, _MSG_ENUM) if path else (_FILE_MESSAGE, _FILE_ENUM)
        for i, enum in enumerate(enums):
            full = _join(prefix, enum.name)
            self.types[full] = enum
            if is_input:
                self.enums[full] = _Node(full, enum, file, (*path, enum_tag, i), scopes)
        for i, message in enumerate(messages):
            full = _join(prefix, message.name)
            here = (*path, message_tag, i)
            self.types[full] = message
            if is_input:
                self.messages[full] = _Node(full, message, file, here, scopes)
                for j, ext in enumerate(message.extension):
                    ext_full = _join(full, ext.name)
                    self.extensions[ext_full] = _Node(ext_full, ext, file, (*here, _MSG_EXTENSION, j))
            self._walk(file, full, message.nested_type, message.enum_type, here, (*scopes, message), is_input)

    def near(self, full: str, file_name: str) -> _Where:
        """Where to report an element of ``file_name`` that NEW no longer has: its closest enclosing
        message in NEW, else the package statement of its file, else the file's would-be path."""
        parent = full.rpartition(".")[0]
        while parent:
            if parent in self.messages:
                return self.messages[parent].at()
            parent = parent.rpartition(".")[0]
        if file_name in self.files:
            return self.files[file_name], (_FILE_PACKAGE,)
        return self.side.display(file_name)

    @functools.cached_property
    def requests(self) -> tuple[set[str], set[str]]:
        """(messages, enums) that a caller can send: reachable from a method's request type."""
        messages: set[str] = set()
        enums: set[str] = set()
        todo = [m.input_type.lstrip(".") for s in self.services.values() for m in s.proto.method]
        while todo:
            name = todo.pop()
            message = self.types.get(name)
            if name in messages or not isinstance(message, descriptor_pb2.DescriptorProto):
                continue
            messages.add(name)
            for field in message.field:
                if field.type == FDP.TYPE_ENUM:
                    enums.add(field.type_name.lstrip("."))
                elif field.type in _COMPOSITE:
                    todo.append(field.type_name.lstrip("."))
        return messages, enums

    def map_entry(self, field: FDP) -> descriptor_pb2.DescriptorProto | None:
        entry = self.types.get(field.type_name.lstrip("."))
        if field.label == FDP.LABEL_REPEATED and isinstance(entry, descriptor_pb2.DescriptorProto):
            return entry if entry.options.map_entry else None
        return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Report:
    def __init__(self, level: str) -> None:
        self.level = level
        self.findings: list[Finding] = []

    def add(self, rule: str, where: _Where, message: str) -> None:
        if self.level not in RULES[rule].levels:
            return
        if isinstance(where, str):
            self.findings.append(Finding(where, 1, 1, rule, message))
        else:
            file, path = where
            line, column = file.position(path)
            self.findings.append(Finding(file.display, line, column, rule, message))


def compare(old: LoadedSide, new: LoadedSide, level: str = "WIRE_JSON") -> list[Finding]:
    """Every change from ``old`` to ``new`` that breaks at ``level``, ordered by location."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    before, after = _Contract(old), _Contract(new)
    report = _Report(level)
    _compare_files(before, after, report)
    _compare_services(before, after, report)
    _compare_messages(before, after, report)
    _compare_enums(before, after, report)
    for full, ext in before.extensions.items():
        if full not in after.extensions:
            where = after.near(full, ext.file.proto.name)
            report.add("EXTENSION_NO_DELETE", where, f"extension {full} was deleted")
    return sorted(report.findings, key=lambda f: (f.file, f.line, f.column, f.rule, f.message))


def breaking_changes(old: Side, new: Side, level: str = "WIRE_JSON") -> list[Finding]:
    """Compile both sides (each against its own roots) and :func:`compare` them."""
    return compare(*load_sides(old, new), level)


def _syntax(file: descriptor_pb2.FileDescriptorProto) -> str:
    if file.syntax == "editions":
        return f"edition {descriptor_pb2.Edition.Name(file.edition)}"
    return file.syntax or "proto2"


def _compare_files(before: _Contract, after: _Contract, report: _Report) -> None:
    for name, file in before.files.items():
        new = after.files.get(name)
        if new is None:
            report.add("FILE_NO_DELETE", after.side.display(name), f"file {name} was deleted")
            continue
        if file.proto.package != new.proto.package:
            report.add(
                "FILE_SAME_PACKAGE",
                (new, (_FILE_PACKAGE,)),
                f"file {name} changed package from {file.proto.package!r} to {new.proto.package!r}",
            )
        if _syntax(file.proto) != _syntax(new.proto):
            report.add(
                "FILE_SAME_SYNTAX",
                (new, (_FILE_SYNTAX,)),
                f"file {name} changed from {_syntax(file.proto)} to {_syntax(new.proto)}",
            )


def _moved(report: _Report, rule: str, kind: str, old: _Node[T], new: _Node[T]) -> None:
    """At FILE level an element that changed files breaks generated imports (``from x_pb2 import``)."""
    if report.level == _F and old.file.proto.name != new.file.proto.name:
        report.add(
            rule, new.at(), f"{kind} {old.full} moved from {old.file.proto.name} to {new.file.proto.name}"
        )


def _compare_services(before: _Contract, after: _Contract, report: _Report) -> None:
    for full, service in before.services.items():
        new = after.services.get(full)
        if new is None:
            where = after.near(full, service.file.proto.name)
            report.add("SERVICE_NO_DELETE", where, f"service {full} was deleted: every call to it fails")
            continue
        _moved(report, "SERVICE_NO_DELETE", "service", service, new)
        methods = {m.name: (j, m) for j, m in enumerate(new.proto.method)}
        for method in service.proto.method:
            name = f"{full}/{method.name}"
            if method.name not in methods:
                report.add(
                    "RPC_NO_DELETE", new.at(), f"RPC {name} was deleted: old clients get UNIMPLEMENTED"
                )
                continue
            j, changed = methods[method.name]
            _compare_method(name, method, changed, new.at(_SERVICE_METHOD, j), report)


def _compare_method(
    name: str,
    old: descriptor_pb2.MethodDescriptorProto,
    new: descriptor_pb2.MethodDescriptorProto,
    where: tuple[_File, tuple[int, ...]],
    report: _Report,
) -> None:
    file, path = where
    for rule, tag, what, before, after in (
        ("RPC_SAME_REQUEST_TYPE", _METHOD_INPUT, "request", old.input_type, new.input_type),
        ("RPC_SAME_RESPONSE_TYPE", _METHOD_OUTPUT, "response", old.output_type, new.output_type),
    ):
        if before != after:
            report.add(
                rule, (file, (*path, tag)), f"RPC {name} changed {what} type from {before[1:]} to {after[1:]}"
            )
    old_kind = _KINDS[old.client_streaming, old.server_streaming]
    new_kind = _KINDS[new.client_streaming, new.server_streaming]
    impact = "old clients fail on every transport"
    if new.client_streaming and new.server_streaming:
        impact += "; bidi streaming is not served over HTTP/1.1 (UNIMPLEMENTED)"
    for rule, tag, was, now in (
        ("RPC_SAME_CLIENT_STREAMING", _METHOD_CLIENT_STREAMING, old.client_streaming, new.client_streaming),
        ("RPC_SAME_SERVER_STREAMING", _METHOD_SERVER_STREAMING, old.server_streaming, new.server_streaming),
    ):
        if was != now:
            report.add(
                rule, (file, (*path, tag)), f"RPC {name} changed from {old_kind} to {new_kind}: {impact}"
            )
    before_level, after_level = old.options.idempotency_level, new.options.idempotency_level
    if before_level != after_level:
        names = descriptor_pb2.MethodOptions.IdempotencyLevel.Name
        report.add(
            "RPC_SAME_IDEMPOTENCY_LEVEL",
            (file, (*path, _METHOD_OPTIONS, _IDEMPOTENCY_LEVEL)),
            f"RPC {name} changed idempotency_level from {names(before_level)} to {names(after_level)}"
            + (
                ": old HTTP clients' GET requests are refused"
                if before_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
                else ""
            ),
        )
    before, after = _method_options(old.options), _method_options(new.options)
    for option, number, impact_on, impact_off in (
        (
            "oneway",
            _ONEWAY,
            "old clients wait for a reply the method no longer sends",
            "old clients send without waiting, so replies and errors are lost",
        ),
        (
            "durable",
            _DURABLE,
            "old NATS clients' calls bypass the stream (not stored, not redelivered)",
            "old NATS clients publish into a stream the method no longer consumes",
        ),
    ):
        was, now = getattr(before, option), getattr(after, option)
        if was != now:
            report.add(
                f"RPC_SAME_{option.upper()}",
                (file, (*path, _METHOD_OPTIONS, number)),
                f"RPC {name} changed (protobind.v1.{option}) from {str(was).lower()} to {str(now).lower()}: "
                + (impact_on if now else impact_off),
            )
    _compare_http(name, before, after, (file, (*path, _METHOD_OPTIONS, _HTTP)), report)


def _compare_http(
    name: str,
    old: Any,
    new: Any,
    where: tuple[_File, tuple[int, ...]],
    report: _Report,
) -> None:
    after = _http_routes(new)
    for route, (body, response_body) in _http_routes(old).items():
        verb, template = route
        if route not in after:
            report.add(
                "RPC_HTTP_ROUTE_NO_DELETE",
                where,
                f"RPC {name} no longer serves {verb} {template}: old REST clients get 404",
            )
            continue
        new_body, new_response_body = after[route]
        if body != new_body:
            report.add(
                "RPC_SAME_HTTP_BODY",
                where,
                f"RPC {name} route {verb} {template} changed body from {body!r} to {new_body!r}",
            )
        if response_body != new_response_body:
            report.add(
                "RPC_SAME_HTTP_RESPONSE_BODY",
                where,
                f"RPC {name} route {verb} {template} changed response_body from "
                f"{response_body!r} to {new_response_body!r}",
            )


def _http_routes(options: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """(verb, path template) -> (body, response_body) of a method's google.api.http bindings."""
    routes = {}
    if options.HasField("http"):
        for rule in (options.http, *options.http.additional_bindings):
            pattern = rule.WhichOneof("pattern")
            if pattern == "custom":
                routes[rule.custom.kind.upper(), rule.custom.path] = (rule.body, rule.response_body)
            elif pattern is not None:
                routes[pattern.upper(), getattr(rule, pattern)] = (rule.body, rule.response_body)
    return routes


@functools.cache
def _options_probe() -> type[Message]:
    """A message that declares just the method options compared here, so that parsing serialized
    ``MethodOptions`` with it reads them whether or not their Python modules are imported."""
    from google.api import http_pb2
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    http = descriptor_pb2.FileDescriptorProto.FromString(http_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(http)
    probe = descriptor_pb2.FileDescriptorProto(name="protobind/breaking/probe.proto", dependency=[http.name])
    message = probe.message_type.add(name="MethodOptionsProbe")
    message.field.add(name="http", number=_HTTP, type=FDP.TYPE_MESSAGE, type_name=".google.api.HttpRule")
    message.field.add(name="oneway", number=_ONEWAY, type=FDP.TYPE_BOOL)
    message.field.add(name="durable", number=_DURABLE, type=FDP.TYPE_BOOL)
    for field in message.field:
        field.label = FDP.LABEL_OPTIONAL
    pool.Add(probe)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("MethodOptionsProbe"))


def _method_options(options: descriptor_pb2.MethodOptions) -> Any:
    return _options_probe().FromString(options.SerializeToString())


def _feature(file: descriptor_pb2.FileDescriptorProto, chain: Sequence[Message], name: str) -> str:
    """Resolved value (its name) of editions feature ``name``: innermost options first, then the
    file, then the default of the file's syntax."""
    for options in (*chain, file.options):
        features = getattr(options, "features", None)
        if features is not None and features.HasField(name):
            return _FEATURE_ENUMS[name].Name(getattr(features, name))
    return _FEATURE_DEFAULTS[file.syntax if file.syntax in _FEATURE_DEFAULTS else "proto2"][name]


def _scope_chain(
    node: _Node[descriptor_pb2.DescriptorProto] | _Node[descriptor_pb2.EnumDescriptorProto], *inner: Message
) -> list[Message]:
    return [*inner, node.proto.options, *(m.options for m in reversed(node.scopes))]


def _covered(ranges: Sequence[tuple[int, int]], by: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The half-open ``ranges`` not wholly inside the union of ``by``."""
    missing = []
    for start, end in ranges:
        reach = start
        for lo, hi in sorted(by):
            if lo > reach:
                break
            reach = max(reach, hi)
        if reach < end:
            missing.append((start, end))
    return missing


def _range_text(start: int, end: int) -> str:
    return str(start) if end == start + 1 else f"{start} to {end - 1}"


def _compare_messages(before: _Contract, after: _Contract, report: _Report) -> None:
    requests, _ = before.requests
    for full, message in before.messages.items():
        if message.proto.options.map_entry:
            continue  # a map's entry is compared as the map field
        new = after.messages.get(full)
        if new is None:
            report.add(
                "MESSAGE_NO_DELETE", after.near(full, message.file.proto.name), f"message {full} was deleted"
            )
            continue
        _moved(report, "MESSAGE_NO_DELETE", "message", message, new)
        _compare_message(before, after, message, new, full in requests, report)


def _compare_message(
    before: _Contract,
    after: _Contract,
    old: _Node[descriptor_pb2.DescriptorProto],
    new: _Node[descriptor_pb2.DescriptorProto],
    is_request: bool,
    report: _Report,
) -> None:
    full = old.full
    if _feature(old.file.proto, _scope_chain(old), "json_format") == "ALLOW" and (
        _feature(new.file.proto, _scope_chain(new), "json_format") != "ALLOW"
    ):
        report.add("MESSAGE_SAME_JSON_FORMAT", new.at(), f"message {full} no longer supports JSON")
    reserved = [(r.start, r.end) for r in new.proto.reserved_range]
    for start, end in _covered([(r.start, r.end) for r in old.proto.reserved_range], reserved):
        report.add(
            "RESERVED_MESSAGE_NO_DELETE",
            new.at(_MSG_RESERVED),
            f"message {full} no longer reserves {_range_text(start, end)}",
        )
    for name in sorted(set(old.proto.reserved_name) - set(new.proto.reserved_name)):
        report.add(
            "RESERVED_MESSAGE_NO_DELETE", new.at(), f"message {full} no longer reserves the name {name!r}"
        )
    ext_ranges = [(r.start, r.end) for r in new.proto.extension_range]
    for start, end in _covered([(r.start, r.end) for r in old.proto.extension_range], ext_ranges):
        report.add(
            "EXTENSION_MESSAGE_NO_DELETE",
            new.at(_MSG_EXT_RANGE),
            f"message {full} deleted extension range {_range_text(start, end)}",
        )
    old_oneofs = {o for f in old.proto.field if (o := _oneof(f, old.proto)) is not None}
    for oneof in sorted(old_oneofs - {o.name for o in new.proto.oneof_decl}):
        report.add("ONEOF_NO_DELETE", new.at(), f"oneof {oneof} of message {full} was deleted")

    fields = {f.number: (k, f) for k, f in enumerate(new.proto.field)}
    by_name = {f.name: f.number for f in new.proto.field}
    old_required = {f.number: f.name for f in old.proto.field if _cardinality(before, old, f) == "required"}
    new_required = {
        f.number: k for k, f in enumerate(new.proto.field) if _cardinality(after, new, f) == "required"
    }
    for number in sorted(set(old_required) - set(new_required)):
        report.add(
            "MESSAGE_SAME_REQUIRED_FIELDS",
            new.at(),
            f"message {full} lost required field {number} {old_required[number]!r}: old receivers require it",
        )
    for number in sorted(set(new_required) - set(old_required)):
        k = new_required[number]
        report.add(
            "MESSAGE_SAME_REQUIRED_FIELDS",
            new.at(_MSG_FIELD, k),
            f"message {full} gained required field {number} {new.proto.field[k].name!r}: old senders omit it",
        )
    for field in old.proto.field:
        label = f"field {field.number} {field.name!r} of message {full}"
        if field.number in fields:
            k, changed = fields[field.number]
            _compare_field(before, after, old, new, field, changed, new.at(_MSG_FIELD, k), report)
            continue
        moved = f" (now number {by_name[field.name]})" if field.name in by_name else ""
        _deleted(
            report,
            "FIELD",
            new.at(),
            f"{label} was deleted{moved}",
            field.number,
            number_reserved=not _covered([(field.number, field.number + 1)], reserved),
            names_reserved=field.name in new.proto.reserved_name,
            is_request=is_request,
        )


def _deleted(
    report: _Report,
    kind: str,
    where: _Where,
    what: str,
    number: int,
    *,
    number_reserved: bool,
    names_reserved: bool,
    is_request: bool,
) -> None:
    """The ``{kind}_NO_DELETE*`` findings for a deleted field (kind ``FIELD``) or enum value."""
    report.add(f"{kind}_NO_DELETE", where, what)
    if not number_reserved:
        report.add(
            f"{kind}_NO_DELETE_UNLESS_NUMBER_RESERVED", where, f"{what} without reserving the number {number}"
        )
    if not names_reserved:
        report.add(
            f"{kind}_NO_DELETE_UNLESS_NAME_RESERVED",
            where,
            f"{what} without reserving its name: old JSON clients that send it are rejected",
        )
    elif number_reserved and is_request:
        report.add(
            f"{kind}_NO_DELETE_IN_JSON_REQUEST",
            where,
            f"{what}, though requests carry it: protobind servers reject old JSON clients that still send "
            "it, reserved or not",
        )


def _oneof(field: FDP, message: descriptor_pb2.DescriptorProto) -> str | None:
    """The real (non-synthetic) oneof ``field`` belongs to."""
    if not field.HasField("oneof_index") or field.proto3_optional:
        return None
    return message.oneof_decl[field.oneof_index].name


def _cardinality(contract: _Contract, message: _Node[descriptor_pb2.DescriptorProto], field: FDP) -> str:
    if field.label == FDP.LABEL_REPEATED:
        return "map" if contract.map_entry(field) is not None else "repeated"
    presence = _feature(message.file.proto, _scope_chain(message, field.options), "field_presence")
    if field.label == FDP.LABEL_REQUIRED or presence == "LEGACY_REQUIRED":
        return "required"
    explicit = (
        field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP)
        or field.HasField("oneof_index")
        or presence == "EXPLICIT"
    )
    return "optional with explicit presence" if explicit else "optional with implicit presence"


_CARDINALITY_GROUPS = {
    "FIELD_SAME_CARDINALITY": {},
    "FIELD_WIRE_JSON_COMPATIBLE_CARDINALITY": {
        "optional with implicit presence": "optional with explicit presence"
    },
    "FIELD_WIRE_COMPATIBLE_CARDINALITY": {
        "optional with implicit presence": "optional with explicit presence",
        "map": "repeated",
    },
}


def _type_text(contract: _Contract, field: FDP) -> str:
    entry = contract.map_entry(field)
    if entry is not None:
        key, value = entry.field
        return f"map<{_type_text(contract, key)}, {_type_text(contract, value)}>"
    return field.type_name.lstrip(".") if field.type in _COMPOSITE else _SCALAR_NAMES[field.type]


def _type_parts(contract: _Contract, field: FDP) -> list[FDP]:
    """What a field's type is made of: the field itself, or a map's key and value."""
    entry = contract.map_entry(field)
    return list(entry.field) if entry is not None and len(entry.field) == 2 else [field]


def _same_enum(before: _Contract, after: _Contract, old_name: str, new_name: str) -> bool:
    """Whether a renamed enum type reads the same: same short name and every old value kept."""
    old, new = before.types.get(old_name), after.types.get(new_name)
    if not isinstance(old, descriptor_pb2.EnumDescriptorProto) or not isinstance(
        new, descriptor_pb2.EnumDescriptorProto
    ):
        return False
    values = {(v.name, v.number) for v in new.value}
    return old.name == new.name and all((v.name, v.number) in values for v in old.value)


def _type_breaks(before: _Contract, after: _Contract, old: FDP, new: FDP, rule: str) -> bool:
    if rule == "FIELD_SAME_TYPE":
        return old.type != new.type or (old.type in _COMPOSITE and old.type_name != new.type_name)
    if rule == "FIELD_WIRE_COMPATIBLE_TYPE" and (old.type, new.type) == (FDP.TYPE_STRING, FDP.TYPE_BYTES):
        return False
    if old.type != new.type:
        groups = _WIRE_GROUPS if rule == "FIELD_WIRE_COMPATIBLE_TYPE" else _WIRE_JSON_GROUPS
        return not any(old.type in g and new.type in g for g in groups)
    if old.type_name == new.type_name:
        return False
    if old.type == FDP.TYPE_ENUM:
        return not _same_enum(before, after, old.type_name.lstrip("."), new.type_name.lstrip("."))
    return True


def _compare_field(
    before: _Contract,
    after: _Contract,
    old_message: _Node[descriptor_pb2.DescriptorProto],
    new_message: _Node[descriptor_pb2.DescriptorProto],
    old: FDP,
    new: FDP,
    where: tuple[_File, tuple[int, ...]],
    report: _Report,
) -> None:
    label = f"field {old.number} {old.name!r} of message {old_message.full}"
    if old.name != new.name:
        report.add("FIELD_SAME_NAME", where, f"{label} was renamed to {new.name!r}: breaks JSON clients")
    if _json_name(old) != _json_name(new):
        report.add(
            "FIELD_SAME_JSON_NAME",
            where,
            f"{label} changed JSON name from {_json_name(old)!r} to {_json_name(new)!r}",
        )
    old_parts, new_parts = _type_parts(before, old), _type_parts(after, new)
    if len(old_parts) != len(new_parts):
        old_parts, new_parts = [old], [new]
    change = f"{label} changed type from {_type_text(before, old)} to {_type_text(after, new)}"
    for rule in ("FIELD_SAME_TYPE", "FIELD_WIRE_JSON_COMPATIBLE_TYPE", "FIELD_WIRE_COMPATIBLE_TYPE"):
        if report.level in RULES[rule].levels and any(
            _type_breaks(before, after, a, b, rule) for a, b in zip(old_parts, new_parts, strict=True)
        ):
            report.add(rule, where, change)
    old_card, new_card = _cardinality(before, old_message, old), _cardinality(after, new_message, new)
    for rule, groups in _CARDINALITY_GROUPS.items():
        if groups.get(old_card, old_card) != groups.get(new_card, new_card):
            report.add(rule, where, f"{label} changed from {old_card} to {new_card}")
    old_oneof, new_oneof = _oneof(old, old_message.proto), _oneof(new, new_message.proto)
    if old_oneof != new_oneof:
        report.add(
            "FIELD_SAME_ONEOF",
            where,
            f"{label} moved from {_oneof_text(old_oneof)} to {_oneof_text(new_oneof)}",
        )
    old_default, new_default = _default(before, old), _default(after, new)
    if old_default is not None and new_default is not None and old_default != new_default:
        report.add(
            "FIELD_SAME_DEFAULT",
            where,
            f"{label} changed default from {old.default_value or '(implicit)'} to "
            f"{new.default_value or '(implicit)'}",
        )
    if old.type == new.type == FDP.TYPE_STRING:
        old_check = _feature(
            old_message.file.proto, _scope_chain(old_message, old.options), "utf8_validation"
        )
        new_check = _feature(
            new_message.file.proto, _scope_chain(new_message, new.options), "utf8_validation"
        )
        if old_check != new_check:
            report.add(
                "FIELD_SAME_UTF8_VALIDATION",
                where,
                f"{label} changed UTF-8 validation from {old_check} to {new_check}",
            )


def _oneof_text(oneof: str | None) -> str:
    return f"oneof {oneof}" if oneof else "no oneof"


def _json_name(field: FDP) -> str:
    if field.json_name:
        return field.json_name
    head, *rest = field.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _default(contract: _Contract, field: FDP) -> object | None:
    """A comparable default value (explicit or implied), or None when the field cannot have one."""
    if field.label == FDP.LABEL_REPEATED or field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP):
        return None
    text = field.default_value if field.HasField("default_value") else None
    if field.type == FDP.TYPE_ENUM:
        enum = contract.types.get(field.type_name.lstrip("."))
        first = (
            enum.value[0].name if isinstance(enum, descriptor_pb2.EnumDescriptorProto) and enum.value else ""
        )
        return ("enum", text if text is not None else first)
    if field.type in (FDP.TYPE_STRING, FDP.TYPE_BYTES):
        return ("text", text or "")
    if field.type == FDP.TYPE_BOOL:
        return ("number", 1.0 if text == "true" else 0.0)
    value = float(text) if text else 0.0
    return ("number", "nan" if math.isnan(value) else value)


def _compare_enums(before: _Contract, after: _Contract, report: _Report) -> None:
    _, request_enums = before.requests
    for full, enum in before.enums.items():
        new = after.enums.get(full)
        if new is None:
            report.add("ENUM_NO_DELETE", after.near(full, enum.file.proto.name), f"enum {full} was deleted")
            continue
        _moved(report, "ENUM_NO_DELETE", "enum", enum, new)
        old_type, new_type = (_feature(e.file.proto, _scope_chain(e), "enum_type") for e in (enum, new))
        if old_type != new_type:
            report.add("ENUM_SAME_TYPE", new.at(), f"enum {full} changed from {old_type} to {new_type}")
        old_json, new_json = (_feature(e.file.proto, _scope_chain(e), "json_format") for e in (enum, new))
        if old_json == "ALLOW" and new_json != "ALLOW":
            report.add("ENUM_SAME_JSON_FORMAT", new.at(), f"enum {full} no longer supports JSON")
        _compare_enum_values(enum, new, full in request_enums, report)


def _compare_enum_values(
    old: _Node[descriptor_pb2.EnumDescriptorProto],
    new: _Node[descriptor_pb2.EnumDescriptorProto],
    is_request: bool,
    report: _Report,
) -> None:
    full = old.full
    reserved = [(r.start, r.end + 1) for r in new.proto.reserved_range]  # enum ranges include their end
    for start, end in _covered([(r.start, r.end + 1) for r in old.proto.reserved_range], reserved):
        report.add(
            "RESERVED_ENUM_NO_DELETE",
            new.at(_ENUM_RESERVED),
            f"enum {full} no longer reserves {_range_text(start, end)}",
        )
    for name in sorted(set(old.proto.reserved_name) - set(new.proto.reserved_name)):
        report.add("RESERVED_ENUM_NO_DELETE", new.at(), f"enum {full} no longer reserves the name {name!r}")
    old_names: dict[int, list[str]] = {}
    for value in old.proto.value:
        old_names.setdefault(value.number, []).append(value.name)
    new_values: dict[int, list[tuple[int, str]]] = {}
    for k, value in enumerate(new.proto.value):
        new_values.setdefault(value.number, []).append((k, value.name))
    for number, names in old_names.items():
        label = f"enum value {' / '.join(names)} (= {number}) of {full}"
        if number in new_values:
            for k, name in new_values[number]:
                if name not in names:
                    report.add(
                        "ENUM_VALUE_SAME_NAME",
                        new.at(_ENUM_VALUE, k),
                        f"{label} was renamed to {name}: breaks JSON clients",
                    )
            continue
        _deleted(
            report,
            "ENUM_VALUE",
            new.at(),
            f"{label} was deleted",
            number,
            number_reserved=not _covered([(number, number + 1)], reserved),
            names_reserved=all(n in new.proto.reserved_name for n in names),
            is_request=is_request,
        )


def render(findings: Sequence[Finding], fmt: str, level: str) -> str:
    """The report in ``fmt``: ``text`` (``file:line:col: RULE: message``), ``json`` or ``github``
    (workflow commands that annotate a pull request)."""
    if fmt == "json":
        return json.dumps({"level": level, "breaking": [asdict(f) for f in findings]}, indent=2)
    if not findings:
        return f"no breaking changes (level {level})"
    if fmt == "github":
        return "\n".join(
            f"::error file={_gh(f.file, True)},line={f.line},col={f.column},title={f.rule}::{_gh(f.message)}"
            for f in findings
        )
    return "\n".join(str(f) for f in findings)


def _gh(text: str, is_property: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if is_property else text
