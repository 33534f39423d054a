"""The standard gRPC side services a protobind gRPC server offers: health checking and reflection.

They are what ``grpcurl``, ``grpc_health_probe`` and load balancers expect to find, so they are on
by default (options ``health`` and ``reflection`` turn them off).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from .._context import Context
from .._errors import Code, RpcError
from .._metadata import Metadata
from ..endpoints import Endpoint
from ..method import MethodInfo, MethodKind, ServiceInfo
from ..reflection import descriptor_files
from ._wire import to_grpc_code

if TYPE_CHECKING:
    from ..endpoints import EndpointTable
    from ._options import GrpcOptions

__all__ = [
    "GenericOnly",
    "Health",
    "add_reflection",
]


class GenericOnly:
    """Hands a stock ``add_*Servicer_to_server`` function only the generic handlers.

    Those functions also register their methods as grpcio "registered methods", and every
    registered method on a server makes each call to it dearer (measured with callgrind,
    grpcio 1.85), including calls to the protobind services. With ``authorize`` (the server's
    ``BearerAuth``), each call is checked before the stock handler runs."""

    def __init__(self, server: Any, authorize: Authorize | None = None) -> None:
        self._server = server
        self._authorize = authorize

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Pass generic handlers through to the real server."""
        if self._authorize is not None:
            handlers = tuple(_Guarded(handler, self._authorize) for handler in handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
        """Register per-method handlers as a generic handler (see the class docstring)."""
        pass


Authorize = Callable[[Metadata, str], "RpcError | None"]


class _Guarded:
    """A generic handler whose calls are authorized first: a refused call gets a handler that
    only aborts with the error (grpcio asks for the handler per call, with the metadata)."""

    def __init__(self, inner: Any, authorize: Authorize) -> None:
        self._inner = inner
        self._authorize = authorize

    def service(self, handler_call_details: Any) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method).lstrip("/")
        error = self._authorize(Metadata(handler_call_details.invocation_metadata or ()), method)
        if error is None:
            return handler

        async def deny(request: Any, context: Any) -> None:
            await context.abort(to_grpc_code(error.code), error.message)

        kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        return handler._replace(**{next(k for k in kinds if getattr(handler, k)): deny})


class Health:
    """``grpc.health.v1.Health`` reporting SERVING for the server ("") and every protobind service
    while the binding runs, NOT_SERVING once it starts to stop."""

    def __init__(self, server: Any, service_names: Iterable[str], authorize: Authorize | None = None) -> None:
        from grpc_health.v1 import health, health_pb2_grpc

        self._names = list(service_names)
        self._servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, GenericOnly(server, authorize))

    async def serving(self) -> None:
        """Report every service SERVING."""
        from grpc_health.v1 import health_pb2

        for name in self._names:
            await self._servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def shutting_down(self) -> None:
        """Report every service NOT_SERVING (the server is stopping)."""
        await self._servicer.enter_graceful_shutdown()


#: The reflection services a server offers: v1 (what current grpcurl and gRPC libraries ask for
#: first) and v1alpha (older clients). grpcio-reflection implements only v1alpha; v1 has the same
#: messages under another package, so the same servicer answers both.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"


def add_reflection(
    server: Any,
    services: Iterable[ServiceInfo],
    extra_names: Iterable[str],
    authorize: Authorize | None = None,
) -> None:
    """Serve ``grpc.reflection.v1.ServerReflection`` and ``v1alpha`` for ``services`` (and
    ``extra_names``), with the error detail types (``google/rpc/error_details.proto``) among the
    files, so that reflection clients such as grpcurl decode error details.

    Reflection answers from a pool of its own holding exactly the files of the served services
    and their imports: the services' descriptors may come from any pool (not necessarily the
    default one), and a private pool cannot be changed by unrelated code in the process.
    """
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    servicer = reflection_servicer(services, extra_names)
    guarded = GenericOnly(server, authorize)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, guarded)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    guarded.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


