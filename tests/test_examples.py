"""The examples run and print what their READMEs promise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("extra", [[]])
def test_greeter(extra: list[str]) -> None:
    out = _run("examples/greeter/main.py", *extra)
    assert "say_hello    -> Hello, Ada! (via inproc)" in out
    assert out.count("reply_stream -> Hello #") == 2
    assert "RpcError INVALID_ARGUMENT: name is required" in out


@pytest.mark.parametrize("extra", [[]])
def test_route_guide(extra: list[str]) -> None:
    out = _run("examples/route_guide/main.py", *extra)
    assert "get_feature    -> 'Patriots Path, Mendham, NJ'" in out
    assert "list_features  -> 2 features" in out
    assert "record_route   -> 4 points" in out
    assert "route_chat     -> ['first', 'first', 'second']" in out
