"""The call path every transport shares: :class:`Endpoint`, the frozen :class:`EndpointTable` a
binding serves, and :func:`invoke_unary` / :func:`invoke_stream`, which run one endpoint under the
call's deadline and concurrency limit and turn whatever it raises into an :class:`RpcError`.

This sits below :mod:`protobind.transport` (a transport's ``serve`` takes an ``EndpointTable``);
:class:`protobind.Server`, above the transports, builds the table and starts the bindings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from ._context import Context, DeadlineScope
from ._errors import INTERNAL_MESSAGE, Code, RpcError
from ._interceptors import Handler
from ._metadata import Metadata
from .limits import ConcurrencyLimit
from .method import MethodInfo, ServiceInfo

if TYPE_CHECKING:
    from .telemetry import Telemetry

__all__ = [
    "INTERNAL_MESSAGE",
    "Endpoint",
    "EndpointTable",
    "check_response",
    "invoke_stream",
    "invoke_unary",
    "to_rpc_error",
]

# the logger of the server side, whichever module logs
logger = logging.getLogger("protobind.server")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One servable method: its description and its handler with the interceptors applied.

    For a one-way method, ``handler`` acknowledges: it runs the interceptors, starts the user's
    handler in the background and returns ``Empty`` (see :class:`BackgroundCalls`). ``direct``
    is then the interceptors and the user's handler in one, for a transport that has nobody to
    acknowledge (a broker message without a reply address): it runs that where it runs any
    call, under its own concurrency limit, and logs the outcome.
    """

    method: MethodInfo[Any, Any]
    handler: Handler
    direct: Handler | None = None


@dataclass(frozen=True, slots=True)
class EndpointTable:
    """What a binding serves: a frozen view of a :class:`Server`'s services and endpoints, taken
    when the server starts (registering a service after that is an error)."""

    services: tuple[ServiceInfo, ...]
    #: keyed by ``/{package}.{Service}/{Method}``
    endpoints: Mapping[str, Endpoint]
    #: the server's telemetry, for a binding that makes spans of its own (a broker consumer:
    #: ``Telemetry.consumer_span``); the endpoints' handlers already carry the per-call interceptor
    telemetry: Telemetry | None = None
    #: The access check of the server's interceptors that have one (``protobind.auth``), for what
    #: a binding serves besides the endpoints (health, reflection, OpenAPI, discovery):
    #: ``authorize(metadata, method)`` gives ``None`` to allow, else the error to answer with.
    authorize: Callable[[Metadata, str], RpcError | None] | None = None


def to_rpc_error(exc: BaseException, context: Context | None = None) -> RpcError:
    """The error a caller sees for ``exc``. Unexpected exceptions are logged and become INTERNAL
    with a generic message: exception text never leaves the process."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return RpcError(Code.CANCELLED, "call cancelled")
    # the same line telemetry logs for a failed call (there with duration and trace id): with
    # telemetry on, a handler's exception is logged there and reaches here as an RpcError
    method = context.method if context is not None else "?"
    transport = context.transport if context is not None else "?"
    logger.error(
        "call failed method=%s transport=%s code=INTERNAL",
        method,
        transport,
        exc_info=exc,
        extra={"rpc_method": method, "rpc_transport": transport, "rpc_code": "INTERNAL"},
    )
    return RpcError(Code.INTERNAL, INTERNAL_MESSAGE)


def check_response(method: MethodInfo[Any, Any], response: Any) -> Message:
    """``response`` if it is of ``method``'s response type; else logged, and INTERNAL raised."""
    if type(response) is not method.output_type:
        if isinstance(response, method.output_type):
            return response  # type: ignore[no-any-return]
        logger.error(
            "handler of %s returned %s, expected %s",
            method.full_name,
            type(response).__name__,
            method.output_type.DESCRIPTOR.full_name,
        )
        raise RpcError(Code.INTERNAL, INTERNAL_MESSAGE)
    return response  # type: ignore[no-any-return]


async def invoke_unary(
    endpoint: Endpoint,
    request: Any,
    context: Context,
    *,
    enforce_deadline: bool = True,
    limit: ConcurrencyLimit | None = None,
) -> Message:
    """Run a unary or client-streaming endpoint under the context's deadline.

    Returns the response message or raises :class:`RpcError` (never anything else but
    ``CancelledError`` when the transport itself cancels the task). A transport whose protocol
    stack already cancels the handler at the deadline (gRPC does) passes
    ``enforce_deadline=False`` to skip the timer this would cost on every call. With ``limit``,
    the call holds one of its slots while the handler runs (waiting for one counts against the
    deadline; a full queue is RESOURCE_EXHAUSTED).
    """
    try:
        if context.deadline is None or not enforce_deadline:
            response = await _limited(endpoint, request, context, limit)
        else:
            async with DeadlineScope(context.deadline):
                response = await _limited(endpoint, request, context, limit)
        return check_response(endpoint.method, response)
    except RpcError:
        raise
    except asyncio.CancelledError:
        context.cancel()
        raise
    except Exception as exc:
        raise to_rpc_error(exc, context) from None


async def _limited(endpoint: Endpoint, request: Any, context: Context, limit: ConcurrencyLimit | None) -> Any:
    if limit is None:
        return await endpoint.handler(request, context)
    await limit.acquire()
    try:
        return await endpoint.handler(request, context)
    finally:
        limit.release()


async def invoke_stream(
    endpoint: Endpoint,
    request: Any,
    context: Context,
    *,
    enforce_deadline: bool = True,
    limit: ConcurrencyLimit | None = None,
) -> AsyncGenerator[Message, None]:
    """Run a server- or bidi-streaming endpoint; yield its responses, raise :class:`RpcError`.

    The deadline applies to the whole stream, in the task that iterates this generator
    (``enforce_deadline`` and ``limit`` as for :func:`invoke_unary`; the slot is held until the
    stream ends).
    """
    scope = DeadlineScope(context.deadline if enforce_deadline else None)
    acquired = False
    try:
        async with scope:
            if limit is not None:
                await limit.acquire()
                acquired = True
            responses = await endpoint.handler(request, context)
            try:
                async for response in responses:
                    yield check_response(endpoint.method, response)
            finally:
                # the handler's own stream is closed with this one, not later by the collector
                # (its finally blocks run before the binding moves on)
                aclose = getattr(responses, "aclose", None)
                if aclose is not None:
                    await aclose()
    except RpcError:
        raise
    except (asyncio.CancelledError, GeneratorExit):
        context.cancel()
        raise
    except Exception as exc:
        raise to_rpc_error(exc, context) from None
    finally:
        if acquired and limit is not None:
            limit.release()
