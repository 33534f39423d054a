"""Private RabbitMQ nodes for the durable and fault tests (never the machine's shared broker).

Each is a ``rabbitmq-server`` process (run directly, not through the wrapper that would switch to
the ``rabbitmq`` user) with a node name, ports, data and log directories of its own, no plugins,
on 127.0.0.1. It registers with the machine's epmd under its unique name (epmd is left alone). It
can be stopped (or killed) and started again on the same ports with its data, and is stopped when
the test (or the session) ends. A node takes many seconds to boot: tests that start one of their
own are marked ``slow``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import free_port, require

RABBITMQ = os.environ.get("PROTOBIND_RABBITMQ", "/usr/lib/rabbitmq/bin/rabbitmq-server")
_BOOT = 120.0


def available() -> bool:
    return Path(RABBITMQ).exists()


class RabbitMQ:
    """One private node; ``url`` is where to reach it. ``consumer_timeout`` (seconds): RabbitMQ
    closes a channel that holds a delivery unacknowledged longer, looking every tenth of it."""

    def __init__(self, directory: Path, consumer_timeout: float | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"protobind-{secrets.token_hex(4)}@localhost"
        (directory / "mnesia").mkdir(parents=True, exist_ok=True)
        (directory / "log").mkdir(exist_ok=True)
        (directory / "plugins").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        advanced = "[].\n"
        if consumer_timeout is not None:
            milliseconds = max(1, int(consumer_timeout * 1000))
            tick = max(1, milliseconds // 10)
            advanced = (
                f"[{{rabbit, [{{consumer_timeout, {milliseconds}}}, {{channel_tick_interval, {tick}}}]}}].\n"
            )
        (directory / "advanced.config").write_text(advanced)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        directory = self.directory
        return {
            **os.environ,
            "HOME": str(directory),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(directory / "feature_flags"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        }

    def start(self) -> None:
        # A node that fails before its logger starts (a port already in use) says why only on its
        # console: kept in a file of the node's directory for the error below.
        console = self.directory / "console.out"
        with open(console, "ab") as out:
            self.process = subprocess.Popen(
                [RABBITMQ],
                env=self._env(),
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + _BOOT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                logs = [console, *(self.directory / "log").glob("*.log")]
                log = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs)
                raise RuntimeError(f"rabbitmq-server exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError("rabbitmq-server did not start listening in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the node (SIGTERM: a clean stop; SIGKILL: as if the machine died). The whole process
        group goes: the Erlang VM and its port programs."""
        process = self.process
        self.process = None
        if process is None or process.poll() is not None:
            return
        with _suppress():
            os.killpg(process.pid, sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return kind is ProcessLookupError


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[str]:
    """One private node for the session (the durable suite's: its queues go with it)."""
    require(available(), f"rabbitmq-server at {RABBITMQ}")
    directory = Path(tempfile.mkdtemp(prefix="protobind-rabbitmq-"))
    node = RabbitMQ(directory)
    try:
        node.start()
        yield node.url
    finally:
        node.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def rabbitmq_factory(tmp_path: Path) -> Iterator[object]:
    """``make(**options)`` starts a private node for this test (options: those of
    :class:`RabbitMQ`); all are stopped afterwards."""
    require(available(), f"rabbitmq-server at {RABBITMQ}")
    started: list[RabbitMQ] = []

    def make(**options: Any) -> RabbitMQ:
        node = RabbitMQ(tmp_path / f"rabbitmq{len(started)}", **options)
        node.start()
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()
