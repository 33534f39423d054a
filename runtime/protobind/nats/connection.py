"""nats-py's client, with quicker paths for the two things every protobind call does.

nats-py builds and parses NATS headers in Python one character at a time, and wraps every
publish in checks that protobind's own subjects do not need; on a small call that costs more than
the rest of protobind's per-call work. :class:`Connection` keeps nats-py's behaviour and its
connection management, and only:

- parses header blocks of the plain form (``NATS/1.0`` then ``Name: value`` lines) in one pass;
  anything else (an inline status such as no-responders' ``NATS/1.0 503``) goes to nats-py;
- offers :meth:`Connection.send`, a publish that writes the protocol line and header block in one
  go. It appends to nats-py's pending buffer exactly as ``publish`` does, and falls back to
  ``publish`` whenever the connection is not plainly connected (reconnect buffering and its limits
  stay nats-py's) or when this nats-py lacks the internals it uses.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nats import errors as nats_errors
from nats.aio.client import Client

from ..errors import Code, RpcError

if TYPE_CHECKING:
    from .options import Settings

logger = logging.getLogger("protobind.nats")

# RFC 7230 token characters, the rule nats-py applies to header names
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The NATS header block for ``headers`` (names checked, line breaks in values made spaces)."""
    lines = ["NATS/1.0\r\n"]
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise nats_errors.BadHeaderError(name)
        if "\r" in value or "\n" in value:
            value = value.replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}: {value.strip()}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


class Connection(Client):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._fast = all(
            hasattr(self, name)
            for name in ("_send_command", "_flush_pending", "_flush_queue", "_status", "stats")
        )

    async def settle(self) -> None:
        """Return once the server has processed everything sent so far (subscriptions included).

        nats-py's ``flush()`` writes its PING straight to the socket, possibly ahead of commands
        still in its pending buffer, so one flush does not prove that a SUB sent just before has
        arrived; by the time its PONG is back the buffer has been written, and a second PING
        follows the SUB.
        """
        await self.flush()
        await self.flush()

    async def send(
        self, subject: str, payload: bytes, reply: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish ``payload``; the caller has checked the size against ``max_payload``."""
        if not self._fast or self._status != Client.CONNECTED:
            await self.publish(subject, payload, reply=reply, headers=dict(headers) if headers else None)
            return
        # one join: "a + payload + b" would copy a large payload twice
        if headers:
            block = encode_headers(headers)
            line = f"HPUB {subject} {reply} {len(block)} {len(block) + len(payload)}\r\n".encode()
            command = b"".join((line, block, payload, b"\r\n"))
        else:
            command = b"".join((f"PUB {subject} {reply} {len(payload)}\r\n".encode(), payload, b"\r\n"))
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += len(payload)
        await self._send_command(command)
        flush_queue = self._flush_queue
        if flush_queue is not None and flush_queue.empty():
            await self._flush_pending()

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        if not headers or headers[8:10] != b"\r\n":
            return await super()._process_headers(headers)
        try:
            text = headers[10:].decode()
        except UnicodeDecodeError:
            return await super()._process_headers(headers)
        out: dict[str, str] = {}
        for line in text.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                name = name.strip()
                # the names nats-py's parser drops: empty, with blanks, not ASCII
                if name and name.isascii() and " " not in name and "\t" not in name:
                    out[name] = value.strip()
        return out or None


async def connect(settings: Settings, **callbacks: Any) -> Connection:
    async def error_cb(exc: Exception) -> None:
        # nats-py reports every failed reconnect attempt here; the default handler logs tracebacks
        logger.warning("NATS connection: %s", exc or type(exc).__name__)

    client = Connection()
    # nats-py retries its first connection as often as later reconnections; when it cannot reach
    # any server now, fail after one more try (the caller sees UNAVAILABLE) rather than hang
    first = {**settings.connect, "max_reconnect_attempts": 1}
    try:
        await client.connect(settings.servers, error_cb=error_cb, **first, **callbacks)
    except (OSError, asyncio.TimeoutError, nats_errors.Error) as exc:
        raise ConnectionError(
            f"cannot connect to NATS at {', '.join(settings.servers)}: {exc or type(exc).__name__}"
        ) from exc
    # nats-py reads its options at each reconnection: from now on, the configured persistence
    client.options["max_reconnect_attempts"] = settings.connect["max_reconnect_attempts"]
    return client


def publish_error(exc: Exception) -> RpcError:
    """The error a caller sees when NATS refused to send its message."""
    if isinstance(exc, nats_errors.MaxPayloadError):
        return RpcError(Code.RESOURCE_EXHAUSTED, "message exceeds the NATS server's max_payload")
    if isinstance(exc, (nats_errors.ConnectionClosedError, nats_errors.OutboundBufferLimitError)):
        return RpcError(Code.UNAVAILABLE, "not connected to NATS")
    return RpcError(Code.UNAVAILABLE, f"NATS refused the message: {type(exc).__name__}")


def too_large(size: int, limit: int) -> RpcError:
    return RpcError(
        Code.RESOURCE_EXHAUSTED, f"message of {size} bytes exceeds the NATS server's max_payload ({limit})"
    )
