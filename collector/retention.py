"""How long InfluxDB keeps what: raw points for weeks, summaries and the registry for years.

Two retention policies in the collector's database (InfluxDB 1.x):

- the database's **default** policy (``autogen``), or ``influx.retention_policy``
  when set, holds the raw points the collector writes, for ``retention.raw_days``.
  InfluxDB drops them a shard (one day) at a time.
- **``history``** holds, for ``retention.history_days`` (0: for ever), what must
  outlive the raw points: the school registry (``school``, ``registry_import``),
  the ``rollout`` percentages, and a summary per ``retention.summary_interval_s``
  (an hour) of each raw measurement (``SUMMARIES``), made by continuous queries.

A continuous query summarises each interval once it has ended, and again on its
next run (``RESAMPLE ... FOR`` two intervals), so points up to an interval late
still count. Points later than that (a school's outbox after a long outage) are
summarised by ``school-collector retention backfill``, which runs the very
same ``SELECT ... INTO`` over a time range; the collector does so by itself for
the hours its late points fell in (:class:`LateHours`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from collector.influx import HISTORY, STATE, STATE_DURATION, InfluxError
from collector.influx.query import InfluxQL, InfluxQueryError
from collector.points import ns
from collector.settings import CollectorSettings

log = logging.getLogger(__name__)

NS = 1_000_000_000
# More schools late in one interval than this: summarise the interval whole.
WHOLE_INTERVAL_SCHOOLS = 50


@dataclass(frozen=True)
class Summary:
    """One continuous query: ``source`` (raw) summarised into ``history``.``target``."""

    source: str
    target: str
    fields: tuple[str, ...]
    tags: tuple[str, ...]

    def select(self, database: str, raw_policy: str) -> str:
        """The ``SELECT ... INTO`` without its time range and interval."""
        into = f'{_ident(database)}."{HISTORY}".{_ident(self.target)}'
        source = f"{_ident(database)}.{_ident(raw_policy)}.{_ident(self.source)}"
        return f"SELECT {', '.join(self.fields)} INTO {into} FROM {source}"  # noqa: S608

    def group_by(self, interval_s: int) -> str:
        return f"GROUP BY time({interval_s}s), " + ", ".join(_ident(t) for t in self.tags)


_PLACE = ("school_id", "agent_id", "region", "district")

# What a year needs of each raw measurement. device_report (message numbering
# and ids) is operational only and is not summarised.
SUMMARIES: tuple[Summary, ...] = (
    Summary(
        "speed",
        "speed_summary",
        (
            'count("result_code") AS "tests"',
            'mean("download_mbps") AS "download_mbps"',
            'min("download_mbps") AS "download_min_mbps"',
            'mean("upload_mbps") AS "upload_mbps"',
            'mean("latency_ms") AS "latency_ms"',
            'mean("jitter_ms") AS "jitter_ms"',
            'mean("meets_threshold") AS "meets_threshold"',
            'sum("bytes_received") AS "bytes_received"',
            'sum("bytes_sent") AS "bytes_sent"',
        ),
        (*_PLACE, "result"),
    ),
    Summary(
        "device",
        "device_summary",
        (
            'count("state_code") AS "reports"',
            'mean("up") AS "up_ratio"',
            'max("state_code") AS "worst_state_code"',
            'mean("response_ms") AS "response_ms"',
        ),
        (*_PLACE, "device_id", "kind"),
    ),
    Summary(
        "agent",
        "agent_summary",
        (
            'count("online") AS "reports"',
            'mean("online") AS "online_ratio"',
            'mean("cpu_percent") AS "cpu_percent"',
            'max("cpu_percent") AS "cpu_max_percent"',
            'mean("memory_percent") AS "memory_percent"',
            'max("disk_percent") AS "disk_percent"',
            'mean("temperature_c") AS "temperature_c"',
            'max("temperature_c") AS "temperature_max_c"',
            'max("outbox_messages") AS "outbox_max_messages"',
            'max("outbox_dropped") AS "outbox_dropped"',
            'max("data_used_month_bytes") AS "data_used_month_bytes"',
        ),
        _PLACE,
    ),
    Summary(
        "connectivity",
        "connectivity_summary",
        (
            'sum("checks") AS "checks"',
            'sum("passed") AS "passed"',
            'sum("school_checks") AS "school_checks"',
            'sum("school_passed") AS "school_passed"',
            'sum("down_no_route_s") AS "down_no_route_s"',
            'sum("down_gateway_s") AS "down_gateway_s"',
            'sum("down_dns_s") AS "down_dns_s"',
            'sum("down_upstream_s") AS "down_upstream_s"',
        ),
        _PLACE,
    ),
    Summary(
        "outage",
        "outage_summary",
        (
            'count("duration_s") AS "outages"',
            'sum("duration_s") AS "down_s"',
            'max("duration_s") AS "longest_s"',
        ),
        (*_PLACE, "cause"),
    ),
    Summary(
        "collector",
        "collector_summary",
        (
            'max("received") AS "received"',
            'max("stored") AS "stored"',
            'max("rejected") AS "rejected"',
            'max("dead_lettered") AS "dead_lettered"',
            'max("lag_p99_ms") AS "lag_p99_ms"',
            'max("lag_max_ms") AS "lag_max_ms"',
        ),
        ("collector_id",),
    ),
)

# Written straight into the history policy by the collector.
KEPT = ("school", "registry_import", "rollout")


@dataclass(frozen=True)
class Plan:
    database: str
    raw_days: int
    history_days: int
    summary_interval_s: int
    raw_policy: str | None = None  # influx.retention_policy; None: the database's default

    @classmethod
    def of(cls, settings: CollectorSettings) -> Plan:
        kept = settings.retention
        return cls(settings.influx.database, kept.raw_days, kept.history_days,
                   kept.summary_interval_s, settings.influx.retention_policy)  # fmt: skip

    def raw(self, ql: InfluxQL) -> str:
        """The policy the collector writes raw points to."""
        return self.raw_policy or default_policy(ql, self.database)

    def history_duration(self) -> str:
        return "INF" if self.history_days == 0 else f"{self.history_days}d"

    def query_name(self, summary: Summary) -> str:
        return f"{summary.target}_cq"

    def continuous_query(self, summary: Summary, raw_policy: str) -> str:
        every = self.summary_interval_s
        return (
            f"CREATE CONTINUOUS QUERY {_ident(self.query_name(summary))} "
            f"ON {_ident(self.database)} RESAMPLE EVERY {every}s FOR {2 * every}s BEGIN "
            f"{summary.select(self.database, raw_policy)} {summary.group_by(every)} END"
        )

    def backfill(self, summary: Summary, raw_policy: str, since_ns: int, until_ns: int,
                 school_id: str | None = None) -> str:  # fmt: skip
        """The continuous query's statement over [since, until), optionally one school."""
        where = f"time >= {since_ns} AND time < {until_ns}"
        if school_id is not None and "school_id" in summary.tags:
            where = f'"school_id" = {_literal(school_id)} AND {where}'
        return (
            f"{summary.select(self.database, raw_policy)} WHERE {where} "
            f"{summary.group_by(self.summary_interval_s)}"
        )


