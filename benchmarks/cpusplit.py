"""Where a broker call's CPU goes: client, server and nats-server, per call, in the steady state.

    python -m benchmarks.cpusplit --kinds protobind-nats,faststream-nats --payload 16384

For each kind: a nats-server of its own, the kind's server (``benchmarks/serve.py``) and one
client (``benchmarks/drive.py``, 64 calls in flight for ``--duration`` seconds). After ``--settle``
seconds (start-up, warm-up and the single sequential call are over), the CPU time of the three
processes (user + system, /proc) and the machine's idle share (/proc/stat) are read over a window
of ``--window`` seconds; CPU per call is that time over the calls made in the window (the client's
calls/s times the window: an estimate, since calls/s covers the whole run). On a machine with
fewer cores than busy processes the sum of the three is what bounds calls/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .run import ROOT, _start_server, _stop_server, cpu_seconds


def _stat() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def split(kind: str, payload: int, duration: float, settle: float, window: float) -> dict[str, float]:
    from protobind.nats.embedded import start_nats_server

    nats_url, stop_nats = start_nats_server()
    try:
        server, url = _start_server(kind, nats_url)
        try:
            drive = ["benchmarks.drive", kind, url, "--payload", str(payload), "--concurrency", "64"]
            client = subprocess.Popen(
                [sys.executable, "-m", *drive, "--sequential", "1", "--duration", str(duration)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            pids = (client.pid, server.pid, stop_nats.process.pid)
            time.sleep(settle)
            before, cpu_before, started = _stat(), [cpu_seconds(p) for p in pids], time.perf_counter()
            time.sleep(window)
            after, cpu_after = _stat(), [cpu_seconds(p) for p in pids]
            elapsed = time.perf_counter() - started
            out, _ = client.communicate(timeout=duration + 60)
        finally:
            _stop_server(server)
    finally:
        stop_nats()
    rate = float(json.loads(out.strip().splitlines()[-1])["calls_per_s"])
    ticks = [b - a for a, b in zip(before, after, strict=True)]
    calls = rate * elapsed
    used = [(b - a) / calls * 1e6 for a, b in zip(cpu_before, cpu_after, strict=True)]
    return {
        "calls_per_s": rate,
        "client_us": used[0],
        "server_us": used[1],
        "nats_server_us": used[2],
        "idle": ticks[3] / sum(ticks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--kinds", default="protobind-nats,faststream-nats")
    parser.add_argument("--payload", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of each client run")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before the window opens")
    parser.add_argument("--window", type=float, default=3.0)
    args = parser.parse_args()
    print("kind                 calls/s   CPU µs per call: client  server  nats-server  total   idle")
    for _ in range(args.rounds):
        for kind in args.kinds.split(","):
            r = split(kind, args.payload, args.duration, args.settle, args.window)
            total = r["client_us"] + r["server_us"] + r["nats_server_us"]
            print(
                f"{kind:<20} {r['calls_per_s']:>8,.0f}   {r['client_us']:>22.1f} {r['server_us']:>7.1f}"
                f" {r['nats_server_us']:>12.1f} {total:>6.1f} {r['idle']:>6.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
