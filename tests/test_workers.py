"""`protobind serve` with two worker processes (on uvloop): every transport spreads calls over
both, and SIGTERM stops them all, letting a call in flight finish."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest

import protobind
from protobind.conformance.v1.conformance_pb2 import Behavior, Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .support import ROOT

PROTOBIND = ["-m", "protobind"]
# Enough fresh connections (gRPC, HTTP) or calls (NATS) that both workers answer unless one
# takes none: the odds of all landing on one worker are 2 * 2**-40.
ATTEMPTS = 40


async def _pids(url: str) -> set[str]:
    seen: set[str] = set()
    fresh_connections = not url.startswith("nats")  # the kernel spreads connections, NATS calls
    channel = protobind.connect(url)
    try:
        for _ in range(ATTEMPTS):
            if fresh_connections:
                await channel.close()
                channel = protobind.connect(url)
            reply = await ConformanceServiceClient(channel).unary(Request(), timeout=10)
            pid, loop = reply.text.split()
            assert loop.startswith("uvloop")
            seen.add(pid)
            if len(seen) == 2:
                break
    finally:
        await channel.close()
    return seen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _serve(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *PROTOBIND,
        "serve",
        "tests.workers_service:PidConformance",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_two_workers_share_every_transport(tmp_path: Path, nats_server: str) -> None:
    config = tmp_path / "protobind.toml"
    config.write_text('[server]\nworkers = 2\ngrace = 5.0\nloop = "uvloop"\n')
    nats_url = f"{nats_server}?prefix=w{uuid.uuid4().hex[:8]}"
    binds = ["--bind", "grpc://127.0.0.1:0", "--bind", "http://127.0.0.1:0", "--bind", nats_url]
    process = await _serve("--config", str(config), *binds)
    try:
        assert process.stdout is not None
        lines = [(await asyncio.wait_for(process.stdout.readline(), 120)).decode() for _ in range(4)]
        assert all(line.startswith("serving ") for line in lines[:3]), lines
        urls = [line.split(" on ")[-1].strip() for line in lines[:3]]
        pids = lines[3].split("pids")[-1].split()
        assert lines[3].startswith("2 workers") and len(set(pids)) == 2, lines
        for url in urls:
            assert await _pids(url) == set(pids), url

        # a stream in flight when SIGTERM comes still gets every message (grace 5 s)
        async with protobind.connect(urls[0]) as channel:
            behavior = Behavior(stream_count=3, sleep_ms=500)
            stream = ConformanceServiceClient(channel).server_stream(Request(behavior=behavior), timeout=30)
            indexes = [(await anext(stream)).index]
            process.send_signal(signal.SIGTERM)
            indexes += [reply.index async for reply in stream]
        assert indexes == [0, 1, 2]
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err
        assert b"stopping" in out
        assert not any(_alive(int(pid)) for pid in pids)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("bad", ["0", "two"])
async def test_workers_must_be_a_positive_number(tmp_path: Path, bad: str) -> None:
    process = await _serve("--bind", "grpc://127.0.0.1:0", env={**os.environ, "PROTOBIND_WORKERS": bad})
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert b"server.workers must be a whole number" in err
    assert b"Traceback" not in err


async def test_a_worker_that_cannot_start_fails_the_command() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await _serve("--workers", "2", "--bind", f"http://127.0.0.1:{port}")
        _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err.decode()
    assert b"Traceback" not in err


async def test_a_dead_worker_stops_the_others() -> None:
    process = await _serve("--workers", "2", "--bind", "grpc://127.0.0.1:0")
    try:
        assert process.stdout is not None
        await asyncio.wait_for(process.stdout.readline(), 120)
        pids = [int(p) for p in (await process.stdout.readline()).decode().split("pids")[-1].split()]
        os.kill(pids[0], signal.SIGKILL)
        await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 1
        assert not _alive(pids[1])
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
