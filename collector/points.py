"""Contract messages as InfluxDB points (line protocol).

Ids of bounded sets are tags; numbers and free text are fields. The same
message always becomes the same series at the same timestamp, so a redelivered
message overwrites its own point instead of adding a duplicate. The README's
"InfluxDB measurements" table documents every tag and field written here.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from agent.contract import (
    AgentState,
    AgentStatus,
    ConnectivityReport,
    DeviceResult,
    DevicesReport,
    DeviceState,
    Envelope,
    OutageReport,
    SpeedReport,
    StatusReason,
)
from collector.device_book import DeviceBook, KnownDevice, Numbering
from collector.line_protocol import FieldValue, encode, field_set, tag
from collector.school_hours import SchoolHours
from collector.settings import SchoolHoursSettings

SPEED = "speed"
AGENT = "agent"
DEVICE = "device"
DEVICE_REPORT = "device_report"
CONNECTIVITY = "connectivity"
OUTAGE = "outage"
COLLECTOR = "collector"
COLLECTOR_REJECTIONS = "collector_rejections"
COLLECTOR_RATE_LIMITED = "collector_rate_limited"

# The collector's own state for a device whose agent is lost: not seen, not known down.
STALE = "stale"
DEVICE_STATE_CODES = {
    DeviceState.UNKNOWN.value: 0,
    DeviceState.UP.value: 1,
    DeviceState.LATE.value: 2,
    DeviceState.DOWN.value: 3,
    STALE: 4,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond."""
    seconds = int(moment.timestamp())
    return seconds * 1_000_000_000 + moment.microsecond * 1000


def text(value: str) -> str:
    """A string field value with control characters replaced by spaces."""
    return _CONTROL.sub(" ", value)


@dataclass(frozen=True)
class Place:
    """Where a school is, from the registry: tags on every point of that school."""

    region: str | None = None
    district: str | None = None


NOWHERE = Place()


class ArrivalClock:
    """When each Last Will first arrived, so a redelivered will keeps its timestamp.

    A will's payload is written when the agent connects, long before it fires,
    so its own ``measured_at`` cannot say when the agent was lost.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity

    def stamp(self, message_id: str, arrived_ns: int) -> int:
        first = self._seen.setdefault(message_id, arrived_ns)
        self._seen.move_to_end(message_id)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return first


def speed_line(report: SpeedReport, place: Place = NOWHERE) -> str:
    server = report.server
    return encode(
        SPEED,
        {
            "school_id": report.school_id,
            "region": place.region,
            "district": place.district,
            "agent_id": report.agent_id,
            "result": report.result.value,
            "server_kind": server.kind.value if server else None,
            "server_id": server.id if server else None,
            "method": report.method.name.value if report.method else None,
        },
        {
            "result_code": report.result_code,
            "threshold_mbps": float(report.threshold_mbps),
            "download_mbps": _float(report.download_mbps),
            "upload_mbps": _float(report.upload_mbps),
            "latency_ms": _float(report.latency_ms),
            "meets_threshold": _int(report.meets_threshold),
            "bytes_received": report.bytes_received,
            "bytes_sent": report.bytes_sent,
            "duration_s": float(report.duration_s),
            "server_name": text(server.name) if server else None,
            "jitter_ms": _float(report.jitter_ms),
            "error": text(report.error) if report.error is not None else None,
            "message_id": report.message_id,
            "congestion_control": report.method.congestion_control if report.method else None,
            "connections": report.method.connections if report.method else None,
        },
        ns(report.measured_at),
    )


def agent_line(status: AgentStatus, at_ns: int, place: Place = NOWHERE) -> str:
    fields: dict[str, FieldValue] = {
        "online": int(status.status is AgentState.ONLINE),
        "reason": status.reason.value,
        "version": text(status.version),
        "boot_id": status.boot_id,
        "message_id": status.message_id,
        "data_used_month_bytes": status.data_used_month_bytes,
        "data_budget_month_bytes": status.data_budget_month_bytes,
    }
    if status.heartbeats is not None:
        counts = status.heartbeats
        fields |= {
            "heartbeats_accepted": counts.accepted,
            "heartbeats_unknown_device": counts.unknown_device,
            "heartbeats_bad_token": counts.bad_token,
            "heartbeats_malformed": counts.malformed,
        }
    if status.outbox is not None:
        box = status.outbox
        fields |= {
            "outbox_messages": box.messages,
            "outbox_bytes": box.bytes,
            "outbox_oldest_age_s": float(box.oldest_age_s),
            "outbox_dropped": box.dropped,
            "outbox_awaiting_broker": box.awaiting_broker,
            "outbox_awaiting_receipt": box.awaiting_receipt,
            "outbox_held": box.held,
            "outbox_undatable": box.undatable,
        }
    if status.rejections is not None:
        fields |= {
            "refused": status.rejections.total,
            "refused_last_reason": status.rejections.last_reason,
        }
    if status.last_stored_at is not None:
        fields["last_stored_at_ms"] = ns(status.last_stored_at) // 1_000_000
    if status.clock_synced is not None:
        fields["clock_synced"] = int(status.clock_synced)
    if status.config is not None:
        fields |= {
            "config_version": status.config.version,
            "config_refused": status.config.refused_total,
        }
    if status.host is not None:
        host = status.host
        fields |= {
            "cpu_percent": float(host.cpu_percent),
            "memory_percent": float(host.memory_percent),
            "memory_available_bytes": host.memory_available_bytes,
            "disk_percent": float(host.disk_percent),
            "disk_free_bytes": host.disk_free_bytes,
            "uptime_s": host.uptime_s,
            "load_1m": _float(host.load_1m),
            "temperature_c": _float(host.temperature_c),
        }
    tags = {
        "school_id": status.school_id,
        "region": place.region,
        "district": place.district,
        "agent_id": status.agent_id,
        "status": status.status.value,
    }
    return encode(AGENT, tags, fields, at_ns)


def _where(message: Envelope, place: Place) -> dict[str, str | None]:
    """The tags every point of a school's agent carries."""
    return {
        "school_id": message.school_id,
        "region": place.region,
        "district": place.district,
        "agent_id": message.agent_id,
    }


