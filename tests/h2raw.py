"""A raw HTTP/2 peer (the ``h2`` package over an asyncio socket) for sending what no gRPC library
would: request streams that end early, truncated frames, floods of streams reset at once."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
from google.protobuf.message import Message

import protobind

from .conformance import Conformance


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[int]:
    """The conformance service on an http:// port with ``options``; yields the port."""
    server = protobind.Server([Conformance()], transport_options={"http": options})
    (url,) = await server.start("http://127.0.0.1:0")
    try:
        yield urlsplit(url).port or 0
    finally:
        await server.stop(grace=1.0)


def grpc_headers(path: str, extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]


def connect_headers(path: str) -> list[tuple[str, str]]:
    """The request headers of a Connect unary call with a JSON body."""
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/json"),
    ]


def grpc_frame(message: Message, flags: int = 0) -> bytes:
    """``message`` as one gRPC length-prefixed message."""
    data = message.SerializeToString()
    return struct.pack(">BI", flags, len(data)) + data


@dataclass
class Answer:
    """What came back on one stream: headers and trailers merged, or the reset code."""

    headers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None
    done: bool = False
    body: bytearray = field(default_factory=bytearray)

    @property
    def status(self) -> str | None:
        return self.headers.get("grpc-status")


class RawH2:
    """One HTTP/2 connection driven by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.answers: dict[int, Answer] = {}
        self.terminated: int | None = None
        self.last_stream_id: int | None = None
        self.server_settings: dict[int, int] | None = None

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    def open(
        self,
        path: str,
        body: bytes | None,
        *,
        end: bool = True,
        extra: tuple[tuple[str, str], ...] = (),
        headers: list[tuple[str, str]] | None = None,
    ) -> int:
        """Start a stream; ``body`` None sends the headers with END_STREAM and no data. ``headers``
        replaces the gRPC request headers (``extra`` adds to them)."""
        stream = self.conn.get_next_available_stream_id()
        sent = headers if headers is not None else grpc_headers(path, extra)
        self.conn.send_headers(stream, sent, end_stream=body is None and end)
        if body is not None:
            self.conn.send_data(stream, body, end_stream=end)
        self.answers[stream] = Answer()
        return stream

    async def settings(self) -> dict[int, int]:
        """Read until the server's SETTINGS arrived (the caller bounds the time)."""
        while self.server_settings is None:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            for event in self.conn.receive_data(data):
                self._on(event)
            await self.flush()
        return self.server_settings

    def reset(self, stream: int) -> None:
        self.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)

    async def read_until(self, streams: list[int]) -> None:
        """Read until every stream in ``streams`` is answered (the caller bounds the time)."""
        while not all(self.answers[s].done for s in streams):
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            for event in self.conn.receive_data(data):
                self._on(event)
            await self.flush()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            answer = self.answers.setdefault(event.stream_id, Answer())
            for name, value in event.headers:
                answer.headers[_text(name)] = _text(value)
            if "grpc-status" in answer.headers:
                answer.done = True
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            found = self.server_settings or {}
            found.update({int(k): v.new_value for k, v in event.changed_settings.items()})
            self.server_settings = found
        elif isinstance(event, h2.events.StreamEnded):
            self.answers.setdefault(event.stream_id, Answer()).done = True
        elif isinstance(event, h2.events.StreamReset):
            answer = self.answers.setdefault(event.stream_id, Answer())
            answer.reset = int(event.error_code)
            answer.done = True
        elif isinstance(event, h2.events.DataReceived):
            self.answers.setdefault(event.stream_id, Answer()).body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = int(event.error_code)
            self.last_stream_id = event.last_stream_id


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextlib.asynccontextmanager
async def raw_h2(port: int) -> AsyncIterator[RawH2]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = RawH2(reader, writer)
    peer.conn.initiate_connection()
    await peer.flush()
    try:
        yield peer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
