"""protobind's NATS protocol reader (protobind.nats._parser) against the protocol as a server
sends it: every operation, every way a read can split it, and the malformed lines it refuses."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from typing import Any

import pytest
from nats.errors import ProtocolError

from protobind.nats._parser import Parser


class Recorder:
    """What the parser hands on, in order; ``take`` accepts the messages of sid 1 only (the
    subscriptions protobind consumes itself), the rest go the async path."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def take(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        if sid != 1:
            return False
        self.seen.append(("msg", sid, subject, reply, data, headers))
        return True

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.seen.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))

    async def _process_pong(self) -> None:
        self.seen.append(("pong",))

    async def _process_err(self, err: str) -> None:
        self.seen.append(("err", err))

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        self.seen.append(("info", info))


HEADERS = b"NATS/1.0\r\npb-timeout: 30000\r\n\r\n"
BIG = bytes(range(256)) * 80  # 20 KiB, with \r\n inside

STREAM = b"".join(
    [
        b"INFO " + json.dumps({"server_id": "x", "max_payload": 1048576}).encode() + b"\r\n",
        b"MSG a.b 1 5\r\nhello\r\n",
        b"MSG a.b 2 _INBOX.x.y 3\r\nabc\r\n",
        b"+OK\r\n",
        b"HMSG a.c 1 _INBOX.z %d %d\r\n%sbody\r\n" % (len(HEADERS), len(HEADERS) + 4, HEADERS),
        b"HMSG a.c 3 %d %d\r\n%s\r\n" % (len(HEADERS), len(HEADERS), HEADERS),
        b"PING\r\n",
        b"MSG big 1 r %d\r\n%s\r\n" % (len(BIG), BIG),
        b"MSG empty 1 0\r\n\r\n",
        b"MSG  spaced\t1   7\r\ncontent\r\n",
        b"PONG\r\n",
        b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n",
    ]
)

EXPECTED = [
    ("info", {"server_id": "x", "max_payload": 1048576}),
    ("msg", 1, b"a.b", b"", b"hello", None),
    ("msg", 2, b"a.b", b"_INBOX.x.y", b"abc", None),
    ("msg", 1, b"a.c", b"_INBOX.z", b"body", HEADERS),
    ("msg", 3, b"a.c", b"", b"", HEADERS),
    ("ping",),
    ("msg", 1, b"big", b"r", BIG, None),
    ("msg", 1, b"empty", b"", b"", None),
    ("msg", 1, b"spaced", b"", b"content", None),
    ("pong",),
    ("err", "'permissions violation for publish to \"x\"'"),
]


def parse_in(chunks: list[bytes]) -> list[tuple[Any, ...]]:
    recorder = Recorder()
    parser = Parser(recorder)

    async def run() -> None:
        for chunk in chunks:
            await parser.parse(chunk)

    asyncio.run(run())
    return recorder.seen


def test_one_read_holding_every_operation() -> None:
    assert parse_in([STREAM]) == EXPECTED


def test_every_split_of_the_stream_in_two_reads() -> None:
    for at in range(len(STREAM) + 1):
        assert parse_in([STREAM[:at], STREAM[at:]]) == EXPECTED, at


def test_byte_by_byte() -> None:
    assert parse_in([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_a_payload_over_many_reads_is_joined_once_it_is_all_here() -> None:
    payload = b"x" * 1_000_000
    stream = b"MSG s 1 %d\r\n%s\r\nPING\r\n" % (len(payload), payload)
    chunks = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    assert parse_in(chunks) == [("msg", 1, b"s", b"", payload, None), ("ping",)]


def test_a_message_split_over_two_reads_is_completed_without_copying_the_second_read() -> None:
    """The end of a message read with a large read takes the bytes it lacks from that read: the
    rest of the read is parsed where it lies, not joined with the message's start (on 16 KiB
    calls that join copied every second 256 KiB read once more)."""
    pings = 0

    class Counter(Recorder):
        async def _process_ping(self) -> None:
            nonlocal pings
            pings += 1

    parser = Parser(Counter())
    message = b"MSG s 1 %d\r\n%s\r\n" % (len(BIG), BIG)
    second = message[-100:] + b"PING\r\n" * 200_000  # 1.2 MB

    async def run() -> int:
        await parser.parse(message[:-100])
        tracemalloc.start()
        try:
            await parser.parse(second)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak = asyncio.run(run())
    assert pings == 200_000
    assert peak < len(second) // 10, peak


def test_a_line_of_many_bare_newlines_split_over_reads_is_joined_once() -> None:
    """A line's end is its \\r\\n: a bare \\n inside a line split over reads is part of the line.
    Taken for the end, every one of them cost a join of the line so far and a failed parse: a
    line of 40,000 (a hostile server's) took 1.3 s, growing with the square of their number."""
    parser = Parser(Recorder())
    joins = 0
    operations = parser._operations

    async def counted(data: bytes, pos: int) -> None:
        nonlocal joins
        joins += 1
        await operations(data, pos)

    parser._operations = counted  # type: ignore[method-assign]

    async def run() -> None:
        await parser.parse(b'INFO {"a": ')
        await parser.parse(b"\n" * 40_000 + b"1}\r\nPING\r\n")

    asyncio.run(run())
    assert joins <= 3  # the first read, the joined line, the rest of the second read
    assert parser.nc.seen == [("info", {"a": 1}), ("ping",)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "line",
    [
        b"MSG a\r\n",  # too few fields
        b"MSG a 1 2 3 4\r\n",  # too many
        b"MSG a x 3\r\nabc\r\n",  # sid not a number
        b"MSG a 1 -3\r\nabc\r\n",  # size not a number
        b"HMSG a 1 9 3\r\nabc\r\n",  # headers longer than the whole
        b"HMSG a 1 3\r\nabc\r\n",
        b"MAKE a 1 3\r\n",
        b"HELLO\r\n",
        b"BOGUS\r\n",
    ],
)
def test_malformed_lines_are_protocol_errors(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_in([b"MSG ok 1 2\r\nok\r\n" + line])


def test_a_reset_drops_the_rest_of_the_read() -> None:
    """nats-py resets its parser when it reconnects; what was read before belongs to the old
    connection."""
    recorder = Recorder()
    parser = Parser(recorder)

    async def reset_on_ping() -> None:
        recorder.seen.append(("ping",))
        parser.reset()

    recorder._process_ping = reset_on_ping  # type: ignore[method-assign]

    async def run() -> None:
        await parser.parse(b"MSG a 1 1\r\nx\r\nPING\r\nMSG b 1 1\r\ny\r\nMSG c 1 5\r\nab")
        await parser.parse(b"MSG d 1 1\r\nz\r\n")

    asyncio.run(run())
    assert recorder.seen == [("msg", 1, b"a", b"", b"x", None), ("ping",), ("msg", 1, b"d", b"", b"z", None)]
