"""The ASGI servers besides uvicorn that can run the HTTP binding's app (option ``asgi_server``).

Each runs inside the caller's event loop on the socket the binding opened (so the address, port 0
and ``reuse_port`` behave as with uvicorn), leaves the process's logging configuration and signal
handlers alone, and is set to the same limits as uvicorn with zttp: the keep-alive idle time, what
is buffered of a request head, 128 concurrent HTTP/2 streams per connection. The limits that live
in the app (``max_message_size``, ``max_header_size``, ``max_concurrency``, ``max_pending``,
``body_timeout``) apply whatever the server. ``max_connections`` is uvicorn's: neither server
here can answer 503 beyond a number of connections, so the binding refuses that option with them
(server.py).

- hypercorn: HTTP/1.1 and HTTP/2 (h2c with prior knowledge or TLS ALPN ``h2``) with the ASGI
  trailers extension, so gRPC is served too.
- granian: HTTP/1.1 and HTTP/2 in Rust (hyper); no ASGI trailers, so a gRPC request is answered
  with the "trailers-only" ``unimplemented`` status an HTTP/1.1 connection gets (grpc.py), while
  Connect, gRPC-Web and REST are served. Embedded through its ``granian.server.embed`` server;
  its logging is set up incrementally (only the level of its own logger), since a full logging
  configuration would close every handler the application installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

from ..limits import ServerLimits
from ._header_limit import h11_buffer
from ._options import _KEEP_ALIVE, MAX_CONCURRENT_STREAMS, MAX_HEADER_BYTES

__all__ = ["Running", "Tls", "start_granian", "start_hypercorn"]


@dataclass(frozen=True)
class Tls:
    """The PEM files of an ``https://`` binding (``ca``: require client certificates it signed)."""

    cert: str
    key: str
    ca: str | None = None


class Running(Protocol):
    """A server started by the binding, stopped by it."""

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let the calls in flight finish for ``grace`` seconds (None: as long as
        they take), then end the rest."""


async def _stop_task(task: asyncio.Task[None], grace: float | None) -> None:
    """Wait for a server's own graceful stop, ``grace`` seconds and a second more at most, then cancel it."""
    try:
        await asyncio.wait_for(asyncio.shield(task), None if grace is None else grace + 1.0)
    except asyncio.TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _started(task: asyncio.Task[None]) -> None:
    """Let the server's task run until it waits, and raise what it failed with, if it did."""
    for _ in range(3):
        await asyncio.sleep(0)
    if task.done():
        task.result()


class _Tracked:
    """granian's app: the tasks of the requests it is running (to cancel when the grace is over),
    and the rest of an HTTP/1.1 request body read after the app answered early.

    The app answers some requests before their body is complete (too large, or a client stream
    failed); hyper then closes the connection with the rest of the body unread, and the kernel's
    reset for that data can destroy the answer before the client reads it (measured: gRPC-Web
    clients got a failed request instead of the status). So the body is read to its end, and
    dropped, before the request is done: at most ``limit`` more bytes (``max_message_size``) within
    ``seconds`` (``body_timeout``).
    """

    def __init__(self, app: Any, limit: int, seconds: float) -> None:
        self.app = app
        self.limit = limit
        self.seconds = seconds
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        ended = scope["type"] != "http" or scope.get("http_version") != "1.1"

        async def watched() -> Any:
            nonlocal ended
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                ended = True
            return message

        try:
            await self.app(scope, watched, send)
            if not ended:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._drain(watched), self.seconds)
        finally:
            self.tasks.discard(task)

    async def _drain(self, receive: Any) -> None:
        left = self.limit
        while left > 0:
            message = await receive()
            left -= len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


def _h2_header_list(limits: ServerLimits) -> int:
    """The HTTP/2 header list size a server announces: zttp's 64 KiB, or more for a larger
    ``max_header_size``; the app answers 431 between the two."""
    return max(MAX_HEADER_BYTES, h11_buffer(limits.max_header_size))


# --- hypercorn ------------------------------------------------------------------------------------


@dataclass
class _Hypercorn:
    config: Any
    shutdown: asyncio.Event
    task: asyncio.Task[None]
    sock: socket.socket

    async def stop(self, grace: float | None) -> None:
        if not self.task.done():
            # hypercorn closes its listener, then waits this long for the open connections
            self.config.graceful_timeout = grace
            self.shutdown.set()
            await _stop_task(self.task, grace)
        self.sock.close()


