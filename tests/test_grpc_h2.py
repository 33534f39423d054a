"""The native gRPC engine's HPACK decoder (protobind/grpc/h2.py) against the ``hpack`` package's
encoder: every representation a peer may use (indexed, literal with and without indexing, never
indexed, Huffman or not, dynamic table size updates and evictions) decodes to what was encoded,
block after block on one connection's table."""

from __future__ import annotations

import random

import hpack
import pytest

from protobind.grpc import h2


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
