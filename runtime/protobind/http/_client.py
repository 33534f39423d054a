"""The client half of the HTTP binding: Connect calls over keep-alive HTTP/1.1 connections.

Unary calls go through protobind's own pool (:mod:`.h1client`: one write, zttp's parser), streams
through aiohttp's, bidi streams over HTTP/2 (:mod:`.h2client`). aiohttp's per-request machinery
cost about 450k instructions per unary call here, more than the rest of the call on both sides
together; the pool of :mod:`.h1client` does the same call in 172k (benchmarks/README.md).

Why aiohttp for streams, measured on this project's 2-core machine (shared with other work, so each figure was
repeated) with 64 concurrent 100-byte POSTs for 3 s against one raw ASGI app under uvicorn:

- uvicorn on h11 (its default here): aiohttp 6,800-7,000 calls/s, with the single-process server
  at 100% CPU; pyqwest 0.12 4,400-5,800 (4,400-4,900 with its default pool of 2 idle connections);
  httpx 360.
- uvicorn on httptools (a faster server, so the client counts for more): aiohttp 6,100-8,400,
  pyqwest 5,800-8,400, both ~120 us of client CPU per call.

pyqwest is no faster, and it aborted the interpreter at exit in 5 of 40 short scripts (3 of 20
that closed its transport first, 2 of 20 that did not); aiohttp never did. A client that can kill
the user's process at exit is not an option whatever its speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from google.protobuf.message import Message
from yarl import URL

from .._context import CallInfo, DeadlineScope
from .._errors import Code, RpcError
from .._metadata import Metadata
from .._version import __version__
from ..codec import Codec, codec_named, response_codec
from ..method import MethodInfo, MethodKind
from ..options import DEFAULT_MAX_MESSAGE_SIZE, TLS_CLIENT_OPTIONS
from ..reflection import HTTP_PATH, Reflected, from_document
from ..transport import ClientTransport, DialFunction, network_reason
from ._h1client import ConnectFailed, H1Pool
from ._options import DEFAULT_CLIENT_CONNECTIONS, _prefix, _require, reader
from ._wire import (
    ENVELOPE_HEADER_SIZE,
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    PROTOCOL_HEADERS,
    STREAM_CONTENT_TYPES,
    UNARY_CONTENT_TYPES,
    content_type_codec,
    envelope,
    error_from_body,
    gunzip,
    parse_end_stream,
    parse_envelope_header,
    request_header,
    split_response_headers,
)

if TYPE_CHECKING:
    from ._h2client import H2Connection, H2Stream

#: values of the client option ``http2``
HTTP2_MODES = ("bidi", "streams", "off")

__all__ = [
    "HttpTransport",
    "dial",
    "make_ssl_context",
]

_USER_AGENT = f"protobind/{__version__} aiohttp/{aiohttp.__version__}"


def _unavailable(base: str, exc: BaseException) -> RpcError:
    """The error of a request that failed in aiohttp or the socket (raised ``from exc``, see
    :class:`~protobind.RpcError`)."""
    # aiohttp's own text repeats the address and adds its TLS setting (`Cannot connect to host
    # 127.0.0.1:80 ssl:default [Connect call failed ...]`): the reason alone reads better
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return RpcError(Code.UNAVAILABLE, f"cannot connect to {base}: {exc.certificate_error}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return RpcError(Code.UNAVAILABLE, f"cannot connect to {base}: {network_reason(exc.os_error)}")
    reason = network_reason(exc) if isinstance(exc, OSError) else str(exc) or type(exc).__name__
    return RpcError(Code.UNAVAILABLE, f"HTTP request to {base} failed: {reason}")


def _unreachable(base: str, exc: OSError) -> RpcError:
    """The error of a call that found no connection to the server (``raise ... from exc``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return RpcError(Code.UNAVAILABLE, f"cannot connect to {base}: {exc.verify_message or exc}")
    return RpcError(Code.UNAVAILABLE, f"cannot connect to {base}: {network_reason(exc)}")


def _invalid_response(method: MethodInfo[Any, Any], what: str) -> RpcError:
    return RpcError(Code.INTERNAL, f"invalid response from {method.full_name}: {what}")


class HttpTransport(ClientTransport):
    """One keep-alive connection pool to one base URL (``scheme://host:port[/prefix]``)."""

    def __init__(
        self,
        base_url: str,
        *,
        codec: str,
        max_connections: int,
        max_message_size: int,
        ssl_context: ssl.SSLContext | None,
        server_name: str | None = None,
        http2: str = "bidi",
        h2_ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        parts = urlsplit(self._base)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path_prefix = parts.path
        self._server_name = server_name
        # HTTP/2 (h2client.py) carries bidi streams ("bidi"), every stream kind ("streams") or nothing ("off")
        self._http2 = http2
        self._h2_ssl = h2_ssl_context
        self._h2: H2Connection | None = None
        self._h2_old: set[H2Connection] = set()
        self._h2_lock = asyncio.Lock()
        self._codec: Codec = codec_named(codec)
        self._response_codec = response_codec(self._codec)
        self._unary_type = f"application/{self._codec.name}"
        self._stream_type = f"application/connect+{self._codec.name}"
        self._limit = max_message_size
        # aiohttp takes the name to verify (and send as SNI) per request
        self._request_options: dict[str, Any] = {"server_hostname": server_name} if server_name else {}
        self._urls: dict[str, URL] = {}
        # unary calls: protobind's own keep-alive pool (h1client.py); aiohttp makes the rest
        self._pool = H1Pool(
            self._host,
            self._port,
            ssl_context=(ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None,
            server_name=server_name,
            limit=max_connections,
            max_message_size=max_message_size,
        )
        self._targets: dict[str, bytes] = {}
        default_port = 443 if parts.scheme == "https" else 80
        authority = self._host if ":" not in self._host else f"[{self._host}]"
        if self._port != default_port:
            authority += f":{self._port}"
        self._unary_head = [
            (b"host", authority.encode("ascii") if authority.isascii() else authority.encode("idna")),
            (b"user-agent", _USER_AGENT.encode()),
            (b"content-type", self._unary_type.encode()),
            (b"connect-protocol-version", b"1"),
        ]
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            # shorter than the server's keep-alive, so the pool drops an idle connection before the
            # server does and a call never races a closing connection
            keepalive_timeout=15,
            ssl=ssl_context if ssl_context is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # deadlines come from the call (Connect-Timeout-Ms plus a local backstop), not from the pool
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"user-agent": _USER_AGENT},
        )
        # A channel the caller forgot to close would otherwise make aiohttp log a page of
        # "Unclosed client session" at exit; asyncio.run cancels leftover tasks when it ends, so
        # this idle task closes the pool then, on the loop that owns it.
        self._closer = asyncio.get_running_loop().create_task(
            self._close_when_cancelled(), name=f"protobind http client {self._base}"
        )

    def _url(self, method: MethodInfo[Any, Any]) -> URL:
        url = self._urls.get(method.path)
        if url is None:
            url = self._urls[method.path] = URL(self._base + method.path, encoded=False)
        return url

    @staticmethod
    def _headers(call: CallInfo, content_type: str) -> list[tuple[str, str]]:
        headers = [("content-type", content_type), ("connect-protocol-version", "1")]
        metadata = call.outgoing_metadata
        for key, value in metadata.items() if metadata is not None else ():
            if key in PROTOCOL_HEADERS:
                continue  # the binding owns these (e.g. metadata forwarded from an incoming call)
            headers.append(request_header(key, value))
        if call.deadline is not None:
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            headers.append(("connect-timeout-ms", str(min(math.ceil(remaining * 1000), 9_999_999_999))))
        return headers

    async def reflect(self, timeout: float | None, metadata: Metadata) -> Reflected:
        """The server's services and descriptors, from ``GET {prefix}/protobind/reflection``."""
        url, body = await self._get(HTTP_PATH, timeout, metadata, "protobind reflection")
        try:
            return from_document(json.loads(body))
        except (ValueError, AttributeError) as exc:
            raise RpcError(Code.INTERNAL, f"invalid reflection answer from {url}: {exc}") from None

    async def openapi(self, timeout: float | None, metadata: Metadata) -> dict[str, Any]:
        """The OpenAPI document the server serves at ``GET {prefix}/openapi.json``."""
        url, body = await self._get("/openapi.json", timeout, metadata, "OpenAPI document")
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise RpcError(Code.INTERNAL, f"{url} did not answer a JSON document")
        return document

    async def _get(
        self, path: str, timeout: float | None, metadata: Metadata, what: str
    ) -> tuple[str, bytes]:
        """``GET {prefix}{path}`` with ``metadata`` as headers: the URL and the body of a 200;
        :class:`RpcError` otherwise (``UNIMPLEMENTED`` for a 404: the server serves no ``what``)."""
        url = self._base + path
        limit = aiohttp.ClientTimeout(total=timeout)
        headers = [("accept", "application/json")]
        headers += [request_header(k, v) for k, v in metadata.items() if k not in PROTOCOL_HEADERS]
        try:
            async with self._session.get(url, headers=headers, timeout=limit) as response:
                body = await response.read()
                status = response.status
        except asyncio.TimeoutError:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"no {what} in time") from None
        except aiohttp.ClientError as exc:
            raise _unavailable(self._base, exc) from exc
        if status != 200:
            error = error_from_body(status, body)
            if status == 404:
                error = RpcError(Code.UNIMPLEMENTED, f"{url} serves no {what}")
            raise error
        return url, body

    # --- unary ------------------------------------------------------------------------------------

    async def unary(self, request: Message, call: CallInfo) -> Message:
        method = call.method
        assert method is not None
        if method.kind is not MethodKind.UNARY:
            raise RpcError(Code.INTERNAL, f"{method.full_name} is not a unary method")
        body = self._codec.encode(request)
        if call.deadline is None:
            return await self._unary(method, body, call)
        async with DeadlineScope(call.deadline):
            return await self._unary(method, body, call)

    def _unary_headers(self, call: CallInfo, size: int) -> list[tuple[bytes, bytes]]:
        headers = [*self._unary_head, (b"content-length", b"%d" % size)]
        metadata = call.outgoing_metadata
        if metadata is not None:
            for key, value in metadata.items():
                if key not in PROTOCOL_HEADERS:  # the binding owns these
                    name, text = request_header(key, value)
                    headers.append((name.encode("latin-1"), text.encode("latin-1")))
        if call.deadline is not None:
            remaining = call.deadline - time.monotonic()
            if remaining <= 0:
                raise RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
            headers.append((b"connect-timeout-ms", b"%d" % min(math.ceil(remaining * 1000), 9_999_999_999)))
        return headers

    def _target(self, method: MethodInfo[Any, Any]) -> bytes:
        target = self._targets.get(method.path)
        if target is None:
            target = self._targets[method.path] = self._url(method).raw_path_qs.encode("ascii")
        return target

    async def _unary(self, method: MethodInfo[Any, Any], body: bytes, call: CallInfo) -> Message:
        headers = self._unary_headers(call, len(body))
        try:
            status, raw_headers, data = await self._pool.request(self._target(method), headers, body)
        except ConnectFailed as exc:
            raise _unreachable(self._base, exc.os_error) from exc.os_error
        except OSError as exc:
            raise _unavailable(self._base, exc) from exc
        content_type = ""
        encoding = None
        pairs = []
        for raw_name, raw_value in raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name == "content-type":
                content_type = value
            elif name == "content-encoding":
                encoding = value.strip().lower()
            pairs.append((name, value))
        call.headers, call.trailers = split_response_headers(pairs)
        if encoding is not None and encoding != "identity":
            # not asked for (no Accept-Encoding goes out), but a server may compress all the same
            if encoding != "gzip":
                raise _invalid_response(method, f"unsupported content encoding {encoding!r}")
            data = gunzip(data, self._limit)
        if status != 200:
            raise error_from_body(status, data)
        if content_type_codec(content_type, UNARY_CONTENT_TYPES) != self._codec.name:
            raise _invalid_response(method, f"unexpected content type {content_type!r}")
        try:
            message: Message = self._response_codec.decode(data, method.output_type)
        except RpcError as exc:
            raise _invalid_response(method, exc.message) from None
        return message

    # --- streams ----------------------------------------------------------------------------------

    async def stream(self, requests: AsyncIterator[Message], call: CallInfo) -> AsyncIterator[Message]:
        method = call.method
        assert method is not None
        if self._http2 == "streams" or method.kind is MethodKind.BIDI_STREAMING:
            if self._http2 == "off":
                raise RpcError(
                    Code.UNIMPLEMENTED,
                    f"{method.full_name} is a bidirectional stream, which needs full-duplex HTTP/2, "
                    "and this client was given http2=off",
                )
            async for message in self._h2_stream(requests, call, method):
                yield message
            return
        headers = self._headers(call, self._stream_type)
        failure: list[BaseException] = []
        body: bytes | AsyncIterator[bytes]
        if method.kind is MethodKind.SERVER_STREAMING:
            body = envelope(self._codec.encode(await anext(requests)))
        else:
            body = self._request_body(requests, failure)
        deadline = call.deadline
        try:
            async with DeadlineScope(deadline):
                response = await self._session.post(
                    self._url(method), data=body, headers=headers, **self._request_options
                )
        except aiohttp.ClientError as exc:
            if failure:
                raise failure[0] from None
            raise _unavailable(self._base, exc) from exc
        except OSError as exc:
            raise _unavailable(self._base, exc) from exc
        async with response:
            call.headers, _ = split_response_headers(response.headers.items())
            if response.status != 200:
                async with DeadlineScope(deadline):
                    data = await self._read(response.read())
                raise error_from_body(response.status, data)
            content_type = response.headers.get("content-type", "")
            if content_type_codec(content_type, STREAM_CONTENT_TYPES) != self._codec.name:
                raise _invalid_response(method, f"unexpected content type {content_type!r}")
            gzipped = response.headers.get("connect-content-encoding", "identity") == "gzip"
            content = response.content

            def read(size: int, allow_eof: bool) -> Awaitable[bytes]:
                return self._read(content.readexactly(size), allow_eof)

            async for message in self._envelopes(method, call, read, gzipped, failure):
                yield message

    async def _envelopes(
        self,
        method: MethodInfo[Any, Any],
        call: CallInfo,
        read: Callable[[int, bool], Awaitable[bytes]],
        gzipped: bool,
        failure: list[BaseException],
    ) -> AsyncIterator[Message]:
        """The messages of a Connect stream's response body (``read(n, allow_eof)`` gives its bytes),
        up to its end-of-stream message, whose error or trailers end the call."""
        deadline = call.deadline
        while True:
            async with DeadlineScope(deadline):
                header = await read(ENVELOPE_HEADER_SIZE, True)
                if not header:
                    raise _invalid_response(method, "the stream ended without an end-of-stream message")
                flags, size = parse_envelope_header(header)
                if size > self._limit:
                    raise RpcError(
                        Code.RESOURCE_EXHAUSTED, f"a response message is larger than {self._limit} bytes"
                    )
                data = await read(size, False)
            if flags & FLAG_COMPRESSED:
                if not gzipped:
                    raise _invalid_response(method, "compressed message without Connect-Content-Encoding")
                data = gunzip(data, self._limit)
            if flags & FLAG_END_STREAM:
                error, call.trailers = parse_end_stream(data)
                if error is not None:
                    raise error
                if failure:
                    raise failure[0]
                return
            try:
                message = self._response_codec.decode(data, method.output_type)
            except RpcError as exc:
                raise _invalid_response(method, exc.message) from None
            yield message

    # --- HTTP/2 -----------------------------------------------------------------------------------

    async def _h2_connection(self) -> H2Connection:
        """The HTTP/2 connection new streams go on: a fresh one once the last is used up."""
        async with self._h2_lock:
            current = self._h2
            if current is not None and current.usable:
                return current
            if current is not None:
                self._h2_old.add(current)
            for old in [c for c in self._h2_old if c.idle or c.failure is not None]:
                self._h2_old.discard(old)
                await old.close()
            from ._h2client import H2Connection

            self._h2 = await H2Connection.open(
                self._host, self._port, self._h2_ssl, self._server_name, self._base
            )
            return self._h2

    async def _h2_stream(
        self, requests: AsyncIterator[Message], call: CallInfo, method: MethodInfo[Any, Any]
    ) -> AsyncIterator[Message]:
        """A Connect stream call over HTTP/2, full duplex: requests go out as the caller makes them
        while responses are read."""
        headers = [*self._headers(call, self._stream_type), ("user-agent", _USER_AGENT)]
        async with DeadlineScope(call.deadline):
            connection = await self._h2_connection()
        stream = connection.start(self._path_prefix + method.path, headers)
        failure: list[BaseException] = []
        pump = asyncio.get_running_loop().create_task(self._h2_send(stream, requests, failure))
        try:
            async with DeadlineScope(call.deadline):
                status, response_headers = await stream.response()
            call.headers, _ = split_response_headers(response_headers)
            if status != 200:
                async with DeadlineScope(call.deadline):
                    data = await stream.read_all(self._limit)
                raise error_from_body(status, data)
            content_type = dict(response_headers).get("content-type", "")
            if content_type_codec(content_type, STREAM_CONTENT_TYPES) != self._codec.name:
                raise _invalid_response(method, f"unexpected content type {content_type!r}")
            gzipped = dict(response_headers).get("connect-content-encoding", "identity") == "gzip"

            async def read(size: int, allow_eof: bool) -> bytes:
                data = await stream.readexactly(size)
                if len(data) < size and (data or not allow_eof):
                    raise RpcError(Code.UNAVAILABLE, f"HTTP/2 stream from {self._base} ended mid-message")
                return data

            async for message in self._envelopes(method, call, read, gzipped, failure):
                yield message
        except RpcError:
            if failure:
                raise failure[0] from None
            raise
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
            stream.done()

    async def _h2_send(
        self, stream: H2Stream, requests: AsyncIterator[Message], failure: list[BaseException]
    ) -> None:
        try:
            async for request in requests:
                await stream.send(envelope(self._codec.encode(request)))
            await stream.send(b"", end=True)
        except RpcError:
            pass  # the stream failed: the reading side reports why
        except Exception as exc:
            failure.append(exc)
            stream.cancel(RpcError(Code.CANCELLED, "the request stream failed"))

    async def _read(self, awaitable: Any, allow_eof: bool = False) -> bytes:
        try:
            data: bytes = await awaitable
        except asyncio.IncompleteReadError as exc:
            if allow_eof and not exc.partial:
                return b""
            raise RpcError(Code.UNAVAILABLE, f"connection to {self._base} closed mid-message") from exc
        except aiohttp.ClientError as exc:
            raise _unavailable(self._base, exc) from exc
        except OSError as exc:
            raise _unavailable(self._base, exc) from exc
        return data

    async def _request_body(
        self, requests: AsyncIterator[Message], failure: list[BaseException]
    ) -> AsyncIterator[bytes]:
        """Enveloped request messages; an exception of the caller's iterator is kept in ``failure``
        so the call re-raises it instead of the connection error it causes."""
        try:
            async for request in requests:
                yield envelope(self._codec.encode(request))
        except Exception as exc:
            failure.append(exc)
            raise

    async def _close_when_cancelled(self) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await self._pool.close()
            await self._session.close()

    async def close(self) -> None:
        self._closer.cancel()
        await self._pool.close()
        await self._session.close()
        for connection in [*self._h2_old, *([self._h2] if self._h2 is not None else [])]:
            await connection.close()
        self._h2, self._h2_old = None, set()


