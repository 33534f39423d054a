"""The RabbitMQ client transport: the broker engine's client on an aio-pika connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..broker.client import BrokerClient, dial_broker
from ..transport import DialFunction
from ._connection import AuthenticationFailed, open_broker
from ._options import settings_from

__all__ = ["dial"]


async def dial(url: str, options: Mapping[str, Any]) -> BrokerClient:
    """Connect to RabbitMQ; calls go out as messages on the service routing keys."""
    settings = settings_from(url, options)
    return await dial_broker(open_broker(settings, "protobind client"), settings.engine, AuthenticationFailed)


# mypy checks this module's dial against the transport interface (TRANSPORT imports it lazily)
_CHECK: DialFunction = dial
