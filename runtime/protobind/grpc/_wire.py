"""gRPC wire vocabulary: status-code mapping, metadata rules, message parsing."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from .._errors import Code, RpcError
from .._metadata import Metadata
from .._wire import GRPC_DETAILS_KEY

__all__ = [
    "DETAILS_KEY",
    "WRITE_RACE",
    "ServerStatus",
    "WireMetadata",
    "from_grpc_code",
    "to_grpc_code",
]

logger = logging.getLogger("protobind.grpc")
T = TypeVar("T")

DETAILS_KEY = GRPC_DETAILS_KEY

# The one mapping between protobind's codes and grpcio's; both use gRPC's names.
_TO_GRPC: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in Code}
_FROM_GRPC: dict[grpc.StatusCode, Code] = {status: code for code, status in _TO_GRPC.items()}


def to_grpc_code(code: Code) -> grpc.StatusCode:
    """grpcio's status code for ``code``."""
    return _TO_GRPC[code]


def from_grpc_code(status: grpc.StatusCode | None) -> Code:
    """protobind's :class:`Code` for a grpcio status code (UNKNOWN for ``None``)."""
    return _FROM_GRPC.get(status, Code.UNKNOWN) if status is not None else Code.UNKNOWN


WireMetadata = tuple[tuple[str, str | bytes], ...]


_KEY = re.compile(r"[0-9a-z_.\-]+\Z")
_TEXT = re.compile(r"[\x20-\x7e]*\Z")


def _wire_pair(key: str, value: str | bytes) -> tuple[str, str | bytes] | None:
    """One entry as grpcio wants it (``-bin`` keys carry bytes, every other key printable ASCII),
    or ``None`` when gRPC cannot carry it: core would fail the whole call on such an entry."""
    if not _KEY.match(key) or key.startswith("grpc-"):
        return None
    if key.endswith("-bin"):
        return key, value if isinstance(value, bytes) else value.encode()
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return (key, value) if _TEXT.match(value) else None


def _wire(metadata: Metadata, *, strict: bool) -> WireMetadata:
    """``metadata`` for grpcio. Entries gRPC cannot carry fail the call with ``INVALID_ARGUMENT``
    when ``strict`` (a caller's request metadata, perhaps forwarded by a gateway from its own
    caller), otherwise they are logged and left out (a handler's response metadata: the call
    itself should still succeed)."""
    pairs: list[tuple[str, str | bytes]] = []
    for key, value in metadata.items():
        pair = _wire_pair(key, value)
        if pair is not None:
            pairs.append(pair)
        elif strict:
            raise RpcError(
                Code.INVALID_ARGUMENT,
                f"metadata {key!r} cannot be sent over gRPC: keys are lower-case [0-9a-z_.-] and not "
                "grpc-*, values of keys not ending in -bin are printable ASCII",
            )
        else:
            logger.error("response metadata %r left out: not valid gRPC metadata", key)
    return tuple(pairs)


def _deserializer(message_type: type[Message]) -> Callable[[bytes], Message | None]:
    """Parse, or give ``None`` for bytes that are not the message: grpcio would otherwise turn a
    parse error into UNKNOWN with the exception text in the status message."""
    parse = message_type.FromString

    def deserialize(data: bytes) -> Message | None:
        try:
            return parse(data)
        except Exception:
            return None

    return deserialize


#: What grpc.aio reports when a request write finds the call already ended in gRPC core.
WRITE_RACE = "Internal error from Core"


class ServerStatus:
    """Keeps the status the server sent for a grpc.aio call that writes requests.

    A write that reaches gRPC core after the server ended the call, but before the loop ran the
    status callback, fails; grpc.aio then records INTERNAL ``Internal error from Core`` as the
    call's status, over the server's (``_write`` calls ``set_internal_error`` once the send fails,
    and the status callback has run by then). Seen under load on a server that answers without
    reading, such as an auth refusal. The status recorded first is kept here by a done callback,
    and :meth:`of` gives it back.
    """

    __slots__ = ("_first", "_kept")

    def __init__(self, grpc_call: Any) -> None:
        self._first: grpc.aio.AioRpcError | None = None
        self._kept = False
        grpc_call.add_done_callback(self._keep)

    def _keep(self, grpc_call: Any) -> None:
        # Runs inside grpc.aio's status setter: the accessors return without suspending, and
        # nothing may raise here. Older grpcio (1.62 among them) runs the done callbacks again
        # each time a status is set, the race's INTERNAL too: only the first is kept.
        if self._kept:
            return
        self._kept = True
        with contextlib.suppress(Exception):
            self._first = _status_now(grpc_call)

    def of(self, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """``error``, or the server's status when ``error`` is grpc.aio's record of the race."""
        if error.code() is not grpc.StatusCode.INTERNAL or error.details() != WRITE_RACE:
            return error
        first = self._first
        if first is not None and first.details() != WRITE_RACE:
            return first  # the server's status came first, and was written over
        return error


def _status_now(grpc_call: Any) -> grpc.aio.AioRpcError | None:
    """The ended ``grpc_call``'s status as an error (``None`` when it is OK)."""
    code = _now(grpc_call.code())
    if code is grpc.StatusCode.OK:
        return None
    headers, trailers = _now(grpc_call.initial_metadata()), _now(grpc_call.trailing_metadata())
    return grpc.aio.AioRpcError(code, headers, trailers, _now(grpc_call.details()), None)


def _now(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that finishes without suspending (a done call's accessor)."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the call's status is not there yet")
