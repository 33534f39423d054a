"""The line between the RPC model and the wire.

Everything above this module (``Server``, ``Channel``, generated code, interceptors) speaks in
messages, :class:`~protobind.Context` and :class:`~protobind.CallInfo`; everything below it is one
module per wire protocol. A transport module (``protobind.inproc``, ``protobind.grpc``,
``protobind.http``, ``protobind.nats``) provides two coroutine functions:

``async def serve(server, url, options) -> ServerBinding``
    Start serving every endpoint of ``server`` (:attr:`Server.endpoints`, keyed by
    ``/{package}.{Service}/{Method}``) at ``url``. For each call the binding decodes the request,
    builds a :class:`Context` (metadata, deadline, peer), and runs the endpoint through
    :func:`protobind.server.invoke_unary` or :func:`protobind.server.invoke_stream`, which apply
    the deadline, check the response type and turn any exception into an :class:`RpcError`. The
    binding then encodes the response or the error in its protocol's own form. ``url`` may carry
    options in its query string; ``options`` holds the same as Python values.

``async def dial(url, options) -> ClientTransport``
    Open a client. ``ClientTransport.unary`` sends one request and returns one response;
    ``ClientTransport.stream`` carries the three streaming kinds (for server streaming the
    request iterator yields exactly one message; for client streaming the response iterator yields
    exactly one). Both read the method, outgoing metadata and deadline from the :class:`CallInfo`,
    fill in its ``headers`` and ``trailers``, and raise :class:`RpcError` on failure, whatever the
    protocol's own error form was.

The registry below maps URL schemes to modules, imported only when a URL with that scheme is used,
so ``import protobind`` loads no transport library.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from google.protobuf.message import Message

if TYPE_CHECKING:
    from .context import CallInfo


class ServerBinding(Protocol):
    """A running server-side binding of one URL."""

    @property
    def url(self) -> str:
        """The URL actually bound (a port 0 in the requested URL is replaced by the real port)."""
        ...

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let in-flight calls finish for up to ``grace`` seconds, then cancel them."""
        ...


class ClientTransport(Protocol):
    """The client half of a transport."""

    async def unary(self, request: Message, call: CallInfo) -> Message: ...

    def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]: ...

    async def close(self) -> None: ...


# scheme -> (module, extra that installs its dependencies)
SCHEMES: dict[str, tuple[str, str]] = {
    "inproc": ("protobind.inproc", ""),
    "grpc": ("protobind.grpc", "grpc"),
    "grpcs": ("protobind.grpc", "grpc"),
    "http": ("protobind.http", "http"),
    "https": ("protobind.http", "http"),
    "nats": ("protobind.nats", "nats"),
    "tls": ("protobind.nats", "nats"),
}


def transport_module(url: str) -> ModuleType:
    """Import the transport module for ``url``'s scheme, with a clear error when its extra is missing."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ValueError(f"unsupported URL {url!r}: the scheme must be one of {known}")
    module_name, extra = SCHEMES[scheme]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "protobind":
            raise
        raise ImportError(
            f"the {scheme}:// transport needs the package {exc.name!r}: pip install 'protobind[{extra}]'"
        ) from exc


def query_options(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options from ``url``'s query string, overridden by ``options``."""
    merged: dict[str, Any] = dict(parse_qsl(urlsplit(url).query))
    if options:
        merged.update(options)
    return merged
