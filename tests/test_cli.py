"""The protobind command line: breaking, and user mistakes reported in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROTOBIND = [sys.executable, "-m", "protobind_codegen.cli"]

OLD = """
syntax = "proto3";
package shop.v1;
service Shop {
  rpc Get(GetRequest) returns (Item);
  rpc List(GetRequest) returns (stream Item);
  rpc Gone(GetRequest) returns (Item);
}
message GetRequest { string id = 1; int32 limit = 2; string filter = 3; int64 dropped = 4; }
message Item { string id = 1; Kind kind = 2; }
enum Kind { KIND_UNSPECIFIED = 0; KIND_BOOK = 1; KIND_GAME = 2; }
message Old {}
"""

NEW = """
syntax = "proto3";
package shop.v1;
service Shop {
  rpc Get(GetRequest) returns (Item);
  rpc List(GetRequest) returns (Item);
  rpc Added(GetRequest) returns (Item);
}
message GetRequest { string id = 1; int64 limit = 2; string query = 3; reserved 4; string more = 5; }
message Item { string id = 1; Kind kind = 2; string added = 3; }
enum Kind { KIND_UNSPECIFIED = 0; KIND_BOOK = 1; }
"""


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROTOBIND, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_breaking_lists_each_break(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "shop.proto").write_text(OLD)
    (tmp_path / "new" / "shop.proto").write_text(NEW)
    result = _run("breaking", str(tmp_path / "old"), str(tmp_path / "new"))
    assert result.returncode == 1
    lines = set(result.stdout.splitlines())
    assert lines == {
        "method shop.v1.Shop/List: streaming kind changed",
        "method shop.v1.Shop/Gone was removed",
        "field shop.v1.GetRequest.limit (#2): type changed from int32 to int64",
        "field shop.v1.GetRequest.filter (#3) was renamed to query (breaks JSON clients)",
        "enum value shop.v1.Kind.KIND_GAME (= 2) was removed",
        "message shop.v1.Old was removed",
    }
    # additions only: compatible
    same = _run("breaking", str(tmp_path / "new"), str(tmp_path / "new"))
    assert same.returncode == 0 and "no breaking changes" in same.stdout


def test_user_mistakes_are_one_line(tmp_path: Path) -> None:
    for args in (
        ["breaking", str(tmp_path / "nope"), str(tmp_path / "nope")],
        ["serve", "nocolon", "--bind", "inproc://x"],
        ["serve", "tests.conformance:Conformance"],
        ["call", "inproc://x", "bad-method-name", "--proto", "x.proto"],
        ["call", "ftp://x", "a.B/C", "--proto", str(Path("examples/greeter/proto/greeter/v1/greeter.proto"))],
    ):
        result = _run(*args)
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
