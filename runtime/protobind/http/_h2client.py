"""A small HTTP/2 client for the calls the HTTP/1.1 pool cannot make: full-duplex bidi streams,
where requests keep going out while responses come in.

It runs on the HTTP/2 connection code of the native gRPC engine (:mod:`protobind.grpc._h2`: frames,
flow control, header blocks), so protobind has one implementation of HTTP/2 framing, not two. One
:class:`H2Connection` multiplexes many streams. Flow control both ways: outgoing DATA waits for the
peer's window; each stream's incoming window is reopened only as the caller reads its DATA, so a
slow reader holds the server back instead of buffering without end. A stream the caller gives up on
(an error, a deadline, a cancelled task) is reset with ``RST_STREAM`` ``CANCEL``. A request whose
body is known when the stream starts (:meth:`H2Connection.start` with ``body``) leaves in one write,
HEADERS and DATA together.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from .._errors import Code, RpcError
from ..grpc import _h2 as h2
from ..transport import network_reason

__all__ = ["H2Connection", "H2Stream"]

#: streams one connection carries before the client moves new calls to a fresh connection: well
#: below the 2,048 after which protobind's server retires a connection (http/_h2drain.py), so the
#: connection is retired by the client, between calls, before the server has to do it
STREAMS_PER_CONNECTION = 1000
#: the size of the response header list this client takes (SETTINGS_MAX_HEADER_LIST_SIZE)
HEADER_LIMIT = 256 * 1024
#: the largest frame this client takes (SETTINGS_MAX_FRAME_SIZE; HTTP/2's default is 16 KiB): a
#: response of 16 KiB and a few bytes comes in one DATA frame instead of two (and the server
#: builds one)
MAX_FRAME = 64 * 1024
#: seconds :meth:`H2Connection.close` lets the socket flush what is queued before dropping it
_CLOSE_WAIT = 10.0


class H2Stream(h2.StreamBase):
    """One request/response exchange on an :class:`H2Connection`."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_ended",
        "_error",
        "_sent_end",
        "_waiter",
        "closed",
        "headers",
        "stream_id",
        "trailers",
    )

    def __init__(self, connection: H2Connection, stream_id: int) -> None:
        super().__init__(stream_id, connection.peer_initial_window)
        self._connection = connection
        self.stream_id = stream_id
        self.headers: asyncio.Future[list[tuple[str, str]]] = connection.loop.create_future()
        self.trailers: list[tuple[str, str]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = b""
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: RpcError | None = None
        self.closed = False  # ended or reset, both ways
        self._sent_end = False

    # --- sending ----------------------------------------------------------------------------------

    async def send(self, data: bytes, end: bool = False) -> None:
        """Send ``data`` as DATA frames, waiting for flow-control credit; ``end`` half-closes."""
        connection = self._connection
        if connection.failure is not None:
            raise connection.failure
        if self._error is not None:
            raise self._error
        if self.closed:
            return  # the server ended the exchange: what is left to send has no reader
        self._sent_end = self._sent_end or end
        if not connection.send(self, b"", data, None, end):
            await connection.drained(self)
            if connection.failure is not None:
                raise connection.failure
            if self._error is not None:
                raise self._error
        elif connection._paused:
            await connection.writable()
        if end and self._ended:
            self.closed = True
            connection.forget(self.stream_id)

    def cancel(self, error: RpcError) -> None:
        """Give up on the stream: ``RST_STREAM`` ``CANCEL`` unless it already ended both ways, and
        ``error`` for whoever still waits on its response."""
        if not self.closed:
            self._connection._reset(self)
        self._fail(error)

    def done(self) -> None:
        """The caller is finished with the stream (reset if it is still open either way)."""
        if not self.closed:
            self._connection._reset(self)
        else:
            self._connection.forget(self.stream_id)

    # --- receiving --------------------------------------------------------------------------------

    async def response(self) -> tuple[int, list[tuple[str, str]]]:
        """The response's status and headers (without pseudo-headers), once they arrived."""
        headers = await self.headers
        status = 0
        rest = []
        for name, value in headers:
            if name == ":status":
                status = int(value) if value.isdigit() else 0
            elif not name.startswith(":"):
                rest.append((name, value))
        return status, rest

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
            waiter = self._waiter = self._connection.loop.create_future()
            await waiter
        data = self._buffered
        if len(data) <= size:
            self._buffered = b""
            return data
        data, self._buffered = data[:size], data[size:]
        return data

    async def read_all(self, limit: int) -> bytes:
        """The rest of the response body; more than ``limit`` bytes is ``RESOURCE_EXHAUSTED``."""
        data = await self.readexactly(limit + 1)
        if len(data) > limit:
            raise RpcError(Code.RESOURCE_EXHAUSTED, f"response is larger than {limit} bytes")
        return data

    # --- events from the connection ---------------------------------------------------------------

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_headers(self, headers: list[tuple[str, str]]) -> None:
        if not self.headers.done():
            self.headers.set_result(headers)
        else:
            self.trailers = headers

    def _on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._wake()

    def _on_end(self) -> None:
        self._ended = True
        if self._sent_end:
            self.closed = True
        self._wake()
        if not self.headers.done():
            self._fail(RpcError(Code.INTERNAL, "the HTTP/2 stream ended without a response"))

    def _fail(self, error: RpcError) -> None:
        self.closed = True
        if self._error is None:
            self._error = error
        if not self.headers.done():
            self.headers.set_exception(error)
            self.headers.exception()  # retrieved: nobody may be waiting for the headers any more
        self._wake()


class H2Connection(h2.Connection):
    """One HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN ``h2``) to one server."""

    header_limit = HEADER_LIMIT

    def __init__(self, authority: str, scheme: str) -> None:
        super().__init__()
        self.authority = authority
        self.scheme = scheme
        self.opened = 0
        self.failure: RpcError | None = None
        self._settled = False  # the server's SETTINGS arrived: it speaks HTTP/2
        self._broken = False  # this side ended the connection for a protocol error of the server's
        self._next_id = 1
        self._ended: asyncio.Future[None] = self.loop.create_future()
        host = authority.encode("ascii" if authority.isascii() else "idna")
        self._prefix = (
            h2.METHOD_POST
            + (h2.SCHEME_HTTPS if scheme == "https" else h2.SCHEME_HTTP)
            + h2.encode_indexed_name(h2.AUTHORITY, host)
        )
        self._paths: dict[str, bytes] = {}
        self._fields: dict[tuple[str, str], bytes] = {}

    @classmethod
    async def open(
        cls, host: str, port: int, ssl_context: ssl.SSLContext | None, server_name: str | None, base: str
    ) -> H2Connection:
        """Connect to ``host:port`` and start HTTP/2 (ALPN ``h2`` with TLS, else prior knowledge)."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        scheme = "https" if ssl_context else "http"
        loop = asyncio.get_running_loop()
        try:
            transport, connection = await loop.create_connection(
                lambda: cls(authority, scheme),
                host,
                port,
                ssl=ssl_context,
                server_hostname=(server_name or host) if ssl_context else None,
            )
        except ssl.SSLCertVerificationError as exc:
            raise RpcError(Code.UNAVAILABLE, f"cannot connect to {base}: {exc.verify_message}") from exc
        except OSError as exc:
            raise RpcError(Code.UNAVAILABLE, f"cannot connect to {base}: {network_reason(exc)}") from exc
        if ssl_context is not None:
            tls = transport.get_extra_info("ssl_object")
            if tls is None or tls.selected_alpn_protocol() != "h2":
                transport.close()
                raise RpcError(Code.UNAVAILABLE, f"{base} does not offer HTTP/2 (TLS ALPN h2)")
        return connection

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(h2.client_preface(self.header_limit, (h2.SETTINGS_MAX_FRAME_SIZE, MAX_FRAME)))

    def data_received(self, data: bytes) -> None:
        if not self._settled:
            # a server speaking HTTP/2 starts with SETTINGS; anything else (an HTTP/1.1 answer to
            # the preface, say) means it does not
            head = self._buffer + data
            if len(head) < 9:
                self._buffer = head
                return
            if head[3] != h2.SETTINGS or head[4] & h2.ACK:
                self._end(self._not_http2())
                return
            self._buffer = b""
            data = head
            self._settled = True
        super().data_received(data)

    def max_frame_in(self) -> int:
        return MAX_FRAME

    def abort(self, code: int, message: str, last_stream_id: int = 0) -> None:
        self._broken = True
        super().abort(code, message, last_stream_id)

    def lost(self, exc: Exception | None) -> None:
        if isinstance(exc, OSError):
            reason = network_reason(exc)
            error = RpcError(Code.UNAVAILABLE, f"HTTP/2 connection to {self.authority}: {reason}")
        elif not self._settled:
            error = self._not_http2()
        elif self._broken:
            error = RpcError(Code.UNAVAILABLE, f"{self.authority} broke the HTTP/2 protocol")
        else:
            error = RpcError(Code.UNAVAILABLE, f"the HTTP/2 connection to {self.authority} was closed")
        self._fail_all(error)
        if not self._ended.done():
            self._ended.set_result(None)

    def _not_http2(self) -> RpcError:
        return RpcError(
            Code.UNAVAILABLE,
            f"{self.authority} does not speak HTTP/2 (h2c), which bidi streams need: "
            "a protobind server does with its default http_parser=zttp",
        )

    # --- state ------------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether a new stream may go on this connection."""
        return (
            self.failure is None
            and self.goaway_received is None
            and self.opened < STREAMS_PER_CONNECTION
            and len(self.streams) < self.peer_max_streams
        )

    @property
    def idle(self) -> bool:
        """Whether no stream is open on this connection."""
        return not self.streams

    # --- streams ----------------------------------------------------------------------------------

    def start(
        self, path: str, headers: list[tuple[str, str]], body: bytes | None = None, end: bool = False
    ) -> H2Stream:
        """Open a stream and send the request headers. The body follows with :meth:`H2Stream.send`,
        or goes with them, in the same write: ``body`` (``end``: it is the whole request), as far as
        the peer's flow-control window allows; the rest follows as the window opens."""
        if self.failure is not None:
            raise self.failure
        if self.goaway_received is not None:
            raise RpcError(Code.UNAVAILABLE, f"{self.authority} closed the HTTP/2 connection (GOAWAY)")
        stream_id = self._next_id
        self._next_id += 2
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        self.opened += 1
        block = self._prefix + self._path(path) + b"".join(self._field(n, v) for n, v in headers)
        only_headers = end and not body
        head = self.header_frames(stream_id, block, only_headers)
        if only_headers:
            stream._sent_end = True
            self.write(head)
        elif body is None:
            self.write(head)
        else:
            stream._sent_end = end
            self.send(stream, head, body, None, end)
        return stream

    def _path(self, path: str) -> bytes:
        encoded = self._paths.get(path)
        if encoded is None:
            if len(self._paths) >= 256:
                self._paths.clear()
            encoded = self._paths[path] = h2.encode_indexed_name(h2.PATH, path.encode("ascii"))
        return encoded

    def _field(self, name: str, value: str) -> bytes:
        """A request header as a header block field (literal, without indexing)."""
        key = (name, value)
        encoded = self._fields.get(key)
        if encoded is None:
            lower = name.lower()
            raw = value.encode("utf-8")
            if lower == "content-type":
                encoded = h2.encode_indexed_name(h2.CONTENT_TYPE, raw)
            elif lower == "user-agent":
                encoded = h2.encode_indexed_name(h2.USER_AGENT, raw)
            else:
                encoded = h2.encode_literal(lower.encode("ascii"), raw)
            if lower == "connect-timeout-ms":
                return encoded  # differs on every call
            if len(self._fields) >= 256:
                self._fields.clear()
            self._fields[key] = encoded
        return encoded

    def _reset(self, stream: H2Stream) -> None:
        stream.closed = True
        if stream.stream_id in self.streams and self.failure is None:
            self.reset_stream(stream.stream_id, h2.CANCEL)
        else:
            self.forget(stream.stream_id)

    def _acknowledge(self, stream: H2Stream, size: int) -> None:
        if self.failure is None and size and stream.stream_id in self.streams:
            self.ack_data(stream, size)

    def forget(self, stream_id: int) -> None:
        super().forget(stream_id)
        if self.goaway_received is not None and not self.streams and self.transport is not None:
            self.transport.close()

    # --- events -----------------------------------------------------------------------------------

    def on_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], fits: bool, end: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not fits:
            self.reset_stream(stream_id, h2.CANCEL)
            stream._fail(
                RpcError(Code.RESOURCE_EXHAUSTED, f"response headers larger than {self.header_limit} bytes")
            )
            return
        headers = [(_text(name), _text(value)) for name, value in fields]
        first = headers[0] if headers else ("", "")
        if not end and not stream.headers.done() and first[0] == ":status" and first[1].startswith("1"):
            return  # an informational response (1xx): the real one follows
        stream._on_headers(headers)
        if end:
            self._stream_ended(stream)

    def on_data(self, stream_id: int, data: bytes, end: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream already given up (the connection's window reopens by itself)
        if data:
            stream._on_data(data)
        if end:
            self._stream_ended(stream)

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        super()._data(stream_id, flags, payload)
        if flags & h2.PADDED:
            # padding counts against the stream's window but never reaches the reader
            stream = self.streams.get(stream_id)
            if stream is not None:
                self.ack_data(stream, payload[0] + 1)

    def _stream_ended(self, stream: H2Stream) -> None:
        stream._on_end()
        if stream.closed:
            self.forget(stream.stream_id)

    def on_reset(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self.forget(stream_id)
        stream._fail(RpcError(Code.UNAVAILABLE, f"the server reset the HTTP/2 stream (error {code})"))

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        # the streams the server did not take fail; those it took may finish
        error = RpcError(Code.UNAVAILABLE, f"{self.authority} closed the HTTP/2 connection (GOAWAY)")
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last_stream_id:
                super().forget(stream_id)
                stream._fail(error)
        if not self.streams and self.transport is not None:
            self.transport.close()

    def _fail_all(self, error: RpcError) -> None:
        if self.failure is None:
            self.failure = error
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream._fail(error)

    def _end(self, error: RpcError) -> None:
        self._fail_all(error)
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def close(self) -> None:
        """Say goodbye (GOAWAY) and close the socket; open streams fail."""
        if self.failure is None:
            self.write(h2.goaway(0, h2.NO_ERROR))
        self._end(RpcError(Code.CANCELLED, "the client was closed"))
        if self.transport is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._ended), _CLOSE_WAIT)
            except asyncio.TimeoutError:
                self.transport.abort()  # a server that reads nothing more: drop what is unsent


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")
