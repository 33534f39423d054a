"""What the server and client halves of the HTTP binding agree on: the status table, the Connect
error body, metadata carried in headers, stream envelopes and request compression.

This module imports no third-party library, so both halves (and tests) can use it freely.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from .._errors import Code, RpcError
from .._metadata import Metadata, MetadataValue
from .._wire import (
    TRAILER_PREFIX,
    b64decode_lenient,
    b64encode_unpadded,
    connect_error,
    connect_error_from,
    is_header_name,
)

__all__ = [
    "ENVELOPE_HEADER_SIZE",
    "FLAG_COMPRESSED",
    "FLAG_END_STREAM",
    "PROTOCOL_HEADERS",
    "STREAM_CONTENT_TYPES",
    "UNARY_CONTENT_TYPES",
    "code_of_bare_status",
    "content_type_codec",
    "encode_header",
    "end_stream_message",
    "envelope",
    "error_body",
    "error_from_body",
    "gunzip",
    "header_value",
    "metadata_from_json",
    "metadata_json",
    "metadata_value",
    "parse_end_stream",
    "parse_envelope_header",
    "request_header",
    "split_response_headers",
]

# Connect's rule for a response whose body is not a Connect error (a proxy's page, a bare status):
# the code is guessed from the HTTP status, anything unlisted is UNKNOWN.
_CODE_OF_BARE_STATUS: Mapping[int, Code] = {
    400: Code.INTERNAL,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.UNIMPLEMENTED,
    429: Code.UNAVAILABLE,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.UNAVAILABLE,
}

_TYPE_URL_PREFIX = "type.googleapis.com/"

UNARY_CONTENT_TYPES = {"application/proto": "proto", "application/json": "json"}
STREAM_CONTENT_TYPES = {"application/connect+proto": "proto", "application/connect+json": "json"}

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
_ENVELOPE = struct.Struct(">BI")
ENVELOPE_HEADER_SIZE = _ENVELOPE.size

#: Headers that belong to HTTP or to the Connect protocol itself, never to call metadata.
PROTOCOL_HEADERS = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "date",
        "server",
        "vary",
        "connect-protocol-version",
        "connect-timeout-ms",
        "connect-content-encoding",
        "connect-accept-encoding",
    }
)


def code_of_bare_status(status: int) -> Code:
    """The code for an HTTP status that came without a Connect error body."""
    return _CODE_OF_BARE_STATUS.get(status, Code.UNKNOWN)


def content_type_codec(content_type: str, table: Mapping[str, str]) -> str | None:
    """The codec name for ``content_type`` (parameters such as ``charset`` ignored), or ``None``."""
    base = content_type.partition(";")[0].strip().lower()
    return table.get(base)


# --- errors ---------------------------------------------------------------------------------------


def error_body(error: RpcError) -> bytes:
    """The Connect error object as a response body."""
    return json.dumps(connect_error(error), separators=(",", ":"), ensure_ascii=False).encode()


def error_from_body(status: int, body: bytes) -> RpcError:
    """The error a non-200 unary response carries; a body that is not a Connect error falls back
    to the HTTP status (the body of such a response is not shown: it may be a proxy's page)."""
    fallback = code_of_bare_status(status)
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return RpcError(fallback, f"HTTP status {status}")
    if not isinstance(obj, dict) or not isinstance(obj.get("code"), str):
        return RpcError(fallback, f"HTTP status {status}")
    return connect_error_from(obj, fallback)


# --- base64 and metadata --------------------------------------------------------------------------


def header_value(key: str, value: MetadataValue) -> str:
    """The header text of one metadata value: ``-bin`` keys carry base64, others plain text."""
    if key.endswith("-bin"):
        return b64encode_unpadded(value if isinstance(value, bytes) else value.encode())
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


def metadata_value(key: str, text: str) -> MetadataValue:
    """Inverse of :func:`header_value`; a ``-bin`` value that is not base64 stays text."""
    if key.endswith("-bin"):
        try:
            return b64decode_lenient(text)
        except ValueError:
            return text
    return text


_NOT_IN_HEADER_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def request_header(key: str, value: MetadataValue) -> tuple[str, str]:
    """One request header for a metadata entry of a call; ``INVALID_ARGUMENT`` when it cannot be
    one (a key that is not a header name, a control character in the value), before anything is
    sent. The metadata may be a gateway's caller's, so this is that caller's error."""
    text = header_value(key, value)
    if not is_header_name(key) or _CONTROL.search(text):
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f"metadata {key!r} cannot be sent as an HTTP header: keys are header names (tokens), "
            "values hold no control characters",
        )
    return key, text


