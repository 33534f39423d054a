"""NATS micro discovery (``$SRV.PING|INFO|STATS[.name[.id]]``) for the services of one binding.

Each protobind service is one micro service: its name is the full proto name with dots replaced
by underscores (micro names may not contain dots), each RPC is an endpoint. The JSON shapes are
those of the micro specification (ADR-32), as `nats micro ls|info|stats` and nats.micro read them.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..method import MethodInfo, ServiceInfo

__all__ = [
    "INFO_TYPE",
    "PING_TYPE",
    "STATS_TYPE",
    "VERBS",
    "EndpointStats",
    "MicroService",
    "answers",
    "micro_name",
    "subjects",
]


PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
VERBS = ("PING", "INFO", "STATS")


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
    id: str = field(default_factory=lambda: secrets.token_hex(11))
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))

    @property
    def name(self) -> str:
        """The micro service name (the proto service name made micro-safe)."""
        return micro_name(self.info.name)

    def _identity(self, kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": {"protobind.service": self.info.name},
        }

    def ping(self) -> dict[str, Any]:
        """The ``$SRV.PING`` answer."""
        return self._identity(PING_TYPE)

    def describe(self) -> dict[str, Any]:
        """The ``$SRV.INFO`` answer."""
        body = self._identity(INFO_TYPE)
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
