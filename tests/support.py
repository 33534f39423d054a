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


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (for a process told its port)."""
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