def connectivity_line(
    report: ConnectivityReport, place: Place = NOWHERE, school_hours: SchoolHours | None = None
) -> str:
    """An hour's reachability checks, at the hour's start; ``school_checks`` and
    ``school_passed`` repeat them in a school hour, and are 0 outside."""
    hours = school_hours or SchoolHoursSettings().school_hours()
    in_school = hours.covers_hour(report.measured_at, report.period_s)
    return encode(
        CONNECTIVITY,
        _where(report, place),
        {
            "checks": report.checks,
            "passed": report.passed,
            "availability": report.passed / report.checks if report.checks else None,
            "interval_s": float(report.interval_s),
            "period_s": float(report.period_s),
            "down_no_route_s": float(report.down_no_route_s),
            "down_gateway_s": float(report.down_gateway_s),
            "down_dns_s": float(report.down_dns_s),
            "down_upstream_s": float(report.down_upstream_s),
            "school_checks": report.checks if in_school else 0,
            "school_passed": report.passed if in_school else 0,
            "message_id": report.message_id,
        },
        ns(report.measured_at),
    )


def outage_line(report: OutageReport, place: Place = NOWHERE) -> str:
    """One outage, at its start."""
    return encode(
        OUTAGE,
        _where(report, place) | {"cause": report.cause.value},
        {
            "duration_s": float(report.duration_s),
            "ended_at_ms": ns(report.ended_at) // 1_000_000,
            "detail": text(report.detail) if report.detail is not None else None,
            "message_id": report.message_id,
        },
        ns(report.measured_at),
    )


