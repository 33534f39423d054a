"""``amqp://user:password@host:port/vhost`` and ``amqps://``: protobind over RabbitMQ (aio-pika).

The broker engine of :mod:`protobind.broker` on AMQP 0-9-1; the wire rules are in
docs/protocols.md ("RabbitMQ") and docs/brokers.md maps each engine concept onto RabbitMQ. In
short: call subjects are routing keys on a topic exchange (``protobind`` unless the option
``exchange`` names another); a service's replicas share one queue per queue group, bound to
``{prefix}{package}.{Service}.*``; replies go to the caller's exclusive queue (``reply_to``) with
the call's ``correlation_id``; streams, cancellation, deadlines and discovery are the engine's.

Options, from the URL query string or ``options`` (server = S, client = C): the engine's
(``prefix``, ``queue_group``, ``max_concurrency``, ``max_pending``, ``window``, ``heartbeat``,
``codec``, ``version``, ``reflection``, ``max_message_size``) as on NATS, and for the connection
``exchange``, ``prefetch`` (S: call messages RabbitMQ may push to one binding before it takes
them; default ``max_concurrency + max_pending``), ``name``, ``connect_timeout``, ``reconnect_wait``, ``user``,
``password``, ``vhost`` (override the URL's), ``tls_ca``, ``tls_cert``, ``tls_key`` and
``ssl_context`` (Python only).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from ..transport import Transport, lazy_dial, lazy_serve
from ._options import CLIENT_OPTIONS, SERVER_OPTIONS

__all__ = ["TEST_BROKER_ENV", "TRANSPORT"]

#: Environment variable naming the RabbitMQ the test harness uses (default below).
TEST_BROKER_ENV = "PROTOBIND_TEST_AMQP_URL"
_TEST_BROKER = "amqp://guest:guest@127.0.0.1:5672/"


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2.0):
            return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def _harness() -> AsyncIterator[Callable[[], str]]:
    # The machine's RabbitMQ (never a private one: it takes seconds to boot). Each test run gets a
    # topic exchange of its own, and each server a prefix, so runs and servers never see each
    # other's calls; queues are exclusive or go with their last consumer, the exchange is deleted
    # at the end. A broker that cannot be reached skips the tests that need it (fails them on CI).
    base = os.environ.get(TEST_BROKER_ENV, _TEST_BROKER)
    if not _reachable(base):
        reason = f"RabbitMQ is not reachable at {urlsplit(base).hostname}:{urlsplit(base).port or 5672}"
        if os.environ.get("CI") == "true":
            raise RuntimeError(reason)

        def unavailable() -> str:
            import unittest

            raise unittest.SkipTest(reason)

        yield unavailable
        return
    exchange = f"protobind.test.{secrets.token_hex(6)}"
    names = itertools.count()
    try:
        yield lambda: f"{base}?exchange={exchange}&prefix=t{next(names)}"
    finally:
        await _delete_exchange(base, exchange)


async def _delete_exchange(url: str, exchange: str) -> None:
    import aio_pika

    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            channel = await connection.channel()
            await channel.exchange_delete(exchange)


TRANSPORT = Transport(
    name="amqp",
    schemes=("amqp", "amqps"),
    extra="amqp",
    serve=lazy_serve("protobind.amqp._server"),
    dial=lazy_dial("protobind.amqp._client"),
    test_harness=_harness,
    server_options=SERVER_OPTIONS,
    client_options=CLIENT_OPTIONS,
    server_requires=("aio_pika",),
    client_requires=("aio_pika",),
    durable_calls=True,
    documents=frozenset({"asyncapi"}),
)
