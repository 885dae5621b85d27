"""Ingest benchmark: the national load through the real Mosquitto into the real InfluxDB.

    .venv/bin/python -m tests.bench.ingest                  # about 15 minutes
    .venv/bin/python -m tests.bench.ingest --backlog 50000 --rates 100,1000
    .venv/bin/python -m tests.bench.ingest --receipts --backlog 50000 --seconds 60

Everything runs on this machine, on loopback: a Mosquitto broker with the
shipped settings and an InfluxDB 1.x server (deploy/localstack.py), the
registry of 7,400 simulated schools imported, every school's series written
once (a warm database, as in production), then, in one run:

1. **Capacity.** A backlog of ``--backlog`` messages of the national mix
   (tests/bench/national_load.py) is queued on the broker for a consumer's
   persistent session, then the consumer starts and drains it:
   - the bare subscriber (tests/bench/bare_subscriber.py), the ceiling;
   - one collector (``school-collector run``, stock settings: it acknowledges
     each message only after InfluxDB stored it);
   - two collectors on one shared subscription (``mqtt.share_group``).
   Each row gives messages and points per second, the share of the ceiling,
   the CPU of the consumer, Mosquitto and InfluxDB, the consumer's peak memory,
   and the loss: InfluxDB's count of points against the points sent.
2. **InfluxDB alone.** The same points written straight to InfluxDB in
   batches of 5,000 from this process: what the database takes on this
   machine without MQTT or the collector.
3. **Live, rising rates.** Publishers send at each rate of ``--rates`` for
   ``--seconds``; the collector's lag (from ``measured_at`` to written, its
   ``lag_p50_ms``/``lag_p99_ms`` fields, one value per second) and whether all
   of it arrived. The first rate is the national load at the agent's default
   settings; its collector CPU is the national share of one collector.
4. **Receipts** (``--receipts``, alone). The same collector with
   ``mqtt.receipts`` off and on, one after the other, twice: a backlog drained
   (messages per second, CPU per message) and the national rate live for
   ``--seconds`` (collector CPU). A subscriber to every school's receipts
   stands in for the agents, so the broker carries them in and out; it counts
   the receipts, their bytes and the messages they name. Receipts per message
   are per message named: a new subscription also brings every school's
   retained status, which the collector stores, and receipts, on top of the
   backlog (7,400 of them against a 50,000 backlog once read 1.08 receipts per
   message instead of about 0.94).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # localstack, as pytest's pythonpath gives it

from localstack import InfluxDB, Mosquitto, free_port  # noqa: E402

from agent.contract import DEFAULT_TOPIC_ROOT  # noqa: E402
from collector.fleet import generate  # noqa: E402
from collector.influx import make_writer  # noqa: E402
from collector.influx.query import InfluxQL  # noqa: E402
from collector.intake import decode  # noqa: E402
from collector.points import PointMaker  # noqa: E402
from collector.registry_store import import_registry  # noqa: E402
from collector.settings import InfluxSettings  # noqa: E402
from tests.bench.national_load import (  # noqa: E402
    MIX,
    SCHOOLS,
    SchoolTemplates,
    kinds_in_mix,
    mean_points_per_message,
    national_messages_per_s,
    publish_from_processes,
)

PYTHON = sys.executable
GOAL_RATE = 20_000
GOAL_SHARE_OF_BARE = 0.5
GOAL_NATIONAL_SHARE = 0.10
PUBLISHERS = 2


@dataclass
class Usage:
    """CPU seconds of a set of processes between two readings, and their peak memory."""

    processes: list[psutil.Process]
    started: float = field(default_factory=time.monotonic)
    cpu: float = 0.0

    def __post_init__(self) -> None:
        self.cpu = self._cpu()

    def _cpu(self) -> float:
        total = 0.0
        for process in self.processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def percent(self) -> float:
        """Share of one core since the start, in %."""
        return 100 * (self._cpu() - self.cpu) / max(time.monotonic() - self.started, 1e-6)

    def peak_mb(self) -> float:
        peaks = [0.0]
        for process in self.processes:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except OSError:
                continue  # gone
            if "VmHWM:" in status:  # not yet a zombie
                peaks.append(int(status.split("VmHWM:")[1].split()[0]) / 1024)
        return max(peaks)


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = Mosquitto(workdir, free_port())
        self.influx = InfluxDB(workdir, free_port(), free_port())
        self.broker.start()
        self.influx.start()
        self.settings = InfluxSettings(url=self.influx.url)
        self.writer = make_writer(self.settings)
        self.writer.ensure_database()
        self.query = InfluxQL(self.settings)
        fleet = generate(SCHOOLS, now=datetime.now(UTC), days=1)
        import_registry(fleet.registry, self.settings, "ingest benchmark")
        self.schools = [record.school.school_id for record in fleet.records]
        self.collectors: list[subprocess.Popen[bytes]] = []

    def close(self) -> None:
        self.stop_collectors()
        self.broker.stop()
        self.influx.stop()

    def service(self, name: str) -> psutil.Process:
        target = self.broker if name == "mosquitto" else self.influx
        pid = target.process.pid()
        assert pid is not None
        return psutil.Process(pid)

    # -- collectors ------------------------------------------------------

    def start_collectors(
        self, count: int, phase: str, *, receipts: bool = True
    ) -> list[psutil.Process]:
        """``count`` collectors with client ids ``<phase>-<n>``."""
        for number in range(1, count + 1):
            env = dict(os.environ) | {
                "SCHOOL_COLLECTOR_MQTT__URL": self.broker.url,
                "SCHOOL_COLLECTOR_MQTT__CLIENT_ID": f"{phase}-{number}",
                "SCHOOL_COLLECTOR_INFLUX__URL": self.influx.url,
                "SCHOOL_COLLECTOR_STATS_INTERVAL_S": "1",
                "SCHOOL_COLLECTOR_LOG_LEVEL": "WARNING",
                "SCHOOL_COLLECTOR_MQTT__RECEIPTS": "true" if receipts else "false",
            }
            if count > 1:
                env["SCHOOL_COLLECTOR_MQTT__SHARE_GROUP"] = "bench"
            log = (self.workdir / f"{phase}-{number}.log").open("ab")
            self.collectors.append(
                subprocess.Popen(
                    [PYTHON, "-m", "collector", "run"], env=env, stdout=log, stderr=log
                )
            )
        return [psutil.Process(c.pid) for c in self.collectors]

    def stop_collectors(self) -> None:
        for collector in self.collectors:
            collector.terminate()
        for collector in self.collectors:
            collector.wait(60)
        self.collectors = []

    def _last(self, phase: str, field_name: str) -> list[int]:
        rows = self.query.query(
            f'SELECT last("{field_name}") FROM "collector" WHERE time > now() - 1h '
            f'AND "collector_id" =~ /^{phase}-/ GROUP BY "collector_id"'
        )
        return [int(series.values[0][1]) for series in rows if series.values]

    def stored(self, phase: str) -> int:
        """Messages the collectors of ``phase`` stored, by their own counters."""
        return sum(self._last(phase, "stored"))

    def make_sessions(self, count: int, phase: str, *, receipts: bool = True) -> None:
        """Start and stop the collectors once: their sessions then queue a backlog."""
        self.start_collectors(count, phase, receipts=receipts)
        # Counters are written once connected and subscribed.
        _wait(lambda: len(self._last(phase, "received")) >= count, 60, "the collectors")
        time.sleep(1)
        self.stop_collectors()

    # -- load ------------------------------------------------------------

    def publish(self, count: int, rate: float) -> dict[str, Any]:
        return publish_from_processes(
            "127.0.0.1",
            self.broker.port,
            DEFAULT_TOPIC_ROOT,
            self.schools,
            count,
            rate,
            PUBLISHERS,
        )

    def points_since(self, since_ns: int) -> int:
        found = 0
        for measurement, field_name in (
            ("device", "state_code"),
            ("device_report", "sequence"),
            ("agent", "online"),
            ("speed", "result_code"),
        ):
            rows = self.query.query(
                f'SELECT count("{field_name}") FROM "{measurement}" WHERE time >= {since_ns}'
            )
            found += int(rows[0].values[0][1]) if rows and rows[0].values else 0
        return found

    def warm_up(self) -> None:
        """Every school's series once, through a collector: a database in service."""
        self.start_collectors(1, "warm-up")
        sent = publish_from_processes(
            "127.0.0.1", self.broker.port, DEFAULT_TOPIC_ROOT, self.schools,
            3 * len(self.schools), 0, PUBLISHERS, kinds=["full", "status", "speed"],
        )  # fmt: skip
        _wait(lambda: self.stored("warm-up") >= sent["sent"], 300, "the warm-up to be stored")
        self.stop_collectors()


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.5)


