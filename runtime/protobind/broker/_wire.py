"""The broker engine's wire vocabulary: header names, status mapping, metadata and error encoding.

docs/protocols.md ("NATS request-reply") is the normative description; this module is its code.
Header names are matched case-insensitively on receipt and sent in the spelling below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .._context import Context
from .._errors import Code, RpcError, unpack_details
from .._metadata import Metadata
from .._wire import (
    HTTP_STATUS,
    TRAILER_PREFIX,
    b64decode_lenient,
    b64encode_unpadded,
    connect_error,
    connect_error_from,
    is_header_name,
)
from ..codec import PROTO, Codec, codec_for_media_type
from ..method import MethodInfo
from .base import BrokerError, NotConnected, PayloadTooLarge, Unsupported

__all__ = [
    "ACK",
    "CANCEL_SUBJECT",
    "CONTENT_TYPE",
    "COUNT",
    "FRAME",
    "HEARTBEAT",
    "JSON_CONTENT_TYPE",
    "MICRO_ERROR",
    "MICRO_ERROR_CODE",
    "PROTO_CONTENT_TYPE",
    "RESERVED",
    "RESERVED_PREFIXES",
    "STATUS",
    "TIMEOUT",
    "WINDOW",
    "add_metadata_value",
    "codec_for",
    "codec_of_content_type",
    "error_body",
    "error_headers",
    "header",
    "headers_size",
    "is_reserved",
    "method_subject",
    "publish_error",
    "put_content_type",
    "put_metadata",
    "read_error",
    "read_metadata",
    "read_request_headers",
    "read_response_headers",
    "too_large",
]

CONTENT_TYPE = "Content-Type"
JSON_CONTENT_TYPE = "application/json"
PROTO_CONTENT_TYPE = "application/protobuf"
#: Relative deadline of a call, integer milliseconds (relative so clocks need not agree).
TIMEOUT = "Protobind-Timeout-Ms"
#: Exact gRPC status code of an error reply or a stream's end frame.
STATUS = "Protobind-Status"
#: NATS micro error headers, understood by `nats micro` tooling and other micro clients.
MICRO_ERROR_CODE = "Nats-Service-Error-Code"
MICRO_ERROR = "Nats-Service-Error"
#: Streaming control vocabulary (see _nats_stream).
FRAME = "Protobind-Frame"
WINDOW = "Protobind-Window"
HEARTBEAT = "Protobind-Heartbeat-Ms"
ACK = "Protobind-Ack"
COUNT = "Protobind-Count"
#: Subject (after the prefix) where a client announces that it abandoned a unary call; the
#: body is the call's reply subject. Every replica listens, the one running the call cancels it.
CANCEL_SUBJECT = "$PROTOBIND.CANCEL"
#: Subject (after the prefix) where a client asks whether a unary call it waits for is still alive;
#: the body is the call's reply subject. The replica that holds the call (running or queued)
#: answers on the probe's reply subject; nobody answering means the call's server is gone.
PROBE_SUBJECT = "$PROTOBIND.PROBE"

_TIMEOUT_VALUE = re.compile(r"[0-9]{1,10}")

# lower-case spellings for lookups in received headers
_CONTENT_TYPE = CONTENT_TYPE.lower()
_TIMEOUT = TIMEOUT.lower()
#: Header names that are never metadata: ours, NATS's own, and the inline status nats-py exposes.
RESERVED_PREFIXES = ("protobind-", "nats-")
RESERVED = frozenset({_CONTENT_TYPE, "status", "description"})

# Used only for replies of plain NATS micro services, which carry no Protobind-Status; codes that
# several gRPC codes share (400, 409, 500) go to the most general one.
_FROM_HTTP_STATUS: dict[int, Code] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED,
    409: Code.ABORTED,
    429: Code.RESOURCE_EXHAUSTED,
    499: Code.CANCELLED,
    501: Code.UNIMPLEMENTED,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}


def codec_for(headers: Mapping[str, str] | None) -> Codec:
    """The codec a message's ``Content-Type`` asks for (binary protobuf when absent)."""
    if headers:
        for key, value in headers.items():
            if key.lower() == _CONTENT_TYPE:
                return codec_of_content_type(value)
    return PROTO


def codec_of_content_type(content_type: str) -> Codec:
    """The codec for a ``Content-Type`` header value; INVALID_ARGUMENT for one nobody knows."""
    if not content_type.strip():
        return PROTO
    codec = codec_for_media_type(content_type)
    if codec is None:
        raise RpcError(
            Code.INVALID_ARGUMENT,
            f"unsupported Content-Type {content_type!r}: use {JSON_CONTENT_TYPE} or {PROTO_CONTENT_TYPE}",
        )
    return codec


