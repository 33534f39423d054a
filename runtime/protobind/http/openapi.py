"""An OpenAPI 3.1 document for the HTTP binding: the Connect routes and the REST routes.

``openapi_document(services)`` describes, for every method:

- its Connect route ``POST /{package}.{Service}/{Method}`` (``application/json`` bodies; for
  streaming methods, Connect's enveloped ``application/connect+json`` stream), plus ``GET`` with the
  ``message``/``encoding`` query for unary methods marked ``NO_SIDE_EFFECTS``; bidi methods are left
  out (they answer UNIMPLEMENTED over HTTP/1.1);
- every ``google.api.http`` binding of a unary method: path parameters, query parameters for the
  fields neither in the path nor in the body, the body, ``response_body``.

Messages are JSON Schemas of their proto3 JSON form in ``components/schemas``, named by full
message name. Errors are the Connect error JSON (``components/schemas/protobind.ConnectError``).
Importing this module loads no HTTP library.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .._schemas import (
    SCHEMAS,
    WELL_KNOWN,
    Comments,
    Schemas,
    connect_error_schema,
    is_map,
    is_repeated,
    message_of,
    scalar_schema,
)
from ..method import Idempotency, MethodInfo, MethodKind, ServiceInfo
from ._rule import DOUBLE_STAR, LITERAL, HttpBinding, collect_bindings

__all__ = ["openapi_document"]

_T = FieldDescriptor
ERROR_SCHEMA = "protobind.ConnectError"

#: Path Item fields of OpenAPI 3.1; other HTTP methods go under ``x-protobind-methods``.
_OPENAPI_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

#: Well-known types that a query parameter can carry (as their JSON string or scalar).
_QUERY_WKT = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    *(name for name in WELL_KNOWN if name.endswith("Value") and name != "google.protobuf.Value"),
}


def openapi_document(
    services: Sequence[ServiceInfo],
    *,
    title: str = "protobind API",
    version: str = "1.0.0",
    servers: Sequence[str] = (),
    source_files: Iterable[descriptor_pb2.FileDescriptorProto] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``services`` served by the HTTP binding.

    ``servers`` are base URLs. ``source_files`` are ``FileDescriptorProto`` s with source info
    (``protoc --include_source_info``): their comments become descriptions. Descriptors of
    generated ``_pb2`` modules carry no comments; the services of generated ``_protobind``
    modules carry theirs (:attr:`protobind.ServiceInfo.comments`), so a server's document has them.
    Raises ``ValueError`` for an invalid ``google.api.http`` rule or two conflicting routes.
    """
    comments = Comments(source_files, [service.comments for service in services])
    schemas = Schemas(comments)
    paths: dict[str, dict[str, Any]] = {}
    tags = []
    for service in services:
        tag: dict[str, Any] = {"name": service.name}
        text = comments.get(service.name)
        if text:
            tag["description"] = text
        tags.append(tag)
        for method in service.methods:
            _connect_operations(paths, method, schemas, comments)
    for binding in collect_bindings(services):
        _rest_operation(paths, binding, schemas, comments)
    schemas.schemas[ERROR_SCHEMA] = connect_error_schema()
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
    }
    if servers:
        document["servers"] = [{"url": url} for url in servers]
    document["tags"] = tags
    document["paths"] = paths
    document["components"] = _components(schemas)
    return document


def _components(schemas: Schemas) -> dict[str, Any]:
    """The document's shared parts: the message schemas, the error response, the Connect headers."""
    return {
        "schemas": dict(sorted(schemas.schemas.items())),
        "responses": {
            "ConnectError": {
                "description": "The call failed: a Connect error.",
                "content": {"application/json": {"schema": {"$ref": SCHEMAS + ERROR_SCHEMA}}},
            }
        },
        "parameters": {
            "ConnectProtocolVersion": {
                "name": "Connect-Protocol-Version",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "enum": ["1"]},
            },
            "ConnectTimeoutMs": {
                "name": "Connect-Timeout-Ms",
                "in": "header",
                "required": False,
                "description": "The deadline of the call, in milliseconds from now.",
                "schema": {"type": "integer", "minimum": 0, "maximum": 9999999999},
            },
        },
    }


def _error_responses() -> dict[str, Any]:
    return {"default": {"$ref": "#/components/responses/ConnectError"}}


def _header_parameters() -> list[dict[str, Any]]:
    return [
        {"$ref": "#/components/parameters/ConnectProtocolVersion"},
        {"$ref": "#/components/parameters/ConnectTimeoutMs"},
    ]


def _base_operation(method: MethodInfo[Any, Any], comments: Comments, operation_id: str) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [method.service],
        "summary": method.name,
    }
    text = comments.get(method.full_name)
    if text:
        operation["description"] = text
    return operation


