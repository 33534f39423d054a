"""The line between the RPC model and the wire: the :class:`Transport` interface and its registry.

Everything above this module (``Server``, ``Channel``, generated code, interceptors) speaks in
messages, :class:`~protobind.Context` and :class:`~protobind.CallInfo`; everything below it is one
package per wire protocol (``protobind.inproc``, ``protobind.grpc``, ``protobind.http``,
``protobind.nats``). Each exposes one :class:`Transport` value named ``TRANSPORT`` and registers it
under the entry-point group ``protobind.transports``; a third-party package adds a transport the
same way, without touching protobind. docs/architecture.md walks through the whole contract.

A transport's package must import without its third-party library: ``serve`` and ``dial`` import
it when first called, so ``import protobind`` and the registry load no transport library.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from google.protobuf.message import Message

from .urls import redact

if TYPE_CHECKING:
    from ._context import CallInfo
    from .endpoints import EndpointTable

__all__ = [
    "ENTRY_POINT_GROUP",
    "ClientTransport",
    "ServerBinding",
    "Transport",
    "all_transports",
    "check_options",
    "lazy_dial",
    "lazy_serve",
    "listen_socket",
    "loopback_harness",
    "named_harness",
    "network_reason",
    "query_options",
    "register",
    "transport_for_url",
    "transport_named",
]

ENTRY_POINT_GROUP = "protobind.transports"

#: Options as they reach a transport: the URL's query string merged with Python values.
Options = Mapping[str, Any]


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
    """The client half of a transport.

    ``unary`` sends one request and returns one response; ``stream`` carries the three streaming
    kinds (for server streaming the request iterator yields exactly one message; for client
    streaming the response iterator yields exactly one). Both read the method, outgoing metadata
    and deadline from the :class:`CallInfo`, fill in its ``headers`` and ``trailers``, and raise
    :class:`~protobind.RpcError` on failure, whatever the protocol's own error form was.
    """

    async def unary(self, request: Message, call: CallInfo) -> Message:
        """One request, one response."""
        ...

    def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        """Any streaming kind: requests in, responses out."""
        ...

    async def close(self) -> None:
        """Release connections; calls in flight fail."""
        ...


ServeFunction = Callable[["EndpointTable", str, Options], Awaitable[ServerBinding]]
DialFunction = Callable[[str, Options], Awaitable[ClientTransport]]
#: The test harness: an async context manager that starts what test servers need (a nats-server,
#: say), yields a function giving a fresh URL to bind for each server, and stops what it started.
TestHarness = Callable[[], contextlib.AbstractAsyncContextManager[Callable[[], str]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """One wire protocol: how to serve endpoints on a URL and how to dial one.

    ``serve(endpoints, url, options)`` starts serving every endpoint of the frozen
    :class:`~protobind.endpoints.EndpointTable` at ``url``; for each call the binding decodes the
    request, builds a :class:`~protobind.Context` and runs the endpoint through
    :func:`protobind.endpoints.invoke_unary` / :func:`~protobind.endpoints.invoke_stream`, then encodes
    the response or the error in its protocol's own form. ``dial(url, options)`` opens a
    :class:`ClientTransport`. ``options`` were already checked against ``server_options`` /
    ``client_options`` (see :func:`check_options`) and the libraries in ``server_requires`` /
    ``client_requires`` found (``serve`` and ``dial`` import them).
    """

    name: str
    schemes: tuple[str, ...]
    extra: str
    serve: ServeFunction
    dial: DialFunction
    test_harness: TestHarness
    server_options: frozenset[str] = field(default_factory=frozenset)
    client_options: frozenset[str] = field(default_factory=frozenset)
    server_requires: tuple[str, ...] = ()
    client_requires: tuple[str, ...] = ()
    #: ``rpc.system.name`` of its calls in telemetry (OpenTelemetry's RPC conventions); empty: ``name``
    rpc_system: str = ""
    #: The port a URL of each scheme means when it names none (``server.port`` in telemetry).
    default_ports: Mapping[str, int] = field(default_factory=dict)
    #: Its URLs name something in this process rather than a host (``server.address`` is the name).
    in_process: bool = False
    #: ``Context.peer`` is the caller's network address (``network.peer.*`` in telemetry).
    network_peer: bool = False
    #: Option name -> the name that replaced it: an unknown option that was renamed gets
    #: "OLD is now NEW" (docs/configuration.md keeps the list).
    renamed_options: Mapping[str, str] = field(default_factory=dict)
    #: What the transport does not do by design, capability name -> why (shared test suites skip
    #: their cases for it with that reason). Names in use: ``durable.dedupe`` (a call stored twice
    #: under one call id is delivered once), ``durable.redelivery_count`` (a call handed over by a
    #: stopped server counts the interrupted delivery in ``Context.delivery.attempt``).
    lacks: Mapping[str, str] = field(default_factory=dict)
    #: Its clients implement :class:`protobind.durable.DurableTransport` (durable calls): the error
    #: for a transport without them names the transports with.
    durable_calls: bool = False
    #: The documents its servers serve at their URL, ``"openapi"`` and/or ``"asyncapi"``: its clients
    #: implement :class:`protobind.reflection.ServesOpenAPI` / ``ServesAsyncAPI``, and
    #: ``protobind openapi|asyncapi URL`` takes its URLs.
    documents: frozenset[str] = field(default_factory=frozenset)

    def check_installed(self, *, server: bool) -> None:
        """Fail with the pip command to run when a library this side needs is not installed
        (found without importing it)."""
        for module in self.server_requires if server else self.client_requires:
            if not _installed(module):
                raise ImportError(
                    f"the {self.name} transport needs the package {module!r}: "
                    f"pip install 'protobind[{self.extra}]'"
                )


def listen_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket listening on ``host:port`` (port 0: a free one), for a transport's server.

    Each address ``host`` resolves to is tried in turn; when none can be bound, the ``OSError``
    is one line naming the address and the system's reason (``cannot listen on 127.0.0.1:8080:
    Address already in use``), with the system's ``errno``. ``reuse_port`` sets SO_REUSEPORT, so
    several processes accept on one port (``protobind serve --workers N``).
    """
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        # The protocol must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets
        # whose proto says TCP, and without it Nagle's algorithm holds the body of every response
        # until the client's delayed ACK (40 ms per call).
        candidates = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise _listen_error(shown, exc) from None
    first: OSError | None = None
    for family, kind, proto, _, address in candidates:
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError as exc:
            if sock is not None:
                sock.close()
            first = first or exc
            continue
        return sock
    raise _listen_error(shown, first or OSError("no address"))


