"""Wire pieces shared by several transports, each written once.

- the gRPC code -> HTTP status table (Connect and gRPC-Gateway; the HTTP binding answers with it,
  the broker engine reports it in the NATS-micro ``Nats-Service-Error-Code`` header);
- the Connect JSON error object (the HTTP binding's error body, and the broker engine's error body
  for JSON callers);
- unpadded base64 (``-bin`` metadata, error details), header-name rules, the trailer prefix.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Any

from google.protobuf import any_pb2

from ._errors import Code, RpcError, pack_details, unpack_details

__all__ = [
    "GRPC_DETAILS_KEY",
    "HTTP_STATUS",
    "TRAILER_PREFIX",
    "b64decode_lenient",
    "b64encode_unpadded",
    "connect_error",
    "connect_error_from",
    "grpc_deadline",
    "grpc_status_fields",
    "is_header_name",
    "parse_grpc_timeout",
]

#: gRPC code -> HTTP status, as Connect and gRPC-Gateway map them (docs/protocols.md, HTTP "Errors"). The HTTP
#: binding answers with it; the NATS binding reports it in ``Nats-Service-Error-Code``.
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

#: Prefix of a response header that carries a unary trailer (the Connect convention, also used on NATS).
TRAILER_PREFIX = "trailer-"

_TYPE_URL_PREFIX = "type.googleapis.com/"
# RFC 7230 token characters: what HTTP/1.1 and NATS accept as a header name
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_header_name(name: str) -> bool:
    """Whether ``name`` can be an HTTP/1.1 or NATS header name."""
    return _HEADER_NAME.fullmatch(name) is not None


def b64encode_unpadded(data: bytes) -> str:
    """Standard base64 without ``=`` padding (what Connect and gRPC send)."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode_lenient(text: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not (Connect lets senders choose)."""
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("invalid base64") from exc


def connect_error(error: RpcError) -> dict[str, Any]:
    """The Connect error object: ``{"code": ..., "message": ..., "details": [{"type", "value"}]}``."""
    out: dict[str, Any] = {"code": error.code.connect_name}
    if error.message:
        out["message"] = error.message
    if error.details:
        out["details"] = [
            {
                "type": detail.type_url.rpartition("/")[2],
                "value": b64encode_unpadded(detail.value),
            }
            for detail in pack_details(error.details)
        ]
    return out


def connect_error_from(obj: object, fallback: Code) -> RpcError:
    """Rebuild an :class:`RpcError` from a Connect error object; ``fallback`` when it has no code."""
    if not isinstance(obj, dict):
        return RpcError(fallback, "")
    code_name = obj.get("code")
    code = Code.from_connect_name(code_name) if isinstance(code_name, str) else fallback
    message = obj.get("message")
    anys: list[any_pb2.Any] = []
    details = obj.get("details")
    if isinstance(details, list):
        for item in details:
            if not isinstance(item, dict):
                continue
            type_name, value = item.get("type"), item.get("value")
            if not isinstance(type_name, str) or not isinstance(value, str):
                continue
            try:
                raw = b64decode_lenient(value)
            except ValueError:
                continue
            anys.append(any_pb2.Any(type_url=_TYPE_URL_PREFIX + type_name, value=raw))
    return RpcError(code, message if isinstance(message, str) else "", unpack_details(anys))


# --- gRPC status in trailers ----------------------------------------------------------------------

#: The trailer that carries the whole error, details included, as a binary ``google.rpc.Status``.
GRPC_DETAILS_KEY = "grpc-status-details-bin"

# grpc-timeout: at most 8 digits and a unit (PROTOCOL-HTTP2.md); the unit's length in seconds
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")


def parse_grpc_timeout(text: str) -> float:
    """Seconds of a ``grpc-timeout`` header value (``100m``, ``5S``); ValueError when malformed."""
    match = _TIMEOUT.fullmatch(text.strip())
    if match is None:
        raise ValueError("grpc-timeout is at most 8 digits and one of the units H M S m u n")
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def grpc_deadline(remaining: float) -> float:
    """The caller's deadline (``time.monotonic()`` based) as well as ``grpc-timeout`` tells it, never
    later than the real one.

    gRPC core rounds the timeout it sends *up* to a coarser unit as it grows (1 ms below 1 s,
    10 ms below 10 s, 100 ms below 100 s, then seconds), from a clock it may have read a little
    earlier, so a 5 s timeout can arrive as 5.01 s. Taking one such step off keeps a handler from
    planning with time its caller will not wait for.
    """
    if remaining < 1.0:
        slack = 0.001
    elif remaining < 10.0:
        slack = 0.01
    elif remaining < 100.0:
        slack = 0.1
    else:
        slack = 1.0
    return time.monotonic() + max(0.0, remaining - slack)


def _percent_encode(message: str) -> str:
    """``grpc-message``: UTF-8, with every byte outside printable ASCII (and ``%``) as %XX."""
    out = []
    for byte in message.encode("utf-8"):
        out.append(chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}")
    return "".join(out)


def grpc_status_fields(error: RpcError | None) -> list[tuple[str, str]]:
    """The gRPC status trailers of a call that ended with ``error`` (``None``: OK): ``grpc-status``,
    ``grpc-message`` and, for an error, ``grpc-status-details-bin`` (base64, unpadded)."""
    if error is None:
        return [("grpc-status", "0")]
    # OK cannot be an error status on the wire
    code = error.code if error.code is not Code.OK else Code.UNKNOWN
    fields = [("grpc-status", str(int(code)))]
    if error.message:
        fields.append(("grpc-message", _percent_encode(error.message)))
    status = RpcError(code, error.message, error.details).to_status()
    fields.append((GRPC_DETAILS_KEY, b64encode_unpadded(status.SerializeToString())))
    return fields
