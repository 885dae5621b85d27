"""The collector's state keeper: the current state, and the rollout computed from it.

At its first tick the keeper reads, once, what the state needs from raw points: the
successful tests of the rollout window, each school's last speed result, its
agent's latest values, its devices' latest states. From then on, every
``state.interval_s`` (a *tick*) it reads only what was stored since the last
tick, folds it in (:class:`collector.current_state.CurrentState`) and writes
the state points that changed, and all of them every ``REFRESH_S``.

Points stored late (an outbox sent after an outage, a collector draining a
backlog) are measured before the last tick read. The pipeline that stores them
writes a ``stored_late`` marker in the same request, so any keeper, in this
collector or another sharing the subscription, reads that school again from
the marker's time. Every keeper derives the state from InfluxDB, not from the
messages it happened to receive, so several collectors write the same points
at the same (whole-interval) timestamps.

The registry gives every registered school's state its place (name, latitude,
longitude), at start and again with each rollout.

Every ``rollout.interval_s`` the tick also computes the rollout percentages from
the state's facts (no raw query), writes them to ``rollout``, the schools to
chase to ``rollout_school``, and the devices not up by kind and state to
``devices_not_up``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from collector.current_state import (
    AGENT_DAYS,
    AGENT_FIELDS,
    LATE_S,
    NS,
    REFRESH_S,
    SCHOOL_ALERT,
    STORED_LATE,
    CurrentState,
    agent_days,
    at_tick,
    days_ns,
    is_refresh,
    ns_of,
)
from collector.influx import STATE, InfluxError, make_history_writer, make_writer
from collector.influx.query import InfluxQL, Series
from collector.line_protocol import encode
from collector.memory import release_free_memory
from collector.registry_store import load_registry
from collector.rollout import (
    QUERIES,
    SAFETY_KINDS,
    Survey,
    rollout_lines,
    survey,
)
from collector.rollup import postpone
from collector.school_checks import SchoolChecks
from collector.settings import CollectorSettings

log = logging.getLogger(__name__)

DEVICES_NOT_UP = "devices_not_up"
NOT_UP_STATES = ("late", "down", "stale")
# How far before the last tick's read a tick reads again: points stored up to
# LATE_S after they were measured carry no marker, and clocks differ a little.
OVERLAP_S = LATE_S + 60
LATE_SCHOOLS_PER_READ = 50
# The first tick (reading every school's raw points) waits for a backlog to drain, up to
# this long: a 2,000,000-message backlog drains in about 25 minutes. Built during the
# drain, the state would be half of it, read while InfluxDB takes the backlog, and it
# held several times the drain's memory. Later ticks wait at most rollout.interval_s.
BOOTSTRAP_WAIT_S = 3600.0

SPEED_ROWS = (
    'SELECT "result_code", "download_mbps", "result" FROM "speed" WHERE {where} '
    'GROUP BY "region", "school_id"'
)
AGENT_ROWS = (
    'SELECT "online", "reason", "version", "config_version", "outbox_messages", '
    '"outbox_dropped", "data_used_month_bytes", "data_budget_month_bytes", "status" FROM "agent" '
    'WHERE {where} GROUP BY "region", "school_id"'
)
DEVICE_ROWS = (
    'SELECT "state", "state_code", "changed_at_ms", "label", "up" FROM "device" '
    'WHERE {where} GROUP BY "region", "school_id", "device_id", "kind"'
)


class StateKeeper:
    def __init__(
        self,
        settings: CollectorSettings,
        draining: Callable[[], bool] = lambda: False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._draining = draining
        self._clock = clock
        influx = settings.influx
        self._ql = InfluxQL(influx)
        self._state_writer = make_writer(influx.model_copy(update={"retention_policy": STATE}))
        self._history_writer = make_history_writer(influx)
        self._raw_writer = make_writer(influx)
        self.state = CurrentState(
            settings.rollout.rules(), school_hours=settings.school_hours.school_hours()
        )
        self._read_from: int | None = None  # ns: when the last read began
        self._school_checks = SchoolChecks(self._ql)  # whole days kept between rollouts
        self._rollout_due = 0.0  # monotonic
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-keeper", daemon=True)

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def __enter__(self) -> StateKeeper:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the thread (if started) and close the connections to InfluxDB."""
        self._stopping.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=60)
        self._ql.close()
        for writer in (self._state_writer, self._history_writer, self._raw_writer):
            writer.close()

    def _run(self) -> None:
        interval = self._settings.state.interval_s
        # The first read too waits for a whole interval: by then the pipeline knows whether
        # it drains a backlog, and the read of every school's raw points (the bootstrap) is
        # postponed with the rest instead of loading InfluxDB while it takes the backlog.
        delay = interval - time.time() % interval
        while not self._stopping.wait(delay):
            delay = interval - time.time() % interval  # on whole intervals, as other keepers
            first = self._read_from is None
            limit = BOOTSTRAP_WAIT_S if first else self._settings.rollout.interval_s
            if postpone(self._draining, self._stopping, limit):
                return
            try:
                self.tick()
            except InfluxError as exc:
                log.warning(
                    "the current state was not updated this time (%s); trying again next "
                    'interval. If InfluxDB says the retention policy "state" is missing, an '
                    "administrator runs `school-collector retention apply`",
                    exc,
                )
            except Exception:
                log.exception("the state keeper failed; trying again next interval")
            release_free_memory()

    # -- one tick ---------------------------------------------------------------------------

    def tick(self) -> int:
        """Read what was stored since the last tick, write the state; return points written."""
        now = self._clock()
        started = time.time_ns()
        if self._read_from is None:
            self.bootstrap(now)
        else:
            self._catch_up(self._read_from - OVERLAP_S * NS, now)
        self._read_from = started
        at = at_tick(now, self._settings.state.interval_s)
        lines = self.state.lines(at, refresh=is_refresh(at, self._settings.state.interval_s))
        try:
            if lines:
                self._state_writer.write(lines)
        except InfluxError:
            self.state.unwritten()
            raise
        try:
            for statement in self.state.written():
                self._ql.query(statement)
        except InfluxError as exc:  # InfluxDB 2.x's InfluxQL has no DELETE
            log.warning("a moved school's old list rows stay until their slots end (%s)", exc)
        self.state.forget(at)
        written = len(lines)
        if time.monotonic() >= self._rollout_due:
            self._rollout_due = time.monotonic() + self._settings.rollout.interval_s
            written += self.rollout(now)
        log.debug("current state: %d points written", written)
        return written

    def bootstrap(self, now: datetime) -> None:
        """Read what the state needs from raw points (once, at start)."""
        began = time.monotonic()
        rules = self.state.rules
        state = self.state = CurrentState(rules, school_hours=self.state.school_hours)
        at = ns_of(now)
        log.info("building the current state from raw points (once, at start) ...")
        window = at - days_ns(rules.speed_window_days)
        state.add_tests(self._ql.stream(
            'SELECT "download_mbps" FROM "speed" WHERE "result" = \'success\' '  # noqa: S608
            f'AND time > {window} GROUP BY "region", "school_id"', epoch="ns"))  # fmt: skip
        for name in ("last_report_summary", "last_report"):
            state.add_last_report(self._ql.stream(QUERIES[name].format(until=at), epoch="ns"))
        for name in AGENT_FIELDS:
            days = agent_days(name)
            online = "\"status\" = 'online' AND " if name == "version" else ""
            state.add_agent_latest(name, self._ql.stream(
                f'SELECT last("{name}") FROM "agent" WHERE {online}time > {at - days_ns(days)} '  # noqa: S608
                'GROUP BY "region", "school_id"', epoch="ns"))  # fmt: skip
        fresh = at - int(rules.device_fresh_minutes * 60 * NS)
        state.add_devices(self._query(DEVICE_ROWS, f"time > {fresh}"))
        registry = load_registry(self._ql, before_ns=at)
        if registry is not None:
            state.place(registry)
        self._flagged_before(at)
        log.info(
            "current state built in %.1f s: %d schools, %d devices in the last %g minutes",
            time.monotonic() - began, len(state.schools), len(state.devices),
            rules.device_fresh_minutes,
        )  # fmt: skip

    def _flagged_before(self, at: int) -> None:
        """Schools an earlier run left flagged: each gets its last point if fine by now."""
        try:
            found = self._ql.query(
                f'SELECT last("flagged") FROM "{STATE}"."{SCHOOL_ALERT}" '  # noqa: S608
                f'WHERE time > {at - REFRESH_S * 2 * NS} GROUP BY "school_id"'
            )
        except InfluxError as exc:
            log.warning("could not read which schools were flagged (%s)", exc)
            return
        for s in found:
            school_id = s.tags.get("school_id", "")
            if s.values and s.values[0][1] == 1 and school_id in self.state.schools:
                self.state.written_alerts[school_id] = {"flagged": 1}

    def _catch_up(self, since: int, now: datetime) -> None:
        """Fold in what was stored since ``since`` (ns), and again the late schools."""
        at = ns_of(now)
        self._fold(f"time > {since}", f"time > {since}", at)
        late = {
            s.tags["school_id"]: int(s.values[0][1])
            for s in self._ql.query(
                f'SELECT min("since_ns") FROM "{STORED_LATE}" WHERE time > {since} '  # noqa: S608
                'GROUP BY "school_id"'
            )
            if s.values and s.values[0][1] is not None
        }
        if late:
            self._school_checks.stored_late(min(late.values()))
        late = {school: when for school, when in late.items() if when <= since}
        for read in late_reads(late, self.state, at):
            pattern = "|".join(_regex_literal(name) for name in read.schools)
            schools = f'"school_id" =~ /^({pattern})$/'
            self._fold(f"{schools} AND time >= {read.since}",
                       f"{schools} AND time >= {read.agent_since}", at)  # fmt: skip

    def _fold(self, where: str, agent_where: str, at: int) -> None:
        """Fold in the raw rows matching ``where``; devices only within the fresh window."""
        self.state.add_speed(self._query(SPEED_ROWS, where))
        self.state.add_agent(self._query(AGENT_ROWS, agent_where))
        fresh = at - int(self.state.rules.device_fresh_minutes * 60 * NS)
        self.state.add_devices(self._query(DEVICE_ROWS, f"{where} AND time > {fresh}"))

    def _query(self, template: str, where: str) -> Iterator[Series]:
        """The rows as InfluxDB sends them, a chunk at a time: after a backlog a read can
        hold hundreds of thousands of rows, and the state keeps only the latest of each."""
        return self._ql.stream(template.format(where=where), epoch="ns")

    # -- the rollout -----------------------------------------------------------------------

    def survey(self, at: datetime) -> Survey | None:
        """The rollout's survey from the state's facts; the registry, and the checks in school
        hours (one sum per school over the window, at each rollout), come from InfluxDB."""
        facts = self.state.facts(at)
        days = self.state.rules.availability_window_days
        facts.school_checks = self._school_checks.window(at, days)
        return survey(self._ql, at, self.state.rules, facts=facts)

    def rollout(self, now: datetime) -> int:
        """Write the rollout, the schools to chase and the devices not up; return points."""
        found = self.survey(now)
        if found is not None:  # a registry imported since shows at the next tick
            self.state.place(found.registry)
        lines = rollout_lines(found.rows(), now) if found is not None else []
        lines += devices_not_up_lines(self.state.device_counts(ns_of(now)), ns_of(now))
        self._history_writer.write(lines)
        chase = found.chase_lines() if found is not None else []
        if chase:
            self._raw_writer.write(chase)
        return len(lines) + len(chase)


