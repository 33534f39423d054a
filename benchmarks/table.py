"""Print a run's results (``benchmarks/results/latest.json``) as the Markdown table of
benchmarks/README.md: ``python -m benchmarks.table [results.json]``.

One row per pair and payload: both sides' calls/s (median [min-max] of the rounds), the ratio of
the medians, the median [range] of the ratios taken within each round, and the server CPU per call
of each side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _calls(figures: dict[str, Any]) -> str:
    c = figures["calls_per_s"]
    return f"{c['median']:,.0f} [{c['min']:,.0f}-{c['max']:,.0f}]"


def _cpu(figures: dict[str, Any]) -> str:
    return f"{figures['server_cpu_us']['median']:,.0f}" if "server_cpu_us" in figures else "-"


def render(results: dict[str, Any]) -> str:
    lines = []
    machine = results.get("machine", {})
    found = results.get("versions", {})
    lines.append(
        f"Python {machine.get('python', '?')}, {machine.get('cpus', '?')} CPUs, load average "
        f"{machine.get('load', float('nan')):.1f} at the start; "
        + ", ".join(f"{name} {version}" for name, version in found.items())
        + "."
    )
    lines.append("")
    lines.append(
        "| pair | payload | protobind calls/s | peer | peer calls/s | ratio (medians) "
        "| ratio per round | server CPU µs/call (protobind / peer) |"
    )
    lines.append("|---|---:|---:|---|---:|---:|---:|---:|")
    for entry in results["pairs"]:
        if "error" in entry:  # a pair that failed: the run went on without it
            error = entry["error"].replace("|", "/")
            lines.append(f"| {entry['pair']} | {entry['payload']:,} B | failed: {error} | | | | | |")
            continue
        names = list(entry["peers"])
        ours = entry["peers"][names[0]]
        if len(names) < 2:
            continue
        peer = entry["peers"][names[1]]
        r = entry["round_throughput_ratio"]
        lines.append(
            f"| {entry['pair']} | {entry['payload']:,} B | {_calls(ours)} | {names[1]} | {_calls(peer)} "
            f"| **{entry['throughput_ratio']:.2f}x** | {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}] "
            f"| {_cpu(ours)} / {_cpu(peer)} |"
        )
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results" / "latest.json"
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
