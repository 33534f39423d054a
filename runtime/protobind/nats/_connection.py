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
import collections
import contextlib
import contextvars
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from nats import errors as nats_errors
from nats.aio.client import DEFAULT_BUFFER_SIZE, Client
from nats.protocol.parser import Parser as NatsParser

from .._aio import Resume
from .._wire import is_header_name
from ..broker._refusals import RefusalLog
from ..broker._wire import TIMEOUT
from ..broker.base import (
    BrokerError,
    BrokerMessage,
    Callback,
    DurableBroker,
    InboxCallback,
    Mailbox,
    NotConnected,
    PayloadTooLarge,
)
from ..transport import network_reason
from ..urls import redact, redact_text
from ._jetstream import JetStream
from ._parser import Parser
from ._transport import LARGE, Reader, Transport

if TYPE_CHECKING:
    from ..broker._bindings import Bindings
    from ._options import Settings

__all__ = [
    "AuthenticationFailed",
    "Connection",
    "NatsBroker",
    "connect",
    "encode_headers",
    "open_broker",
]

logger = logging.getLogger("protobind.nats")

#: Seconds a close waits for the server to take what nats-py still buffers before dropping the socket.
CLOSE_WAIT = 5.0


#: Header names already checked by :func:`encode_headers` (a bounded set: names are few).
_CHECKED_NAMES: set[str] = set()
#: The header block of a call that carries only its deadline, up to its value (see encode_headers).
_TIMEOUT_BLOCK = f"NATS/1.0\r\n{TIMEOUT}: ".encode()
_TIMEOUT_VALUE_AT = len(_TIMEOUT_BLOCK)


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The NATS header block for ``headers`` (names checked, line breaks in values made spaces)."""
    if len(headers) == 1:
        # the block of most calls: just the deadline, a number of milliseconds
        value = headers.get(TIMEOUT)
        if value is not None and value.isdigit() and value.isascii():
            return b"%s%s\r\n\r\n" % (_TIMEOUT_BLOCK, value.encode())
    lines = ["NATS/1.0\r\n"]
    for name, value in headers.items():
        if name not in _CHECKED_NAMES:
            if not is_header_name(name):
                raise nats_errors.BadHeaderError(name)
            if len(_CHECKED_NAMES) < 1024:
                _CHECKED_NAMES.add(name)
        if "\r" in value or "\n" in value:
            value = value.replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}: {value.strip()}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


class _NotPlain(Exception):
    """A header block :func:`parse_headers` leaves to nats-py (an inline status, not UTF-8)."""


def parse_headers(block: bytes) -> dict[str, str] | None:
    """The headers of a block of the plain form (``NATS/1.0`` then ``Name: value`` lines), as
    nats-py's parser reads them; raises :class:`_NotPlain` for any other block."""
    if block.startswith(_TIMEOUT_BLOCK):
        # the block of most calls: just the deadline (as encode_headers writes it)
        digits = block[_TIMEOUT_VALUE_AT:-4]
        if digits.isdigit() and block.endswith(b"\r\n\r\n"):
            return {TIMEOUT: digits.decode()}
    if block[8:10] != b"\r\n":
        raise _NotPlain
    try:
        text = block[10:].decode()
    except UnicodeDecodeError:
        raise _NotPlain from None
    out: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip()
            # the names nats-py's parser drops: empty, with blanks, not ASCII
            if name and name.isascii() and " " not in name and "\t" not in name:
                out[name] = value.strip()
    return out or None