async def start_hypercorn(app: Any, sock: socket.socket, tls: Tls | None, limits: ServerLimits) -> Running:
    """Serve ``app`` with hypercorn on the listening ``sock`` (TLS with ALPN ``h2`` when ``tls``)."""
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Config, Sockets
    from hypercorn.utils import wrap_app

    config = Config()
    config.accesslog = None
    # a Logger is used as it is: the application's logging configuration decides where it goes
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    config.keep_alive_timeout = _KEEP_ALIVE
    # hypercorn ends a connection after this many requests (1,000 by default) by closing its HTTP/2
    # state at once: the client's next frames are then a protocol error, and every call in flight
    # on the connection fails (a grpc.aio channel failed after about 1,000 calls, GOAWAY
    # PROTOCOL_ERROR). No lifetime limit, as with granian.
    config.keep_alive_max_requests = 2**62
    config.h11_max_incomplete_size = h11_buffer(limits.max_header_size)
    config.h2_max_header_list_size = _h2_header_list(limits)
    config.h2_max_concurrent_streams = MAX_CONCURRENT_STREAMS
    if tls is not None:
        config.certfile, config.keyfile = tls.cert, tls.key
        if tls.ca is not None:
            config.ca_certs = tls.ca
            config.verify_mode = ssl.CERT_REQUIRED
        config.create_ssl_context()  # a bad certificate or key fails here, at start
    sockets = Sockets(
        secure_sockets=[sock] if tls is not None else [],
        insecure_sockets=[] if tls is not None else [sock],
        quic_sockets=[],
    )
    shutdown = asyncio.Event()
    serving = worker_serve(
        wrap_app(app, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=sockets,
        shutdown_trigger=shutdown.wait,
    )
    task = asyncio.get_running_loop().create_task(serving, name="protobind http (hypercorn)")
    await _started(task)
    return _Hypercorn(config, shutdown, task, sock)


# --- granian --------------------------------------------------------------------------------------


#: A logging configuration that only sets levels: granian applies it with logging.config.dictConfig,
#: which, given a complete configuration, would close the application's handlers.
_LEVEL_ONLY: dict[str, Any] = {
    "version": 1,
    "incremental": True,
    "handlers": {},
    "formatters": {},
    "loggers": {},
}


@dataclass
class _Granian:
    server: Any
    task: asyncio.Task[None]
    sock: socket.socket
    app: _Tracked

    async def stop(self, grace: float | None) -> None:
        if not self.task.done():
            # granian stops accepting and ends its task once the requests in flight are answered;
            # those still running after the grace are cancelled (the app answers them UNAVAILABLE)
            self.server.stop()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), grace)
            except asyncio.TimeoutError:
                self.app.cancel()
                await _stop_task(self.task, 0.0)
        self.sock.close()


async def start_granian(app: Any, sock: socket.socket, tls: Tls | None, limits: ServerLimits) -> Running:
    """Serve ``app`` with granian on the listening ``sock``."""
    from granian._granian import SocketHolder
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings, HTTP2Settings
    from granian.log import LogLevels
    from granian.server.embed import Server

    holder: Any = SocketHolder  # its stub declares no constructor
    listener = os.dup(sock.fileno())  # granian owns (and closes) its copy of the listening socket

    class _OnSocket(Server):
        """granian's embedded server, serving on the binding's socket instead of binding its own."""

        def _init_shared_socket(self) -> None:
            self._ssp = None
            # (fd, is a Unix socket, backlog), as granian's own pickling of it has them
            self._shd = holder(listener, False, 2048)

    tls_settings: dict[str, Any] = {}
    if tls is not None:
        from pathlib import Path

        tls_settings = {"ssl_cert": Path(tls.cert), "ssl_key": Path(tls.key)}
        if tls.ca is not None:
            tls_settings.update(ssl_ca=Path(tls.ca), ssl_client_verify=True)
    tracked = _Tracked(app, limits.max_message_size, limits.body_timeout)
    try:
        server = _OnSocket(
            tracked,
            interface=Interfaces.ASGINL,  # no lifespan: the app has nothing to start or stop
            http=HTTPModes.auto,
            websockets=False,
            backlog=2048,
            # requests granian hands to the app at once: the app's own limiter answers beyond
            backpressure=limits.admitted,
            # what hyper buffers of a request head (the app refuses beyond max_header_size)
            http1_settings=HTTP1Settings(
                max_buffer_size=h11_buffer(limits.max_header_size),
                # hyper times the wait for a request head from the end of the previous request,
                # so this is also the idle time of a keep-alive connection (milliseconds)
                header_read_timeout=int(_KEEP_ALIVE * 1000),
            ),
            http2_settings=HTTP2Settings(
                max_concurrent_streams=MAX_CONCURRENT_STREAMS, max_headers_size=_h2_header_list(limits)
            ),
            log_level=LogLevels.error,
            log_dictconfig=_LEVEL_ONLY,
            **tls_settings,
        )
    except BaseException:
        os.close(listener)
        raise
    task = asyncio.get_running_loop().create_task(server.serve(), name="protobind http (granian)")
    await _started(task)
    return _Granian(server, task, sock, tracked)
