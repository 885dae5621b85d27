"""A simulated national fleet: a registry of schools and the messages their agents send.

``school-collector simulate`` generates about 7,400 schools across
Kazakhstan's 17 regions and 3 cities, with rollout close to the reported
national figures (turnstiles 98 %, security contracts 97 %, panic buttons
96 %, police link 81 %, speed monitoring 70 %), realistic links (urban
fibre, rural 4G, satellite), device failures, agent outages, and each live
agent's hourly reachability checks with the outages of its link (satellite and
4G more often than fibre) over the last ``connectivity_days``. It writes the
registry CSV and sends the fleet's history through the real broker (or
straight into InfluxDB), and keeps its own records, from which
:func:`ground_truth` computes every rollout percentage independently of the
InfluxDB queries.

Everything is drawn from a seeded random generator: the same seed gives the
same fleet.
"""

from __future__ import annotations

import csv
import io
import math
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from agent.contract import (
    DEVICE_RESULT_CODES,
    SPEED_RESULT_CODES,
    AgentState,
    AgentStatus,
    ConnectivityReport,
    DeviceKind,
    DeviceObservation,
    DeviceResult,
    DevicesReport,
    DeviceState,
    Envelope,
    HostHealth,
    OutageCause,
    OutageReport,
    OutboxCounts,
    SpeedMeasurement,
    SpeedReport,
    SpeedResult,
    StatusReason,
)
from collector.influx import InfluxWriter
from collector.points import PointMaker, ns
from collector.registry import COLUMNS, School, SchoolRegistry
from collector.registry_store import import_registry
from collector.rollout import DEFINITIONS, EPSILON, NATIONAL, SAFETY_KINDS
from collector.rollout_rules import Rules
from collector.settings import InfluxSettings

# name, share of the country's schools, share urban, latitude, longitude
REGIONS: list[tuple[str, float, float, float, float]] = [
    ("Abai", 0.035, 0.35, 50.4, 80.2),
    ("Akmola", 0.055, 0.25, 51.6, 69.4),
    ("Aktobe", 0.055, 0.40, 50.3, 57.2),
    ("Almaty Region", 0.095, 0.25, 44.8, 78.4),
    ("Atyrau", 0.030, 0.45, 47.1, 51.9),
    ("East Kazakhstan", 0.055, 0.45, 49.9, 82.6),
    ("Jambyl", 0.060, 0.30, 42.9, 71.4),
    ("Jetisu", 0.040, 0.30, 45.0, 78.4),
    ("Karaganda", 0.060, 0.60, 49.8, 73.1),
    ("Kostanay", 0.060, 0.35, 53.2, 63.6),
    ("Kyzylorda", 0.040, 0.35, 44.8, 65.5),
    ("Mangystau", 0.025, 0.60, 43.6, 51.2),
    ("North Kazakhstan", 0.050, 0.25, 54.9, 69.1),
    ("Pavlodar", 0.045, 0.50, 52.3, 76.9),
    ("Turkistan", 0.130, 0.20, 43.3, 68.3),
    ("Ulytau", 0.010, 0.55, 47.8, 67.7),
    ("West Kazakhstan", 0.045, 0.30, 51.2, 51.4),
    ("Astana", 0.025, 1.00, 51.17, 71.45),
    ("Almaty", 0.035, 1.00, 43.24, 76.89),
    ("Shymkent", 0.020, 1.00, 42.32, 69.59),
]
ROLLOUT_TARGETS = {
    DeviceKind.TURNSTILE: 0.98,
    DeviceKind.PANIC_BUTTON: 0.96,
    DeviceKind.POLICE_LINK: 0.81,
}
CONTRACT_SHARE = 0.97
HISTORY_DAYS = 55  # no result older than this: the collector refuses beyond 60 days
MONITORED_SHARE = 0.70  # schools running an agent ("Daily Check": more than 70 %)
# Among monitored schools: live, at risk (last report 21-28 days ago), dropped off.
OUTAGE_SHARES = (0.92, 0.04, 0.04)
LINKS = {  # link: (download range Mbps, upload share, latency ms)
    "fibre": ((40.0, 300.0), 0.5, (3.0, 25.0)),
    "4g": ((4.0, 45.0), 0.3, (30.0, 80.0)),
    "satellite": ((3.0, 30.0), 0.2, (550.0, 700.0)),
}
# Each hour, the chance that a school's link fails once; the outage lasts 5 to 45 minutes.
OUTAGE_PER_HOUR = {"fibre": 0.003, "4g": 0.02, "satellite": 0.05}
OUTAGE_MINUTES = (5, 45)
OUTAGE_CAUSES = {  # the layer that failed, and how often
    OutageCause.UPSTREAM: 0.6,
    OutageCause.GATEWAY: 0.25,
    OutageCause.DNS: 0.1,
    OutageCause.NO_ROUTE: 0.05,
}
CHECK_INTERVAL_S = 60  # the agent's default connectivity.interval_s
# Truth's own school hours (the collector's default school_hours: 08:00-20:00 at +05:00).
SCHOOL_HOURS_UTC_OFFSET = 5
SCHOOL_HOURS_LOCAL = range(8, 20)


