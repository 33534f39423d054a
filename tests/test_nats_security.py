"""NATS security and robustness (issue 9): no stream hijacking, no TLS downgrade, no secrets in
errors, bounded connection attempts, bad deadlines answered. Real nats-server processes."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

import protobind
from protobind import Code, RpcError
from protobind.conformance.v1.conformance_pb2 import Behavior, Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient

from .conformance import Conformance
from .nats_server import NatsServers
from .tls import self_signed

SERVICE = "protobind.conformance.v1.ConformanceService"


class Echo(Conformance):
    """Records what its client- and bidi-streaming handlers receive."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []


@pytest.fixture
async def served(nats_server: str) -> AsyncIterator[tuple[str, str, Conformance]]:
    service = Conformance()
    server = protobind.Server([service])
    prefix = f"sec{time.monotonic_ns()}."
    (url,) = await server.start(f"{nats_server}?prefix={prefix}")
    try:
        yield url, prefix, service
    finally:
        await server.stop(0)


async def test_another_client_cannot_inject_into_cancel_or_end_a_stream(
    served: tuple[str, str, Conformance], nats_server: str
) -> None:
    """An attacker that opened a stream of its own learns the server's stream inbox; it must not
    reach the victim's stream through it (guessing the address or forging frames)."""
    url, prefix, _ = served
    attacker = await nats.connect(nats_server)
    try:
        own_inbox = attacker.new_inbox()
        frames: asyncio.Queue[Any] = asyncio.Queue()
        await attacker.subscribe(own_inbox, cb=frames.put)
        await attacker.flush()
        await attacker.publish(
            f"{prefix}{SERVICE}.BidiStream",
            b"",
            reply=own_inbox,
            headers={"Protobind-Frame": "open", "Protobind-Window": "8"},
        )
        accept = await asyncio.wait_for(frames.get(), 5)
        server_inbox = accept.reply
        token = server_inbox.rpartition(".")[2]
        assert len(token) >= 32  # 128 random bits, not a counter

        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            sent = asyncio.Queue[Request]()

            async def requests() -> AsyncIterator[Request]:
                while True:
                    item = await sent.get()
                    if item.text == "END":
                        return
                    yield item

            replies: list[str] = []
            call = client.bidi_stream(requests(), timeout=20)
            await sent.put(Request(text="LEGIT-1"))
            replies.append((await anext(call)).text)
            # every address the attacker could try: counters next to its own stream, and its own
            # stream's inbox with forged frames
            base = server_inbox.rpartition(".")[0]
            targets = [f"{base}.{n}" for n in range(0, 50)] + [server_inbox]
            for target in targets:
                await attacker.publish(target, Request(text="INJECTED").SerializeToString(), reply=own_inbox)
                await attacker.publish(target, b"", reply=own_inbox, headers={"Protobind-Frame": "cancel"})
                await attacker.publish(
                    target,
                    b"",
                    headers={"Protobind-Frame": "end", "Protobind-Status": "14", "Protobind-Count": "0"},
                )
            await attacker.flush()
            await asyncio.sleep(0.2)
            await sent.put(Request(text="LEGIT-2"))
            replies.append((await anext(call)).text)
            await sent.put(Request(text="END"))
            async for reply in call:
                replies.append(reply.text)
        assert replies == ["LEGIT-1", "LEGIT-2"]
    finally:
        await attacker.close()


