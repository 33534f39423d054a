"""The NATS client transport: the broker engine's client on a nats-py connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import Code, RpcError
from ..broker.client import BrokerClient
from ..transport import DialFunction
from ._connection import AuthenticationFailed, open_broker
from ._options import settings_from

__all__ = ["dial"]


async def dial(url: str, options: Mapping[str, Any]) -> BrokerClient:
    """Connect to NATS; calls go out as messages on the service subjects."""
    settings = settings_from(url, options)
    try:
        broker = await open_broker(settings, "protobind client")
    except AuthenticationFailed as exc:
        raise RpcError(Code.UNAUTHENTICATED, str(exc)) from None
    except ConnectionError as exc:
        raise RpcError(Code.UNAVAILABLE, str(exc)) from None
    client = BrokerClient(broker, settings.engine)
    await client.start()
    return client


# mypy checks this module's dial against the transport interface (TRANSPORT imports it lazily)
_CHECK: DialFunction = dial
