"""``http://host:port[/prefix]`` and ``https://``: the Connect protocol over HTTP/1.1.

Server: an ASGI app (Connect calls on a raw-ASGI fast path, everything else through Starlette),
run by uvicorn inside :meth:`protobind.Server.start`. The same app is available on its own through
:func:`asgi_app`, to mount in an existing Starlette or FastAPI application::

    app.mount("/rpc", protobind.http.asgi_app([Greeter()]))

Client: :func:`protobind.connect` with an ``http://`` URL; unary, server- and client-streaming
calls over a keep-alive connection pool (aiohttp). Bidirectional streams need full-duplex HTTP/2
and answer ``UNIMPLEMENTED``.

Options, in the URL's query string or as Python values (``Server(transport_options={"http": ...})``,
``connect(url, options=...)``); docs/protocols.md and docs/security.md have the full tables:

server
    ``max_message_size`` (bytes, default 4 MiB; larger requests get 413 / ``resource_exhausted``),
    ``max_header_size`` (bytes of request headers, default 16 KiB; larger: 431 /
    ``resource_exhausted``), ``max_concurrency``, ``max_pending``, ``body_timeout`` (408 when a
    request body is slower),
    ``max_connections``, ``ignore_unknown_fields`` (accept JSON fields the schema does not know),
    ``cors_origins`` (comma-separated origins or ``*``; CORS is off without it),
    ``cors_allow_headers`` (default ``*``), ``cors_expose_headers``, ``cors_allow_credentials``,
    ``cors_max_age``, ``cors_allow_methods`` (default: GET, POST and the REST routes' methods),
    ``reflection`` (serve ``GET {prefix}/protobind/reflection``; default true),
    ``tls_cert`` / ``tls_key`` (PEM files, required for ``https://``), ``tls_ca``
    (mutual TLS: require client certificates signed by these CAs), ``asgi_server`` (``uvicorn``,
    the default, ``hypercorn`` or ``granian``), ``http_parser`` (uvicorn's: ``zttp``, ``h11``,
    ``httptools``).
client
    ``codec`` (``proto``, the default, or ``json``), ``max_connections`` (default 100),
    ``max_message_size`` (largest response message, default 4 MiB), ``tls_ca`` (PEM CA bundle to
    trust instead of the system's), ``tls_cert`` / ``tls_key`` (client certificate),
    ``tls_server_name`` (the name to verify in the server's certificate).

Module imports are deferred: the client does not load Starlette or uvicorn, the server does not
load aiohttp.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._wire import HTTP_STATUS
from ..transport import Transport, check_options, lazy_dial, lazy_serve, loopback_harness
from ._options import CLIENT_OPTIONS, SERVER_OPTIONS, _prefix

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .._server import Server

__all__ = ["HTTP_STATUS", "TRANSPORT", "asgi_app", "merge_openapi", "openapi_for"]


def asgi_app(server_or_services: Server | Iterable[object], **options: Any) -> ASGIApp:
    """The ASGI app serving ``server_or_services`` (a :class:`protobind.Server` or the service
    implementations), for mounting in another ASGI application.

    Takes the server options of this transport (``max_message_size``, ``ignore_unknown_fields``,
    ``cors_origins``, ...) plus ``prefix``, a path the Connect routes live under.
    """
    TRANSPORT.check_installed(server=True)
    prefix = _prefix(str(options.pop("prefix", "")))
    check_options(TRANSPORT, options, server=True)
    from ._server import asgi_app as build

    return build(server_or_services, prefix, options)


def openapi_for(
    server_or_services: Server | Iterable[object], prefix: str = "", **options: Any
) -> dict[str, Any]:
    """The OpenAPI document of the routes :func:`asgi_app` serves, as mounted at ``prefix`` in a
    host application: each path starts with ``prefix``. ``options`` (``title``, ``version``,
    ``servers``) go to :func:`protobind.http.openapi.openapi_document`."""
    from .._server import Server
    from .openapi import openapi_for as document_for

    server = server_or_services if isinstance(server_or_services, Server) else Server(server_or_services)
    return document_for(server.services, prefix, **options)


def merge_openapi(app: Any, server_or_services: Server | Iterable[object], prefix: str) -> None:
    """Make a FastAPI ``app``'s OpenAPI document (``app.openapi()``, ``/openapi.json``, ``/docs``)
    include the protobind routes mounted at ``prefix``::

        app.mount("/rpc", protobind.http.asgi_app(server))
        protobind.http.merge_openapi(app, server, "/rpc")

    Works with any ``app`` whose ``openapi()`` method returns the document as a dict.
    """
    from .openapi import merge_documents

    extra = openapi_for(server_or_services, prefix)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        return merge_documents(build(), extra)

    app.openapi = openapi


TRANSPORT = Transport(
    name="http",
    schemes=("http", "https"),
    extra="http",
    serve=lazy_serve("protobind.http._server"),
    dial=lazy_dial("protobind.http._client"),
    test_harness=loopback_harness("http"),
    server_options=SERVER_OPTIONS,
    client_options=CLIENT_OPTIONS,
    server_requires=("starlette", "uvicorn"),
    client_requires=("aiohttp",),
    rpc_system="connectrpc",
    default_ports={"http": 80, "https": 443},
    network_peer=True,
    renamed_options={"max_body_size": "max_message_size"},
    documents=frozenset({"openapi"}),
)
