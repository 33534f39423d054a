"""``google.api.http`` rules: path templates, bindings and their start-up checks.

Shared by the REST routes (:mod:`protobind._rest`) and the OpenAPI writer (:mod:`protobind.openapi`);
no HTTP library is imported here.

Template syntax (from ``google/api/http.proto``)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

``{var}`` is ``{var=*}``; ``**`` matches zero or more segments and must come last (before the verb).
A variable that covers one ``*`` is fully percent-decoded; a variable covering several segments (or
``**``) is decoded except ``%2F``, which stays as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .._schemas import enum_of, is_map, is_repeated, message_of  # re-exported: part of this module's API
from ..method import MethodInfo, MethodKind, ServiceInfo

__all__ = [
    "HttpBinding",
    "PathTemplate",
    "Segment",
    "Variable",
    "check_conflicts",
    "collect_bindings",
    "decode_path_value",
    "enum_of",
    "http_rule",
    "is_map",
    "is_repeated",
    "message_of",
    "method_bindings",
    "parse_template",
]

LITERAL, STAR, DOUBLE_STAR = "literal", "*", "**"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_METHOD_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")

#: HttpRule ``pattern`` oneof member -> HTTP method.
_VERBS = {"get": "GET", "put": "PUT", "post": "POST", "delete": "DELETE", "patch": "PATCH"}


@dataclass(frozen=True, slots=True)
class Segment:
    """One template segment: a literal (decoded text), ``*`` or ``**``."""

    kind: str
    literal: str = ""


@dataclass(frozen=True, slots=True)
class Variable:
    """``{field.path=...}`` covering ``segments[start:end]`` of its template."""

    field_path: tuple[str, ...]
    start: int
    end: int
    multi: bool  # covers more than one segment, or ``**``: "%2F" is not decoded

    @property
    def name(self) -> str:
        """The variable's field path, dotted (``book.name``)."""
        return ".".join(self.field_path)


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed path template."""

    text: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str

    @property
    def shape(self) -> tuple[tuple[tuple[str, str], ...], str]:
        """What the template matches, without variable names: equal shapes match the same paths."""
        return tuple((s.kind, s.literal) for s in self.segments), self.verb

    def sort_key(self) -> tuple[int, tuple[int, ...]]:
        """Most specific first: templates with a verb, then literals before ``*`` before ``**``."""
        rank = {LITERAL: 0, STAR: 1, DOUBLE_STAR: 2}
        return (0 if self.verb else 1), tuple(rank[s.kind] for s in self.segments)

    def match(self, raw_path: str) -> dict[str, tuple[str, bool]] | None:
        """Match a raw (still percent-encoded) path such as ``/v1/shelves/1/books/2``.

        Returns ``{field path: (raw value, multi)}`` for the variables, or ``None``. Values are
        decoded later with :func:`decode_path_value`, so that bad encodings become a clear 400
        rather than a routing failure.
        """
        if not raw_path.startswith("/"):
            return None
        path = raw_path[1:]
        if self.verb:
            suffix = ":" + self.verb
            if not path.endswith(suffix):
                return None
            path = path[: -len(suffix)]
        raw = path.split("/")
        spans = _assign(self.segments, raw)
        if spans is None:
            return None
        for segment, (lo, hi) in zip(self.segments, spans, strict=True):
            if segment.kind == LITERAL:
                if unquote(raw[lo], errors="replace") != segment.literal:
                    return None
            elif any(not part for part in raw[lo:hi]):
                return None
        values: dict[str, tuple[str, bool]] = {}
        for var in self.variables:
            lo = spans[var.start][0]
            hi = spans[var.end - 1][1]
            values[var.name] = ("/".join(raw[lo:hi]), var.multi)
        return values

    def __str__(self) -> str:
        return self.text


def _assign(segments: Sequence[Segment], raw: list[str]) -> list[tuple[int, int]] | None:
    """The raw-segment span ``[lo, hi)`` of each template segment, or ``None`` if the counts differ."""
    fixed = sum(1 for s in segments if s.kind != DOUBLE_STAR)
    has_double = len(segments) != fixed
    if len(raw) < fixed or (not has_double and len(raw) != fixed):
        return None
    spans: list[tuple[int, int]] = []
    position = 0
    for segment in segments:
        width = len(raw) - fixed if segment.kind == DOUBLE_STAR else 1
        spans.append((position, position + width))
        position += width
    return spans


def decode_path_value(raw: str, multi: bool) -> str:
    """Percent-decode a matched variable; multi-segment variables keep ``%2F`` as it is.

    Raises ``UnicodeDecodeError`` when the bytes are not UTF-8.
    """
    if multi:
        raw = raw.replace("%2F", "%252F").replace("%2f", "%252f")
    return unquote(raw, errors="strict")


def parse_template(text: str) -> PathTemplate:
    """Parse a ``google.api.http`` path template; ``ValueError`` explains what is wrong."""
    if not text.startswith("/") or text == "/":
        raise ValueError(f"path template {text!r} must start with '/' and have at least one segment")
    body, verb = text, ""
    tail_start = max(text.rfind("/"), text.rfind("}")) + 1
    colon = text.find(":", tail_start)
    if colon >= 0:
        body, verb = text[:colon], text[colon + 1 :]
        if not verb:
            raise ValueError(f"path template {text!r} has an empty verb after ':'")
    segments: list[Segment] = []
    variables: list[Variable] = []
    for part in _split_top(body[1:], text):
        if part.startswith("{"):
            if not part.endswith("}"):
                raise ValueError(f"path template {text!r}: variable {part!r} must be a whole segment")
            inner = part[1:-1]
            name, _, sub = inner.partition("=")
            field_path = tuple(name.split("."))
            if not all(_IDENT.match(ident) for ident in field_path):
                raise ValueError(f"path template {text!r}: {name!r} is not a field path")
            if any(v.field_path == field_path for v in variables):
                raise ValueError(f"path template {text!r} binds {name} twice")
            sub_segments = [_plain_segment(s, text) for s in sub.split("/")] if sub else [Segment(STAR)]
            start = len(segments)
            segments.extend(sub_segments)
            multi = len(sub_segments) > 1 or any(s.kind == DOUBLE_STAR for s in sub_segments)
            variables.append(Variable(field_path, start, len(segments), multi))
        else:
            segments.append(_plain_segment(part, text))
    for index, segment in enumerate(segments):
        if segment.kind == DOUBLE_STAR and index != len(segments) - 1:
            raise ValueError(f"path template {text!r}: '**' must be the last segment")
    return PathTemplate(text, tuple(segments), tuple(variables), verb)


def _split_top(text: str, template: str) -> list[str]:
    """Split on '/' outside braces."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "{":
            if depth:
                raise ValueError(f"path template {template!r}: variables cannot be nested")
            depth = 1
        elif char == "}":
            if not depth:
                raise ValueError(f"path template {template!r}: unbalanced '}}'")
            depth = 0
        if char == "/" and not depth:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError(f"path template {template!r}: unbalanced '{{'")
    parts.append(current)
    return parts


def _plain_segment(part: str, template: str) -> Segment:
    if part in (STAR, DOUBLE_STAR):
        return Segment(part)
    if not part:
        raise ValueError(f"path template {template!r} has an empty segment")
    if any(c in part for c in "{}=*"):
        raise ValueError(f"path template {template!r}: bad segment {part!r}")
    return Segment(LITERAL, unquote(part))


@dataclass(frozen=True, slots=True)
class HttpBinding:
    """One REST route of one method: ``http_method`` + ``template``, with its body rules."""

    method: MethodInfo[Any, Any]
    http_method: str
    template: PathTemplate
    #: ``""`` (no body), ``"*"`` (every field not in the path) or a top-level request field name.
    body: str
    #: ``""`` (the whole response) or a top-level response field name.
    response_body: str
    #: For each template variable, the request fields along its path (outermost first).
    path_fields: tuple[tuple[FieldDescriptor, ...], ...]
    body_field: FieldDescriptor | None
    response_field: FieldDescriptor | None
    #: 0 for the rule itself, 1.. for its ``additional_bindings``.
    index: int = 0

    def __str__(self) -> str:
        return f"{self.method.full_name} ({self.http_method} {self.template.text})"


def http_rule(method: MethodInfo[Any, Any]) -> http_pb2.HttpRule | None:
    """The method's ``google.api.http`` option, or ``None``."""
    if method.descriptor is None:
        return None
    options = method.descriptor.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def method_bindings(method: MethodInfo[Any, Any]) -> list[HttpBinding]:
    """Every binding of ``method`` (the rule and its ``additional_bindings``), checked against
    the request and response types. ``ValueError`` names the method and the problem."""
    rule = http_rule(method)
    if rule is None:
        return []
    bindings: list[HttpBinding] = []
    rules = [rule, *rule.additional_bindings]
    for index, one in enumerate(rules):
        if index and one.additional_bindings:
            raise ValueError(f"{method.full_name}: additional_bindings cannot be nested")
        built = _binding(method, one, index)
        if built is not None:
            bindings.append(built)
    return bindings


def _binding(method: MethodInfo[Any, Any], rule: http_pb2.HttpRule, index: int) -> HttpBinding | None:
    which = rule.WhichOneof("pattern")
    if which is None:
        if index:
            raise ValueError(f"{method.full_name}: an additional binding has no HTTP method and path")
        return None  # a rule holding only additional_bindings
    if which == "custom":
        http_method, text = rule.custom.kind, rule.custom.path
        if not _METHOD_TOKEN.match(http_method):
            raise ValueError(f"{method.full_name}: {http_method!r} is not an HTTP method")
    else:
        http_method, text = _VERBS[which], getattr(rule, which)
    where = f"{method.full_name} ({http_method} {text})"
    try:
        template = parse_template(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    request: Descriptor = method.input_type.DESCRIPTOR
    response: Descriptor = method.output_type.DESCRIPTOR
    path_fields = tuple(_path_field(request, var, where) for var in template.variables)
    body_field = None
    if rule.body and rule.body != "*":
        body_field = request.fields_by_name.get(rule.body)
        if body_field is None:
            raise ValueError(f"{where}: body {rule.body!r} is not a field of {request.full_name}")
        if any(len(fields) == 1 and fields[0] is body_field for fields in path_fields):
            raise ValueError(f"{where}: field {rule.body!r} cannot be both in the path and the body")
    response_field = None
    if rule.response_body:
        response_field = response.fields_by_name.get(rule.response_body)
        if response_field is None:
            raise ValueError(
                f"{where}: response_body {rule.response_body!r} is not a field of {response.full_name}"
            )
    return HttpBinding(
        method=method,
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        path_fields=path_fields,
        body_field=body_field,
        response_field=response_field,
        index=index,
    )


def _path_field(request: Descriptor, var: Variable, where: str) -> tuple[FieldDescriptor, ...]:
    fields: list[FieldDescriptor] = []
    message: Descriptor | None = request
    for position, name in enumerate(var.field_path):
        field = message.fields_by_name.get(name) if message is not None else None
        if field is None:
            raise ValueError(f"{where}: path variable {var.name!r} is not a field of {request.full_name}")
        last = position == len(var.field_path) - 1
        if is_repeated(field):
            raise ValueError(f"{where}: path variable {var.name!r} names a repeated or map field")
        if not last and field.type != FieldDescriptor.TYPE_MESSAGE:
            raise ValueError(f"{where}: path variable {var.name!r}: {name!r} is not a message field")
        if last and field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            raise ValueError(f"{where}: path variable {var.name!r} must name a scalar field, not a message")
        fields.append(field)
        message = field.message_type
    return tuple(fields)


def collect_bindings(
    services: Iterable[ServiceInfo], *, skipped: list[MethodInfo[Any, Any]] | None = None
) -> list[HttpBinding]:
    """The bindings of every unary method of ``services``, most specific template first.

    Streaming methods with a ``google.api.http`` rule are not bound; they are appended to
    ``skipped`` when it is given. Raises ``ValueError`` for a bad rule or two conflicting routes.
    """
    bindings: list[HttpBinding] = []
    for service in services:
        for method in service.methods:
            found = method_bindings(method)
            if found and method.kind is not MethodKind.UNARY:
                if skipped is not None:
                    skipped.append(method)
                continue
            bindings.extend(found)
    check_conflicts(bindings)
    bindings.sort(key=lambda b: b.template.sort_key())
    return bindings


def check_conflicts(bindings: Iterable[HttpBinding]) -> None:
    """Refuse two bindings with the same HTTP method and templates that match the same paths."""
    seen: dict[tuple[str, Any], HttpBinding] = {}
    for binding in bindings:
        key = (binding.http_method, binding.template.shape)
        other = seen.get(key)
        if other is not None:
            raise ValueError(
                f"conflicting REST routes: {other} and {binding} match the same requests; "
                "change one of the google.api.http paths"
            )
        seen[key] = binding
