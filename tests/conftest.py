"""Shared fixtures: generated code for the test contracts, real servers on 127.0.0.1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .support import ROOT

GEN = ROOT / "tests" / ".gen"

# Contracts compiled once per session into tests/.gen (git-ignored) and importable by the tests.
PROTO_ROOTS = [
    ROOT / "examples" / "greeter" / "proto",
    ROOT / "examples" / "route_guide" / "proto",
    ROOT / "tests" / "protos" / "rest",
    ROOT / "tests" / "protos" / "durable",
    ROOT / "tests" / "protos" / "jsonfast",
]


def _generate() -> None:
    """Compile the contracts once; pytest-xdist's workers import this file at the same time, so one
    generates under a lock and the others find the stamp of what it compiled."""
    import fcntl
    import hashlib

    from protobind_codegen.generate import generate

    inputs = sorted(p for root in PROTO_ROOTS for p in root.rglob("*.proto"))
    inputs += sorted((ROOT / "codegen" / "protobind_codegen").rglob("*.[pj]*"))
    digest = hashlib.sha256(b"".join(str(p).encode() + p.read_bytes() for p in inputs)).hexdigest()
    GEN.mkdir(parents=True, exist_ok=True)
    stamp = GEN / ".stamp"
    with open(GEN.parent / ".gen.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == digest:
            return
        for root in PROTO_ROOTS:
            generate([str(root)], str(GEN), [str(root)])
        stamp.write_text(digest)


_generate()
sys.path.insert(0, str(GEN))

pytest_plugins = [
    "tests.hang_report",
    "tests.servers",
    "tests.nats_server",
    "tests.mosquitto",
    "tests.rabbitmq",
    "tests.kafka_broker",
]


@pytest.fixture(scope="session")
def gen_dir() -> Path:
    return GEN


def _slow_tests() -> frozenset[str]:
    lines = (ROOT / "tests" / "slow_tests.txt").read_text().splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


SLOW_TESTS = _slow_tests()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` the tests listed in tests/slow_tests.txt (measured over 2 s), so that
    ``-m "not slow"`` is the fast subset (CONTRIBUTING.md)."""
    for item in items:
        if item.nodeid.split("[", 1)[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
