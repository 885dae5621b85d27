"""The collector's state keeper: the current state, and the rollout computed from it.

At start the keeper reads, once, what the state needs from raw points: the
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

Every ``rollout.interval_s`` the tick also computes the rollout percentages from
the state's facts (no raw query), writes them to ``rollout``, the schools to
chase to ``rollout_school``, and the devices not up by kind and state to
``devices_not_up``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from collector.current_state import (
    AGENT_DAYS,
    AGENT_DETAIL_DAYS,
    AGENT_FIELDS,
    LATE_S,
    NS,
    STORED_LATE,
    CurrentState,
    at_tick,
    days_ns,
    is_refresh,
    ns_of,
)
from collector.influx import STATE, InfluxError, make_history_writer, make_writer
from collector.influx.query import InfluxQL, Series
from collector.line_protocol import encode
from collector.memory import release_free_memory
from collector.rollout import QUERIES, SAFETY_KINDS, Survey, rollout_lines, survey
from collector.rollup import postpone
from collector.settings import CollectorSettings

log = logging.getLogger(__name__)

DEVICES_NOT_UP = "devices_not_up"
NOT_UP_STATES = ("late", "down", "stale")
# How far before the last tick's read a tick reads again: points stored up to
# LATE_S after they were measured carry no marker, and clocks differ a little.
OVERLAP_S = LATE_S + 60
# More late schools than this in one tick: read everything since the oldest.
LATE_SCHOOLS_BY_NAME = 200

SPEED_ROWS = (
    'SELECT "result_code", "download_mbps", "result" FROM "speed" WHERE {where} '
    'GROUP BY "region", "school_id"'
)
AGENT_ROWS = (
    'SELECT "online", "reason", "version", "outbox_messages", "outbox_dropped", '
    '"data_used_month_bytes", "data_budget_month_bytes", "status" FROM "agent" '
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
        self.state = CurrentState(settings.rollout.rules())
        self._read_from: int | None = None  # ns: when the last read began
        self._rollout_due = 0.0  # monotonic
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-keeper", daemon=True)

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=60)
        self._ql.close()
        for writer in (self._state_writer, self._history_writer, self._raw_writer):
            writer.close()

    def _run(self) -> None:
        interval = self._settings.state.interval_s
        delay = 0.0
        while not self._stopping.wait(delay):
            delay = interval - time.time() % interval  # on whole intervals, as other keepers
            if postpone(self._draining, self._stopping, self._settings.rollout.interval_s):
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
        if lines:
            self._state_writer.write(lines)
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
        state = self.state = CurrentState(rules)
        at = ns_of(now)
        log.info("building the current state from raw points (once, at start) ...")
        window = at - days_ns(rules.speed_window_days)
        state.add_tests(self._ql.query(
            'SELECT "download_mbps" FROM "speed" WHERE "result" = \'success\' '  # noqa: S608
            f'AND time > {window} GROUP BY "region", "school_id"', epoch="ns"))  # fmt: skip
        for name in ("last_report_summary", "last_report"):
            state.add_last_report(self._ql.query(QUERIES[name].format(until=at), epoch="ns"))
        for name in AGENT_FIELDS:
            days = AGENT_DAYS if name in ("online", "reason") else AGENT_DETAIL_DAYS
            online = "\"status\" = 'online' AND " if name == "version" else ""
            state.add_agent_latest(name, self._ql.query(
                f'SELECT last("{name}") FROM "agent" WHERE {online}time > {at - days_ns(days)} '  # noqa: S608
                'GROUP BY "region", "school_id"', epoch="ns"))  # fmt: skip
        fresh = at - int(rules.device_fresh_minutes * 60 * NS)
        state.add_devices(self._query(DEVICE_ROWS, f"time > {fresh}"))
        log.info(
            "current state built in %.1f s: %d schools, %d devices in the last %g minutes",
            time.monotonic() - began, len(state.schools), len(state.devices),
            rules.device_fresh_minutes,
        )  # fmt: skip

    def _catch_up(self, since: int, now: datetime) -> None:
        """Fold in what was stored since ``since`` (ns), and again the late schools."""
        at = ns_of(now)
        self._fold(f"time > {since}", at)
        late = {
            s.tags["school_id"]: int(s.values[0][1])
            for s in self._ql.query(
                f'SELECT min("since_ns") FROM "{STORED_LATE}" WHERE time > {since} '  # noqa: S608
                'GROUP BY "school_id"'
            )
            if s.values and s.values[0][1] is not None
        }
        late = {school: when for school, when in late.items() if when <= since}
        if not late:
            return
        oldest = max(min(late.values()), at - days_ns(AGENT_DAYS))
        if len(late) > LATE_SCHOOLS_BY_NAME:
            self._fold(f"time >= {oldest}", at)
            return
        names = sorted(late)
        for first in range(0, len(names), 50):
            chunk = names[first : first + 50]
            pattern = "|".join(_regex_literal(name) for name in chunk)
            since_chunk = max(min(late[name] for name in chunk), oldest)
            self._fold(f'"school_id" =~ /^({pattern})$/ AND time >= {since_chunk}', at)

    def _fold(self, where: str, at: int) -> None:
        """Fold in the raw rows matching ``where``; devices only within the fresh window."""
        self.state.add_speed(self._query(SPEED_ROWS, where))
        self.state.add_agent(self._query(AGENT_ROWS, where))
        fresh = at - int(self.state.rules.device_fresh_minutes * 60 * NS)
        self.state.add_devices(self._query(DEVICE_ROWS, f"{where} AND time > {fresh}"))

    def _query(self, template: str, where: str) -> list[Series]:
        return self._ql.query(template.format(where=where), epoch="ns")

    # -- the rollout -----------------------------------------------------------------------

    def survey(self, at: datetime) -> Survey | None:
        """The rollout's survey from the state's facts (the registry still comes from InfluxDB)."""
        return survey(self._ql, at, self.state.rules, facts=self.state.facts(at))

    def rollout(self, now: datetime) -> int:
        """Write the rollout, the schools to chase and the devices not up; return points."""
        found = self.survey(now)
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


def _regex_literal(value: str) -> str:
    """``value`` matched literally inside an InfluxQL /regex/."""
    return "".join("\\" + c if not c.isalnum() and c not in "-_" else c for c in value)
