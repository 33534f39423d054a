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
    result = _run("breaking", str(tmp_path / "old"), str(tmp_path / "new"), cwd=tmp_path)
    assert result.returncode == 1
    assert [line.split(": ")[0:2] for line in result.stdout.splitlines()] == [
        ["new/shop.proto:4:1", "RPC_NO_DELETE"],
        ["new/shop.proto:6:3", "RPC_SAME_SERVER_STREAMING"],
        ["new/shop.proto:9:1", "FIELD_NO_DELETE_UNLESS_NAME_RESERVED"],
        ["new/shop.proto:9:37", "FIELD_WIRE_JSON_COMPATIBLE_TYPE"],
        ["new/shop.proto:9:54", "FIELD_SAME_JSON_NAME"],
        ["new/shop.proto:9:54", "FIELD_SAME_NAME"],
        ["new/shop.proto:11:1", "ENUM_VALUE_NO_DELETE_UNLESS_NAME_RESERVED"],
        ["new/shop.proto:11:1", "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED"],
    ]
    assert "RPC shop.v1.Shop/List changed from server streaming to unary" in result.stdout
    assert result.stderr == "8 breaking change(s) at level WIRE_JSON\n"
    # the unused message Old is generated code only: FILE level reports it
    strict = _run("breaking", str(tmp_path / "old"), str(tmp_path / "new"), "--level", "FILE", cwd=tmp_path)
    assert "new/shop.proto:3:1: MESSAGE_NO_DELETE: message shop.v1.Old was deleted" in strict.stdout
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


def test_serve_and_call_over_each_network_transport(tmp_path: Path) -> None:
    """`protobind serve` in one process, `protobind call` from another, JSON in and out."""
    import json
    import os
    import signal
    import socket

    from .conftest import ROOT

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proto = ["--proto", "idl/protobind/conformance/v1/conformance.proto", "-I", "idl"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [*PROTOBIND, "serve", "tests.conformance:Conformance", "--bind", f"grpc://127.0.0.1:{port}",
         "--bind", "http://127.0.0.1:0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        urls = [server.stdout.readline().split(" on ")[-1].strip() for _ in range(2)]
        assert urls[0] == f"grpc://127.0.0.1:{port}" and urls[1].startswith("http://127.0.0.1:")
        method = "protobind.conformance.v1.ConformanceService/Unary"
        for url in urls:
            ok = _run(
                "call", url, method, '{"text": "hi", "number": "7"}', "-H", "x-user:ada", *proto, cwd=ROOT
            )
            assert ok.returncode == 0, ok.stderr
            reply = json.loads(ok.stdout)
            assert reply["text"] == "hi" and reply["number"] == "7" and reply["metadata"] == {"x-user": "ada"}
            bad = _run(
                "call",
                url,
                method,
                '{"behavior": {"errorCode": 5, "errorMessage": "gone"}}',
                *proto,
                cwd=ROOT,
            )
            assert bad.returncode == 1 and bad.stderr.startswith("error: NOT_FOUND: gone")
        stream = _run("call", urls[0], "protobind.conformance.v1.ConformanceService/ServerStream",
                      '{"behavior": {"streamCount": 3}}', *proto, cwd=ROOT)  # fmt: skip
        assert [json.loads(line).get("index", 0) for line in stream.stdout.splitlines()] == [0, 1, 2]
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    assert "stopping" in out
