"""Typing proof: generated code and code that uses it pass mypy --strict; misuse is rejected."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protobind_codegen.generate import generate

from .conftest import ROOT

GOOD = """
from collections.abc import AsyncIterator

import protobind
from greeter.v1.greeter_pb2 import HelloReply, HelloRequest
from greeter.v1.greeter_protobind import GreeterClient, GreeterService


class Greeter(GreeterService):
    async def say_hello(self, request: HelloRequest, context: protobind.Context) -> HelloReply:
        return HelloReply(message=f"Hello, {request.name}")

    async def reply_stream(
        self, request: HelloRequest, context: protobind.Context
    ) -> AsyncIterator[HelloReply]:
        for i in range(request.count):
            yield HelloReply(message=str(i))


async def use(channel: protobind.Channel) -> list[str]:
    client = GreeterClient(channel)
    call = protobind.CallInfo()
    reply: HelloReply = await client.say_hello(
        HelloRequest(name="Ada"), timeout=1.0, metadata={"x-user": "ada"}, call=call
    )
    out = [reply.message]
    async for r in client.reply_stream(HelloRequest(name="Ada", count=2)):
        out.append(r.message)
    return out
"""

BAD_REQUEST = """
import protobind
from greeter.v1.greeter_pb2 import HelloReply
from greeter.v1.greeter_protobind import GreeterClient


async def use(channel: protobind.Channel) -> None:
    await GreeterClient(channel).say_hello(HelloReply(message="wrong type"))
"""

BAD_OVERRIDE = """
import protobind
from greeter.v1.greeter_pb2 import HelloRequest
from greeter.v1.greeter_protobind import GreeterService


class Greeter(GreeterService):
    async def say_hello(self, request: HelloRequest, context: protobind.Context) -> str:
        return "not a message"
"""


def _mypy(tmp_path: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(tmp_path / "gen"), str(ROOT / "runtime")]))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-version",
            "3.10",
            "--explicit-package-bases",
            "--config-file",
            os.devnull,
            *targets,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )


@pytest.fixture(scope="module")
def typing_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("typing")
    generate([str(ROOT / "examples" / "greeter" / "proto")], str(tmp / "gen"))
    return tmp


def test_generated_code_and_user_code_pass_strict(typing_dir: Path) -> None:
    (typing_dir / "good.py").write_text(textwrap.dedent(GOOD))
    result = _mypy(typing_dir, "gen/greeter/v1/greeter_protobind.py", "good.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_request_type_is_rejected(typing_dir: Path) -> None:
    (typing_dir / "bad_request.py").write_text(textwrap.dedent(BAD_REQUEST))
    result = _mypy(typing_dir, "bad_request.py")
    assert result.returncode == 1
    assert 'incompatible type "HelloReply"; expected "HelloRequest"' in result.stdout


def test_wrong_response_type_is_rejected(typing_dir: Path) -> None:
    (typing_dir / "bad_override.py").write_text(textwrap.dedent(BAD_OVERRIDE))
    result = _mypy(typing_dir, "bad_override.py")
    assert result.returncode == 1
    assert "[override]" in result.stdout and "say_hello" in result.stdout
