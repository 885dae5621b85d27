"""Accuracy benchmark: the agent's speed test against a reference, on shaped links.

    sudo .venv/bin/python -m tests.bench.speed_accuracy            # the full grid (about an hour)
    sudo .venv/bin/python -m tests.bench.speed_accuracy --rates 20 --rtts 80 --losses 0

For every cell (rate x round trip x loss) a link is built from network
namespaces (tests/support/shaped_link.py: tc tbf for the rate both ways, a
user-space delay line for delay and loss), its round trip is verified, and
then, in the same run:

- the reference: iperf3, 16 parallel streams, a long bulk transfer with the
  warm-up omitted (``-O``), download (``-R``) and upload;
- the agent, ``school-agent speedtest --json`` against the project's speed
  server, with each method: ``stable`` (the default) and ``speedtest-cli``.

It prints a row per cell as it goes, then a markdown table (the README's),
and writes every figure to ``--json`` for the record.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # localstack, as pytest's pythonpath gives it

from tests.support.shaped_link import SERVER_IP, LinkShape, ShapedLink  # noqa: E402

SPEED_PORT, IPERF_PORT = 8080, 5201
REFERENCE_STREAMS = 16
METHODS = ("stable", "speedtest-cli")


@dataclass
class Cell:
    rate_mbps: float
    rtt_ms: float
    loss: float
    measured_rtt_ms: float = 0.0
    reference: dict[str, float] = field(default_factory=dict)  # direction -> Mbps
    agent: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> result
    error: str | None = None

    def ratio(self, method: str, direction: str) -> float | None:
        result = self.agent.get(method, {})
        measured = result.get(f"{direction}_mbps")
        reference = self.reference.get(direction)
        if measured is None or not reference:
            return None
        return float(measured) / reference


def reference_durations(shape: LinkShape) -> tuple[int, int]:
    """(warm-up to omit, measured seconds) for iperf3: long links warm up slowly."""
    rtt = shape.rtt_ms / 1000
    omit = max(3, round(30 * rtt))  # slow start's overshoot takes seconds to recover on long links
    measured = max(10, round(40 * rtt))
    if shape.loss:
        measured = round(measured * 1.5)  # a sawtooth needs longer to average
    return omit, measured


def run_reference(link: ShapedLink, direction: str) -> float:
    omit, measured = reference_durations(link.shape)
    argv = [
        "iperf3",
        "-c",
        SERVER_IP,
        "-p",
        str(IPERF_PORT),
        "-P",
        str(REFERENCE_STREAMS),
        "-t",  # iperf3 runs the -O warm-up first, then -t measured seconds
        str(measured),
        "-O",
        str(omit),
        "-J",
    ]
    if direction == "download":
        argv.append("-R")
    report = json.loads(link.run_in_client(argv, timeout=omit + measured + 120))
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


def run_agent(link: ShapedLink, method: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOL_")}
    env |= {
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": f"http://{SERVER_IP}:{SPEED_PORT}",
        "SCHOOL_AGENT_SPEEDTEST__METHOD": method,
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            link.client_ns,
            sys.executable,
            "-m",
            "agent",
            "speedtest",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if not result.stdout.strip():
        return {"result": "crashed", "error": result.stderr[-500:]}
    return dict(json.loads(result.stdout))


def measure_cell(shape: LinkShape, methods: list[str]) -> Cell:
    cell = Cell(shape.rate_mbps, shape.rtt_ms, shape.loss)
    with ShapedLink(shape) as link:
        cell.measured_rtt_ms = round(link.measured_rtt_ms or 0.0, 2)
        servers = [
            link.popen_in_server(
                ["iperf3", "-s", "-p", str(IPERF_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            link.popen_in_server(
                [
                    sys.executable,
                    "-m",
                    "collector",
                    "speed-server",
                    "--host",
                    SERVER_IP,
                    "--port",
                    str(SPEED_PORT),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=str(REPO),
            ),
        ]
        try:
            link.wait_for_server_port(IPERF_PORT)
            link.wait_for_server_port(SPEED_PORT)
            time.sleep(0.5)
            for direction in ("download", "upload"):
                cell.reference[direction] = round(run_reference(link, direction), 2)
            for method in methods:
                cell.agent[method] = run_agent(link, method)
        finally:
            for server in servers:
                server.kill()
                server.wait()
    return cell


def _pct(ratio: float | None) -> str:
    return "fail" if ratio is None else f"{ratio * 100:.0f} %"


def _figure(result: dict[str, Any], key: str) -> str:
    value = result.get(key)
    return f"{value:.1f}" if isinstance(value, float | int) else str(result.get("result", "-"))


def table(cells: list[Cell], methods: list[str]) -> str:
    head = ["rate Mbps", "RTT ms (measured)", "loss", "reference down / up"]
    for method in methods:
        head += [f"{method} down / up", "ratio down / up"]
    head += ["data MB (stable)", "time s (stable)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        row = [f"{c.rate_mbps:g}", f"{c.rtt_ms:g} ({c.measured_rtt_ms:.1f})", f"{c.loss * 100:g} %"]
        if c.error:
            lines.append("| " + " | ".join([*row, f"error: {c.error}"]) + " |")
            continue
        row.append(f"{c.reference['download']:.1f} / {c.reference['upload']:.1f}")
        for method in methods:
            result = c.agent.get(method, {})
            row.append(f"{_figure(result, 'download_mbps')} / {_figure(result, 'upload_mbps')}")
            row.append(f"{_pct(c.ratio(method, 'download'))} / {_pct(c.ratio(method, 'upload'))}")
        stable = c.agent.get("stable", {})
        moved = (stable.get("bytes_received", 0) + stable.get("bytes_sent", 0)) / 1e6
        row += [f"{moved:.0f}", f"{stable.get('duration_s', 0):.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def within(cells: list[Cell], method: str, tolerance: float) -> tuple[int, int]:
    """(cells whose download and upload are both within tolerance, cells)."""
    good = sum(
        all(
            (r := c.ratio(method, d)) is not None and abs(r - 1) <= tolerance
            for d in ("download", "upload")
        )
        for c in cells
    )
    return good, len(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", type=float, nargs="+", default=[5, 20, 100, 300])
    parser.add_argument("--rtts", type=float, nargs="+", default=[2, 80, 600])
    parser.add_argument("--losses", type=float, nargs="+", default=[0, 0.5], help="percent")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--json", type=Path, default=Path("speed_accuracy.json"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("speed_accuracy: needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    cells: list[Cell] = []
    grid = list(itertools.product(args.losses, args.rtts, args.rates))
    started = time.monotonic()
    for number, (loss, rtt, rate) in enumerate(grid, 1):
        shape = LinkShape(rate, rtt, loss / 100)
        print(f"[{number}/{len(grid)}] {shape} ...", end=" ", flush=True)
        try:
            cell = measure_cell(shape, args.methods)
        except Exception as exc:  # noqa: BLE001 - one broken cell must not lose the others
            cell = Cell(rate, rtt, loss / 100, error=str(exc)[:200])
        cells.append(cell)
        ratios = "  ".join(
            f"{m}: {_pct(cell.ratio(m, 'download'))} / {_pct(cell.ratio(m, 'upload'))}"
            for m in args.methods
        )
        elapsed = time.monotonic() - started
        print(f"reference {cell.reference}  {ratios}  ({elapsed:.0f} s)", flush=True)
        args.json.write_text(json.dumps([asdict(c) for c in cells], indent=1))
    print()
    print(table(cells, args.methods))
    for method in args.methods:
        good, total = within(cells, method, 0.05)
        print(f"\n{method}: {good} of {total} cells within ±5 % of the reference, both directions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
