"""A small HTTP/2 client (the ``h2`` state machine over asyncio streams) for the calls aiohttp cannot
make: full-duplex bidi streams, where requests keep going out while responses come in.

One :class:`H2Connection` multiplexes many streams. Flow control both ways: outgoing DATA waits for
the peer's window; incoming DATA is acknowledged (its window reopened) only as the caller reads it,
so a slow reader holds the server back instead of buffering without end. A stream the caller gives
up on (an error, a deadline, a cancelled task) is reset with ``RST_STREAM`` ``CANCEL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .._errors import Code, RpcError
from ..transport import network_reason

__all__ = ["H2Connection", "H2Stream"]

#: streams one connection carries before the client moves new calls to a fresh connection: well
#: below the 2,048 after which protobind's server retires a connection (http/_h2drain.py), so the
#: client, whose ``h2`` state machine drops every stream on a GOAWAY, never receives that GOAWAY
STREAMS_PER_CONNECTION = 1000
# the window granted to each stream and to the connection: a few large messages in flight
_WINDOW = 4 * 1024 * 1024


class H2Stream:
    """One request/response exchange on an :class:`H2Connection`."""

    def __init__(self, connection: H2Connection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self.headers: asyncio.Future[list[tuple[str, str]]] = asyncio.get_running_loop().create_future()
        self.trailers: list[tuple[str, str]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = b""
        self._arrived = asyncio.Event()
        self._ended = False
        self._error: RpcError | None = None
        self.closed = False  # ended or reset, both ways
        self._sent_end = False

    # --- sending ----------------------------------------------------------------------------------

    async def send(self, data: bytes, end: bool = False) -> None:
        """Send ``data`` as DATA frames, waiting for flow-control credit; ``end`` half-closes."""
        await self._connection._send(self, data, end)

    def cancel(self, error: RpcError) -> None:
        """Give up on the stream: ``RST_STREAM`` ``CANCEL`` unless it already ended both ways, and
        ``error`` for whoever still waits on its response."""
        if not self.closed:
            self._connection._reset(self)
        self._fail(error)

    def done(self) -> None:
        """The caller is finished with the stream (reset if it is still open either way)."""
        self._connection._stream_done(self)

    # --- receiving --------------------------------------------------------------------------------

    async def response(self) -> tuple[int, list[tuple[str, str]]]:
        """The response's status and headers (without pseudo-headers), once they arrived."""
        headers = await self.headers
        status = next((int(v) for k, v in headers if k == ":status"), 0)
        return status, [(k, v) for k, v in headers if not k.startswith(":")]

    async def readexactly(self, size: int) -> bytes:
        """``size`` bytes of the response body; fewer (possibly none) only at its end."""
        while len(self._buffered) < size:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._connection._acknowledge(self, len(chunk))
                self._buffered += chunk
                continue
            if self._error is not None:
                raise self._error
            if self._ended:
                break
            self._arrived.clear()
            await self._arrived.wait()
        data, self._buffered = self._buffered[:size], self._buffered[size:]
        return data

    async def read_all(self, limit: int) -> bytes:
        """The rest of the response body; more than ``limit`` bytes is ``RESOURCE_EXHAUSTED``."""
        data = await self.readexactly(limit + 1)
        if len(data) > limit:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"response is larger than {limit} bytes")
        return data

    # --- events from the connection ---------------------------------------------------------------

    def _on_headers(self, headers: list[tuple[str, str]]) -> None:
        if not self.headers.done():
            self.headers.set_result(headers)
        else:
            self.trailers = headers

    def _on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._arrived.set()

    def _on_end(self) -> None:
        self._ended = True
        if self._sent_end:
            self.closed = True
        self._arrived.set()
        if not self.headers.done():
            self._fail(RpcError(Code.INTERNAL, "the HTTP/2 stream ended without a response"))

    def _fail(self, error: RpcError) -> None:
        self.closed = True
        if self._error is None:
            self._error = error
        if not self.headers.done():
            self.headers.set_exception(error)
            self.headers.exception()  # retrieved: nobody may be waiting for the headers any more
        self._arrived.set()


