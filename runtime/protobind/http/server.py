"""The HTTP server binding: uvicorn running the Connect/REST ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..endpoints import EndpointTable
from ..options import OptionReader
from ..server import Server
from ..transport import ServeFunction, ServerBinding, check_options, listen_socket
from .header_limit import h11_buffer, protocol_classes
from .options import _KEEP_ALIVE, HTTP_PARSERS, HTTPTOOLS_METHODS, _prefix, _require, _server_options, reader

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

__all__ = [
    "HttpBinding",
    "asgi_app",
    "serve",
]


# --- server ---------------------------------------------------------------------------------------


def asgi_app(server_or_services: Server | Iterable[object], **options: Any) -> ASGIApp:
    """The ASGI app serving ``server_or_services`` (a :class:`protobind.Server` or the service
    implementations), for mounting in another ASGI application.

    Takes the server options of this module (``max_message_size``, ``ignore_unknown_fields``,
    ``cors_origins``, ...) plus ``prefix``, a path the Connect routes live under.
    """
    from . import TRANSPORT
    from .app import build_app

    server = server_or_services if isinstance(server_or_services, Server) else Server(server_or_services)
    prefix = _prefix(str(options.pop("prefix", "")))
    check_options(TRANSPORT, options, server=True)
    return build_app(server.table(), _server_options(options, prefix))


@dataclass
class HttpBinding(ServerBinding):
    """A running uvicorn server for one ``http://`` / ``https://`` URL."""

    _url: str
    _server: uvicorn.Server
    _main: asyncio.Task[None]
    _socket: socket.socket

    @property
    def url(self) -> str:
        return self._url

    async def stop(self, grace: float | None) -> None:
        if self._main.done():
            return
        self._main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._main
        # typed int, but uvicorn hands it to asyncio.wait_for, which takes fractions of a second
        self._server.config.timeout_graceful_shutdown = None if grace is None else max(grace, 0.0)  # type: ignore[assignment]
        await self._server.shutdown(sockets=[self._socket])


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
        from .rule import collect_bindings

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


def _tls(url: str, scheme: str, read: OptionReader) -> dict[str, Any]:
    """uvicorn's TLS settings for ``https://`` (none for ``http://``, where TLS options are an error)."""
    tls_given = [name for name in ("tls_ca", "tls_cert", "tls_key") if read.given(name)]
    if tls_given and scheme != "https":
        raise ValueError(
            f"TLS options ({', '.join(tls_given)}) were given for a plain http:// URL: use https://"
        )
    if scheme != "https":
        return {}
    cert, key, ca = read.file("tls_cert"), read.file("tls_key"), read.file("tls_ca")
    if cert is None or key is None:
        raise ValueError(f"{url}: https:// needs the options tls_cert and tls_key (PEM files)")
    tls: dict[str, Any] = {"ssl_certfile": cert, "ssl_keyfile": key}
    if ca is not None:  # mutual TLS: only clients with a certificate signed by these CAs
        tls.update(ssl_ca_certs=ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return tls


async def serve(server: EndpointTable, url: str, options: Mapping[str, Any]) -> HttpBinding:
    """Start uvicorn with :func:`asgi_app` on ``url``'s host and port (port 0: any free port)."""
    uvicorn = _require("uvicorn")
    _require("starlette")
    from .app import build_app

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
    parser = _parser(server, options)
    max_header_size = settings.limits.max_header_size
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
        limit_concurrency=read.positive_int("max_connections", settings.limits.admitted) + 1,
        h11_max_incomplete_event_size=h11_buffer(max_header_size),
        **tls,
    )
    config.load()
    # the HTTP/1.1 parsers answer 431 when they give up on the size of the headers (header_limit.py)
    h1_class = protocol_classes(max_header_size)[parser]
    if parser == "zttp":
        from .h2drain import DrainingAutoProtocol

        # retires HTTP/2 connections before zttp's lifetime stream limit takes them for a flood
        config.http_protocol_class = type(
            "BoundedAutoProtocol", (DrainingAutoProtocol,), {"h1_class": h1_class}
        )
    else:
        config.http_protocol_class = h1_class
    sock = listen_socket(host, port, reuse_port=read.flag("reuse_port", False))
    userver = uvicorn.Server(config)
    # Not uvicorn.Server.serve(): that would take over SIGINT/SIGTERM of the user's process.
    userver.lifespan = config.lifespan_class(config)
    try:
        await userver.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    # main_loop refreshes the Date header once a second; stop() replaces its shutdown path
    main = asyncio.get_running_loop().create_task(userver.main_loop(), name=f"protobind http {url}")
    real_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    bound = f"{parts.scheme}://{shown_host}:{real_port}{prefix}"
    return HttpBinding(bound, userver, main, sock)


# mypy checks this module's serve against the transport interface (TRANSPORT imports it lazily)
_CHECK: ServeFunction = serve
