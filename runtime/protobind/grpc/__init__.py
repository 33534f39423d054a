"""``grpc://host:port`` and ``grpcs://host:port``: standard gRPC over grpcio's asyncio API.

Server side, every endpoint of the :class:`~protobind.Server` becomes a grpcio method handler in
one generic handler per service, with the message classes' own ``FromString`` /
``SerializeToString`` as (de)serializers, so no protoc ``_pb2_grpc`` module is needed and
grpcio's C core does the framing. Client side, each method path gets one cached grpcio
multicallable per channel. Errors travel as gRPC status plus a ``google.rpc.Status`` in
``grpc-status-details-bin``, which is what ``grpcio-status`` and other gRPC stacks read.

Options (URL query string or ``options``), see docs/protocols.md and docs/security.md:
``max_message_size`` (bytes, default 4 MiB), ``tls_cert`` / ``tls_key`` / ``tls_ca`` (PEM paths or
PEM bytes), ``tls_server_name`` (client); server only: ``max_concurrency``, ``max_pending``,
``body_timeout``, ``max_concurrent_streams``, ``health`` / ``reflection`` (default true);
``channel_args`` (extra grpc core channel arguments, Python or config file only); ``engine``
(``grpcio``, the default, or ``native``: protobind's own HTTP/2 engine, ``native_server.py`` and
``native_client.py`` on ``h2.py``; the environment variable PROTOBIND_GRPC_ENGINE chooses where the
option is not given).
"""

from __future__ import annotations

from ..transport import Transport, lazy_dial, lazy_serve, loopback_harness
from .options import CLIENT_OPTIONS, SERVER_OPTIONS

__all__ = ["TRANSPORT"]


TRANSPORT = Transport(
    name="grpc",
    schemes=("grpc", "grpcs"),
    extra="grpc",
    serve=lazy_serve("protobind.grpc.server"),
    dial=lazy_dial("protobind.grpc.client"),
    test_harness=loopback_harness("grpc"),
    server_options=SERVER_OPTIONS,
    client_options=CLIENT_OPTIONS,
    server_requires=("grpc", "grpc_status", "grpc_health", "grpc_reflection"),
    client_requires=("grpc", "grpc_status"),
    network_peer=True,
    renamed_options={"cert": "tls_cert", "key": "tls_key", "ca": "tls_ca", "server_name": "tls_server_name"},
)