@dataclass(frozen=True)
class Policy:
    name: str
    duration: str
    shard_duration: str
    default: bool


def policies(ql: InfluxQL, database: str) -> list[Policy]:
    found = ql.query(f"SHOW RETENTION POLICIES ON {_ident(database)}")
    return [
        Policy(r["name"], r["duration"], r["shardGroupDuration"], bool(r["default"]))
        for s in found
        for r in s.rows()
    ]


def default_policy(ql: InfluxQL, database: str) -> str:
    for policy in policies(ql, database):
        if policy.default:
            return policy.name
    raise InfluxQueryError(f"database {database!r} has no default retention policy")


def apply(ql: InfluxQL, plan: Plan) -> list[str]:
    """Make the database match the plan; return the statements run (for people).

    The database and its ``history`` policy exist already: the writer's
    ``ensure_database`` creates both.
    """
    raw = plan.raw(ql)
    db = _ident(plan.database)
    statements = [
        (
            f"ALTER RETENTION POLICY {_ident(raw)} ON {db} DURATION {plan.raw_days}d "
            f"SHARD DURATION 1d{'' if plan.raw_policy else ' DEFAULT'}"
        ),
        (
            f'ALTER RETENTION POLICY "{HISTORY}" ON {db} DURATION {plan.history_duration()} '
            "SHARD DURATION 30d"
        ),
        f'ALTER RETENTION POLICY "{STATE}" ON {db} DURATION {STATE_DURATION} SHARD DURATION 1h',
    ]
    existing = {
        row["name"]
        for s in ql.query("SHOW CONTINUOUS QUERIES")
        if s.name == plan.database
        for row in s.rows()
    }
    for summary in SUMMARIES:
        name = plan.query_name(summary)
        if name in existing:  # a changed interval or definition replaces the old one
            statements.append(f"DROP CONTINUOUS QUERY {_ident(name)} ON {db}")
        statements.append(plan.continuous_query(summary, raw))
    for statement in statements:
        ql.query(statement)
    return statements