def put_content_type(headers: dict[str, str], codec: Codec) -> None:
    """Label a message body with its codec; binary protobuf, the default, goes unlabelled."""
    if codec is not PROTO:
        headers[CONTENT_TYPE] = codec.content_type


def is_reserved(key: str) -> bool:
    """True for header names (lower case) that belong to the protocol, not to metadata."""
    return key in RESERVED or key.startswith(RESERVED_PREFIXES)


def put_metadata(headers: dict[str, str], metadata: Metadata, prefix: str = "") -> None:
    """Add ``metadata`` to ``headers``. Repeated values of one key are joined with "," (gRPC's rule
    for HTTP/2 headers, which also applies here); ``-bin`` values are unpadded base64. Keys that
    are protocol headers are left out; a key that cannot be a header name is an error."""
    for key in metadata:
        if is_reserved(key):
            continue
        if not is_header_name(key):
            raise RpcError(Code.INTERNAL, f"metadata key {key!r} cannot be sent as a NATS header")
        values = metadata.get_all(key)
        if key.endswith("-bin"):
            encoded = [b64encode_unpadded(v.encode() if isinstance(v, str) else v) for v in values]
        else:
            encoded = [v if isinstance(v, str) else v.decode("latin-1") for v in values]
        headers[prefix + key] = encoded[0] if len(encoded) == 1 else ",".join(encoded)


def put_response_metadata(headers: dict[str, str], context: Context) -> None:
    """Add a handler's response headers (under their names) and trailers (``trailer-`` names)."""
    response_headers, trailers = context.response_metadata()
    if response_headers:
        put_metadata(headers, response_headers)
    if trailers:
        put_metadata(headers, trailers, prefix=TRAILER_PREFIX)


def add_metadata_value(metadata: Metadata, key: str, value: str) -> None:
    """Add one received header (``key`` in lower case) to ``metadata``."""
    if key.endswith("-bin"):
        for part in value.split(","):
            part = part.strip()
            try:
                metadata.add(key, b64decode_lenient(part))
            except ValueError:
                raise RpcError(Code.INVALID_ARGUMENT, f"header {key!r} is not valid base64") from None
    else:
        metadata.add(key, value)


def read_request_headers(headers: Mapping[str, str]) -> tuple[Codec, int | None, Metadata | None]:
    """Parse a call's headers: (codec, timeout in ms or None, metadata or None when there is none)."""
    if len(headers) == 1:
        # most calls: only the deadline, in the spelling protobind sends
        value = headers.get(TIMEOUT)
        if value is not None and 0 < len(value) <= 10 and value.isdigit() and value.isascii():
            return PROTO, int(value), None
    codec: Codec = PROTO
    timeout_ms: int | None = None
    metadata: Metadata | None = None
    for key, value in headers.items():
        lower = key.lower()
        if lower == _TIMEOUT:
            # at most 10 digits (over 100 days): a longer value is a mistake, and a huge one would
            # overflow the clock arithmetic
            if not _TIMEOUT_VALUE.fullmatch(value):
                raise RpcError(
                    Code.INVALID_ARGUMENT,
                    f"{TIMEOUT} must be 1 to 10 digits of milliseconds, got {value[:20]!r}",
                )
            timeout_ms = int(value)
        elif lower == _CONTENT_TYPE:
            codec = codec_of_content_type(value)
        elif not is_reserved(lower):
            if metadata is None:
                metadata = Metadata()
            add_metadata_value(metadata, lower, value)
    return codec, timeout_ms, metadata


def read_response_headers(headers: Mapping[str, str]) -> tuple[Metadata, Metadata]:
    """Split a unary reply's headers into (response headers, trailers)."""
    response = Metadata()
    trailers = Metadata()
    for key, value in headers.items():
        lower = key.lower()
        if is_reserved(lower):
            continue
        if lower.startswith(TRAILER_PREFIX):
            add_metadata_value(trailers, lower[len(TRAILER_PREFIX) :], value)
        else:
            add_metadata_value(response, lower, value)
    return response, trailers


def headers_size(headers: Mapping[str, str] | None) -> int:
    """Bytes of the NATS header block for ``headers`` (it counts against max_payload)."""
    if not headers:
        return 0
    # "NATS/1.0\r\n" + "Key: Value\r\n"... + "\r\n"
    return 12 + sum(len(key) + len(value.encode()) + 4 for key, value in headers.items())


