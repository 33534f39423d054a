"""Codecs: binary protobuf and proto3 canonical JSON.

A codec turns a message into bytes and back. Decoding failures raise ``RpcError(INVALID_ARGUMENT)``
with a message that describes the input, never the library's internals, so transports can pass
the error straight to the caller.
"""

from __future__ import annotations

import json
from typing import Protocol, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from .errors import Code, RpcError

M = TypeVar("M", bound=Message)


class Codec(Protocol):
    """Serialize messages. ``name`` is the Connect encoding name (``proto`` or ``json``)."""

    name: str

    def encode(self, message: Message) -> bytes: ...

    def decode(self, data: bytes, message_type: type[M]) -> M: ...


class ProtoCodec:
    """Binary protobuf."""

    name = "proto"

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


class JsonCodec:
    """Proto3 canonical JSON (``google.protobuf.json_format``), camelCase field names on output.

    Unknown fields are rejected unless ``ignore_unknown_fields`` is set.
    """

    name = "json"

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