def devices_not_up_lines(counts: dict[tuple[str, str], int], at: int) -> list[str]:
    """``devices_not_up``: per safety kind and state, the devices listed (zeros too)."""
    kinds: Iterable[str] = sorted({k.value for k in SAFETY_KINDS} | {k for k, _ in counts})
    return [
        encode(DEVICES_NOT_UP, {"kind": kind, "state": state},
               {"devices": counts.get((kind, state), 0)}, at)
        for kind in kinds
        for state in NOT_UP_STATES
    ]  # fmt: skip


@dataclass(frozen=True)
class LateRead:
    """Late schools read again together: speed results since ``since``, agent rows since
    ``agent_since``, device states within the fresh window."""

    schools: list[str]
    since: int
    agent_since: int


def late_reads(late: Mapping[str, int], state: CurrentState, at: int) -> list[LateRead]:
    """What to read again for ``late`` (school -> its oldest late point, ns).

    What a late point can change bounds each read, so a school sending old-dated
    messages (an outbox after an outage, or a hostile one) costs little:

    - a speed result may be a test in the window or a last report: read from its
      time (a few points a day), at most ``AGENT_DAYS`` back;
    - an agent row older than the school's latest value of every agent field
      changes nothing (each keeps its latest): read from the oldest of those, or
      from the start of a missing field's window;
    - a device state counts only within ``rollout.device_fresh_minutes``.

    Schools with nearby times share a query (``LATE_SCHOOLS_PER_READ`` at most).
    """
    floor = at - days_ns(AGENT_DAYS)
    wanted = sorted(
        (max(since, floor), max(since, state.agent_floor(school, at)), school)
        for school, since in late.items()
    )
    reads = []
    for first in range(0, len(wanted), LATE_SCHOOLS_PER_READ):
        chunk = wanted[first : first + LATE_SCHOOLS_PER_READ]
        reads.append(LateRead(sorted(s for _, _, s in chunk), min(s for s, _, _ in chunk),
                              min(a for _, a, _ in chunk)))  # fmt: skip
    return reads


def _regex_literal(value: str) -> str:
    """``value`` matched literally inside an InfluxQL /regex/."""
    return "".join("\\" + c if not c.isalnum() and c not in "-_" else c for c in value)
