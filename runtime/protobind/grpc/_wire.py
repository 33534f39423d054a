"""gRPC wire vocabulary: status-code mapping, metadata rules, message parsing."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import Message

from .._errors import Code, RpcError
from .._metadata import Metadata
from .._wire import GRPC_DETAILS_KEY

if TYPE_CHECKING:
    pass

__all__ = [
    "DETAILS_KEY",
    "WireMetadata",
    "from_grpc_code",
    "to_grpc_code",
]

logger = logging.getLogger("protobind.grpc")

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
