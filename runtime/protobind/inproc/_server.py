"""The server side of ``inproc://NAME``: a binding registered by name in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._context import CallInfo
from .._errors import Code, RpcError
from ..endpoints import Endpoint
from ..transport import ServeFunction, ServerBinding

if TYPE_CHECKING:
    from ..endpoints import EndpointTable

__all__ = ["BOUND", "InprocBinding", "name_of", "serve"]

#: The bindings of this process by name: where :mod:`.client` finds a server.
BOUND: dict[str, InprocBinding] = {}


def name_of(url: str) -> str:
    """The NAME of ``inproc://NAME``."""
    parts = urlsplit(url)
    name = parts.netloc + parts.path
    if not name:
        raise ValueError(f"inproc URL needs a name: inproc://NAME, got {url!r}")
    return name


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
        if BOUND.get(self.name) is self:
            del BOUND[self.name]
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
    name = name_of(url)
    if name in BOUND:
        raise RuntimeError(f"inproc://{name} is already bound")
    binding = BOUND[name] = InprocBinding(server, name)
    return binding


# mypy checks this module's serve against the transport interface (TRANSPORT imports it lazily)
_CHECK: ServeFunction = serve
