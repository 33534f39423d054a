"""``max_header_size`` on the HTTP port: request headers beyond it are refused with 431.

A header block is measured as HTTP/2 measures a header list (RFC 9113, SETTINGS_MAX_HEADER_LIST_SIZE)
and gRPC core its metadata: every field's name and value plus 32 bytes. Two places refuse:

- the ASGI app (:class:`HeaderLimit`, in front of everything else), for every parser and HTTP
  version: ``431 Request Header Fields Too Large`` with a Connect error body
  (``resource_exhausted``), or a gRPC / gRPC-Web answer with ``grpc-status`` RESOURCE_EXHAUSTED,
  whose clients do not read HTTP statuses;
- the HTTP/1.1 parsers, so that what they buffer before the app sees anything stays bounded: their
  own "too large" failure is answered 431 instead of uvicorn's 400. zttp has fixed bounds (a
  64 KiB head, 16 KiB per field line, 100 fields); h11 is given ``max_header_size`` plus room for
  the request line; httptools, which has no bound of its own, counts the fields as they arrive.

Neither answer repeats the headers: the message names the limit only.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .._errors import Code, RpcError
from ._wire import error_body

if TYPE_CHECKING:
    import asyncio

    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["FIELD_OVERHEAD", "HeaderLimit", "h11_buffer", "protocol_classes", "too_large"]

#: What each header field counts beyond its name and value (RFC 9113, section 6.5.2).
FIELD_OVERHEAD = 32
#: Room h11 gets beyond ``max_header_size`` for the request line.
_REQUEST_LINE_ROOM = 8 * 1024


def too_large(limit: int) -> RpcError:
    """The error of a request whose headers exceed ``limit`` (names the option, never a header)."""
    return RpcError(
        Code.RESOURCE_EXHAUSTED, f"request headers are larger than {limit} bytes (max_header_size)"
    )


class HeaderLimit:
    """ASGI middleware refusing HTTP requests whose headers exceed ``limit`` bytes."""

    __slots__ = ("app", "limit")

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            size = FIELD_OVERHEAD * len(headers)
            for name, value in headers:
                size += len(name) + len(value)
            if size > self.limit:
                await _refuse(headers, send, too_large(self.limit))
                return
        await self.app(scope, receive, send)


async def _refuse(headers: list[tuple[bytes, bytes]], send: Send, error: RpcError) -> None:
    from ._grpc import grpc_protocol

    grpc = grpc_protocol(headers)
    if grpc is not None:
        # gRPC clients go by grpc-status (a trailers-only answer), not by the HTTP status
        message = error.message.encode()
        response = [
            (b"content-type", grpc.content_type),
            (b"grpc-status", b"%d" % error.code),
            (b"grpc-message", message),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": response})
        await send({"type": "http.response.body", "body": b""})
        return
    body = error_body(error)
    response = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 431, "headers": response})
    await send({"type": "http.response.body", "body": body})


def _raw_431(transport: asyncio.Transport, limit: int) -> None:
    """Answer 431 on an HTTP/1.1 connection whose parser gave up on the headers, and close it."""
    body = error_body(too_large(limit))
    transport.write(
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    transport.close()


def protocol_classes(limit: int) -> dict[str, type[Any]]:
    """uvicorn protocol classes for each HTTP/1.1 parser, answering 431 when their parser gives up
    on the size of the headers (keyed by the ``http_parser`` option). Imports uvicorn: only the
    server binding calls it, never :func:`~protobind.http.asgi_app`."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    classes: dict[str, type[Any]] = {}
    with contextlib.suppress(ImportError):  # zttp and httptools are extras
        classes["zttp"] = _zttp_class(limit)
    with contextlib.suppress(ImportError):
        classes["httptools"] = _httptools_class(limit)

    class BoundedH11(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            if len(self.conn.trailing_data[0]) > h11_buffer(limit):
                _raw_431(self.transport, limit)
            else:
                super().send_400_response(msg)

    classes["h11"] = BoundedH11
    return classes


def _zttp_class(limit: int) -> type[Any]:
    import zttp

    from ._h1server import CoalescingH1Protocol

    class BoundedZttp(CoalescingH1Protocol):
        def data_received(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            try:
                self.handle_events(self.conn.receive_event(data))
            except zttp.RemoteProtocolError as exc:
                # zttp has one error class; its size bounds say so in the text
                if "size limit" in str(exc):
                    _raw_431(self.transport, limit)
                else:
                    self.handle_remote_protocol_error()

    return BoundedZttp


def _httptools_class(limit: int) -> type[Any]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpTools(HttpToolsProtocol):
        header_bytes = 0
        refused = False

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.header_bytes = 0

        def on_header(self, name: bytes, value: bytes) -> None:
            self.header_bytes += len(name) + len(value) + FIELD_OVERHEAD
            if self.header_bytes > limit:
                self.refused = True
                raise ValueError("request headers too large")  # the parser stops: send_400_response
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            if self.refused:
                _raw_431(self.transport, limit)
            else:
                super().send_400_response(msg)

    return BoundedHttpTools


def h11_buffer(limit: int) -> int:
    """h11's ``max_incomplete_event_size`` for ``max_header_size`` ``limit``."""
    return limit + _REQUEST_LINE_ROOM