# -------------------------------------------------------------- phases --


@dataclass
class Row:
    name: str
    messages_per_s: float
    points_per_s: float
    consumer_cpu: float
    consumer_peak_mb: float
    mosquitto_cpu: float
    influx_cpu: float
    sent: int
    stored_points: int | None
    expected_points: int | None


def drain_bare(bench: Bench, backlog: int) -> Row:
    args = [PYTHON, "-m", "tests.bench.bare_subscriber", "--port", str(bench.broker.port)]
    subprocess.run([*args, "--subscribe-only"], check=True, cwd=REPO)
    sent = bench.publish(backlog, 0)
    mosquitto = Usage([bench.service("mosquitto")])
    process = subprocess.Popen(
        [*args, "--count", str(sent["sent"])], stdout=subprocess.PIPE, cwd=REPO
    )
    usage = Usage([psutil.Process(process.pid)])
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, usage.peak_mb())
        cpu = usage.percent()
        time.sleep(0.2)
    out, _ = process.communicate()
    result = json.loads(out)
    rate = result["count"] / max(result["seconds"], 1e-6)
    return Row("bare paho subscriber (ceiling)", rate, rate * mean_points_per_message(),
               cpu, peak, mosquitto.percent(), 0.0, sent["sent"], None, None)  # fmt: skip