@dataclass(frozen=True)
class Hour:
    """One hour of a live agent's reachability checks (a minute each)."""

    start: datetime
    down_minutes: int = 0
    cause: OutageCause | None = None
    down_from_minute: int = 0

    @property
    def in_school_hours(self) -> bool:
        return (self.start.hour + SCHOOL_HOURS_UTC_OFFSET) % 24 in SCHOOL_HOURS_LOCAL


@dataclass
class SchoolRecord:
    """What the simulator decided for one school: its truth."""

    school: School
    link: str = "fibre"
    monitored: bool = False
    last_report: datetime | None = None
    downloads: list[tuple[datetime, float | None]] = field(default_factory=list)
    device_states: dict[str, tuple[DeviceKind, DeviceState]] = field(default_factory=dict)
    agent_lost: bool = False
    hours: list[Hour] = field(default_factory=list)


@dataclass
class Fleet:
    now: datetime
    records: list[SchoolRecord]
    _lines: list[str] | None = field(default=None, repr=False)  # write_direct's, once made

    def lines(self) -> list[str]:
        """Every message's points, as the collector makes them (made once)."""
        if self._lines is None:
            maker = PointMaker(place_of=self.registry.place_of)  # the registry's tags, as live
            self._lines = [
                line
                for message in messages(self)
                for line in maker.lines(message, ns(message.measured_at))
            ]
        return self._lines

    @property
    def registry(self) -> SchoolRegistry:
        return SchoolRegistry([record.school for record in self.records])

    def registry_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for record in self.records:
            s = record.school
            writer.writerow([
                s.school_id, s.name, s.region, s.district or "", s.area or "",
                f"{s.latitude:.5f}" if s.latitude is not None else "",
                f"{s.longitude:.5f}" if s.longitude is not None else "",
                s.students or "", s.staff or "",
                ";".join(sorted(kind.value for kind in s.devices)),
                "" if s.security_contract is None else ("yes" if s.security_contract else "no"),
            ])  # fmt: skip
        return out.getvalue()


def generate(
    schools: int = 7400,
    *,
    now: datetime,
    seed: int = 1,
    days: int = 30,
    tests_per_day: float = 1.0,
    connectivity_days: int = 1,
) -> Fleet:
    """``connectivity_days``: the hours of checks each live agent reports (24 a day)."""
    rng = random.Random(seed)  # noqa: S311 - simulation, not secrecy
    records = [_school(number, rng) for number in range(schools)]
    _assign_shares(records, rng)
    for record in records:
        if record.monitored:
            _history(record, rng, now, days, tests_per_day)
    checks = random.Random(seed + 1)  # noqa: S311 - its own stream: the rest stays as it was
    for record in records:
        live = record.last_report is not None and record.last_report >= now - timedelta(days=1)
        if record.monitored and live:
            record.hours = _hours(record.link, checks, now, connectivity_days)
    return Fleet(now, records)


def _hours(link: str, rng: random.Random, now: datetime, days: int) -> list[Hour]:
    """The whole hours before ``now``, over ``days``; some with an outage of the link."""
    last = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    found = []
    for back in range(days * 24 - 1, -1, -1):
        start = last - timedelta(hours=back)
        if rng.random() < OUTAGE_PER_HOUR[link]:
            minutes = rng.randint(*OUTAGE_MINUTES)
            cause = rng.choices(list(OUTAGE_CAUSES), list(OUTAGE_CAUSES.values()))[0]
            found.append(Hour(start, minutes, cause, rng.randint(0, 60 - minutes)))
        else:
            found.append(Hour(start))
    return found


