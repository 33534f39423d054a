"""Run one benchmark server in this process: ``python -m benchmarks.serve KIND HOST [NATS_URL]``.

Prints ``READY <url>`` when it accepts calls, stops when stdin closes. A kind ending in
``-uvloop`` runs on uvloop, the others on asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import sys

from protobind import _aio as aio

from . import peers


async def main(kind: str, host: str, nats_url: str | None) -> None:
    url, stop = await peers.SERVERS[kind](host, nats_url)
    print(f"READY {url}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # returns when the parent closes our stdin
    await stop()


if __name__ == "__main__":
    kind = sys.argv[1]
    loop = "uvloop" if kind.endswith("-uvloop") else "asyncio"
    aio.run(main(kind, sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None), loop)
