"""The AsyncAPI 3.0 document (protobind.broker._asyncapi): `protobind asyncapi` and the NATS
binding's discovery subject, checked by the AsyncAPI project's own parser (@asyncapi/parser from
the npm registry, installed once into a cache directory; the test is skipped only without npm)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

import protobind
from protobind.broker._asyncapi import asyncapi_document
from protobind.conformance.v1.conformance_protobind import CONFORMANCE_SERVICE_INFO
from protobind.http.openapi import openapi_document

from .conformance import SERVICE, Conformance
from .support import ROOT, example_greeter

EDGE = ROOT / "tests" / "protos" / "edge"
PARSER_VERSION = "3.6.6"
# above the suite's 300 s (pyproject.toml): the first test to use the parser installs it (300 s at most)
pytestmark = pytest.mark.timeout(600)

VALIDATE_JS = """
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');
(async () => {
  const { document, diagnostics } = await new Parser().parse(fs.readFileSync(process.argv[2], 'utf8'));
  const found = diagnostics.map(d => ({severity: d.severity, code: d.code, message: d.message,
                                       path: d.path.join('/')}));
  console.log(JSON.stringify({parsed: Boolean(document), diagnostics: found}));
})();
"""


@pytest.fixture(scope="session")
def asyncapi_parser() -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """Validate a document with @asyncapi/parser; returns its error and warning diagnostics."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are needed to run the AsyncAPI parser")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "protobind-tests"
    home = cache / f"asyncapi-parser-{PARSER_VERSION}"
    if not (home / "node_modules" / "@asyncapi" / "parser").is_dir():
        home.mkdir(parents=True, exist_ok=True)
        (home / "package.json").write_text('{"private": true}')
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", f"@asyncapi/parser@{PARSER_VERSION}"],
            cwd=home,
            check=True,
            timeout=300,
        )
    (home / "validate.js").write_text(VALIDATE_JS)

    def check(document: dict[str, Any]) -> list[dict[str, Any]]:
        path = home / f"document-{os.getpid()}.json"
        path.write_text(json.dumps(document))
        out = subprocess.run(
            [node, str(home / "validate.js"), str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        result = json.loads(out.stdout)
        assert result["parsed"], result
        # severity 0 is an error, 1 a warning; 2 and 3 are hints (such as "3.1.0 exists")
        return [d for d in result["diagnostics"] if d["severity"] <= 1]

    return check


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protobind", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document of the edge contract (every method kind, one-way, durable), from the CLI."""
    out = tmp_path_factory.mktemp("asyncapi") / "shop.json"
    result = _cli(
        "asyncapi", str(EDGE / "shop"), "-I", str(EDGE), "-o", str(out),
        "--server", "nats://user:secret@127.0.0.1:4222", "--api-version", "2.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def test_cli_document_is_valid_asyncapi(shop: dict[str, Any], asyncapi_parser: Any) -> None:
    assert asyncapi_parser(shop) == []
    assert shop["asyncapi"] == "3.0.0"
    assert shop["info"]["title"] == "protobind API"  # shop.proto declares two services
    assert shop["info"]["version"] == "2.1"
    assert shop["defaultContentType"] == "application/protobuf"
    assert shop["servers"] == {"nats": {"host": "127.0.0.1:4222", "protocol": "nats", "description": "NATS"}}
    assert "secret" not in json.dumps(shop)


def test_every_pattern_is_described(shop: dict[str, Any]) -> None:
    channels, operations = shop["channels"], shop["operations"]
    # request/reply: received on the call subject in the service's queue group, answered on the
    # caller's reply subject with the response or an error
    get = operations["shop_v1_Shop_GetItem"]
    assert channels["shop_v1_Shop_GetItem"]["address"] == "shop.v1.Shop.GetItem"
    assert get["action"] == "receive"
    assert get["bindings"]["nats"]["queue"] == "shop.v1.Shop"
    assert get["reply"]["channel"] == {"$ref": "#/channels/shop_v1_Shop_GetItem_reply"}
    assert channels["shop_v1_Shop_GetItem_reply"]["address"] is None
    assert set(channels["shop_v1_Shop_GetItem_reply"]["messages"]) == {"reply", "error"}
    # one-way: no reply, at most once
    notify = operations["shop_v1_Shop_Notify"]
    assert "reply" not in notify
    assert "at most once" in channels["shop_v1_Shop_Notify"]["description"]
    # durable request/response: its options, a dead letter and a durable reply subject
    reserve = channels["shop_v1_Shop_Reserve"]
    assert "at least once" in reserve["description"]
    assert reserve["x-protobind-delivery"]["max_deliver"] == 3
    assert reserve["x-protobind-delivery"]["backoff_seconds"] == [1.0, 0.5]
    assert channels["shop_v1_Shop_Reserve_dead_letter"]["address"] == "shop.dead"
    assert operations["shop_v1_Shop_Reserve_dead_letter"]["action"] == "send"
    replies = channels["shop_v1_Shop_Reserve_reply_stream"]
    # the names of protobind.broker.durable._names
    assert replies["address"] == "$PROTOBIND.REPLY.shop_v1_Shop.*"
    assert reserve["address"] == "$PROTOBIND.DURABLE.shop.v1.Shop.Reserve"
    # durable one-way: the default dead letter, no reply subject of any kind
    assert channels["shop_v1_Shop_Record_dead_letter"]["address"] == "$PROTOBIND.DEAD.shop.v1.Shop.Record"
    assert "shop_v1_Shop_Record_reply_stream" not in channels
    assert "at least once" in channels["shop_v1_Shop_Record"]["description"]
    # streams: the open frame on the call subject, frames on per-call inboxes
    assert set(channels["shop_v1_Shop_Shop"]["messages"]) == {"open"}
    assert channels["shop_v1_Shop_Shop_requests"]["address"] is None
    assert set(channels["shop_v1_Shop_HTTPStatus_reply"]["messages"]) == {"response", "frame"}
    # what every server answers
    addresses = {c["address"] for c in channels.values()}
    assert {"$PROTOBIND.CANCEL", "$SRV.INFO", "$PROTOBIND.ASYNCAPI.shop.v1.Shop"} <= addresses
    # comments become descriptions
    assert operations["shop_v1_Shop_GetItem"]["summary"] == "Gets an item."


def test_messages_carry_the_openapi_schemas(shop: dict[str, Any]) -> None:
    message = shop["components"]["messages"]["shop.v1.Item"]
    assert message["payload"] == {"$ref": "#/components/schemas/shop.v1.Item"}
    assert message["headers"] == {"$ref": "#/components/schemas/protobind.RequestHeaders"}
    openapi = openapi_document([CONFORMANCE_SERVICE_INFO])
    asyncapi = asyncapi_document([CONFORMANCE_SERVICE_INFO])
    request = "protobind.conformance.v1.Request"
    assert asyncapi["components"]["schemas"][request] == openapi["components"]["schemas"][request]
    assert (
        asyncapi["components"]["schemas"]["protobind.ConnectError"]
        == openapi["components"]["schemas"]["protobind.ConnectError"]
    )


def test_prefix_and_queue_group_options() -> None:
    document = asyncapi_document([CONFORMANCE_SERVICE_INFO], prefix="prod", queue_group="billing")
    unary = "protobind_conformance_v1_ConformanceService_Unary"
    assert document["channels"][unary]["address"] == f"prod.{SERVICE}.Unary"
    assert document["operations"][unary]["bindings"]["nats"]["queue"] == "billing"
    assert document["channels"]["protobind_cancel"]["address"] == "prod.$PROTOBIND.CANCEL"


def test_cli_mistakes_are_one_line() -> None:
    result = _cli("asyncapi", str(EDGE / "shop"), "-I", str(EDGE), "--server", "http://x:1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "protobind asyncapi: --server 'http://x:1': give a nats://, tls://, mqtt://, mqtts:// or kafka:// URL"
    ]


async def test_nats_server_answers_its_document(nats_server: str, asyncapi_parser: Any) -> None:
    server = protobind.Server([Conformance()])
    (url,) = await server.start(f"{nats_server}?prefix=aa")
    nc = await nats.connect(nats_server)
    try:
        info = json.loads((await nc.request(f"$SRV.INFO.{SERVICE.replace('.', '_')}", b"", timeout=5)).data)
        subject = info["metadata"]["protobind.asyncapi"]
        assert subject == f"aa.$PROTOBIND.ASYNCAPI.{SERVICE}"
        notify = next(e for e in info["endpoints"] if e["name"] == "Notify")
        assert (notify["metadata"]["protobind.oneway"], notify["metadata"]["protobind.durable"]) == (
            "true",
            "false",
        )
        reply = await nc.request(subject, b"", timeout=5)
        assert reply.headers["Content-Type"] == "application/json"
        document = json.loads(reply.data)
        assert asyncapi_parser(document) == []
        unary = document["channels"]["protobind_conformance_v1_ConformanceService_Unary"]
        assert unary["address"] == f"aa.{SERVICE}.Unary"
        assert document["servers"]["nats"]["host"] == url.split("://")[1].split("?")[0]
    finally:
        await nc.close()
        await server.stop(grace=1.0)


async def test_kafka_server_answers_its_document_with_kafka_bindings(
    kafka_broker: str, asyncapi_parser: Any
) -> None:
    """The request is a plain aiokafka record on the control topic (docs/brokers.md, Kafka)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from .kafka_broker import kafka_url

    server = protobind.Server([Conformance()])
    (url,) = await server.start(kafka_url(kafka_broker, "ka."))
    boot = kafka_broker.partition("//")[2]
    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    await admin.start()
    await admin.create_topics([NewTopic("ka.asker", 1, 1)])
    await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=boot)
    await consumer.start()
    partition = TopicPartition("ka.asker", 0)
    consumer.assign([partition])
    await consumer.seek_to_end(partition)
    await consumer.position(partition)
    producer = AIOKafkaProducer(bootstrap_servers=boot)
    await producer.start()
    try:
        headers = [
            ("Protobind-Subject", f"ka.$PROTOBIND.ASYNCAPI.{SERVICE}".encode()),
            ("Protobind-Reply", b"ka.asker/doc"),
        ]
        await producer.send_and_wait("protobind.control", b"", headers=headers, partition=0)
        record = await asyncio.wait_for(consumer.getone(), 20)
    finally:
        await producer.stop()
        await consumer.stop()
        await server.stop(grace=1.0)
    assert dict(record.headers)["Protobind-Correlation"] == b"doc"
    document = json.loads(record.value)
    assert asyncapi_parser(document) == []
    assert document["servers"]["kafka"] == {
        "host": url.split("://")[1].split("?")[0],
        "protocol": "kafka",
        "description": "Kafka (acks=all)",
    }
    unary = document["channels"]["protobind_conformance_v1_ConformanceService_Unary"]
    assert unary["address"] == f"ka.{SERVICE}.Unary"
    assert unary["bindings"]["kafka"]["partitions"] == 4
    operation = document["operations"]["protobind_conformance_v1_ConformanceService_Unary"]
    assert operation["bindings"]["kafka"]["groupId"]["enum"] == [SERVICE]
    cancel = document["channels"]["protobind_cancel"]
    assert cancel["address"] == "protobind.control"
    assert cancel["bindings"]["kafka"]["x-protobind-subject"] == "ka.$PROTOBIND.CANCEL"


def test_cli_document_of_the_kafka_binding(tmp_path: Path, asyncapi_parser: Any) -> None:
    out = tmp_path / "shop-kafka.json"
    result = _cli(
        "asyncapi", str(EDGE / "shop"), "-I", str(EDGE), "-o", str(out),
        "--server", "kafka://k1:9092,k2:9092", "--prefix", "prod",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(out.read_text())
    assert asyncapi_parser(document) == []
    assert document["servers"] == {
        "kafka": {"host": "k1:9092,k2:9092", "protocol": "kafka", "description": "Kafka (acks=all)"}
    }
    addresses = {c["address"] for c in document["channels"].values() if c["address"]}
    assert "protobind.control" in addresses
    assert not any("$" in address for address in addresses)  # topics, never subjects
    assert all("kafka" in c["bindings"] for c in document["channels"].values() if c["address"])


def _cli_async(*args: str) -> Any:
    """`protobind ARGS` in a thread, so the server this test runs on its loop keeps answering."""
    import asyncio

    return asyncio.to_thread(_cli, *args)


async def test_protobind_asyncapi_url_is_the_served_document_and_the_generated_one(
    nats_server: str,
) -> None:
    """`protobind asyncapi nats://...` asks the running services for their documents (one merged
    document for two services), behind the same auth as the methods; what it gets is what
    `protobind asyncapi` writes from the .proto files: the summaries and descriptions included."""
    from protobind.auth import BearerAuth

    # "finder" may discover the services ($SRV.INFO) but not read their documents
    auth = BearerAuth({"admin": ["*"], "finder": ["protobind.Discovery/Micro"]})
    server = protobind.Server([example_greeter(), Conformance()], interceptors=[auth])
    (url,) = await server.start(f"{nats_server}?prefix=docs")
    try:
        for header, code in [
            ([], "UNAUTHENTICATED"),
            (["-H", "authorization: Bearer finder"], "PERMISSION_DENIED"),
        ]:
            refused = await _cli_async("asyncapi", url, *header)
            assert refused.returncode == 1
            assert refused.stderr.startswith(f"protobind asyncapi: {url}: {code}: "), refused.stderr
            assert refused.stderr.count("\n") == 1
        fetched = await _cli_async("asyncapi", url, "-H", "authorization: Bearer admin")
        assert fetched.returncode == 0, fetched.stderr
    finally:
        await server.stop(grace=1.0)
    served = json.loads(fetched.stdout)
    written = _cli(
        "asyncapi", str(ROOT / "examples" / "greeter" / "proto" / "greeter" / "v1" / "greeter.proto"),
        str(ROOT / "idl" / "protobind" / "conformance" / "v1" / "conformance.proto"),
        "-I", str(ROOT / "examples" / "greeter" / "proto"), "-I", str(ROOT / "idl"),
        "--prefix", "docs", "--server", nats_server, "--api-version", protobind.__version__,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    generated = json.loads(written.stdout)
    assert served == generated
    unary = served["operations"]["protobind_conformance_v1_ConformanceService_Unary"]
    assert unary["summary"] == "Echoes the request; applies `behavior` first."
    assert served["info"]["title"] == "protobind API"


async def test_generated_mqtt_document_is_the_served_one() -> None:
    """`protobind asyncapi PATHS --server mqtt://...` writes the document an MQTT server serves
    (topics, shared subscriptions, the MQTT server bindings): the same, key for key."""
    from protobind.mqtt import TRANSPORT as MQTT

    async with MQTT.test_harness() as fresh:
        url = fresh()
        server = protobind.Server([example_greeter(), Conformance()])
        await server.start(url)
        try:
            fetched = await _cli_async("asyncapi", url)
            assert fetched.returncode == 0, fetched.stderr
        finally:
            await server.stop(grace=1.0)
    served = json.loads(fetched.stdout)
    prefix = url.partition("prefix=")[2]
    broker = url.partition("?")[0]
    proto_args = [
        str(ROOT / "examples" / "greeter" / "proto" / "greeter" / "v1" / "greeter.proto"),
        str(ROOT / "idl" / "protobind" / "conformance" / "v1" / "conformance.proto"),
        "-I", str(ROOT / "examples" / "greeter" / "proto"), "-I", str(ROOT / "idl"),
        "--prefix", prefix, "--api-version", protobind.__version__,
    ]  # fmt: skip
    written = _cli("asyncapi", *proto_args, "--server", broker)
    assert written.returncode == 0, written.stderr
    assert json.loads(written.stdout) == served
    assert served["servers"]["mqtt"]["protocol"] == "mqtt"
    unary = served["channels"]["protobind_conformance_v1_ConformanceService_Unary"]
    assert unary["address"] == f"{prefix}/protobind/conformance/v1/ConformanceService/Unary"
    # --protocol mqtt says the same without a server; a server of another broker is refused
    bare = _cli("asyncapi", *proto_args, "--protocol", "mqtt")
    assert bare.returncode == 0, bare.stderr
    assert json.loads(bare.stdout) == {k: v for k, v in served.items() if k != "servers"}
    mixed = _cli("asyncapi", *proto_args, "--protocol", "mqtt", "--server", "nats://127.0.0.1:4222")
    assert mixed.returncode == 1
    assert "give a mqtt:// or mqtts:// URL" in mixed.stderr and mixed.stderr.count("\n") == 1


def test_asyncapi_url_mistakes_are_one_line() -> None:
    for args, message in [
        (
            ["grpc://127.0.0.1:1"],
            "a grpc:// server serves no asyncapi document: "
            "give a nats://, tls://, amqp://, amqps://, kafka://, mqtt:// or mqtts:// URL",
        ),
        (["nats://127.0.0.1:1", "--prefix", "x"], "--prefix is for .proto files"),
        (["mqtt://127.0.0.1:1", "--protocol", "mqtt"], "--protocol is for .proto files"),
    ]:
        result = _cli("asyncapi", *args)
        assert result.returncode == 1
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