def _school(number: int, rng: random.Random) -> SchoolRecord:
    names = [r[0] for r in REGIONS]
    region, _, urban_share, lat, lon = REGIONS[
        rng.choices(range(len(REGIONS)), [r[1] for r in REGIONS])[0]
    ]
    urban = rng.random() < urban_share
    code = "".join(word[0] for word in region.split()).upper()[:3]
    students = rng.randint(400, 2500) if urban else rng.randint(30, 600)
    school = School(
        school_id=f"KZ-{code}-{number:05d}",
        region=region,
        name=f"School No. {number % 300 + 1}, {region}",
        district=f"{region} district {rng.randint(1, 12 if region not in names[-3:] else 5)}",
        area="urban" if urban else "rural",
        latitude=round(lat + rng.uniform(-1.5, 1.5) * (0.1 if urban else 1), 5),
        longitude=round(lon + rng.uniform(-2.0, 2.0) * (0.1 if urban else 1), 5),
        students=students,
        staff=max(5, students // 12),
    )
    if urban:
        link = rng.choices(["fibre", "4g"], [0.9, 0.1])[0]
    else:
        link = rng.choices(["fibre", "4g", "satellite"], [0.35, 0.5, 0.15])[0]
    return SchoolRecord(school, link=link)


def _assign_shares(records: list[SchoolRecord], rng: random.Random) -> None:
    """Exact shares, placed at random: installed devices, contracts, monitoring."""
    count = len(records)

    def chosen(share: float) -> set[int]:
        return set(rng.sample(range(count), round(share * count)))

    installed = {kind: chosen(share) for kind, share in ROLLOUT_TARGETS.items()}
    contract = chosen(CONTRACT_SHARE)
    monitored = chosen(MONITORED_SHARE)
    for index, record in enumerate(records):
        kinds = frozenset(kind for kind, picked in installed.items() if index in picked)
        record.school = School(
            **{**record.school.__dict__, "devices": kinds, "security_contract": index in contract}
        )
        record.monitored = index in monitored


def _history(
    record: SchoolRecord, rng: random.Random, now: datetime, days: int, tests_per_day: float
) -> None:
    """Speed tests over ``days``, then the agent's current state and its devices' states."""
    live, at_risk, _ = OUTAGE_SHARES
    draw = rng.random()
    if draw < live:
        last = now - timedelta(hours=rng.uniform(0.1, 20))
    elif draw < live + at_risk:
        last = now - timedelta(days=rng.uniform(21.2, 27.8))
    else:
        last = now - timedelta(days=rng.uniform(28.5, 45))
    record.last_report = last
    (low, high), _, _ = LINKS[record.link]
    typical = rng.uniform(low, high)
    tests = max(1, round(days * tests_per_day))
    span = timedelta(days=days)
    oldest = now - timedelta(days=HISTORY_DAYS)
    for _ in range(tests - 1):
        moment = last - span * rng.random()
        if moment > oldest:  # older results would be past the collector's max_past_days
            record.downloads.append((moment, _download(rng, typical)))
    record.downloads.append((last, _download(rng, typical)))
    record.downloads.sort(key=lambda item: item[0])
    if last < now - timedelta(days=1):
        record.agent_lost = rng.random() < 0.5  # a Last Will arrived; else it went quiet
        return
    for kind in sorted(record.school.devices, key=lambda k: k.value):
        state = rng.choices(
            [DeviceState.UP, DeviceState.DOWN, DeviceState.LATE], [0.94, 0.04, 0.02]
        )[0]
        record.device_states[f"{kind.value}-1"] = (kind, state)


def _download(rng: random.Random, typical: float) -> float | None:
    """One test: None when it failed (about 5 %), else the link's speed with noise."""
    if rng.random() < 0.05:
        return None
    return round(max(0.5, typical * rng.uniform(0.7, 1.15)), 2)


# -- the messages the fleet's agents would have sent ------------------------------


# Each live agent's device list is measured this long before the fleet's moment.
DEVICES_AGE = timedelta(minutes=2)


def messages(fleet: Fleet) -> Iterator[Envelope]:
    """Every message, oldest first: speed results, then each live agent's device list."""
    found: list[Envelope] = []
    for record in fleet.records:
        sid = record.school.school_id
        agent_id = f"agent-{sid.lower()}"
        for moment, download in record.downloads:
            found.append(_speed(sid, agent_id, moment, download, record.link))
        if record.device_states:
            found.append(_devices(sid, agent_id, fleet.now - DEVICES_AGE, record))
        if record.monitored and record.last_report is not None:
            found.append(_status(sid, agent_id, record.last_report, lost=record.agent_lost))
        for hour in record.hours:
            found.extend(_checks(sid, agent_id, hour))
    found.sort(key=lambda message: message.measured_at)
    yield from found


def _message_id(*parts: object) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))).hex


