"""Connectivity cost: the bytes and CPU the agent's reachability checks cost a school a day.

    .venv/bin/python -m tests.bench.connectivity_cost              # 300 rounds, about a minute
    .venv/bin/python -m tests.bench.connectivity_cost --rounds 1000

Needs root: it builds a school's network in namespaces (tests/support/school_network.py,
nothing leaves this machine), with the broker's TCP port, a DNS server and an HTTP
speed server upstream. Inside the school namespace it runs the agent's own check
rounds (agent/connectivity.py ``check_round``) back to back over the targets a
school's agent checks by default: the broker (a TCP connect), its name (a DNS
lookup) and a self-hosted speed server (an HTTP HEAD), each target set alone and
all three together. It reads the school interface's byte counters (both
directions, Ethernet headers included) before and after, and the process's CPU
time around the rounds, and prints a table: per round, and per day at the
default ``connectivity.interval_s`` of 60 s (1,440 rounds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tests.support.school_network import BROKER_NAME, SERVICE_PORT, UPSTREAM_IP, SchoolNetwork

REPO = Path(__file__).resolve().parents[2]
ROUNDS_A_DAY = 86_400 // 60
HTTP_PORT = 8080
TARGET_SETS = {
    "broker (TCP connect)": [f"tcp:{BROKER_NAME}:{SERVICE_PORT}"],
    "broker's name (DNS lookup)": [f"dns:{BROKER_NAME}"],
    "speed server (HTTP HEAD)": [f"http:http://{UPSTREAM_IP}:{HTTP_PORT}/"],
}
TARGET_SETS["all three (the default)"] = [t for ts in TARGET_SETS.values() for t in ts]

# Runs in the school namespace: the rounds, then the CPU they took, as JSON.
ROUNDS = """
import json, sys, time
from agent.connectivity import check_round, parse_target
targets = [parse_target(spec) for spec in json.loads(sys.argv[1])]
rounds = int(sys.argv[2])
check_round(targets, 2.0)  # imports and first resolutions, outside the count
cpu = time.process_time()
failed = sum(1 for _ in range(rounds) if check_round(targets, 2.0).cause is not None)
print(json.dumps({"cpu_s": time.process_time() - cpu, "failed": failed}))
"""


def _bytes(network: SchoolNetwork) -> int:
    device = network.school_device
    found = 0
    for direction in ("rx_bytes", "tx_bytes"):
        path = f"/sys/class/net/{device}/statistics/{direction}"
        text = subprocess.run(
            ["ip", "netns", "exec", network.school, "cat", path],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        found += int(text)
    return found


def measure(rounds: int) -> list[dict[str, float | str]]:
    results: list[dict[str, float | str]] = []
    with SchoolNetwork() as network:
        web = subprocess.Popen(
            ["ip", "netns", "exec", network.upstream, sys.executable, "-m", "http.server",
             "--bind", UPSTREAM_IP, str(HTTP_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for name, targets in TARGET_SETS.items():
                print(f"  {name}: {rounds} rounds ...", flush=True)
                before = _bytes(network)
                done = subprocess.run(
                    ["ip", "netns", "exec", network.school, sys.executable, "-c", ROUNDS,
                     json.dumps(targets), str(rounds)],
                    capture_output=True, text=True, check=True, cwd=REPO, timeout=600,
                )  # fmt: skip
                moved = _bytes(network) - before
                found = json.loads(done.stdout.strip().splitlines()[-1])
                results.append({
                    "targets": name,
                    "failed": found["failed"],
                    "bytes_per_round": moved / (rounds + 1),
                    "cpu_ms_per_round": 1000 * found["cpu_s"] / rounds,
                })  # fmt: skip
        finally:
            web.kill()
            web.wait()
    return results


def table(results: list[dict[str, float | str]], rounds: int) -> str:
    lines = [
        f"{rounds} rounds per target set; a day is {ROUNDS_A_DAY:,} rounds (every 60 s)",
        "",
        "| targets | bytes per round | a day | CPU per round | CPU a day | of one core |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        per_round = float(r["bytes_per_round"])
        cpu_ms = float(r["cpu_ms_per_round"])
        day_cpu_s = cpu_ms * ROUNDS_A_DAY / 1000
        lines.append(
            f"| {r['targets']} | {per_round:,.0f} B | {per_round * ROUNDS_A_DAY / 1e6:.2f} MB | "
            f"{cpu_ms:.2f} ms | {day_cpu_s:.1f} s | {100 * day_cpu_s / 86_400:.4f} % |"
        )
    failed = sum(int(r["failed"]) for r in results)
    if failed:
        lines.append(f"\n{failed} rounds failed: the figures include their retries")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=300, help="rounds per target set")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    results = measure(args.rounds)
    print(table(results, args.rounds))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