def encode_header(key: str, value: MetadataValue) -> tuple[bytes, bytes] | None:
    """One ASGI header for a metadata entry, or ``None`` when it cannot be a header: a control
    character would break (or split) the response, so such entries are dropped, not sent. Binary
    values belong under ``-bin`` keys, which carry base64."""
    text = header_value(key, value)
    # metadata keys are lower case; an upper-case one did not come from Metadata and is refused
    if _NOT_IN_HEADER_VALUE.search(text) or key != key.lower() or not is_header_name(key):
        return None
    return key.encode("latin-1"), text.encode("latin-1")


def metadata_json(trailers: Metadata) -> dict[str, list[str]]:
    """Trailers as the ``metadata`` object of a Connect end-of-stream message."""
    out: dict[str, list[str]] = {}
    for key, value in trailers.items():
        out.setdefault(key, []).append(header_value(key, value))
    return out


def metadata_from_json(obj: object) -> Metadata:
    """Inverse of :func:`metadata_json`; anything malformed is left out."""
    trailers = Metadata()
    if isinstance(obj, dict):
        for key, values in obj.items():
            if isinstance(key, str) and isinstance(values, list):
                for value in values:
                    if isinstance(value, str):
                        trailers.add(key, metadata_value(key.lower(), value))
    return trailers


def split_response_headers(pairs: Iterable[tuple[str, str]]) -> tuple[Metadata, Metadata]:
    """Response headers -> (header metadata, unary trailers from ``Trailer-`` headers)."""
    headers, trailers = Metadata(), Metadata()
    for name, text in pairs:
        key = name.lower()
        if key in PROTOCOL_HEADERS:
            continue
        if key.startswith(TRAILER_PREFIX):
            key = key[len(TRAILER_PREFIX) :]
            trailers.add(key, metadata_value(key, text))
        else:
            headers.add(key, metadata_value(key, text))
    return headers, trailers


# --- envelopes ------------------------------------------------------------------------------------


def envelope(data: bytes, flags: int = 0) -> bytes:
    """One Connect streaming envelope: flags, big-endian length, data."""
    return _ENVELOPE.pack(flags, len(data)) + data


def parse_envelope_header(header: bytes) -> tuple[int, int]:
    """``(flags, length)`` of an envelope header."""
    flags, size = _ENVELOPE.unpack(header)
    return flags, size


def end_stream_message(error: RpcError | None, trailers: Metadata) -> bytes:
    """The final envelope of a Connect stream: the error, if any, and the trailers."""
    obj: dict[str, Any] = {}
    if error is not None:
        obj["error"] = connect_error(error)
    if trailers:
        obj["metadata"] = metadata_json(trailers)
    return envelope(json.dumps(obj, separators=(",", ":")).encode(), FLAG_END_STREAM)


def parse_end_stream(data: bytes) -> tuple[RpcError | None, Metadata]:
    """The error and trailers of a Connect end-of-stream message."""
    try:
        obj = json.loads(data) if data else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        return RpcError(Code.INTERNAL, "invalid end-of-stream message"), Metadata()
    if not isinstance(obj, dict):
        return RpcError(Code.INTERNAL, "invalid end-of-stream message"), Metadata()
    trailers = metadata_from_json(obj.get("metadata"))
    error = obj.get("error")
    if error is None:
        return None, trailers
    return connect_error_from(error, Code.UNKNOWN), trailers


# --- compression ----------------------------------------------------------------------------------


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body, refusing to grow past ``limit`` bytes (a small body can expand a lot)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise RpcError(Code.INVALID_ARGUMENT, "body is not valid gzip") from exc
    if len(out) > limit:
        raise RpcError(Code.RESOURCE_EXHAUSTED, f"decompressed message is larger than {limit} bytes")
    return out