def _speed(
    sid: str, agent_id: str, moment: datetime, download: float | None, link: str
) -> SpeedReport:
    _, upload_share, (low, high) = LINKS[link]
    if download is None:
        measurement = SpeedMeasurement.failed(
            SpeedResult.TIMEOUT, "no answer from the server", threshold_mbps=20.0
        )
    else:
        latency = round((low + high) / 2, 1)
        measurement = SpeedMeasurement(
            result=SpeedResult.SUCCESS,
            result_code=SPEED_RESULT_CODES[SpeedResult.SUCCESS],
            threshold_mbps=20.0,
            download_mbps=download,
            upload_mbps=round(download * upload_share, 2),
            latency_ms=latency,
            jitter_ms=round(latency * 0.05, 2),
            meets_threshold=download >= 20.0,
            bytes_received=int(download * 1e6),
            bytes_sent=int(download * upload_share * 1e6),
            duration_s=12.0,
        )
    report = SpeedReport.of(measurement, school_id=sid, agent_id=agent_id, measured_at=moment)
    return report.model_copy(update={"message_id": _message_id(sid, "speed", moment)})


def _devices(sid: str, agent_id: str, moment: datetime, record: SchoolRecord) -> DevicesReport:
    observations = []
    for device_id, (kind, state) in sorted(record.device_states.items()):
        result = DeviceResult.SUCCESS if state is DeviceState.UP else DeviceResult.TIMEOUT
        observations.append(
            DeviceObservation(
                device_id=device_id,
                kind=kind,
                label=f"{kind.value.replace('_', ' ')} 1",
                state=state,
                changed_at=moment - timedelta(hours=3),
                result=result.value,
                result_code=DEVICE_RESULT_CODES[result],
                response_ms=4.0 if state is DeviceState.UP else None,
            )
        )
    return DevicesReport(
        message_id=_message_id(sid, "devices", moment),
        school_id=sid,
        agent_id=agent_id,
        measured_at=moment,
        boot_id=_message_id(sid, "boot"),
        sequence=0,
        full=True,
        devices=observations,
    )


def _checks(sid: str, agent_id: str, hour: Hour) -> list[Envelope]:
    """The hour's report, and its outage's once it ended (within the hour)."""
    report = ConnectivityReport(
        message_id=_message_id(sid, "connectivity", hour.start),
        school_id=sid,
        agent_id=agent_id,
        measured_at=hour.start,
        interval_s=CHECK_INTERVAL_S,
        checks=60,
        passed=60 - hour.down_minutes,
    )
    if hour.cause is None:
        return [report]
    down_s = {f"down_{hour.cause.value}_s": hour.down_minutes * 60.0}
    report = report.model_copy(update=down_s)
    began = hour.start + timedelta(minutes=hour.down_from_minute)
    outage = OutageReport(
        message_id=_message_id(sid, "outage", began),
        school_id=sid,
        agent_id=agent_id,
        measured_at=began,
        ended_at=began + timedelta(minutes=hour.down_minutes),
        duration_s=hour.down_minutes * 60.0,
        cause=hour.cause,
    )
    return [report, outage]


def _status(sid: str, agent_id: str, moment: datetime, *, lost: bool) -> AgentStatus:
    if lost:
        return AgentStatus(
            message_id=_message_id(sid, "will", moment),
            school_id=sid,
            agent_id=agent_id,
            measured_at=moment,
            status=AgentState.OFFLINE,
            reason=StatusReason.CONNECTION_LOST,
            version="0.1.0",
            boot_id=_message_id(sid, "boot"),
        )
    host = HostHealth(
        cpu_percent=12.0, memory_percent=40.0, memory_available_bytes=2_000_000_000,
        disk_percent=35.0, disk_free_bytes=20_000_000_000, uptime_s=86_400,
    )  # fmt: skip
    return AgentStatus(
        outbox=OutboxCounts(messages=0, bytes=0, oldest_age_s=0.0, dropped=0),
        data_used_month_bytes=int(moment.day * 40e6),
        message_id=_message_id(sid, "status", moment),
        school_id=sid,
        agent_id=agent_id,
        measured_at=moment,
        status=AgentState.ONLINE,
        reason=StatusReason.HEARTBEAT,
        version="0.1.0",
        boot_id=_message_id(sid, "boot"),
        host=host,
    )


