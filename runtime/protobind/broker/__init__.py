"""The broker engine: RPC over a message broker, written once.

Dispatch, reply correlation, deadlines, cancel notices, the stream protocol (credit flow control,
heartbeats) and discovery run against the small :class:`~protobind.broker.base.Broker` interface.
NATS (:mod:`protobind.nats`) and an in-memory broker (:mod:`protobind.memory`,
``memory://NAME``) implement it. See docs/architecture.md.
"""

from __future__ import annotations

from .base import Broker, BrokerError, BrokerMessage, EngineSettings, Inbound, Inbox

__all__ = ["Broker", "BrokerError", "BrokerMessage", "EngineSettings", "Inbound", "Inbox"]