def top_functions(raw: Path, limit: int = 12) -> list[tuple[float, str]]:
    """Share of samples by innermost function, from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frame = stack.split(";")[-1]
        own[frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1]] += int(samples)
        total += int(samples)
    return [(100 * n / max(total, 1), name) for name, n in own.most_common(limit)]


def drain_collectors(
    bench: Bench,
    backlog: int,
    count: int,
    profile: Path | None = None,
    *,
    receipts: bool = True,
    phase: str | None = None,
) -> Row:
    phase = phase or f"drain-{count}"
    bench.make_sessions(count, phase, receipts=receipts)
    since = time.time_ns()
    sent = bench.publish(backlog, 0)
    processes = bench.start_collectors(count, phase, receipts=receipts)
    usage = Usage(processes)
    services = {name: Usage([bench.service(name)]) for name in ("mosquitto", "influxdb")}
    first: tuple[float, int] | None = None
    peak = 0.0
    deadline = time.monotonic() + 900
    while True:
        time.sleep(0.5)
        peak = max(peak, usage.peak_mb())
        stored = bench.stored(phase)
        now = time.monotonic()
        if first is None and 0 < stored < sent["sent"]:  # measured from the first count on
            first = (now, stored)
            if profile is not None:
                spy = Path(sys.executable).parent / "py-spy"
                subprocess.Popen(
                    [str(spy), "record", "-p", str(processes[0].pid), "-d", "20", "-r", "50",
                     "-f", "raw", "-o", str(profile)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            usage, services = Usage(processes), {n: Usage(u.processes) for n, u in services.items()}
        if stored >= sent["sent"] or now > deadline:
            break
    if first is None:
        raise RuntimeError("the backlog drained within one poll: give a larger --backlog")
    cpu, service_cpu = usage.percent(), {n: u.percent() for n, u in services.items()}
    rate = (stored - first[1]) / max(now - first[0], 1e-6)
    bench.stop_collectors()
    points = bench.points_since(since)
    name = "collector" if count == 1 else f"{count} collectors, shared subscription"
    return Row(name, rate, rate * mean_points_per_message(), cpu, peak,
               service_cpu["mosquitto"], service_cpu["influxdb"], sent["sent"], points,
               sent["points"])  # fmt: skip


def influx_alone(bench: Bench, points: int) -> tuple[float, float]:
    """Points per second InfluxDB takes from this process, and its CPU meanwhile."""
    templates = [SchoolTemplates.of(sid, DEFAULT_TOPIC_ROOT) for sid in bench.schools]
    maker = PointMaker()
    lines: list[str] = []
    kinds = kinds_in_mix(99)
    number = 0
    while len(lines) < points:
        topic, body = templates[number % len(templates)].render(next(kinds))
        number += 1
        accepted = decode(DEFAULT_TOPIC_ROOT, topic, body, 65_536)
        lines += maker.lines(accepted.message, 0)  # type: ignore[union-attr]
    usage = Usage([bench.service("influxdb")])
    started = time.monotonic()
    for start in range(0, len(lines), 5000):
        bench.writer.write(lines[start : start + 5000])
    return len(lines) / (time.monotonic() - started), usage.percent()


@dataclass
class Step:
    offered: float
    published: float
    stored_per_s: float
    lag_p50_ms: float
    lag_p99_ms: float
    collector_cpu: float
    lost_points: int


def live(
    bench: Bench,
    rates: list[float],
    seconds: float,
    *,
    receipts: bool = True,
    phase: str = "live",
    settled: Any = None,
) -> list[Step]:
    """``settled()`` is called once the retained statuses have passed, before the steps."""
    processes = bench.start_collectors(1, phase, receipts=receipts)
    # A new subscription brings every school's retained status: let that pass first.
    _wait(lambda: bench.stored(phase) > 0, 60, "the retained statuses")
    seen = -1
    while (now := bench.stored(phase)) != seen:
        seen = now
        time.sleep(3)
    if settled is not None:
        settled()
    steps = []
    for rate in rates:
        count = max(int(rate * seconds), PUBLISHERS)
        since = time.time_ns()
        before = bench.stored(phase)
        usage = Usage(processes)
        started = time.monotonic()
        sent = bench.publish(count, rate)
        published = sent["sent"] / max(sent["seconds"], 1e-6)
        _wait(lambda: bench.stored(phase) - before >= sent["sent"], 300, "the step to be stored")  # noqa: B023
        stored_per_s = sent["sent"] / max(time.monotonic() - started, 1e-6)
        cpu = usage.percent()
        time.sleep(1.5)  # the last stats line
        rows = bench.query.query(
            'SELECT "lag_p50_ms", "lag_p99_ms" FROM "collector" '
            f"WHERE time >= {since} AND \"collector_id\" = '{phase}-1'"
        )
        values = [row for row in (rows[0].values if rows else []) if row[1] is not None]
        p50 = statistics.median(row[1] for row in values) if values else float("nan")
        p99 = max(row[2] for row in values) if values else float("nan")
        lost = sent["points"] - bench.points_since(since)
        steps.append(Step(rate, published, stored_per_s, p50, p99, cpu, lost))
        print(f"  {rate:,.0f} msg/s offered: lag p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
              f"collector {cpu:.0f} % CPU, {lost} points lost", file=sys.stderr)  # fmt: skip
        if p99 > 10_000 or published < 0.8 * rate:
            break  # past what this machine can carry
    bench.stop_collectors()
    return steps


class ReceiptCounter:
    """Stands in for the agents: subscribes to every school's receipts, counts them and
    the messages they name."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self._count = self._bytes = self._named = 0
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="receipt-counter")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"{DEFAULT_TOPIC_ROOT}/+/receipts", qos=1)
        self._client.loop_start()

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        named = messages_named(message.payload)
        with self._lock:
            self._count += 1
            self._bytes += len(message.payload)
            self._named += named

    def take(self) -> tuple[int, int, int]:
        """Receipts, their payload bytes and the messages they name, since the last call."""
        with self._lock:
            taken = self._count, self._bytes, self._named
            self._count = self._bytes = self._named = 0
        return taken

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def messages_named(payload: bytes | bytearray) -> int:
    """The messages one receipt names: those stored and those refused."""
    receipt = json.loads(payload)
    return len(receipt["stored"]) + len(receipt["refused"])


