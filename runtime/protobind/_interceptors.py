"""Interceptors: one interface for the server side, one for the client side, for every method
kind and every transport.

An interceptor sees the call in its untyped form. ``request`` is a message for unary and
server-streaming methods and an ``AsyncIterator`` of messages for client and bidi streaming; the
result of ``next`` is a message for unary and client streaming and an ``AsyncIterator`` for
server and bidi streaming. ``context.method_info.kind`` / ``call.method.kind`` tell which.
Raise :class:`protobind.RpcError` to refuse a call (authentication, rate limits, ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ._context import CallInfo, Context

__all__ = [
    "ClientInterceptor",
    "Handler",
    "Invoker",
    "ServerInterceptor",
    "chain_client",
    "chain_server",
]

#: The untyped server handler: ``await handler(request, context)``.
Handler = Callable[[Any, Context], Awaitable[Any]]
#: The untyped client invoker: ``await invoker(request, call)``.
Invoker = Callable[[Any, CallInfo], Awaitable[Any]]


class ServerInterceptor(Protocol):
    async def intercept(self, handler: Handler, request: Any, context: Context) -> Any:
        """Run around ``handler``; call ``await handler(request, context)`` to go on."""
        ...


class ClientInterceptor(Protocol):
    async def intercept(self, invoker: Invoker, request: Any, call: CallInfo) -> Any:
        """Run around ``invoker``; call ``await invoker(request, call)`` to go on."""
        ...


def chain_server(handler: Handler, interceptors: Sequence[ServerInterceptor]) -> Handler:
    """Wrap ``handler`` so the first interceptor runs outermost."""
    for interceptor in reversed(interceptors):
        handler = _bind_server(interceptor, handler)
    return handler


def chain_client(invoker: Invoker, interceptors: Sequence[ClientInterceptor]) -> Invoker:
    """Wrap ``invoker`` so the first interceptor runs outermost."""
    for interceptor in reversed(interceptors):
        invoker = _bind_client(interceptor, invoker)
    return invoker


def _bind_server(interceptor: ServerInterceptor, inner: Handler) -> Handler:
    async def handler(request: Any, context: Context) -> Any:
        return await interceptor.intercept(inner, request, context)

    return handler


def _bind_client(interceptor: ClientInterceptor, inner: Invoker) -> Invoker:
    async def invoker(request: Any, call: CallInfo) -> Any:
        return await interceptor.intercept(inner, request, call)

    return invoker
