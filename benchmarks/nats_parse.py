"""The NATS reader alone: µs per message to parse a stream of replies read 256 KiB at a time.

    python -m benchmarks.nats_parse --payload 16384

The stream is what a protobind client reads on a busy connection: ``HMSG`` lines with a deadline
header and a payload, cut into reads of asyncio's 256 KiB, so that most reads end inside a
message. Every message is taken (``Connection.take``'s path), none is kept. Best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from protobind.nats._parser import Parser

HEADERS = b"NATS/1.0\r\nProtobind-Timeout-Ms: 30000\r\n\r\n"


class _Taker:
    def __init__(self) -> None:
        self.count = 0

    def take(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bool:
        self.count += 1
        return True


async def _once(chunks: list[bytes], messages: int) -> float:
    taker = _Taker()
    parser = Parser(taker)  # type: ignore[arg-type]  # only take() is reached
    started = time.perf_counter()
    for chunk in chunks:
        await parser.parse(chunk)
    elapsed = time.perf_counter() - started
    assert taker.count == messages, taker.count
    return elapsed / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--payload", type=int, default=16384)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--read", type=int, default=256 * 1024, help="bytes per read")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    size = len(HEADERS) + args.payload
    message = b"HMSG svc.unary 7 _INBOX.abcdefgh.ijklmnop %d %d\r\n%s%s\r\n" % (
        len(HEADERS),
        size,
        HEADERS,
        b"x" * args.payload,
    )
    stream = message * args.messages
    chunks = [stream[i : i + args.read] for i in range(0, len(stream), args.read)]
    best = min(asyncio.run(_once(chunks, args.messages)) for _ in range(args.repeat))
    print(f"{args.payload} B payloads, {args.read} B reads: {best * 1e6:.2f} µs per message")


if __name__ == "__main__":
    main()
