"""The method table: one description of each RPC that the runtime, every transport, the generated
code and the CLI read. It is derived from the protobuf descriptors, so there is no second source of
truth to keep in step."""

from __future__ import annotations

import enum
import keyword
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

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
        return self in (MethodKind.CLIENT_STREAMING, MethodKind.BIDI_STREAMING)

    @property
    def server_streams(self) -> bool:
        return self in (MethodKind.SERVER_STREAMING, MethodKind.BIDI_STREAMING)


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
        kind = {
            (False, False): MethodKind.UNARY,
            (False, True): MethodKind.SERVER_STREAMING,
            (True, False): MethodKind.CLIENT_STREAMING,
            (True, True): MethodKind.BIDI_STREAMING,
        }[(proto.client_streaming, proto.server_streaming)]
        return cls(
            name=descriptor.name,
            service=descriptor.containing_service.full_name,
            input_type=input_type,
            output_type=output_type,
            kind=kind,
            idempotency=Idempotency(proto.options.idempotency_level),
            descriptor=descriptor,
        )


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A service: its full name (``greeter.v1.Greeter``) and its methods in declaration order."""

    name: str
    methods: tuple[MethodInfo[Any, Any], ...]
    descriptor: ServiceDescriptor | None = None

    @property
    def package(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def short_name(self) -> str:
        return self.name.rpartition(".")[2]

    def method(self, name: str) -> MethodInfo[Any, Any]:
        """The method called ``name`` (proto name, e.g. ``SayHello``); ``KeyError`` when absent."""
        for method in self.methods:
            if method.name == name:
                return method
        raise KeyError(f"{self.name} has no method {name!r}")
