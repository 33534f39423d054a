"""CORS for the HTTP binding: Starlette's middleware, told which Connect and gRPC-Web headers
browsers need."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.middleware.cors import CORSMiddleware

from ._rule import collect_bindings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from ..endpoints import EndpointTable
    from ._options import ServerOptions

__all__ = ["CORS_ALLOW_HEADERS", "CORS_EXPOSE_HEADERS", "cors_methods", "with_cors"]

#: The request headers a browser must be allowed to send (Connect's and gRPC-Web's), and the
#: response headers it may read (a gRPC-Web error answered before any message has its status in the
#: headers).
CORS_ALLOW_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Connect-Protocol-Version",
    "Connect-Timeout-Ms",
    "Connect-Content-Encoding",
    "Connect-Accept-Encoding",
    "X-User-Agent",
    "X-Grpc-Web",
    "Grpc-Timeout",
)
CORS_EXPOSE_HEADERS = (
    "Content-Encoding",
    "Connect-Content-Encoding",
    "Connect-Accept-Encoding",
    "Grpc-Status",
    "Grpc-Message",
    "Grpc-Status-Details-Bin",
)


def cors_methods(server: EndpointTable, options: ServerOptions) -> list[str]:
    """The methods a browser may use: ``cors_allow_methods``, else what the routes answer (GET and
    POST for Connect, each REST route's method)."""
    if options.cors_allow_methods:
        return list(options.cors_allow_methods)
    methods = ["GET", "POST"]
    for binding in collect_bindings(server.services):
        if binding.method.path in server.endpoints and binding.http_method not in methods:
            methods.append(binding.http_method)
    return methods


def with_cors(app: ASGIApp, server: EndpointTable, options: ServerOptions) -> ASGIApp:
    """``app`` behind the CORS middleware configured by ``options`` (``cors_origins`` and friends)."""
    allow = list(CORS_ALLOW_HEADERS) + [h for h in options.cors_allow_headers if h not in CORS_ALLOW_HEADERS]
    expose = list(CORS_EXPOSE_HEADERS) + list(options.cors_expose_headers)
    return CORSMiddleware(
        app,
        allow_origins=list(options.cors_origins),
        allow_methods=cors_methods(server, options),
        allow_headers=allow,
        expose_headers=expose,
        allow_credentials=options.cors_allow_credentials,
        max_age=options.cors_max_age,
    )
