"""Backlog memory benchmark: the collector's resident memory while it drains growing backlogs.

    .venv/bin/python -m tests.bench.backlog_memory       # 20k, 200k, 1.4M (a full queue): 70 min
    .venv/bin/python -m tests.bench.backlog_memory --backlogs 20000,60000,200000
    .venv/bin/python -m tests.bench.backlog_memory --env MALLOC_ARENA_MAX=2 --json out.json
    .venv/bin/python -m tests.bench.backlog_memory --backlogs 60000 --probe   # in-flight, mallinfo2

For each size of ``--backlogs``, on loopback and with fresh services (a
Mosquitto with the shipped settings and an InfluxDB 1.x, deploy/localstack.py,
the registry of 7,400 simulated schools imported and every school's series
written once, as tests/bench/ingest.py does):

1. the collector's persistent session is created (the collector started and
   stopped once);
2. the backlog of the national mix (tests/bench/national_load.py) is queued on
   the broker for that session by the multi-process publisher;
3. ``school-collector run`` starts with stock settings (stats every second, as
   in ingest.py, to follow its progress) and drains it, while its RSS is
   sampled every 0.2 s (psutil) until its own ``stored`` counter reaches the
   messages sent.

The table gives the drain rate (messages/s from the first stored message to
the last), the peak RSS (the largest sample, and the kernel's VmHWM), the RSS
at the end, the ratio of the peak to the smallest backlog's peak, and the loss
(InfluxDB's count of points against the points sent: a broker that dropped
part of the backlog shows here).

``--env NAME=VALUE`` (repeatable) is given to the collector only, e.g. glibc's
``MALLOC_ARENA_MAX=2`` or ``MALLOC_MMAP_THRESHOLD_=131072``. ``--probe`` runs
the collector through a small wrapper in this module instead of
``python -m collector``; once a second it records the messages received from
paho and not yet acknowledged (the in-flight window the broker should bound at
``mqtt.receive_maximum``), the pipeline's queue, glibc's ``mallinfo2`` and,
with ``--tracemalloc``, Python's traced memory and its largest sources at the
peak. The wrapper's own bookkeeping costs some throughput: compare rates
without ``--probe``.

The probe also records, each second, the pipeline's ``draining()`` flag, the
sizes of what the collector keeps per school or device (the device book, the
budget's buckets, the ``stored_late`` marks, the state keeper's schools and
devices, the late hours), Python's allocated blocks, and when the state keeper
ticked and the registry was read again. To see what grows between two points
of a drain, give the collector (``--env``) ``BACKLOG_MEMORY_SNAPSHOTS=100000,400000``
and ``BACKLOG_MEMORY_SNAPDIR=/some/dir``: at each count of acknowledged messages
the probe writes there gc's objects by type (``snap-N.json``), pymalloc's arenas
(``snap-N.pymalloc``; empty of them under tracemalloc) and, with tracemalloc, a
snapshot to compare (``snap-N.tracemalloc``), and it copies ``probe.jsonl``
there (the work directory is removed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from collector.influx import InfluxError
from tests.bench.ingest import PYTHON, REPO, Bench
from tests.bench.national_load import MIX, mean_points_per_message

PHASE = "backlog"
SAMPLE_S = 0.2
POLL_S = 1.0
STALL_S = 120.0  # no progress for this long: give up on the size


@dataclass
class Result:
    backlog: int
    sent: int
    acked: int
    queue_seconds: float
    messages_per_s: float
    drain_seconds: float
    peak_rss_mb: float
    vm_hwm_mb: float
    end_rss_mb: float
    collector_cpu: float
    stored_messages: int
    sent_points: int
    stored_points: int
    complete: bool
    env: dict[str, str] = field(default_factory=dict)
    peak_smaps: dict[str, float] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def lost_points(self) -> int:
        return self.sent_points - self.stored_points


# ------------------------------------------------------------ measuring --


def rss_mb(pid: int) -> tuple[float, float]:
    """Current RSS and VmHWM (the kernel's peak) of ``pid``, MB; zeros once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    values = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def smaps_breakdown(pid: int) -> dict[str, float]:
    """Resident MB by kind of mapping: [heap], anonymous mmaps, [stack], files."""
    found = {"heap": 0.0, "anon": 0.0, "stack": 0.0, "file": 0.0}
    kind = "anon"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            parts = line.split()
            name = parts[5] if len(parts) > 5 else ""
            kind = ("heap" if name == "[heap]" else "stack" if name.startswith("[stack")
                    else "anon" if not name or name.startswith("[") else "file")  # fmt: skip
        elif head == "Rss:":
            found[kind] += int(line.split()[1]) / 1024
    return found


class Sampler(threading.Thread):
    """RSS of one process every 0.2 s; smaps at the peak every few seconds when asked."""

    def __init__(self, pid: int, smaps: bool) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.smaps = smaps
        self.peak = 0.0
        self.hwm = 0.0
        self.last = 0.0
        self.peak_smaps: dict[str, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        last_smaps = 0.0
        while not self._halt.wait(SAMPLE_S):
            rss, hwm = rss_mb(self.pid)
            if rss == 0.0:
                continue
            self.last, self.hwm = rss, max(self.hwm, hwm)
            if rss > self.peak:
                self.peak = rss
                if self.smaps and time.monotonic() - last_smaps > 3:
                    self.peak_smaps = smaps_breakdown(self.pid) | {"rss": rss}
                    last_smaps = time.monotonic()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def stored_since(bench: Bench, client_id: str, since_ns: int) -> int:
    """The collector's own ``stored`` counter, from stats written after ``since_ns``."""
    rows = bench.query.query(
        f'SELECT last("stored") FROM "collector" WHERE time >= {since_ns} '
        f"AND \"collector_id\" = '{client_id}'"
    )
    return int(rows[0].values[0][1]) if rows and rows[0].values else 0


def points_since(bench: Bench, since_ns: int) -> int:
    """Bench.points_since, tried again: counting millions of points right after a drain,
    while the collector's state keeper reads them too, can outlast the read timeout."""
    for _ in range(4):
        try:
            return bench.points_since(since_ns)
        except InfluxError as exc:
            print(f"  counting the points stored: {exc}; again", file=sys.stderr)
            time.sleep(5)
    return bench.points_since(since_ns)


def stop_collectors(bench: Bench, wait_s: float = 300) -> None:
    """Bench.stop_collectors with a longer wait: right after a large drain the collector's
    state keeper makes its first read of the raw points (over a minute after 1,400,000
    messages), and a stopping collector waits for it."""
    for child in bench.collectors:
        child.terminate()
    for child in bench.collectors:
        try:
            child.wait(wait_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
    bench.collectors = []


@contextlib.contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in os.environ for what starts inside (Bench passes os.environ on)."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------- a size --


@dataclass(frozen=True)
class Options:
    env: dict[str, str]
    probe: bool = False
    smaps: bool = False
    warm: bool = True
    max_drain_s: float | None = None


def drain(workdir: Path, backlog: int, options: Options) -> Result:  # noqa: PLR0912
    env, probe, smaps, warm = options.env, options.probe, options.smaps, options.warm
    bench = Bench(workdir)
    client_id = f"{PHASE}-1"
    started = time.monotonic()
    try:
        if warm:
            print("  warming up: every school's series once ...", file=sys.stderr)
            bench.warm_up()
        bench.make_sessions(1, PHASE)
        print(f"  queueing {backlog:,} messages on the broker ...", file=sys.stderr)
        since = time.time_ns()
        queued_at = time.monotonic()
        sent = bench.publish(backlog, 0)
        queue_seconds = time.monotonic() - queued_at
        print(f"  queued {sent['sent']:,} ({sent['acked']:,} acknowledged by the broker) in "
              f"{queue_seconds:.0f} s; starting the collector", file=sys.stderr)  # fmt: skip
        probe_file = workdir / "probe.jsonl"
        extra = dict(env)
        if probe:
            extra["BACKLOG_MEMORY_PROBE"] = str(probe_file)
        with environment(extra):
            if probe:
                process = _start_probed(bench, client_id)
            else:
                process = bench.start_collectors(1, PHASE)[0]
        drain_since = time.time_ns()
        sampler = Sampler(process.pid, smaps)
        sampler.start()
        cpu_before = process.cpu_times()
        first: tuple[float, int] | None = None
        stored = 0
        progress = (time.monotonic(), 0)
        deadline = time.monotonic() + (options.max_drain_s or backlog / 500 + 600)
        next_print = time.monotonic() + 10
        while True:
            time.sleep(POLL_S)
            now = time.monotonic()
            stored = stored_since(bench, client_id, drain_since)
            if stored > progress[1]:
                progress = (now, stored)
            if first is None and stored > 0:
                first = (now, stored)
            if now >= next_print:
                print(f"  {stored:,} of {sent['sent']:,} stored; RSS {sampler.last:.0f} MB "
                      f"(peak {sampler.peak:.0f} MB)", file=sys.stderr)  # fmt: skip
                next_print = now + 10
            if stored >= sent["sent"]:
                break
            gone = bench.collectors[0].poll() is not None
            if now > deadline or now - progress[0] > STALL_S or gone:
                print("  stopped waiting: timeout, stall or the collector ended",
                      file=sys.stderr)  # fmt: skip
                break
        end = time.monotonic()
        times = process.cpu_times()
        busy = times.user + times.system - cpu_before.user - cpu_before.system
        cpu = 100 * busy / (end - (first[0] if first else started))
        # The counter also counts repeats (a message the broker delivered twice): it can
        # reach the backlog before the last real messages are in. Wait for the points.
        settle = time.monotonic() + 60
        while points_since(bench, since) < sent["points"] and time.monotonic() < settle:
            time.sleep(2)
        time.sleep(0.5)
        sampler.stop()
        if first is None or stored <= first[1]:
            rate = 0.0
        else:
            rate = (stored - first[1]) / max(end - first[0], 1e-6)
        end_rss = sampler.last
        stop_collectors(bench)
        points = points_since(bench, since)
        return Result(
            backlog=backlog, sent=sent["sent"], acked=sent["acked"], queue_seconds=queue_seconds,
            messages_per_s=rate, drain_seconds=end - (first[0] if first else end),
            peak_rss_mb=sampler.peak, vm_hwm_mb=sampler.hwm, end_rss_mb=end_rss,
            collector_cpu=cpu, stored_messages=stored, sent_points=sent["points"],
            stored_points=points, complete=stored >= sent["sent"], env=env,
            peak_smaps=sampler.peak_smaps,
            probe=_probe_summary(probe_file) if probe else {},
        )  # fmt: skip
    finally:
        bench.close()


def _start_probed(bench: Bench, client_id: str) -> psutil.Process:
    """As Bench.start_collectors(1, PHASE), through this module's probe wrapper."""
    env = dict(os.environ) | {
        "SCHOOL_COLLECTOR_MQTT__URL": bench.broker.url,
        "SCHOOL_COLLECTOR_MQTT__CLIENT_ID": client_id,
        "SCHOOL_COLLECTOR_INFLUX__URL": bench.influx.url,
        "SCHOOL_COLLECTOR_STATS_INTERVAL_S": "1",
        "SCHOOL_COLLECTOR_LOG_LEVEL": "WARNING",
    }
    log = (bench.workdir / f"{client_id}.log").open("ab")
    child = subprocess.Popen(
        [PYTHON, "-m", "tests.bench.backlog_memory", "--as-collector"],
        env=env, stdout=log, stderr=log, cwd=REPO,
    )  # fmt: skip
    bench.collectors.append(child)
    return psutil.Process(child.pid)


# ----------------------------------------------------------- the probe --


def _mallinfo2() -> dict[str, int]:
    import ctypes  # noqa: PLC0415 - only in the probed collector

    names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
             "uordblks", "fordblks", "keepcost")  # fmt: skip

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in names]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {name: int(getattr(info, name)) for name in names}


def run_probed_collector() -> int:
    """``school-collector run`` with a thread that writes the probe's JSON lines."""
    import tracemalloc  # noqa: PLC0415 - only in the probed collector

    from collector import cli, consumer, pipeline, retention, state_keeper  # noqa: PLC0415

    out = Path(os.environ["BACKLOG_MEMORY_PROBE"])
    seen: dict[str, Any] = {"submitted": 0, "acked": 0}
    lock = threading.Lock()
    original_init = pipeline.Pipeline.__init__
    original_submit = pipeline.Pipeline.submit
    original_ack = consumer.Consumer.ack
    original_consumer_init = consumer.Consumer.__init__

    def consumer_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_consumer_init(self, *args, **kwargs)
        seen["consumer"] = self

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        seen["pipeline"] = self

    def submit(self: Any, item: Any) -> None:
        with lock:
            seen["submitted"] += 1
        original_submit(self, item)

    def ack(self: Any, item: Any) -> None:
        with lock:
            seen["acked"] += 1
        original_ack(self, item)

    original_tick = state_keeper.StateKeeper.tick
    original_keeper_init = state_keeper.StateKeeper.__init__
    original_late_init = retention.LateHours.__init__

    def tick(self: Any) -> int:
        seen.setdefault("ticks", []).append((seen["acked"], self._read_from is None))
        return original_tick(self)

    def keeper_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_keeper_init(self, *args, **kwargs)
        seen["keeper"] = self

    def late_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_late_init(self, *args, **kwargs)
        seen["late_hours"] = self

    original_refresh = pipeline.Pipeline._refresh_registry

    def refresh(self: Any) -> None:
        seen.setdefault("refreshes", []).append(seen["acked"])
        original_refresh(self)

    pipeline.Pipeline._refresh_registry = refresh  # type: ignore[method-assign]
    state_keeper.StateKeeper.tick = tick  # type: ignore[method-assign]
    state_keeper.StateKeeper.__init__ = keeper_init  # type: ignore[method-assign]
    retention.LateHours.__init__ = late_init  # type: ignore[method-assign]
    pipeline.Pipeline.__init__ = init  # type: ignore[method-assign]
    pipeline.Pipeline.submit = submit  # type: ignore[method-assign]
    consumer.Consumer.ack = ack  # type: ignore[method-assign]
    consumer.Consumer.__init__ = consumer_init  # type: ignore[method-assign]

    marks = sorted(int(n) for n in os.environ.get("BACKLOG_MEMORY_SNAPSHOTS", "").split(",") if n)

    keep = Path(os.environ.get("BACKLOG_MEMORY_SNAPDIR") or out.parent)

    def watch() -> None:
        best = 0
        with out.open("a") as sink:
            while True:
                time.sleep(1)
                the_pipeline = seen.get("pipeline")
                record: dict[str, Any] = {
                    "t": time.time(),
                    "submitted": seen["submitted"],
                    "acked": seen["acked"],
                    "in_flight": seen["submitted"] - seen["acked"],
                    "queue": the_pipeline._queue.qsize() if the_pipeline else 0,
                    # paho's own holdings: QoS 1 publishes (receipts) until their PUBACK,
                    # and packets not yet written
                    **_paho_holdings(seen.get("consumer")),
                    "rss_mb": rss_mb(os.getpid())[0],
                    "mallinfo2": _mallinfo2(),
                    **_sizes(seen),
                }
                while marks and seen["acked"] >= marks[0]:
                    _snapshot(keep / f"snap-{marks.pop(0)}", seen["acked"])
                if tracemalloc.is_tracing():
                    current, peak = tracemalloc.get_traced_memory()
                    record["traced_mb"] = current / 2**20
                    record["traced_peak_mb"] = peak / 2**20
                    if current > best * 1.1:
                        best = current
                        top = tracemalloc.take_snapshot().statistics("lineno")[:12]
                        record["top"] = [
                            [str(stat.traceback[0]), stat.size / 2**20, stat.count] for stat in top
                        ]
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                if keep != out.parent:
                    with (keep / "probe.jsonl").open("a") as copy:
                        copy.write(json.dumps(record) + "\n")

    threading.Thread(target=watch, name="probe", daemon=True).start()
    return cli.main(["run"])


def _snapshot(stem: Path, acked: int) -> None:
    """At a message count: gc's objects by type, pymalloc's stats, a tracemalloc dump."""
    import gc  # noqa: PLC0415 - only in the probed collector
    import tracemalloc  # noqa: PLC0415
    from collections import Counter  # noqa: PLC0415

    counts = Counter(type(o).__qualname__ for o in gc.get_objects())
    sizes: dict[str, Any] = {"acked": acked, "rss_mb": rss_mb(os.getpid())[0],
                             "types": counts.most_common(60)}  # fmt: skip
    if tracemalloc.is_tracing():
        sizes["traced_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.take_snapshot().dump(str(stem) + ".tracemalloc")
    stem.with_suffix(".json").write_text(json.dumps(sizes))
    # pymalloc's arenas and pools, written by CPython to fd 2
    saved = os.dup(2)
    with Path(str(stem) + ".pymalloc").open("w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _sizes(seen: dict[str, Any]) -> dict[str, Any]:
    """The draining flag, the keeper's ticks and the sizes of what grows with schools."""
    found: dict[str, Any] = {"ticks": list(seen.get("ticks", [])),
                             "refreshes": list(seen.get("refreshes", [])),
                             "blocks": sys.getallocatedblocks()}  # fmt: skip
    if (the_pipeline := seen.get("pipeline")) is not None:
        book = the_pipeline._points.book
        found |= {
            "draining": the_pipeline._backlog,
            "queued": the_pipeline._queued,
            "book_schools": len(book._devices),
            "book_devices": sum(len(d) for d in list(book._devices.values())),
            "budget": len(the_pipeline._budget),
            "late_marks": len(the_pipeline._late_marks._marked),
            "letters_in_flight": the_pipeline._letters_in_flight,
            "dead_lettered": the_pipeline.counters.dead_lettered,
            "rejected": dict(the_pipeline.counters.rejected),
            "receipts": the_pipeline.counters.receipts,
        }
    if (keeper := seen.get("keeper")) is not None:
        found |= {"state_schools": len(keeper.state.schools),
                  "state_devices": len(keeper.state.devices)}  # fmt: skip
    if (late := seen.get("late_hours")) is not None:
        found["late_hours"] = len(late._pending)
    return found


def _paho_holdings(the_consumer: Any) -> dict[str, int]:
    if the_consumer is None:
        return {"paho_out_messages": 0, "paho_out_packets": 0}
    client = the_consumer._client
    return {
        "paho_out_messages": len(client._out_messages),
        "paho_out_packets": len(client._out_packet),
    }


def _probe_summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return {}
    mib = 2**20
    peak = max(records, key=lambda r: r["rss_mb"])
    summary: dict[str, Any] = {
        "max_in_flight": max(r["in_flight"] for r in records),
        "max_queue": max(r["queue"] for r in records),
        "max_paho_out_messages": max(r.get("paho_out_messages", 0) for r in records),
        "max_paho_out_packets": max(r.get("paho_out_packets", 0) for r in records),
        "at_peak_rss": {
            "rss_mb": peak["rss_mb"],
            "in_flight": peak["in_flight"],
            "queue": peak["queue"],
            "paho_out_messages": peak.get("paho_out_messages", 0),
            "paho_out_packets": peak.get("paho_out_packets", 0),
            "malloc_in_use_mb": peak["mallinfo2"]["uordblks"] / mib,
            "malloc_free_mb": peak["mallinfo2"]["fordblks"] / mib,
            "malloc_arena_mb": peak["mallinfo2"]["arena"] / mib,
            "malloc_mmapped_mb": peak["mallinfo2"]["hblkhd"] / mib,
        },
        "max_malloc_in_use_mb": max(r["mallinfo2"]["uordblks"] for r in records) / mib,
    }
    if "traced_mb" in records[-1]:
        summary["max_traced_mb"] = max(r["traced_mb"] for r in records)
        tops = [r for r in records if "top" in r]
        if tops:
            summary["top_at_traced_peak"] = tops[-1]["top"]
    return summary


# --------------------------------------------------------------- report --


def table(results: list[Result]) -> str:
    smallest = min(results, key=lambda r: r.backlog).peak_rss_mb or 1.0
    lines = [
        (
            "| backlog | messages/s | peak RSS | VmHWM | RSS at end | peak / smallest's | "
            "collector CPU | points lost | drained |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.backlog:,} | {r.messages_per_s:,.0f} | {r.peak_rss_mb:.0f} MB | "
        f"{r.vm_hwm_mb:.0f} MB | {r.end_rss_mb:.0f} MB | {r.peak_rss_mb / smallest:.2f} | "
        f"{r.collector_cpu:.0f} % | {r.lost_points:,} | {'yes' if r.complete else 'NO'} |"
        for r in results
    ]
    return "\n".join(lines)


def main() -> int:
    if "--as-collector" in sys.argv[1:]:
        return run_probed_collector()
    parser = argparse.ArgumentParser(
        description="The collector's peak RSS while draining backlogs of growing size.",
    )
    parser.add_argument("--backlogs", default="20000,200000,1400000",
                        help="backlog sizes, comma-separated (default %(default)s)")  # fmt: skip
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the collector only (repeatable)")  # fmt: skip
    parser.add_argument("--probe", action="store_true",
                        help="run the collector through the probe: in-flight, malloc")  # fmt: skip
    parser.add_argument("--tracemalloc", action="store_true",
                        help="with --probe: also trace Python allocations (slow)")  # fmt: skip
    parser.add_argument("--smaps", action="store_true",
                        help="resident MB by mapping (heap, anon, file) at the peak")  # fmt: skip
    parser.add_argument("--no-warm-up", action="store_true",
                        help="skip writing every school's series before each size")  # fmt: skip
    parser.add_argument("--max-drain-s", type=float,
                        help="stop waiting for a drain after this long and report it as "
                             "not drained (default: backlog/500 + 600 s)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    backlogs = [int(size) for size in args.backlogs.split(",")]
    env = dict(item.split("=", 1) for item in args.env)
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = "1"
    mix = ", ".join(f"{kind} {100 * share:.1f} %" for kind, share in MIX.items())
    print(f"national mix: {mix}; {mean_points_per_message():.2f} points a message; "
          f"collector environment: {env or 'stock'}", file=sys.stderr)  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="backlog-memory-") as workdir:
        for backlog in backlogs:
            print(f"backlog of {backlog:,} messages:", file=sys.stderr)
            where = Path(workdir) / str(backlog)
            where.mkdir()
            options = Options(env, args.probe, args.smaps, not args.no_warm_up, args.max_drain_s)
            result = drain(where, backlog, options)
            results.append(result)
            print(f"  {result.messages_per_s:,.0f} messages/s, peak RSS "
                  f"{result.peak_rss_mb:.0f} MB, {result.lost_points:,} points lost",
                  file=sys.stderr)  # fmt: skip
            if result.probe:
                print(f"  probe: {json.dumps(result.probe)}", file=sys.stderr)
            if result.peak_smaps:
                print(f"  smaps at peak (MB): {json.dumps(result.peak_smaps)}", file=sys.stderr)
    print(f"Draining a backlog of the national mix; collector environment: {env or 'stock'}")
    print()
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(
            [asdict(r) | {"lost_points": r.lost_points} for r in results], indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
