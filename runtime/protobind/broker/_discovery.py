"""What a binding answers besides calls: NATS micro discovery and each service's AsyncAPI document.

Both are guarded like the services when an authorizer is configured (docs/security.md): a caller
the authorizer refuses gets its refusal instead of an answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

from .._errors import RpcError
from .._metadata import Metadata
from ..auth import ASYNCAPI_METHOD, MICRO_METHOD
from ..codec import PROTO
from ._micro import MicroService, answers
from ._wire import CONTENT_TYPE, JSON_CONTENT_TYPE, error_body, error_headers, read_metadata, too_large
from .base import Broker, BrokerMessage, EngineSettings

__all__ = ["Discovery"]

Send = Callable[[str, bytes, "dict[str, str] | None"], Awaitable[None]]
Refuse = Callable[[BrokerMessage, RpcError], Awaitable[None]]
Authorize = Callable[[Metadata, str], "RpcError | None"]


class Discovery:
    """The discovery answers of one binding's services."""

    def __init__(
        self,
        services: Sequence[MicroService],
        broker: Broker,
        settings: EngineSettings,
        url: str,
        authorize: Authorize | None,
        send: Send,
        refuse: Refuse,
    ) -> None:
        """Answer for ``services`` (served at ``url``) with ``send``; ``refuse`` answers what
        cannot be sent (a document over the broker's ``max_payload``) and counts it."""
        self.services = services
        self._broker = broker
        self._settings = settings
        self._url = url
        self._authorize = authorize
        self._send = send
        self._refuse = refuse
        self._documents: dict[str, bytes] = {}  # discovery subject -> the service's document

    async def _refused(self, msg: BrokerMessage, method: str) -> bool:
        """Answer ``msg`` with the authorizer's refusal, if any."""
        authorize = self._authorize
        denied = None if authorize is None else authorize(read_metadata(msg.headers), method)
        if denied is not None:
            await self._send(msg.reply, error_body(denied, PROTO), error_headers(denied, PROTO))
        return denied is not None

    async def on_micro(self, msg: BrokerMessage) -> None:
        """A NATS micro request (``$SRV.PING|INFO|STATS``): one answer per matching service."""
        if not msg.reply or await self._refused(msg, MICRO_METHOD):
            return
        for body in answers(self.services, msg.subject):
            await self._send(msg.reply, body, None)

    async def on_asyncapi(self, msg: BrokerMessage) -> None:
        """A request on a service's AsyncAPI subject: its document, made once."""
        if not msg.reply or await self._refused(msg, ASYNCAPI_METHOD):
            return
        document = self._documents.get(msg.subject)
        if document is None:
            document = self._documents[msg.subject] = self._document(msg.subject)
        limit = self._broker.max_payload
        if len(document) > limit:
            await self._refuse(msg, too_large(len(document), limit))
        else:
            await self._send(msg.reply, document, {CONTENT_TYPE: JSON_CONTENT_TYPE})

    def _document(self, subject: str) -> bytes:
        from ._asyncapi import asyncapi_document

        (service,) = [s.info for s in self.services if s.asyncapi_subject == subject]
        settings = self._settings
        document = asyncapi_document(
            [service],
            title=service.name,
            version=settings.version,
            servers=[self._url],  # only a URL of the broker's own schemes, only its host
            prefix=settings.prefix,
            queue_group=settings.queue_group,
            bindings=self._broker.asyncapi_bindings(),
        )
        return json.dumps(document, separators=(",", ":")).encode()
