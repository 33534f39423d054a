"""TLS and SASL on the Kafka binding (issue 20): option parsing and the combinations refused, TLS
through a real TLS listener, a TLS option against a plaintext listener (an error, never plaintext),
credentials refused by a broker that requires SASL, and credentials never shown.

Tansu 0.6 (the test broker) cannot serve TLS itself (its ``--cert`` and ``--key`` exclude each
other), so the TLS listener here is a TLS-terminating relay in front of it, which Tansu advertises
as its address; its user store needs an authenticated client to create a user, so a successful
SASL login is not tested (docs/brokers.md, "Kafka", lists both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.kafka._connection import AuthenticationFailed
from protobind.kafka._options import settings_from
from protobind.kafka.embedded import start_kafka_broker

from .conformance import Conformance
from .kafka_broker import kafka_url
from .support import free_port
from .tls import self_signed

SECRET = "s3cret-Pa55"
#: Options every test URL takes: Tansu refuses idempotent producers; one second per attempt.
TANSU = {"idempotence": "false", "session_timeout": "2", "connect_timeout": "1"}


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(certificate, key) for 127.0.0.1, and the certificate of another CA that does not vouch for it."""
    cert, key = self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    stranger, _ = self_signed(other)
    return cert, key, stranger


# --- options --------------------------------------------------------------------------------------


def test_tls_and_sasl_options_become_aiokafka_settings(pki: tuple[Path, Path, Path]) -> None:
    cert, _, _ = pki
    plain = settings_from("kafka://h1:9092,h2:9092", {})
    assert plain.security() == {"security_protocol": "PLAINTEXT"}
    tls = settings_from("kafka://h1:9092", {"tls": "true"})
    assert tls.security()["security_protocol"] == "SSL"
    assert isinstance(tls.security()["ssl_context"], ssl.SSLContext)
    assert settings_from("kafka://h1:9092", {"tls_ca": str(cert)}).security()["security_protocol"] == "SSL"
    scram = settings_from(f"kafka://alice:{SECRET}@h1:9092,h2:9092", {"sasl_mechanism": "scram-sha-512"})
    assert scram.bootstrap == ["h1:9092", "h2:9092"]
    assert scram.security() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET,
    }
    # the options override the URL's userinfo; %-escapes are undone
    plain_tls = settings_from(
        "kafka://bob:p%40ss@h1:9092",
        {"sasl_mechanism": "PLAIN", "tls": "true", "password": "other"},
    )
    assert plain_tls.security()["security_protocol"] == "SASL_SSL"
    assert (plain_tls.user, plain_tls.password) == ("bob", "other")
    assert settings_from("kafka://bob:p%40ss@h1:9092", {"sasl_mechanism": "SCRAM-SHA-256"}).password == "p@ss"
    # the password stays out of the settings' repr and the shown address
    assert SECRET not in repr(scram) and SECRET not in scram.shown


@pytest.mark.parametrize(
    ("url", "options", "complaint"),
    [
        ("kafka://h:9092", {"tls": "false", "tls_ca": "{ca}"}, "tls is false but TLS options were given"),
        (f"kafka://alice:{SECRET}@h:9092", {}, "sasl_mechanism is needed with credentials"),
        ("kafka://h:9092", {"user": "alice", "password": SECRET}, "sasl_mechanism is needed"),
        ("kafka://h:9092", {"sasl_mechanism": "SCRAM-SHA-256"}, "needs a user and a password"),
        (f"kafka://alice:{SECRET}@h:9092", {"sasl_mechanism": "PLAIN"}, "PLAIN sends the password"),
        (f"kafka://alice:{SECRET}@h:9092", {"sasl_mechanism": "GSSAPI"}, "must be one of PLAIN"),
        ("kafka://h:9092", {"tls_key": "{ca}"}, "tls_key needs tls_cert"),
        ("kafka://h:9092", {"tls_ca": "/nonexistent/ca.pem"}, "tls_ca names no readable file"),
        ("kafka://h:9092", {"tls": "maybe"}, "tls must be true or false"),
        ("kafka://h:9092", {"ssl_context": "yes"}, "ssl_context must be an ssl.SSLContext"),
    ],
)
def test_bad_combinations_are_refused_without_the_password(
    url: str, options: dict[str, str], complaint: str, pki: tuple[Path, Path, Path]
) -> None:
    given = {key: value.format(ca=pki[0]) for key, value in options.items()}
    with pytest.raises(ValueError, match=complaint) as info:
        settings_from(url, given)
    assert SECRET not in str(info.value)