# -- the truth, from the simulator's own records ------------------------------------


def ground_truth(
    fleet: Fleet, at: datetime, rules: Rules | None = None
) -> dict[tuple[str, str], float]:
    """{(metric, region or NATIONAL): percent}, computed from the records alone."""
    rules = rules or Rules()
    counts: dict[tuple[str, str], int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    availability: dict[str, list[float]] = defaultdict(list)
    for record in fleet.records:
        region = record.school.region
        totals[region] += 1
        totals[NATIONAL] += 1
        metrics = _truths(record, at, rules, devices_at=fleet.now - DEVICES_AGE)
        available = school_hours_availability(record, at, rules)
        if available is not None:
            availability[region].append(available)
            availability[NATIONAL].append(available)
            if available >= rules.availability_target - EPSILON:
                metrics.add("school_hours_available")
        for metric in metrics:
            counts[metric, region] += 1
            counts[metric, NATIONAL] += 1
    truth = {
        (metric, region): 100.0 * counts[metric, region] / total
        for region, total in totals.items()
        for metric in DEFINITIONS
    }
    for region in totals:
        found = availability[region]
        truth["availability_mean", region] = sum(found) / len(found) if found else math.nan
    return truth


def school_hours_availability(record: SchoolRecord, at: datetime, rules: Rules) -> float | None:
    """Percent of the checks in school hours that passed over the window; None without."""
    window = at - timedelta(days=rules.availability_window_days)
    hours = [h for h in record.hours if h.in_school_hours and window < h.start <= at]
    if not hours:
        return None
    return 100.0 * sum(60 - h.down_minutes for h in hours) / (60 * len(hours))


def _speed_truths(mean: float, students: int | None, rules: Rules) -> set[str]:
    """The 20 Mbps standard, the ITU's per-student one, and Giga's categories."""
    found = {"meets_standard"} if mean >= rules.threshold_mbps - EPSILON else set()
    standard = rules.threshold_mbps
    if students is not None and students > rules.per_student_from:
        standard = max(standard, rules.per_student_kbps * students / 1000)
    if mean >= standard - EPSILON:
        return found | {"meets_per_student_standard", "giga_good"}
    return found | {"giga_moderate" if mean >= 1.0 - EPSILON else "giga_bad"}


def _truths(record: SchoolRecord, at: datetime, rules: Rules, devices_at: datetime) -> set[str]:
    found: set[str] = set()
    window = at - timedelta(days=rules.speed_window_days)
    good = [(t, d) for t, d in record.downloads if d is not None and window < t <= at]
    if good:
        found |= _speed_truths(sum(d for _, d in good) / len(good), record.school.students, rules)
    if good and max(good)[1] >= rules.threshold_mbps - EPSILON:
        found.add("meets_standard_latest")
    reports = [t for t, _ in record.downloads if t <= at]
    if not reports:
        found.add("never_reported")
    else:
        age = at - max(reports)
        if age <= timedelta(days=rules.reporting_days):
            found.add("reporting")
        if age <= timedelta(days=rules.live_days):
            found.add("live")
        elif age <= timedelta(days=rules.dropped_days):
            found.add("at_risk")
        else:
            found.add("dropped_off")
    fresh = timedelta(0) <= at - devices_at <= timedelta(minutes=rules.device_fresh_minutes)
    live = {
        kind for kind, state in record.device_states.values() if state is DeviceState.UP and fresh
    }
    for kind in SAFETY_KINDS:
        if kind in live:
            found.add(f"{kind.value}_live")
        if record.school.has(kind):
            found.add(f"{kind.value}_installed")
    if record.school.security_contract:
        found.add("security_contract")
    return found


# -- sending it -----------------------------------------------------------------


def write_direct(
    fleet: Fleet, writer: InfluxWriter, influx: InfluxSettings, registry_at: datetime
) -> int:
    """Import the registry and store every message's points as the collector would."""
    import_registry(fleet.registry, influx, "simulated fleet", at_ns=ns(registry_at))
    lines = fleet.lines()
    for start in range(0, len(lines), 5000):
        writer.write(lines[start : start + 5000])
    return len(lines)
