"""Child processes a test starts and must leave behind in no state at all: ``reap`` for those
started with asyncio, ``PROTOBIND`` (the command line) and ``serve_one_call`` for `protobind serve`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import protobind
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceSyncClient

from .support import ROOT, free_port

#: The protobind command line, run by this interpreter.
PROTOBIND = [sys.executable, "-m", "protobind"]


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` if it still runs and read its pipes to the end.

    A test that stops waiting for a child (a timeout, a failed assertion) must not leave it
    running: its pipe transports would be collected later, in whatever test is running then, as
    "unclosed transport" and "subprocess is still running" warnings that fail that test.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    # communicate() waits for the exit and for every pipe's end of file, so the transports close
    await process.communicate()


def serve_one_call(tmp_path: Path, *args: str, toml: str = "") -> tuple[str, str]:
    """`protobind serve` the conformance service on gRPC (with ``args`` and, if given, a
    protobind.toml), make one call, stop it; its stdout and stderr."""
    config = tmp_path / "protobind.toml"
    config.write_text(toml)
    url = f"grpc://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [*PROTOBIND, "serve", "tests.conformance:Conformance", "--bind", url, "--config", str(config), *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("serving"), server.communicate(timeout=20)
        with protobind.connect_sync(url) as channel:
            assert ConformanceServiceSyncClient(channel).unary(Request(text="a"), timeout=10).text == "a"
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    return line + out, err
