"""Query cost benchmark: what each dashboard, variable and alert query and the rollout cost.

    .venv/bin/python -m tests.bench.query_cost                    # 500, 1,500, 3,000 schools
    .venv/bin/python -m tests.bench.query_cost --schools 100 --days 2,7 --repeat 3

For each fleet size of ``--schools``, on loopback, with an InfluxDB 1.x of its
own (deploy/localstack.py):

1. a registry of that many schools (collector/fleet.py, 20 regions) is
   imported, and the most recent of ``--days`` is written at production density:
   each school's day is the storage benchmark's (tests/bench/storage.py: the
   agent's default settings, about 3,500 points a day, values varying), made by
   the collector's own code for 40 model schools and copied to the others with
   their own ids and registry tags, its times shifted a day at a time;
2. the collector's state keeper starts as the collector starts it: its first
   tick builds the current state from raw points (timed: *bootstrap*), the
   second reads what was stored since (timed: *tick*); the state points it
   writes are counted;
3. once InfluxDB has compacted what was written (told to compact a shard idle
   for 10 s, as the storage benchmark does: the steady state of days-old
   shards, with no compaction competing with the queries), it is restarted
   (its memory from the writes let go) and **after**
   runs: every panel, variable and alert query of the dashboards and rules in
   this tree, with Grafana's macros substituted as tests/test_grafana.py does
   (the dashboards' range 30 days; an alert's own relativeTimeRange), each
   ``--repeat`` times; then ``school-collector rollout`` as an engineer runs it
   (the whole command, Python's start included);
4. InfluxDB is restarted again and **before** runs the same for the
   dashboards and rules of commit BEFORE (``git show``), the last one that read
   raw points, with ``school-collector rollout --at now`` (the rollout from raw
   points, which the command did by default then);
5. the older days are added to reach the next length of ``--days``, and 2-4
   run again.

While each set runs, InfluxDB's resident memory is sampled every 50 ms: the
table gives its peak. Each query's median and maximum are printed per fleet
and length, then one summary table: the slowest query's median, the rollout,
and the peak memory, before and after, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # localstack, as pytest's pythonpath gives it

from localstack import InfluxDB, free_port  # noqa: E402

from collector.fleet import generate  # noqa: E402
from collector.influx import make_writer  # noqa: E402
from collector.influx.query import InfluxQL  # noqa: E402
from collector.line_protocol import encode  # noqa: E402
from collector.points import Place, PointMaker, ns  # noqa: E402
from collector.registry import School, SchoolRegistry  # noqa: E402
from collector.registry_store import import_registry  # noqa: E402
from collector.settings import CollectorSettings, InfluxSettings  # noqa: E402
from collector.state_keeper import StateKeeper  # noqa: E402
from tests.bench.storage import Day, QuicklyCompacted, wait_compacted  # noqa: E402
from tests.support.grafana_queries import every_query, in_tree, substitute  # noqa: E402

BEFORE = "a716be0"  # the last commit whose dashboards and rollout read raw points
SPAN = "30d"  # the dashboards' time range
INTERVAL = "1h"  # $__interval for a 30-day range on a wide panel
CHUNK = 10_000  # lines per write request


# -- the queries ---------------------------------------------------------------------------


def at_commit(commit: str) -> Callable[[str], str]:
    """A file's text at ``commit``."""

    def read(path: str) -> str:
        return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout  # fmt: skip

    return read


# -- InfluxDB's memory ---------------------------------------------------------------------