class Connection(Client):
    """See the module docstring."""

    def __init__(self, require_tls: bool = False) -> None:
        super().__init__()
        self._require_tls = require_tls
        self._fast = all(
            hasattr(self, name)
            for name in (
                "_flush_queue",
                "_flusher_task",
                "_max_payload",
                "_max_pending_size",
                "_pending",
                "_pending_data_size",
                "_status",
                "stats",
            )
        )
        # sid -> (nats-py subscription, the mailbox protobind's consumers take its messages from)
        # (see pulled()); their messages skip nats-py's general delivery path
        self._pulled: dict[int, tuple[Any, Mailbox]] = {}
        # sid -> an inbox whose callback runs as its messages arrive (see direct())
        self._direct: dict[int, _Direct] = {}
        self._reports: set[asyncio.Future[Any]] = set()  # error callbacks under way (see _report)
        if self._fast and isinstance(getattr(self, "_ps", None), NatsParser):
            self._ps = Parser(self)  # type: ignore[assignment]  # nats-py's, replaced (see ._parser)

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
        """Publish ``payload``: through :meth:`buffer`, else as nats-py's ``publish`` does (it waits
        for room in its buffer, keeps the message while reconnecting, raises when the body is above
        ``max_payload`` or the connection is closed). Headers count toward ``max_payload`` on the
        server but not in nats-py's check: a caller with headers checks the total first."""
        if not self.buffer(subject, payload, reply, headers):
            await self.publish(subject, payload, reply=reply, headers=dict(headers) if headers else None)

    def buffer(
        self, subject: str, payload: bytes, reply: str = "", headers: Mapping[str, str] | None = None
    ) -> bool:
        """Publish ``payload`` without awaiting anything, as nats-py's ``publish`` does when its
        buffer has room: append the command to the pending buffer and wake the flusher task.
        ``False`` when that is not possible now (not connected, the buffer full, a body above
        ``max_payload``, no subject, no flusher task, or a nats-py without these internals); the
        caller then awaits :meth:`send`, which does what nats-py does in those cases.
        """
        size = len(payload)
        if not self._fast or self._status != Client.CONNECTED or size > self._max_payload or not subject:
            return False  # nats-py's publish buffers while reconnecting, raises when too large or closed
        flusher = self._flusher_task
        if flusher is None or flusher.done():
            return False  # nats-py's publish writes inline when its flusher task is gone
        if headers:
            try:
                block = encode_headers(headers)
            except nats_errors.BadHeaderError as exc:
                raise _broker_error(exc) from None  # as NatsBroker.publish reports it
            head = b"%b%b" % (
                f"HPUB {subject} {reply} {len(block)} {len(block) + size}\r\n".encode(),
                block,
            )
        else:
            head = f"PUB {subject} {reply} {size}\r\n".encode()
        pending = self._pending_data_size + len(head) + size + 2
        if 0 < self._max_pending_size < pending:
            return False  # nats-py's publish flushes first, and waits for that
        queued = self._pending
        if size < LARGE:
            queued.append(b"%b%b\r\n" % (head, payload))
        else:
            # A large payload is not copied here: the transport hands the parts to the socket as
            # they are (see protobind.nats._transport). The small bytes before it (the previous
            # message's end, or a small message) and its head go in one part: a buffer per
            # protocol line costs the kernel more than joining them.
            if queued and len(last := queued[-1]) < LARGE:
                queued[-1] = last + head
            else:
                queued.append(head)
            queued += (payload, b"\r\n")
        self._pending_data_size = pending
        stats = self.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size
        flush_queue = self._flush_queue
        if flush_queue is not None and not flush_queue._queue:  # type: ignore[attr-defined]
            # what nats-py's _flush_pending does to wake its flusher (which resolves the future)
            flush_queue.put_nowait(asyncio.get_running_loop().create_future())
        return True

    def pulled(self, sub: Any, mailbox: Mailbox | None) -> bool:
        """Deliver ``sub``'s messages into ``mailbox`` on the short path of :meth:`_process_msg`
        (``None``: no more, protobind unsubscribed). ``False`` when this nats-py lacks what that
        path reads; the caller then uses a callback subscription."""
        if mailbox is None:
            self._pulled.pop(getattr(sub, "_id", None), None)  # type: ignore[arg-type]
            return True
        names = ("_id", "_received", "_pending_size", "_pending_bytes_limit", "_pending_msgs_limit")
        if not (all(hasattr(sub, name) for name in names) and hasattr(self, "_error_cb")):
            return False
        self._pulled[sub._id] = (sub, mailbox)
        # what nats-py queued before (nothing, unless a message came in between)
        queued = getattr(sub, "_pending_queue", None)
        while isinstance(queued, asyncio.Queue) and not queued.empty():
            mailbox.put(queued.get_nowait())
            queued.task_done()
        return True

    def direct(self, sub: Any, callback: InboxCallback, start: int) -> bool:
        """Run ``callback(subject[start:], msg)`` for each of ``sub``'s messages as the connection
        reads it, in order (see :class:`_Direct`), instead of through nats-py's queue and
        delivery task. ``False`` when this nats-py lacks what that path reads; the caller then
        uses a callback subscription."""
        if not (hasattr(sub, "_id") and hasattr(sub, "_received") and hasattr(self, "_error_cb")):
            return False
        inbox = self._direct[sub._id] = _Direct(sub, callback, start, self._report)
        # what nats-py queued before (nothing, unless a message came in between)
        queued = getattr(sub, "_pending_queue", None)
        while isinstance(queued, asyncio.Queue) and not queued.empty():
            inbox.deliver(queued.get_nowait())
            queued.task_done()
        return True

    def _report(self, exc: Exception) -> None:
        """What nats-py does with an exception of a subscription's callback: to the error callback."""
        error_cb = self._error_cb
        if error_cb is not None:
            task = asyncio.ensure_future(error_cb(exc))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    async def _connect_to_server(self, s: Any) -> None:
        # nats-py's, for a TCP server (nats:// and tls://): with protobind's transport
        # (see protobind.nats._transport), created once and reused on every reconnect
        if self._transport is None and self._fast and s.uri.scheme in ("nats", "tls"):
            s.last_attempt = time.monotonic()
            self._transport = transport = Transport()
            await transport.connect(s.uri, DEFAULT_BUFFER_SIZE, self.options["connect_timeout"])
            return
        await super()._connect_to_server(s)

    async def _read_loop(self) -> None:
        """nats-py's read loop, reading every chunk the socket returned at once (see
        protobind.nats._transport) when the connection has protobind's reader."""
        reader = getattr(self._transport, "_io_reader", None)
        if not isinstance(reader, Reader):
            await super()._read_loop()
            return
        reader.chunked()
        parse = self._ps.parse
        while True:
            try:
                if self.is_closed or self.is_reconnecting or self._transport is None:
                    break
                if reader.at_eof():
                    eof = nats_errors.UnexpectedEOF()
                    await self._error_cb(eof)
                    await self._process_op_err(eof)
                    break
                await parse(await reader.take())
            except nats_errors.ProtocolError:
                await self._process_op_err(nats_errors.ProtocolError())
                break
            except OSError as exc:
                await self._process_op_err(exc)
                break
            except asyncio.CancelledError:
                break
            except Exception:
                logger.exception("NATS connection: reading failed")
                break

    def take(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes | None,
        parsed: dict[str, str] | None = None,
    ) -> bool:
        """Take a message for a subscription protobind consumes itself (no callback, no
        JetStream, no request future, no message limit), doing only what nats-py does for such a
        message: count it, build it, queue it within the slow-consumer limits (or, for a direct
        inbox, run its callback); with a message object that has only the four fields the engine
        reads. ``False`` for any other message (and a header block nats-py must read): the
        parser then hands it to :meth:`_process_msg`, nats-py's path, which hands it back with
        the block as nats-py read it (``parsed``, and no ``headers``)."""
        pulled = self._pulled.get(sid)
        inbox = None if pulled is not None else self._direct.get(sid)
        if pulled is None and inbox is None:
            return False
        if headers:
            try:
                parsed = parse_headers(headers)
            except _NotPlain:
                return False
        size = len(data)
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += size
        # Received's fields set here, without an __init__ call: this runs for every message
        msg = _new(Received)
        msg.subject = subject.decode()
        msg.reply = reply.decode() if reply else ""
        msg.data = data
        msg.headers = parsed
        if inbox is not None:
            inbox.sub._received += 1
            inbox.deliver(msg)
            return True
        assert pulled is not None
        sub, mailbox = pulled
        sub._received += 1
        # nats-py's own limits: a message that would overflow them is dropped and reported
        pending = sub._pending_size + size
        limit = sub._pending_bytes_limit
        if not 0 < limit <= pending and not 0 < sub._pending_msgs_limit <= len(mailbox.items):
            sub._pending_size = pending
            mailbox.put(msg)
            return True
        self._report(nats_errors.SlowConsumerError(subject=msg.subject, reply=msg.reply, sid=sid, sub=sub))
        return True

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        """nats-py's parser (and :class:`Parser`, for what :meth:`take` leaves) hands messages
        here: those of protobind's own subscriptions take :meth:`take`'s path, their header
        block read by nats-py when it is not of the plain form; the rest go to nats-py."""
        if self.take(sid, subject, reply, data, headers):
            return
        if sid not in self._pulled and sid not in self._direct:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self.take(sid, subject, reply, data, None, await super()._process_headers(headers))

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        # nats-py upgrades to TLS only when the server's INFO says tls_required, and otherwise sends
        # CONNECT (credentials included) in plaintext. A tls:// URL or a TLS option means TLS or
        # nothing: a server that offers TLS is asked for it, one that does not is refused.
        if initial_connection and self._require_tls and not info.get("tls_required"):
            if not info.get("tls_available"):
                raise TlsRefused(
                    "TLS was required (tls:// or a TLS option) but the server does not offer TLS; "
                    "nothing was sent"
                )
            info["tls_required"] = True
        await super()._process_info(info, initial_connection)

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        if not headers:
            return None
        try:
            return parse_headers(headers)
        except _NotPlain:
            return await super()._process_headers(headers)


