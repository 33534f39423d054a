"""HTTP binding options: the names each side takes, and the server's as :class:`ServerOptions`."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ..limits import ServerLimits
from ..options import LIMIT_OPTIONS, TLS_CLIENT_OPTIONS, OptionReader

__all__ = [
    "CLIENT_OPTIONS",
    "SERVER_OPTIONS",
    "ServerOptions",
]

SERVER_OPTIONS = frozenset(
    {
        *LIMIT_OPTIONS,
        "body_timeout",
        "max_connections",
        "ignore_unknown_fields",
        "cors_origins",
        "cors_allow_headers",
        "cors_expose_headers",
        "cors_allow_credentials",
        "cors_max_age",
        "cors_allow_methods",
        "reflection",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "http_parser",
        "asgi_server",
        "reuse_port",
    }
)
CLIENT_OPTIONS = frozenset({"codec", "max_connections", "max_message_size", "http2", *TLS_CLIENT_OPTIONS})
#: Default size of a client's keep-alive pool.
DEFAULT_CLIENT_CONNECTIONS = 100
# Longer than the client pool's idle timeout (15 s), so idle connections are closed by the client.
_KEEP_ALIVE = 75


#: HTTP parsers uvicorn can run. zttp (Zig, the default) answers HTTP/1.1 and HTTP/2 on one port:
#: gRPC and bidi streams need HTTP/2. h11 (pure Python) and httptools (llhttp, C) are HTTP/1.1
#: only; httptools rejects methods outside its fixed list, which a REST ``custom`` rule may use;
#: these are the methods protobind trusts it with.
HTTP_PARSERS = ("zttp", "h11", "httptools")
HTTPTOOLS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})
#: ASGI servers the binding can run its app on (option ``asgi_server``; docs/protocols.md has the
#: measurements behind the default). uvicorn (with ``http_parser``) is part of ``protobind[http]``;
#: hypercorn and granian come with ``protobind[http-servers]``. granian has no ASGI trailers, so it
#: answers gRPC requests with the refusal an HTTP/1.1 connection gets (Connect, gRPC-Web and REST
#: work).
ASGI_SERVERS = ("uvicorn", "hypercorn", "granian")
#: Largest request header block every server accepts (zttp's own HTTP/2 limit; the others are set to it).
MAX_HEADER_BYTES = 64 * 1024
#: HTTP/2 streams open at once on one connection (zttp's own; the others are set to it).
MAX_CONCURRENT_STREAMS = 128


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "protobind":
            raise
        raise ImportError(
            f"the http:// transport needs the package {exc.name!r}: pip install 'protobind[http]'"
        ) from exc


@dataclass(frozen=True)
class ServerOptions:
    """Options of the HTTP server binding (see docs/protocols.md and ``protobind.http``)."""

    prefix: str = ""
    limits: ServerLimits = field(default_factory=ServerLimits)
    ignore_unknown_fields: bool = False
    cors_origins: tuple[str, ...] = ()
    cors_allow_headers: tuple[str, ...] = ("*",)
    cors_expose_headers: tuple[str, ...] = ()
    cors_allow_credentials: bool = False
    cors_max_age: int = 7200
    cors_allow_methods: tuple[str, ...] = ()  # empty: the methods the routes answer
    reflection: bool = True


# --- options --------------------------------------------------------------------------------------


def reader(options: Mapping[str, Any]) -> OptionReader:
    return OptionReader("http", options)


def _prefix(path: str) -> str:
    prefix = "/" + path.strip("/") if path.strip("/") else ""
    return prefix


def _server_options(options: Mapping[str, Any], prefix: str = "") -> ServerOptions:
    read = reader(options)
    return ServerOptions(
        prefix=prefix,
        limits=ServerLimits.read(read),
        ignore_unknown_fields=read.flag("ignore_unknown_fields", False),
        cors_origins=read.words("cors_origins"),
        cors_allow_headers=read.words("cors_allow_headers", ("*",)),
        cors_expose_headers=read.words("cors_expose_headers"),
        cors_allow_credentials=read.flag("cors_allow_credentials", False),
        cors_max_age=read.positive_int("cors_max_age", 7200),
        cors_allow_methods=tuple(m.upper() for m in read.words("cors_allow_methods")),
        reflection=read.flag("reflection", True),
    )
