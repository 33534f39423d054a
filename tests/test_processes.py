"""tests/processes.py: a child a test gave up on leaves nothing behind for a later test to trip on."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

import pytest

from .processes import reap


async def test_reap_leaves_no_running_child_or_open_pipe() -> None:
    # the shape of test_fuzz's schemathesis run that timed out on a loaded machine: stdout piped,
    # the wait abandoned while the child still runs
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", stdout=asyncio.subprocess.PIPE
    )
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(process.communicate(), 0.05)
    await reap(process)
    assert process.returncode is not None
    await asyncio.sleep(0)  # the pipe transports' own close callbacks
    unraisable: list[Any] = []
    previous, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        del process
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert [str(u.exc_value) for u in unraisable] == []