class AuthenticationFailed(ConnectionError):
    """The NATS server refused the credentials (or demanded some that were not given)."""


class TlsRefused(nats_errors.Error):
    """TLS was required and the server does not offer it."""


def _hopeless(exc: BaseException) -> bool:
    """Whether trying the same server again cannot help: its certificate failed verification (an
    unknown CA, the wrong host name, expired), or TLS was required and it does not offer TLS."""
    return isinstance(exc, (ssl.SSLCertVerificationError, TlsRefused))


async def connect(settings: Settings, **callbacks: Any) -> Connection:
    """Connect to one of ``settings.servers``, or raise :class:`ConnectionError` naming the cause.

    Bounded in time whatever goes wrong (a TLS handshake that never completes, a server that
    never answers), and never in plaintext when TLS was asked for. Error texts and log lines
    name the servers without their credentials.
    """
    # the causes of the first connection's failure; bounded, since nats-py reports every later
    # failure (reconnections, slow-consumer drops) here too for the connection's whole life
    seen: collections.deque[BaseException] = collections.deque(maxlen=16)
    shown = ", ".join(redact(server) for server in settings.servers)
    # nats-py reports here each failed (re)connect attempt, and each message a slow consumer drops
    failures = RefusalLog(logger, "NATS connection to %s: %s: %s")
    # servers that failed in a way no retry cures: once every server has, the attempt stops
    unverified: set[str] = set()
    hopeless: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    connected = False

    async def error_cb(exc: Exception) -> None:
        # nats-py reports every failed (re)connect attempt here; its default handler logs tracebacks.
        # Until the first connection is made, the error raised below names the cause: a warning per
        # failed try would print the same reason again before it.
        seen.append(exc)
        failures.refused(shown, type(exc).__name__, _reason(exc), answered=not connected)
        if _hopeless(exc) and not hopeless.done():
            unverified.add(str(getattr(getattr(client, "_current_server", None), "uri", "")))
            if len(unverified) >= len(settings.servers):
                hopeless.set_result(exc)

    client = Connection(require_tls=settings.require_tls)
    # nats-py retries its first connection as often as later reconnections; when it cannot reach
    # any server now, fail after one more try (the caller sees UNAVAILABLE) rather than hang
    first = {**settings.connect, "max_reconnect_attempts": 1}
    timeout = float(first.get("connect_timeout", 2.0))
    # each server may be tried twice, each try bounded by connect_timeout per step (TCP, TLS,
    # INFO, PONG); past this budget the attempt is abandoned whatever nats-py is waiting for
    budget = 4 * timeout * 2 * max(1, len(settings.servers)) + 1.0
    attempt = asyncio.ensure_future(client.connect(settings.servers, error_cb=error_cb, **first, **callbacks))
    try:
        await asyncio.wait((attempt, hopeless), timeout=budget, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not attempt.done():
            # out of time, or no server can be verified: nats-py would try again (and its cleanup
            # can wait forever for a TLS peer's goodbye), so the attempt is abandoned here
            attempt.cancel()
            await asyncio.wait((attempt,), timeout=1.0)
        hopeless.cancel()
    try:
        if not attempt.done() or attempt.cancelled():
            raise asyncio.TimeoutError()
        attempt.result()
    except (OSError, asyncio.TimeoutError, nats_errors.Error, ValueError) as exc:
        await _abandon(client)
        causes = [*seen, exc]
        reason = next((_reason(c) for c in causes if _is_auth(c)), None)
        if reason is not None:
            raise AuthenticationFailed(f"NATS at {shown} refused the credentials: {reason}") from None
        # the most telling cause: a refusal says more than the timeout of a later retry
        specific = [
            c for c in causes if not isinstance(c, (nats_errors.NoServersError, asyncio.TimeoutError))
        ]
        cause = specific[0] if specific else exc
        raise ConnectionError(f"cannot connect to NATS at {shown}: {_reason(cause)}") from None
    connected = True
    # nats-py reads its options at each reconnection: from now on, the configured persistence
    client.options["max_reconnect_attempts"] = settings.connect["max_reconnect_attempts"]
    return client


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):  # asyncio's TimeoutError too, from Python 3.11
        return redact_text(network_reason(exc))
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).removeprefix("nats: ").strip("'\" ") or type(exc).__name__
    return redact_text(text)


