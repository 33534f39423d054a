"""``grpc://host:port`` and ``grpcs://host:port``: standard gRPC, on one of two engines.

The default engine is protobind's own (``_native_server.py`` and ``_native_client.py`` on the
HTTP/2 of ``_h2.py`` and the gRPC framing of ``_messages.py``). The other is grpcio's asyncio API
(``_server.py`` and ``_client.py``): every endpoint becomes a grpcio method handler, grpcio's C core
does the framing; it is what brings grpc core's channel arguments. Errors travel as gRPC status
plus a ``google.rpc.Status`` in ``grpc-status-details-bin`` on both, which is what
``grpcio-status`` and other gRPC stacks read.

Options (URL query string or ``options``), see docs/protocols.md and docs/security.md:
``max_message_size`` (bytes, default 4 MiB), ``tls_cert`` / ``tls_key`` / ``tls_ca`` (PEM paths or
PEM bytes), ``tls_server_name`` (client); server only: ``max_concurrency``, ``max_pending``,
``body_timeout``, ``max_concurrent_streams``, ``health`` / ``reflection`` (default true);
``engine`` (``native``, the default, or ``grpcio``; the environment variable PROTOBIND_GRPC_ENGINE
chooses where the option is not given); ``channel_args`` (extra grpc core channel arguments, Python
or config file only: grpcio only, so given without a choice of engine it selects grpcio, see
``_options.GRPCIO_ONLY_OPTIONS``).
"""

from __future__ import annotations

from ..transport import Transport, lazy_dial, lazy_serve, loopback_harness
from ._options import CLIENT_OPTIONS, SERVER_OPTIONS

__all__ = ["TRANSPORT"]


TRANSPORT = Transport(
    name="grpc",
    schemes=("grpc", "grpcs"),
    extra="grpc",
    serve=lazy_serve("protobind.grpc._server"),
    dial=lazy_dial("protobind.grpc._client"),
    test_harness=loopback_harness("grpc"),
    server_options=SERVER_OPTIONS,
    client_options=CLIENT_OPTIONS,
    server_requires=("grpc", "grpc_status", "grpc_health", "grpc_reflection", "hpack"),
    client_requires=("grpc", "grpc_status", "hpack"),
    network_peer=True,
    renamed_options={"cert": "tls_cert", "key": "tls_key", "ca": "tls_ca", "server_name": "tls_server_name"},
)
