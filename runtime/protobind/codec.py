"""Codecs: binary protobuf and proto3 canonical JSON.

A codec turns a message into bytes and back. Decoding failures raise ``RpcError(INVALID_ARGUMENT)``
with a message that describes the input, never the library's internals, so transports can pass
the error straight to the caller.
"""

from __future__ import annotations

import json
from typing import Protocol, TypeVar

__all__ = [
    "CODECS",
    "JSON",
    "PROTO",
    "Codec",
    "JsonCodec",
    "ProtoCodec",
    "codec_for_media_type",
    "codec_named",
    "register_codec",
    "response_codec",
]

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from .errors import Code, RpcError

M = TypeVar("M", bound=Message)


class Codec(Protocol):
    """Serialize messages. ``name`` is the Connect encoding name (``proto``, ``json``);
    ``content_type`` the media type a transport labels the bytes with."""

    name: str
    content_type: str

    def encode(self, message: Message) -> bytes:
        """The message as bytes."""
        ...

    def decode(self, data: bytes, message_type: type[M]) -> M:
        """Bytes as a ``message_type``; ``RpcError(INVALID_ARGUMENT)`` when they are not one."""
        ...


class ProtoCodec(Codec):
    """Binary protobuf."""

    name = "proto"
    content_type = "application/proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes, message_type: type[M]) -> M:
        try:
            return message_type.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            raise RpcError(
                Code.INVALID_ARGUMENT,
                f"body is not a valid binary {message_type.DESCRIPTOR.full_name}",
            ) from exc


class JsonCodec(Codec):
    """Proto3 canonical JSON (``google.protobuf.json_format``), camelCase field names on output.

    Unknown fields are rejected unless ``ignore_unknown_fields`` is set.
    """

    name = "json"
    content_type = "application/json"

    def __init__(self, *, ignore_unknown_fields: bool = False) -> None:
        self.ignore_unknown_fields = ignore_unknown_fields

    def encode(self, message: Message) -> bytes:
        return json.dumps(
            json_format.MessageToDict(message), separators=(",", ":"), ensure_ascii=False
        ).encode()

    def decode(self, data: bytes, message_type: type[M]) -> M:
        message = message_type()
        if not data.strip():
            return message  # an empty body is the empty message, as Connect allows
        try:
            text = data.decode()
            json_format.Parse(text, message, ignore_unknown_fields=self.ignore_unknown_fields)
        except UnicodeDecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, "body is not valid UTF-8") from exc
        except json_format.ParseError as exc:
            raise RpcError(
                Code.INVALID_ARGUMENT,
                f"body is not a valid JSON {message_type.DESCRIPTOR.full_name}: {exc}",
            ) from exc
        except (RecursionError, ValueError, TypeError) as exc:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"body is not a valid JSON {message_type.DESCRIPTOR.full_name}"
            ) from exc
        return message


PROTO = ProtoCodec()
JSON = JsonCodec()
_LENIENT_JSON = JsonCodec(ignore_unknown_fields=True)

#: Codecs by name; transports look codecs up here, so adding one touches no transport.
CODECS: dict[str, Codec] = {PROTO.name: PROTO, JSON.name: JSON}
#: Other spellings of the binary media type that peers send.
_PROTO_ALIASES = frozenset({"application/protobuf", "application/x-protobuf", "application/octet-stream"})


def response_codec(codec: Codec) -> Codec:
    """The codec a client decodes responses with: JSON ignores fields it does not know, so a server
    whose contract gained a response field does not break older clients (binary protobuf keeps
    unknown fields anyway). Servers stay strict about requests."""
    if isinstance(codec, JsonCodec) and not codec.ignore_unknown_fields:
        return _LENIENT_JSON
    return codec


def register_codec(codec: Codec) -> None:
    """Make ``codec`` available to every transport under ``codec.name``."""
    CODECS[codec.name] = codec


def codec_named(name: str) -> Codec:
    """The codec called ``name``, or ``ValueError`` listing the known ones."""
    codec = CODECS.get(name.strip().lower())
    if codec is None:
        raise ValueError(f"unknown codec {name!r}; one of {', '.join(sorted(CODECS))}")
    return codec


def codec_for_media_type(media_type: str) -> Codec | None:
    """The codec whose ``content_type`` is ``media_type`` (parameters ignored), or ``None``."""
    media = media_type.partition(";")[0].strip().lower()
    if media in _PROTO_ALIASES:
        return CODECS[PROTO.name]
    for codec in CODECS.values():
        if codec.content_type == media:
            return codec
    return None