def _is_auth(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        isinstance(exc, nats_errors.AuthorizationError)
        or "authorization violation" in text
        or ("authentication" in text)
    )


async def _abandon(client: Connection) -> None:
    """Give up a connection attempt without waiting on a peer that may never answer: nats-py's
    own close waits for the socket's orderly shutdown, which a stuck TLS peer never completes."""
    transport = getattr(client, "_transport", None)
    for name in ("_io_writer", "_bare_io_writer"):
        writer = getattr(transport, name, None)
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.transport.abort()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 1.0)


def _broker_error(exc: BaseException) -> BrokerError:
    if isinstance(exc, nats_errors.MaxPayloadError):
        return PayloadTooLarge("the message exceeds the server's max_payload")
    if isinstance(exc, (nats_errors.ConnectionClosedError, nats_errors.OutboundBufferLimitError)):
        return NotConnected(str(exc))
    return BrokerError(type(exc).__name__)


class Received:
    """A message of a subscription protobind consumes itself (see :meth:`Connection.pulled`),
    made with ``object.__new__`` and its four fields set."""

    __slots__ = ("data", "headers", "reply", "subject")
    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None


_new = object.__new__


class _Direct:
    """An inbox subscription whose callback runs in the connection's reader as each message
    arrives: no message object of nats-py's, no queue, no hop to a delivery task. As with nats-py,
    messages are handled one at a time, in order, in a context of the subscription's own, and
    a callback's exception goes to the connection's error callback. A callback that waits is
    finished in a task, and messages arriving meanwhile wait for it (the engine's inbox callbacks
    never wait: they resolve a future or feed a stream)."""

    __slots__ = ("_backlog", "_callback", "_context", "_report", "_start", "_task", "sub")

    def __init__(
        self, sub: Any, callback: InboxCallback, start: int, report: Callable[[Exception], None]
    ) -> None:
        self.sub = sub
        self._callback = callback
        self._start = start
        self._report = report
        self._context = contextvars.copy_context()
        self._backlog: collections.deque[Any] | None = None  # while a callback waits
        self._task: asyncio.Task[None] | None = None  # the task finishing it

    def deliver(self, msg: Any) -> None:
        backlog = self._backlog
        if backlog is not None:
            backlog.append(msg)
            return
        coro = self._callback(msg.subject[self._start :], msg)
        try:
            waiting = self._context.run(coro.send, None)  # type: ignore[attr-defined]
        except StopIteration:
            return
        except Exception as exc:
            self._report(exc)
            return
        self._backlog = collections.deque()
        self._task = asyncio.get_running_loop().create_task(self._finish(coro, waiting))

    async def _finish(self, coro: Any, waiting: Any) -> None:
        """Await the callback that waits, then handle the messages that came meanwhile."""
        backlog = self._backlog
        assert backlog is not None
        try:
            while True:
                try:
                    await Resume(coro, self._context, waiting)
                except Exception as exc:
                    self._report(exc)
                while True:
                    if not backlog:
                        return
                    msg = backlog.popleft()
                    coro = self._callback(msg.subject[self._start :], msg)
                    try:
                        waiting = self._context.run(coro.send, None)
                    except StopIteration:
                        continue
                    except Exception as exc:
                        self._report(exc)
                        continue
                    break
        finally:
            self._backlog = None
            self._task = None


