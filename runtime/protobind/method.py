"""The method table: one description of each RPC that the runtime, every transport, the generated
code and the CLI read. It is derived from the protobuf descriptors, so there is no second source of
truth to keep in step."""

from __future__ import annotations

import enum
import keyword
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf import descriptor_pb2, duration_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from .v1 import options_pb2

__all__ = [
    "GENERATED_CODE_API",
    "DeliveryOptions",
    "Idempotency",
    "MethodInfo",
    "MethodKind",
    "ServiceInfo",
    "check_generated_api",
    "python_name",
]

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)


class MethodKind(enum.Enum):
    """Cardinality of an RPC."""

    UNARY = "unary"
    SERVER_STREAMING = "server_streaming"
    CLIENT_STREAMING = "client_streaming"
    BIDI_STREAMING = "bidi_streaming"

    @property
    def client_streams(self) -> bool:
        """Whether the client sends a stream of requests."""
        return self in (MethodKind.CLIENT_STREAMING, MethodKind.BIDI_STREAMING)

    @property
    def server_streams(self) -> bool:
        """Whether the server answers with a stream of responses."""
        return self in (MethodKind.SERVER_STREAMING, MethodKind.BIDI_STREAMING)

    @classmethod
    def of(cls, client_streams: bool, server_streams: bool) -> MethodKind:
        """The kind with these streaming flags (a descriptor's ``client_streaming``/``server_streaming``)."""
        return next(
            k for k in cls if k.client_streams == client_streams and k.server_streams == server_streams
        )


class Idempotency(enum.IntEnum):
    """``google.protobuf.MethodOptions.IdempotencyLevel``."""

    UNKNOWN = 0
    NO_SIDE_EFFECTS = 1
    IDEMPOTENT = 2


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def python_name(rpc_name: str) -> str:
    """``SayHello`` -> ``say_hello``; a keyword gets a trailing underscore: ``Import`` -> ``import_``."""
    name = _CAMEL_BOUNDARY.sub("_", rpc_name).lower()
    return name + "_" if keyword.iskeyword(name) or keyword.issoftkeyword(name) else name


#: Version of the contract between generated ``_protobind.py`` modules and this runtime.
GENERATED_CODE_API = 1


def check_generated_api(version: int, module: str) -> None:
    """Called by every generated module: fail at import when it needs another runtime."""
    if version != GENERATED_CODE_API:
        raise ImportError(
            f"{module} was generated for protobind generated-code API {version}, but this runtime "
            f"implements API {GENERATED_CODE_API}: regenerate it with this protobind version"
        )


def _seconds(duration: duration_pb2.Duration) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """How the calls of a durable method are delivered: ``(protobind.v1.delivery)`` with the
    defaults of ``protobind/v1/options.proto`` where a field is unset. Durations are in seconds."""

    max_deliver: int = 5
    backoff: tuple[float, ...] = (1.0, 5.0, 30.0)
    ack_wait: float = 30.0
    dead_letter_subject: str | None = None  # None: the transport's dead-letter subject
    reply_ttl: float = 86400.0
    max_ack_pending: int = 1000

    @classmethod
    def from_proto(cls, options: options_pb2.DeliveryOptions) -> DeliveryOptions:
        """The value of a ``protobind.v1.DeliveryOptions`` message, defaults for unset fields."""
        default = cls()
        return cls(
            max_deliver=options.max_deliver if options.HasField("max_deliver") else default.max_deliver,
            backoff=tuple(_seconds(d) for d in options.backoff) or default.backoff,
            ack_wait=_seconds(options.ack_wait) if options.HasField("ack_wait") else default.ack_wait,
            dead_letter_subject=(
                options.dead_letter_subject if options.HasField("dead_letter_subject") else None
            ),
            reply_ttl=_seconds(options.reply_ttl) if options.HasField("reply_ttl") else default.reply_ttl,
            max_ack_pending=(
                options.max_ack_pending if options.HasField("max_ack_pending") else default.max_ack_pending
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodInfo(Generic[ReqT, RespT]):
    """One RPC: names, message types, cardinality and options.

    ``path`` is ``/{package}.{Service}/{Method}``, the gRPC and Connect path; ``full_name`` is
    ``{package}.{Service}/{Method}`` as :attr:`protobind.Context.method` reports it.
    """

    name: str
    service: str
    input_type: type[ReqT]
    output_type: type[RespT]
    kind: MethodKind
    idempotency: Idempotency = Idempotency.UNKNOWN
    descriptor: MethodDescriptor | None = None
    python_name: str = ""
    oneway: bool = False  # (protobind.v1.oneway): the caller does not wait for the handler
    durable: bool = False  # (protobind.v1.durable): stored by the broker, delivered at least once
    delivery: DeliveryOptions = DeliveryOptions()
    full_name: str = field(init=False)
    path: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "full_name", f"{self.service}/{self.name}")
        object.__setattr__(self, "path", f"/{self.service}/{self.name}")
        if not self.python_name:
            object.__setattr__(self, "python_name", python_name(self.name))

    @classmethod
    def from_descriptor(
        cls, descriptor: MethodDescriptor, input_type: type[ReqT], output_type: type[RespT]
    ) -> MethodInfo[ReqT, RespT]:
        """Build the entry for ``descriptor``; the message classes are passed for static typing."""
        proto = descriptor_pb2.MethodDescriptorProto()
        descriptor.CopyToProto(proto)
        options = proto.options  # parsed after options_pb2 registered the protobind extensions
        return cls(
            name=descriptor.name,
            service=descriptor.containing_service.full_name,
            input_type=input_type,
            output_type=output_type,
            kind=MethodKind.of(proto.client_streaming, proto.server_streaming),
            idempotency=Idempotency(options.idempotency_level),
            descriptor=descriptor,
            oneway=options.Extensions[options_pb2.oneway],
            durable=options.Extensions[options_pb2.durable],
            delivery=DeliveryOptions.from_proto(options.Extensions[options_pb2.delivery]),
        )


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A service: its full name (``greeter.v1.Greeter``) and its methods in declaration order.

    ``comments`` are the proto comments of the service, its methods and the messages they use,
    which the generator embeds (:func:`protobind._schemas.encode_comments`) so the OpenAPI and
    AsyncAPI documents a server serves carry the same descriptions as ``protobind openapi``.
    """

    name: str
    methods: tuple[MethodInfo[Any, Any], ...]
    descriptor: ServiceDescriptor | None = None
    comments: str = field(default="", compare=False, repr=False)

    def method(self, name: str) -> MethodInfo[Any, Any]:
        """The method called ``name`` (proto name, e.g. ``SayHello``); ``KeyError`` when absent."""
        for method in self.methods:
            if method.name == name:
                return method
        raise KeyError(f"{self.name} has no method {name!r}")
