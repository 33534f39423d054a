"""The access log: one line per call, on every transport, like a web server's.

``Server(..., access_log=True)`` installs :class:`AccessLog`, a server interceptor that logs each
call when it ends on the ``protobind.access`` logger, at ``INFO``::

    grpc greeter.v1.Greeter/SayHello OK 0.42ms 127.0.0.1:56504

transport, method, status code, duration (from the interceptors' start to the last response) and
peer (``-`` when the transport has none). The same values are on the record as ``rpc_transport``,
``rpc_method``, ``rpc_code``, ``duration_ms`` and ``peer``, for JSON formatters. ``protobind
serve`` turns it on unless told otherwise (``--no-access-log``, ``[server] access_log = false``)
and sets up logging with :func:`setup_logging`. With the logger's level above ``INFO`` a call
pays one level check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ._context import Context
from ._errors import Code, RpcError
from ._interceptors import Handler

__all__ = ["LOG_FORMAT", "AccessLog", "setup_logging"]

logger = logging.getLogger("protobind.access")

#: The format of the handler :func:`setup_logging` installs.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "info") -> None:
    """Log to standard error at ``level`` (``debug`` ... ``critical``), as ``protobind serve`` does:
    a handler on the root logger unless the application installed one, and the root level."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level.upper())


class AccessLog:
    """The server interceptor that writes the access log (see the module docstring)."""

    async def intercept(self, handler: Handler, request: Any, context: Context) -> Any:
        """Run the call; log its line when it ends (for a stream, when the last response went)."""
        if not logger.isEnabledFor(logging.INFO):
            return await handler(request, context)
        start = time.perf_counter()
        try:
            result = await handler(request, context)
        except BaseException as exc:
            _log(context, _code(exc, context), start)
            raise
        method = context.method_info
        if method.kind.server_streams:
            return _stream(result, context, start)
        # a handler's wrong answer is INTERNAL to the caller (endpoints.invoke_unary); a one-way
        # handler's result is never looked at
        ok = method.oneway or isinstance(result, method.output_type)
        _log(context, Code.OK if ok else Code.INTERNAL, start)
        return result


async def _stream(responses: AsyncIterator[Any], context: Context, start: float) -> AsyncIterator[Any]:
    code = Code.OK
    try:
        async for response in responses:
            yield response
    except BaseException as exc:
        code = _code(exc, context)
        raise
    finally:
        aclose = getattr(responses, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            _log(context, code, start)


def _code(exc: BaseException, context: Context) -> Code:
    if isinstance(exc, RpcError):
        return exc.code
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        deadline = context.deadline
        expired = deadline is not None and time.monotonic() >= deadline
        return Code.DEADLINE_EXCEEDED if expired else Code.CANCELLED
    return Code.INTERNAL


def _log(context: Context, code: Code, start: float) -> None:
    duration_ms = (time.perf_counter() - start) * 1000
    peer = context.peer or "-"
    logger.info(
        "%s %s %s %.2fms %s",
        context.transport,
        context.method,
        code.name,
        duration_ms,
        peer,
        extra={
            "rpc_transport": context.transport,
            "rpc_method": context.method,
            "rpc_code": code.name,
            "duration_ms": round(duration_ms, 3),
            "peer": peer,
        },
    )