#: nats-py's ``is_connected``: connected, or draining
_CONNECTED = frozenset((Client.CONNECTED, Client.DRAINING_SUBS, Client.DRAINING_PUBS))


class _Inbound:
    """A queue-group subscription whose messages protobind's consumers take themselves.

    The connection puts them in the mailbox itself (:meth:`Connection.pulled`) and keeps nats-py's
    pending-bytes count of the subscription, as nats-py's own delivery does. With a nats-py that
    lacks what that reads, a callback subscription fills the mailbox instead (one hop more).
    """

    def __init__(self, sub: Any, mailbox: Mailbox, connection: Connection | None) -> None:
        self._sub = sub
        self.mailbox = mailbox
        self._connection = connection  # None: a callback subscription fills the mailbox

    def taken(self, message: BrokerMessage) -> None:
        if self._connection is not None:
            # nats-py's slow-consumer limit counts the bytes waiting
            self._sub._pending_size -= len(message.data)

    def done(self, message: BrokerMessage) -> None:
        """NATS core keeps no record of consumption."""

    async def unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats_errors.Error as exc:
            raise _broker_error(exc) from None
        finally:
            if self._connection is not None:
                self._connection.pulled(self._sub, None)


class _Subscription:
    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats_errors.Error as exc:
            raise _broker_error(exc) from None


