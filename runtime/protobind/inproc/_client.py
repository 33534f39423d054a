"""The client side of ``inproc://NAME``: calls run the server's endpoint in the caller's task.

Messages are copied through their binary encoding, so a handler and its caller never share a
mutable object and the per-call cost includes serialization, as on a real wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.message import Message

from .._context import CallInfo, Context
from .._errors import Code, RpcError
from .._metadata import Metadata
from ..endpoints import Endpoint, invoke_stream, invoke_unary
from ..reflection import Reflected, descriptor_files
from ..transport import ClientTransport, DialFunction
from ._server import BOUND, InprocBinding, name_of

__all__ = ["InprocTransport", "dial"]


def _copy(message: Message) -> Message:
    return type(message).FromString(message.SerializeToString())


def _copy_error(error: RpcError) -> RpcError:
    """The error as a caller over a wire would see it: details packed and unpacked again."""
    return RpcError.from_status(error.to_status()) if error.details else error


async def dial(url: str, options: Mapping[str, Any]) -> InprocTransport:
    """A client of the ``inproc://NAME`` server of this process."""
    return InprocTransport(name_of(url))


class InprocTransport(ClientTransport):
    """The client side of ``inproc://NAME``: runs the endpoint in the caller's task."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _binding(self) -> InprocBinding:
        binding = BOUND.get(self.name)
        if binding is None or binding.closing:
            raise RpcError(Code.UNAVAILABLE, f"no server at inproc://{self.name}")
        return binding

    async def reflect(self, timeout: float | None, metadata: Metadata) -> Reflected:
        """The services of the server bound to this name and their descriptors."""
        services = self._binding().server.services
        files = [FileDescriptorProto.FromString(f.serialized_pb) for f in descriptor_files(services)]
        return Reflected.from_files([s.name for s in services], files)

    def _context(self, endpoint: Endpoint, call: CallInfo) -> Context:
        return Context(
            endpoint.method, "inproc", metadata=call.metadata.copy(), deadline=call.deadline, peer="inproc"
        )

    async def unary(self, request: Message, call: CallInfo) -> Message:
        binding = self._binding()
        endpoint = binding.endpoint(call)
        context = self._context(endpoint, call)
        task = asyncio.current_task()
        assert task is not None
        binding.active.add(task)
        try:
            response = await invoke_unary(endpoint, _copy(request), context)
            return _copy(response)
        except RpcError as exc:
            raise _copy_error(exc) from None
        finally:
            binding.active.discard(task)
            _finish(call, context)

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        binding = self._binding()
        endpoint = binding.endpoint(call)
        context = self._context(endpoint, call)
        task = asyncio.current_task()
        assert task is not None
        binding.active.add(task)
        method = endpoint.method
        try:
            if method.kind.client_streams:
                request: Any = _copies(requests)
            else:
                request = _copy(await anext(requests))
            if method.kind.server_streams:
                async for response in invoke_stream(endpoint, request, context):
                    call.headers = context.response_headers
                    yield _copy(response)
            else:
                yield _copy(await invoke_unary(endpoint, request, context))
        except RpcError as exc:
            raise _copy_error(exc) from None
        finally:
            binding.active.discard(task)
            _finish(call, context)

    async def close(self) -> None:
        pass


async def _copies(requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
    async for request in requests:
        yield _copy(request)


def _finish(call: CallInfo, context: Context) -> None:
    call.headers = context.response_headers
    call.trailers = context.response_trailers


# mypy checks this module's dial against the transport interface (TRANSPORT imports it lazily)
_CHECK: DialFunction = dial
