"""Child processes that a test starts with asyncio and must leave behind in no state at all."""

from __future__ import annotations

import asyncio
import contextlib


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` if it still runs and read its pipes to the end.

    A test that stops waiting for a child (a timeout, a failed assertion) must not leave it
    running: its pipe transports would be collected later, in whatever test is running then, as
    "unclosed transport" and "subprocess is still running" warnings that fail that test.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    # communicate() waits for the exit and for every pipe's end of file, so the transports close
    await process.communicate()
