"""Record what a speed test's transfer looks like, 100 ms at a time, on shaped links.

    sudo .venv/bin/python -m tests.bench.speed_traces --rates 20 --rtts 600 --seconds 40
    sudo .venv/bin/python -m tests.bench.speed_traces --congestion cubic --out /tmp/traces

For every cell (rate x round trip x loss) and direction, a link is built as
in tests/bench/speed_accuracy.py and the agent's own transfer (the same
connections, streams and 100 ms sampling as ``school-agent speedtest``) runs
for ``--seconds`` without a stopping rule. At each sample it writes the bytes
moved in order and the bytes the link delivered (agent/speed/transfer.py) to
``<out>/<rate>m-<rtt>ms-<loss>-<direction>-<congestion>[-x<connections>].json``.

These series are what a stopping rule has to judge: tests/data/speed_traces
keeps a few of them (steady, ramping, sawtooth, lossy), and
tests/test_confident_rate.py replays them through the rule.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # localstack, as pytest's pythonpath gives it

from agent.speed.endpoint import Endpoint  # noqa: E402
from agent.speed.latency import measure_latency  # noqa: E402
from agent.speed.progress import SilentProgress  # noqa: E402
from agent.speed.runner import StopFlag  # noqa: E402
from agent.speed.stable_rate import StableRateVerdict  # noqa: E402
from agent.speed.transfer import Direction, choose_connections, transfer  # noqa: E402
from tests.bench.speed_accuracy import SPEED_PORT, speed_server  # noqa: E402
from tests.support.shaped_link import SERVER_IP, LinkShape, ShapedLink  # noqa: E402


class Recorder:
    """A stopping rule that never stops before ``seconds``: it only keeps the samples."""

    counts_delivered = False

    def __init__(self, seconds: float) -> None:
        self.max_duration_s = seconds
        self.times: list[float] = []
        self.bytes: list[int] = []  # in order: read (download) or acknowledged (upload)
        self.delivered: list[int] = []  # segments delivered, whatever their order

    def sample(self, at_s: float, moved: int, delivered: int) -> None:
        self.times.append(round(at_s, 4))
        self.bytes.append(moved)
        self.delivered.append(delivered)

    def add(self, at_s: float, total_bytes: int) -> None:
        pass

    def verdict(self) -> StableRateVerdict | None:
        return None

    def final(self) -> StableRateVerdict:
        seconds = self.times[-1] if self.times else 0.0
        mbps = self.bytes[-1] * 8 / seconds / 1e6 if seconds else 0.0
        return StableRateVerdict(mbps, stable=False, warmup_s=0.0, measured_s=seconds)


def child(
    url: str, direction: str, seconds: float, congestion_control: str | None, connections: int
) -> int:
    """Runs in the client namespace: one transfer, its samples as JSON on stdout."""
    endpoint = Endpoint(f"{url}/speedtest/upload.php")
    latency = measure_latency(endpoint)
    recorder = Recorder(seconds)
    result = transfer(
        Direction(direction),
        endpoint,
        rtt_s=latency.rtt_s,
        connections=connections or choose_connections(latency.rtt_s),
        timeout_s=30,
        stop=StopFlag(),
        progress=SilentProgress(),
        rule=recorder,
        congestion_control=congestion_control,
        on_sample=recorder.sample,
    )
    print(
        json.dumps(
            {
                "rtt_s": latency.rtt_s,
                "connections": result.connections,
                "congestion": result.congestion,
                "times": recorder.times,
                "bytes": recorder.bytes,
                "delivered": recorder.delivered,
            }
        )
    )
    return 0


def record_cell(
    shape: LinkShape, seconds: float, congestion: str, connections: int, out: Path
) -> list[Path]:
    written = []
    with ShapedLink(shape) as link:
        server = speed_server(link, SPEED_PORT, congestion)
        try:
            link.wait_for_server_port(SPEED_PORT)
            for direction in ("download", "upload"):
                env = dict(os.environ, PYTHONPATH=str(REPO))
                raw = link.run_in_client(
                    [
                        sys.executable,
                        "-m",
                        "tests.bench.speed_traces",
                        "--child",
                        f"http://{SERVER_IP}:{SPEED_PORT}",
                        direction,
                        "--seconds",
                        str(seconds),
                        "--congestion",
                        congestion,
                        "--connections",
                        str(connections),
                    ],
                    timeout=seconds + 120,
                    env=env,
                )
                trace = json.loads(raw)
                trace |= {
                    "rate_mbps": shape.rate_mbps,
                    "rtt_ms": shape.rtt_ms,
                    "loss": shape.loss,
                    "direction": direction,
                    "measured_rtt_ms": link.measured_rtt_ms,
                }
                name = (
                    f"{shape.rate_mbps:g}m-{shape.rtt_ms:g}ms-{shape.loss * 100:g}-"
                    f"{direction}-{congestion}{f'-x{connections}' if connections else ''}.json"
                )
                path = out / name
                path.write_text(json.dumps(trace))
                written.append(path)
        finally:
            server.kill()
            server.wait()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", type=float, nargs="+", default=[5, 20, 100])
    parser.add_argument("--rtts", type=float, nargs="+", default=[600])
    parser.add_argument("--losses", type=float, nargs="+", default=[0, 0.5], help="percent")
    parser.add_argument("--seconds", type=float, default=40.0, help="per direction")
    parser.add_argument(
        "--congestion",
        default="bbr",
        help="congestion control for both ends (default: bbr; 'system': each end's default)",
    )
    parser.add_argument(
        "--connections", type=int, default=0, help="default: as the agent chooses (8 or 16)"
    )
    parser.add_argument("--out", type=Path, default=Path("speed_traces"))
    parser.add_argument("--child", nargs=2, metavar=("URL", "DIRECTION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    wanted = None if args.congestion == "system" else args.congestion
    if args.child:
        return child(args.child[0], args.child[1], args.seconds, wanted, args.connections)
    if os.geteuid() != 0:
        print("speed_traces: needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    grid = list(itertools.product(args.losses, args.rtts, args.rates))
    started = time.monotonic()
    for number, (loss, rtt, rate) in enumerate(grid, 1):
        shape = LinkShape(rate, rtt, loss / 100)
        print(f"[{number}/{len(grid)}] {shape} ...", end=" ", flush=True)
        paths = record_cell(shape, args.seconds, args.congestion, args.connections, args.out)
        elapsed = time.monotonic() - started
        print(", ".join(p.name for p in paths), f"({elapsed:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
