"""tests/slow_tests.txt names tests that exist: a renamed test must not silently leave the slow set."""

from __future__ import annotations

import ast

from .conftest import SLOW_TESTS
from .support import ROOT


def test_every_listed_slow_test_exists() -> None:
    missing = []
    for name in sorted(SLOW_TESTS):
        path, _, function = name.partition("::")
        tree = ast.parse((ROOT / path).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        if function not in defined:
            missing.append(name)
    assert missing == []