def _connect_operations(
    paths: dict[str, dict[str, Any]], method: MethodInfo[Any, Any], schemas: Schemas, comments: Comments
) -> None:
    if method.kind is MethodKind.BIDI_STREAMING:
        return
    base = f"{method.service}.{method.name}"
    post = _base_operation(method, comments, base)
    post["parameters"] = _header_parameters()
    request = schemas.ref(method.input_type.DESCRIPTOR)
    response = schemas.ref(method.output_type.DESCRIPTOR)
    if method.kind is MethodKind.UNARY:
        post["requestBody"] = {"required": True, "content": {"application/json": {"schema": request}}}
        ok = {"description": "The response.", "content": {"application/json": {"schema": response}}}
    else:
        request_stream = method.kind.client_streams
        post["requestBody"] = {
            "required": True,
            "description": _stream_text(method.input_type.DESCRIPTOR.full_name, request_stream),
            "content": {"application/connect+json": {"schema": {"type": "string", "format": "binary"}}},
        }
        ok = {
            "description": _stream_text(method.output_type.DESCRIPTOR.full_name, not request_stream),
            "content": {"application/connect+json": {"schema": {"type": "string", "format": "binary"}}},
        }
    post["responses"] = {"200": ok, **_error_responses()}
    item: dict[str, Any] = {"post": post}
    if method.kind is MethodKind.UNARY and method.idempotency is Idempotency.NO_SIDE_EFFECTS:
        get = _base_operation(method, comments, base + ".get")
        get["parameters"] = [
            *_header_parameters(),
            {"name": "connect", "in": "query", "schema": {"type": "string", "enum": ["v1"]}},
            {
                "name": "encoding",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "enum": ["json", "proto"]},
            },
            {
                "name": "message",
                "in": "query",
                "required": True,
                "description": "The request: its JSON with encoding=json; with base64=1, the "
                "(URL-safe) base64 of the encoded request.",
                "content": {"application/json": {"schema": request}},
            },
            {"name": "base64", "in": "query", "schema": {"type": "string", "enum": ["1"]}},
            {"name": "compression", "in": "query", "schema": {"type": "string"}},
        ]
        get["responses"] = {"200": ok, **_error_responses()}
        item["get"] = get
    paths[method.path] = item


def _stream_text(message: str, many: bool) -> str:
    if many:
        return f"A Connect enveloped stream of {message} messages in JSON."
    return f"One {message} message in a Connect envelope (followed by the end-of-stream message)."


