"""The current state: what each school and device is *now*, small enough to read in one go.

"Now" questions (the rollout, the map, agents offline, devices down, the
alert rules) used to take ``last()`` or ``mean()`` of raw points over 15
minutes to 90 days; their cost grew with history and with the series that the
raw tags multiply. The collector's state keeper (:mod:`collector.state_keeper`)
keeps each school's facts in memory instead, folds in what InfluxDB stores,
and writes what they amount to into the ``state`` retention policy:

- ``school_state``, one series per school: its place in the registry (every
  registered school, reported or not), its speed over the rollout window, its
  agent's latest status and its live safety devices;
- ``device_state``, one series per device that is not up (down, late or
  stale, with its latest state fresh), and a last point when it stops being so;
- ``school_alert``, likewise for the schools an alert rule names (agent
  offline, latest three tests below the standard): the rules read only them;
- ``school_list``, every school's ``school_state`` fields in one series per
  region, for the questions about every school (:mod:`collector.school_list`).

A point is written when what it says changes, and every school and listed
device again every ``REFRESH_S``, so readers scan ``WINDOW`` (a refresh, two
ticks and a margin) and take each series' newest point: about one point per
school or device, whatever the history holds. Each value here is what the raw
query it replaces returns at the keeper's tick (tests compare them), with one
difference: a status, device state or speed result measured ahead of the
collector's clock (an agent's clock up to ``max_future_s`` fast) counts as
measured at the tick, where a raw query skips it and shows the older value
until its time comes. A successful test's download still waits for its time.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from collector.influx.query import Series
from collector.line_protocol import FieldValue, encode
from collector.registry import SchoolRegistry
from collector.rollout import SAFETY_KINDS, Facts, speed_metrics
from collector.rollout_rules import Rules
from collector.school_hours import SchoolHours
from collector.school_list import Row, SchoolList

SCHOOL_STATE = "school_state"
DEVICE_STATE = "device_state"
# The schools an alert rule names: agent offline, or the latest three tests below the standard.
SCHOOL_ALERT = "school_alert"
ALERT_FIELDS = ("online", "last3_max_mbps", "last3_tests")
ALERT_STANDARD_MBPS = 20.0  # the below-standard rule's threshold (grafana/provisioning/alerting)
# Written with a batch of points measured more than LATE_S before they were
# stored (an outbox after an outage): it tells every keeper to read that school again.
STORED_LATE = "stored_late"
LATE_S = 120
REMARK_S = 150  # below the keeper's overlap (LATE_S + 60)
REFRESH_S = 900
WINDOW = "20m"  # what a reader of the state scans: REFRESH_S, two ticks, a margin
AGENT_DAYS = 90  # "agents offline now": the latest status within 90 days
AGENT_DETAIL_DAYS = 30  # version, outbox and data budget: the dashboards' range
SEEN_DAYS = 1  # "seen_1d": a status within a day (the region-silent alert)
LAST_TESTS = 3  # the below-standard alert: the latest three successful tests
# The agent's counters change with every status; they follow at the next refresh.
COUNTERS = frozenset({"outbox_messages", "outbox_dropped", "data_used_month_bytes", "status_ms"})
AGENT_FIELDS = ("online", "reason", "version", "config_version", "outbox_messages",
                "outbox_dropped", "data_used_month_bytes", "data_budget_month_bytes")  # fmt: skip
DEVICE_FIELDS = ("state", "state_code", "changed_at_ms", "label", "up")
NS = 1_000_000_000
MS = 1_000_000


# Giga Maps' categories of a school's average download, as the map colours them.
GIGA_CODES = {"giga_bad": 0, "giga_moderate": 1, "giga_good": 2}


def giga_category(mean_mbps: float, students: int | None, rules: Rules) -> int:
    """0 bad, 1 moderate, 2 good: the rollout's category of this average download."""
    (found,) = speed_metrics(mean_mbps, students, rules) & GIGA_CODES.keys()
    return GIGA_CODES[found]


def ns_of(moment: datetime) -> int:
    return int(moment.timestamp()) * NS + moment.microsecond * 1000


def days_ns(days: float) -> int:
    return int(days * 86_400 * NS)


def agent_days(name: str) -> int:
    """How far back an agent field's latest value counts."""
    return AGENT_DAYS if name in ("online", "reason") else AGENT_DETAIL_DAYS


