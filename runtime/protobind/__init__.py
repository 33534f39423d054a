"""protobind: one protobuf contract, served over gRPC, REST/JSON (Connect) and NATS by configuration.

Importing this package loads no transport library; ``grpc``, ``nats`` and ``starlette`` are
imported when a URL of their scheme is first used, ``opentelemetry`` when telemetry is enabled.
"""

from ._version import __version__
from .client import Channel, RequestStream, connect, start, submit
from .codec import JSON, PROTO, Codec, JsonCodec, ProtoCodec
from .config import client, client_sync
from .context import CallInfo, Context, DeliveryInfo
from .errors import Code, RpcError
from .gateway import Gateway
from .interceptors import ClientInterceptor, Handler, Invoker, ServerInterceptor
from .metadata import Metadata, MetadataLike
from .method import Idempotency, MethodInfo, MethodKind, ServiceInfo, check_generated_api
from .server import Server
from .sync import SyncChannel, connect_sync
from .telemetry import Telemetry

__all__ = [
    "JSON",
    "PROTO",
    "CallInfo",
    "Channel",
    "ClientInterceptor",
    "Code",
    "Codec",
    "Context",
    "DeliveryInfo",
    "Gateway",
    "Handler",
    "Idempotency",
    "Invoker",
    "JsonCodec",
    "Metadata",
    "MetadataLike",
    "MethodInfo",
    "MethodKind",
    "ProtoCodec",
    "RequestStream",
    "RpcError",
    "Server",
    "ServerInterceptor",
    "ServiceInfo",
    "SyncChannel",
    "Telemetry",
    "__version__",
    "check_generated_api",
    "client",
    "client_sync",
    "connect",
    "connect_sync",
    "start",
    "submit",
]
