"""The in-memory server binding: the broker engine on a :class:`~.connection.MemoryBroker`."""

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
    """Serve ``endpoints`` on the in-memory broker ``memory://NAME``."""
    binding = BrokerBinding(endpoints, client_url(url), open_broker(url, options), settings_from(options))
    await binding.start()
    return binding


# mypy checks this module's serve against the transport interface (TRANSPORT imports it lazily)
_CHECK: ServeFunction = serve
