"""The conformance matrix (python -m protobind.testing.conformance): every case against every
transport and client pairing passes, the unsupported cells are the documented ones, and the runner
reports a failure when a pairing misbehaves. (protobind's own client and server, with pytest's
fixtures, on every transport: test_behaviour.py.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protobind._context import Context
from protobind.conformance.v1.conformance_pb2 import Request, Response
from protobind.testing import transport_names
from protobind.testing.conformance import __main__ as runner
from protobind.testing.conformance._cases import CASES, UNSUPPORTED, Case, Env, Unsupported
from protobind.testing.conformance._matrix import (
    COLUMNS_BY_SERVER,
    Column,
    Verdict,
    format_matrix,
    run_matrix,
)
from protobind.testing.conformance.service import Conformance

from .support import ROOT

#: What docs/protocols.md says about each unsupported (case, transport) reason.
DOCUMENTED = {
    "http": "a bidi method answers `unimplemented`",
    "inproc": "there is no message size limit",
    "kafka": "method the server lacks reaches nobody",
}


def test_every_case_passes_on_every_pairing(tmp_path: Path) -> None:
    out = tmp_path / "matrix.json"
    result = subprocess.run(
        [sys.executable, "-m", "protobind.testing.conformance", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,  # bounded; it takes about 20 s here
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("case "), result.stdout
    assert " 0 failed," in result.stdout
    matrix = json.loads(out.read_text())
    names = {c["name"] for c in matrix["columns"]}
    expected = {
        *transport_names(),
        "http+json",
        "nats+json",
        "mqtt+json",
        "grpc@grpcio",
        "grpcio",
        "grpcio@http",
        "http@h2",
        "grpc-web",
        "grpc-web@h2",
        "nats-py",
        "nats-py+json",
        "zmqtt",
        "zmqtt+json",
    }
    if importlib.util.find_spec("connectrpc") is not None:
        expected |= {"connectrpc", "connectrpc+json"}
    plain_broker_clients = {"nats-py", "nats-py+json", "zmqtt", "zmqtt+json"}
    if "amqp" in transport_names():
        expected |= {"amqp+json", "aio-pika", "aio-pika+json"}
        plain_broker_clients |= {"aio-pika", "aio-pika+json"}
    if "kafka" in transport_names():
        expected |= {"kafka+json", "aiokafka"}
        plain_broker_clients |= {"aiokafka"}
    assert names == expected
    transports = {c["name"]: c["transport"] for c in matrix["columns"]}
    cells = matrix["cells"]
    assert len(cells) == len(names) * len(CASES)
    failed = [c for c in cells if c["verdict"] == "fail"]
    assert not failed, failed
    unsupported = {(c["case"], transports[c["column"]]) for c in cells if c["verdict"] == "unsupported"}
    assert unsupported == set(UNSUPPORTED), unsupported
    # n/a only where a plain broker client (nats-py, zmqtt, aio-pika, aiokafka) cannot express the case
    # (no streams, nats-py's and aiokafka's own size checks), and where httpx over HTTP/2
    # (grpc-web@h2) cannot: no full duplex, no RST_STREAM when it stops reading
    not_applicable = {c["column"] for c in cells if c["verdict"] == "not_applicable"}
    assert not_applicable == plain_broker_clients | {"grpc-web@h2"}
    grpc_web_h2 = {
        c["case"] for c in cells if c["column"] == "grpc-web@h2" and c["verdict"] == "not_applicable"
    }
    assert grpc_web_h2 == {"stream.bidi", "stream.bidi_error", "cancel.unary", "cancel.stream"}
    applicable = [c for c in cells if c["verdict"] != "not_applicable"]
    assert sum(c["verdict"] == "pass" for c in applicable) > 0.9 * len(applicable)


# aiohttp (protobind's HTTP/1.1 client) warns about the near-limit request body of limits.near; the
# matrix's own runner, a process of its own, does not turn warnings into errors as pytest does here
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_http_binding_on_hypercorn_and_granian() -> None:
    """The columns of the other ASGI servers (--asgi-servers): every case passes but the documented
    refusals. The hypercorn columns are left out: hypercorn 0.18 ends a whole HTTP/2 connection
    when DATA arrives for a stream whose response it completed, so a call that follows an
    early-answered or cancelled one on the same connection can fail (grpcio@hypercorn: one cell in
    5 of 7 runs; http@hypercorn: `stream.bidi` in a clean-clone CI run; docs/protocols.md, "ASGI
    servers"). tests/test_http_servers.py still runs hypercorn in every test that applies."""
    selected = [c for c in COLUMNS_BY_SERVER if not c.name.endswith("@hypercorn")]
    assert {c.name for c in selected} == {"http@granian", "grpc-web@granian"}
    cells = await run_matrix(CASES, selected)
    failed = [c for c in cells if c.verdict is Verdict.FAIL]
    assert not failed, failed
    unsupported = {(c.case, c.column) for c in cells if c.verdict is Verdict.UNSUPPORTED}
    # gRPC-Web bidi over HTTP/1.1 is refused as on uvicorn; everything else is served
    assert unsupported == {("stream.bidi", "grpc-web@granian"), ("stream.bidi_error", "grpc-web@granian")}


def test_unsupported_cells_are_documented() -> None:
    docs = (ROOT / "docs" / "protocols.md").read_text()
    for (_, transport), unsupported in UNSUPPORTED.items():
        assert "docs/protocols.md" in unsupported.reason
        assert DOCUMENTED[transport] in docs


class DropsTrailers(Conformance):
    """A service whose unary handler forgets the headers and trailers the conformance case asks
    for, and whose server stream stops short."""

    async def unary(self, request: Request, context: Context) -> Response:
        return Response(
            text=request.text,
            payload=request.payload,
            number=request.number,
            transport=context.transport,
            method=context.method,
        )

    async def server_stream(self, request: Request, context: Context) -> AsyncIterator[Response]:
        async for response in super().server_stream(request, context):
            yield response
            return  # stops after one response


INPROC = Column("inproc", "inproc", "protobind", summary="protobind client -> protobind inproc server")


async def test_a_misbehaving_server_fails_its_cells() -> None:
    cases = [c for c in CASES if c.name in ("metadata.headers_trailers", "stream.server", "unary.echo")]
    cells = await run_matrix(cases, [INPROC], service_factory=DropsTrailers)
    verdicts = {c.case: (c.verdict, c.reason) for c in cells}
    assert verdicts["unary.echo"] == (Verdict.PASS, "")
    assert verdicts["metadata.headers_trailers"][0] is Verdict.FAIL
    assert verdicts["metadata.headers_trailers"][1].startswith("headers Metadata([])")
    assert verdicts["stream.server"][0] is Verdict.FAIL
    assert "[0]" in verdicts["stream.server"][1]
    text = format_matrix(cells, [INPROC])
    assert "metadata.headers_trailers on inproc:" in text
    assert "3 cells: 1 passed, 2 failed" in text


async def test_a_documented_refusal_that_does_not_happen_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """inproc serves bidi; declared unsupported there, the cell must fail rather than pass quietly."""
    (bidi,) = [c for c in CASES if c.name == "stream.bidi"]
    probe = UNSUPPORTED[("stream.bidi", "http")].probe
    monkeypatch.setitem(UNSUPPORTED, ("stream.bidi", "inproc"), Unsupported("pretend", probe))
    (cell,) = await run_matrix([bidi], [INPROC])
    assert cell.verdict is Verdict.FAIL
    assert cell.reason == "documented as refused with UNIMPLEMENTED, but it worked"


def test_exit_status_is_1_on_a_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(env: Env) -> None:
        raise AssertionError("deliberately broken")

    monkeypatch.setattr(runner, "CASES", [Case("broken.case", "always fails", broken)])
    assert runner.main(["--transports", "inproc", "--clients", "protobind"]) == 1
    out = capsys.readouterr().out
    assert "broken.case on inproc: deliberately broken" in out
    assert "1 cells: 0 passed, 1 failed" in out


def test_grpc_columns_pass_with_grpcio_chosen_by_the_environment() -> None:
    """The gRPC columns (protobind's client and stock grpcio against the grpc:// server) with
    grpcio, not the default native engine, on both protobind sides where no engine is given
    (PROTOBIND_GRPC_ENGINE, docs/configuration.md)."""
    import os

    result = subprocess.run(
        [sys.executable, "-m", "protobind.testing.conformance", "--transports", "grpc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PROTOBIND_GRPC_ENGINE": "grpcio"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed," in result.stdout
    assert "grpcio: stock grpc.aio client" in result.stdout