def device_lines(report: DevicesReport, place: Place = NOWHERE) -> list[str]:
    """A ``device`` point per device, and one ``device_report`` point for the report.

    What belongs to the report (its numbering, ids, whether it is a full list)
    is stored once, not with each device: InfluxDB's cost and size grow with
    the number of field values, and a full list repeats it for every device.
    """
    at = ns(report.measured_at)
    where = {
        "school_id": report.school_id,
        "region": place.region,
        "district": place.district,
        "agent_id": report.agent_id,
    }
    # The hot path of a drain: the shared tags escaped once, the device's own between
    # them in key order, the fields in key order; what encode() writes (a test checks).
    agent, district = tag("agent_id", report.agent_id), tag("district", place.district)
    region, school = tag("region", place.region), tag("school_id", report.school_id)
    stamp = f" {at}"
    lines = [
        f"{DEVICE}{agent}{tag('device_id', device.device_id)}{district}"
        f"{tag('kind', device.kind.value)}{region}{tag('result', device.result)}{school} "
        + field_set((
            ("changed_at_ms", ns(device.changed_at) // 1_000_000),
            ("detail", text(device.detail) if device.detail is not None else None),
            ("label", text(device.label)),
            ("response_ms", _float(device.response_ms)),
            ("state", device.state.value),
            ("state_code", DEVICE_STATE_CODES[device.state.value]),
            ("up", int(device.state is DeviceState.UP)),
        ))
        + stamp
        for device in report.devices
    ]  # fmt: skip
    report_fields: dict[str, FieldValue] = {
        "sequence": report.sequence,
        "full": int(report.full),
        "devices": len(report.devices),
        "boot_id": report.boot_id,
        "message_id": report.message_id,
    }
    return [*lines, encode(DEVICE_REPORT, where, report_fields, at)]


def stale_lines(
    devices: list[KnownDevice], will: AgentStatus, at_ns: int, place: Place = NOWHERE
) -> list[str]:
    """A ``stale`` point for each device of a school whose agent was lost."""
    lost = DeviceResult.AGENT_LOST
    return [
        encode(
            DEVICE,
            {
                "school_id": will.school_id,
                "region": place.region,
                "district": place.district,
                "agent_id": device.agent_id,
                "device_id": device.device_id,
                "kind": device.kind,
                "result": lost.value,
            },
            {
                "state": STALE,
                "state_code": DEVICE_STATE_CODES[STALE],
                "up": 0,
                "changed_at_ms": at_ns // 1_000_000,
                "label": text(device.label) if device.label is not None else None,
            },
            at_ns,
        )
        for device in devices
    ]


def _float(value: float | None) -> float | None:
    """Always a float on the wire: a field's type must never change in InfluxDB."""
    return None if value is None else float(value)


def _int(flag: bool | None) -> int | None:
    return None if flag is None else int(flag)


class PointMaker:
    """Turns accepted messages into line-protocol lines.

    ``book`` remembers each school's devices for the stale rule; ``on_numbering``
    hears what each device report's sequence number says (gaps, restarts).
    """

    def __init__(
        self,
        book: DeviceBook | None = None,
        on_numbering: Callable[[DevicesReport, Numbering], None] | None = None,
        place_of: Callable[[str], Place] | None = None,
        school_hours: SchoolHours | None = None,
    ) -> None:
        self._wills = ArrivalClock()
        self._school_hours = school_hours or SchoolHoursSettings().school_hours()
        self._place_of = place_of
        self.book = book or DeviceBook()
        self._on_numbering = on_numbering

    def lines(self, message: Envelope, arrived_ns: int) -> list[str]:
        place = self._place_of(message.school_id) if self._place_of else NOWHERE
        if isinstance(message, SpeedReport):
            return [speed_line(message, place)]
        if isinstance(message, AgentStatus):
            if message.reason is not StatusReason.CONNECTION_LOST:
                # A status sent at once by an agent with a wrong clock: at its arrival.
                wrong_clock = message.clock_synced is False
                at = arrived_ns if wrong_clock else ns(message.measured_at)
                return [agent_line(message, at, place)]
            at = self._wills.stamp(message.message_id, arrived_ns)
            devices = self.book.devices_of(message.school_id)
            return [agent_line(message, at, place), *stale_lines(devices, message, at, place)]
        if isinstance(message, ConnectivityReport):
            return [connectivity_line(message, place, self._school_hours)]
        if isinstance(message, OutageReport):
            return [outage_line(message, place)]
        if isinstance(message, DevicesReport):
            numbering = self.book.remember(message)
            if self._on_numbering is not None:
                self._on_numbering(message, numbering)
            return device_lines(message, place)
        raise TypeError(f"no points for {type(message).__name__}")
