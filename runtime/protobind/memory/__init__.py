"""``memory://NAME``: an in-memory broker, the broker engine without a network (tests, embedding).

Servers and clients that use the same name talk through it exactly as they would through NATS
(same engine, same subjects and headers, queue groups, no-responders answers, a payload limit),
minus sockets. It also stores messages for durable calls, with JetStream's semantics
(:mod:`.stored`), so tests of durable methods need no nats-server; what it stores lasts as long as
the process.

It is the worked example of docs/architecture.md ("adding a broker"): the broker in
:mod:`.connection`, its options in :mod:`.options`, the bindings in :mod:`.server` and
:mod:`.client`, as in :mod:`protobind.nats`.

Options (server = S, client = C): ``prefix``, ``window``, ``heartbeat`` (S, C) and ``codec`` (C)
as on NATS; ``queue_group``, ``max_concurrency``, ``max_pending``, ``version`` and
``max_message_size`` (S) as on NATS; ``max_payload`` (S) the hub's limit on each message, as
nats-server's (default 1 MiB; a hub takes it from the first server or client of its name); the
durable options of docs/messaging.md.
"""

from __future__ import annotations

from ..transport import Transport, lazy_dial, lazy_serve, named_harness
from ._options import CLIENT_OPTIONS, SERVER_OPTIONS

__all__ = ["TRANSPORT"]

TRANSPORT = Transport(
    name="memory",
    schemes=("memory",),
    extra="",
    serve=lazy_serve("protobind.memory._server"),
    dial=lazy_dial("protobind.memory._client"),
    test_harness=named_harness("memory://test-{}"),
    server_options=SERVER_OPTIONS,
    client_options=CLIENT_OPTIONS,
    in_process=True,
    durable_calls=True,
    documents=frozenset({"asyncapi"}),
)