class SchoolFacts:
    """What InfluxDB holds of one school, reduced to what its state needs."""

    __slots__ = ("agent", "last_report", "place", "region", "students", "test_mbps", "test_times")

    def __init__(self) -> None:
        self.region: str | None = None
        self.students: int | None = None  # the registry's: the per-student standard
        self.place: dict[str, FieldValue] = {}  # the registry's name, latitude, longitude
        self.last_report: int | None = None  # ns of its latest speed result, any result
        self.test_times = array("q")  # successful tests in the speed window, oldest first
        self.test_mbps = array("d")
        self.agent: dict[str, tuple[int, FieldValue]] = {}  # field -> its latest (ns, value)

    def add_result(self, at: int, success: bool, mbps: float | None) -> None:
        if self.last_report is None or at > self.last_report:
            self.last_report = at
        if success and mbps is not None:
            index = bisect_left(self.test_times, at)
            if index < len(self.test_times) and self.test_times[index] == at:
                self.test_mbps[index] = mbps  # the same point again (a redelivery)
            else:
                self.test_times.insert(index, at)
                self.test_mbps.insert(index, mbps)

    def add_agent(self, name: str, at: int, value: FieldValue) -> None:
        if value is not None and (name not in self.agent or at >= self.agent[name][0]):
            self.agent[name] = (at, value)

    def agent_floor(self, at: int) -> int:
        """The time before which no agent row can change this school's agent fields."""
        floor = at
        for name in AGENT_FIELDS:
            known = self.agent.get(name)
            floor = min(floor, known[0] if known is not None else at - days_ns(agent_days(name)))
        return floor

    def forget_tests_before(self, cutoff: int) -> None:
        keep = bisect_right(self.test_times, cutoff)
        if keep:
            del self.test_times[:keep]
            del self.test_mbps[:keep]

    def tests_in(self, since: int, until: int) -> list[float]:
        """Successful downloads measured in (since, until], oldest first."""
        first = bisect_right(self.test_times, since)
        last = bisect_right(self.test_times, until)
        return list(self.test_mbps[first:last])

    def agent_value(self, name: str, since: int, until: int) -> FieldValue:
        """Its latest value measured after ``since``; one ahead of ``until`` counts as at it."""
        found = self.agent.get(name)
        return found[1] if found is not None and since < min(found[0], until) else None


@dataclass(frozen=True)
class DeviceFacts:
    """A device's latest point."""

    at: int
    region: str | None
    state: str
    state_code: int
    up: int
    changed_at_ms: int | None
    label: str | None


DeviceKey = tuple[str, str, str]  # school id, device id, kind


