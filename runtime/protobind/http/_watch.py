"""What the Connect and the gRPC handlers of the HTTP binding share on raw ASGI: the watch that
cancels a call whose client went away, the peer address of a request, and the refusal of a
bidirectional stream over HTTP/1.1 (both protocols of :mod:`.connect` and :mod:`.grpc` use them;
neither imports the other for them).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import Receive, Scope

    from .._context import Context

__all__ = ["BIDI_MESSAGE", "WATCH_DELAY", "ClientGone", "Watch", "Watches", "peer"]

#: A call that ends within this time never needs to learn that its client went away, so the task
#: that watches for a disconnect is only started for calls that run longer (most unary calls end
#: well before, and then cost a timer instead of a task).
WATCH_DELAY = 0.01

#: The error of a bidirectional stream over HTTP/1.1 (UNIMPLEMENTED), by ``method``.
BIDI_MESSAGE = (
    "{method} is a bidirectional stream, which needs full-duplex HTTP/2 and this request came over "
    "HTTP/1.1: call it over HTTP/2 (h2c with prior knowledge, or TLS ALPN), grpc:// or nats://"
)


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class Watches:
    """Starts the watcher task of the calls still running ``WATCH_DELAY`` after they were armed
    (up to twice that: one periodic check for every call of an app, while any is armed, instead
    of a loop timer per call)."""

    __slots__ = ("_armed", "_handle")

    def __init__(self) -> None:
        self._armed: dict[Watch, float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, watch: Watch) -> None:
        """Start ``watch``'s watcher task once it has run ``WATCH_DELAY``."""
        loop = asyncio.get_running_loop()
        self._armed[watch] = loop.time() + WATCH_DELAY
        if self._handle is None:
            self._handle = loop.call_later(WATCH_DELAY, self._check)

    def disarm(self, watch: Watch) -> None:
        """Forget ``watch`` (its call ended)."""
        self._armed.pop(watch, None)

    def _check(self) -> None:
        self._handle = None
        armed = self._armed
        if not armed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for watch, due in list(armed.items()):
            if due <= now:
                del armed[watch]
                watch._start()
        if armed:
            self._handle = loop.call_later(WATCH_DELAY, self._check)


class Watch:
    """Cancels the running call when its client disconnects.

    ``arm()`` is called once the request body has been read completely (from then on, ASGI's
    ``receive()`` only reports the disconnect); the actual watcher task starts ``WATCH_DELAY``
    later (by ``watches``, when given, else by a timer of its own).
    """

    __slots__ = ("_context", "_receive", "_task", "_timer", "_watcher", "_watches", "gone")

    def __init__(self, receive: Receive, context: Context, watches: Watches | None = None) -> None:
        self._receive = receive
        self._context = context
        self._task = asyncio.current_task()
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._watches = watches
        self.gone = False

    def arm(self) -> None:
        """The request body is read: watch for the disconnect from ``WATCH_DELAY`` on."""
        if self._timer is None and self._watcher is None:
            if self._watches is not None:
                self._watches.arm(self)
            else:
                self._timer = asyncio.get_running_loop().call_later(WATCH_DELAY, self._start)

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.client_went_away()

    def client_went_away(self) -> None:
        """Cancel the call's context and its task."""
        self.gone = True
        self._context.cancel()
        if self._task is not None:
            self._task.cancel()

    def stop(self) -> None:
        """The call ended: stop watching."""
        if self._watches is not None:
            self._watches.disarm(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


def peer(scope: Scope) -> str:
    """``Context.peer`` of an ASGI request: ``host:port``, an IPv6 host in brackets."""
    client = scope.get("client")
    if not client:
        return ""
    host = client[0]
    return f"[{host}]:{client[1]}" if ":" in host else f"{host}:{client[1]}"
