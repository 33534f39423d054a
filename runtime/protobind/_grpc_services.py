"""The standard gRPC side services a protobind gRPC server offers: health checking and reflection.

They are what ``grpcurl``, ``grpc_health_probe`` and load balancers expect to find, so they are on
by default (options ``health`` and ``reflection`` turn them off).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from .method import ServiceInfo


class Health:
    """``grpc.health.v1.Health`` reporting SERVING for the server ("") and every protobind service
    while the binding runs, NOT_SERVING once it starts to stop."""

    def __init__(self, server: Any, service_names: Iterable[str]) -> None:
        from grpc_health.v1 import health, health_pb2_grpc

        self._names = list(service_names)
        self._servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def serving(self) -> None:
        from grpc_health.v1 import health_pb2

        for name in self._names:
            await self._servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def shutting_down(self) -> None:
        await self._servicer.enter_graceful_shutdown()


def add_reflection(server: Any, services: Iterable[ServiceInfo], extra_names: Iterable[str]) -> None:
    """Serve ``grpc.reflection.v1alpha.ServerReflection`` for ``services`` (and ``extra_names``).

    Reflection answers from a pool of its own holding exactly the files of the served services
    and their imports: the services' descriptors may come from any pool (not necessarily the
    default one), and a private pool cannot be changed by unrelated code in the process.
    """
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection, reflection_pb2

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    files = [s.descriptor.file for s in services if s.descriptor is not None]
    files += [health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]
    for file in files:
        _add_file(pool, file, added)
    names = [s.name for s in services] + list(extra_names) + [reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server, pool=pool)


def _add_file(pool: descriptor_pool.DescriptorPool, file: FileDescriptor, added: set[str]) -> None:
    if file.name in added:
        return
    added.add(file.name)
    # A pool accepts a file only after everything it imports.
    for dependency in file.dependencies:
        _add_file(pool, dependency, added)
    pool.AddSerializedFile(file.serialized_pb)