@dataclass
class ReceiptRow:
    receipts: bool
    round: int
    drain_per_s: float
    drain_cpu_ms: float  # collector CPU per message while draining
    drain_receipts: float  # receipts per message they named, while draining
    live_cpu: float  # collector CPU at the national rate, % of a core
    live_receipts: float  # receipts per message they named, at the national rate
    receipt_bytes: float  # payload bytes per receipt


def receipts_comparison(
    bench: Bench, backlog: int, national: float, seconds: float
) -> list[ReceiptRow]:
    """The collector with receipts off and on, alternately, twice."""
    counter = ReceiptCounter(bench.broker.port)
    rows = []
    try:
        for round_ in (1, 2):
            for receipts in (False, True):
                name = f"{'with' if receipts else 'without'} receipts, round {round_}"
                print(f"receipts: draining {backlog:,} {name} ...", file=sys.stderr)
                phase = f"r{round_}{'on' if receipts else 'off'}"
                counter.take()
                # Counts the receipts of the retained statuses a new subscription brings
                # as well (they are not in the backlog): hence per message named.
                row = drain_collectors(bench, backlog, 1, receipts=receipts, phase=phase)
                drained, drained_bytes, drained_named = counter.take()
                print(f"receipts: the national rate for {seconds:g} s {name} ...", file=sys.stderr)
                step = live(
                    bench, [national], seconds, receipts=receipts, phase=f"l{phase}",
                    settled=counter.take,  # not the receipts of the retained statuses
                )[0]  # fmt: skip
                lived, _, lived_named = counter.take()
                rows.append(
                    ReceiptRow(
                        receipts, round_, row.messages_per_s,
                        10 * row.consumer_cpu / max(row.messages_per_s, 1e-6),
                        drained / max(drained_named, 1), step.collector_cpu,
                        lived / max(lived_named, 1), drained_bytes / max(drained, 1),
                    )
                )  # fmt: skip
    finally:
        counter.close()
    return rows


