"""Reflection on every transport and error details that decode without imports.

Servers are real (the transports' test harnesses: a private nats-server, grpcio, uvicorn).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import any_pb2, descriptor_pb2
from google.rpc import error_details_pb2

import protobind
from protobind.reflection import reflect
from protobind.testing import serving

from .conformance import SERVICE
from .details_service import UNKNOWN, Details


@pytest.fixture
async def details_url(transport: str, harnesses: dict[str, Callable[[], str]]) -> AsyncIterator[str]:
    async with serving([Details()], transport, url=harnesses[transport]()) as url:
        yield url


async def test_standard_details_decode_and_unknown_stay_any(details_url: str) -> None:
    async with protobind.connect(details_url) as channel:
        reflected = await reflect(channel)
        method = reflected.service(SERVICE).method("Unary")
        with pytest.raises(protobind.RpcError) as info:
            await channel.unary(method, method.input_type(text="details"), timeout=10)
    error = info.value
    assert error.code is protobind.Code.FAILED_PRECONDITION and error.message == "with details"
    info_detail, bad_request, retry, unknown = error.details
    assert isinstance(info_detail, error_details_pb2.ErrorInfo)
    assert (info_detail.reason, dict(info_detail.metadata)) == ("QUOTA", {"k": "v"})
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == "text"
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.seconds == 3
    assert isinstance(unknown, any_pb2.Any)
    assert (unknown.type_url, unknown.value) == (UNKNOWN.type_url, UNKNOWN.value)


async def test_reflect_and_call_without_generated_code(details_url: str, transport: str) -> None:
    async with protobind.connect(details_url) as channel:
        reflected = await reflect(channel)
        assert SERVICE in reflected.services
        if transport == "grpc":  # gRPC also lists its side services, as grpcurl shows them
            assert set(reflected.services) - {SERVICE} == {
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            }
        else:
            assert reflected.services == (SERVICE,)
        # the pool knows the messages and the error detail types, from the server alone
        assert (
            reflected.pool.FindMessageTypeByName("google.rpc.ErrorInfo").full_name == "google.rpc.ErrorInfo"
        )
        method = reflected.service(SERVICE).method("Unary")
        reply = await channel.unary(method, method.input_type(text="hi", number=7), timeout=10)
        assert (reply.text, reply.number, reply.transport) == ("hi", 7, transport)
        stream = reflected.service(SERVICE).method("ServerStream")
        request = stream.input_type()
        request.behavior.stream_count = 2
        replies = [r async for r in channel.server_stream(stream, request, 10)]
        assert len(replies) == 2


def test_details_decode_in_a_process_that_never_imported_their_module() -> None:
    code = """
import sys
from google.protobuf import any_pb2
from protobind._errors import unpack_details
assert "google.rpc.error_details_pb2" not in sys.modules
packed = any_pb2.Any(type_url="type.googleapis.com/google.rpc.RetryInfo", value=bytes.fromhex("0a020803"))
(detail,) = unpack_details([packed])
print(type(detail).DESCRIPTOR.full_name, detail.retry_delay.seconds)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["google.rpc.RetryInfo", "3"]


@pytest.mark.usefixtures("grpc_engine")
async def test_reflection_can_be_turned_off(harnesses: dict[str, Callable[[], str]]) -> None:
    for transport in ("grpc", "http", "nats"):
        options = {"reflection": "false"}
        async with (
            serving([Details()], transport, url=harnesses[transport](), options=options) as url,
            protobind.connect(url) as channel,
        ):
            with pytest.raises(protobind.RpcError) as info:
                await reflect(channel)
        assert info.value.code is protobind.Code.UNIMPLEMENTED, transport


async def test_nats_reflection_keeps_to_its_prefix(nats_server: str) -> None:
    async with serving([Details()], "nats", url=f"{nats_server}?prefix=reflected"):
        async with protobind.connect(f"{nats_server}?prefix=elsewhere") as channel:
            assert (await reflect(channel)).services == ()
        async with protobind.connect(f"{nats_server}?prefix=reflected") as channel:
            assert (await reflect(channel)).services == (SERVICE,)


# --- gRPC reflection v1 and v1alpha, read by grpcio itself -----------------------------------------


async def _grpc_reflection(url: str, service: str, *requests: dict[str, str]) -> list[object]:
    """Ask ``service`` (the v1 or v1alpha reflection service) with a plain grpcio channel."""
    from grpc_reflection.v1alpha import reflection_pb2

    async with grpc.aio.insecure_channel(url.removeprefix("grpc://")) as channel:
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(iter([reflection_pb2.ServerReflectionRequest(**r) for r in requests]), timeout=10)
        return [response async for response in call]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
@pytest.mark.usefixtures("grpc_engine")
async def test_grpc_reflection_v1_and_v1alpha(version: str, harnesses: dict[str, Callable[[], str]]) -> None:
    async with serving([Details()], "grpc", url=harnesses["grpc"]()) as url:
        listed, detail_file, own_file = await _grpc_reflection(
            url,
            f"grpc.reflection.{version}.ServerReflection",
            {"list_services": ""},
            {"file_containing_symbol": "google.rpc.ErrorInfo"},
            {"file_containing_symbol": f"grpc.reflection.{version}.ServerReflection"},
        )
    names = {s.name for s in listed.list_services_response.service}  # type: ignore[attr-defined]
    assert {
        SERVICE,
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    files = {
        descriptor_pb2.FileDescriptorProto.FromString(
            data
        ).name: descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in detail_file.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
    }
    assert "google/rpc/error_details.proto" in files  # so grpcurl renders details
    (reflection_file,) = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in own_file.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
    ]
    assert reflection_file.package == f"grpc.reflection.{version}"
    assert [s.name for s in reflection_file.service] == ["ServerReflection"]


@pytest.mark.usefixtures("grpc_engine")
async def test_grpcio_reflection_database_reads_the_server(harnesses: dict[str, Callable[[], str]]) -> None:
    """grpcio-reflection's own client (v1alpha), as a stock tool would use it."""
    import asyncio

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    async with serving([Details()], "grpc", url=harnesses["grpc"]()) as url:

        def read() -> tuple[list[str], str]:
            with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
                database = ProtoReflectionDescriptorDatabase(channel)
                services = database.get_services()
                return services, database.FindFileContainingSymbol("google.rpc.BadRequest").name

        services, detail_file = await asyncio.to_thread(read)
    assert SERVICE in services and "grpc.reflection.v1.ServerReflection" in services
    assert detail_file == "google/rpc/error_details.proto"


@pytest.mark.usefixtures("grpc_engine")
async def test_reflection_is_guarded_by_bearer_auth(harnesses: dict[str, Callable[[], str]]) -> None:
    from protobind.auth import BearerAuth

    auth = BearerAuth({"s3cr3t": ["*"]})
    token = {"authorization": "Bearer s3cr3t"}
    for transport in ("grpc", "http", "nats"):
        async with (
            serving([Details()], transport, url=harnesses[transport](), interceptors=[auth]) as url,
            protobind.connect(url) as channel,
        ):
            with pytest.raises(protobind.RpcError) as info:
                await reflect(channel)
            assert info.value.code is protobind.Code.UNAUTHENTICATED, transport
            assert SERVICE in (await reflect(channel, metadata=token)).services
