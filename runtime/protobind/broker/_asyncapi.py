"""An AsyncAPI 3.0 document for the broker bindings: NATS (and ``memory://``, which uses the same
subjects), MQTT 5, RabbitMQ and Kafka (the same engine; each broker's :class:`Bindings` write its
subjects as its topics or routing keys and add its AsyncAPI bindings).

``asyncapi_document(services)`` describes the application that serves ``services``: every subject
it receives on and every subject it sends to, from the method table alone (so ``protobind
asyncapi`` writes it from ``.proto`` files and a running server answers it on its discovery
subject):

- a request/reply method: its call subject (operation ``receive``) with the reply on the caller's
  reply subject (a dynamic address): the response message, or an error;
- a one-way method (``(protobind.v1.oneway)``): its call subject, no reply, delivered at most once;
- a streaming method: its call subject, where the ``open`` frame arrives, the stream inboxes
  and the frames exchanged on them (docs/protocols.md, "Streams");
- a durable method (``(protobind.v1.durable)``): its call subject, stored by JetStream and
  delivered at least once, with its delivery options; its dead-letter subject (operation
  ``send``); for a request/response method, the durable reply subject of the callers' group;
- the subjects every server answers: cancel notices, NATS micro discovery, this document.

Messages carry the proto3 JSON schema of their type (:mod:`protobind._schemas`, the schemas of
the OpenAPI document); the body is binary protobuf unless the message has ``Content-Type:
application/json``, so ``defaultContentType`` is ``application/protobuf``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import descriptor_pb2

from .._schemas import SCHEMAS, Comments, Schemas, connect_error_schema
from ..method import MethodInfo, MethodKind, ServiceInfo
from ._bindings import AMQP_BINDING_VERSION, MQTT_BINDING_VERSION, NATS_BINDING_VERSION, Bindings
from ._wire import (
    CANCEL_SUBJECT,
    CONTENT_TYPE,
    COUNT,
    FRAME,
    JSON_CONTENT_TYPE,
    MICRO_ERROR,
    MICRO_ERROR_CODE,
    PROTO_CONTENT_TYPE,
    STATUS,
    TIMEOUT,
    asyncapi_subject,
    method_subject,
)
from .durable._names import dead_letter_subject, durable_call_subject, reply_subject

__all__ = [
    "AMQP_BINDING_VERSION",
    "MERGED_TITLE",
    "MQTT_BINDING_VERSION",
    "NATS_BINDING_VERSION",
    "Bindings",
    "asyncapi_document",
    "merge_documents",
]

_MESSAGES = "#/components/messages/"
_REQUEST_HEADERS = "protobind.RequestHeaders"
_REPLY_HEADERS = "protobind.ReplyHeaders"
_ERROR_HEADERS = "protobind.ErrorHeaders"
_FRAME_HEADERS = "protobind.FrameHeaders"
_ERROR = "protobind.Error"
_ID = re.compile(r"[^A-Za-z0-9_\-]")


def _id(*parts: str) -> str:
    """An AsyncAPI channel or operation id (letters, digits, ``_`` and ``-`` only)."""
    return _ID.sub("_", "_".join(parts))


def _headers_schemas() -> dict[str, dict[str, Any]]:
    content_type = {
        "type": "string",
        "description": f"`{JSON_CONTENT_TYPE}`: the body is proto3 JSON. Absent (or "
        f"`{PROTO_CONTENT_TYPE}`): binary protobuf.",
    }
    metadata = {"type": "string", "description": "Call metadata: one header per key (docs/protocols.md)."}
    return {
        _REQUEST_HEADERS: {
            "type": "object",
            "description": "Headers of a call. Every header that is not the protocol's is metadata.",
            "properties": {
                CONTENT_TYPE: content_type,
                TIMEOUT: {
                    "type": "string",
                    "pattern": "^-?[0-9]+$",
                    "description": "The call's deadline, milliseconds from now.",
                },
            },
            "additionalProperties": metadata,
        },
        _REPLY_HEADERS: {
            "type": "object",
            "description": "Headers of a successful reply: the handler's response headers, and its "
            "trailers as `trailer-<name>`. A reply without either has no headers.",
            "properties": {CONTENT_TYPE: content_type},
            "additionalProperties": metadata,
        },
        _ERROR_HEADERS: {
            "type": "object",
            "description": "Headers of an error reply (NATS micro error headers plus the exact code).",
            "properties": {
                STATUS: {"type": "string", "description": "The gRPC status code, e.g. `5`."},
                MICRO_ERROR_CODE: {"type": "string", "description": "The HTTP status of that code."},
                MICRO_ERROR: {"type": "string", "description": "The error message on one line."},
                CONTENT_TYPE: content_type,
            },
            "required": [STATUS, MICRO_ERROR_CODE, MICRO_ERROR],
            "additionalProperties": metadata,
        },
        _FRAME_HEADERS: {
            "type": "object",
            "description": "Headers of a stream control frame (docs/protocols.md, 'Streams').",
            "properties": {
                FRAME: {
                    "type": "string",
                    "enum": ["open", "accept", "headers", "end", "ack", "ping", "cancel"],
                },
                COUNT: {"type": "string", "pattern": "^[0-9]+$"},
                STATUS: {"type": "string"},
            },
            "additionalProperties": {"type": "string"},
        },
    }


class _Writer:
    def __init__(
        self, schemas: Schemas, comments: Comments, prefix: str, queue_group: str, bindings: Bindings
    ) -> None:
        self.bindings = bindings
        self.schemas = schemas
        self.comments = comments
        self.prefix = prefix
        self.queue_group = queue_group
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}

    def group(self, method: MethodInfo[Any, Any]) -> str:
        return self.queue_group or method.service

    def message(self, descriptor: Any, headers: str = _REQUEST_HEADERS) -> dict[str, str]:
        """The message component of a protobuf type (one per type and header kind)."""
        name = descriptor.full_name
        key = name if headers == _REQUEST_HEADERS else f"{name}.{headers.rpartition('.')[2]}"
        if key not in self.messages:
            message: dict[str, Any] = {
                "name": name,
                "title": name,
                "summary": f"{name}: binary protobuf, or proto3 JSON with Content-Type: {JSON_CONTENT_TYPE}.",
                "headers": {"$ref": SCHEMAS + headers},
                "payload": self.schemas.ref(descriptor),
            }
            text = self.comments.get(name)
            if text:
                message["description"] = text
            self.messages[key] = message
        return {"$ref": _MESSAGES + key}

    def channel(
        self,
        channel_id: str,
        address: str | None,
        messages: dict[str, Any],
        description: str,
        *,
        stored: bool = False,
    ) -> dict[str, str]:
        channel: dict[str, Any] = {
            "address": None if address is None else self.bindings.address(address),
            "description": description,
            "messages": messages,
        }
        bound = None if address is None else self.bindings.channel(address, stored)
        if bound:
            channel["bindings"] = bound
        self.channels[channel_id] = channel
        return {"$ref": f"#/channels/{channel_id}"}

    def operation(
        self,
        operation_id: str,
        action: str,
        channel_id: str,
        description: str,
        *,
        queue: str | None = None,
        reply_channel: str | None = None,
        summary: str | None = None,
        stored: bool = False,
    ) -> None:
        operation: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "description": description,
            "messages": [
                {"$ref": f"#/channels/{channel_id}/messages/{m}"}
                for m in self.channels[channel_id]["messages"]
            ],
        }
        if summary:
            operation["summary"] = summary
        if reply_channel is not None:
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{reply_channel}"},
                "messages": [
                    {"$ref": f"#/channels/{reply_channel}/messages/{m}"}
                    for m in self.channels[reply_channel]["messages"]
                ],
            }
        bound = self.bindings.operation(queue, stored)
        if bound:
            operation["bindings"] = bound
        if queue is not None:
            operation["description"] += self.bindings.received(queue)
        self.operations[operation_id] = operation

    def method(self, method: MethodInfo[Any, Any]) -> None:
        base = _id(method.service, method.name)
        # durable calls are stored under a subject of their own (protobind.broker.durable._names)
        subject = (
            durable_call_subject(self.prefix, method)
            if method.durable
            else method_subject(self.prefix, method)
        )
        request = self.message(method.input_type.DESCRIPTOR)
        error = {"$ref": _MESSAGES + _ERROR}
        summary = self.comments.get(method.full_name)
        group = self.group(method)
        if method.kind is not MethodKind.UNARY:
            self.stream(method, base, subject, summary)
            return
        if method.oneway:
            pattern = "One-way: published without a reply subject; nothing comes back."
            delivery = "at least once (durable)" if method.durable else "at most once"
            self.channel(
                base, subject, {"request": request}, f"{pattern} Delivered {delivery}.", stored=method.durable
            )
            self.operation(
                base,
                "receive",
                base,
                f"{method.full_name}: one-way. The handler's errors are logged by the server, never sent.",
                queue=group,
                summary=summary,
                stored=method.durable,
            )
        else:
            reply = self.message(method.output_type.DESCRIPTOR, _REPLY_HEADERS)
            self.channel(
                base,
                subject,
                {"request": request},
                "Request/reply: each call carries a reply subject.",
                stored=method.durable,
            )
            self.channel(
                base + "_reply",
                None,
                {"reply": reply, "error": error},
                "The caller's reply subject (an inbox of its own, given with the request).",
            )
            self.operation(
                base,
                "receive",
                base,
                f"{method.full_name}: request/reply; answered with the response or an error.",
                queue=group,
                reply_channel=base + "_reply",
                summary=summary,
                stored=method.durable,
            )
        if method.durable:
            self.durable(method, base, request)

    def durable(self, method: MethodInfo[Any, Any], base: str, request: dict[str, str]) -> None:
        options = method.delivery
        backoff = ", ".join(f"{seconds:g}s" for seconds in options.backoff)
        stored = self.channels[base]
        stored["description"] += (
            f" Durable: stored by NATS JetStream before the caller returns and delivered at least once"
            f" to each queue group; acked after the handler succeeds, redelivered with backoff {backoff}"
            f" (ack wait {options.ack_wait:g}s, at most {options.max_ack_pending} unacked), and after"
            f" {options.max_deliver} attempts sent to the dead letter."
        )
        stored["x-protobind-delivery"] = {
            "max_deliver": options.max_deliver,
            "backoff_seconds": list(options.backoff),
            "ack_wait_seconds": options.ack_wait,
            "max_ack_pending": options.max_ack_pending,
            "reply_ttl_seconds": options.reply_ttl,
        }
        dead = base + "_dead_letter"
        self.channel(
            dead,
            dead_letter_subject(self.prefix, method, options),
            {"request": self.message(method.input_type.DESCRIPTOR, _ERROR_HEADERS)},
            f"Calls of {method.full_name} that failed their last delivery attempt (or failed with a code "
            "that no retry can fix), with the error in headers.",
            stored=True,
        )
        self.operation(dead, "send", dead, f"{method.full_name}: dead-lettered calls.", stored=True)
        if not method.oneway:
            replies = base + "_reply_stream"
            reply = self.message(method.output_type.DESCRIPTOR, _REPLY_HEADERS)
            self.channel(
                replies,
                reply_subject(self.prefix, self.group(method), "*"),
                {"reply": reply, "error": {"$ref": _MESSAGES + _ERROR}},
                f"Stored replies of {method.full_name} for the callers' queue group, correlated by call "
                f"id; kept {options.reply_ttl:g}s for a caller (or its successor) to claim.",
            )
            self.operation(replies, "send", replies, f"{method.full_name}: durable replies.")
            self.channels[replies]["description"] += self.bindings.stored_replies()

    def stream(self, method: MethodInfo[Any, Any], base: str, subject: str, summary: str | None) -> None:
        kind = method.kind.value.replace("_", " ")
        frame = {"$ref": _MESSAGES + "protobind.Frame"}
        if method.kind.client_streams:
            opening: dict[str, Any] = {"open": frame}
            self.channel(
                base + "_requests",
                None,
                {"request": self.message(method.input_type.DESCRIPTOR), "frame": frame},
                "The server's stream inbox: the request messages (data frames) and the client's "
                "control frames (end, ack, ping, cancel).",
            )
        else:
            opening = {"open": self.message(method.input_type.DESCRIPTOR)}
        self.channel(base, subject, opening, f"A {kind} call starts with an open frame (docs/protocols.md).")
        self.channel(
            base + "_reply",
            None,
            {"response": self.message(method.output_type.DESCRIPTOR, _REPLY_HEADERS), "frame": frame},
            "The caller's stream inbox: the responses (data frames) and the server's control frames "
            "(accept, headers, end, ack, ping).",
        )
        self.operation(
            base,
            "receive",
            base,
            f"{method.full_name}: {kind}, over per-call inboxes with flow control.",
            queue=self.group(method),
            reply_channel=base + "_reply",
            summary=summary,
        )
        if method.kind.client_streams:
            self.operation(base + "_requests", "receive", base + "_requests", "The requests of a stream.")

    def service(self, service: ServiceInfo) -> None:
        for method in service.methods:
            self.method(method)
        base = _id(service.name)
        self.channel(
            base + "_asyncapi",
            asyncapi_subject(self.prefix, service.name),
            {"request": {"$ref": _MESSAGES + "protobind.Empty"}},
            f"Ask {service.name} for this document (any body); the reply is its JSON.",
        )
        self.channel(
            base + "_asyncapi_reply",
            None,
            {"document": {"$ref": _MESSAGES + "protobind.AsyncAPIDocument"}},
            "The asker's reply subject.",
        )
        self.operation(
            base + "_asyncapi",
            "receive",
            base + "_asyncapi",
            "Discovery: this document.",
            queue=self.queue_group or service.name,
            reply_channel=base + "_asyncapi_reply",
        )


def _common(writer: _Writer) -> None:
    prefix = writer.prefix
    writer.channel(
        "protobind_cancel",
        prefix + CANCEL_SUBJECT,
        {"cancel": {"$ref": _MESSAGES + "protobind.Cancel"}},
        "A caller that gave up on a unary call publishes its reply subject here; the replica "
        "running the call cancels the handler.",
    )
    writer.operation("protobind_cancel", "receive", "protobind_cancel", "Cancel notices (every replica).")
    for verb in ("PING", "INFO", "STATS"):
        channel = f"micro_{verb.lower()}"
        writer.channel(
            channel,
            f"$SRV.{verb}",
            {"request": {"$ref": _MESSAGES + "protobind.Empty"}},
            f"NATS micro discovery (also $SRV.{verb}.<name> and $SRV.{verb}.<name>.<id>); the "
            "INFO endpoints' metadata names each method's pattern.",
        )
        writer.channel(
            channel + "_reply",
            None,
            {"reply": {"$ref": _MESSAGES + "protobind.MicroReply"}},
            "The asker's reply subject.",
        )
        writer.operation(channel, "receive", channel, f"NATS micro {verb}.", reply_channel=channel + "_reply")


def _fixed_messages() -> dict[str, Any]:
    return {
        _ERROR: {
            "name": _ERROR,
            "title": "Error reply",
            "summary": "A failed call: for a binary call the body is a google.rpc.Status; for a JSON call "
            "the Connect error object below.",
            "headers": {"$ref": SCHEMAS + _ERROR_HEADERS},
            "payload": {"$ref": SCHEMAS + "protobind.ConnectError"},
        },
        "protobind.Frame": {
            "name": "protobind.Frame",
            "title": "Stream control frame",
            "headers": {"$ref": SCHEMAS + _FRAME_HEADERS},
            "payload": {"type": "string", "description": "Empty, or the error body on an `end` frame."},
        },
        "protobind.Cancel": {
            "name": "protobind.Cancel",
            "contentType": "text/plain",
            "payload": {"type": "string", "description": "The abandoned call's reply subject."},
        },
        "protobind.Empty": {
            "name": "protobind.Empty",
            "payload": {"type": "string", "description": "Ignored."},
        },
        "protobind.MicroReply": {
            "name": "protobind.MicroReply",
            "contentType": JSON_CONTENT_TYPE,
            "payload": {"type": "object", "description": "The NATS micro (ADR-32) JSON reply."},
        },
        "protobind.AsyncAPIDocument": {
            "name": "protobind.AsyncAPIDocument",
            "contentType": JSON_CONTENT_TYPE,
            "payload": {"type": "object", "description": "This AsyncAPI document."},
        },
    }


def asyncapi_document(
    services: Sequence[ServiceInfo],
    *,
    title: str = "protobind services",
    version: str = "1.0.0",
    servers: Sequence[str] = (),
    prefix: str = "",
    queue_group: str = "",
    source_files: Iterable[descriptor_pb2.FileDescriptorProto] = (),
    bindings: Bindings | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``services`` served over a broker (default NATS).

    ``servers`` are the broker's URLs (credentials and query strings are left out; URLs of
    another scheme than the broker's, such as ``memory://``, are not listed);
    ``prefix`` and ``queue_group`` are the binding's options of the same names (default: no
    prefix, each service's full name as its group). ``source_files`` (descriptors with source
    info) give descriptions from the proto comments, as for :func:`protobind.http.openapi.openapi_document`.
    ``bindings``: the broker's addressing and AsyncAPI bindings (default NATS's, see :class:`Bindings`;
    a broker's own come from its ``asyncapi_bindings()``).
    """
    bindings = bindings or Bindings()
    if prefix and not prefix.endswith("."):
        prefix += "."
    comments = Comments(source_files, [service.comments for service in services])
    writer = _Writer(Schemas(comments), comments, prefix, queue_group, bindings)
    for service in services:
        writer.service(service)
    _common(writer)
    schemas = writer.schemas.schemas
    schemas["protobind.ConnectError"] = connect_error_schema()
    schemas.update(_headers_schemas())
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": version,
            "description": _description((s.name for s in services), bindings),
        },
        "defaultContentType": PROTO_CONTENT_TYPE,
    }
    listed = [url for url in servers if urlsplit(url).scheme in bindings.schemes]
    if listed:
        name = bindings.protocol
        document["servers"] = {
            _id(f"{name}{i}" if i else name): bindings.server(url) for i, url in enumerate(listed)
        }
    document["channels"] = writer.channels
    document["operations"] = writer.operations
    document["components"] = {
        "schemas": dict(sorted(schemas.items())),
        "messages": dict(sorted({**writer.messages, **_fixed_messages()}.items())),
    }
    return document


