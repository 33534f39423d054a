"""Throughput of ``protobind serve --workers N``: the same server with 1 and with 2 workers.

    python -m benchmarks.workers                        # grpc, http, nats; 1 and 2 workers; 3 rounds
    python -m benchmarks.workers --only http --workers 1,2 --clients 2

The server is the real command (``protobind serve benchmarks.peers:Echo --workers N``); the load
comes from ``--clients`` client processes (benchmarks/drive.py) running at once, each keeping
``--concurrency`` calls in flight over ``--channels`` connections (so the kernel can spread gRPC
and HTTP connections over the workers; NATS spreads calls through the queue group). Reported:
the summed calls/s, median over rounds with [min-max], and the ratio to 1 worker.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from .run import ROOT, nats_server, write_results

KINDS = {"grpc": "protobind-grpc", "http": "protobind-http-proto", "nats": "protobind-nats"}


def _serve(transport: str, workers: int, nats_url: str | None) -> tuple[subprocess.Popen[str], str]:
    url = nats_url if transport == "nats" else f"{transport}://127.0.0.1:0"
    assert url is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "protobind_codegen.cli", "serve", "benchmarks.peers:Echo",
         "--workers", str(workers), "--bind", url],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"protobind serve did not start: {line!r}")
    return proc, line.split(" on ")[-1].strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(transport: str, workers: int, args: argparse.Namespace, nats_url: str | None) -> float:
    proc, url = _serve(transport, workers, nats_url)
    try:
        command = [
            sys.executable, "-m", "benchmarks.drive", KINDS[transport], url,
            "--payload", str(args.payload), "--concurrency", str(args.concurrency),
            "--duration", str(args.duration), "--sequential", "50", "--channels", str(args.channels),
        ]  # fmt: skip
        drivers = [
            subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(args.clients)
        ]
        total = 0.0
        for driver in drivers:
            out, err = driver.communicate(timeout=args.duration * 4 + 120)
            lines = out.strip().splitlines()
            if not lines or not lines[-1].startswith("{"):
                raise RuntimeError(f"client failed ({driver.returncode}):\n{err[-2000:]}")
            total += json.loads(lines[-1])["calls_per_s"]
        return total
    finally:
        _stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", default="grpc,http,nats", help="transports, comma-separated")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight per client")
    parser.add_argument("--clients", type=int, default=2, help="client processes at once")
    parser.add_argument("--channels", type=int, default=8, help="connections per client")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "workers.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    transports = [t for t in args.only.split(",") if t]
    nats_url, stop_nats = nats_server("nats" in transports)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "args": vars(args), "transports": {}}
    try:
        for transport in transports:
            samples: dict[int, list[float]] = {n: [] for n in counts}
            for round_no in range(args.rounds):
                for n in counts if round_no % 2 == 0 else counts[::-1]:
                    samples[n].append(measure(transport, n, args, nats_url))
                    time.sleep(0.2)
            medians = {n: statistics.median(v) for n, v in samples.items()}
            results["transports"][transport] = {
                str(n): {"median": medians[n], "min": min(v), "max": max(v)} for n, v in samples.items()
            }
            print(f"\n## {transport}  ({args.clients} client processes x {args.concurrency} in flight)")
            for n, values in samples.items():
                ratio = medians[n] / medians[counts[0]]
                print(
                    f"{n} worker(s): {medians[n]:,.0f} calls/s [{min(values):,.0f}-{max(values):,.0f}]"
                    f"  {ratio:.2f}x"
                )
            sys.stdout.flush()
    finally:
        stop_nats()
    write_results(args.json, results)


if __name__ == "__main__":
    main()
