"""Shared fixtures: generated code for the test contracts, real servers on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "tests" / ".gen"

# Contracts compiled once per session into tests/.gen (git-ignored) and importable by the tests.
PROTO_ROOTS = [
    ROOT / "examples" / "greeter" / "proto",
    ROOT / "examples" / "route_guide" / "proto",
    ROOT / "tests" / "protos" / "rest",
    ROOT / "tests" / "protos" / "durable",
]


def _generate() -> None:
    from protobind_codegen.generate import generate

    for root in PROTO_ROOTS:
        generate([str(root)], str(GEN), [str(root)])


_generate()
sys.path.insert(0, str(GEN))

pytest_plugins = ["tests.servers", "tests.nats_server", "tests.kafka_broker"]


@pytest.fixture(scope="session")
def gen_dir() -> Path:
    return GEN


def example_greeter() -> object:
    """An instance of examples/greeter's Greeter implementation."""
    path = str(ROOT / "examples" / "greeter")
    sys.path.insert(0, path)
    try:
        from service import Greeter
    finally:
        sys.path.remove(path)
    return Greeter()
