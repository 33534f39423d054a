"""Typing proof over a contract with every construct (tests/protos/edge): the generated stubs and
modules and a user module that builds and reads messages, uses oneofs, maps and enums, and
implements and calls services pass mypy --strict and pyright --strict; misuse is rejected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protobind_codegen.generate import generate

from .support import ROOT

EDGE = ROOT / "tests" / "protos" / "edge"
PYRIGHT = Path(sys.executable).parent / "pyright"

# name -> (code, the error mypy must report, the rule pyright must report)
MISUSE = {
    "wrong_request": (  # a reply type where the request type belongs
        """
        async def use(channel: protobind.Channel) -> None:
            await ShopClient(channel).get_item(Money())
        """,
        "arg-type",
        "reportArgumentType",
    ),
    "wrong_override": (  # an override that answers with the wrong type
        """
        class Impl(ShopService):
            async def get_item(self, request: Item, context: protobind.Context) -> Money:
                return Money()
        """,
        "override",
        "reportIncompatibleMethodOverride",
    ),
    "oneway_reply": (  # a one-way method has no reply to use
        """
        async def use(channel: protobind.Channel) -> Empty:
            return await ShopClient(channel).notify(Item())
        """,
        "return-value",
        "reportReturnType",
    ),
    "blocking_wrong_request": (  # the blocking client checks its request types too
        """
        def use(channel: protobind.SyncChannel) -> None:
            ShopSyncClient(channel).tally([Item()])
        """,
        "list-item",
        "reportArgumentType",
    ),
    "blocking_oneway_reply": (
        """
        def use(channel: protobind.SyncChannel) -> Empty:
            return ShopSyncClient(channel).notify(Item())
        """,
        "func-returns-value",
        "reportReturnType",
    ),
    "client_on_the_wrong_channel": (  # an async client does not take a SyncChannel
        """
        def use(channel: protobind.SyncChannel) -> None:
            ShopClient(channel)
        """,
        "arg-type",
        "reportArgumentType",
    ),
    "async_client_from_client_sync": (  # client_sync() builds blocking clients only
        """
        def use() -> None:
            with protobind.client_sync(ShopClient):
                pass
        """,
        "type-var",
        "reportArgumentType",
    ),
    "bad_oneof": (  # WhichOneof takes only the names of the message's oneofs
        """
        def use(item: Item) -> object:
            return item.WhichOneof("discont")
        """,
        "call-overload",
        "reportCallIssue",
    ),
    "bad_map_value": (  # a map of messages holds messages
        """
        def use(item: Item) -> None:
            item.prices["eur"] = 3
        """,
        "assignment",
        "reportArgumentType",
    ),
}
HEADER = """
import protobind
from common.v1.money_pb2 import Money
from google.protobuf.empty_pb2 import Empty
from shop.v1.shop_protobind import ShopClient, ShopService, ShopSyncClient
from shop.v1.types_pb2 import Item
"""


@pytest.fixture(scope="module")
def typing_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("typing")
    generate([str(EDGE)], str(tmp / "gen"), [str(EDGE)])
    (tmp / "user.py").write_text((ROOT / "tests" / "typing_user.py").read_text())
    for name, (body, _, _) in MISUSE.items():
        (tmp / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
    config = {
        "typeCheckingMode": "strict",
        "pythonVersion": "3.10",
        "extraPaths": ["gen", str(ROOT / "runtime")],
    }
    (tmp / "pyrightconfig.json").write_text(json.dumps(config))
    return tmp


def _generated(typing_dir: Path) -> list[str]:
    files = (typing_dir / "gen").rglob("*")
    return sorted(
        str(f.relative_to(typing_dir)) for f in files if f.name.endswith(("_pb2.pyi", "_protobind.py"))
    )


def _mypy(typing_dir: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(typing_dir / "gen"), str(ROOT / "runtime")]))
    args = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-version", "3.10"]
    args += ["--explicit-package-bases", "--config-file", os.devnull, *targets]
    return subprocess.run(args, capture_output=True, text=True, cwd=typing_dir, env=env)


def _pyright(typing_dir: Path, *targets: str) -> list[dict[str, object]]:
    env = dict(os.environ, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")
    args = [str(PYRIGHT), "--pythonpath", sys.executable, "--outputjson", *targets]
    result = subprocess.run(args, capture_output=True, text=True, cwd=typing_dir, env=env)
    diagnostics: list[dict[str, object]] = json.loads(result.stdout)["generalDiagnostics"]
    return [d for d in diagnostics if d["severity"] == "error"]


def test_the_corpus_has_every_construct() -> None:
    types = (EDGE / "shop" / "v1" / "types.proto").read_text()
    constructs = [
        "map<string, int64>",
        "map<string, common.v1.Money>",
        "oneof",
        "optional",
        "message Variant",
    ]
    constructs += ["google.protobuf.Timestamp", "google.protobuf.Any", "string from", "enum Size", "bytes"]
    assert [c for c in constructs if c not in types] == []
    shop = (EDGE / "shop" / "v1" / "shop.proto").read_text()
    assert "(protobind.v1.oneway) = true" in shop and "(protobind.v1.durable) = true" in shop
    assert "stream Item" in shop


def test_generated_code_and_user_code_pass_mypy_strict(typing_dir: Path) -> None:
    result = _mypy(typing_dir, *_generated(typing_dir), "user.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in" in result.stdout


def test_generated_code_and_user_code_pass_pyright_strict(typing_dir: Path) -> None:
    errors = _pyright(typing_dir, *_generated(typing_dir), "user.py")
    assert not errors, "pyright --strict reported:\n" + _diagnostics_text(errors)


def _diagnostics_text(errors: list[dict[str, object]]) -> str:
    """Every diagnostic whole, one per line, as pyright prints them (pytest would cut a list repr)."""
    lines = []
    for d in errors:
        start = d.get("range", {}).get("start", {})  # type: ignore[union-attr]
        where = f"{d['file']}:{start.get('line', 0) + 1}:{start.get('character', 0) + 1}"
        lines.append(f"{where}: {d['message']} ({d.get('rule', '-')})")
    return "\n".join(lines)


# Tools whose output these tests assert on; a new release of any of them can turn a green suite red.
PINNED_TOOLS = (
    "types-protobuf",
    "googleapis-common-protos-stubs",
    "grpc-stubs",
    "pyright",
    "mypy",
    "mypy-protobuf",
    "ruff",
)


def test_every_tool_whose_output_a_test_reads_is_pinned_and_installed_at_its_pin() -> None:
    import importlib.metadata
    import re

    text = (ROOT / "pyproject.toml").read_text()
    for tool in PINNED_TOOLS:
        found = re.search(rf'"{re.escape(tool)}(?:\[[a-z]+\])?==([^";]+)"', text)
        assert found, f"{tool} is not pinned with == in pyproject.toml"
        assert importlib.metadata.version(tool) == found.group(1), (tool, "installed != pinned")


def test_misuse_is_rejected_by_mypy_and_pyright(typing_dir: Path) -> None:
    files = [f"{name}.py" for name in MISUSE]
    mypy = _mypy(typing_dir, *files).stdout
    pyright = {(Path(str(d["file"])).stem, d.get("rule")) for d in _pyright(typing_dir, *files)}
    for name, (_, code, rule) in MISUSE.items():
        assert any(line.startswith(f"{name}.py:") and f"[{code}]" in line for line in mypy.splitlines()), mypy
        assert (name, rule) in pyright, (name, sorted(pyright))
