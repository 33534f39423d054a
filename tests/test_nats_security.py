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

from .conformance import SERVICE, Conformance
from .nats_server import NatsServers
from .support import eventually
from .tls import self_signed


class Echo(Conformance):
    """Records what its client- and bidi-streaming handlers receive."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []


@pytest.fixture
async def served_with_prefix(nats_server: str) -> AsyncIterator[tuple[str, str, Conformance]]:
    service = Conformance()
    server = protobind.Server([service])
    prefix = f"sec{time.monotonic_ns()}."
    (url,) = await server.start(f"{nats_server}?prefix={prefix}")
    try:
        yield url, prefix, service
    finally:
        await server.stop(0)


async def test_another_client_cannot_inject_into_cancel_or_end_a_stream(
    served_with_prefix: tuple[str, str, Conformance], nats_server: str
) -> None:
    """An attacker that opened a stream of its own learns the server's stream inbox; it must not
    reach the victim's stream through it (guessing the address or forging frames)."""
    url, prefix, _ = served_with_prefix
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
    served_with_prefix: tuple[str, str, Conformance], nats_server: str, value: str
) -> None:
    _, prefix, _ = served_with_prefix
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


# --- issue 17: forged statuses, log flooding, hopeless TLS ------------------------------------------


async def _drain(call: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in call]