class PeakMemory:
    """The largest resident set of a process, sampled every 50 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the fleet -----------------------------------------------------------------------------


@dataclass
class Fleet:
    registry: SchoolRegistry
    models: list[list[tuple[str, int]]]  # model days: (line without its time, ns)
    end_ns: int  # the newest day ends here (now, at generation)

    def day(self, number: int, school: School, shift: int) -> list[str]:
        """School ``number``'s day, ``shift`` ns before the newest: a model's, re-labelled."""
        model = MODEL_SID.format(number % len(self.models))
        line = encode("m", {"district": school.district, "region": school.region}, {"x": 1}, 0)
        district, _, region = line[1 : line.index(" x=")].rpartition(",region=")  # escaped
        swaps = ((model, school.school_id), (model.lower(), school.school_id.lower()),
                 (DISTRICT, district), (REGION, f",region={region}"))  # fmt: skip
        found = []
        for head, stamp in self.models[number % len(self.models)]:
            for old, new in swaps:
                head = head.replace(old, new)  # noqa: PLW2901
            found.append(f"{head} {stamp - shift}")
        return found


MODELS = 40  # schools whose days are made by the collector's code; the others copy them
MODEL_SID = "KZ-MODEL-{:02d}"
DISTRICT = ",district=DISTRICT"
REGION = ",region=REGION"


def make_fleet(schools: int, now: datetime) -> Fleet:
    registry = generate(schools, now=now, seed=5, tests_per_day=0).registry
    maker = PointMaker(place_of=lambda _: Place("REGION", "DISTRICT"))
    rng = random.Random(3)
    start = now - timedelta(days=1)
    models = []
    for number in range(MODELS):
        lines = Day(MODEL_SID.format(number), start, rng).lines(maker)
        assert all(DISTRICT in line and REGION in line for line in lines)
        models.append([_split(line) for line in lines])
    return Fleet(registry, models, ns(now))


def _split(line: str) -> tuple[str, int]:
    head, _, stamp = line.rpartition(" ")
    return head, int(stamp)


def write_days(fleet: Fleet, settings: InfluxSettings, first: int, last: int) -> int:
    """Days ``first`` to ``last - 1`` back from the end (0: the newest); return points.

    Two threads write while this one makes the lines, so InfluxDB is kept busy.
    """
    chunks: queue.Queue[list[str] | None] = queue.Queue(maxsize=4)
    failures: list[BaseException] = []

    def write() -> None:
        writer = make_writer(settings)
        try:
            while (lines := chunks.get()) is not None:
                writer.write(lines)
        except BaseException as exc:  # noqa: BLE001 - raised below
            failures.append(exc)
            while chunks.get() is not None:
                pass
        finally:
            writer.close()

    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    written = 0
    try:
        for back in range(first, last):
            shift = back * 86_400 * 1_000_000_000
            lines: list[str] = []
            for number, school in enumerate(fleet.registry):
                lines += fleet.day(number, school, shift)
                if len(lines) >= CHUNK:
                    chunks.put(lines)
                    written += len(lines)
                    lines = []
            chunks.put(lines)
            written += len(lines)
            print(f"  day {back + 1} back made ({written:,} points so far)", file=sys.stderr)
    finally:
        for _ in threads:
            chunks.put(None)
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return written


# -- one measurement -----------------------------------------------------------------------


@dataclass
class Timing:
    where: str
    seconds: list[float]
    rows: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class QuerySet:
    timings: list[Timing] = field(default_factory=list)
    rollout_s: float = 0.0
    peak_rss: int = 0

    def slowest(self) -> Timing:
        return max(self.timings, key=lambda t: t.median)


@dataclass
class Result:
    schools: int
    days: int
    points: int
    bootstrap_s: float
    tick_s: float
    state_points: int
    after: QuerySet
    before: QuerySet


def run_set(
    influx: InfluxDB,
    settings: InfluxSettings,
    found: list[tuple[str, str, str]],
    region: str,
    school: str,
    repeat: int,
    rollout_args: list[str],
) -> QuerySet:
    influx.stop()
    influx.start()  # its memory from the writes and the other set let go
    pid = influx.process.pid()
    assert pid is not None
    client = InfluxQL(settings)
    result = QuerySet()
    with PeakMemory(pid) as memory:
        for where, query, span in found:
            text = substitute(query, region, school, span, INTERVAL)
            seconds = []
            rows = 0
            for _ in range(repeat):
                began = time.perf_counter()
                series = client.query(text)
                seconds.append(time.perf_counter() - began)
                rows = sum(len(s.values) for s in series)
            result.timings.append(Timing(where, seconds, rows))
        env = os.environ | {
            "SCHOOL_COLLECTOR_INFLUX__URL": settings.url,
            "SCHOOL_COLLECTOR_INFLUX__DATABASE": settings.database,
            "SCHOOL_COLLECTOR_INFLUX__TIMEOUT_S": str(settings.timeout_s),
        }
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "collector", "rollout", *rollout_args],
                       env=env, cwd=REPO, check=True, capture_output=True)  # fmt: skip
        result.rollout_s = time.perf_counter() - began
    result.peak_rss = memory.peak
    client.close()
    return result


@contextmanager
def influxdb(workdir: Path) -> Iterator[InfluxDB]:
    influx = QuicklyCompacted(workdir, free_port(), free_port())
    influx.start()
    try:
        yield influx
    finally:
        influx.stop()


def measure(
    schools: int, lengths: list[int], repeat: int, workdir: Path, before_commit: str = BEFORE
) -> list[Result]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    print(f"{schools} schools: making one day of each ...", file=sys.stderr)
    fleet = make_fleet(schools, now)
    region = "Almaty"
    school = next(s.school_id for s in fleet.registry if s.region == region)
    results = []
    with influxdb(workdir / f"influx-{schools}") as influx:
        # a raw query over weeks of a dense fleet can take longer than the collector's 10 s
        settings = InfluxSettings(url=influx.url, database="school_monitor", timeout_s=300)
        make_writer(settings).ensure_database()
        oldest = ns(now) - max(lengths) * 86_400 * 1_000_000_000
        import_registry(fleet.registry, settings, "query-cost", oldest)
        points = 0
        done = 0
        for days in lengths:
            before_points = points
            began = time.perf_counter()
            points += write_days(fleet, settings, done, days)
            rate = (points - before_points) / (time.perf_counter() - began)
            print(f"  written at {rate:,.0f} points/s", file=sys.stderr)
            done = days
            with StateKeeper(CollectorSettings(influx=settings)) as keeper:
                began = time.perf_counter()
                state_points = keeper.tick()
                bootstrap_s = time.perf_counter() - began
                began = time.perf_counter()
                keeper.tick()
                tick_s = time.perf_counter() - began
                # it goes on ticking, as in service: the state's slots move on with the clock
                keeper.start()
                print(f"  {days} days: state built in {bootstrap_s:.1f} s; compacting ...",
                      file=sys.stderr)  # fmt: skip
                data = influx.run_dir / "influxdb"
                wait_compacted(data / "data", data / "wal", [settings.database], timeout=3600)
                now_set = every_query(in_tree, SPAN)
                after = run_set(influx, settings, now_set, region, school, repeat, [])
                before_set = every_query(at_commit(before_commit), SPAN)
                at = ["--at", datetime.now(UTC).isoformat()] if before_commit == BEFORE else []
                before = run_set(influx, settings, before_set, region, school, repeat, at)
            results.append(Result(schools, days, points, bootstrap_s, tick_s, state_points,
                                  after, before))  # fmt: skip
            print(detail(results[-1]) + "\n\n" + summary(results[-1:]), flush=True)
    return results


# -- tables --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def detail(result: Result) -> str:
    head = (f"\n{result.schools:,} schools, {result.days} days ({result.points:,} raw points): "
            "each query's median and maximum, ms\n\n")  # fmt: skip
    lines = ["| set | query | median | max | rows |", "|---|---|---|---|---|"]
    for label, found in (("after", result.after), ("before", result.before)):
        for t in found.timings:
            lines.append(f"| {label} | {t.where} | {_ms(t.median)} | {_ms(max(t.seconds))} | "
                         f"{t.rows} |")  # fmt: skip
        lines.append(f"| {label} | `school-collector rollout` | {_ms(found.rollout_s)} | | |")
    return head + "\n".join(lines)


def summary(results: list[Result]) -> str:
    lines = [
        (
            "| schools | days | raw points | slowest query, median ms: before | after | "
            "rollout command, s: before | after | InfluxDB peak RSS, MB: before | after | "
            "state bootstrap, s | tick, s | state points |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.schools:,} | {r.days} | {r.points:,} | {_ms(r.before.slowest().median)} | "
            f"{_ms(r.after.slowest().median)} | {r.before.rollout_s:.2f} | {r.after.rollout_s:.2f} "
            f"| {r.before.peak_rss / 2**20:,.0f} | {r.after.peak_rss / 2**20:,.0f} | "
            f"{r.bootstrap_s:.1f} | {r.tick_s:.2f} | {r.state_points:,} |"
        )
    slowest = "\n".join(
        f"- {r.schools:,} schools, {r.days} days: before {r.before.slowest().where}; "
        f"after {r.after.slowest().where}"
        for r in results
    )
    return "\n".join(lines) + "\n\nThe slowest query of each set:\n\n" + slowest


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Time every dashboard, variable and alert query and the rollout command, "
        f"before (commit {BEFORE}: raw points) and after (the current state), on dense fleets "
        "of growing size and history length, with InfluxDB's peak memory."
    )
    parser.add_argument("--schools", default="500,1500,3000",
                        help="fleet sizes, comma-separated (default: 500,1500,3000)")  # fmt: skip
    parser.add_argument("--days", default="7,30",
                        help="history lengths in days, ascending (default: 7,30)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="runs of each query (default: 5)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--before", default=BEFORE, metavar="COMMIT",
                        help=f"the commit whose dashboards and rules are 'before' (default: "
                        f"{BEFORE}, raw points, with `rollout --at now`; a later one: its own "
                        "reads of the state, with `rollout`)")  # fmt: skip
    args = parser.parse_args()
    sizes = [int(n) for n in args.schools.split(",")]
    lengths = sorted(int(n) for n in args.days.split(","))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="query-cost-") as tmp:
        for schools in sizes:
            results += measure(schools, lengths, args.repeat, Path(tmp), args.before)
    print("\n" + summary(results))
    if args.json:
        args.json.write_text(json.dumps([
            {"schools": r.schools, "days": r.days, "points": r.points,
             "bootstrap_s": r.bootstrap_s, "tick_s": r.tick_s, "state_points": r.state_points,
             **{f"{label}_{k}": v for label, s in (("after", r.after), ("before", r.before))
                for k, v in (("rollout_s", s.rollout_s), ("peak_rss", s.peak_rss),
                             ("queries", {t.where: t.seconds for t in s.timings}))}}
            for r in results
        ], indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