def _description(services: Iterable[str], bindings: Bindings) -> str:
    return (
        f"The {bindings.kind} of {', '.join(services)} served by protobind "
        f"({bindings.reference}; docs/messaging.md)."
    )


#: The title of a document of several services (``protobind asyncapi``'s).
MERGED_TITLE = "protobind API"


def merge_documents(documents: Sequence[dict[str, Any]], bindings: Bindings | None = None) -> dict[str, Any]:
    """One document of the services of several single-service documents (each a server's answer
    on its AsyncAPI subject, titled with its service's name), as :func:`asyncapi_document` would
    write it for them all under the title ``protobind API``; ``bindings``: the broker's, as there
    (default NATS's). One document is returned as it is."""
    if len(documents) == 1:
        return documents[0]

    def union(parts: list[dict[str, Any]]) -> dict[str, Any]:
        # what every document has (the subjects every server answers) comes after the services'
        shared = [key for key in parts[0] if all(key in part for part in parts)]
        own = {key: value for part in parts for key, value in part.items() if key not in shared}
        return {**own, **{key: parts[0][key] for key in shared}}

    merged = dict(documents[0])
    merged["info"] = {
        "title": MERGED_TITLE,
        "version": documents[0]["info"]["version"],
        "description": _description((d["info"]["title"] for d in documents), bindings or Bindings()),
    }
    merged["channels"] = union([d["channels"] for d in documents])
    merged["operations"] = union([d["operations"] for d in documents])
    merged["components"] = {
        part: dict(sorted(union([d["components"][part] for d in documents]).items()))
        for part in ("schemas", "messages")
    }
    return merged
