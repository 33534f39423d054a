"""The native gRPC engine's HPACK decoder (protobind/grpc/_h2.py) against the ``hpack`` package's
encoder: every representation a peer may use (indexed, literal with and without indexing, never
indexed, Huffman or not, dynamic table size updates and evictions) decodes to what was encoded,
block after block on one connection's table; the native server's reset budget ("rapid reset");
the option ``engine``."""

from __future__ import annotations

import asyncio
import contextlib
import random

import hpack
import pytest

import protobind
from protobind.conformance.v1.conformance_pb2 import Request
from protobind.conformance.v1.conformance_protobind import ConformanceServiceClient
from protobind.grpc import _h2 as h2

from .conformance import Conformance
from .h2raw import raw_h2
from .support import ROOT


def _blocks(seed: int) -> list[list[tuple[bytes, bytes]]]:
    rng = random.Random(seed)
    names = [b":path", b"content-type", b"grpc-timeout", b"x-trace-bin", b"user-agent", b"x-" + b"a" * 40]
    blocks = []
    for _ in range(200):
        fields = [(b":method", b"POST"), (b":scheme", b"http")]
        for _ in range(rng.randint(1, 8)):
            value = bytes(rng.choice(b"abcdefghij0123456789/-") for _ in range(rng.randint(0, 120)))
            fields.append((rng.choice(names), value))
        blocks.append(fields)
    return blocks


