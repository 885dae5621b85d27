"""Storage benchmark: points and bytes per school per day in InfluxDB, at default settings.

    .venv/bin/python -m tests.bench.storage               # 100 schools, one day; 2 minutes
    .venv/bin/python -m tests.bench.storage --schools 400

It writes one day of what schools send at the agent's default settings
(tests/bench/national_load.py: a full list of 10 devices and a status every 5
minutes, 12 device changes and 4 speed tests a day), made into points by the
collector's own code, to an InfluxDB 1.x server of its own (deploy/localstack.py),
each measurement in a database of its own so that its size can be read. The
numbers that vary in service (response times, host health, speeds, counters)
vary here too, so that compression is not flattered.

InfluxDB is told to compact a shard that has been idle for 10 s (in service:
4 hours), and the size of the data (TSM files) is read once every database is
one fully compacted TSM file per shard with an empty WAL; the series index, a
preallocated file of fixed size per database, is left out.

The day is then summarised into the ``history`` retention policy by the very
statements of the continuous queries (collector/retention.py), and a day of the
``rollout`` measurement (national, every 5 minutes) is written there too. The
table gives, per school per day and for each measurement, the raw points and
bytes and their summaries', what 7,400 schools keep raw for ``retention.raw_days``
(90), and what their history adds each year.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # localstack, as pytest's pythonpath gives it

from localstack import InfluxDB, free_port  # noqa: E402

from agent.contract import DEFAULT_TOPIC_ROOT  # noqa: E402
from collector import retention  # noqa: E402
from collector.influx import make_history_writer, make_writer  # noqa: E402
from collector.influx.query import InfluxQL  # noqa: E402
from collector.intake import Accepted, decode  # noqa: E402
from collector.points import PointMaker, ns  # noqa: E402
from collector.rollout import DEFINITIONS, NATIONAL, Row, rollout_lines  # noqa: E402
from collector.settings import InfluxSettings, RetentionSettings  # noqa: E402
from tests.bench.national_load import PER_DAY, SCHOOLS, SchoolTemplates  # noqa: E402

COMPACT_QUICKLY = """  cache-snapshot-write-cold-duration = "2s"
  compact-full-write-cold-duration = "10s"
"""


class QuicklyCompacted(InfluxDB):
    def write_config(self) -> None:
        super().write_config()
        config = self.run_dir / "influxdb.conf"
        anchor = "  query-log-enabled = false\n"
        config.write_text(config.read_text().replace(anchor, anchor + COMPACT_QUICKLY))


def _varying(rng: random.Random) -> dict[str, Callable[[], str]]:
    """What changes from one report to the next in service, with plausible values."""
    return {
        "response_ms": lambda: f"{rng.lognormvariate(2.5, 0.8):.1f}",
        "cpu_percent": lambda: f"{rng.uniform(1, 40):.1f}",
        "memory_percent": lambda: f"{rng.uniform(30, 70):.1f}",
        "memory_available_bytes": lambda: f"{rng.randrange(300_000_000, 3_000_000_000)}i",
        "disk_free_bytes": lambda: f"{rng.randrange(5_000_000_000, 9_000_000_000)}i",
        "load_1m": lambda: f"{rng.uniform(0, 2):.2f}",
        "temperature_c": lambda: f"{rng.uniform(35, 70):.1f}",
        "download_mbps": lambda: f"{rng.uniform(5, 120):.2f}",
        "upload_mbps": lambda: f"{rng.uniform(2, 60):.2f}",
        "latency_ms": lambda: f"{rng.uniform(5, 600):.1f}",
        "jitter_ms": lambda: f"{rng.uniform(0.5, 30):.2f}",
        "bytes_received": lambda: f"{rng.randrange(10**7, 2 * 10**8)}i",
        "bytes_sent": lambda: f"{rng.randrange(10**7, 10**8)}i",
    }


class Day:
    """One school's day as line protocol, by measurement."""

    def __init__(self, sid: str, start: datetime, rng: random.Random) -> None:
        self.school = SchoolTemplates.of(sid, DEFAULT_TOPIC_ROOT)
        self.start = start
        self.rng = rng
        self.varying = _varying(rng)
        self.pattern = re.compile(r"(?<=[ ,])(" + "|".join(self.varying) + r")=[-0-9.e]+i?")
        self.counters = {"uptime_s": rng.randrange(86_400), "heartbeats_accepted": 0,
                         "data_used_month_bytes": rng.randrange(10**9)}  # fmt: skip

    def moments(self) -> list[tuple[datetime, str]]:
        offset = self.rng.uniform(0, 300)
        every = 86_400 / PER_DAY["full"]
        found = [(offset + n * every, kind) for n in range(PER_DAY["full"])
                 for kind in ("full", "status")]  # fmt: skip
        found += [(self.rng.uniform(0, 86_400), "change") for _ in range(PER_DAY["change"])]
        found += [(self.rng.uniform(0, 86_400), "speed") for _ in range(PER_DAY["speed"])]
        found.sort()
        return [(self.start + timedelta(seconds=at), kind) for at, kind in found]

    def lines(self, maker: PointMaker) -> list[str]:
        found = []
        for at, kind in self.moments():
            topic, body = self.school.render(kind, at)
            accepted = decode(DEFAULT_TOPIC_ROOT, topic, body, 65_536, now=at)
            assert isinstance(accepted, Accepted), accepted
            for line in maker.lines(accepted.message, 0):
                found.append(self._vary(line, kind))
        return found

    def _vary(self, line: str, kind: str) -> str:
        line = self.pattern.sub(lambda m: f"{m.group(1)}={self.varying[m.group(1)]()}", line)
        if kind == "status":
            self.counters["uptime_s"] += 300
            self.counters["heartbeats_accepted"] += 10
            self.counters["data_used_month_bytes"] += self.rng.randrange(10**5, 10**6)
            for name, value in self.counters.items():
                line = re.sub(rf"(?<=[ ,]){name}=\d+i", f"{name}={value}i", line)
        return line


