"""The RabbitMQ server binding: the broker engine on an aio-pika connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..broker.server import BrokerBinding
from ..transport import ServeFunction
from ._connection import open_broker
from ._options import client_url, settings_from

if TYPE_CHECKING:
    from ..endpoints import EndpointTable

__all__ = ["serve"]


async def serve(endpoints: EndpointTable, url: str, options: Mapping[str, Any]) -> BrokerBinding:
    """Connect to RabbitMQ and serve ``endpoints`` there until the binding stops."""
    settings = settings_from(url, options)
    broker = await open_broker(settings, "protobind server")
    binding = BrokerBinding(endpoints, client_url(url), broker, settings.engine)
    await binding.start()
    return binding


# mypy checks this module's serve against the transport interface (TRANSPORT imports it lazily)
_CHECK: ServeFunction = serve
