"""The Greeter implementation: plain async Python, no transport in sight."""

from __future__ import annotations

from collections.abc import AsyncIterator

from greeter.v1.greeter_pb2 import HelloReply, HelloRequest
from greeter.v1.greeter_protobind import GreeterService

import protobind


class Greeter(GreeterService):
    async def say_hello(self, request: HelloRequest, context: protobind.Context) -> HelloReply:
        if not request.name:
            raise protobind.RpcError(protobind.Code.INVALID_ARGUMENT, "name is required")
        context.set_header("x-greeter", "v1")
        return HelloReply(message=f"Hello, {request.name}! (via {context.transport})")

    async def reply_stream(
        self, request: HelloRequest, context: protobind.Context
    ) -> AsyncIterator[HelloReply]:
        for i in range(request.count or 3):
            yield HelloReply(message=f"Hello #{i + 1}, {request.name}!")
