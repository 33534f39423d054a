"""A test that outlives pytest-timeout's limit (``timeout`` in pyproject.toml, method ``thread``)
ends its process with a report of what it waited on, instead of holding the run (and CI) forever.

pytest-timeout's own report goes to the terminal writer, which a pytest-xdist worker does not
show, and the stack of the main thread of an asyncio test only says that its loop waits in
``select``. This plugin takes over the ``thread`` method's timer: at the limit it writes, to the
stderr the process started with (xdist passes a worker's on), the test's id, the stack of every
other thread and the await chain of every pending asyncio task, then ends the process as
pytest-timeout does. Under xdist the run goes on: the test fails with "worker crashed while
running" it, and a new worker takes the rest (CONTRIBUTING.md, "A test that hangs")."""

from __future__ import annotations

import asyncio
import gc
import inspect
import io
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

_TIMER = pytest.StashKey[threading.Timer]()
_STDERR = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    stream = sys.__stderr__
    if stream is not None:
        config.stash[_STDERR] = os.dup(stream.fileno())


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "thread" or _STDERR not in item.config.stash:
        return None  # pytest-timeout's own (signal method)
    timer = threading.Timer(settings.timeout, _report_and_exit, (item, settings.timeout))
    timer.daemon = True
    item.stash[_TIMER] = timer
    timer.start()
    return True


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    timer = item.stash.get(_TIMER, None)
    if timer is None:
        return None
    timer.cancel()
    del item.stash[_TIMER]
    return True


def _report_and_exit(item: pytest.Item, seconds: float) -> None:
    try:
        os.write(item.config.stash[_STDERR], report(item.nodeid, seconds).encode(errors="replace"))
    finally:
        os._exit(1)


def report(nodeid: str, seconds: float) -> str:
    """What every other thread and every pending asyncio task is waiting on (from another thread)."""
    out = io.StringIO()
    rule = "+" * 16
    out.write(f"\n{rule} Timeout: {nodeid} still running after {seconds:g} s {rule}\n")
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident != threading.get_ident():
            out.write(f"~~~ thread {names.get(ident, ident)}\n")
            out.write("".join(traceback.format_stack(frame)))
    for task in _pending_tasks():
        out.write(f"~~~ {task!r}\n")
        chain = traceback.StackSummary.extract((f, f.f_lineno) for f in _await_chain(task.get_coro()))
        out.write("".join(chain.format()))
    out.write(f"{rule} Timeout: {nodeid} {rule}\n")
    return out.getvalue()


def _pending_tasks() -> list[asyncio.Task[Any]]:
    # asyncio.all_tasks() wants the loop's own thread: read the registry every loop shares
    # (_all_tasks up to Python 3.11, _scheduled_tasks since 3.12), copied in one step
    registry = getattr(asyncio.tasks, "_scheduled_tasks", None) or getattr(asyncio.tasks, "_all_tasks", ())
    for _ in range(3):
        try:
            return [task for task in list(registry) if not task.done()]
        except RuntimeError:  # the set changed during the copy
            continue
    return []


def _await_chain(awaited: Any) -> Iterator[FrameType]:
    """The frames of a coroutine and of what it awaits, down to the innermost (through async
    generators too: an async fixture's teardown awaits its generator's ``__anext__()``)."""
    while awaited is not None:
        if not hasattr(awaited, "cr_frame") and not hasattr(awaited, "ag_frame"):
            # an async generator's __anext__() object names its generator only to the collector
            found = [ref for ref in gc.get_referents(awaited) if inspect.isasyncgen(ref)]
            if not found:
                return
            awaited = found[0]
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is None:
            return
        yield frame
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
