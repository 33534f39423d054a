"""The implementation of protobind.conformance.v1.ConformanceService that every transport test uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.rpc import error_details_pb2

import protobind
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.conformance.v1.conformance_protobind import ConformanceService


def _fail(request: Request) -> None:
    behavior = request.behavior
    if behavior.raise_exception:
        raise ValueError("secret internal detail: database password is hunter2")
    if behavior.error_code:
        details = []
        if behavior.error_detail_reason:
            details.append(
                error_details_pb2.ErrorInfo(
                    reason=behavior.error_detail_reason, domain="protobind.test", metadata={"k": "v"}
                )
            )
        raise protobind.RpcError(protobind.Code(behavior.error_code), behavior.error_message, details)


def _response(request: Request, context: protobind.Context, **fields: object) -> Response:
    remaining = context.time_remaining()
    return Response(
        text=request.text,
        payload=b"x" * request.behavior.response_size if request.behavior.response_size else request.payload,
        metadata={k: v for k, v in context.metadata.items() if isinstance(v, str) and k.startswith("x-")},
        time_remaining=-1.0 if remaining is None else remaining,
        transport=context.transport,
        method=context.method,
        number=request.number,
        **fields,  # type: ignore[arg-type]
    )


def _echo_metadata(context: protobind.Context) -> None:
    for key, value in context.metadata.items():
        if key.startswith("x-echo-"):
            context.set_header(key + "-header", value)
            context.set_trailer(key + "-trailer", value)


class Conformance(ConformanceService):
    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.started = asyncio.Event()

    async def unary(self, request: Request, context: protobind.Context) -> Response:
        _echo_metadata(context)
        self.started.set()
        if request.behavior.sleep_ms:
            try:
                await asyncio.sleep(request.behavior.sleep_ms / 1000)
            except asyncio.CancelledError:
                self.cancelled.append(request.text)
                raise
        _fail(request)
        return _response(request, context)

    async def lookup(self, request: Request, context: protobind.Context) -> Response:
        return await self.unary(request, context)

    async def server_stream(self, request: Request, context: protobind.Context) -> AsyncIterator[Response]:
        _echo_metadata(context)
        behavior = request.behavior
        try:
            for index in range(behavior.stream_count):
                if behavior.error_after and index == behavior.error_after:
                    _fail(request)
                if behavior.sleep_ms:
                    await asyncio.sleep(behavior.sleep_ms / 1000)
                yield _response(request, context, index=index)
        except asyncio.CancelledError:
            self.cancelled.append(request.text)
            raise
        if not behavior.error_after:
            _fail(request)

    async def client_stream(self, requests: AsyncIterator[Request], context: protobind.Context) -> Response:
        _echo_metadata(context)
        texts = []
        last = Request()
        async for request in requests:
            texts.append(request.text)
            last = request
        _fail(last)
        return _response(Request(text=",".join(texts)), context, request_count=len(texts))

    async def bidi_stream(
        self, requests: AsyncIterator[Request], context: protobind.Context
    ) -> AsyncIterator[Response]:
        _echo_metadata(context)
        index = 0
        async for request in requests:
            _fail(request)
            yield _response(request, context, index=index)
            index += 1
