"""Durable calls, written once against :class:`~protobind.broker.base.DurableBroker`.

A method marked ``(protobind.v1.durable)`` is called by storing the call in a stream; servers pull
it from a durable consumer per (method, group), run the handler and acknowledge it after it
succeeded; failures are retried, then dead-lettered; a request/response method's reply is stored
for the caller's group. One concept per module:

- :mod:`.names`: subjects, streams, consumers and headers
- :mod:`.settings`: the durable options (names, parsing, delivery overrides)
- :mod:`.server`: :class:`DurableServer`, a worker per durable method
- :mod:`.client`: :class:`DurableClient` (submit, wait for the reply) and :class:`DurableReply`

docs/messaging.md ("Durable delivery", "Durable request/response") is the user's description;
NATS JetStream (:mod:`protobind.nats._jetstream`), RabbitMQ streams, MQTT retained messages, Kafka
and the in-memory broker implement the interface.
"""

from __future__ import annotations

from ._client import DurableClient, DurableReply
from ._server import FINAL, DurableServer
from ._settings import DURABLE_CLIENT_OPTIONS, DURABLE_SERVER_OPTIONS, durable_settings

__all__ = [
    "DURABLE_CLIENT_OPTIONS",
    "DURABLE_SERVER_OPTIONS",
    "FINAL",
    "DurableClient",
    "DurableReply",
    "DurableServer",
    "durable_settings",
]
