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
preallocated file of fixed size per database, is left out. The table gives points and bytes per
school per day for each measurement, and what a year of 7,400 schools makes.
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
from collector.influx import make_writer  # noqa: E402
from collector.intake import Accepted, decode  # noqa: E402
from collector.points import PointMaker  # noqa: E402
from collector.settings import InfluxSettings  # noqa: E402
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


def measure(schools: int, workdir: Path) -> dict[str, tuple[int, int]]:
    """{measurement: (points, bytes on disk)} for one day of ``schools`` schools."""
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
        print("  written; waiting for InfluxDB to compact ...", file=sys.stderr)
        data = workdir / "influxdb" / "data"
        wal = workdir / "influxdb" / "wal"
        _wait_compacted(data, wal, list(by_measurement))
        # The data itself; the series index is a fixed, preallocated file per database.
        return {
            name: (len(lines), sum(f.stat().st_size for f in (data / name).rglob("*.tsm")))
            for name, lines in sorted(by_measurement.items())
        }
    finally:
        influx.stop()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _wait_compacted(data: Path, wal: Path, databases: list[str], timeout: float = 120) -> None:
    """Until the WAL is empty and each shard is one fully compacted TSM file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wal_bytes = sum(_size(wal / name) for name in databases)
        shards = [d for name in databases for d in (data / name).glob("autogen/*") if d.is_dir()]
        tsm = [list(shard.glob("*.tsm")) for shard in shards]
        if wal_bytes == 0 and shards and all(len(files) == 1 for files in tsm):
            time.sleep(5)  # tombstones and temporary files are gone by then
            return
        time.sleep(2)
    raise TimeoutError(
        f"InfluxDB did not compact the day's shards in time: WAL {wal_bytes} bytes, "
        f"TSM files per shard {[len(files) for files in tsm]}"
    )


def table(figures: dict[str, tuple[int, int]], schools: int) -> str:
    lines = [
        (
            f"One day at default settings, {schools} schools of 10 devices "
            "(InfluxDB 1.x, fully compacted)"
        ),
        "",
        (
            "| measurement | points/school/day | bytes/school/day | bytes/point | "
            f"a year of {SCHOOLS:,} schools |"
        ),
        "|---|---|---|---|---|",
    ]
    total_points = total_bytes = 0
    for name, (points, size) in figures.items():
        total_points += points
        total_bytes += size
        lines.append(
            f"| `{name}` | {points / schools:,.0f} | {size / schools:,.0f} | "
            f"{size / points:.1f} | {_year(size / schools)} |"
        )
    lines.append(
        f"| all | {total_points / schools:,.0f} | {total_bytes / schools:,.0f} | "
        f"{total_bytes / total_points:.1f} | {_year(total_bytes / schools)} |"
    )
    return "\n".join(lines)


def _year(per_school_day: float) -> str:
    return f"{per_school_day * SCHOOLS * 365 / 1e9:,.1f} GB"


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
