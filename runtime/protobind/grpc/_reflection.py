"""The client of gRPC server reflection: what a server serves, for ``protobind list/describe/call``.

It asks ``grpc.reflection.v1.ServerReflection`` first and falls back to ``v1alpha`` (servers built
on older gRPC libraries); both carry the same messages, so grpcio-reflection's v1alpha classes
encode either.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from google.protobuf import descriptor_pb2

from .._errors import Code, RpcError
from ..reflection import Reflected
from ._services import REFLECTION_V1, REFLECTION_V1ALPHA
from ._wire import ServerStatus, from_grpc_code

__all__ = ["fetch"]


async def fetch(channel: Any, timeout: float | None, metadata: Any = ()) -> Reflected:
    """Ask the server behind the grpc.aio ``channel`` for its services and their files
    (``metadata``: grpcio's form, sent with the reflection call)."""
    from grpc_reflection.v1alpha import reflection_pb2

    for service in (REFLECTION_V1, REFLECTION_V1ALPHA):
        stream = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = stream(timeout=timeout, metadata=metadata or None)
        status = ServerStatus(call)
        try:
            return await ask(call, reflection_pb2)
        except grpc.aio.AioRpcError as race:
            exc = status.of(race)
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and service == REFLECTION_V1:
                continue
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise RpcError(Code.UNIMPLEMENTED, "the server does not serve gRPC reflection") from None
            raise RpcError(from_grpc_code(exc.code()), exc.details() or "") from None
        finally:
            call.cancel()
    raise AssertionError("unreachable")


async def ask(call: Any, pb: Any) -> Reflected:
    """The services and files behind a reflection stream ``call`` (``write``, ``read``, giving
    grpcio's EOF or ``None`` at the end, and ``done_writing``)."""

    async def request(**kwargs: Any) -> Any:
        await call.write(pb.ServerReflectionRequest(**kwargs))
        response = await call.read()
        if response is None or response is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise RpcError(Code.UNAVAILABLE, "the reflection stream ended early")
        if response.HasField("error_response"):
            error = response.error_response
            raise RpcError(Code.from_number(error.error_code), error.error_message)
        return response

    listed = await request(list_services="")
    names = [s.name for s in listed.list_services_response.service]
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def keep(response: Any) -> None:
        for data in response.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(data)
            files.setdefault(file.name, file)

    for name in names:
        if not any(name in _symbols(f) for f in files.values()):
            keep(await request(file_containing_symbol=name))
    # the error detail types, which protobind servers serve too (others may not: that is fine)
    with contextlib.suppress(RpcError):
        keep(await request(file_containing_symbol="google.rpc.ErrorInfo"))
    # a server may send a file without the files it imports: ask for those by name
    asked: set[str] = set()
    while missing := [d for f in files.values() for d in f.dependency if d not in files and d not in asked]:
        asked.add(missing[0])
        keep(await request(file_by_filename=missing[0]))
    await call.done_writing()
    try:
        return Reflected.from_files(names, files.values())
    except (ValueError, TypeError) as exc:
        raise RpcError(Code.INTERNAL, f"invalid reflection answer: {exc}") from None


def _symbols(file: descriptor_pb2.FileDescriptorProto) -> set[str]:
    prefix = f"{file.package}." if file.package else ""
    return {prefix + service.name for service in file.service}
