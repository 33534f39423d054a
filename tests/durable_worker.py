"""A Jobs server in a process of its own, for tests that kill it:
``python -m tests.durable_worker URL LOG``.

Each handled ``Submit`` call appends ``<message id> <attempt> <monotonic time>`` to LOG (one
``write`` per line, so a line is in the kernel's hands before the call is acknowledged, and a
SIGKILL loses no line). Prints ``READY`` once serving; stops on SIGTERM.
Tests start it with ``Worker`` and read its log with ``handled``; ``kill_a_worker_mid_run`` is the
run every durable broker's suite makes with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / ".gen"))

from google.protobuf.empty_pb2 import Empty
from jobs.v1.jobs_pb2 import Job
from jobs.v1.jobs_protobind import JOBS_SUBMIT, JobsService

import protobind
from protobind.durable import DurableCalls

from .support import eventually


class Recording(JobsService):
    def __init__(self, log: str) -> None:
        self.fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def submit(self, request: Job, context: protobind.Context) -> Empty:
        if request.work:
            await asyncio.sleep(request.work)
        delivery = context.delivery
        assert delivery is not None
        os.write(self.fd, f"{delivery.message_id} {delivery.attempt} {time.monotonic():.6f}\n".encode())
        return Empty()


async def main(url: str, log: str) -> None:
    server = protobind.Server([Recording(log)])
    await server.start(url)
    print("READY", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


class Worker:
    """This module in a process of its own, started from a test."""

    def __init__(self, url: str, log: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.durable_worker", url, str(log)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != b"READY":
            self.process.kill()
            raise AssertionError(f"worker did not start: {line!r}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


def handled(log: Path) -> list[tuple[str, int, float]]:
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [(mid, int(attempt), float(at)) for mid, attempt, at in (line.split() for line in lines)]


@dataclass
class KillRun:
    """What ``kill_a_worker_mid_run`` saw."""

    accepted: list[str]  #: the message ids of the calls the broker accepted
    handled_before_kill: int
    killed_at: float  #: time.monotonic() at the kill
    lines: list[tuple[str, int, float]]  #: the log, once every accepted call was handled


async def kill_a_worker_mid_run(url: str, log: Path, calls: int, kill_after: int, timeout: float) -> KillRun:
    """Submit ``calls`` durable calls (producers of 100 calls each, at once) to a ``Worker`` on
    ``url``; SIGKILL it once ``kill_after`` are handled (the calls in its hands unacknowledged) and
    start another on the same URL; return once every accepted call is in ``log``."""
    workers = [Worker(url, log)]
    try:
        accepted: list[str] = []
        async with protobind.connect(url) as channel:
            durable = DurableCalls(channel)

            async def produce(start: int) -> None:
                for i in range(start, start + 100):
                    accepted.append(await durable.submit(JOBS_SUBMIT, Job(id=str(i), work=0.005)))

            producers = asyncio.gather(*(produce(n * 100) for n in range(calls // 100)))
            await eventually(lambda: len(handled(log)) >= kill_after, timeout=60)
            workers[0].kill()
            killed_at = time.monotonic()
            before = len(handled(log))
            workers.append(Worker(url, log))
            await producers
            await eventually(lambda: {mid for mid, _, _ in handled(log)} >= set(accepted), timeout=timeout)
        return KillRun(accepted, before, killed_at, handled(log))
    finally:
        for worker in workers:
            worker.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