def _v1_file(v1alpha: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``: the v1alpha file with the v1 package."""
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    file = descriptor_pb2.FileDescriptorProto.FromString(v1alpha.serialized_pb)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = "grpc.reflection.v1"
    file.ClearField("options")
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in file.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    return file


def reflection_servicer(services: Iterable[ServiceInfo], extra_names: Iterable[str]) -> Any:
    """grpcio-reflection's asyncio servicer for ``services`` (see :func:`add_reflection`); its
    ``ServerReflectionInfo(requests, context)`` uses no grpcio call object, so both engines run it."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection, reflection_pb2

    services = list(services)
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_files(services, [health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]):
        pool.AddSerializedFile(file.serialized_pb)
    pool.Add(_v1_file(reflection_pb2.DESCRIPTOR))
    names = [s.name for s in services] + list(extra_names) + [REFLECTION_V1, REFLECTION_V1ALPHA]
    return reflection.aio.ReflectionServicer(names, pool=pool)  # type: ignore[attr-defined]


# --- the same services for the native engine (_native_server.py) -----------------------------------

HEALTH = "grpc.health.v1.Health"


class NativeHealth:
    """``grpc.health.v1.Health`` for the native engine: Check and Watch, with the statuses
    :class:`Health` reports (SERVING while the binding runs, NOT_SERVING once it stops)."""

    def __init__(self, service_names: Iterable[str]) -> None:
        from grpc_health.v1 import health_pb2

        self._pb = health_pb2
        self._names = list(service_names)
        self._status: dict[str, int] = {}
        self._changed = asyncio.Event()

    def _set(self, status: int) -> None:
        for name in self._names:
            self._status[name] = status
        self._changed.set()
        self._changed = asyncio.Event()

    async def serving(self) -> None:
        """Report every service SERVING."""
        self._set(self._pb.HealthCheckResponse.SERVING)

    async def shutting_down(self) -> None:
        """Report every service NOT_SERVING (the server is stopping)."""
        self._set(self._pb.HealthCheckResponse.NOT_SERVING)

    async def check(self, request: Any, context: Context) -> Any:
        status = self._status.get(request.service)
        if status is None:
            raise RpcError(Code.NOT_FOUND, "unknown service")
        return self._pb.HealthCheckResponse(status=status)

    async def watch(self, request: Any, context: Context) -> AsyncIterator[Any]:
        return self._watch(request.service)

    async def _watch(self, service: str) -> AsyncIterator[Any]:
        unknown = self._pb.HealthCheckResponse.SERVICE_UNKNOWN
        last = None
        while True:
            status = self._status.get(service, unknown)
            if status != last:
                last = status
                yield self._pb.HealthCheckResponse(status=status)
            await self._changed.wait()

    def endpoints(self) -> dict[str, Endpoint]:
        from grpc_health.v1 import health_pb2

        request, response = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        check = _method("Check", HEALTH, request, response, MethodKind.UNARY)
        watch = _method("Watch", HEALTH, request, response, MethodKind.SERVER_STREAMING)
        return {check.path: Endpoint(check, self.check), watch.path: Endpoint(watch, self.watch)}


def _method(name: str, service: str, request: Any, response: Any, kind: MethodKind) -> MethodInfo[Any, Any]:
    return MethodInfo(name=name, service=service, input_type=request, output_type=response, kind=kind)


def native_side_services(
    table: EndpointTable, config: GrpcOptions
) -> tuple[dict[str, Endpoint], Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """Health and reflection as endpoints of the native engine (each call authorized by the
    server's ``authorize`` there), with what to run once the binding serves and when it stops."""
    endpoints: dict[str, Endpoint] = {}
    health = None
    extra_names = []
    if config.health:
        health = NativeHealth(["", *(s.name for s in table.services)])
        endpoints.update(health.endpoints())
        extra_names.append(HEALTH)
    if config.reflection:
        from grpc_reflection.v1alpha import reflection_pb2

        servicer = reflection_servicer(table.services, extra_names)

        async def info(requests: Any, context: Context) -> Any:
            return servicer.ServerReflectionInfo(requests, None)

        request, response = reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
        for service in (REFLECTION_V1, REFLECTION_V1ALPHA):
            method = _method("ServerReflectionInfo", service, request, response, MethodKind.BIDI_STREAMING)
            endpoints[method.path] = Endpoint(method, info)

    async def start() -> None:
        if health is not None:
            await health.serving()

    async def stop() -> None:
        if health is not None:
            await health.shutting_down()

    return endpoints, start, stop
