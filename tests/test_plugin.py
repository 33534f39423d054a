"""protobind's pytest plugin, used as a user would: pytest runs in a subprocess on a user's suite
(examples/greeter/tests, the README snippet, small suites written here) with no pytest
configuration of the user's own (pytest-asyncio in its default strict mode), unless a test says
otherwise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from protobind.testing import transport_names

from .support import ROOT

EXAMPLE = ROOT / "examples" / "greeter"
CONTRACT = EXAMPLE / "tests" / "test_contract.py"


@pytest.fixture(scope="module")
def greeter_path() -> str:
    """PYTHONPATH that makes the example's stubs and service importable (stubs generated first)."""
    code = "import sys, pathlib; sys.path.insert(0, 'examples'); import _support; "
    code += "_support.generate_stubs(pathlib.Path('examples/greeter'))"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    return os.pathsep.join([str(EXAMPLE / "gen"), str(EXAMPLE)])


def _pytest(tmp_path: Path, *args: str, pythonpath: str = "") -> tuple[int, str]:
    """Run pytest as a user would, from ``tmp_path`` with an empty configuration file. TMPDIR points
    into ``tmp_path`` so what the run leaves behind can be checked."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": pythonpath}
    config = ["-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *config, "-v", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def _outcomes(output: str, file: str = r"\w+\.py") -> dict[str, str]:
    """``test_name[param]`` -> ``PASSED`` / ``FAILED`` / ``SKIPPED`` / ``ERROR`` from ``-v`` output."""
    found = re.findall(rf"{file}::(\w+(?:\[[^\]]*\])?) (PASSED|FAILED|SKIPPED|ERROR)", output)
    return dict(found)


def test_example_suite_and_readme_snippet_run_once_per_transport(tmp_path: Path, greeter_path: str) -> None:
    """The example suite and the README's snippet, written to a file of its own, as they are."""
    (tmp_path / "test_readme.py").write_text(_readme_snippet())
    code, output = _pytest(tmp_path, str(EXAMPLE / "tests"), "test_readme.py", pythonpath=greeter_path)
    assert code == 0, output
    outcomes = _outcomes(output, "test_contract.py")
    names = transport_names()
    assert {"inproc", "grpc", "http", "nats", "memory"} <= set(names)
    for test in ("test_say_hello", "test_name_is_required", "test_reply_stream"):
        for name in names:
            assert outcomes.pop(f"{test}[{name}]") == "PASSED", output
    # the marker limits that test to grpc and nats
    assert outcomes == {
        "test_only_on_some_transports[grpc]": "PASSED",
        "test_only_on_some_transports[nats]": "PASSED",
    }
    assert _outcomes(output, "test_readme.py") == {
        f"{test}[{name}]": "PASSED" for test in ("test_say_hello", "test_name_is_required") for name in names
    }
    assert "mode=Mode.STRICT" in output  # nothing configured pytest-asyncio
    _assert_nats_server_stopped(tmp_path / "tmp")


def _assert_nats_server_stopped(tmpdir: Path) -> None:
    # the embedded nats-server works in a directory under TMPDIR that its stop() removes; a
    # server left running would still name that directory on its command line
    assert not list(tmpdir.glob("protobind-nats-*"))
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert str(tmpdir) not in cmdline.read_bytes().decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue


def test_auto_mode_and_ini_option(tmp_path: Path, greeter_path: str) -> None:
    """A user who configured pytest-asyncio's auto mode gets the same; the ini option picks
    transports."""
    code, output = _pytest(
        tmp_path,
        str(EXAMPLE / "tests"),
        "-o",
        "asyncio_mode=auto",
        "-o",
        "protobind_transports=inproc nats",
        pythonpath=greeter_path,
    )
    assert code == 0, output
    assert "mode=Mode.AUTO" in output
    assert _outcomes(output) == {
        "test_say_hello[inproc]": "PASSED",
        "test_say_hello[nats]": "PASSED",
        "test_name_is_required[inproc]": "PASSED",
        "test_name_is_required[nats]": "PASSED",
        "test_reply_stream[inproc]": "PASSED",
        "test_reply_stream[nats]": "PASSED",
        "test_only_on_some_transports[nats]": "PASSED",
    }


def _readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Contract tests") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_readme_snippet_is_the_example() -> None:
    assert _readme_snippet() in CONTRACT.read_text()


