"""Private Mosquitto brokers for the MQTT fault, auth and TLS tests (never the machine's shared one).

Each is a ``/usr/sbin/mosquitto`` process on a free port of 127.0.0.1 with its own configuration
and persistence directory; it can be killed and started again on the same port (its stored
sessions and messages survive when persistence is on), and is stopped when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import free_port, require

MOSQUITTO = os.environ.get("PROTOBIND_MOSQUITTO", "/usr/sbin/mosquitto")


class Mosquitto:
    """One private broker; ``url`` is where to reach it."""

    def __init__(self, directory: Path, *, extra: str = "", persistence: bool = True) -> None:
        self.directory = directory
        self.port = free_port()
        self.scheme = "mqtts" if "certfile" in extra else "mqtt"
        self.config = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true" if "password_file" not in extra else "allow_anonymous false",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {directory}/",
            "log_dest none",
            # as root, mosquitto would switch to its own user, who cannot read pytest's private dirs
            "user root" if os.geteuid() == 0 else "",
            "max_queued_messages 100000",
            extra,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reason = self.process.stderr.read().decode()  # type: ignore[union-attr]
                self.stop()
                raise RuntimeError(f"mosquitto exited: {reason}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()  # neither the process nor its pipe outlives the failed start
        raise RuntimeError("mosquitto did not start listening in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its persistent state; SIGKILL loses what it did not save)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process is not None and process.stderr is not None:
            process.stderr.close()
        self.process = None


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[object]:
    """``make(extra="", persistence=True)`` starts a private broker; all are stopped afterwards."""
    require(bool(shutil.which(MOSQUITTO)) or Path(MOSQUITTO).exists(), f"mosquitto binary at {MOSQUITTO}")
    started: list[Mosquitto] = []

    def make(extra: str = "", persistence: bool = True) -> Mosquitto:
        directory = tmp_path / f"mosquitto{len(started)}"
        directory.mkdir()
        broker = Mosquitto(directory, extra=extra, persistence=persistence)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: object) -> Mosquitto:
    """One private broker with persistence."""
    return mosquitto_factory()  # type: ignore[operator, no-any-return]


@pytest.fixture(scope="session")
def durable_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private broker for the durable suite: its persistent sessions and retained messages go
    with it (the machine's broker is left as it was)."""
    require(bool(shutil.which(MOSQUITTO)) or Path(MOSQUITTO).exists(), f"mosquitto binary at {MOSQUITTO}")
    broker = Mosquitto(tmp_path_factory.mktemp("durable-mosquitto"), persistence=False)
    broker.start()
    yield broker
    broker.stop()
