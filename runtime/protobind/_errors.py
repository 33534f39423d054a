"""Status codes and the one exception type that crosses every transport."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from google.protobuf import any_pb2, symbol_database
from google.protobuf.message import Message

if TYPE_CHECKING:
    from google.rpc import status_pb2

__all__ = [
    "INTERNAL_MESSAGE",
    "SERVER_ERROR_CODES",
    "Code",
    "RpcError",
    "pack_details",
    "unpack_details",
]


# The presentation types after which a format spec formats a number (`{code:d}`, `{code:>4x}`)
_NUMERIC_FORMATS = frozenset("bcdoxXneEfFgG%")


class Code(enum.IntEnum):
    """The 17 gRPC status codes, with gRPC's names and numbers.

    A code compares and converts as its number (``Code.NOT_FOUND == 5``, ``int(code)``) and prints as
    its name: ``str(code)`` and ``f"{code}"`` are ``"NOT_FOUND"`` on every Python version; a numeric
    format (``f"{code:d}"``) gives the number.
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in _NUMERIC_FORMATS:
            return int.__format__(self, spec)
        return format(self.name, spec)

    @property
    def connect_name(self) -> str:
        """The Connect spelling: ``NOT_FOUND`` -> ``"not_found"``, ``CANCELLED`` -> ``"canceled"``."""
        return "canceled" if self is Code.CANCELLED else self.name.lower()

    @classmethod
    def from_connect_name(cls, name: str) -> Code:
        """Inverse of :attr:`connect_name`; unknown names give ``UNKNOWN``."""
        if name == "canceled":
            return cls.CANCELLED
        try:
            return cls[name.upper()]
        except KeyError:
            return cls.UNKNOWN

    @classmethod
    def from_number(cls, number: int) -> Code:
        """Map a wire number to a code; numbers outside 0..16 give ``UNKNOWN`` (as gRPC does)."""
        try:
            return cls(number)
        except ValueError:
            return cls.UNKNOWN


class RpcError(Exception):
    """An RPC failed with a status.

    Raised by a handler, it reaches the caller with the same ``code``, ``message`` and ``details``
    on every transport. Raised by a client, it carries what the server (or the transport) said.
    ``details`` are protobuf messages, for example ``google.rpc.ErrorInfo``; on the wire they are
    ``google.protobuf.Any``. The standard detail types of ``google/rpc/error_details.proto``
    (``ErrorInfo``, ``BadRequest``, ``RetryInfo``, ...) always arrive decoded; a detail of another
    type arrives decoded when its module is imported in the receiving process, else as an ``Any``.

    A client's error that the server did not send, but the transport made from a failure of its
    library (no connection, a limit of gRPC core), has that failure as its ``__cause__``: its
    message may hold the library's text (addresses, header lists). A gateway shows its callers a
    plain message instead and logs that text.
    """

    __slots__ = ("code", "details", "message")

    def __init__(self, code: Code, message: str = "", details: Iterable[Message] = ()) -> None:
        super().__init__(code, message)
        self.code = Code(code)
        self.message = message
        self.details: tuple[Message, ...] = tuple(details)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return f"RpcError({self.code.name}, {self.message!r}, details={len(self.details)})"

    def packed_details(self) -> list[any_pb2.Any]:
        """The details as ``google.protobuf.Any`` (an ``Any`` stays as it is)."""
        return pack_details(self.details)

    def to_status(self) -> status_pb2.Status:
        """This error as a ``google.rpc.Status``."""
        from google.rpc import status_pb2

        return status_pb2.Status(code=int(self.code), message=self.message, details=self.packed_details())

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> RpcError:
        """Build an error from a ``google.rpc.Status``, unpacking details of known types."""
        return cls(Code.from_number(status.code), status.message, unpack_details(status.details))


#: What a caller is told of an unexpected server-side failure: exception text never leaves the
#: process.
INTERNAL_MESSAGE = "internal error"

#: Codes that mark a *server* span as failed (the OpenTelemetry gRPC conventions; protobind applies
#: them on every transport). The other codes are the caller's doing; on a client span every code
#: but OK is an error.
SERVER_ERROR_CODES = frozenset(
    {
        Code.UNKNOWN,
        Code.DEADLINE_EXCEEDED,
        Code.UNIMPLEMENTED,
        Code.INTERNAL,
        Code.UNAVAILABLE,
        Code.DATA_LOSS,
    }
)


def pack_details(details: Iterable[Message]) -> list[any_pb2.Any]:
    """Wrap each detail in ``google.protobuf.Any``."""
    packed = []
    for detail in details:
        if isinstance(detail, any_pb2.Any):
            packed.append(detail)
        else:
            wrapper = any_pb2.Any()
            wrapper.Pack(detail)
            packed.append(wrapper)
    return packed


def unpack_details(anys: Sequence[any_pb2.Any]) -> list[Message]:
    """Unpack each ``Any`` whose type is registered in this process; keep the others as ``Any``.

    The standard error detail types (``google/rpc/error_details.proto``) are always registered:
    a caller should not have to import their module before it can read an error.
    """
    if not anys:
        return []
    from google.rpc import error_details_pb2  # noqa: F401 (registers the standard detail types)

    db = symbol_database.Default()
    out: list[Message] = []
    for wrapper in anys:
        type_name = wrapper.type_url.rpartition("/")[2]
        try:
            message_class = db.GetSymbol(type_name)
        except KeyError:
            out.append(wrapper)
            continue
        message = message_class()
        if wrapper.Unpack(message):
            out.append(message)
        else:
            out.append(wrapper)
    return out