SUITE = """
import pytest
import protobind
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.testing.conformance.service import Conformance


@pytest.fixture
def protobind_services():
    return [Conformance()]


async def test_transport(protobind_channel, protobind_transport):
    reply = await ConformanceServiceClient(protobind_channel).unary(Request(text="hi"), timeout=5)
    assert reply.transport == protobind_transport
    assert reply.transport != "grpc"   # fails on grpc only
"""


def test_a_failure_fails_that_run_only(tmp_path: Path) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "test_no_services.py").write_text(
        SUITE.replace("def protobind_services", "def other_name").replace("test_transport", "test_other")
    )
    code, output = _pytest(tmp_path, ".", "--protobind-transports=inproc,grpc,memory")
    assert code == 1, output
    assert _outcomes(output) == {
        "test_transport[inproc]": "PASSED",
        "test_transport[grpc]": "FAILED",
        "test_transport[memory]": "PASSED",
        "test_other[inproc]": "ERROR",
        "test_other[grpc]": "ERROR",
        "test_other[memory]": "ERROR",
    }
    assert "define a fixture named protobind_services" in output


@pytest.mark.parametrize(
    ("args", "marker", "message"),
    [
        (["--protobind-transports=inproc,pigeon"], "", "--protobind-transports: unknown transport(s) pigeon"),
        ([], '@pytest.mark.protobind(transports=["smoke"])', "unknown transport(s) smoke"),
        (["-p", "no:asyncio"], "", "need the pytest-asyncio plugin"),
        ([], '@pytest.mark.asyncio(loop_scope="module")', "remove loop_scope='module'"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], marker: str, message: str) -> None:
    suite = SUITE.replace("async def test_transport", f"{marker}\nasync def test_transport")
    (tmp_path / "test_suite.py").write_text(suite)
    code, output = _pytest(tmp_path, "test_suite.py", *args)
    assert code in (1, 2, 4), output  # usage error or collection error: nothing ran
    assert message in output
    assert not _outcomes(output)


def test_marker_and_option_without_common_transport_skip_with_reason(tmp_path: Path) -> None:
    marker = '@pytest.mark.protobind(transports=["nats"])'
    suite = SUITE.replace("async def test_transport", f"{marker}\nasync def test_transport")
    (tmp_path / "test_suite.py").write_text(suite)
    code, output = _pytest(tmp_path, "test_suite.py", "--protobind-transports=inproc", "-rs")
    assert code == 0, output
    assert _outcomes(output) == {"test_transport[no-transport]": "SKIPPED"}
    assert "exclude each other" in output


def test_server_path_of_protobind_toml_is_importable(tmp_path: Path) -> None:
    """The generated package in gen/ imports in conftest.py and the tests with no pytest
    configuration and no PYTHONPATH, because protobind.toml says `path = ["gen"]`, as for serve."""
    from protobind_codegen.generate import generate
    from protobind_codegen.protoc import DEMO_PROTO

    generate([str(DEMO_PROTO)], str(tmp_path / "gen"))
    (tmp_path / "protobind.toml").write_text('[server]\npath = ["gen", "src"]\n')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text(
        "import protobind\n"
        "from greeter.v1.greeter_pb2 import HelloReply\n"
        "from greeter.v1.greeter_protobind import GreeterService\n\n\n"
        "class Greeter(GreeterService):\n"
        "    async def say_hello(self, request, context):\n"
        "        return HelloReply(message=f'Hello, {request.name}!')\n"
    )
    (tmp_path / "conftest.py").write_text(
        "import pytest\nfrom app import Greeter\n\n\n"
        "@pytest.fixture\ndef protobind_services():\n    return [Greeter()]\n"
    )
    (tmp_path / "test_app.py").write_text(
        "from greeter.v1.greeter_pb2 import HelloRequest\n"
        "from greeter.v1.greeter_protobind import GreeterClient\n\n\n"
        "async def test_hello(protobind_channel):\n"
        "    reply = await GreeterClient(protobind_channel).say_hello(HelloRequest(name='Ada'))\n"
        "    assert reply.message == 'Hello, Ada!'\n"
    )
    code, output = _pytest(tmp_path, "test_app.py", "--protobind-transports=inproc,grpc")
    assert code == 0, output
    assert _outcomes(output) == {"test_hello[inproc]": "PASSED", "test_hello[grpc]": "PASSED"}
    # a mistake in the file stops the run with the file's error
    (tmp_path / "protobind.toml").write_text('[server]\npaht = ["gen"]\n')
    code, output = _pytest(tmp_path, "test_app.py")
    assert code == 4, output
    assert "unknown key server.paht (did you mean server.path?)" in output
