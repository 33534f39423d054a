"""Plain helpers the test modules share (fixtures live in conftest.py and the server modules).

``eventually`` waits for something a server does after the call that caused it has returned (a
cancelled handler, a span, a delivery); ``eventually_blocking`` is the same for tests written as
blocking code. Both fail the test with an ``AssertionError`` when the condition does not hold in
time, and return ``True`` otherwise, so ``assert await eventually(...)`` reads as the assertion it
is. The time limit only bounds how long a failing test waits: a passing test goes on as soon as
the condition holds.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

#: The repository's root.
ROOT = Path(__file__).resolve().parent.parent

#: How long ``eventually`` waits by default: generous, for a loaded machine.
TIMEOUT = 30.0


async def eventually(predicate: Callable[[], object], timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` on the running loop until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s")
        await asyncio.sleep(0.01)
    return True


def eventually_blocking(predicate: Callable[[], object], timeout: float = TIMEOUT) -> bool:
    """``eventually`` for blocking code: poll ``predicate`` from this thread."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s")
        pause.wait(0.01)
    return True


def require(found: bool, what: str) -> None:
    """Skip the test with ``no {what}`` when ``found`` is false, except under ``CI=true``, where a
    missing broker fails the run instead (CONTRIBUTING.md)."""
    if not found:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"CI needs {what}")
        pytest.skip(f"no {what}")


#: The ports ``free_port`` handed out in this process, never handed out again.
_HANDED_OUT: set[int] = set()


def _outside_ephemeral_ports() -> range | None:
    """The ports below (or else above) the kernel's ephemeral range, if there are enough of them."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return None
    # the lower half below the range keeps clear of the well-known ports of services
    below, above = range(max(1024, low // 2), low), range(high + 1, 65536)
    candidates = max(below, above, key=len)
    return candidates if len(candidates) >= 1000 else None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (for a process told its port).

    It is outside the kernel's ephemeral range: a process told its port binds it only once it has
    booted (seconds for RabbitMQ's Erlang node), and in that time the suite's own connections take
    ephemeral ports as their local ports (a thousand sockets in TIME_WAIT during a run), any of which
    makes the later bind fail (a private RabbitMQ node exited at boot in a full run, as it does with
    dist_port_already_used when its port is taken). Outside the range only another ``free_port`` can
    pick the port: it is random, and never one this process handed out before (two calls in a row
    could otherwise get the same port)."""
    candidates = _outside_ephemeral_ports() or range(0)
    for port in random.sample(candidates, min(100, len(candidates))):
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def example_greeter() -> object:
    """An instance of examples/greeter's Greeter implementation."""
    path = str(ROOT / "examples" / "greeter")
    sys.path.insert(0, path)
    try:
        from service import Greeter
    finally:
        sys.path.remove(path)
    return Greeter()