RAW_DAYS = RetentionSettings().raw_days
INTERVAL_S = RetentionSettings().summary_interval_s
REGIONS = 20  # 17 regions and 3 cities


def rollout_day(start: datetime, rng: random.Random) -> list[str]:
    """A day of the rollout measurement: every metric, national and per region, every 5 min."""
    lines: list[str] = []
    for step in range(288):
        at = start + timedelta(minutes=5 * step)
        rows = [Row(metric, region, rng.randrange(300, 371), 370)
                for region in (NATIONAL, *(f"Region {n}" for n in range(REGIONS)))
                for metric in DEFINITIONS]  # fmt: skip
        lines += rollout_lines(rows, at)
    return lines


Figures = dict[str, tuple[int, int, int, int]]


def measure(schools: int, workdir: Path) -> Figures:
    """{measurement: (raw points, raw bytes, summary points, summary bytes)} for one day."""
    influx = QuicklyCompacted(workdir, free_port(), free_port())
    influx.start()
    try:
        by_measurement: dict[str, list[str]] = {}
        start = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0)
        rng = random.Random(1)
        maker = PointMaker()
        sids = [f"KZ-S-{n:05d}" for n in range(schools)]
        for number, sid in enumerate(sids, 1):
            for line in Day(sid, start, rng).lines(maker):
                by_measurement.setdefault(line.split(",", 1)[0], []).append(line)
            if number % 50 == 0:
                print(f"  {number}/{schools} schools made", file=sys.stderr)
        for measurement, lines in by_measurement.items():
            writer = make_writer(InfluxSettings(url=influx.url, database=measurement))
            writer.ensure_database()
            for first in range(0, len(lines), 5000):
                writer.write(lines[first : first + 5000])
        summaries = {s.source: s for s in retention.SUMMARIES}
        summarised: dict[str, int] = {}
        for measurement in by_measurement:
            if measurement in summaries:
                summarised[measurement] = _summarise(influx.url, measurement, start)
        rollout = rollout_day(start, rng)
        settings = InfluxSettings(url=influx.url, database="rollout")
        make_writer(settings).ensure_database()
        make_history_writer(settings).write(rollout)
        print("  written and summarised; waiting for InfluxDB to compact ...", file=sys.stderr)
        data = workdir / "influxdb" / "data"
        wal = workdir / "influxdb" / "wal"
        databases = [*by_measurement, "rollout"]
        wait_compacted(data, wal, databases)
        # The data itself; the series index is a fixed, preallocated file per database.
        found = {
            name: (len(lines), _tsm(data / name / "autogen"), summarised.get(name, 0),
                   _tsm(data / name / "history"))
            for name, lines in sorted(by_measurement.items())
        }  # fmt: skip
        found["rollout"] = (0, 0, len(rollout), _tsm(data / "rollout" / "history"))
        return found
    finally:
        influx.stop()