# --------------------------------------------------------------- tables --


def receipts_table(rows: list[ReceiptRow]) -> str:
    lines = [
        (
            "| receipts | round | drained msg/s | collector CPU per message | receipts per "
            "message named, drain | collector CPU at the national rate | receipts per message "
            "named, live | bytes per receipt |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {'on' if r.receipts else 'off'} | {r.round} | {r.drain_per_s:,.0f} | "
        f"{r.drain_cpu_ms:.2f} ms | {r.drain_receipts:.2f} | {r.live_cpu:.1f} % | "
        f"{r.live_receipts:.2f} | {r.receipt_bytes:.0f} |"
        for r in rows
    ]
    on = [r.drain_per_s for r in rows if r.receipts]
    off = [r.drain_per_s for r in rows if not r.receipts]
    ratio = statistics.mean(on) / statistics.mean(off)
    lines += [
        "",
        (
            f"Throughput with receipts: {100 * ratio:.0f} % of without "
            f"(goal: at least 85 %: {'met' if ratio >= 0.85 else 'missed'})"
        ),
    ]
    return "\n".join(lines)


def capacity_table(rows: list[Row], bare: float) -> str:
    lines = [
        (
            "| consumer | messages/s | points/s | of the ceiling | consumer CPU | "
            "consumer peak RSS | Mosquitto CPU | InfluxDB CPU | lost |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lost = "-" if row.stored_points is None else str(row.expected_points - row.stored_points)  # type: ignore[operator]
        influx = f"{row.influx_cpu:.0f} %" if row.stored_points is not None else "-"
        lines.append(
            f"| {row.name} | {row.messages_per_s:,.0f} | {row.points_per_s:,.0f} | "
            f"{100 * row.messages_per_s / bare:.0f} % | {row.consumer_cpu:.0f} % | "
            f"{row.consumer_peak_mb:.0f} MB | {row.mosquitto_cpu:.0f} % | {influx} | {lost} |"
        )
    return "\n".join(lines)


def live_table(steps: list[Step]) -> str:
    lines = [
        (
            "| offered msg/s | published msg/s | stored msg/s | lag p50 | lag p99 | "
            "collector CPU | points lost |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s.offered:,.0f} | {s.published:,.0f} | {s.stored_per_s:,.0f} | "
        f"{s.lag_p50_ms:,.0f} ms | {s.lag_p99_ms:,.0f} ms | {s.collector_cpu:.1f} % | "
        f"{s.lost_points} |"
        for s in steps
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Measure the collector's ingest through real Mosquitto and InfluxDB.",
    )
    parser.add_argument("--backlog", type=int, default=150_000,
                        help="messages drained in the capacity rows (default 150000)")  # fmt: skip
    national = national_messages_per_s()
    parser.add_argument("--rates", default=f"{national:.0f},500,1000,2000,4000,8000",
                        help="live rates, messages/s, comma-separated; the first should be "
                             "the national load (default: %(default)s)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=20.0, help="each live step (20)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--receipts",
        action="store_true",
        help="only compare the collector with receipts off and on (about 12 minutes)",
    )
    args = parser.parse_args()
    if args.receipts:
        return _receipts_only(args.backlog, national, args.seconds)
    rates = [float(rate) for rate in args.rates.split(",")]
    mix = ", ".join(f"{kind} {100 * share:.1f} %" for kind, share in MIX.items())
    print(f"national mix: {mix}; {mean_points_per_message():.2f} points a message",
          file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as workdir:
        bench = Bench(Path(workdir))
        try:
            print("warming up: every school's series once ...", file=sys.stderr)
            bench.warm_up()
            print(f"draining {args.backlog:,} messages: bare subscriber ...", file=sys.stderr)
            rows = [drain_bare(bench, args.backlog)]
            profile = Path(workdir) / "collector.pyspy"
            for count in (1, 2):
                print(f"draining {args.backlog:,} messages: {count} collector(s) ...",
                      file=sys.stderr)  # fmt: skip
                rows.append(drain_collectors(bench, args.backlog, count,
                                             profile if count == 1 else None))  # fmt: skip
            hot = top_functions(profile) if profile.exists() else []
            print("InfluxDB alone ...", file=sys.stderr)
            alone, alone_cpu = influx_alone(bench, 200_000)
            print("live, rising rates ...", file=sys.stderr)
            steps = live(bench, rates, args.seconds)
        finally:
            bench.close()
    bare = rows[0].messages_per_s
    one = rows[1].messages_per_s
    report = [
        (
            f"Capacity: a backlog of {args.backlog:,} messages of the national mix "
            f"({mean_points_per_message():.2f} points a message), drained"
        ),
        "",
        capacity_table(rows, bare),
        "",
        (
            f"InfluxDB alone, the same points in batches of 5,000: {alone:,.0f} points/s "
            f"({alone / mean_points_per_message():,.0f} messages/s of the mix) at "
            f"{alone_cpu:.0f} % CPU"
        ),
        "",
        (
            f"Live, rising rates ({args.seconds:g} s each, {PUBLISHERS} publisher processes "
            "on the same machine)"
        ),
        "",
        live_table(steps),
        "",
        (
            f"National load: {national:.1f} messages/s = {100 * national / one:.1f} % of one "
            f"collector's capacity (goal < {100 * GOAL_NATIONAL_SHARE:.0f} %); "
            f"collector CPU at that rate: {steps[0].collector_cpu:.1f} % of a core"
        ),
        (
            f"Goals: {GOAL_RATE:,} messages/s: {'met' if one >= GOAL_RATE else 'missed'} "
            f"({one:,.0f}); {100 * GOAL_SHARE_OF_BARE:.0f} % of the ceiling: "
            f"{'met' if one >= GOAL_SHARE_OF_BARE * bare else 'missed'} ({100 * one / bare:.0f} %)"
        ),
    ]
    if hot:
        report += ["", "Where one collector's time goes while draining (py-spy, 20 s, own time):",
                   ""] + [f"- {share:4.1f} % {name}" for share, name in hot]  # fmt: skip
    print("\n".join(report))
    if args.json is not None:
        figures = {"capacity": [vars(r) for r in rows], "influx_alone": alone,
                   "live": [vars(s) for s in steps], "national_per_s": national}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def _receipts_only(backlog: int, national: float, seconds: float) -> int:
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as workdir:
        bench = Bench(Path(workdir))
        try:
            print("warming up: every school's series once ...", file=sys.stderr)
            bench.warm_up()
            rows = receipts_comparison(bench, backlog, national, seconds)
        finally:
            bench.close()
    print(
        f"Receipts: a backlog of {backlog:,} messages of the national mix drained, then the "
        f"national rate ({national:.1f} messages/s) for {seconds:g} s, by one collector with "
        "mqtt.receipts off and on, alternately\n"
    )
    print(receipts_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
