"""`protobind call`, `list` and `describe` against a real server on gRPC, HTTP, NATS, Kafka and MQTT.

One `protobind serve` process serves tests.details_service on the network transports (Kafka on a
private Tansu broker; MQTT on the machine's Mosquitto, skipped where none runs, except under
CI=true); each command runs in a process of its own with no contract files (reflection), or with
`--proto` resolved against `-I`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from protobind.mqtt import TEST_BROKER, broker_unreachable

from .conformance import SERVICE
from .kafka_broker import kafka_url
from .processes import PROTOBIND
from .support import ROOT


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROTOBIND, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def urls(nats_server: str, kafka_broker: str) -> Iterator[dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    binds = [
        "--bind",
        "grpc://127.0.0.1:0",
        "--bind",
        "http://127.0.0.1:0",
        "--bind",
        f"{nats_server}?prefix=cli",
        "--bind",
        kafka_url(kafka_broker, "cli."),
    ]
    mqtt = os.environ.get("PROTOBIND_TEST_MQTT", TEST_BROKER)
    missing = broker_unreachable(mqtt)
    if missing is None:
        binds += ["--bind", f"{mqtt}?prefix=cli-{os.urandom(4).hex()}"]
    elif os.environ.get("CI") == "true":
        raise RuntimeError(f"CI needs an MQTT broker: {missing}")
    server = subprocess.Popen(
        [*PROTOBIND, "serve", "tests.details_service:Details", *binds],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        bound = [server.stdout.readline().split(" on ")[-1].strip() for _ in range(len(binds) // 2)]
        yield {url.partition(":")[0]: url for url in bound}
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
    assert server.returncode == 0


@pytest.mark.parametrize("transport", ["grpc", "http", "nats", "kafka", "mqtt"])
def test_list_describe_and_call_by_reflection(urls: dict[str, str], transport: str) -> None:
    if transport not in urls:
        pytest.skip("no MQTT broker here")
    url = urls[transport]
    listed = _run("list", url)
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout.splitlines()

    described = _run("describe", url, SERVICE)
    assert described.returncode == 0, described.stderr
    assert described.stdout.startswith(f"{SERVICE} is a service:\nservice ConformanceService {{\n")
    assert (
        "  rpc ServerStream ( .protobind.conformance.v1.Request ) returns "
        "( stream .protobind.conformance.v1.Response );\n" in described.stdout
    )

    ok = _run("call", url, f"{SERVICE}/Unary", '{"text": "hi", "number": "7"}', "-H", "x-user:ada")
    assert ok.returncode == 0, ok.stderr
    reply = json.loads(ok.stdout)
    assert (reply["text"], reply["number"], reply["transport"]) == ("hi", "7", transport)
    assert reply["metadata"] == {"x-user": "ada"}

    failed = _run("call", url, f"{SERVICE}/Unary", '{"text": "details"}')
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.splitlines()
    assert lines[0] == "error: FAILED_PRECONDITION: with details"
    assert json.loads(lines[1].removeprefix("  detail google.rpc.ErrorInfo: ")) == {
        "reason": "QUOTA",
        "domain": "details.test",
        "metadata": {"k": "v"},
    }
    assert (
        lines[2]
        == '  detail google.rpc.BadRequest: {"fieldViolations": [{"field": "text", "description": "bad"}]}'
    )
    assert lines[3] == '  detail google.rpc.RetryInfo: {"retryDelay": "3s"}'
    assert lines[4] == "  detail type.googleapis.com/acme.v1.Secret (unknown type): CAE="


def test_describe_messages_methods_and_list_methods(urls: dict[str, str]) -> None:
    url = urls["http"]
    methods = _run("list", url, SERVICE)
    assert methods.stdout.splitlines() == [
        f"{SERVICE}.{name}"
        for name in ("Unary", "Lookup", "ServerStream", "ClientStream", "BidiStream", "Notify")
    ]
    message = _run("describe", url, "protobind.conformance.v1.Request")
    assert message.returncode == 0, message.stderr
    assert "message Request {\n" in message.stdout
    assert "\n  map<string, string> labels = 8;\n  repeated string tags = 9;\n" in message.stdout
    assert message.stdout.endswith("\n}\n")
    method = _run("describe", url, f"{SERVICE}/Lookup")
    assert method.stdout == (
        f"{SERVICE}.Lookup is a method:\n"
        "rpc Lookup ( .protobind.conformance.v1.Request ) returns ( .protobind.conformance.v1.Response ) {\n"
        "  option idempotency_level = NO_SIDE_EFFECTS;\n}\n"
    )
    detail = _run("describe", url, "google.rpc.RetryInfo")
    assert "  .google.protobuf.Duration retry_delay = 1;" in detail.stdout
    unknown = _run("describe", url, "nope.Nothing")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "nope.Nothing" in unknown.stderr


def test_proto_is_resolved_against_include_dirs(urls: dict[str, str], tmp_path: Path) -> None:
    idl = str(ROOT / "idl")
    # from another directory: the name is looked up in -I, as protoc and grpcurl do
    named = _run(
        "call", urls["grpc"], f"{SERVICE}/Unary", '{"text": "p"}',
        "--proto", "protobind/conformance/v1/conformance.proto", "-I", idl, cwd=tmp_path,
    )  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["text"] == "p"
    missing = _run(
        "call", urls["grpc"], f"{SERVICE}/Unary", "--proto", "nothing/here.proto", "-I", idl, cwd=tmp_path
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.count("\n") == 1 and "nothing/here.proto" in missing.stderr


def test_no_server_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for command in (
        ["list", f"grpc://127.0.0.1:{port}"],
        ["list", f"nats://bob:secret@127.0.0.1:{port}"],
        ["describe", f"http://127.0.0.1:{port}"],
        ["call", f"http://127.0.0.1:{port}", f"{SERVICE}/Unary"],
    ):
        result = _run(*command, cwd=tmp_path)
        assert result.returncode == 1, command
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert "UNAVAILABLE" in result.stderr and "secret" not in result.stderr


@pytest.mark.parametrize("transport", ["grpc", "nats"])
def test_describe_shows_method_options(urls: dict[str, str], transport: str) -> None:
    """grpcurl shows a method's options: protobind's messaging options too, from reflection."""
    described = _run("describe", urls[transport], f"{SERVICE}/Notify")
    assert described.returncode == 0, described.stderr
    assert described.stdout == (
        f"{SERVICE}.Notify is a method:\n"
        "rpc Notify ( .protobind.conformance.v1.Request ) returns ( .google.protobuf.Empty ) {\n"
        "  option (protobind.v1.oneway) = true;\n}\n"
    )


def test_describe_shows_durable_delivery_and_http_rules() -> None:
    from protobind.cli._remote import describe_symbol
    from protobind_codegen.descriptors import build_pool
    from protobind_codegen.protoc import compile_protos

    protos = ROOT / "tests" / "protos"
    files, _ = compile_protos(
        [
            str(protos / "edge" / "shop" / "v1" / "shop.proto"),
            str(protos / "rest" / "library" / "v1" / "library.proto"),
        ],
        [str(protos / "edge"), str(protos / "rest")],
    )
    pool = build_pool(files)
    assert describe_symbol(pool, "shop.v1.Shop/Reserve").splitlines()[1:] == [
        "rpc Reserve ( .shop.v1.Item ) returns ( .common.v1.Money ) {",
        "  option (protobind.v1.durable) = true;",
        "  option (protobind.v1.delivery) = { max_deliver: 3 backoff { seconds: 1 } "
        "backoff { nanos: 500000000 } ack_wait { seconds: 60 } "
        'dead_letter_subject: "shop.dead" reply_ttl { seconds: 3600 } max_ack_pending: 10 };',
        "}",
    ]
    assert describe_symbol(pool, "library.v1.Library.ListBooks").splitlines()[1:] == [
        "rpc ListBooks ( .library.v1.ListBooksRequest ) returns ( .library.v1.ListBooksResponse ) {",
        "  option idempotency_level = NO_SIDE_EFFECTS;",
        '  option (google.api.http) = { get: "/v1/{parent=shelves/*}/books" };',
        "}",
    ]