@dataclass
class CurrentState:
    """Every school's and device's facts, and the state last written for each."""

    rules: Rules = field(default_factory=Rules)
    schools: dict[str, SchoolFacts] = field(default_factory=dict)
    devices: dict[DeviceKey, DeviceFacts] = field(default_factory=dict)
    written_schools: dict[str, dict[str, FieldValue]] = field(default_factory=dict)
    written_devices: dict[DeviceKey, dict[str, FieldValue]] = field(default_factory=dict)
    written_alerts: dict[str, dict[str, FieldValue]] = field(default_factory=dict)
    listing: SchoolList = field(default_factory=SchoolList)
    # the collector's school_hours: school_alert says whether a tick falls within them
    school_hours: SchoolHours | None = None
    _in_school_hours: int = 0
    _before: tuple[dict[str, dict[str, FieldValue]], dict[DeviceKey, dict[str, FieldValue]],
                   dict[str, dict[str, FieldValue]]] = ({}, {}, {})  # fmt: skip

    def school(self, school_id: str, region: str | None) -> SchoolFacts:
        found = self.schools.get(school_id)
        if found is None:
            found = self.schools[school_id] = SchoolFacts()
        if region is not None and not found.place:  # the registry's region comes first
            found.region = region
        return found

    def place(self, registry: SchoolRegistry) -> None:
        """Every registered school's region and place (the map reads them with its speed)."""
        for facts in self.schools.values():
            facts.place = {}
        for school in registry:
            place = {"name": school.name, "latitude": school.latitude,
                     "longitude": school.longitude}  # fmt: skip
            facts = self.school(school.school_id, None)
            facts.region = school.region
            facts.students = school.students
            facts.place = {name: value for name, value in place.items() if value not in (None, "")}

    # -- folding in what InfluxDB returns (rows of the keeper's queries) ------------------

    def add_speed(self, series: Iterable[Series]) -> None:
        """Rows of ``time, result_code, download_mbps, result`` grouped by region, school_id."""
        for s in series:
            school = self.school(s.tags["school_id"], s.tags.get("region") or None)
            for at, _code, mbps, result in s.values:
                school.add_result(at, result == "success", mbps)

    def add_tests(self, series: Iterable[Series]) -> None:
        """Rows of ``time, download_mbps`` of successful tests, grouped by region, school_id."""
        for s in series:
            school = self.school(s.tags["school_id"], s.tags.get("region") or None)
            for at, mbps in s.values:
                school.add_result(at, True, mbps)

    def add_last_report(self, series: Iterable[Series]) -> None:
        """``last(...)`` of any speed result, by school_id (its time is the result's)."""
        for s in series:
            school = self.school(s.tags["school_id"], None)
            at = s.values[0][0]
            if school.last_report is None or at > school.last_report:
                school.last_report = at

    def add_agent(self, series: Iterable[Series]) -> None:
        """Rows of ``time`` and :data:`AGENT_FIELDS` then ``status``, by region, school_id.

        ``version`` counts only from online statuses (the version chart's rule).
        """
        for s in series:
            school = self.school(s.tags["school_id"], s.tags.get("region") or None)
            names = s.columns[1:]
            for row in s.values:
                values = dict(zip(names, row[1:], strict=True))
                for name in AGENT_FIELDS:
                    if name == "version" and values.get("status") != "online":
                        continue
                    school.add_agent(name, row[0], values.get(name))

    def add_agent_latest(self, name: str, series: Iterable[Series]) -> None:
        """``last(name)`` by region, school_id: the value and its time."""
        for s in series:
            school = self.school(s.tags["school_id"], s.tags.get("region") or None)
            school.add_agent(name, s.values[0][0], s.values[0][1])

    def add_devices(self, series: Iterable[Series]) -> None:
        """Rows of ``time`` and :data:`DEVICE_FIELDS`, by region, school_id, device_id, kind."""
        for s in series:
            key = (s.tags["school_id"], s.tags["device_id"], s.tags["kind"])
            region = s.tags.get("region") or None
            for at, state, code, changed, label, up in s.values:
                known = self.devices.get(key)
                if known is None or at >= known.at:
                    self.devices[key] = DeviceFacts(
                        at, region, state, int(code), int(up), changed, label
                    )

    # -- what it amounts to at one moment ---------------------------------------------------

    def school_fields(
        self, school_id: str, at: int, live: Mapping[str, set[str]]
    ) -> dict[str, FieldValue]:
        """The ``school_state`` fields of one school at ``at`` (ns).

        ``live``: :meth:`live_kinds` at the same moment.
        """
        rules = self.rules
        facts = self.schools[school_id]
        found: dict[str, FieldValue] = dict(facts.place)
        tests = facts.tests_in(at - days_ns(rules.speed_window_days), at)
        if tests:
            found["download_mean_mbps"] = mean = sum(tests) / len(tests)
            found["giga_category"] = giga_category(mean, facts.students, rules)
            found["download_latest_mbps"] = tests[-1]
            found["tests"] = len(tests)
            found["last3_max_mbps"] = max(tests[-LAST_TESTS:])
            found["last3_tests"] = len(tests[-LAST_TESTS:])
        if facts.last_report is not None:
            found["last_report_ms"] = min(facts.last_report, at) // MS
        for name in AGENT_FIELDS:
            found[name] = facts.agent_value(name, at - days_ns(agent_days(name)), at)
        if found["online"] is not None:
            status_at = min(facts.agent["online"][0], at)
            found["status_ms"] = status_at // MS
            found["seen_1d"] = int(status_at > at - days_ns(SEEN_DAYS))
        kinds = live.get(school_id, set())
        for kind in SAFETY_KINDS:
            found[f"{kind.value}_live"] = int(kind.value in kinds)
        return {name: value for name, value in found.items() if value is not None}

    def agent_floor(self, school_id: str, at: int) -> int:
        """:meth:`SchoolFacts.agent_floor` of a school (of one not known yet: 90 days back)."""
        facts = self.schools.get(school_id)
        return facts.agent_floor(at) if facts is not None else at - days_ns(AGENT_DAYS)

    def live_kinds(self, at: int) -> dict[str, set[str]]:
        """School -> the kinds with a device up in its latest state within the fresh window."""
        fresh = at - int(self.rules.device_fresh_minutes * 60 * NS)
        found: dict[str, set[str]] = {}
        for (school_id, _device, kind), facts in self.devices.items():
            if fresh < min(facts.at, at) and facts.up == 1:
                found.setdefault(school_id, set()).add(kind)
        return found

    def device_fields(self, key: DeviceKey, at: int) -> dict[str, FieldValue]:
        """``device_state`` fields; ``listed`` 1 for a device not up with a fresh latest state."""
        facts = self.devices[key]
        fresh = at - int(self.rules.device_fresh_minutes * 60 * NS)
        listed = fresh < min(facts.at, at) and facts.state_code >= DEVICE_NOT_UP
        found: dict[str, FieldValue] = {
            "state": facts.state,
            "state_code": facts.state_code,
            "since_ms": facts.changed_at_ms,
            "label": facts.label,
            "listed": int(listed),
            "down": int(listed and facts.state_code == DEVICE_DOWN),
        }
        return {name: value for name, value in found.items() if value is not None}

    def facts(self, at: datetime) -> Facts:
        """The rollout's facts (:class:`collector.rollout.Facts`) at ``at``."""
        at_ns = ns_of(at)
        found = Facts()
        for school_id, school in self.schools.items():
            tests = school.tests_in(at_ns - days_ns(self.rules.speed_window_days), at_ns)
            if tests:
                found.mean_download[school_id] = sum(tests) / len(tests)
                found.latest_download[school_id] = tests[-1]
            if school.last_report is not None:
                moment = min(school.last_report, at_ns)
                found.last_report[school_id] = datetime.fromtimestamp(moment / NS, UTC)
        for school_id, kinds in self.live_kinds(at_ns).items():
            found.live_kinds[school_id] = set(kinds)
        return found

    # -- what to write ---------------------------------------------------------------------

    def alert_fields(self, fields: Mapping[str, FieldValue]) -> dict[str, FieldValue]:
        """``school_alert`` fields of a school's ``school_state`` fields; ``flagged`` 1 for an
        agent offline or the latest three tests below ``rollout.threshold_mbps``."""
        found = {name: fields[name] for name in ALERT_FIELDS if name in fields}
        tests = fields.get("last3_tests")
        best = fields.get("last3_max_mbps")
        # The rule's threshold is written in it (20); a lower rollout.threshold_mbps must not
        # hide its schools from it, a higher one (with the rule's raised) is honoured.
        standard = max(self.rules.threshold_mbps, ALERT_STANDARD_MBPS)
        below = isinstance(best, float) and tests == LAST_TESTS and best < standard
        found["flagged"] = int(below or fields.get("online") == 0)
        found["in_school_hours"] = self._in_school_hours
        return found

    def lines(self, at: int, refresh: bool) -> list[str]:
        """The state points to write at ``at``: what changed, or everything on a refresh."""
        self._before = (dict(self.written_schools), dict(self.written_devices),
                        dict(self.written_alerts))  # fmt: skip
        found: list[str] = []
        live = self.live_kinds(at)
        hours = self.school_hours
        self._in_school_hours = int(hours is not None and hours.covers(_moment(at)))
        rows: dict[str, Row] = {}
        changed: set[str] = set()
        for school_id, school in self.schools.items():
            fields = self.school_fields(school_id, at, live)
            tags = {"school_id": school_id, "region": school.region}
            before = self.written_schools.get(school_id)
            if before is None or _changed(before, fields):
                changed.add(school_id)
            if refresh or school_id in changed:
                found.append(encode(SCHOOL_STATE, tags, fields, at))
                self.written_schools[school_id] = fields
            rows[school_id] = (school.region, fields)
            flags = self.alert_fields(fields)
            flagged_before = self.written_alerts.get(school_id)
            if flags["flagged"] or flagged_before is not None:
                if refresh or flags != flagged_before:
                    found.append(encode(SCHOOL_ALERT, tags, flags, at))
                if flags["flagged"]:
                    self.written_alerts[school_id] = flags
                else:  # its last point says it is fine again; the alert resolves
                    del self.written_alerts[school_id]
        found += self.listing.lines(rows, at, changed)
        for key, device in self.devices.items():
            fields = self.device_fields(key, at)
            before = self.written_devices.get(key)
            if not fields["listed"] and before is None:
                continue  # up, or silent, and not listed: nothing to say
            if refresh or fields != before:
                school_id, device_id, kind = key
                tags = {"school_id": school_id, "device_id": device_id, "kind": kind,
                        "region": device.region}  # fmt: skip
                found.append(encode(DEVICE_STATE, tags, fields, at))
            if fields["listed"]:
                self.written_devices[key] = fields
            else:  # its last point says it is no longer listed; readers pass over it
                del self.written_devices[key]
        return found

    def written(self) -> list[str]:
        """The last lines are stored; return the InfluxQL to run now (list rows to delete)."""
        return self.listing.written()

    def unwritten(self) -> None:
        """The last lines were not stored: the next ones say again what they said."""
        self.written_schools, self.written_devices, self.written_alerts = self._before

    def forget(self, at: int) -> None:
        """Drop what no state can need again: tests out of the window, devices long silent."""
        cutoff = at - days_ns(self.rules.speed_window_days)
        for school in self.schools.values():
            school.forget_tests_before(cutoff)
        fresh = at - int(self.rules.device_fresh_minutes * 60 * NS)
        for key in [k for k, d in self.devices.items() if d.at <= fresh]:
            if key not in self.written_devices:
                del self.devices[key]

    def device_counts(self, at: int) -> dict[tuple[str, str], int]:
        """(kind, state) -> the devices listed at ``at``."""
        found: dict[tuple[str, str], int] = {}
        for key in self.devices:
            fields = self.device_fields(key, at)
            if fields["listed"]:
                slot = (key[2], str(fields["state"]))
                found[slot] = found.get(slot, 0) + 1
        return found


