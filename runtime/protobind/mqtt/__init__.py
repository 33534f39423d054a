"""``mqtt://[user:password@]host[:port]`` and ``mqtts://``: protobind over MQTT 5 request/reply.

The wire rules are in docs/protocols.md ("MQTT 5"); the broker engine is NATS's
(:mod:`protobind.broker`), with subjects mapped onto topics once (:mod:`.connection`): a service
subscribes to ``{prefix}{package}/{Service}/+`` as a shared subscription, a unary call is one
PUBLISH with a response topic and correlation data and one answer, streams use the engine's frame
protocol, errors and metadata travel as user properties.

Options, from the URL query string or ``options`` (server = S, client = C):

``prefix`` (S, C)
    Prepended to every call topic (levels separated by ``/`` or ``.``). Default none.
``queue_group`` (S)
    The share name of the service subscriptions (``$share/{queue_group}/...``). Default: each
    service's full name. Servers in different groups each receive every call (fan-out);
    replicas in one group share them.
``max_concurrency``, ``max_pending``, ``max_message_size`` (S), ``window``, ``heartbeat`` (S, C),
``codec`` (C), ``version``, ``reflection`` (S)
    As on NATS (docs/protocols.md).
``max_waiting`` (S)
    Calls a method subscription holds while its handlers are busy (default 65,536, and at most
    64 MiB of bodies); beyond it a new call is dropped and logged, as by a slow consumer.
``client_id`` (S, C)
    The MQTT client identifier. Default: ``protobind-`` and 32 random hex digits; the inbox topic
    is ``_INBOX/{client id}``, so a configured one must be unique and unguessable.
``user``, ``password`` (also from the URL), ``tls_ca``, ``tls_cert``, ``tls_key``,
``tls_server_name``, ``ssl_context`` (Python only), ``keepalive`` (seconds, default 30),
``connect_timeout`` (default 2), ``reconnect_wait`` (default 0.5), ``max_reconnect_attempts``
(default -1: for ever)
    The connection. ``mqtts://`` or any TLS option means TLS or an error, never plaintext.

``replica``, ``session_expiry`` (S)
    Durable methods: a server's persistent sessions are ``protobind-{consumer}-{prefix}-{replica}``
    (replicas of one group need different ``replica`` values); the broker keeps a session (and
    the calls queued in it) ``session_expiry`` seconds after its server left (default: for ever).
``max_deliver``, ``backoff``, ``max_ack_pending``, ``reply_ttl``, ``consumer_name``,
``reply_group``, ``store_timeout``
    Durable delivery as on NATS; the stream options and ``ack_wait`` are refused: MQTT cannot
    honour them (:mod:`.durable` and docs/brokers.md say what holds).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from ..transport import Transport, lazy_dial, lazy_serve
from ._options import CLIENT_OPTIONS, SERVER_OPTIONS

__all__ = ["TRANSPORT"]

#: The broker tests use; every machine of the project (and CI) runs one there.
TEST_BROKER = "mqtt://127.0.0.1:1883"


def broker_unreachable(url: str) -> str | None:
    """Why the broker at ``url`` cannot be reached now, or ``None`` when it can."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 1883), timeout=2.0):
            return None
    except OSError as exc:
        return f"no MQTT broker at {parts.hostname}:{parts.port or 1883} ({exc.strerror or exc})"


@contextlib.asynccontextmanager
async def _harness() -> AsyncIterator[Callable[[], str]]:
    # The machine's Mosquitto (PROTOBIND_TEST_MQTT names another); each server gets a topic prefix
    # unique to this run, so runs and servers never see each other's calls. Sessions are clean and
    # nothing is retained: nothing stays behind on the broker.
    url = os.environ.get("PROTOBIND_TEST_MQTT", TEST_BROKER)
    reason = broker_unreachable(url)
    if reason is not None:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"CI needs an MQTT broker: {reason}")
        import unittest

        raise unittest.SkipTest(reason)
    run = os.urandom(4).hex()
    names = itertools.count()
    yield lambda: f"{url}?prefix=pbt-{run}-{next(names)}"


TRANSPORT = Transport(
    name="mqtt",
    schemes=("mqtt", "mqtts"),
    extra="mqtt",
    serve=lazy_serve("protobind.mqtt._server"),
    dial=lazy_dial("protobind.mqtt._client"),
    test_harness=_harness,
    server_options=SERVER_OPTIONS,
    client_options=CLIENT_OPTIONS,
    server_requires=("zmqtt",),
    client_requires=("zmqtt",),
    durable_calls=True,
    documents=frozenset({"asyncapi"}),
)
