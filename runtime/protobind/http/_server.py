"""The HTTP server binding: an ASGI server (uvicorn by default; option ``asgi_server``) running the
Connect/gRPC/REST ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._server import Server
from ..endpoints import EndpointTable
from ..limits import ServerLimits
from ..options import OptionReader
from ..transport import ServeFunction, ServerBinding, listen_socket
from ._asgi_servers import Running, Tls
from ._header_limit import h11_buffer, protocol_classes
from ._options import (
    _KEEP_ALIVE,
    ASGI_SERVERS,
    HTTP_PARSERS,
    HTTPTOOLS_METHODS,
    _prefix,
    _require,
    _server_options,
    reader,
)

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

__all__ = [
    "HttpBinding",
    "asgi_app",
    "serve",
]


# --- server ---------------------------------------------------------------------------------------


def asgi_app(
    server_or_services: Server | Iterable[object], prefix: str, options: Mapping[str, Any]
) -> ASGIApp:
    """The ASGI app of :func:`protobind.http.asgi_app`, which took ``prefix`` (the path the Connect
    routes live under) out of ``options`` and checked the rest (this transport's server options)."""
    from ._app import build_app

    server = server_or_services if isinstance(server_or_services, Server) else Server(server_or_services)
    return build_app(server.table(), _server_options(options, prefix))


@dataclass
class HttpBinding(ServerBinding):
    """A running ASGI server for one ``http://`` / ``https://`` URL."""

    _url: str
    _running: Running

    @property
    def url(self) -> str:
        return self._url

    async def stop(self, grace: float | None) -> None:
        await self._running.stop(grace)


@dataclass
class _Uvicorn:
    server: uvicorn.Server
    main: asyncio.Task[None]
    sock: socket.socket

    async def stop(self, grace: float | None) -> None:
        if self.main.done():
            return
        self.main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.main
        # typed int, but uvicorn hands it to asyncio.wait_for, which takes fractions of a second
        self.server.config.timeout_graceful_shutdown = None if grace is None else max(grace, 0.0)  # type: ignore[assignment]
        await self.server.shutdown(sockets=[self.sock])


def _asgi_server(options: Mapping[str, Any]) -> str:
    """The ``asgi_server`` option, with the options only uvicorn honours refused for the others."""
    name = str(options.get("asgi_server", "uvicorn")).strip().lower()
    if name not in ASGI_SERVERS:
        raise ValueError(f"http option asgi_server must be one of {', '.join(ASGI_SERVERS)}, not {name!r}")
    if name != "uvicorn":
        for option in ("http_parser", "max_connections"):
            if option in options:
                raise ValueError(
                    f"http option {option} applies to asgi_server=uvicorn only: {name} cannot honour it"
                )
        package = "granian" if name == "granian" else "hypercorn"
        try:
            importlib.import_module(package)
        except ImportError:
            raise ImportError(
                f"asgi_server={name} needs {package}: pip install 'protobind[http-servers]'"
            ) from None
    return name


def _parser(server: EndpointTable, options: Mapping[str, Any]) -> str:
    """The ``http_parser`` option, checked against the REST routes it would have to serve."""
    parser = str(options.get("http_parser", "zttp")).strip().lower()
    if parser not in HTTP_PARSERS:
        raise ValueError(f"http option http_parser must be one of {', '.join(HTTP_PARSERS)}, not {parser!r}")
    if parser == "zttp":
        try:
            importlib.import_module("zttp")
        except ImportError:
            raise ImportError("http_parser=zttp (HTTP/2) needs zttp: pip install 'protobind[http]'") from None
    if parser == "httptools":
        from ._rule import collect_bindings

        try:
            importlib.import_module("httptools")
        except ImportError:
            raise ImportError(
                "http_parser=httptools needs httptools: pip install 'protobind[speed]'"
            ) from None
        custom = sorted({b.http_method for b in collect_bindings(server.services)} - HTTPTOOLS_METHODS)
        if custom:
            raise ValueError(
                f"http_parser=httptools cannot serve the REST method(s) {', '.join(custom)}: "
                "its parser rejects HTTP methods it does not know; use http_parser=h11"
            )
    return parser


def _tls(url: str, scheme: str, read: OptionReader) -> Tls | None:
    """The TLS files for ``https://`` (none for ``http://``, where TLS options are an error)."""
    tls_given = [name for name in ("tls_ca", "tls_cert", "tls_key") if read.given(name)]
    if tls_given and scheme != "https":
        raise ValueError(
            f"TLS options ({', '.join(tls_given)}) were given for a plain http:// URL: use https://"
        )
    if scheme != "https":
        return None
    cert, key, ca = read.file("tls_cert"), read.file("tls_key"), read.file("tls_ca")
    if cert is None or key is None:
        raise ValueError(f"{url}: https:// needs the options tls_cert and tls_key (PEM files)")
    return Tls(cert, key, ca)


def _uvicorn_tls(tls: Tls | None) -> dict[str, Any]:
    if tls is None:
        return {}
    settings: dict[str, Any] = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
    if tls.ca is not None:  # mutual TLS: only clients with a certificate signed by these CAs
        settings.update(ssl_ca_certs=tls.ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return settings


async def serve(server: EndpointTable, url: str, options: Mapping[str, Any]) -> HttpBinding:
    """Start the ASGI server with :func:`asgi_app` on ``url``'s host and port (port 0: any free port)."""
    _require("starlette")
    from ._app import build_app

    parts = urlsplit(url)
    host = parts.hostname or "0.0.0.0"
    try:
        port = parts.port or 0
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    prefix = _prefix(parts.path)
    settings = _server_options(options, prefix)
    app = build_app(server, settings)
    read = reader(options)
    tls = _tls(url, parts.scheme, read)
    asgi_server = _asgi_server(options)
    # configured (and its options checked) before the port is taken
    start: Callable[[socket.socket], Awaitable[Running]]
    if asgi_server == "hypercorn":
        from ._asgi_servers import start_hypercorn

        start = functools.partial(start_hypercorn, app, tls=tls, limits=settings.limits)
    elif asgi_server == "granian":
        from ._asgi_servers import start_granian

        start = functools.partial(start_granian, app, tls=tls, limits=settings.limits)
    else:
        start = _uvicorn(server, app, read, tls, settings.limits, options)
    sock = listen_socket(host, port, reuse_port=read.flag("reuse_port", False))
    try:
        running = await start(sock)
    except BaseException:
        sock.close()
        raise
    real_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    bound = f"{parts.scheme}://{shown_host}:{real_port}{prefix}"
    return HttpBinding(bound, running)


def _uvicorn(
    server: EndpointTable,
    app: ASGIApp,
    read: OptionReader,
    tls: Tls | None,
    limits: ServerLimits,
    options: Mapping[str, Any],
) -> Callable[[socket.socket], Awaitable[Running]]:
    """uvicorn configured (its options checked now), to start on a socket."""
    uvicorn = _require("uvicorn")
    parser = _parser(server, options)
    max_header_size = limits.max_header_size
    config = uvicorn.Config(
        app,
        http=parser,
        # zttp answers HTTP/1.1 and HTTP/2 (TLS ALPN "h2", or h2c with prior knowledge) on one port
        http2=parser == "zttp",
        lifespan="off",
        # the embedding application owns logging; uvicorn would otherwise reconfigure it
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=_KEEP_ALIVE,
        # uvicorn answers 503 (and closes) a request that arrives while this many connections are
        # open or requests in flight, the request's own connection included: hence the + 1
        limit_concurrency=read.positive_int("max_connections", limits.admitted) + 1,
        h11_max_incomplete_event_size=h11_buffer(max_header_size),
        **_uvicorn_tls(tls),
    )
    config.load()
    # the HTTP/1.1 parsers answer 431 when they give up on the size of the headers (header_limit.py)
    h1_class = protocol_classes(max_header_size)[parser]
    if parser == "zttp":
        from ._h2drain import DrainingAutoProtocol

        # retires HTTP/2 connections before zttp's lifetime stream limit takes them for a flood
        config.http_protocol_class = type(
            "BoundedAutoProtocol", (DrainingAutoProtocol,), {"h1_class": h1_class}
        )
    else:
        config.http_protocol_class = h1_class

    async def start(sock: socket.socket) -> Running:
        userver = uvicorn.Server(config)
        # Not uvicorn.Server.serve(): that would take over SIGINT/SIGTERM of the user's process.
        userver.lifespan = config.lifespan_class(config)
        await userver.startup(sockets=[sock])
        # main_loop refreshes the Date header once a second; stop() replaces its shutdown path
        main = asyncio.get_running_loop().create_task(userver.main_loop(), name="protobind http (uvicorn)")
        return _Uvicorn(userver, main, sock)

    return start


# mypy checks this module's serve against the transport interface (TRANSPORT imports it lazily)
_CHECK: ServeFunction = serve
