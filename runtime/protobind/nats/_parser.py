"""The NATS protocol as the server sends it to a client, read without regular expressions.

nats-py's parser matches each protocol line with a regular expression, copies each payload out of
its buffer twice, and awaits a coroutine per message. On a small call that is a sixth of a
protobind server's work and of its client's. :class:`Parser` reads the same protocol (NATS client
protocol: ``MSG``, ``HMSG``, ``PING``, ``PONG``, ``+OK``, ``-ERR``, ``INFO``) from the bytes of one
read at a time with ``bytes.find`` and ``split``, hands every complete message of that read to the
connection in turn, and keeps only an incomplete tail for the next read. A message for a
subscription protobind consumes itself is taken without a coroutine (``Connection.take``); every
other message, and every other operation, goes to the same nats-py methods its own parser calls.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from nats.errors import ProtocolError

__all__ = ["Parser", "Reader"]


class Reader(Protocol):
    """What the parser hands its operations to: nats-py's client (protobind's Connection)."""

    def take(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool: ...

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None: ...

    async def _process_ping(self) -> None: ...

    async def _process_pong(self) -> None: ...

    async def _process_err(self, err: str) -> None: ...

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None: ...


class Parser:
    """nats-py's ``Parser`` interface (``parse``, ``reset``), faster. See the module docstring."""

    def __init__(self, nc: Reader) -> None:
        self.nc = nc
        self.generation = 0  # advanced by reset(): an operation handled meanwhile ends the parse
        self.reset()

    def reset(self) -> None:
        """Forget what is left of the last read (nats-py calls this on reconnecting)."""
        # the start of an operation not all read yet (views of the reads that hold it, not
        # copies), how many bytes of it they hold, and how many it needs (0: its line is
        # incomplete); completed with just the bytes it lacks, never with a whole later read
        self._parts: list[memoryview] = []
        self._have = 0
        self._need = 0
        self.generation += 1

    async def parse(self, data: bytes = b"") -> None:
        pos = 0
        while self._parts:
            # finish the operation an earlier read began: one join of the bytes it needs, handled
            # on its own (a line joined this way may leave its payload still to come)
            parts = self._parts
            if self._need:
                cut = pos + self._need - self._have
            elif parts[-1][-1] == 13 and data[pos : pos + 1] == b"\n":
                cut = pos + 1  # the line's \r ended the last read
            else:
                # the line's end; a \n alone is part of the line (a search for it would join the
                # line again at every one: quadratic in a hostile line of many)
                cut = data.find(b"\r\n", pos) + 2
                if cut == 1:
                    cut = len(data) + 1
            if cut > len(data):
                if pos < len(data):
                    parts.append(memoryview(data)[pos:])
                    self._have += len(data) - pos
                return
            parts.append(memoryview(data)[pos:cut])
            operation = b"".join(parts)
            self._parts = []
            self._have = self._need = 0
            pos = cut
            generation = self.generation
            await self._operations(operation, 0)
            if generation != self.generation:
                return
        await self._operations(data, pos)

    async def _operations(self, data: bytes, pos: int) -> None:
        """Handle the operations of ``data`` from ``pos`` on; keep an incomplete last one."""
        nc = self.nc
        take = nc.take
        find = data.find
        end = len(data)
        while pos < end:
            eol = find(b"\r\n", pos)
            if eol < 0:
                self._keep(data, pos, 0)  # the rest of a line comes with the next read
                return
            first = data[pos]
            if first == 77 or first == 72:  # b"M", b"H"
                if data.startswith(b"MSG ", pos):
                    args = data[pos + 4 : eol].split()
                    if len(args) == 3:
                        subject, sid, size = args
                        reply = b""
                    elif len(args) == 4:
                        subject, sid, reply, size = args
                    else:
                        raise ProtocolError("nats: malformed MSG")
                    hsize = b"0"
                elif data.startswith(b"HMSG ", pos):
                    args = data[pos + 5 : eol].split()
                    if len(args) == 4:
                        subject, sid, hsize, size = args
                        reply = b""
                    elif len(args) == 5:
                        subject, sid, reply, hsize, size = args
                    else:
                        raise ProtocolError("nats: malformed MSG")
                else:
                    raise ProtocolError("nats: unknown protocol")
                try:
                    # int() also takes a sign or underscores, harmless here; negatives are refused
                    number, length, head = int(sid), int(size), int(hsize)
                except ValueError:
                    raise ProtocolError("nats: malformed MSG") from None
                if length < 0 or head < 0:
                    raise ProtocolError("nats: malformed MSG")
                start = eol + 2
                stop = start + length
                if stop + 2 > end:
                    # the payload is not all here yet: its line is read again with the rest
                    self._keep(data, pos, stop + 2 - pos)
                    return
                if head:
                    if head > stop - start:
                        raise ProtocolError("nats: malformed MSG")
                    headers: bytes | None = data[start : start + head]
                    payload = data[start + head : stop]
                else:
                    headers = None
                    payload = data[start:stop]
                pos = stop + 2
                if not take(number, subject, reply, payload, headers):
                    generation = self.generation
                    await nc._process_msg(number, subject, reply, payload, headers)
                    if generation != self.generation:
                        return
                continue
            line = data[pos:eol]
            pos = eol + 2
            generation = self.generation
            if line == b"PING":
                await nc._process_ping()
            elif line == b"PONG":
                await nc._process_pong()
            elif line == b"+OK":
                continue
            elif line.startswith(b"-ERR"):
                # as nats-py hands it on: the text after -ERR (quotes kept), in lower case
                await nc._process_err(line[4:].strip().decode("utf-8", "replace").lower())
            elif line.startswith(b"INFO ") or line.startswith(b"INFO\t"):
                await nc._process_info(json.loads(line[5:]))
            else:
                raise ProtocolError("nats: unknown protocol")
            if generation != self.generation:
                return  # the connection was reset meanwhile (a reconnect): the rest is stale

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        self._parts.append(memoryview(data)[pos:])
        self._have = len(data) - pos
        self._need = need