def _listen_error(shown: str, exc: OSError) -> OSError:
    error = OSError(f"cannot listen on {shown}: {network_reason(exc)}")
    error.errno = exc.errno
    return error


def network_reason(exc: OSError) -> str:
    """The system's reason for a failed network operation, without a library's wrapping around it:
    ``Connection refused`` rather than asyncio's ``[Errno 111] Connect call failed ('127.0.0.1', 4222)``."""
    if isinstance(exc, ConnectionError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, TimeoutError) and not exc.strerror:
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_registry: dict[str, Transport] | None = None


def _load() -> dict[str, Transport]:
    global _registry
    if _registry is None:
        found: dict[str, Transport] = {}
        for entry in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
            transport = entry.load()
            if not isinstance(transport, Transport):
                raise TypeError(
                    f"entry point {entry.name} = {entry.value} is not a protobind.transport.Transport"
                )
            found[transport.name] = transport
        _registry = found
    return _registry


def register(transport: Transport) -> None:
    """Add (or replace) a transport at run time; entry points are the usual way."""
    _load()[transport.name] = transport


def all_transports() -> list[Transport]:
    """Every registered transport, in a stable order (built-ins first, then by name)."""
    builtin = ("inproc", "grpc", "http", "nats", "memory")

    def order(transport: Transport) -> tuple[int, str]:
        name = transport.name
        return (builtin.index(name) if name in builtin else len(builtin), name)

    return sorted(_load().values(), key=order)


def transport_named(name: str) -> Transport:
    """The transport called ``name`` (``"grpc"``, ...)."""
    transports = _load()
    if name not in transports:
        raise ValueError(
            f"unknown transport {name!r}; registered: {', '.join(t.name for t in all_transports())}"
        )
    return transports[name]


def transport_for_url(url: str) -> Transport:
    """The transport serving ``url``'s scheme."""
    scheme = urlsplit(url).scheme
    for transport in all_transports():
        if scheme in transport.schemes:
            return transport
    known = ", ".join(f"{s}://" for t in all_transports() for s in t.schemes)
    raise ValueError(f"unsupported URL {_safe(url)!r}: the scheme must be one of {known}")


def _safe(url: str) -> str:
    return redact(url)


def query_options(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options from ``url``'s query string, overridden by ``options``."""
    merged: dict[str, Any] = dict(parse_qsl(urlsplit(url).query))
    if options:
        merged.update(options)
    return merged


def check_options(transport: Transport, options: Mapping[str, Any], *, server: bool) -> None:
    """Refuse option names the transport does not know for this side (a typo is an error, not a
    silently ignored setting)."""
    known = transport.server_options if server else transport.client_options
    unknown = sorted(set(options) - known)
    if unknown:
        from .options import closest

        side = "server" if server else "client"
        renamed = transport.renamed_options
        hints = [
            f"{old} is now {renamed[old]}"
            if renamed.get(old) in known
            else f"{old + ': ' if len(unknown) > 1 else ''}did you mean {close}?"
            for old in unknown
            if renamed.get(old) in known or (close := closest(old, known))
        ]
        raise ValueError(
            f"unknown {transport.name} {side} option(s) {', '.join(unknown)}"
            + (f" ({'; '.join(hints)})" if hints else "")
            + f"; known: {', '.join(sorted(known))}"
        )


def lazy_serve(module: str) -> ServeFunction:
    """``serve`` of ``module`` (absolute name), imported at the first call: a transport package
    declares its ``TRANSPORT`` without importing its library. The module checks its own function
    against :data:`ServeFunction` (``_CHECK: ServeFunction = serve``), so mypy still sees it."""

    async def serve(endpoints: EndpointTable, url: str, options: Options) -> ServerBinding:
        function: ServeFunction = importlib.import_module(module).serve
        return await function(endpoints, url, options)

    return serve


def lazy_dial(module: str) -> DialFunction:
    """``dial`` of ``module``, imported at the first call (see :func:`lazy_serve`)."""

    async def dial(url: str, options: Options) -> ClientTransport:
        function: DialFunction = importlib.import_module(module).dial
        return await function(url, options)

    return dial


def named_harness(template: str) -> TestHarness:
    """The test harness of an in-process transport: a fresh name per server, ``template`` with
    ``{}`` replaced by a counter (``"inproc://test-{}"``)."""
    names = itertools.count()

    @contextlib.asynccontextmanager
    async def harness() -> AsyncIterator[Callable[[], str]]:
        yield lambda: template.format(next(names))

    return harness


def loopback_harness(scheme: str) -> TestHarness:
    """The test harness of a socket transport that needs nothing started first: port 0 on
    127.0.0.1, a free port for every server."""

    @contextlib.asynccontextmanager
    async def harness() -> AsyncIterator[Callable[[], str]]:
        yield lambda: f"{scheme}://127.0.0.1:0"

    return harness
