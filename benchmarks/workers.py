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
import subprocess
import sys
import time
from typing import Any

from .run import ROOT, cpu_seconds, fmt, nats_server, summarize, write_results

METRICS = ("calls_per_s", "server_cpu_us")
KINDS = {"grpc": "protobind-grpc", "http": "protobind-http-proto", "nats": "protobind-nats"}


def _serve(
    transport: str, workers: int, nats_url: str | None
) -> tuple[subprocess.Popen[str], str, list[int]]:
    """The server, its URL and the pids of the processes that serve (the workers)."""
    url = nats_url if transport == "nats" else f"{transport}://127.0.0.1:0"
    assert url is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "protobind", "serve", "benchmarks.peers:Echo",
         "--workers", str(workers), "--bind", url],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"protobind serve did not start: {line!r}")
    pids = [proc.pid] if workers == 1 else [int(p) for p in proc.stdout.readline().split("pids")[-1].split()]
    return proc, line.split(" on ")[-1].strip(), pids


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(transport: str, workers: int, args: argparse.Namespace, nats_url: str | None) -> dict[str, float]:
    """Summed calls/s of the clients, and the CPU the workers spent per call."""
    proc, url, pids = _serve(transport, workers, nats_url)
    try:
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        command = [
            sys.executable, "-m", "benchmarks.drive", KINDS[transport], url,
            "--payload", str(args.payload), "--concurrency", str(args.concurrency),
            "--duration", str(args.duration), "--sequential", "50", "--channels", str(args.channels),
        ]  # fmt: skip
        drivers = [
            subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(args.clients)
        ]
        calls_per_s, calls = 0.0, 0
        for driver in drivers:
            out, err = driver.communicate(timeout=args.duration * 4 + 120)
            lines = out.strip().splitlines()
            if not lines or not lines[-1].startswith("{"):
                raise RuntimeError(f"client failed ({driver.returncode}):\n{err[-2000:]}")
            result = json.loads(lines[-1])
            calls_per_s += result["calls_per_s"]
            calls += result["calls"]
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
        return {"calls_per_s": calls_per_s, "server_cpu_us": cpu / calls * 1e6}
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
            samples: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
            for round_no in range(args.rounds):
                for n in counts if round_no % 2 == 0 else counts[::-1]:
                    samples[n].append(measure(transport, n, args, nats_url))
                    time.sleep(0.2)
            summary = {
                n: {metric: summarize([s[metric] for s in values]) for metric in METRICS}
                for n, values in samples.items()
            }
            results["transports"][transport] = {str(n): figures for n, figures in summary.items()}
            print(f"\n## {transport}  ({args.clients} client processes x {args.concurrency} in flight)")
            base = summary[counts[0]]["calls_per_s"]["median"]
            for n, figures in summary.items():
                ratio = figures["calls_per_s"]["median"] / base
                print(
                    f"{n} worker(s): {fmt(figures['calls_per_s'])} calls/s  {ratio:.2f}x"
                    f"   server CPU {fmt(figures['server_cpu_us'])} µs/call"
                )
            sys.stdout.flush()
    finally:
        stop_nats()
    write_results(args.json, results)


if __name__ == "__main__":
    main()
