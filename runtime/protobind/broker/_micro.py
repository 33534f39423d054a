"""NATS micro discovery (``$SRV.PING|INFO|STATS[.name[.id]]``) for the services of one binding.

Each protobind service is one micro service: its name is the full proto name with dots replaced
by underscores (micro names may not contain dots), each RPC is an endpoint. The JSON shapes are
those of the micro specification (ADR-32), as `nats micro ls|info|stats` and nats.micro read them.
The INFO reply's metadata also carries the service's descriptors (``protobind.descriptors``, see
:mod:`protobind.reflection`), which :func:`reflected` reads back on the client side.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2

from .._errors import Code, RpcError
from ..method import MethodInfo, ServiceInfo
from ..reflection import NATS_METADATA_KEY, Reflected, decode_descriptor_set, encode_descriptor_set
from ._wire import read_error
from .base import NO_RESPONDERS_STATUS

__all__ = [
    "INFO_SUBJECT",
    "INFO_TYPE",
    "PING_TYPE",
    "STATS_TYPE",
    "VERBS",
    "EndpointStats",
    "MicroService",
    "answers",
    "asyncapi_subjects",
    "micro_name",
    "reflected",
    "subjects",
]


PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
VERBS = ("PING", "INFO", "STATS")
INFO_SUBJECT = "$SRV.INFO"


def micro_name(service: str) -> str:
    """``greeter.v1.Greeter`` -> ``greeter_v1_Greeter``."""
    return service.replace(".", "_")


@dataclass(slots=True)
class EndpointStats:
    """Counters of one method, updated by the binding on every call."""

    method: MethodInfo[Any, Any]
    subject: str
    num_requests: int = 0
    num_errors: int = 0
    processing_time: int = 0  # nanoseconds
    last_error: str = ""


@dataclass
class MicroService:
    info: ServiceInfo
    endpoints: Sequence[EndpointStats]
    queue_group: str
    version: str
    reflection: bool = True
    id: str = field(default_factory=lambda: secrets.token_hex(11))
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))
    _descriptors: str = ""  # built on the first INFO request
    #: where the service answers with its AsyncAPI document
    asyncapi_subject: str = ""

    @property
    def name(self) -> str:
        """The micro service name (the proto service name made micro-safe)."""
        return micro_name(self.info.name)

    def _identity(self, kind: str) -> dict[str, Any]:
        metadata = {"protobind.service": self.info.name}
        if self.asyncapi_subject:
            metadata["protobind.asyncapi"] = self.asyncapi_subject
        return {"type": kind, "name": self.name, "id": self.id, "version": self.version, "metadata": metadata}

    def ping(self) -> dict[str, Any]:
        """The ``$SRV.PING`` answer."""
        return self._identity(PING_TYPE)

    def describe(self) -> dict[str, Any]:
        """The ``$SRV.INFO`` answer."""
        body = self._identity(INFO_TYPE)
        if self.reflection:
            if not self._descriptors:
                self._descriptors = encode_descriptor_set([self.info])
            body["metadata"][NATS_METADATA_KEY] = self._descriptors
        body["description"] = f"protobind service {self.info.name}"
        body["endpoints"] = [
            {
                "name": stats.method.name,
                "subject": stats.subject,
                "queue_group": self.queue_group,
                "metadata": {
                    "protobind.kind": stats.method.kind.value,
                    "protobind.request": stats.method.input_type.DESCRIPTOR.full_name,
                    "protobind.response": stats.method.output_type.DESCRIPTOR.full_name,
                    "protobind.oneway": str(stats.method.oneway).lower(),
                    "protobind.durable": str(stats.method.durable).lower(),
                },
            }
            for stats in self.endpoints
        ]
        return body

    def stats(self) -> dict[str, Any]:
        """The ``$SRV.STATS`` answer."""
        body = self._identity(STATS_TYPE)
        # microseconds: what nats.micro parses (%f) and RFC 3339 readers in other languages accept
        body["started"] = self.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body["endpoints"] = [
            {
                "name": stats.method.name,
                "subject": stats.subject,
                "queue_group": self.queue_group,
                "num_requests": stats.num_requests,
                "num_errors": stats.num_errors,
                "last_error": stats.last_error,
                "processing_time": stats.processing_time,
                "average_processing_time": (
                    stats.processing_time // stats.num_requests if stats.num_requests else 0
                ),
                "data": None,
            }
            for stats in self.endpoints
        ]
        return body

    def answer(self, verb: str) -> bytes:
        """The JSON answer to the discovery verb ``verb`` (``PING``, ``INFO``, ``STATS``)."""
        body = self.ping() if verb == "PING" else self.describe() if verb == "INFO" else self.stats()
        return json.dumps(body, separators=(",", ":")).encode()


def subjects(services: Sequence[MicroService]) -> list[str]:
    """Every discovery subject the binding subscribes to."""
    out = [f"$SRV.{verb}" for verb in VERBS]
    for service in services:
        for verb in VERBS:
            out.append(f"$SRV.{verb}.{service.name}")
            out.append(f"$SRV.{verb}.{service.name}.{service.id}")
    return out


def answers(services: Sequence[MicroService], subject: str) -> list[bytes]:
    """The replies to a discovery request on ``subject``: one per addressed service."""
    tokens = subject.split(".")
    if len(tokens) < 2 or tokens[0] != "$SRV" or tokens[1] not in VERBS or len(tokens) > 4:
        return []
    verb = tokens[1]
    name = tokens[2] if len(tokens) > 2 else None
    service_id = tokens[3] if len(tokens) > 3 else None
    return [
        service.answer(verb)
        for service in services
        if (name is None or service.name == name) and (service_id is None or service.id == service_id)
    ]


Replies = Sequence[tuple[dict[str, str] | None, bytes]]


def _protobind_infos(
    replies: Replies, prefix: str
) -> tuple[list[tuple[str, dict[str, Any]]], RpcError | None]:
    """(service name, INFO metadata) of each protobind service among ``$SRV.INFO`` replies
    (headers, body) whose subjects carry ``prefix``, and the first refusal among the replies."""
    infos: list[tuple[str, dict[str, Any]]] = []
    refused: RpcError | None = None
    for headers, data in replies:
        if headers and headers.get("Status") == NO_RESPONDERS_STATUS and not data:
            raise RpcError(Code.UNAVAILABLE, "no service answers NATS micro discovery ($SRV.INFO)")
        error = read_error(headers, data) if headers else None
        if error is not None:  # e.g. a server whose auth refused the question
            refused = refused or error
            continue
        try:
            body = json.loads(data)
            metadata = body.get("metadata") or {}
            name = metadata.get("protobind.service")
            subjects = [str(e["subject"]) for e in body.get("endpoints") or ()]
        except (ValueError, TypeError, AttributeError, KeyError):
            continue  # not a micro INFO reply: someone else's service
        if isinstance(name, str) and all(s.startswith(f"{prefix}{name}.") for s in subjects):
            infos.append((name, metadata))
    return infos, refused


def asyncapi_subjects(replies: Replies, prefix: str) -> list[str]:
    """Where the protobind services among ``$SRV.INFO`` replies answer with their AsyncAPI
    document (one subject per service, by service name)."""
    infos, refused = _protobind_infos(replies, prefix)
    subjects = {
        name: metadata["protobind.asyncapi"]
        for name, metadata in infos
        if isinstance(metadata.get("protobind.asyncapi"), str)
    }
    if not subjects:
        raise refused or RpcError(Code.UNIMPLEMENTED, "no protobind service answered NATS micro discovery")
    return [subjects[name] for name in sorted(subjects)]


def reflected(replies: Replies, prefix: str) -> Reflected:
    """The protobind services among ``$SRV.INFO`` replies (headers, body) whose subjects carry
    ``prefix``, with the descriptors their INFO carries. Replicas answer alike: one is kept."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    names: list[str] = []
    unreflected: list[str] = []
    infos, refused = _protobind_infos(replies, prefix)
    for name, metadata in infos:
        encoded = metadata.get(NATS_METADATA_KEY)
        if not isinstance(encoded, str):
            unreflected.append(name)
            continue
        try:
            for file in decode_descriptor_set(encoded):
                files.setdefault(file.name, file)
        except ValueError as exc:
            raise RpcError(Code.INTERNAL, f"{name}: invalid {NATS_METADATA_KEY}: {exc}") from None
        names.append(name)
    if not names and refused is not None:
        raise refused
    if not names and unreflected:
        raise RpcError(
            Code.UNIMPLEMENTED, f"reflection is turned off on {', '.join(sorted(set(unreflected)))}"
        )
    try:
        return Reflected.from_files(names, files.values())
    except ValueError as exc:
        raise RpcError(Code.INTERNAL, f"invalid descriptors in $SRV.INFO: {exc}") from None
