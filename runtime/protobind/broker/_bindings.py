"""How a broker's subjects appear in its AsyncAPI document: :class:`Bindings` (NATS's, the default),
which each broker's ``asyncapi_bindings()`` gives the engine (:class:`protobind.broker.base.Broker`),
and the versions of the AsyncAPI bindings they write. :mod:`.asyncapi` builds the document.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["AMQP_BINDING_VERSION", "MQTT_BINDING_VERSION", "NATS_BINDING_VERSION", "Bindings", "host_of"]

#: Version of the AsyncAPI NATS bindings used in ``operations.*.bindings.nats``.
NATS_BINDING_VERSION = "0.1.0"
#: Version of the AsyncAPI MQTT bindings used in ``operations.*.bindings.mqtt`` and the servers.
MQTT_BINDING_VERSION = "0.2.0"
#: Version of the AsyncAPI AMQP 0-9-1 bindings used in ``channels.*.bindings.amqp`` and operations.
AMQP_BINDING_VERSION = "0.3.0"


class Bindings:
    """How one broker's subjects appear in the document: the channel addresses, the AsyncAPI
    bindings of channels and operations, the server entries. This class is NATS's (and the
    memory broker's), where a channel's address is its subject; every broker gives the engine
    its own through ``asyncapi_bindings()`` (:class:`protobind.broker.base.Broker`)."""

    protocol = "nats"
    #: how the document's description names the channels
    kind = "NATS subjects"
    reference = "docs/protocols.md, 'NATS request-reply'"
    #: the URL schemes of the servers the document lists (others, such as ``memory://``, are left out)
    schemes: tuple[str, ...] = ("nats", "tls")

    def address(self, subject: str) -> str:
        """The channel address of ``subject``."""
        return subject

    def channel(self, subject: str, stored: bool = False) -> dict[str, Any] | None:
        """The channel's bindings, if any; ``stored``: a durable call's or dead letter's channel."""
        return None

    def operation(self, queue: str | None, stored: bool = False) -> dict[str, Any] | None:
        """The bindings of an operation, received in queue group ``queue`` (``None``: an
        operation of no group); ``stored`` as for :meth:`channel`."""
        if queue is None:
            return None
        return {"nats": {"queue": queue, "bindingVersion": NATS_BINDING_VERSION}}

    def received(self, queue: str) -> str:
        """What an operation's description adds on how queue group ``queue`` receives it."""
        return ""

    def stored_replies(self) -> str:
        """What a durable reply channel's description adds on where the replies are kept."""
        return ""

    def server(self, url: str) -> dict[str, Any]:
        """The server entry of ``url`` (never its credentials or query)."""
        parts = urlsplit(url)
        return {
            "host": host_of(url),
            "protocol": "nats",
            "description": "NATS over TLS (tls://)" if parts.scheme == "tls" else "NATS",
        }


def host_of(url: str) -> str:
    """The hosts of a server URL, without its credentials (and its path and query)."""
    return urlsplit(url).netloc.rpartition("@")[2]
