"""``inproc://NAME``: client and server in one process, no sockets.

Messages are copied through their binary encoding, so a handler and its caller never share a
mutable object and the per-call cost includes serialization, as on a real wire. The handler runs
in the caller's task: cancelling the caller cancels the handler, and the deadline cancels both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.message import Message

from .context import CallInfo, Context
from .errors import Code, RpcError
from .metadata import Metadata
from .reflection import Reflected, descriptor_files
from .server import Endpoint, invoke_stream, invoke_unary
from .transport import ClientTransport, ServerBinding, Transport, named_harness

if TYPE_CHECKING:
    from .server import EndpointTable

__all__ = [
    "TRANSPORT",
    "InprocBinding",
    "InprocTransport",
    "dial",
    "serve",
]

_registry: dict[str, InprocBinding] = {}


def _name(url: str) -> str:
    parts = urlsplit(url)
    name = parts.netloc + parts.path
    if not name:
        raise ValueError(f"inproc URL needs a name: inproc://NAME, got {url!r}")
    return name


def _copy(message: Message) -> Message:
    return type(message).FromString(message.SerializeToString())


def _copy_error(error: RpcError) -> RpcError:
    """The error as a caller over a wire would see it: details packed and unpacked again."""
    return RpcError.from_status(error.to_status()) if error.details else error


class InprocBinding(ServerBinding):
    """The server side of ``inproc://NAME``: registered by name, found by the clients of this process."""

    def __init__(self, server: EndpointTable, name: str) -> None:
        self.server = server
        self.name = name
        self.closing = False
        self.active: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"inproc://{self.name}"

    async def stop(self, grace: float | None) -> None:
        self.closing = True
        if _registry.get(self.name) is self:
            del _registry[self.name]
        pending = {task for task in self.active if not task.done()}
        if pending and grace:
            await asyncio.wait(pending, timeout=grace)
        for task in pending:
            if not task.done():
                task.cancel()

    def endpoint(self, call: CallInfo) -> Endpoint:
        """The endpoint a call asks for, or UNIMPLEMENTED."""
        assert call.method is not None
        endpoint = self.server.endpoints.get(call.method.path)
        if endpoint is None:
            raise RpcError(Code.UNIMPLEMENTED, f"method {call.method.full_name} is not served here")
        return endpoint


async def serve(server: EndpointTable, url: str, options: Mapping[str, Any]) -> InprocBinding:
    """Serve ``server``'s endpoints under ``inproc://NAME`` in this process."""
    name = _name(url)
    if name in _registry:
        raise RuntimeError(f"inproc://{name} is already bound")
    binding = _registry[name] = InprocBinding(server, name)
    return binding


async def dial(url: str, options: Mapping[str, Any]) -> InprocTransport:
    """A client of the ``inproc://NAME`` server of this process."""
    return InprocTransport(_name(url))


class InprocTransport(ClientTransport):
    """The client side of ``inproc://NAME``: runs the endpoint in the caller's task."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _binding(self) -> InprocBinding:
        binding = _registry.get(self.name)
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


TRANSPORT = Transport(
    name="inproc",
    schemes=("inproc",),
    extra="",
    serve=serve,
    dial=dial,
    test_harness=named_harness("inproc://test-{}"),
)