async def test_server_urls_hide_the_password(kafka_broker: str) -> None:
    """Server.urls of a SASL binding shows ``user:***`` (the connection fails: Tansu here takes no SASL)."""
    url = kafka_url(
        kafka_broker.replace("kafka://", f"kafka://alice:{SECRET}@"), "tks0.", sasl_mechanism="SCRAM-SHA-512"
    )
    server = protobind.Server([Conformance()])
    with pytest.raises(AuthenticationFailed) as info:
        await server.start(url)
    assert "does not offer SASL SCRAM-SHA-512" in str(info.value) and SECRET not in str(info.value)
    from protobind.urls import redact

    assert SECRET not in redact(url) and "alice:***@" in redact(url)


# --- against a broker -----------------------------------------------------------------------------


def _url(broker: str, prefix: str, **options: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in {**TANSU, **options}.items())
    return f"{broker}?prefix={prefix}&{query}"


async def _topics(bootstrap: str, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [topic for topic in await admin.list_topics() if topic.startswith(prefix)]
    finally:
        await admin.close()


async def test_a_tls_option_against_a_plaintext_listener_is_an_error_never_plaintext(
    kafka_broker: str, pki: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cert, _, _ = pki
    for options in ({"tls": "true"}, {"tls_ca": str(cert)}):
        url = _url(kafka_broker, "tks1.", **options)
        with pytest.raises(RpcError) as info:
            await asyncio.wait_for(protobind.connect(url).open(), 30)
        assert info.value.code is Code.UNAVAILABLE
        assert "does that listener speak TLS?" in info.value.message
        server = protobind.Server([Conformance()])
        with pytest.raises(ConnectionError, match="does that listener speak TLS"):
            await asyncio.wait_for(server.start(url), 30)
    # nothing was done in plaintext instead: no topic of the prefix exists
    assert await _topics(kafka_broker.partition("//")[2], "tks1.") == []


@contextlib.asynccontextmanager
async def tls_relay(cert: Path, key: Path, port: int, target: int) -> AsyncIterator[None]:
    """A TLS listener on ``port`` relaying every connection to 127.0.0.1:``target`` in plaintext."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        for task in (
            asyncio.create_task(pipe(reader, upstream_writer)),
            asyncio.create_task(pipe(upstream_reader, writer)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(relay, "127.0.0.1", port, ssl=context)
    try:
        yield
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def relayed_broker() -> Iterator[tuple[str, int]]:
    """A private Tansu advertising a relay port (``(broker URL, relay port)``): clients bootstrap
    through the relay and stay on it."""
    relay_port = free_port()
    url, stop = start_kafka_broker(advertised_port=relay_port)
    try:
        yield url, relay_port
    finally:
        stop()


async def test_calls_over_tls(relayed_broker: tuple[str, int], pki: tuple[Path, Path, Path]) -> None:
    broker, relay_port = relayed_broker
    cert, key, stranger = pki
    target = int(broker.rsplit(":", 1)[1])
    relayed = f"kafka://127.0.0.1:{relay_port}"
    async with tls_relay(cert, key, relay_port, target):
        server = protobind.Server([Conformance()])
        await server.start(_url(relayed, "tks2.", tls_ca=str(cert)))
        try:
            async with protobind.connect(_url(relayed, "tks2.", tls_ca=str(cert))) as channel:
                reply = await ConformanceServiceClient(channel).unary(Request(text="over tls"), timeout=30)
            assert reply.text == "over tls"
            # a CA that does not vouch for the certificate: refused at once, naming the cause
            with pytest.raises(RpcError) as info:
                await asyncio.wait_for(
                    protobind.connect(_url(relayed, "tks2.", tls_ca=str(stranger))).open(), 30
                )
            assert info.value.code is Code.UNAVAILABLE
            assert "the server's certificate: self-signed certificate" in info.value.message, info.value
            # no TLS option against the TLS listener: no connection either
            with pytest.raises(RpcError) as info:
                await asyncio.wait_for(protobind.connect(_url(relayed, "tks2.")).open(), 30)
            assert info.value.code is Code.UNAVAILABLE
        finally:
            await server.stop(0)


@pytest.fixture
def authenticating_broker() -> Iterator[str]:
    url, stop = start_kafka_broker(authentication=True)
    try:
        yield url
    finally:
        stop()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_refused_credentials_are_unauthenticated_and_never_shown(
    authenticating_broker: str, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = _url(
        authenticating_broker.replace("kafka://", f"kafka://mallory:{SECRET}@"),
        "tks3.",
        sasl_mechanism=mechanism,
    )
    with pytest.raises(RpcError) as info:
        await asyncio.wait_for(protobind.connect(url).open(), 30)
    assert info.value.code is Code.UNAUTHENTICATED, info.value
    assert "refused the credentials of user 'mallory'" in info.value.message
    server = protobind.Server([Conformance()])
    with pytest.raises(AuthenticationFailed) as refused:
        await asyncio.wait_for(server.start(url), 30)
    for text in (info.value.message, str(refused.value), repr(refused.value), caplog.text):
        assert SECRET not in text
