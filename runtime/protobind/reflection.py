"""Server reflection on every transport: which services a server offers and their descriptors.

A server publishes, for its services, the ``.proto`` file descriptors of the files that declare
them and of everything those import, plus ``google/rpc/error_details.proto`` and
``google/rpc/status.proto`` so a client can decode error details. Each transport publishes them
in its own way (docs/protocols.md): gRPC serves ``grpc.reflection.v1`` and ``v1alpha``, the HTTP
binding ``GET {prefix}/protobind/reflection``, the NATS binding the micro ``$SRV.INFO`` reply.
The ``reflection`` server option turns it off on each.

A client needs no generated code or ``.proto`` file to call a reflected service::

    async with protobind.connect(url) as channel:
        reflected = await protobind.reflection.reflect(channel)
        method = reflected.service("greeter.v1.Greeter").method("SayHello")
        reply = await channel.unary(method, method.input_type(name="Ada"))
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor

from ._errors import Code, RpcError
from ._metadata import Metadata, MetadataLike
from .method import MethodInfo, ServiceInfo

if TYPE_CHECKING:
    from ._client import Channel

__all__ = [
    "HTTP_PATH",
    "NATS_METADATA_KEY",
    "Reflected",
    "Reflective",
    "ServesAsyncAPI",
    "ServesOpenAPI",
    "decode_descriptor_set",
    "descriptor_files",
    "document",
    "encode_descriptor_set",
    "from_document",
    "reflect",
    "services_in_pool",
]

#: The HTTP binding's reflection route, below the URL prefix.
HTTP_PATH = "/protobind/reflection"
#: The key of the micro ``$SRV.INFO`` metadata that carries a service's descriptors (NATS).
NATS_METADATA_KEY = "protobind.descriptors"


def _standard_files() -> list[FileDescriptor]:
    from google.rpc import error_details_pb2, status_pb2

    return [error_details_pb2.DESCRIPTOR, status_pb2.DESCRIPTOR]


def descriptor_files(
    services: Iterable[ServiceInfo], extra: Iterable[FileDescriptor] = ()
) -> list[FileDescriptor]:
    """The files declaring ``services``, everything they import, the error detail types and
    ``extra``: each file once, every file after the files it imports."""
    ordered: dict[str, FileDescriptor] = {}

    def add(file: FileDescriptor) -> None:
        if file.name in ordered:
            return
        for dependency in file.dependencies:
            add(dependency)
        ordered[file.name] = file

    for service in services:
        if service.descriptor is not None:
            add(service.descriptor.file)
    for file in [*_standard_files(), *extra]:
        add(file)
    return list(ordered.values())


def encode_descriptor_set(services: Iterable[ServiceInfo]) -> str:
    """:func:`descriptor_files` as a serialized ``google.protobuf.FileDescriptorSet``, base64."""
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(f.serialized_pb) for f in descriptor_files(services)
    ]
    file_set = descriptor_pb2.FileDescriptorSet(file=files)
    return base64.b64encode(file_set.SerializeToString()).decode("ascii")


def decode_descriptor_set(text: str) -> list[descriptor_pb2.FileDescriptorProto]:
    """The inverse of :func:`encode_descriptor_set`; ``ValueError`` when ``text`` is not one."""
    try:
        data = base64.b64decode(text, validate=True)
        return list(descriptor_pb2.FileDescriptorSet.FromString(data).file)
    except Exception as exc:  # binascii.Error, DecodeError: both mean "not a descriptor set"
        raise ValueError(f"not a base64 FileDescriptorSet: {exc}") from None


def services_in_pool(pool: descriptor_pool.DescriptorPool, names: Iterable[str]) -> list[ServiceInfo]:
    """The :class:`ServiceInfo` of each named service of ``pool``, message classes made from it."""
    services = []
    for name in names:
        service = pool.FindServiceByName(name)
        methods: list[MethodInfo[Any, Any]] = [
            MethodInfo.from_descriptor(
                method,
                message_factory.GetMessageClass(method.input_type),
                message_factory.GetMessageClass(method.output_type),
            )
            for method in service.methods
        ]
        services.append(ServiceInfo(service.full_name, tuple(methods), service))
    return services


@dataclass(frozen=True)
class Reflected:
    """What a server said it serves: service names (sorted) and a pool with their descriptors."""

    services: tuple[str, ...]
    pool: descriptor_pool.DescriptorPool

    @classmethod
    def from_files(
        cls, services: Iterable[str], files: Iterable[descriptor_pb2.FileDescriptorProto]
    ) -> Reflected:
        """Build the pool from ``files`` in any order; ``ValueError`` when an import is missing."""
        by_name = {file.name: file for file in files}
        pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()

        def add(name: str, importer: str) -> None:
            if name in added:
                return
            file = by_name.get(name)
            if file is None:
                raise ValueError(f"the server sent {importer} without its import {name}")
            added.add(name)
            for dependency in file.dependency:
                add(dependency, name)
            try:
                pool.Add(file)
            except (TypeError, ValueError) as exc:  # upb says TypeError for an inconsistent file
                raise ValueError(f"{name}: {exc}") from None

        for name in by_name:
            add(name, name)
        return cls(tuple(sorted(set(services))), pool)

    def service(self, name: str) -> ServiceInfo:
        """The named service; ``KeyError`` with the served names when it is not served."""
        if name not in self.services:
            served = ", ".join(self.services) or "nothing"
            raise KeyError(f"the server does not serve {name}; it serves: {served}")
        (info,) = services_in_pool(self.pool, [name])
        return info


@runtime_checkable
class Reflective(Protocol):
    """A client transport that can ask its server what it serves (``protobind.reflection``): the
    optional interface a :class:`~protobind.transport.ClientTransport` declares by having ``reflect``."""

    async def reflect(self, timeout: float | None, metadata: Metadata) -> Reflected:
        """The services the server offers and their descriptors; :class:`RpcError` on failure.
        ``metadata`` goes with the question (a token, when the server requires one)."""
        ...


@runtime_checkable
class ServesOpenAPI(Protocol):
    """A client transport that can fetch the OpenAPI document its server serves (``protobind
    openapi URL``): the optional interface a :class:`~protobind.transport.ClientTransport` declares
    by having ``openapi``."""

    async def openapi(self, timeout: float | None, metadata: Metadata) -> dict[str, Any]:
        """The server's OpenAPI document; :class:`RpcError` on failure."""
        ...