DEVICE_NOT_UP = 2  # state_code: late 2, down 3, stale 4
DEVICE_DOWN = 3


def _moment(at: int) -> datetime:
    return datetime.fromtimestamp(at / NS, UTC)


def _changed(before: Mapping[str, FieldValue], after: Mapping[str, FieldValue]) -> bool:
    names = (before.keys() | after.keys()) - COUNTERS
    return any(before.get(name) != after.get(name) for name in names)


class LateMarks:
    """``stored_late`` markers, made for each batch the pipeline writes.

    One point per school with messages more than :data:`LATE_S` old: the
    oldest one's time and how many. While a backlog drains every batch is
    late; a school marked less than :data:`REMARK_S` ago for an older time
    needs no new marker, since keepers read markers with an overlap longer
    than that.
    """

    def __init__(self) -> None:
        self._marked: dict[str, tuple[int, int]] = {}  # school -> (since ns, marked at ns)
        self._pending: dict[str, tuple[int, int]] = {}

    def lines(self, measured: Iterable[tuple[int, str]], now_ns: int) -> list[str]:
        """Markers for a batch about to be written at ``now_ns``; ``measured``: (ns, school)."""
        oldest: dict[str, tuple[int, int]] = {}
        for at, school_id in measured:
            if now_ns - at > LATE_S * NS:
                since, count = oldest.get(school_id, (at, 0))
                oldest[school_id] = (min(since, at), count + 1)
        self._pending = {}
        found = []
        for school_id, (since, count) in oldest.items():
            marked = self._marked.get(school_id)
            if marked is not None and marked[0] <= since and now_ns - marked[1] < REMARK_S * NS:
                continue
            self._pending[school_id] = (since, now_ns)
            tags = {"school_id": school_id}
            found.append(encode(STORED_LATE, tags, {"since_ns": since, "messages": count}, now_ns))
        return found

    def written(self) -> None:
        """The last lines made are stored."""
        self._marked.update(self._pending)
        self._pending = {}
        if len(self._marked) > 100_000:  # a bound: forget marks too old to matter
            now_ns = max(at for _, at in self._marked.values())
            self._marked = {s: m for s, m in self._marked.items() if now_ns - m[1] < REMARK_S * NS}


def at_tick(moment: datetime, interval_s: float) -> int:
    """``moment`` rounded down to a multiple of ``interval_s``: keepers agree on timestamps."""
    step = int(interval_s * NS)
    return ns_of(moment) // step * step


def is_refresh(at: int, interval_s: float) -> bool:
    """True for the first tick of each :data:`REFRESH_S` (the same for every keeper)."""
    step = int(interval_s * NS)
    return at % (REFRESH_S * NS) < step
