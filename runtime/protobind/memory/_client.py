"""The in-memory client transport: the broker engine's client on a :class:`~.connection.MemoryBroker`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..broker.client import BrokerClient
from ..transport import DialFunction
from ._connection import open_broker
from ._options import settings_from

__all__ = ["dial"]


async def dial(url: str, options: Mapping[str, Any]) -> BrokerClient:
    """A client of the in-memory broker ``memory://NAME``."""
    client = BrokerClient(open_broker(url, options), settings_from(options))
    await client.start()
    return client


# mypy checks this module's dial against the transport interface (TRANSPORT imports it lazily)
_CHECK: DialFunction = dial
