"""Agent footprint: memory, CPU and start-up of ``school-agent run`` with 10 devices.

    .venv/bin/python -m tests.bench.agent_footprint              # 10 minutes
    .venv/bin/python -m tests.bench.agent_footprint --minutes 2  # a quick look

It starts a Mosquitto broker on loopback (deploy/localstack.py) and ten
simulated safety devices (tests/support/device_sims.py): four turnstiles and
the police link over TCP, three cameras over HTTP, two panic buttons that send
HTTP heartbeats every 30 s. Then the real agent, as a school runs it, with
every device checked every ``--period`` seconds (60) and no speed test in the
window (they are scheduled for half a day later). A subscriber on the school's
topics notes when the first message arrives.

Figures, in one table:

- start to first publish: from starting the process to the broker delivering
  its first message (the ``started`` status), and to the first device list;
- resident memory (RSS) sampled every 2 s: the peak, and unique memory (USS)
  at the end, what the agent costs beside shared libraries;
- CPU: the agent's user+system time over the whole run and over the steady
  part (after the first minute), as a share of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # localstack, as pytest's pythonpath gives it

from localstack import Mosquitto, free_port  # noqa: E402

from tests.support.device_sims import HeartbeatSender, HttpDevice, TcpDevice  # noqa: E402

SCHOOL = "KZ-BENCH-0001"
TOKEN = "panel-token-0123456789"
GOALS = {"rss_mb": 40.0, "cpu_percent": 1.0, "first_publish_s": 1.0}


def _devices(tcp: list[TcpDevice], http: list[HttpDevice], period: float) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for number, device in enumerate(tcp[:4], 1):
        found.append({"id": f"turnstile-{number}", "kind": "turnstile", "check": "tcp",
                      "label": f"Turnstile {number}", "address": device.address})  # fmt: skip
    found.append({"id": "police", "kind": "police_link", "check": "tcp",
                  "label": "Police centre link", "address": tcp[4].address})  # fmt: skip
    for number, camera in enumerate(http, 1):
        found.append({"id": f"camera-{number}", "kind": "camera", "check": "http",
                      "label": f"Camera {number}", "url": camera.url})  # fmt: skip
    for number in (1, 2):
        found.append({"id": f"panic-{number}", "kind": "panic_button", "check": "heartbeat",
                      "label": f"Panic button {number}", "token": TOKEN})  # fmt: skip
    for entry in found:
        entry["period_s"] = period
    return found


def _far_window() -> str:
    hour = (datetime.now(UTC) + timedelta(hours=12)).hour
    return json.dumps([f"{hour:02d}:00-{hour:02d}:30"])


class Arrivals:
    """When the broker delivered the agent's first message, and its first device list."""

    def __init__(self, port: int) -> None:
        self.first: float | None = None
        self.first_devices: float | None = None
        self.count = 0
        self._ready = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="footprint-watch")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_connect = lambda c, *_: c.subscribe(f"schools/{SCHOOL}/+", qos=1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("could not subscribe to the test broker")

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        now = time.monotonic()
        if message.retain:
            return
        self.count += 1
        self.first = self.first or now
        if message.topic.endswith("/devices") and self.first_devices is None:
            self.first_devices = now

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def measure(minutes: float, period: float, workdir: Path) -> dict[str, float]:
    broker = Mosquitto(workdir, free_port())
    broker.start()
    tcp = [TcpDevice() for _ in range(5)]  # listening from the start
    http = [HttpDevice() for _ in range(3)]
    heartbeat_port = free_port()
    senders = [
        HeartbeatSender(f"http://127.0.0.1:{heartbeat_port}/heartbeat/panic-{n}", TOKEN, 30.0)
        for n in (1, 2)
    ]
    arrivals = Arrivals(broker.port)
    env = dict(os.environ) | {
        "SCHOOL_AGENT_SCHOOL_ID": SCHOOL,
        "SCHOOL_AGENT_STATE_DIR": str(workdir / "agent-state"),
        "SCHOOL_AGENT_MQTT__URL": broker.url,
        "SCHOOL_AGENT_DEVICES": json.dumps(_devices(tcp, http, period)),
        "SCHOOL_AGENT_HEARTBEAT__LISTEN": f"127.0.0.1:{heartbeat_port}",
        "SCHOOL_AGENT_SCHEDULE__STARTUP_TEST": "false",
        "SCHOOL_AGENT_SCHEDULE__WINDOWS": _far_window(),
        "SCHOOL_AGENT_SCHEDULE__TIMEZONE": "UTC",
        "SCHOOL_AGENT_LOG_LEVEL": "WARNING",
    }
    log = (workdir / "agent.log").open("w")
    started = time.monotonic()
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        process = psutil.Process(agent.pid)
        peak_rss = 0
        steady_from = started + min(60.0, minutes * 30)
        steady_cpu: float | None = None
        end = started + minutes * 60
        next_note = started + 60
        for sender in senders:
            sender.start()
        while time.monotonic() < end:
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited; see {workdir / 'agent.log'}")
            peak_rss = max(peak_rss, process.memory_info().rss)
            if steady_cpu is None and time.monotonic() >= steady_from:
                times = process.cpu_times()
                steady_cpu, steady_at = times.user + times.system, time.monotonic()
            if time.monotonic() >= next_note:
                left = (end - time.monotonic()) / 60
                print(f"  {arrivals.count} messages so far, {left:.0f} min to go", file=sys.stderr)
                next_note += 60
            time.sleep(2)
        times = process.cpu_times()
        elapsed = time.monotonic() - started
        total_cpu = times.user + times.system
        uss = process.memory_full_info().uss
        breakdown = rss_by_mapping(agent.pid)
    finally:
        agent.terminate()
        agent.wait(30)
        for sender in senders:
            sender.close()
        arrivals.close()
        for device in tcp:
            device.stop()
        for camera in http:
            camera.close()
        broker.stop()
    assert steady_cpu is not None
    return {
        "first_publish_s": (arrivals.first or float("nan")) - started,
        "first_devices_s": (arrivals.first_devices or float("nan")) - started,
        "rss_mb": peak_rss / 2**20,
        "uss_mb": uss / 2**20,
        "cpu_percent": 100 * total_cpu / elapsed,
        "steady_cpu_percent": 100 * (total_cpu - steady_cpu) / (time.monotonic() - steady_at),
        "messages": arrivals.count,
        "minutes": elapsed / 60,
    } | {f"rss_mb {name}": mb for name, mb in breakdown.items()}


def rss_by_mapping(pid: int) -> dict[str, float]:
    """Resident MB by what is mapped: the heap (anonymous memory) and each file."""
    found: dict[str, float] = {}
    name = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
            path = head[5] if len(head) > 5 else "[anonymous]"
            name = (
                "[anonymous: Python objects, heaps, stacks]"
                if path.startswith("[") or len(head) <= 5
                else Path(path).name
            )
        elif head[0] == "Rss:":
            found[name] = found.get(name, 0.0) + int(head[1]) / 1024
    return dict(sorted(found.items(), key=lambda item: -item[1]))


def table(result: dict[str, float], period: float) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    rows = [
        ("start to first publish", f"{result['first_publish_s']:.2f} s",
         f"< {GOALS['first_publish_s']:g} s",
         verdict(result["first_publish_s"] < GOALS["first_publish_s"])),
        ("start to first device list", f"{result['first_devices_s']:.2f} s", "", ""),
        ("peak resident memory (RSS)", f"{result['rss_mb']:.1f} MB",
         f"<= {GOALS['rss_mb']:g} MB", verdict(result["rss_mb"] <= GOALS["rss_mb"])),
        ("unique memory (USS) at the end", f"{result['uss_mb']:.1f} MB", "", ""),
        (f"CPU, whole run ({result['minutes']:.1f} min)",
         f"{result['cpu_percent']:.2f} % of a core",
         f"<= {GOALS['cpu_percent']:g} %", verdict(result["cpu_percent"] <= GOALS["cpu_percent"])),
        ("CPU, after the first minute", f"{result['steady_cpu_percent']:.2f} % of a core", "", ""),
        ("messages published", f"{result['messages']:.0f}", "", ""),
    ]  # fmt: skip
    lines = [
        f"Agent footprint: 10 devices checked every {period:g} s, no speed test",
        "",
        "| measure | result | goal | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "Resident memory at the end, by mapping (MB):", ""]
    parts = [(k.split(" ", 1)[1], v) for k, v in result.items() if k.startswith("rss_mb ")]
    shown = [(name, mb) for name, mb in parts if mb >= 0.5]
    rest = sum(mb for _, mb in parts) - sum(mb for _, mb in shown)
    lines += [f"- {name}: {mb:.1f}" for name, mb in shown] + [f"- everything else: {rest:.1f}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Measure school-agent's memory, CPU and start-up with 10 devices.",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument(
        "--period", type=float, default=60.0, help="seconds between device checks (default 60)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")
    with tempfile.TemporaryDirectory(prefix="agent-footprint-") as workdir:
        print(f"running the agent for {args.minutes:g} minutes ...", file=sys.stderr)
        result = measure(args.minutes, args.period, Path(workdir))
    print(table(result, args.period))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
