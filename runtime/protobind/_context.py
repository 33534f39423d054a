"""Per-call state: :class:`Context` on the server side, :class:`CallInfo` on the client side.

Deadlines are absolute ``time.monotonic()`` values (the clock asyncio's loop uses), so they can be
compared and converted to a wire timeout (``grpc-timeout``, ``Connect-Timeout-Ms``, a NATS header)
without drift between clocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._metadata import Metadata, MetadataLike

if TYPE_CHECKING:
    from .method import MethodInfo

from ._aio import DeadlineScope

__all__ = [
    "CallInfo",
    "Context",
    "DeadlineScope",
]


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """How a durable call reached its handler (:attr:`Context.delivery`).

    ``message_id`` is the call's id: the same on every delivery of the call, and the key a handler
    uses to make its effects idempotent (durable calls are delivered at least once). ``attempt``
    counts deliveries, this one included (1 the first time); ``max_attempts`` is the attempt after
    which a failed call goes to the dead letter.
    """

    message_id: str
    attempt: int
    max_attempts: int


class Context:
    """What a handler knows about the call it serves.

    - ``metadata``: the request metadata (case-insensitive).
    - ``set_header()`` / ``set_trailer()``: response metadata, sent before / after the response.
    - ``deadline`` / ``time_remaining()``: when the caller gives up (``None``: never).
    - ``method``: ``package.Service/Method``; ``method_info`` the full :class:`MethodInfo`.
    - ``transport``: the name of the transport serving the call (``"grpc"``, ``"http"``, ...; on a
      broker, the broker's own name, ``Broker.name``); ``peer``: the caller's address.
    - ``cancelled()``: true once the caller went away or the deadline passed. The handler's task is
      also cancelled then, so a handler blocked in ``await`` sees ``asyncio.CancelledError``.
    - ``delivery``: for a durable call delivered by a broker, its message id and attempt number
      (:class:`DeliveryInfo`); ``None`` for every other call.
    """

    __slots__ = (
        "_cancelled",
        "_headers",
        "_metadata",
        "_metadata_source",
        "_trailers",
        "deadline",
        "delivery",
        "method_info",
        "peer",
        "transport",
    )

    def __init__(
        self,
        method_info: MethodInfo[Any, Any],
        transport: str,
        *,
        metadata: Metadata | None = None,
        deadline: float | None = None,
        peer: str = "",
        metadata_source: Callable[[], MetadataLike] | None = None,
        delivery: DeliveryInfo | None = None,
    ) -> None:
        self.method_info = method_info
        self.delivery = delivery
        self.transport = transport
        # A transport may pass ``metadata_source`` instead of ``metadata``: the request metadata
        # is then built on first use, which most handlers never make.
        self._metadata = metadata
        self._metadata_source = metadata_source
        self.deadline = deadline
        self.peer = peer
        self._headers: Metadata | None = None
        self._trailers: Metadata | None = None
        self._cancelled = False

    @property
    def metadata(self) -> Metadata:
        """The request metadata (case-insensitive)."""
        metadata = self._metadata
        if metadata is None:
            source, self._metadata_source = self._metadata_source, None
            metadata = self._metadata = Metadata(source() if source is not None else None)
        return metadata

    @metadata.setter
    def metadata(self, value: Metadata) -> None:
        self._metadata = value

    @property
    def method(self) -> str:
        """The method being served, as ``package.Service/Method``."""
        return self.method_info.full_name

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def set_header(self, key: str, value: str | bytes) -> None:
        """Add a response header. Headers set after the first response message may be dropped."""
        if self._headers is None:
            self._headers = Metadata()
        self._headers.add(key, value)

    def set_trailer(self, key: str, value: str | bytes) -> None:
        """Add a response trailer, sent with the end of the call (also when it fails)."""
        if self._trailers is None:
            self._trailers = Metadata()
        self._trailers.add(key, value)

    @property
    def response_headers(self) -> Metadata:
        """Headers set so far (for transports and interceptors)."""
        return self._headers if self._headers is not None else Metadata()

    @property
    def response_trailers(self) -> Metadata:
        """Trailers set so far (for transports and interceptors)."""
        return self._trailers if self._trailers is not None else Metadata()

    def response_metadata(self) -> tuple[Metadata | None, Metadata | None]:
        """``(headers, trailers)`` set so far, ``None`` where none were: for transports, which ask
        on every call, without allocating empty ``Metadata``."""
        return self._headers, self._trailers

    def cancelled(self) -> bool:
        """True once the caller cancelled or the deadline passed."""
        return self._cancelled or (self.deadline is not None and time.monotonic() >= self.deadline)

    def cancel(self) -> None:
        """Mark the call cancelled (transports call this when the caller goes away)."""
        self._cancelled = True

    def __repr__(self) -> str:
        return f"Context(method={self.method!r}, transport={self.transport!r}, peer={self.peer!r})"


class CallInfo:
    """Client side of one call: what goes out and what came back.

    Pass one as ``call=`` to a generated client method to read the response ``headers`` and
    ``trailers`` afterwards (also after an :class:`RpcError`). Client interceptors receive the
    ``CallInfo`` of every call and may change ``metadata`` or ``timeout`` before it is sent.
    """

    # Defaults live on the class and there is no __init__: a channel makes one CallInfo per call,
    # and this is the cheapest object Python can make. Metadata objects are made on first use.
    method: MethodInfo[Any, Any] | None = None
    deadline: float | None = None
    _metadata: Metadata | None = None
    _headers: Metadata | None = None
    _trailers: Metadata | None = None
    #: False when nothing can read ``headers`` / ``trailers`` of a successful call (the channel
    #: made this ``CallInfo`` itself and has no interceptors); a transport for which collecting
    #: them has a cost may then skip it.
    wants_response_metadata: bool = True

    def prepare(
        self, method: MethodInfo[Any, Any], timeout: float | None, metadata: MetadataLike | None
    ) -> CallInfo:
        """Fill in the method, deadline and metadata of a call about to start; returns ``self``."""
        self.method = method
        if metadata is not None:
            self.metadata = Metadata(metadata)  # a copy: interceptors may change it
        self.deadline = None if timeout is None else time.monotonic() + timeout
        return self

    @property
    def metadata(self) -> Metadata:
        """The request metadata (client interceptors may change it before it is sent)."""
        if self._metadata is None:
            self._metadata = Metadata()
        return self._metadata

    @metadata.setter
    def metadata(self, value: Metadata) -> None:
        self._metadata = value

    @property
    def outgoing_metadata(self) -> Metadata | None:
        """The request metadata, or ``None`` when there is none (for transports: asking does not
        make an empty ``Metadata``)."""
        metadata = self._metadata
        return metadata if metadata else None

    @property
    def headers(self) -> Metadata:
        """The response headers (empty until they arrived)."""
        if self._headers is None:
            self._headers = Metadata()
        return self._headers

    @headers.setter
    def headers(self, value: Metadata) -> None:
        self._headers = value

    @property
    def trailers(self) -> Metadata:
        """The response trailers (empty until they arrived)."""
        if self._trailers is None:
            self._trailers = Metadata()
        return self._trailers

    @trailers.setter
    def trailers(self, value: Metadata) -> None:
        self._trailers = value

    @property
    def timeout(self) -> float | None:
        """Seconds left until the deadline (may be negative once passed), or ``None``."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.deadline = None if value is None else time.monotonic() + value
