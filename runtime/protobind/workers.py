"""``protobind serve --workers N``: N processes serving the same URLs, one core each.

Each worker is a fresh Python process (``multiprocessing``'s spawn: nothing of the parent's state
is inherited) that imports the services by ``MODULE:ATTR`` and runs its own :class:`Server`. They
share the work the way each transport shares it between replicas: the transports whose servers take
the ``reuse_port`` option (gRPC and HTTP) listen on one port with ``SO_REUSEPORT`` (the kernel
spreads new connections over the workers), NATS subscribes every
worker in the same queue group (the server spreads calls). A port 0 is resolved once, in the
parent, by a socket that holds the port (bound, never listening) while the workers run.

The parent only supervises: SIGINT or SIGTERM is passed on to every worker as SIGTERM, each stops
as a single server does (refuses new calls, in-flight calls get the grace period), and workers
still running ``grace + 5`` seconds later are killed. A worker that dies stops the others too: the
process supervisor (systemd, Kubernetes, ...) restarts the whole group.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .telemetry import Telemetry
    from .transport import Transport

__all__ = ["ServeSpec", "serve_workers"]

#: The server option by which a transport declares that processes can share its listening port
#: (SO_REUSEPORT): the workers share the port of those transports.
_SHARED_PORT_OPTION = "reuse_port"
# Time a worker gets beyond the grace period before it is killed.
_KILL_AFTER = 5.0


@dataclass(frozen=True)
class ServeSpec:
    """What every worker serves: plain data, sent to the spawned processes."""

    services: tuple[str, ...]  # MODULE:ATTR
    urls: tuple[str, ...]
    transport_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grace: float = 5.0
    loop: str = "asyncio"
    sys_path: tuple[str, ...] = ()  # prepended to sys.path in the worker
    telemetry: Telemetry | None = None
    max_oneway: int = 1024
    access_log: bool = False
    log_level: str | None = None  # set up logging in the worker (protobind._access_log.setup_logging)


def _shared_port_transports() -> list[Transport]:
    """The registered transports whose servers take the shared-port option."""
    from .transport import all_transports

    return [t for t in all_transports() if _SHARED_PORT_OPTION in t.server_options]


def _reserve(url: str) -> tuple[str, socket.socket | None]:
    """``url`` with a real port, and the socket holding that port when it was 0."""
    parts = urlsplit(url)
    shared = {scheme for transport in _shared_port_transports() for scheme in transport.schemes}
    if parts.scheme not in shared or parts.port not in (None, 0):
        return url, None
    host = parts.hostname or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{shown}:{port}" if userinfo else f"{shown}:{port}"
    return parts._replace(netloc=netloc).geturl(), sock


def _worker(spec: ServeSpec, conn: Connection) -> None:
    """A worker process: serve ``spec`` until SIGTERM; report the bound URLs or the failure."""
    sys.path[:0] = spec.sys_path
    from ._server import Server
    from .config import load_service

    options = {name: dict(values) for name, values in spec.transport_options.items()}
    for transport in _shared_port_transports():
        options.setdefault(transport.name, {})[_SHARED_PORT_OPTION] = True
    try:
        server = Server(
            [load_service(s) for s in spec.services],
            transport_options=options,
            telemetry=spec.telemetry,
            max_oneway=spec.max_oneway,
            access_log=spec.access_log,
        )
        if spec.log_level is not None:
            from ._access_log import setup_logging

            setup_logging(spec.log_level)
        server.run(*spec.urls, loop=spec.loop, grace=spec.grace, on_start=lambda urls: conn.send(urls))
    except Exception as exc:
        conn.send(str(exc) or type(exc).__name__)
        sys.exit(1)


def serve_workers(
    spec: ServeSpec,
    workers: int,
    on_start: Callable[[list[str], list[int]], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> int:
    """Run ``workers`` processes serving ``spec`` until SIGINT/SIGTERM; return the exit code
    (0 when every worker stopped cleanly). ``on_start`` gets the URLs and the workers' pids once
    every worker serves; a worker that fails to start fails the whole group (``RuntimeError``)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError("more than one worker needs SO_REUSEPORT, which this system lacks")
    held: list[socket.socket] = []
    urls = []
    for url in spec.urls:
        real, sock = _reserve(url)
        urls.append(real)
        if sock is not None:
            held.append(sock)
    spec = dataclasses.replace(spec, urls=tuple(urls))
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    try:
        pipes = []
        for index in range(workers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker, args=(spec, sender), name=f"protobind-worker-{index}", daemon=False
            )
            process.start()
            sender.close()
            processes.append(process)
            pipes.append(receiver)
        bound = _wait_ready(processes, pipes, lambda: stopping)
        if bound is not None and on_start is not None:
            on_start(bound, [p.pid for p in processes])
        while not stopping and all(p.is_alive() for p in processes):
            wait([p.sentinel for p in processes], timeout=0.5)
        if on_stop is not None:
            on_stop()
        return _stop_all(processes, spec.grace, failed=not stopping)
    finally:
        _stop_all(processes, spec.grace, failed=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in held:
            sock.close()


def _wait_ready(
    processes: list[Any], pipes: list[Connection], stopping: Callable[[], bool]
) -> list[str] | None:
    """The URLs the workers bound, once each reported; ``None`` when a stop signal came first."""
    bound: list[str] | None = None
    waiting = dict(zip(pipes, processes, strict=True))
    while waiting and not stopping():
        for ready in wait([*waiting, *(p.sentinel for p in waiting.values())], timeout=0.5):
            if not isinstance(ready, Connection):
                continue  # a sentinel: the worker's pipe is readable too (its message, or EOF)
            try:
                message = ready.recv()
            except EOFError:
                message = "a worker exited before serving"
            if isinstance(message, str):
                raise RuntimeError(message)
            bound = bound or message
            del waiting[ready]
    return None if stopping() else bound


def _stop_all(processes: list[Any], grace: float, *, failed: bool) -> int:
    """SIGTERM every worker still running, wait for them, kill the stragglers; the exit code."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace + _KILL_AFTER
    code = 1 if failed else 0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
            code = 1
        elif process.exitcode != 0:
            code = 1
    return code
