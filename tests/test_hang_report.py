"""The suite's safety net against a hang (pyproject.toml: pytest-timeout, tests/hang_report.py): a
test whose teardown waits forever on an idle event loop, run on a pytest-xdist worker, fails with
a report naming what it waited on, and the run goes on with the next test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .support import ROOT

STUCK = """
import asyncio

import pytest


async def never_answered() -> None:
    await asyncio.get_running_loop().create_future()


@pytest.fixture
async def stuck():
    yield
    await never_answered()


async def test_teardown_waits_forever(stuck) -> None:
    pass


def test_after() -> None:
    pass
"""

INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 3
timeout_method = thread
"""


def test_a_hung_teardown_on_a_worker_fails_with_the_await_chain_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "test_stuck.py").write_text(STUCK)
    (tmp_path / "pytest.ini").write_text(INI)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-p", "tests.hang_report", "-p", "no:cacheprovider"]
    command += ["-n", "1", "-q", "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path)]
    run = subprocess.run(
        [*command, "test_stuck.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "Timeout: test_stuck.py::test_teardown_waits_forever still running after 3 s" in out, out
    # the await chain of the fixture's teardown, down to the future nobody answers
    assert "in stuck" in out and "in never_answered" in out, out
    assert "crashed while running 'test_stuck.py::test_teardown_waits_forever'" in out, out
    assert "1 failed, 2 passed" in out, out  # the test's call, and the test after it
