"""A conformance service whose unary replies say which process and event loop served them
(tests of --workers and loop)."""

from __future__ import annotations

import asyncio
import os

import protobind
from protobind.conformance.v1.conformance_pb2 import Request, Response

from .conformance import Conformance


class PidConformance(Conformance):
    async def unary(self, request: Request, context: protobind.Context) -> Response:
        response = await super().unary(request, context)
        response.text = f"{os.getpid()} {type(asyncio.get_running_loop()).__module__}"
        return response