class _Inbox:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def address(self, token: str) -> str:
        return self.prefix + token


class NatsBroker(JetStream, DurableBroker):
    """:class:`protobind.broker.base.DurableBroker` on one nats-py connection; with
    :mod:`.jetstream` (streams and consumers), the only code that touches nats-py."""

    name = "nats"
    client: Connection  # the whole connection, more than JetStream's view of it

    def __init__(self, client: Connection) -> None:
        self.client = client
        self._disconnect_callbacks: list[Callable[[], Awaitable[None]]] = []
        #: Publish without awaiting when the connection can take the message now (see
        #: :meth:`Connection.buffer`); ``False``: nothing sent, await :meth:`publish`. The
        #: connection's own method: it appends to nats-py's buffer, and its one error (a header
        #: name NATS cannot carry) is a BrokerError already.
        self.buffer = client.buffer

    # both asked on every call: read straight from nats-py's state where it has it
    @property
    def max_payload(self) -> int:
        client = self.client
        return int(client._max_payload if client._fast else client.max_payload)

    @property
    def is_connected(self) -> bool:
        client = self.client
        return client._status in _CONNECTED if client._fast else bool(client.is_connected)

    def on_disconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._disconnect_callbacks.append(callback)

    async def disconnected(self) -> None:
        """Called by the connection when it is lost: runs the disconnect callbacks."""
        for callback in self._disconnect_callbacks:
            await callback()

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        client = self.client
        try:
            if not client.buffer(subject, payload, reply, headers):
                await client.send(subject, payload, reply, headers)  # waits as nats-py does
        except (nats_errors.Error, OSError) as exc:
            raise _broker_error(exc) from None

    async def subscribe(self, subject: str, callback: Callback, queue: str = "") -> _Subscription:
        return _Subscription(await self.client.subscribe(subject, queue=queue, cb=callback))

    async def pull(self, subject: str, queue: str = "", subjects: tuple[str, ...] = ()) -> _Inbound:
        mailbox = Mailbox()
        # no callback: the connection puts the messages in the mailbox (Connection.pulled)
        sub = await self.client.subscribe(subject, queue=queue)
        if self.client.pulled(sub, mailbox):
            return _Inbound(sub, mailbox, self.client)
        await sub.unsubscribe()

        async def put(msg: BrokerMessage) -> None:
            mailbox.put(msg)

        return _Inbound(await self.client.subscribe(subject, queue=queue, cb=put), mailbox, None)

    async def inbox(self, callback: InboxCallback) -> _Inbox:
        # nats-py's inbox prefix is random (a NUID), so addresses are not guessable
        inbox = _Inbox(self.client.new_inbox() + ".")
        start = len(inbox.prefix)
        # no callback: the connection runs ours as each message arrives (Connection.direct)
        sub = await self.client.subscribe(inbox.prefix + "*")
        if self.client.direct(sub, callback, start):
            return inbox
        await sub.unsubscribe()

        async def on_reply(msg: BrokerMessage) -> None:
            await callback(msg.subject[start:], msg)

        await self.client.subscribe(inbox.prefix + "*", cb=on_reply)
        return inbox

    def peer_of(self, reply: str) -> str:
        return reply.rpartition(".")[0]

    def asyncapi_bindings(self) -> Bindings:
        """The document's channels are the subjects."""
        from ..broker._bindings import Bindings

        return Bindings()

    async def settle(self) -> None:
        await self.client.settle()

    async def close(self) -> None:
        """Close the connection: nats-py writes what it still buffers and waits for the socket to
        close, which a server that stopped reading (stopped, overloaded) would hold forever; after
        :data:`CLOSE_WAIT` seconds the socket is dropped (what was unsent is lost) and the close ends."""
        closing = asyncio.ensure_future(self.client.close())
        try:
            await asyncio.wait({closing}, timeout=CLOSE_WAIT)
            if not closing.done():
                logger.warning("closing NATS: nothing read for %g s: the socket is dropped", CLOSE_WAIT)
                writer = getattr(getattr(self.client, "_transport", None), "_io_writer", None)
                if writer is not None:
                    writer.transport.abort()  # nats-py's own stream: it offers no abort of its own
                await asyncio.wait({closing}, timeout=CLOSE_WAIT)
                if not closing.done():
                    closing.cancel()
                    return
        except asyncio.CancelledError:
            closing.cancel()
            raise
        if not closing.cancelled() and closing.exception() is not None:
            logger.debug("closing the NATS connection: %r", closing.exception())


async def open_broker(settings: Settings, name: str) -> NatsBroker:
    """Connect to NATS with ``settings``; the connection's disconnects reach the broker's callbacks."""
    holder: list[NatsBroker] = []

    async def disconnected_cb() -> None:
        if holder:
            await holder[0].disconnected()

    client = await connect(settings, name=settings.connect.get("name", name), disconnected_cb=disconnected_cb)
    broker = NatsBroker(client)
    holder.append(broker)
    return broker