def read_metadata(headers: Mapping[str, str] | None) -> Metadata:
    """Every non-protocol header as metadata (stream header and end frames)."""
    metadata = Metadata()
    if headers:
        for key, value in headers.items():
            lower = key.lower()
            if not is_reserved(lower):
                add_metadata_value(metadata, lower, value)
    return metadata


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """The value of header ``name`` (given in its canonical spelling), matched case-insensitively."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def error_headers(error: RpcError, codec: Codec) -> dict[str, str]:
    """The headers of an error reply: the exact code plus the NATS-micro error headers."""
    headers = {
        STATUS: str(int(error.code)),
        MICRO_ERROR_CODE: str(HTTP_STATUS.get(error.code, 500)),
        # header values cannot hold line breaks; the exact message is in the body
        MICRO_ERROR: " ".join(error.message.split()) or error.code.name,
    }
    put_content_type(headers, codec)
    return headers


def error_body(error: RpcError, codec: Codec) -> bytes:
    """``google.rpc.Status`` in binary, or the Connect JSON error object for JSON callers."""
    if codec is not PROTO:
        return json.dumps(connect_error(error), separators=(",", ":"), ensure_ascii=False).encode()
    return bytes(error.to_status().SerializeToString())


def read_error(headers: Mapping[str, str], body: bytes) -> RpcError | None:
    """The error a reply carries, or ``None`` when it is a success.

    Protobind peers send ``Protobind-Status`` with the exact code and the status in the body; plain
    NATS micro services send only the micro headers, mapped here to the nearest code.
    """
    status = header(headers, STATUS)
    if status is not None:
        try:
            code = Code.from_number(int(status))
        except ValueError:
            code = Code.UNKNOWN
        if code is Code.OK:
            return None
        return _decode_status(code, body, codec_for(headers), header(headers, MICRO_ERROR) or "")
    micro_code = header(headers, MICRO_ERROR_CODE)
    if micro_code is not None:
        try:
            number = int(micro_code)
        except ValueError:
            number = 500
        return RpcError(_FROM_HTTP_STATUS.get(number, Code.UNKNOWN), header(headers, MICRO_ERROR) or "")
    return None


def _decode_status(code: Code, body: bytes, codec: Codec, fallback: str) -> RpcError:
    if not body:
        return RpcError(code, fallback)
    try:
        if codec is not PROTO:
            return _decode_json_error(code, body)
        from google.rpc import status_pb2

        status = status_pb2.Status.FromString(body)
        return RpcError(code, status.message, unpack_details(status.details))
    except Exception:
        # a malformed error body must not hide the status code the header already gave
        return RpcError(code, fallback)


def _decode_json_error(code: Code, body: bytes) -> RpcError:
    error = connect_error_from(json.loads(body), code)
    # the header's exact code wins over the JSON's (equal for protobind peers)
    return RpcError(code, error.message, error.details)


def method_subject(prefix: str, method: MethodInfo[Any, Any]) -> str:
    """The subject of ``method``'s calls: ``{prefix}{package}.{Service}.{Method}``."""
    return f"{prefix}{method.service}.{method.name}"


#: Subject (after the prefix, then the service's full name) where a service answers with its
#: AsyncAPI document.
ASYNCAPI_SUBJECT = "$PROTOBIND.ASYNCAPI"


def asyncapi_subject(prefix: str, service: str) -> str:
    return f"{prefix}{ASYNCAPI_SUBJECT}.{service}"


def publish_error(exc: BrokerError) -> RpcError:
    """The error a caller sees when the broker refused to send its message."""
    if isinstance(exc, PayloadTooLarge):
        return RpcError(Code.RESOURCE_EXHAUSTED, "message exceeds the broker's max_payload")
    if isinstance(exc, NotConnected):
        return RpcError(Code.UNAVAILABLE, "not connected to the broker")
    if isinstance(exc, Unsupported):
        return RpcError(Code.UNAVAILABLE, f"durable calls need a broker that stores messages: {exc}")
    return RpcError(Code.UNAVAILABLE, f"the broker refused the message: {type(exc).__name__}")


def too_large(size: int, limit: int) -> RpcError:
    """The error for a message of ``size`` bytes on a broker that takes at most ``limit``."""
    return RpcError(
        Code.RESOURCE_EXHAUSTED, f"message of {size} bytes exceeds the broker's max_payload ({limit})"
    )
