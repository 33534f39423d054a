"""gRPC over HTTP/2 for the native engine: length-prefixed messages, metadata as headers, status.

What both halves of the native engine (native_server.py, native_client.py) read and write on top of
the frames of h2.py, as the gRPC over HTTP/2 protocol describes it (PROTOCOL-HTTP2.md in the gRPC
repository): each message is one flags byte (bit 0: compressed with the call's ``grpc-encoding``),
a 4-byte big-endian length and the bytes; the status ends the response as trailers (``grpc-status``,
``grpc-message`` percent-encoded, ``grpc-status-details-bin``).
"""

from __future__ import annotations

import struct

from .._errors import Code, RpcError
from .._metadata import Metadata
from .._wire import b64decode_lenient, b64encode_unpadded, grpc_status_fields
from . import _h2 as h2
from ._wire import _wire_pair

__all__ = [
    "ACCEPT_ENCODING",
    "ENCODINGS",
    "PREFIX",
    "Deframer",
    "envelope",
    "message_encoding",
    "metadata_fields",
    "request_metadata",
    "status_block",
]

PREFIX = struct.Struct(">BI")
COMPRESSED = 0x01
#: the ``grpc-encoding`` values this engine reads (it sends nothing compressed): grpcio's clients and
#: servers compress with either when set to
ENCODINGS = (b"gzip", b"deflate")
#: ``grpc-accept-encoding``: what a peer may compress with
ACCEPT_ENCODING = b"identity,deflate,gzip"

#: request headers that are gRPC's or HTTP's own, never call metadata
RESERVED = frozenset(
    {
        b"content-type",
        b"te",
        b"grpc-timeout",
        b"grpc-encoding",
        b"grpc-accept-encoding",
        b"grpc-message-type",
        b"connection",
        b"content-length",
    }
)


def envelope(data: bytes) -> bytes:
    """One uncompressed message."""
    return PREFIX.pack(0, len(data)) + data


class Deframer:
    """Cuts the length-prefixed messages out of a stream's DATA as it arrives."""

    __slots__ = ("_buffer", "encoding", "limit")

    def __init__(self, limit: int, encoding: bytes = b"") -> None:
        self._buffer = b""
        self.limit = limit
        #: the call's ``grpc-encoding`` (one of :data:`ENCODINGS`), empty for none
        self.encoding = encoding

    def feed(self, data: bytes) -> list[bytes]:
        """The messages ``data`` completes (raises :class:`RpcError` for a frame gRPC refuses)."""
        buffer = self._buffer + data if self._buffer else data
        messages = []
        position = 0
        size = len(buffer)
        while size - position >= 5:
            flags, length = PREFIX.unpack_from(buffer, position)
            if length > self.limit:
                raise RpcError(Code.RESOURCE_EXHAUSTED, f"a message is larger than {self.limit} bytes")
            end = position + 5 + length
            if end > size:
                break
            message = buffer[position + 5 : end]
            if flags:
                message = self._inflate(flags, message)
            messages.append(message)
            position = end
        self._buffer = buffer[position:] if position else buffer
        return messages

    def _inflate(self, flags: int, message: bytes) -> bytes:
        if flags != COMPRESSED:
            raise RpcError(Code.INTERNAL, f"a message has the flags byte {flags:#04x} (only 0 and 1 exist)")
        if not self.encoding:
            raise RpcError(Code.INTERNAL, "a compressed message arrived on a call without grpc-encoding")
        if self.encoding == b"gzip":
            from ..http._wire import gunzip

            return gunzip(message, self.limit)
        return _inflate_zlib(message, self.limit)

    @property
    def partial(self) -> bool:
        """Whether bytes of an incomplete message are left."""
        return bool(self._buffer)


def message_encoding(fields: list[tuple[bytes, bytes]]) -> bytes:
    """The ``grpc-encoding`` of a header block: ``b""`` for none or identity, else one of
    :data:`ENCODINGS`; any other is :class:`RpcError` ``UNIMPLEMENTED``."""
    for name, value in fields:
        if name == b"grpc-encoding":
            encoding = value.strip().lower()
            if encoding in ENCODINGS:
                return encoding
            if encoding != b"identity":
                accepted = ", ".join(e.decode() for e in ENCODINGS)
                raise RpcError(
                    Code.UNIMPLEMENTED, f"unsupported grpc-encoding {encoding[:40]!r}: use {accepted}"
                )
    return b""


def _inflate_zlib(data: bytes, limit: int) -> bytes:
    """gRPC's ``deflate``: the zlib format (RFC 1950), refused past ``limit`` bytes inflated."""
    import zlib

    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise RpcError(Code.INTERNAL, "a message is not valid deflate data") from exc
    if len(out) > limit:
        raise RpcError(Code.RESOURCE_EXHAUSTED, f"decompressed message is larger than {limit} bytes")
    return out


def request_metadata(fields: list[tuple[bytes, bytes]]) -> Metadata:
    """A request's call metadata: every header but the pseudo-headers and gRPC's own; ``-bin``
    values decoded from base64."""
    metadata = Metadata()
    for name, value in fields:
        if name[:1] == b":" or name in RESERVED:
            continue
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        if key.endswith("-bin"):
            try:
                metadata.add(key, b64decode_lenient(text))
            except ValueError:
                metadata.add(key, text)
        else:
            metadata.add(key, text)
    return metadata


def metadata_fields(metadata: Metadata, *, strict: bool) -> bytes:
    """``metadata`` as encoded header fields (gRPC's rules of protobind.grpc._wire: lower-case
    keys, printable ASCII values, bytes only under ``-bin`` keys, base64 there). An entry gRPC
    cannot carry is ``INVALID_ARGUMENT`` when ``strict`` (request metadata), left out otherwise."""
    out = []
    for key, value in metadata.items():
        pair = _wire_pair(key, value)
        if pair is None:
            if strict:
                raise RpcError(
                    Code.INVALID_ARGUMENT,
                    f"metadata {key!r} cannot be sent over gRPC: keys are lower-case [0-9a-z_.-] and not "
                    "grpc-*, values of keys not ending in -bin are printable ASCII",
                )
            continue
        name, item = pair
        if isinstance(item, bytes):
            item = b64encode_unpadded(item)
        out.append(h2.encode_literal(name.encode("ascii"), item.encode("ascii")))
    return b"".join(out)


_OK_TRAILERS = h2.encode_literal(b"grpc-status", b"0")


def status_block(error: RpcError | None, trailers: Metadata | None) -> bytes:
    """The status fields of a call's end, plus the handler's trailers."""
    if error is None:
        block = _OK_TRAILERS
    else:
        block = b"".join(
            h2.encode_literal(name.encode("ascii"), value.encode("ascii"))
            for name, value in grpc_status_fields(error)
        )
    if trailers:
        block += metadata_fields(trailers, strict=False)
    return block


_UNITS = (("n", 1e9), ("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600))


def encode_timeout(seconds: float) -> bytes:
    """``grpc-timeout``: at most 8 digits, in the finest unit that fits (rounded up)."""
    seconds = max(seconds, 0.0)
    for unit, per_second in _UNITS:
        value = -int(-seconds * per_second // 1)
        if value < 100_000_000:
            return f"{max(value, 1)}{unit}".encode()
    return b"99999999H"
