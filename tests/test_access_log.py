"""The access log (protobind._access_log): one line per call on every transport, off for a Server
built in code unless asked, on for `protobind serve` unless turned off on the command line or in
protobind.toml."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request
from protobind.conformance.v1.conformance_protobind import (
    ConformanceServiceClient,
)

from .conformance import SERVICE as CONFORMANCE
from .conformance import Conformance
from .processes import serve_one_call


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "protobind.access"]


async def test_one_line_per_call_on_every_transport(
    transport: str, harnesses: dict[str, Callable[[], str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="protobind.access")
    server = protobind.Server([Conformance()], access_log=True)
    (url,) = await server.start(harnesses[transport]())
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            await client.unary(Request(text="a"), timeout=10)
            with pytest.raises(RpcError):
                await client.unary(Request(behavior=Behavior(error_code=int(Code.NOT_FOUND))), timeout=10)
            with pytest.raises(RpcError):
                await client.unary(Request(behavior=Behavior(raise_exception=True)), timeout=10)
            replies = [r async for r in client.server_stream(Request(behavior=Behavior(stream_count=2)))]
            assert len(replies) == 2
    finally:
        await server.stop(grace=1.0)
    records = _access(caplog)
    assert [(r.__dict__["rpc_method"], r.__dict__["rpc_code"]) for r in records] == [
        (f"{CONFORMANCE}/Unary", "OK"),
        (f"{CONFORMANCE}/Unary", "NOT_FOUND"),
        (f"{CONFORMANCE}/Unary", "INTERNAL"),
        (f"{CONFORMANCE}/ServerStream", "OK"),
    ]
    for record in records:
        assert record.levelno == logging.INFO and record.__dict__["rpc_transport"] == transport
        assert record.__dict__["duration_ms"] >= 0
        # transport, method, code, duration, peer: in that order on the line
        fields = record.getMessage().split(" ")
        assert fields[:3] == [transport, record.__dict__["rpc_method"], record.__dict__["rpc_code"]]
        assert re.fullmatch(r"\d+\.\d\dms", fields[3]) and fields[4] == record.__dict__["peer"]
        if transport in ("grpc", "http"):
            assert "127.0.0.1" in record.__dict__["peer"]


async def test_off_for_a_server_built_in_code(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        protobind.testing.serving([Conformance()]) as url,
        protobind.connect(url) as channel,
    ):
        await ConformanceServiceClient(channel).unary(Request(text="a"))
    assert _access(caplog) == []


ACCESS_LINE = re.compile(
    rf" INFO protobind\.access: grpc {CONFORMANCE}/Unary OK \d+\.\d\dms ipv4:127\.0\.0\.1:\d+$", re.MULTILINE
)


def test_protobind_serve_logs_each_call_unless_turned_off(tmp_path: Path) -> None:
    _, err = serve_one_call(tmp_path)
    assert len(ACCESS_LINE.findall(err)) == 1, err
    for args, toml in [
        (["--no-access-log"], ""),
        ([], "[server]\naccess_log = false\n"),
        (["--log-level", "warning"], ""),
        ([], '[server]\nlog_level = "error"\n'),
    ]:
        _, err = serve_one_call(tmp_path, *args, toml=toml)
        assert "protobind.access" not in err, (args, toml, err)
    # the command line wins over the file
    _, err = serve_one_call(tmp_path, "--access-log", toml="[server]\naccess_log = false\n")
    assert len(ACCESS_LINE.findall(err)) == 1, err