class H2Connection:
    """One HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN ``h2``) to one server."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, scheme: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.authority = authority
        self.scheme = scheme
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._conn = h2.connection.H2Connection(config)
        self._conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
            },
        )
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(_WINDOW)
        self._streams: dict[int, H2Stream] = {}
        self._credit = asyncio.Event()  # set whenever the peer grants send window
        self.opened = 0
        self.failure: RpcError | None = None
        self._settled = False  # the server's SETTINGS arrived: it speaks HTTP/2
        self._flush()
        self._task = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"protobind h2 {authority}"
        )

    @classmethod
    async def open(
        cls, host: str, port: int, ssl_context: ssl.SSLContext | None, server_name: str | None, base: str
    ) -> H2Connection:
        """Connect to ``host:port`` and start HTTP/2 (ALPN ``h2`` with TLS, else prior knowledge)."""
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=(server_name or host) if ssl_context else None
            )
        except ssl.SSLCertVerificationError as exc:
            raise RpcError(Code.UNAVAILABLE, f"cannot connect to {base}: {exc.verify_message}") from exc
        except OSError as exc:
            raise RpcError(Code.UNAVAILABLE, f"cannot connect to {base}: {network_reason(exc)}") from exc
        if ssl_context is not None:
            tls = writer.get_extra_info("ssl_object")
            if tls is None or tls.selected_alpn_protocol() != "h2":
                writer.close()
                raise RpcError(Code.UNAVAILABLE, f"{base} does not offer HTTP/2 (TLS ALPN h2)")
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(reader, writer, authority, "https" if ssl_context else "http")

    @property
    def usable(self) -> bool:
        """Whether a new stream may go on this connection."""
        return self.failure is None and self.opened < STREAMS_PER_CONNECTION

    @property
    def idle(self) -> bool:
        """Whether no stream is open on this connection."""
        return not self._streams

    def start(self, path: str, headers: list[tuple[str, str]]) -> H2Stream:
        """Open a stream and send the request headers; the body follows with :meth:`H2Stream.send`."""
        if self.failure is not None:
            raise self.failure
        stream_id = self._conn.get_next_available_stream_id()
        stream = self._streams[stream_id] = H2Stream(self, stream_id)
        self.opened += 1
        pseudo = [
            (":method", "POST"),
            (":scheme", self.scheme),
            (":path", path),
            (":authority", self.authority),
        ]
        self._conn.send_headers(stream_id, pseudo + headers)
        self._flush()
        return stream

    async def _send(self, stream: H2Stream, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            if self.failure is not None:
                raise self.failure
            if stream._error is not None:
                raise stream._error
            if stream.closed:
                return  # the server ended the exchange: what is left to send has no reader
            size = min(len(view), self._conn.local_flow_control_window(stream.stream_id))
            size = min(size, self._conn.max_outbound_frame_size)
            if size > 0 or not view:
                last = size == len(view)
                stream._sent_end = stream._sent_end or (end and last)
                self._conn.send_data(stream.stream_id, bytes(view[:size]), end_stream=end and last)
                self._flush()
                view = view[size:]
                if last:
                    if end and stream._ended:
                        stream.closed = True
                    await self._writer.drain()
                    return
                continue
            self._credit.clear()
            await self._credit.wait()

    def _reset(self, stream: H2Stream) -> None:
        stream.closed = True
        self._streams.pop(stream.stream_id, None)
        if self.failure is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.reset_stream(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
                self._flush()

    def _acknowledge(self, stream: H2Stream, size: int) -> None:
        if self.failure is None and size:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.acknowledge_received_data(size, stream.stream_id)
                self._flush()

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read_loop(self) -> None:
        error = RpcError(Code.UNAVAILABLE, f"the HTTP/2 connection to {self.authority} was closed")
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    if not self._settled:
                        error = self._not_http2()
                    break
                for event in self._conn.receive_data(data):
                    if self._on(event):
                        return
                self._flush()
        except h2.exceptions.ProtocolError:
            error = RpcError(Code.UNAVAILABLE, f"{self.authority} broke the HTTP/2 protocol")
            if not self._settled:
                error = self._not_http2()
        except OSError as exc:
            error = RpcError(
                Code.UNAVAILABLE, f"HTTP/2 connection to {self.authority}: {network_reason(exc)}"
            )
        finally:
            self._close(error)

    def _not_http2(self) -> RpcError:
        return RpcError(
            Code.UNAVAILABLE,
            f"{self.authority} does not speak HTTP/2 (h2c), which bidi streams need: "
            "a protobind server does with its default http_parser=zttp",
        )

    def _on(self, event: h2.events.Event) -> bool:
        """Handle one event; True when the connection is over."""
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_headers([(_text(k), _text(v)) for k, v in event.headers or ()])
        elif isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data or b"")
                # padding counts against the window but never reaches the reader
                padding = event.flow_controlled_length - len(event.data or b"")
                if padding:
                    self._conn.acknowledge_received_data(padding, event.stream_id)
            else:  # a stream already given up: keep the connection's window open
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_end()
                if stream.closed:
                    self._streams.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream._fail(
                    RpcError(Code.UNAVAILABLE, f"the server reset the HTTP/2 stream ({event.error_code!s})")
                )
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._settled = self._settled or isinstance(event, h2.events.RemoteSettingsChanged)
            self._credit.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # h2 takes any GOAWAY as the end of the connection: the streams in flight cannot finish
            self._close(RpcError(Code.UNAVAILABLE, f"{self.authority} closed the HTTP/2 connection (GOAWAY)"))
            return True
        return False

    def _close(self, error: RpcError) -> None:
        if self.failure is None:
            self.failure = error
        for stream in list(self._streams.values()):
            stream._fail(error)
        self._streams.clear()
        self._credit.set()
        self._writer.close()

    def _stream_done(self, stream: H2Stream) -> None:
        """The caller is done with ``stream``: reset it if it is still open either way."""
        if stream.stream_id in self._streams and not stream.closed:
            self._reset(stream)
        self._streams.pop(stream.stream_id, None)

    async def close(self) -> None:
        """Say goodbye (GOAWAY) and close the socket; open streams fail."""
        if self.failure is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.close_connection()
                self._flush()
        self._close(RpcError(Code.CANCELLED, "the client was closed"))
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._task
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
