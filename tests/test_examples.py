"""The examples run and print what their READMEs promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_greeter() -> None:
    out = _run("examples/greeter/main.py")
    assert "say_hello    -> Hello, Ada! (via inproc)" in out
    assert out.count("reply_stream -> Hello #") == 2
    assert "RpcError INVALID_ARGUMENT: name is required" in out


def test_greeter_on_every_transport() -> None:
    """What `bash scripts/demo.sh` shows: one implementation on gRPC, HTTP and embedded NATS."""
    out = _run("examples/greeter/main.py", "--all")
    for transport in ("grpc", "http", "nats"):
        assert f"say_hello    -> Hello, Ada! (via {transport})" in out
    assert out.count("reply_stream -> Hello #") == 6
    assert out.count("RpcError INVALID_ARGUMENT: name is required") == 3


@pytest.mark.parametrize("extra", [[], ["--all"]])
def test_route_guide(extra: list[str]) -> None:
    out = _run("examples/route_guide/main.py", *extra)
    assert "get_feature    -> 'Patriots Path, Mendham, NJ'" in out
    assert "list_features  -> 2 features" in out
    assert "record_route   -> 4 points" in out
    chats = 2 if extra else 1  # HTTP/1.1 has no bidi: grpc and nats run it
    assert out.count("route_chat     -> ['first', 'first', 'second']") == chats


def test_order_saga() -> None:
    out = _run("examples/order_saga/main.py")
    for order, status in (("o-1", "COMPLETED"), ("o-2", "COMPLETED")):
        assert f"/v1/orders/{order} -> {status}" in out
    assert "/v1/orders/o-3 -> CANCELLED (payment declined)" in out
    assert "/v1/orders/o-4 -> CANCELLED (out of stock: kite)" in out
    assert "payments   o-2: card network unavailable (attempt 1); JetStream will retry" in out
    assert "payments   o-2: charged 49.00 to bob (attempt 2)" in out
    assert "inventory  o-3: released 1 x book (compensation)" in out
    assert "stock left: book 3, lamp 0" in out
    assert "charged: o-1 35.00, o-2 49.00" in out


def test_demo_script_says_it_is_installing_before_pip_runs(tmp_path: Path) -> None:
    """`bash scripts/demo.sh` on a fresh clone: pip runs quietly for a minute, so a line first says
    what is happening; once installed, the demo starts at once and says nothing more."""
    import shutil
    import stat

    (tmp_path / "scripts").mkdir()
    for name in ("env.sh", "demo.sh"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    # stand-ins for the venv's python (pip) and the protobind command: they say when they run
    for name, line in (("python", "pip ran: $*"), ("protobind", "protobind ran: $*")):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{line}" >&2\n')
        (bin_dir / name).chmod(stat.S_IRWXU)
    first = subprocess.run(["bash", "scripts/demo.sh", "--name", "Bo"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    assert lines[0].startswith("demo.sh: installing protobind, every extra and the test tools into .venv")
    assert [line.split(":")[0] for line in lines[1:]] == ["pip ran", "pip ran", "demo.sh", "protobind ran"]
    assert lines[-1] == "protobind ran: demo --name Bo"
    again = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert again.stderr == "protobind ran: demo\n"