def backfill(ql: InfluxQL, plan: Plan, since: datetime, until: datetime,
             school_id: str | None = None) -> int:  # fmt: skip
    """Summarise raw points in [since, until) into history; return the summary points written.

    ``since`` is rounded down and ``until`` up to whole intervals, so each
    interval is summarised whole, exactly as the continuous query does.
    """
    raw = plan.raw(ql)
    step = plan.summary_interval_s * NS
    since_ns = ns(since) // step * step
    until_ns = -(-ns(until) // step) * step
    written = 0
    for summary in SUMMARIES:
        if school_id is not None and "school_id" not in summary.tags:
            continue
        for series in ql.query(plan.backfill(summary, raw, since_ns, until_ns, school_id)):
            written += sum(int(row[1]) for row in series.values)
    return written


class LateHours:
    """Summarise again the intervals that got points after their continuous query's last run.

    The pipeline notes each message it stored (school, measured time, stored
    time); a thread backfills each late (school, interval) pair for that school
    alone, every quarter interval (at most every 5 minutes).
    """

    def __init__(self, plan: Plan, ql: InfluxQL) -> None:
        self._plan = plan
        self._ql = ql
        self._step_ns = plan.summary_interval_s * NS
        self._pending: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="late-hours", daemon=True)

    def note(self, school_id: str, measured_ns: int, stored_ns: int) -> None:
        """A point of ``school_id`` at ``measured_ns`` was written at ``stored_ns``."""
        start = measured_ns // self._step_ns * self._step_ns
        # The query's last run over this interval is at start + 2 steps; a point
        # written in the last quarter step before it might just miss that run.
        if stored_ns < start + 2 * self._step_ns - self._step_ns // 4:
            return
        with self._lock:
            self._pending.add((school_id, start))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)
        self.once()
        self._ql.close()

    def once(self) -> int:
        """Backfill every noted interval; return the school-intervals done.

        An interval late for many schools at once (the collector itself was
        away, and the broker kept the messages) is summarised whole, in one
        statement per summary, rather than school by school. What fails stays
        noted for the next round.
        """
        with self._lock:
            pending, self._pending = self._pending, set()
        by_start: dict[int, set[str]] = {}
        for school_id, start in pending:
            by_start.setdefault(start, set()).add(school_id)
        done = 0
        for start in sorted(by_start):
            schools = by_start[start]
            since = datetime.fromtimestamp(start / NS, UTC)
            until = datetime.fromtimestamp((start + self._step_ns) / NS, UTC)
            batches: list[str | None] = [None]  # None: every school at once
            if len(schools) <= WHOLE_INTERVAL_SCHOOLS:
                batches = [one for one in sorted(schools)]  # noqa: C416 - typed as the list
            try:
                for one in batches:
                    backfill(self._ql, self._plan, since, until, one)
                    done += len(schools) if one is None else 1
                    schools.discard(one or "")
            except InfluxError as exc:
                log.warning("late points not summarised yet (%s); trying again", exc)
                with self._lock:
                    self._pending.update(
                        (sid, when) for when, sids in by_start.items() if when >= start
                        for sid in sids
                    )  # fmt: skip
                break
            by_start[start] = set()
        return done

    def _run(self) -> None:
        pause = min(self._plan.summary_interval_s / 4, 300.0)
        while not self._stopping.wait(pause):
            try:
                done = self.once()
            except Exception:
                log.exception("summarising late points failed; trying again")
            else:
                if done:
                    log.info("summarised %d late school-interval(s) into history", done)


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
