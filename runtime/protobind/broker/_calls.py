"""What the two halves of the engine's server binding share (:mod:`.server`: unary and one-way
calls; :mod:`._stream_server`: streaming calls): a subject's :class:`Route`, the :class:`CallRegistry`
of calls that can be cancelled by key, and the per-method statistics of a finished call."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from google.protobuf.message import Message

from .._errors import Code, RpcError
from ..endpoints import Endpoint
from ._micro import EndpointStats

__all__ = ["CallRegistry", "Route", "record", "too_big"]


class Route:
    """What the binding serves on one method's subject."""

    __slots__ = ("durable", "endpoint", "inline", "input_type", "method", "output_type", "stats", "streaming")

    def __init__(self, endpoint: Endpoint, stats: EndpointStats) -> None:
        self.endpoint = endpoint
        # a one-way method's message without a reply address: its handler runs right in the
        # consumer, like any call, instead of being acknowledged and run in the background
        self.inline = None if endpoint.direct is None else Endpoint(endpoint.method, endpoint.direct)
        self.method = endpoint.method
        self.input_type: type[Message] = endpoint.method.input_type
        self.output_type: type[Message] = endpoint.method.output_type
        self.stats = stats
        self.streaming = endpoint.method.kind.client_streams or endpoint.method.kind.server_streams
        self.durable = endpoint.method.durable


class CallRegistry:
    """The calls of one binding that can be cancelled, by key (a call's reply subject, or
    :meth:`one_way_key`): a unary call once its handler waits, a streaming call from its start.
    A deadline, a cancel notice, a liveness probe and ``stop`` find them here."""

    __slots__ = ("calls", "cancelled", "tokens")

    def __init__(self) -> None:
        #: key -> the task running that call
        self.calls: dict[str, asyncio.Task[Any]] = {}
        #: the calls this binding cancelled, and why: their CancelledError ends the call, not the consumer
        self.cancelled: dict[str, RpcError] = {}
        self.tokens = itertools.count(1)

    def one_way_key(self) -> str:
        """A key for a call that has no reply subject."""
        return f"one-way {next(self.tokens)}"

    def cancel(self, key: str, reason: RpcError) -> None:
        """Cancel the call held under ``key`` (if it still runs) for ``reason``."""
        task = self.calls.get(key)
        if task is not None and not task.done() and key not in self.cancelled:
            self.cancelled[key] = reason
            task.cancel()


def record(stats: EndpointStats, started: int, error: RpcError | None) -> None:
    """Count a finished call in its method's statistics (``started``: ``perf_counter_ns``)."""
    stats.num_requests += 1
    stats.processing_time += time.perf_counter_ns() - started
    if error is not None:
        stats.num_errors += 1
        stats.last_error = f"{error.code.name}: {error.message}"


def too_big(size: int, limit: int) -> RpcError:
    """The error for a request over ``max_message_size``."""
    return RpcError(Code.RESOURCE_EXHAUSTED, f"request of {size} bytes exceeds max_message_size ({limit})")
