"""The benchmark harness (benchmarks/run.py, table.py) itself: what a failing pair does to a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import run

    return run


def test_a_failing_pair_is_recorded_and_the_run_goes_on(
    bench: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from benchmarks import table

    measured: list[str] = []

    def measure(kind: str, args: Any, payload: int, nats_url: str | None) -> dict[str, float]:
        measured.append(kind)
        if kind == "grpc-aio":
            raise RuntimeError("server grpc-aio did not start: ''")
        return {"calls_per_s": 1000.0, "p50_us": 10.0, "p99_us": 20.0, "calls": 10.0}

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    out = tmp_path / "results.json"
    argv = ["run", "--only", "grpc,inproc", "--rounds", "1", "--payloads", "100,200", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()

    results = json.loads(out.read_text())
    entries = {(e["pair"], e["payload"]): e for e in results["pairs"]}
    assert set(entries) == {("grpc", 100), ("grpc", 200), ("inproc", 100), ("inproc", 200)}
    assert entries["grpc", 100]["error"] == "RuntimeError: server grpc-aio did not start: ''"
    assert entries["inproc", 200]["peers"]["protobind-inproc"]["calls_per_s"]["median"] == 1000.0
    # the pairs after the failing one ran, at both sizes
    assert measured.count("protobind-inproc") == 2
    rendered = table.render(results)
    assert "| grpc | 100 B | failed: RuntimeError: server grpc-aio did not start: '' |" in rendered
