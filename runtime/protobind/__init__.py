"""protobind: one protobuf contract, served over gRPC, REST/JSON (Connect) and NATS by configuration.

Importing this package loads no transport library; ``grpc``, ``nats`` and ``starlette`` are
imported when a URL of their scheme is first used, ``opentelemetry`` when telemetry is enabled.

``__all__`` is the API; docs/architecture.md ("Public API") lists the other public modules. Generated
code also calls ``check_generated_api``, which is kept here for it and is not part of the API.
"""

from typing import TYPE_CHECKING, Any

from ._client import Channel, RequestStream, connect, start, submit
from ._context import CallInfo, Context, DeliveryInfo
from ._errors import Code, RpcError
from ._gateway import Gateway
from ._interceptors import ClientInterceptor, Handler, Invoker, ServerInterceptor
from ._metadata import Metadata, MetadataLike
from ._server import Server
from ._version import __version__
from .config import client, client_sync
from .method import Idempotency, MethodInfo, MethodKind, ServiceInfo
from .method import check_generated_api as check_generated_api
from .sync import SyncChannel, connect_sync
from .telemetry import Telemetry

__all__ = [
    "CallInfo",
    "Channel",
    "ClientInterceptor",
    "Code",
    "Context",
    "DeliveryInfo",
    "Gateway",
    "Handler",
    "Idempotency",
    "Invoker",
    "Metadata",
    "MetadataLike",
    "MethodInfo",
    "MethodKind",
    "RequestStream",
    "RpcError",
    "Server",
    "ServerInterceptor",
    "ServiceInfo",
    "SyncChannel",
    "Telemetry",
    "__version__",
    "client",
    "client_sync",
    "connect",
    "connect_sync",
    "start",
    "submit",
]

#: Names that left ``__all__``, still readable here for one release, with a warning.
_MOVED = {name: "protobind.codec" for name in ("JSON", "PROTO", "Codec", "JsonCodec", "ProtoCodec")}


if not TYPE_CHECKING:  # mypy reports the moved names as missing, which is the point

    def __getattr__(name: str) -> Any:
        if name in _MOVED:
            import importlib
            import warnings

            module = _MOVED[name]
            warnings.warn(
                f"protobind.{name} is deprecated: import it from {module}", DeprecationWarning, stacklevel=2
            )
            return getattr(importlib.import_module(module), name)
        raise AttributeError(f"module 'protobind' has no attribute {name!r}")