def make_ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext | None:
    """The client's TLS context: ``ca`` replaces the system roots, ``cert``/``key`` a client certificate."""
    if ca_file is None and cert_file is None:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


# --- client ---------------------------------------------------------------------------------------


async def dial(url: str, options: Mapping[str, Any]) -> HttpTransport:
    """A Connect client transport for ``url`` (``http://host:port[/prefix]`` or ``https://``)."""
    _require("aiohttp")
    from ._client import HttpTransport, make_ssl_context

    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host: use http://host:port")
    read = reader(options)
    codec = str(options.get("codec", "proto")).lower()
    if codec not in ("proto", "json"):
        raise read.error("codec", f"must be proto or json, not {codec!r}")
    base = f"{parts.scheme}://{parts.netloc}{_prefix(parts.path)}"
    tls_given = [name for name in sorted(TLS_CLIENT_OPTIONS) if read.given(name)]
    if tls_given and parts.scheme != "https":
        raise ValueError(
            f"TLS options ({', '.join(tls_given)}) were given for a plain http:// URL: use https://"
        )
    http2 = str(options.get("http2", "bidi")).strip().lower()
    if http2 not in HTTP2_MODES:
        raise read.error("http2", f"must be one of {', '.join(HTTP2_MODES)}, not {http2!r}")
    ssl_context = h2_ssl_context = None
    if parts.scheme == "https":
        tls_files = (read.file("tls_ca"), read.file("tls_cert"), read.file("tls_key"))
        ssl_context = make_ssl_context(*tls_files)
        # a context of its own, offering only h2 by ALPN (aiohttp's must not offer it)
        h2_ssl_context = make_ssl_context(*tls_files) or ssl.create_default_context()
        h2_ssl_context.set_alpn_protocols(["h2"])
    return HttpTransport(
        base,
        codec=codec,
        max_connections=read.positive_int("max_connections", DEFAULT_CLIENT_CONNECTIONS),
        max_message_size=read.positive_int("max_message_size", DEFAULT_MAX_MESSAGE_SIZE),
        ssl_context=ssl_context,
        server_name=read.text("tls_server_name"),
        http2=http2,
        h2_ssl_context=h2_ssl_context,
    )


# mypy checks this module's dial against the transport interface (TRANSPORT imports it lazily)
_CHECK: DialFunction = dial
