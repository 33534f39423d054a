"""The transport interface and its registry: entry points, third-party transports, frozen endpoints."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import protobind
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.transport import Transport, all_transports, register, transport_for_url, transport_named

from .conformance import Conformance
from .servers import TRANSPORTS
from .support import ROOT


def test_builtin_transports_come_from_entry_points() -> None:
    from importlib import metadata

    names = {entry.name for entry in metadata.entry_points(group="protobind.transports")}
    assert {"inproc", "grpc", "http", "nats"} <= names
    assert [t.name for t in all_transports()][:4] == ["inproc", "grpc", "http", "nats"]
    assert transport_for_url("grpcs://h:1").name == "grpc"
    assert transport_for_url("tls://h:1").name == "nats"
    assert transport_named("http").schemes == ("http", "https")
    with pytest.raises(ValueError, match="unsupported URL"):
        transport_for_url("carrier-pigeon://h")


def test_the_test_suite_takes_its_transports_from_the_registry() -> None:
    assert [t.name for t in all_transports()] == TRANSPORTS
    assert list(protobind.testing.TRANSPORTS) == TRANSPORTS


async def test_a_third_party_transport_plugs_in_without_touching_protobind() -> None:
    inproc = transport_named("inproc")

    def renamed(url: str) -> str:
        return url.replace("loop://", "inproc://", 1)

    async def serve(endpoints, url, options):  # type: ignore[no-untyped-def]
        return await inproc.serve(endpoints, renamed(url), options)

    async def dial(url, options):  # type: ignore[no-untyped-def]
        return await inproc.dial(renamed(url), options)

    @contextlib.asynccontextmanager
    async def harness() -> AsyncIterator[Callable[[], str]]:
        yield lambda: "loop://third-party"

    register(
        Transport(name="loop", schemes=("loop",), extra="", serve=serve, dial=dial, test_harness=harness)
    )
    async with (
        protobind.testing.serving([Conformance()], "loop"),
        protobind.connect("loop://third-party") as channel,
    ):
        reply = await ConformanceServiceClient(channel).unary(Request(text="plug-in"))
    assert reply.text == "plug-in"


async def test_registering_a_service_after_start_is_an_error(
    transport: str, harnesses: dict[str, Callable[[], str]]
) -> None:
    server = protobind.Server([])
    await server.start(harnesses[transport]())
    try:
        with pytest.raises(RuntimeError, match="before start"):
            server.add_service(Conformance())
    finally:
        await server.stop(0)


def test_options_are_checked_per_side() -> None:
    with pytest.raises(ValueError, match="unknown grpc client option"):
        protobind.connect("grpc://127.0.0.1:1?reflection=false")
    with pytest.raises(ValueError, match="unknown nats client option"):
        protobind.connect("nats://127.0.0.1:1?queue_group=x")


def test_mypy_checks_a_transport_against_the_interface(tmp_path: Path) -> None:
    bad = tmp_path / "bad_transport.py"
    bad.write_text(
        textwrap.dedent(
            """
            from protobind.transport import Transport, loopback_harness

            async def serve(url: str) -> None: ...
            async def dial(url: str, options: dict[str, object]) -> int: ...

            T = Transport(name="x", schemes=("x",), extra="", serve=serve, dial=dial,
                          test_harness=loopback_harness("x"))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"MYPYPATH": str(ROOT / "runtime"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1, result.stdout
    assert 'Argument "serve" to "Transport"' in result.stdout
    assert 'Argument "dial" to "Transport"' in result.stdout


def _option_rows(text: str) -> list[tuple[list[str], str]]:
    """(option names, side) of each row of the `| option | side | ...` tables in ``text``."""
    rows = []
    for table in text.split("| option | side |")[1:]:
        for line in table.split("\n\n", 1)[0].splitlines()[2:]:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append((re.findall(r"`([a-z_][a-z0-9_]*)`", cells[0]), cells[1]))
    return rows


@pytest.mark.parametrize("name", ["grpc", "http", "nats"])
def test_documented_options_are_the_accepted_ones(name: str) -> None:
    """Each transport's options table in docs/protocols.md (NATS's durable options: docs/messaging.md)
    lists only names the transport accepts, on the sides it says, and every name it accepts."""
    protocols = (ROOT / "docs" / "protocols.md").read_text()
    heading = {"grpc": "## gRPC", "http": "## HTTP", "nats": "## NATS"}[name]
    rows = _option_rows(protocols.split(heading, 1)[1].split("\n## ", 1)[0])
    if name == "nats":
        rows += _option_rows((ROOT / "docs" / "messaging.md").read_text().split("### Options", 1)[1])
    transport = transport_named(name)
    documented: set[str] = set()
    for names, side in rows:
        documented |= set(names)
        for option in names:
            if "server" in side or side == "both":
                assert option in transport.server_options, f"{name} servers refuse documented {option}"
            if "client" in side or side == "both":
                assert option in transport.client_options, f"{name} clients refuse documented {option}"
    undocumented = (transport.server_options | transport.client_options) - documented
    assert not undocumented, f"{name} options missing from the docs"
