"""Load ``.proto`` files at run time (no generated code): for ``call``, ``openapi`` and ``breaking``."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import descriptor_pb2, descriptor_pool

from protobind.method import ServiceInfo
from protobind.reflection import services_in_pool

from .protoc import compile_protos


def build_pool(files: Sequence[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """A pool holding ``files`` (protoc lists dependencies before their users)."""
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    return pool


def services_in(pool: descriptor_pool.DescriptorPool, file_names: Sequence[str]) -> list[ServiceInfo]:
    """Every service declared in ``file_names``, with message classes made from ``pool``."""
    names = [s.full_name for name in file_names for s in pool.FindFileByName(name).services_by_name.values()]
    return services_in_pool(pool, names)


def load_services(paths: Sequence[str], includes: Sequence[str] = ()) -> list[ServiceInfo]:
    """Compile ``paths`` and return their services; raises ``ProtoError`` on bad input."""
    files, names = compile_protos(paths, includes)
    return services_in(build_pool(files), names)