@pytest.mark.parametrize("huffman", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decoder_reads_what_hpack_encodes(seed: int, huffman: bool) -> None:
    encoder = hpack.Encoder()
    decoder = h2.HeaderBlock(limit=1 << 20)
    rng = random.Random(seed)
    for number, fields in enumerate(_blocks(seed)):
        if number % 50 == 25:
            encoder.header_table_size = rng.choice([0, 256, 4096])  # sends a size update
        sensitive = [hpack.NeverIndexedHeaderTuple(n, v) if rng.random() < 0.2 else (n, v) for n, v in fields]
        block = encoder.encode(sensitive, huffman=huffman)
        decoded, fits = decoder.decode(block)
        assert decoded == fields
        assert fits


def test_header_list_over_the_limit_is_reported_and_the_table_stays_in_step() -> None:
    encoder = hpack.Encoder()
    decoder = h2.HeaderBlock(limit=100)
    big = [(b"x-big", b"v" * 200)]
    assert decoder.decode(encoder.encode(big)) == (big, False)
    # the refused block was indexed by the encoder: the next block refers to it
    assert decoder.decode(encoder.encode(big)) == (big, False)
    small = [(b"x-small", b"v")]
    assert decoder.decode(encoder.encode(small)) == (small, True)


@pytest.mark.parametrize(
    "block",
    [b"\x80", b"\xff\xff\xff\xff\xff\xff\x7f", b"\x00\x05ab", b"\xbe", b"\x3f\xe2\x1f", b"\x00\x81\xff\x00"],
)
def test_undecodable_blocks_are_a_compression_error(block: bytes) -> None:
    with pytest.raises(h2.H2Error) as info:
        h2.HeaderBlock(limit=1 << 20).decode(block)
    assert info.value.code == h2.COMPRESSION_ERROR


async def test_a_connection_that_keeps_resetting_streams_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    """The native server counts the streams a connection resets before they were answered; past
    its budget (about 2,000 in a burst, "rapid reset") it sends GOAWAY ENHANCE_YOUR_CALM and
    closes the connection, while calls on other connections go on."""
    server = protobind.Server([Conformance()])
    (url,) = await server.start("grpc://127.0.0.1:0?engine=native")
    path = "/protobind.conformance.v1.ConformanceService/ClientStream"
    try:
        async with (
            protobind.connect(f"{url}?engine=native") as channel,
            raw_h2(int(url.rsplit(":", 1)[1])) as attacker,
        ):
            ended = False
            # a client-streaming call starts its handler at once: each reset cancels a running call;
            # bursts of 500, so that a loaded machine (the budget halves every second) still sends
            # them faster than the budget drains (at most 30,000 resets)
            for _ in range(60):
                try:
                    for _ in range(500):
                        attacker.reset(attacker.open(path, None, end=False))
                    await attacker.flush()
                    data = b""
                    with contextlib.suppress(asyncio.TimeoutError):
                        data = await asyncio.wait_for(attacker.reader.read(65536), 0.05)
                    for event in attacker.conn.receive_data(data):
                        attacker._on(event)
                except ConnectionError:
                    ended = True
                    break
                if attacker.terminated is not None:
                    ended = True
                    break
            assert ended
            assert attacker.terminated in (None, h2.ENHANCE_YOUR_CALM)  # None: the close came first
            assert "reset too many streams" in caplog.text
            reply = await ConformanceServiceClient(channel).unary(Request(text="after"), timeout=5)
            assert reply.text == "after"
    finally:
        await server.stop(0)


async def test_engine_option_is_checked_and_native_refuses_channel_args() -> None:
    server = protobind.Server([Conformance()])
    with pytest.raises(ValueError, match="expected one of native, grpcio"):
        await server.start("grpc://127.0.0.1:0?engine=grpclib")
    args = {"engine": "native", "channel_args": [("grpc.keepalive_time_ms", 1000)]}
    refused = r"channel_args .*needs the grpcio engine, but engine=native was chosen: use engine=grpcio"
    with pytest.raises(ValueError, match=refused):
        await protobind.Server([Conformance()], transport_options={"grpc": args}).start("grpc://127.0.0.1:0")
    with pytest.raises(ValueError, match=refused):
        await protobind.connect("grpc://127.0.0.1:1", options=args).open()
    assert server.bindings == []


def test_the_engine_is_native_unless_grpcio_is_chosen_or_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Native by default; grpcio by the option ``engine``, by PROTOBIND_GRPC_ENGINE, or by an option
    only grpcio has (channel_args) given without a choice of engine. A choice of native with such
    an option is refused, naming the option, whichever way native was chosen."""
    from protobind.grpc._options import client_options, parse_address, server_options

    monkeypatch.delenv("PROTOBIND_GRPC_ENGINE", raising=False)
    address = parse_address("grpc://127.0.0.1:0", need_port=True)
    core = {"channel_args": [("grpc.keepalive_time_ms", 1000)]}
    for parse in (server_options, client_options):
        assert parse(address, {}).engine == "native"
        assert parse(address, {"engine": "grpcio"}).engine == "grpcio"
        assert parse(address, core).engine == "grpcio"
        assert parse(address, {"channel_args": []}).engine == "native"  # nothing given
    monkeypatch.setenv("PROTOBIND_GRPC_ENGINE", "grpcio")
    assert server_options(address, {}).engine == "grpcio"
    assert server_options(address, {"engine": "native"}).engine == "native"  # the option wins
    monkeypatch.setenv("PROTOBIND_GRPC_ENGINE", "native")
    with pytest.raises(ValueError, match=r"channel_args .*PROTOBIND_GRPC_ENGINE=native was chosen"):
        client_options(address, core)
    assert client_options(address, {**core, "engine": "grpcio"}).engine == "grpcio"


async def test_default_server_and_client_are_native_and_channel_args_select_grpcio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a plain grpc:// URL starts, and what a config with grpc core channel arguments starts
    (it kept working as it did when grpcio was the default)."""
    from protobind.grpc._native_client import NativeTransport
    from protobind.grpc._native_server import NativeBinding
    from protobind.grpc._server import GrpcBinding

    monkeypatch.delenv("PROTOBIND_GRPC_ENGINE", raising=False)
    plain = protobind.Server([Conformance()])
    core = protobind.Server(
        [Conformance()], transport_options={"grpc": {"channel_args": [("grpc.keepalive_time_ms", 60_000)]}}
    )
    (plain_url,) = await plain.start("grpc://127.0.0.1:0")
    (core_url,) = await core.start("grpc://127.0.0.1:0")
    try:
        assert isinstance(plain.bindings[0], NativeBinding)
        assert isinstance(core.bindings[0], GrpcBinding)
        for url in (plain_url, core_url):
            async with protobind.connect(url) as channel:
                assert isinstance(channel._transport, NativeTransport)
                reply = await ConformanceServiceClient(channel).unary(Request(text="hi"), timeout=5)
                assert reply.text == "hi"
    finally:
        await plain.stop(0)
        await core.stop(0)


def test_the_grpcio_only_options_are_documented_as_such() -> None:
    """docs/protocols.md's option table marks every option of GRPCIO_ONLY_OPTIONS (the one table
    the engine choice reads) as the grpcio engine's, and no other."""
    from protobind.grpc._options import CLIENT_OPTIONS, GRPCIO_ONLY_OPTIONS, SERVER_OPTIONS

    text = (ROOT / "docs" / "protocols.md").read_text()
    section = text[text.index("## gRPC (`grpc://`") : text.index("<!-- section: http")]
    marked = {
        line.split("|")[1].strip().strip("`")
        for line in section.splitlines()
        if line.startswith("| `") and "grpcio engine only" in line
    }
    assert marked == set(GRPCIO_ONLY_OPTIONS)
    assert set(GRPCIO_ONLY_OPTIONS) <= SERVER_OPTIONS & CLIENT_OPTIONS
