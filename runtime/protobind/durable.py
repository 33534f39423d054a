"""Durable request/response from the caller's side: submit now, read the reply later, even from
another process of the same caller group.

```python
from protobind.durable import DurableCalls
from orders.v1.payments_protobind import PAYMENTS_CHARGE

async with protobind.connect("nats://127.0.0.1:4222") as channel:
    calls = DurableCalls(channel, group="checkout")
    call_id = await calls.submit(PAYMENTS_CHARGE, ChargeRequest(order_id="o-1"))  # stored
    reply = await calls.result(PAYMENTS_CHARGE, call_id, timeout=30)   # read by id
    async for reply in calls.replies():       # or every reply to the group, as it comes
        print(reply.call_id, reply.error or reply.response)
```

Works on the transports that declare durable calls (``Transport.durable_calls``: the brokers, NATS
with JetStream) for methods marked
``(protobind.v1.durable)``; docs/messaging.md ("Durable request/response") has the details.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from google.protobuf.message import Message

from ._context import CallInfo
from ._errors import Code, RpcError
from ._metadata import MetadataLike
from .broker.durable._client import DurableClient, DurableReply
from .method import MethodInfo
from .transport import all_transports
from .urls import redact

if TYPE_CHECKING:
    from ._client import Channel

__all__ = ["DurableCalls", "DurableReply", "DurableTransport"]

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)


@runtime_checkable
class DurableTransport(Protocol):
    """A client transport that stores calls for later (the broker transports): the optional
    interface a :class:`~protobind.transport.ClientTransport` declares by having ``durable``."""

    def durable(self) -> DurableClient:
        """The durable calls of this connection (``UNIMPLEMENTED`` when its broker stores nothing)."""
        ...


def _durable_schemes() -> str:
    """The URL schemes of the registered transports that declare durable calls (one per transport)."""
    return ", ".join(f"{t.schemes[0]}://" for t in all_transports() if t.durable_calls) or "none registered"


class DurableCalls:
    """Durable calls of one caller group over a channel.

    ``group`` names the caller: replies are stored for the group, and any process of the group
    (a restarted one included) reads them. Default: the channel's ``reply_group`` option
    (``default``). Client interceptors do not run for :meth:`submit`; pass metadata explicitly.
    """

    def __init__(self, channel: Channel, group: str | None = None) -> None:
        self.channel = channel
        self.group = group

    async def _client(self) -> DurableClient:
        await self.channel.open()
        transport = self.channel.transport
        if not isinstance(transport, DurableTransport):
            raise RpcError(
                Code.UNIMPLEMENTED,
                f"durable calls need a transport that stores them ({_durable_schemes()}), not "
                f"{redact(self.channel.url)}",
            )
        return transport.durable()

    def _group(self, client: DurableClient) -> str:
        return self.group or client.settings.durable.reply_group

    async def submit(
        self,
        method: MethodInfo[ReqT, Any],
        request: ReqT,
        *,
        metadata: MetadataLike | None = None,
        timeout: float | None = None,
        call_id: str | None = None,
    ) -> str:
        """Store a call of a durable ``method``; return its call id once the broker has it.

        ``call_id`` (letters, digits, ``-``, ``_``) makes the submit idempotent: submitting the
        same id again within the stream's duplicate window (2 minutes) stores nothing new.
        ``timeout`` bounds the wait for the store's acknowledgement, not the handling.
        """
        if not method.durable:
            raise ValueError(f"{method.full_name} is not marked (protobind.v1.durable)")
        if not isinstance(request, method.input_type):
            raise TypeError(f"{method.full_name} takes {method.input_type.DESCRIPTOR.full_name}")
        client = await self._client()
        call = CallInfo().prepare(method, timeout, metadata)
        return await client.submit(method, request, call, call_id=call_id, group=self._group(client))

    async def result(
        self, method: MethodInfo[Any, RespT], call_id: str, *, timeout: float | None = None
    ) -> RespT:
        """The response to call ``call_id``, waiting up to ``timeout`` seconds for it (forever
        with ``None``); raises the call's :class:`~protobind.RpcError` when it failed for good.
        The reply is removed from the reply stream once read."""
        client = await self._client()
        deadline = None if timeout is None else time.monotonic() + timeout
        reply = await client.wait_reply(call_id, self._group(client), deadline)
        return reply.response_as(method)

    async def replies(self, *, batch: int = 64) -> AsyncIterator[DurableReply]:
        """Every reply stored for the group, as it comes, shared by the group's processes. A reply
        is acknowledged when the loop asks for the next one (or by ``await reply.ack()``); one
        left unacknowledged (a ``break`` before ``ack()``, a crash) comes again after ack_wait."""
        client = await self._client()
        async for reply in client.replies(self._group(client), batch):
            yield reply

    async def consume(self, handler: Callable[[DurableReply], Awaitable[None]]) -> None:
        """Run ``handler`` for every reply of the group until cancelled; a reply is acknowledged
        after ``handler`` returned. An exception in ``handler`` propagates; the reply then comes
        again after ack_wait."""
        async for reply in self.replies():
            await handler(reply)
            await reply.ack()
