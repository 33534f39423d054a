"""``http://host:port[/prefix]`` and ``https://``: the Connect protocol over HTTP/1.1.

Server: an ASGI app (Connect calls on a raw-ASGI fast path, everything else through Starlette),
run by uvicorn inside :meth:`protobind.Server.start`. The same app is available on its own through
:func:`asgi_app`, to mount in an existing Starlette or FastAPI application::

    app.mount("/rpc", protobind.http.asgi_app([Greeter()]))

Client: :func:`protobind.connect` with an ``http://`` URL; unary, server- and client-streaming
calls over a keep-alive connection pool (aiohttp). Bidirectional streams need full-duplex HTTP/2
and answer ``UNIMPLEMENTED``.

Options, in the URL's query string or as Python values (``Server(transport_options={"http": ...})``,
``connect(url, options=...)``):

server
    ``max_body_size`` (bytes, default 4 MiB; larger requests get 413 / ``resource_exhausted``),
    ``ignore_unknown_fields`` (accept JSON fields the schema does not know; default false),
    ``cors_origins`` (comma-separated origins or ``*``; CORS is off without it),
    ``cors_allow_headers`` (default ``*``), ``cors_expose_headers``, ``cors_allow_credentials``,
    ``cors_max_age``, ``tls_cert`` / ``tls_key`` (PEM files, required for ``https://``).
client
    ``codec`` (``proto``, the default, or ``json``), ``max_connections`` (default 100),
    ``max_body_size`` (largest response message, default 4 MiB), ``tls_ca`` (PEM CA bundle to
    trust instead of the system's), ``tls_cert`` / ``tls_key`` (client certificate).

Module imports are deferred: the client does not load Starlette or uvicorn, the server does not
load aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import HTTP_STATUS
from .server import Server

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

    from ._http_client import HttpTransport

__all__ = ["HTTP_STATUS", "HttpBinding", "asgi_app", "dial", "serve"]

logger = logging.getLogger("protobind.http")

_SERVER_OPTIONS = {
    "max_body_size",
    "ignore_unknown_fields",
    "cors_origins",
    "cors_allow_headers",
    "cors_expose_headers",
    "cors_allow_credentials",
    "cors_max_age",
    "tls_cert",
    "tls_key",
}
_CLIENT_OPTIONS = {"codec", "max_connections", "max_body_size", "tls_ca", "tls_cert", "tls_key"}
_DEFAULT_MAX_BODY = 4 * 1024 * 1024
# Longer than the client pool's idle timeout (15 s), so idle connections are closed by the client.
_KEEP_ALIVE = 75


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "protobind":
            raise
        raise ImportError(
            f"the http:// transport needs the package {exc.name!r}: pip install 'protobind[http]'"
        ) from exc


# --- options --------------------------------------------------------------------------------------


def _check_names(options: Mapping[str, Any]) -> None:
    unknown = set(options) - _SERVER_OPTIONS - _CLIENT_OPTIONS
    if unknown:
        known = ", ".join(sorted(_SERVER_OPTIONS | _CLIENT_OPTIONS))
        raise ValueError(f"unknown http option(s) {', '.join(sorted(unknown))}; known: {known}")


def _bool(options: Mapping[str, Any], name: str, default: bool) -> bool:
    value = options.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"http option {name} must be true or false, not {value!r}")


def _int(options: Mapping[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"http option {name} must be an integer, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"http option {name} must be positive, not {value!r}")
    return number


def _list(options: Mapping[str, Any], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = options.get(name)
    if value is None:
        return default
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


def _str(options: Mapping[str, Any], name: str) -> str | None:
    value = options.get(name)
    return None if value is None or value == "" else str(value)


def _prefix(path: str) -> str:
    prefix = "/" + path.strip("/") if path.strip("/") else ""
    return prefix


def _server_options(options: Mapping[str, Any], prefix: str = "") -> Any:
    from ._http_server import ServerOptions

    _check_names(options)
    return ServerOptions(
        prefix=prefix,
        max_body_size=_int(options, "max_body_size", _DEFAULT_MAX_BODY),
        ignore_unknown_fields=_bool(options, "ignore_unknown_fields", False),
        cors_origins=_list(options, "cors_origins"),
        cors_allow_headers=_list(options, "cors_allow_headers", ("*",)),
        cors_expose_headers=_list(options, "cors_expose_headers"),
        cors_allow_credentials=_bool(options, "cors_allow_credentials", False),
        cors_max_age=_int(options, "cors_max_age", 7200),
    )


# --- server ---------------------------------------------------------------------------------------


def asgi_app(server_or_services: Server | Iterable[object], **options: Any) -> ASGIApp:
    """The ASGI app serving ``server_or_services`` (a :class:`protobind.Server` or the service
    implementations), for mounting in another ASGI application.

    Takes the server options of this module (``max_body_size``, ``ignore_unknown_fields``,
    ``cors_origins``, ...) plus ``prefix``, a path the Connect routes live under.
    """
    _require("starlette")
    from ._http_server import build_app

    server = server_or_services if isinstance(server_or_services, Server) else Server(server_or_services)
    prefix = _prefix(str(options.pop("prefix", "")))
    return build_app(server, _server_options(options, prefix))


@dataclass
class HttpBinding:
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


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        # The protocol must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets
        # whose proto says TCP, and without it Nagle's algorithm holds the body of every response
        # until the client's delayed ACK (40 ms per call).
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


async def serve(server: Server, url: str, options: Mapping[str, Any]) -> HttpBinding:
    """Start uvicorn with :func:`asgi_app` on ``url``'s host and port (port 0: any free port)."""
    uvicorn = _require("uvicorn")
    _require("starlette")
    from ._http_server import build_app

    parts = urlsplit(url)
    host = parts.hostname or "0.0.0.0"
    try:
        port = parts.port or 0
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    prefix = _prefix(parts.path)
    app = build_app(server, _server_options(options, prefix))
    cert, key = _str(options, "tls_cert"), _str(options, "tls_key")
    if parts.scheme == "https" and cert is None:
        raise ValueError(f"{url}: https:// needs the options tls_cert and tls_key (PEM files)")
    config = uvicorn.Config(
        app,
        lifespan="off",
        # the embedding application owns logging; uvicorn would otherwise reconfigure it
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=_KEEP_ALIVE,
        ssl_certfile=cert if parts.scheme == "https" else None,
        ssl_keyfile=key if parts.scheme == "https" else None,
    )
    config.load()
    sock = _bind(host, port)
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


# --- client ---------------------------------------------------------------------------------------


async def dial(url: str, options: Mapping[str, Any]) -> HttpTransport:
    """A Connect client transport for ``url`` (``http://host:port[/prefix]`` or ``https://``)."""
    _require("aiohttp")
    from ._http_client import HttpTransport, make_ssl_context

    _check_names(options)
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host: use http://host:port")
    codec = str(options.get("codec", "proto")).lower()
    if codec not in ("proto", "json"):
        raise ValueError(f"http option codec must be proto or json, not {codec!r}")
    base = f"{parts.scheme}://{parts.netloc}{_prefix(parts.path)}"
    ssl_context = None
    if parts.scheme == "https":
        ssl_context = make_ssl_context(
            _str(options, "tls_ca"), _str(options, "tls_cert"), _str(options, "tls_key")
        )
    return HttpTransport(
        base,
        codec=codec,
        max_connections=_int(options, "max_connections", 100),
        max_body_size=_int(options, "max_body_size", _DEFAULT_MAX_BODY),
        ssl_context=ssl_context,
    )