@runtime_checkable
class ServesAsyncAPI(Protocol):
    """A client transport that can fetch the AsyncAPI document of what its server serves
    (``protobind asyncapi URL``): the optional interface a
    :class:`~protobind.transport.ClientTransport` declares by having ``asyncapi``."""

    async def asyncapi(self, timeout: float | None, metadata: Metadata) -> dict[str, Any]:
        """The AsyncAPI document of the services the server offers; :class:`RpcError` on failure."""
        ...


async def reflect(
    channel: Channel, timeout: float | None = 10.0, metadata: MetadataLike | None = None
) -> Reflected:
    """Ask ``channel``'s server which services it serves, with their descriptors. ``metadata``
    goes with the question, e.g. ``{"authorization": "Bearer ..."}`` for a server with
    ``BearerAuth`` (the channel's interceptors do not run: reflection is not a method call)."""
    await channel.open()
    transport = channel.transport
    if not isinstance(transport, Reflective):
        scheme = channel.url.partition(":")[0]
        raise RpcError(Code.UNIMPLEMENTED, f"the {scheme}:// transport has no reflection client")
    return await transport.reflect(timeout, Metadata(metadata or ()))


def document(services: Sequence[ServiceInfo]) -> dict[str, Any]:
    """The JSON body of the HTTP reflection route."""
    names = sorted(s.name for s in services)
    return {"services": names, "fileDescriptorSet": encode_descriptor_set(services)}


def from_document(body: Mapping[str, Any]) -> Reflected:
    """Read the HTTP reflection route's JSON body; ``ValueError`` when it is not one."""
    services = body.get("services")
    files = body.get("fileDescriptorSet")
    if not isinstance(services, list) or not isinstance(files, str):
        raise ValueError("not a protobind reflection document")
    if not all(isinstance(s, str) for s in services):
        raise ValueError("not a protobind reflection document")
    return Reflected.from_files(services, decode_descriptor_set(files))