class _FakePlainNats:
    """A TCP server that speaks just enough NATS to offer no TLS, and records what it receives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(10)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(
                b'INFO {"server_id":"fake","version":"2.10.0","max_payload":1048576,"auth_required":true}\r\n'
            )
            conn.settimeout(2)
            try:
                while chunk := conn.recv(4096):
                    self.received += chunk
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


async def test_tls_url_never_falls_back_to_plaintext() -> None:
    fake = _FakePlainNats()
    try:
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            await protobind.connect(f"tls://alice:s3cret@127.0.0.1:{fake.port}?connect_timeout=2").open()
        assert info.value.code is Code.UNAVAILABLE
        assert "TLS" in info.value.message
        assert "s3cret" not in info.value.message
        assert time.monotonic() - started < 30
        await asyncio.sleep(0.3)
        assert b"CONNECT" not in fake.received and b"s3cret" not in fake.received
    finally:
        fake.close()


async def test_authentication_failure_is_unauthenticated_and_hides_the_password(
    nats_servers: NatsServers, caplog: pytest.LogCaptureFixture
) -> None:
    nats_url, _ = nats_servers.start(args=["--user", "alice", "--pass", "right"])
    host = nats_url.removeprefix("nats://")
    bad = f"nats://alice:wrong-secret@{host}"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(RpcError) as info:
            await protobind.connect(bad).open()
        assert info.value.code is Code.UNAUTHENTICATED
        assert "wrong-secret" not in info.value.message
        with pytest.raises(ConnectionError) as failed:
            await protobind.Server([Conformance()]).start(bad)
        assert "authoriz" in str(failed.value).lower() or "authenticat" in str(failed.value).lower()
        assert "wrong-secret" not in str(failed.value)
    assert "wrong-secret" not in caplog.text
    # the right password works, and Server.urls does not show it
    server = protobind.Server([Conformance()])
    await server.start(f"nats://alice:right@{host}")
    try:
        assert all("right" not in url for url in server.urls)
    finally:
        await server.stop(0)


@pytest.mark.parametrize("case", ["wrong-ca", "plain-to-tls-only"])
async def test_tls_handshake_failures_are_bounded(
    nats_servers: NatsServers, tmp_path: Path, case: str
) -> None:
    cert, key = self_signed(tmp_path)
    nats_url, _ = nats_servers.start(args=["--tls", "--tlscert", str(cert), "--tlskey", str(key)])
    host = nats_url.partition("://")[2]
    url = f"tls://{host}" if case == "wrong-ca" else f"nats://{host}"  # the system CAs do not trust it
    started = time.monotonic()
    with pytest.raises(RpcError) as info:
        await asyncio.wait_for(protobind.connect(f"{url}?connect_timeout=1").open(), 30)
    assert info.value.code is Code.UNAVAILABLE
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(protobind.Server([Conformance()]).start(f"{url}?connect_timeout=1"), 30)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("value", ["9" * 400, "2e308", "-1x", "1" * 11])
async def test_absurd_timeouts_are_invalid_argument(
    served: tuple[str, str, Conformance], nats_server: str, value: str
) -> None:
    _, prefix, _ = served
    raw = await nats.connect(nats_server)
    try:
        for method, headers in (("Unary", {}), ("ServerStream", {"Protobind-Frame": "open"})):
            reply = await raw.request(
                f"{prefix}{SERVICE}.{method}",
                Request(behavior=Behavior(stream_count=1)).SerializeToString(),
                timeout=5,
                headers={"Protobind-Timeout-Ms": value, **headers},
            )
            assert reply.headers["Protobind-Status"] == str(int(Code.INVALID_ARGUMENT)), (
                method,
                reply.headers,
            )
        # and the server keeps serving
        ok = await raw.request(f"{prefix}{SERVICE}.Unary", Request(text="ok").SerializeToString(), timeout=5)
        assert ok.headers is None
    finally:
        await raw.close()


async def test_max_message_size_is_the_same_option_and_code_as_elsewhere(nats_server: str) -> None:
    server = protobind.Server([Conformance()])
    (url,) = await server.start(f"{nats_server}?prefix=mms{time.monotonic_ns()}.&max_message_size=1000")
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            assert (await client.unary(Request(payload=b"x" * 500), timeout=5)).payload == b"x" * 500
            with pytest.raises(RpcError) as info:
                await client.unary(Request(payload=b"x" * 2000), timeout=5)
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            with pytest.raises(RpcError) as info:
                await client.client_stream([Request(payload=b"x" * 2000)], timeout=5)
            assert info.value.code is Code.RESOURCE_EXHAUSTED
            assert (await client.unary(Request(text="still serving"), timeout=5)).text == "still serving"
    finally:
        await server.stop(0)
    with pytest.raises(ValueError, match="tls_server_name"):
        protobind.connect(f"{nats_server}?tls_hostname=x")


async def test_discovery_is_guarded_when_auth_is_configured(nats_servers: NatsServers) -> None:
    from protobind.auth import BearerAuth

    nats_server, _ = nats_servers.start()  # a server of its own: no other service answers $SRV
    server = protobind.Server([Conformance()], interceptors=[BearerAuth(tokens=["s3cret"])])
    await server.start(nats_server)
    raw = await nats.connect(nats_server)
    try:
        denied = await raw.request("$SRV.INFO", b"", timeout=5)
        assert denied.headers is not None
        assert denied.headers["Protobind-Status"] == str(int(Code.UNAUTHENTICATED))
        allowed = await raw.request("$SRV.INFO", b"", timeout=5, headers={"authorization": "Bearer s3cret"})
        assert b"protobind" in allowed.data or b"Conformance" in allowed.data
    finally:
        await raw.close()
        await server.stop(0)


async def test_asyncapi_documents_are_guarded_when_auth_is_configured(nats_server: str) -> None:
    """Issue 17: ``$PROTOBIND.ASYNCAPI.*`` answered without a token while ``$SRV.*`` refused."""
    from protobind.auth import BearerAuth

    prefix = f"aa{time.monotonic_ns()}."
    server = protobind.Server([Conformance()], interceptors=[BearerAuth(tokens=["s3cret"])])
    await server.start(f"{nats_server}?prefix={prefix}")
    raw = await nats.connect(nats_server)
    subject = f"{prefix}$PROTOBIND.ASYNCAPI.{SERVICE}"
    try:
        for headers in (None, {"authorization": "Bearer wrong"}):
            denied = await raw.request(subject, b"", timeout=5, headers=headers)
            assert denied.headers is not None
            assert denied.headers["Protobind-Status"] == str(int(Code.UNAUTHENTICATED))
            assert b"asyncapi" not in denied.data
        allowed = await raw.request(subject, b"", timeout=5, headers={"authorization": "Bearer s3cret"})
        assert json.loads(allowed.data)["asyncapi"].startswith("3.")
    finally:
        await raw.close()
        await server.stop(0)