def _summarise(url: str, measurement: str, start: datetime) -> int:
    """The day's summary points, made as the continuous query makes them."""
    client = InfluxQL(InfluxSettings(url=url, database=measurement))
    plan = retention.Plan(measurement, RAW_DAYS, 0, INTERVAL_S)
    since = ns(start)
    until = ns(start + timedelta(days=1, seconds=300))
    written = 0
    for summary in retention.SUMMARIES:
        if summary.source == measurement:
            for series in client.query(plan.backfill(summary, "autogen", since, until)):
                written += sum(int(row[1]) for row in series.values)
    client.close()
    return written


def _tsm(policy_dir: Path) -> int:
    return sum(f.stat().st_size for f in policy_dir.rglob("*.tsm"))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def wait_compacted(data: Path, wal: Path, databases: list[str], timeout: float = 120) -> None:
    """Until the WAL is empty and each shard is one fully compacted TSM file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wal_bytes = sum(_size(wal / name) for name in databases)
        shards = [d for name in databases for d in (data / name).glob("*/*") if d.is_dir()]
        tsm = [list(shard.glob("*.tsm")) for shard in shards]
        # a shard directory may be empty (a policy's shard that got no points)
        if wal_bytes == 0 and any(tsm) and all(len(files) <= 1 for files in tsm):
            time.sleep(5)  # tombstones and temporary files are gone by then
            return
        time.sleep(2)
    raise TimeoutError(
        f"InfluxDB did not compact the day's shards in time: WAL {wal_bytes} bytes, "
        f"TSM files per shard {[len(files) for files in tsm]}"
    )


def table(figures: Figures, schools: int) -> str:
    lines = [
        (
            f"One day at default settings, {schools} schools of 10 devices, and its summaries "
            f"per {INTERVAL_S} s (InfluxDB 1.x, fully compacted)"
        ),
        "",
        (
            "| measurement | raw points/school/day | raw bytes/school/day | summary points/"
            f"school/day | summary bytes/school/day | {SCHOOLS:,} schools: raw, {RAW_DAYS} days "
            "kept | their summaries, a year |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name, (raw_points, raw_bytes, points, size) in figures.items():
        shown = " (national, shared out)" if name == "rollout" else ""
        kept = _per_school(points, name, schools)
        kept_bytes = _per_school(size, name, schools)
        lines.append(
            f"| `{name}`{shown} | {raw_points / schools:,.0f} | {raw_bytes / schools:,.0f} | "
            f"{kept:,.1f} | {kept_bytes:,.0f} | {_gb(raw_bytes / schools * RAW_DAYS)} | "
            f"{_gb(kept_bytes * 365)} |"
        )
    raw_points = sum(c[0] for c in figures.values())
    raw_bytes = sum(c[1] for c in figures.values())
    all_kept = sum((_per_school(c[2], n, schools) for n, c in figures.items()), 0.0)
    all_bytes = sum((_per_school(c[3], n, schools) for n, c in figures.items()), 0.0)
    lines.append(
        f"| all | {raw_points / schools:,.0f} | {raw_bytes / schools:,.0f} | {all_kept:,.1f} | "
        f"{all_bytes:,.0f} | {_gb(raw_bytes / schools * RAW_DAYS)} | {_gb(all_bytes * 365)} |"
    )
    return "\n".join(lines)


def _per_school(amount: float, name: str, schools: int) -> float:
    """Per school per day; the national rollout measurement shared out among the country's."""
    return amount / SCHOOLS if name == "rollout" else amount / schools


def _gb(per_school: float) -> str:
    return f"{per_school * SCHOOLS / 1e9:,.1f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Points and bytes per school per day in InfluxDB at default settings.",
    )
    parser.add_argument("--schools", type=int, default=100, help="schools to simulate (100)")
    args = parser.parse_args()
    if args.schools < 10:
        parser.error("--schools must be at least 10")
    with tempfile.TemporaryDirectory(prefix="storage-bench-") as workdir:
        figures = measure(args.schools, Path(workdir))
    print(table(figures, args.schools))
    return 0


if __name__ == "__main__":
    sys.exit(main())