def _rest_path(binding: HttpBinding) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a binding, and its path parameters.

    A variable that is exactly one ``*`` (or ``**``) becomes ``{field}``; in a variable with literal
    segments, such as ``{name=shelves/*/books/*}``, the literals stay in the path and each wildcard
    is a parameter named after the literal before it: ``shelves/{shelves}/books/{books}``, and the
    field is set to the whole text. A ``**`` parameter may contain ``/``, sent as it is.
    """
    template = binding.template
    owner: dict[int, int] = {}
    for index, variable in enumerate(template.variables):
        for position in range(variable.start, variable.end):
            owner[position] = index
    names: dict[int, str] = {}
    for position, segment in enumerate(template.segments):
        if segment.kind == LITERAL:
            continue
        var_index = owner.get(position)
        var = template.variables[var_index] if var_index is not None else None
        previous = template.segments[position - 1] if position else None
        if var is not None and var.end - var.start == 1:
            name = var.name
        elif previous is not None and previous.kind == LITERAL:
            name = previous.literal
        else:
            name = var.name if var is not None else "segment"
        base, counter = name, 2
        while name in names.values():
            name, counter = f"{base}{counter}", counter + 1
        names[position] = name
    parts = [
        "{" + names[i] + "}" if i in names else _escape_literal(segment.literal)
        for i, segment in enumerate(template.segments)
    ]
    parameters: list[dict[str, Any]] = []
    for position, name in names.items():
        segment = template.segments[position]
        var_index = owner.get(position)
        parameter: dict[str, Any] = {"name": name, "in": "path", "required": True}
        if var_index is None:
            parameter["schema"] = {"type": "string"}
            parameter["description"] = "Any value (not used)."
        else:
            var = template.variables[var_index]
            leaf = binding.path_fields[var_index][-1]
            if var.end - var.start == 1 and segment.kind != DOUBLE_STAR and leaf.type != _T.TYPE_ENUM:
                parameter["schema"] = scalar_schema(leaf.type)
                parameter["description"] = f"Sets `{var.name}`."
            else:
                parameter["schema"] = {"type": "string"}
                shape = "/".join(parts[var.start : var.end])
                parameter["description"] = f"Part of `{var.name}`, which is set to `{shape}`."
        if segment.kind == DOUBLE_STAR:
            parameter["description"] += " Any number of segments: '/' is sent as it is."
        parameters.append(parameter)
    path = "/" + "/".join(parts)
    if template.verb:
        path += ":" + template.verb
    return path, parameters


def _escape_literal(literal: str) -> str:
    return literal.replace("{", "%7B").replace("}", "%7D")


def _query_parameters(binding: HttpBinding, schemas: Schemas) -> list[dict[str, Any]]:
    if binding.body == "*":
        return []
    bound = {tuple(f.name for f in fields) for fields in binding.path_fields}
    parameters: list[dict[str, Any]] = []

    def walk(
        message: Descriptor, names: tuple[str, ...], json_names: tuple[str, ...], seen: tuple[str, ...]
    ) -> None:
        for field in message.fields:
            path = (*names, field.name)
            if path in bound or (not names and field is binding.body_field):
                continue
            if is_map(field):
                continue
            json_path = (*json_names, field.json_name)
            if field.type == _T.TYPE_MESSAGE:
                nested = message_of(field)
                if nested.full_name in _QUERY_WKT and not is_repeated(field):
                    parameters.append(_query_parameter(json_path, schemas.ref(nested), field, schemas))
                elif (
                    not is_repeated(field)
                    and not nested.full_name.startswith("google.protobuf.")
                    and nested.full_name not in seen
                ):
                    walk(nested, path, json_path, (*seen, nested.full_name))
                continue
            schema = schemas.single(field)
            if is_repeated(field):
                schema = {"type": "array", "items": schema}
            parameters.append(_query_parameter(json_path, schema, field, schemas))

    request: Descriptor = binding.method.input_type.DESCRIPTOR
    walk(request, (), (), (request.full_name,))
    return parameters


def _query_parameter(
    json_path: tuple[str, ...], schema: dict[str, Any], field: FieldDescriptor, schemas: Schemas
) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": ".".join(json_path), "in": "query", "schema": schema}
    text = schemas.comments.get(field.full_name)
    if text:
        parameter["description"] = text
    if is_repeated(field):
        parameter["style"] = "form"
        parameter["explode"] = True
    return parameter


def _rest_operation(
    paths: dict[str, dict[str, Any]], binding: HttpBinding, schemas: Schemas, comments: Comments
) -> None:
    method = binding.method
    suffix = ".rest" if binding.index == 0 else f".rest{binding.index}"
    operation = _base_operation(method, comments, f"{method.service}.{method.name}{suffix}")
    path, path_parameters = _rest_path(binding)
    operation["parameters"] = [
        *path_parameters,
        *_query_parameters(binding, schemas),
        {"$ref": "#/components/parameters/ConnectTimeoutMs"},
    ]
    if binding.body == "*":
        operation["requestBody"] = {
            "description": "The request; fields in the path come from the path.",
            "content": {"application/json": {"schema": schemas.ref(method.input_type.DESCRIPTOR)}},
        }
    elif binding.body_field is not None:
        operation["requestBody"] = {
            "description": f"The request's `{binding.body_field.json_name}` field.",
            "content": {"application/json": {"schema": schemas.field(binding.body_field)}},
        }
    if binding.response_field is not None:
        response = schemas.field(binding.response_field)
    else:
        response = schemas.ref(method.output_type.DESCRIPTOR)
    operation["responses"] = {
        "200": {"description": "The response.", "content": {"application/json": {"schema": response}}},
        **_error_responses(),
    }
    item = paths.setdefault(path, {})
    verb = binding.http_method.lower()
    if verb in _OPENAPI_METHODS:
        key = verb
        while key in item:  # an equivalent template of the same method already here
            key = "x-protobind-" + key
        item[key] = operation
    else:
        item.setdefault("x-protobind-methods", {})[binding.http_method] = operation


def openapi_for(services: Sequence[ServiceInfo], prefix: str = "", **options: Any) -> dict[str, Any]:
    """The document of ``services`` as served under ``prefix`` of a host application (where
    :func:`protobind.http.asgi_app` is mounted): every path starts with ``prefix``, ready to be
    merged into the host's own document (:func:`merge_documents`). ``options`` go to
    :func:`openapi_document`."""
    document = openapi_document(services, **options)
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    document["paths"] = {prefix + path: item for path, item in document["paths"].items()}
    return document


def merge_documents(host: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Add the paths, tags and components of ``extra`` to ``host`` (in place; merging twice changes
    nothing). A path or component both define differently is a ``ValueError``."""
    sections: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        (host.setdefault("paths", {}), extra.get("paths", {}), "path")
    ]
    for name, section in extra.get("components", {}).items():
        sections.append(
            (host.setdefault("components", {}).setdefault(name, {}), section, f"components/{name}")
        )
    for target, source, what in sections:
        for key, value in source.items():
            if target.setdefault(key, value) != value:
                raise ValueError(f"the host's OpenAPI document already has {what} {key!r}, defined otherwise")
    tags = host.setdefault("tags", [])
    tags.extend(tag for tag in extra.get("tags", []) if tag not in tags)
    return host