async def _publish_raw(nats_url: str, subjects: list[str], header_block: bytes) -> None:
    """Publish, from a plain socket, a message with ``header_block`` and no body to each subject:
    the very bytes nats-server sends as its own "no responders" status (``NATS/1.0 503``)."""
    host, _, port = nats_url.removeprefix("nats://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        commands = [b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n']
        for subject in subjects:
            size = len(header_block)
            commands.append(b"HPUB %s %d %d\r\n%s\r\n" % (subject.encode(), size, size, header_block))
        writer.write(b"".join(commands) + b"PING\r\n")
        await writer.drain()
        while (line := await asyncio.wait_for(reader.readline(), 5)) != b"PONG\r\n":
            assert not line.startswith(b"-ERR"), line
    finally:
        writer.close()


async def _forge_no_responders(forger: Any, nats_url: str, subjects: list[str]) -> None:
    """Both spellings of "no responders", to every subject: a ``Status: 503`` header line (what a
    client library sends) and the inline status of nats-server's own."""
    for subject in subjects:
        await forger.publish(subject, b"", headers={"Status": "503"})
    await forger.flush()
    await _publish_raw(nats_url, subjects, b"NATS/1.0 503\r\n\r\n")


async def test_forged_no_responders_cannot_end_streams(
    served_with_prefix: tuple[str, str, Conformance], nats_server: str
) -> None:
    """A client that sees the calls (subscribe rights on the service and inbox subjects) sends
    "no responders" to both inboxes of every stream once they are bound: 10 server streams and 10
    bidi streams all finish, every message delivered."""
    url, prefix, _ = served_with_prefix
    forger = await nats.connect(nats_server)
    client_inboxes: list[str] = []
    server_inboxes: list[str] = []

    async def on_open(msg: Any) -> None:
        if msg.headers and msg.headers.get("Protobind-Frame") == "open":
            client_inboxes.append(msg.reply)

    async def on_inbox(msg: Any) -> None:
        if msg.headers and msg.headers.get("Protobind-Frame") == "accept" and msg.subject in client_inboxes:
            server_inboxes.append(msg.reply)

    await forger.subscribe(f"{prefix}{SERVICE}.*", cb=on_open)
    await forger.subscribe("_INBOX.>", cb=on_inbox)
    await forger.flush()
    try:
        async with protobind.connect(url) as channel:
            client = ConformanceServiceClient(channel)
            streams = [
                client.server_stream(
                    Request(text=f"s{i}", behavior=Behavior(stream_count=3, sleep_ms=300)), timeout=20
                )
                for i in range(10)
            ]
            firsts = [asyncio.ensure_future(anext(stream)) for stream in streams]
            queues = [asyncio.Queue[Request | None]() for _ in range(10)]

            async def requests(queue: asyncio.Queue[Request | None]) -> AsyncIterator[Request]:
                while (item := await queue.get()) is not None:
                    yield item

            bidis = [client.bidi_stream(requests(queue), timeout=20) for queue in queues]
            for i, queue in enumerate(queues):
                await queue.put(Request(text=f"b{i}-1"))
            assert [(await anext(bidi)).text for bidi in bidis] == [f"b{i}-1" for i in range(10)]
            await eventually(lambda: len(server_inboxes) == 20)
            assert len(client_inboxes) == 20 and len(server_inboxes) == 20
            await _forge_no_responders(forger, nats_server, client_inboxes + server_inboxes)

            for i, queue in enumerate(queues):
                await queue.put(Request(text=f"b{i}-2"))
                await queue.put(None)
            bidi_replies = [[reply.text for reply in await _drain(bidi)] for bidi in bidis]
            assert bidi_replies == [[f"b{i}-2"] for i in range(10)]
            indexes = [
                [(await first).index] + [r.index for r in await _drain(s)]
                for first, s in zip(firsts, streams, strict=True)
            ]
            assert indexes == [[0, 1, 2]] * 10
    finally:
        await forger.close()


async def test_forged_no_responders_cannot_end_a_long_unary_call(nats_server: str) -> None:
    """A forger answers each liveness probe of a long unary call with "no responders": the call
    still gets its reply (a server that is really gone is found by the probes left unanswered)."""
    service = Conformance()
    server = protobind.Server([service])
    prefix = f"probe{time.monotonic_ns()}."
    (url,) = await server.start(f"{nats_server}?prefix={prefix}&heartbeat=0.2")
    forger = await nats.connect(nats_server)
    forged = 0

    async def on_probe(msg: Any) -> None:
        nonlocal forged
        await forger.publish(msg.reply, b"", headers={"Status": "503"})
        forged += 1

    await forger.subscribe(f"{prefix}$PROTOBIND.PROBE", cb=on_probe)
    await forger.flush()
    try:
        async with protobind.connect(url) as channel:
            reply = await ConformanceServiceClient(channel).unary(
                Request(text="slow", behavior=Behavior(sleep_ms=1500)), timeout=20
            )
        assert reply.text == "slow"
        assert forged >= 2  # probes went out and were answered by the forger
    finally:
        await forger.close()
        await server.stop(0)


class _Msg:
    def __init__(self, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        self.subject = "_INBOX.client.token"
        self.reply = reply
        self.data = data
        self.headers = headers


async def test_forged_no_responders_cannot_replace_an_answer_already_received() -> None:
    """Before the server's peer is known (no accept yet), "no responders" ends the call only if
    nothing came from a server: after an error reply, a status that follows changes nothing."""
    from protobind.broker._stream import END, StreamState

    async def publish(*args: Any, **kwargs: Any) -> None:
        pass

    refused = StreamState("_INBOX.client.token", publish, lambda: 1 << 20, 8, 5.0)
    refusal = {"Protobind-Status": str(int(Code.RESOURCE_EXHAUSTED)), "Nats-Service-Error-Code": "429"}
    refused.feed(_Msg("", b"", refusal))
    refused.feed(_Msg("", b"", {"Status": "503"}))
    frame, msg = await refused.receive()
    assert frame == END and msg.headers == refusal

    # with nothing received yet, "no responders" is the broker saying no server took the open
    unanswered = StreamState("_INBOX.client.token2", publish, lambda: 1 << 20, 8, 5.0)
    unanswered.feed(_Msg("", b"", {"Status": "503"}))
    with pytest.raises(RpcError) as info:
        await unanswered.receive()
    assert info.value.code is Code.UNAVAILABLE


async def test_refused_messages_are_logged_at_a_bounded_rate_and_counted(
    nats_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """150 unauthenticated one-way messages, 150 that do not decode, 150 to 150 unknown methods:
    each kind is logged once (plus one line per subject up to the tracked limit), with its count,
    never one line per message; every one is counted, and in the telemetry's metric."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from protobind.auth import BearerAuth
    from protobind.broker._refusals import MAX_KEYS

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = protobind.Telemetry(tracing=False, meter_provider=meter_provider)
    server = protobind.Server(
        [Conformance()], interceptors=[BearerAuth(tokens=["s3cret"])], telemetry=telemetry
    )
    prefix = f"flood{time.monotonic_ns()}."
    await server.start(f"{nats_server}?prefix={prefix}")
    binding: Any = server.bindings[0]
    notify = f"{prefix}{SERVICE}.Notify"
    raw = await nats.connect(nats_server)
    n = 150
    try:
        with caplog.at_level(logging.WARNING, logger="protobind.broker"):
            for i in range(n):
                await raw.publish(notify, Request(text=f"no token {i}").SerializeToString())
                await raw.publish(notify, b"\xff\xff\xff\xff")
                await raw.publish(f"{prefix}{SERVICE}.Nope{i}", b"")
            await raw.flush()
            await eventually(lambda: binding.refusals.total >= 3 * n)
            assert binding.refusals.counts == {
                "UNAUTHENTICATED": n,
                "INVALID_ARGUMENT": n,
                "UNIMPLEMENTED": n,
            }
            during = [r for r in caplog.records if r.levelno >= logging.WARNING]
            # one line for each (subject, reason) tracked, one for the other subjects: not 450
            assert len(during) <= 2 + MAX_KEYS + 1, len(during)
            assert sum(f"{notify} failed: UNAUTHENTICATED" in r.getMessage() for r in during) == 1
            assert sum(f"{notify} failed: INVALID_ARGUMENT" in r.getMessage() for r in during) == 1
            caplog.clear()
            await server.stop(0)
            # what was only counted comes out, as counts, when the server stops
            closing = [r.getMessage() for r in caplog.records]
            assert any("UNAUTHENTICATED" in m and f"({n - 1} like it" in m for m in closing), closing
            assert any("INVALID_ARGUMENT" in m and f"({n - 1} like it" in m for m in closing), closing
            assert len(closing) <= 3
        data = reader.get_metrics_data()
        points = [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "protobind.server.refused_messages"
            for point in metric.data.data_points
        ]
        by_code = {p.attributes["rpc.response.status_code"]: p.value for p in points}
        assert by_code == {"UNAUTHENTICATED": n, "INVALID_ARGUMENT": n, "UNIMPLEMENTED": n}
        assert {p.attributes["messaging.system"] for p in points} == {"nats"}
    finally:
        await raw.close()
        await server.stop(0)
        meter_provider.shutdown()


async def test_refusal_log_counts_per_interval_and_forgets_quiet_subjects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from protobind.broker._refusals import OTHER_SUBJECTS, RefusalLog

    name = "protobind.test.refusals"
    log = RefusalLog(logging.getLogger(name), "on %s: %s: %s", interval=0.05, max_keys=2)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == name]

    with caplog.at_level(logging.WARNING, logger=name):
        for i in range(5):
            log.refused("a", "X", f"detail {i}")
        log.refused("a", "Y", "answered", answered=True)  # counted, not logged
        assert lines() == ["on a: X: detail 0"]
        await eventually(lambda: len(lines()) == 2)  # the interval's count, from the timer
        assert lines()[1].startswith("on a: X: detail 4 (4 like it in the last ")
        await eventually(lambda: not log._entries)  # quiet for an interval: forgotten
        log.refused("a", "X", "again")
        assert lines()[2] == "on a: X: again"  # logged at once again
        # two subjects tracked: the others share one entry per reason
        for subject in ("b", "c", "d", "e"):
            log.refused(subject, "X", subject)
        assert lines()[3:] == ["on b: X: b", f"on {OTHER_SUBJECTS}: X: c"]
        log.close()
        assert lines()[5:] == [f"on {OTHER_SUBJECTS}: X: e (2 like it in the last 0 s)"]
    assert log.total == 11 and log.counts == {"X": 10, "Y": 1}


async def test_untrusted_server_certificate_fails_at_once(nats_servers: NatsServers, tmp_path: Path) -> None:
    """A certificate the CA does not vouch for cannot pass on a retry: connect() and Server.start()
    fail at once with default options (not after the whole connection budget, 17 s)."""
    cert, key = self_signed(tmp_path)
    nats_url, _ = nats_servers.start(args=["--tls", "--tlscert", str(cert), "--tlskey", str(key)])
    url = "tls://" + nats_url.partition("://")[2]  # the system CAs do not trust a self-signed one
    started = time.monotonic()
    with pytest.raises(RpcError) as info:
        await asyncio.wait_for(protobind.connect(url).open(), 30)
    assert info.value.code is Code.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message
    assert time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.wait_for(protobind.Server([Conformance()]).start(url), 30)
    assert time.monotonic() - started < 3


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
