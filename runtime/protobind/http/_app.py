"""The server half of the HTTP binding: the ASGI app, assembled.

:class:`~.connect.ConnectApp` answers Connect calls first; every other request goes to a Starlette
router behind it: the google.api.http REST routes (:mod:`.rest`), ``/openapi.json``
(:mod:`.openapi`), the reflection route, and the 404 for anything else. With ``cors_origins``
the whole app sits behind the CORS middleware (:mod:`.cors`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp

from .._metadata import Metadata
from .._wire import HTTP_STATUS, connect_error
from ..auth import OPENAPI_METHOD, REFLECTION_METHOD
from ..endpoints import EndpointTable
from ..limits import ConcurrencyLimit, ReadTimer
from ..reflection import HTTP_PATH
from ..reflection import document as reflection_document
from ._connect import ConnectApp, not_found
from ._cors import with_cors
from ._header_limit import HeaderLimit
from ._options import ServerOptions

__all__ = ["build_app"]


def _optional(module: str, attribute: str) -> Callable[..., Any] | None:
    """``module.attribute`` when that (optional, separately owned) module exists."""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise
    value = getattr(found, attribute, None)
    return value if callable(value) else None


def _fallback_routes(
    server: EndpointTable, options: ServerOptions, concurrency: ConcurrencyLimit, timer: ReadTimer
) -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    rest_routes = _optional("protobind.http._rest", "rest_routes")
    if rest_routes is not None:
        # one limit of each kind for every route of the binding
        routes.extend(
            rest_routes(
                server,
                ignore_unknown_fields=options.ignore_unknown_fields,
                max_message_size=options.limits.max_message_size,
                concurrency=concurrency,
                timer=timer,
            )
        )
    openapi_document = _optional("protobind.http.openapi", "openapi_document")
    if openapi_document is not None:
        documents: dict[str, dict[str, Any]] = {}

        async def openapi(request: Request) -> Response:
            denied = _refused(server, request, OPENAPI_METHOD)
            if denied is not None:
                return denied
            # Mounted (Starlette's Mount, uvicorn's --root-path) or under a URL prefix, the paths
            # are relative to that prefix: the document's `servers` entry says so.
            root = request.scope.get("root_path", "")
            document = documents.get(root)
            if document is None:
                servers = {"servers": [root]} if root else {}
                document = documents[root] = openapi_document(server.services, **servers)
            return JSONResponse(document)

        routes.append(Route("/openapi.json", openapi, methods=["GET"]))
    if options.reflection:
        reflection: list[bytes] = []

        async def reflect(request: Request) -> Response:
            denied = _refused(server, request, REFLECTION_METHOD)
            if denied is not None:
                return denied
            if not reflection:
                reflection.append(json.dumps(reflection_document(server.services)).encode())
            return Response(reflection[0], media_type="application/json")

        routes.append(Route(HTTP_PATH, reflect, methods=["GET"]))
    return routes


def _refused(server: EndpointTable, request: Request, method: str) -> Response | None:
    """The error response when the server's authorizer refuses ``request`` for ``method``."""
    if server.authorize is None:
        return None
    error = server.authorize(Metadata(request.headers.items()), method)
    if error is None:
        return None
    return JSONResponse(connect_error(error), status_code=HTTP_STATUS[error.code])


def build_app(server: EndpointTable, options: ServerOptions) -> ASGIApp:
    """The complete ASGI app: Connect fast path, fallback routes, CORS when configured."""
    concurrency = options.limits.concurrency_limit()
    timer = ReadTimer(options.limits.body_timeout)
    fallback = Router(routes=_fallback_routes(server, options, concurrency, timer), default=not_found)
    app: ASGIApp = ConnectApp(server, options, fallback, concurrency, timer)
    if options.cors_origins:
        app = with_cors(app, server, options)
    # in front of everything, CORS preflights included: oversized headers are refused with 431
    return HeaderLimit(app, options.limits.max_header_size)
