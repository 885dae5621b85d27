"""The MQTT wire contract shared by the agent and the collector.

Every message is a JSON object carrying ``schema_version``, ``message_id``,
``school_id``, ``agent_id`` and ``measured_at``. Topics live under a
configurable root with one subtree per school::

    <root>/<school_id>/speed     one speed test result            (QoS 1)
    <root>/<school_id>/devices   safety-device states             (QoS 1)
    <root>/<school_id>/agent     agent status, retained; Last Will (QoS 1)
    <root>/<school_id>/connectivity  an hour's reachability checks     (QoS 1)
    <root>/<school_id>/outage    one outage, once it ended               (QoS 1)
    <root>/<school_id>/receipts  what the collector stored and refused   (QoS 0, to the agent)

The collector republishes anything it cannot accept as a :class:`DeadLetter`,
and tells each school, in a :class:`Receipt`, which of its messages InfluxDB
stored and which it refused. A retained :class:`Capabilities` message says
whether the collectors send receipts.
Models are strict: unknown fields are rejected, numbers must be JSON numbers,
finite and in range, times must carry a UTC offset. Upgrade the collector
before the agents when the contract grows.

>>> report = SpeedReport.model_validate_json(payload)   # doctest: +SKIP
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

DEFAULT_TOPIC_ROOT = "schools"
MAX_PAYLOAD_BYTES = 64 * 1024

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_ID_RE = re.compile(_ID_PATTERN)

SchoolId = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]
AgentId = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]
DeviceId = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]
MessageId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
ShortText = Annotated[str, StringConstraints(max_length=200)]
ResultName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]

Mbps = Annotated[float, Field(ge=0, le=100_000)]
Millis = Annotated[float, Field(ge=0, le=3_600_000)]
Percent = Annotated[float, Field(ge=0, le=100)]
ByteCount = Annotated[int, Field(ge=0, le=10**15)]


def is_valid_id(value: str) -> bool:
    """True when ``value`` may be used as a school, agent or device id."""
    return bool(_ID_RE.match(value))


def new_message_id() -> str:
    """A fresh message id: 32 lowercase hex digits (a UUID4 without dashes)."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


class TopicKind(StrEnum):
    SPEED = "speed"
    DEVICES = "devices"
    AGENT = "agent"
    CONNECTIVITY = "connectivity"
    OUTAGE = "outage"


def topic_for(root: str, school_id: str, kind: TopicKind) -> str:
    """``schools/<school_id>/<kind>`` under the configured root."""
    return f"{root}/{school_id}/{kind.value}"


RECEIPTS = "receipts"


def receipts_topic(root: str, school_id: str) -> str:
    """``<root>/<school_id>/receipts``: the collector writes it, only that school reads it."""
    return f"{root}/{school_id}/{RECEIPTS}"


def subscription_for(root: str) -> str:
    """The wildcard of every school's every topic (the collector's before receipts)."""
    return f"{root}/+/+"


def subscriptions_for(root: str) -> list[str]:
    """What the collector subscribes to: each kind of every school, never the receipts."""
    return [f"{root}/+/{kind.value}" for kind in TopicKind]


def parse_topic(root: str, topic: str) -> tuple[str, TopicKind] | None:
    """Split ``<root>/<school_id>/<kind>``; None when the topic is not ours."""
    prefix = root + "/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2 or not is_valid_id(parts[0]):
        return None
    try:
        return parts[0], TopicKind(parts[1])
    except ValueError:
        return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class Envelope(_Strict):
    """Fields every message carries."""

    schema_version: Literal[1] = 1
    message_id: MessageId = Field(default_factory=new_message_id)
    school_id: SchoolId
    agent_id: AgentId
    measured_at: AwareDatetime = Field(default_factory=utc_now)

    def complete_at(self) -> datetime:
        """When what the message says was complete, so could be sent: ``measured_at``,
        unless the message covers a span that starts there."""
        return self.measured_at


# ---------------------------------------------------------------- speed ----


class SpeedResult(StrEnum):
    """Outcome of one speed test; ``SPEED_RESULT_CODES`` gives its number."""

    SUCCESS = "success"
    DNS_ERROR = "dns_error"
    CONNECTION_FAILED = "connection_failed"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    INVALID_SERVER = "invalid_server"
    NO_DATA = "no_data"
    CONFIG_UNAVAILABLE = "config_unavailable"
    NO_SERVERS = "no_servers"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    PROTOCOL_ERROR = "protocol_error"
    BUDGET_EXHAUSTED = "budget_exhausted"
    INTERNAL_ERROR = "internal_error"


SPEED_RESULT_CODES: dict[SpeedResult, int] = {
    SpeedResult.SUCCESS: 0,
    SpeedResult.DNS_ERROR: 1,
    SpeedResult.CONNECTION_FAILED: 2,
    SpeedResult.TIMEOUT: 3,
    SpeedResult.HTTP_ERROR: 4,
    SpeedResult.INVALID_SERVER: 5,
    SpeedResult.NO_DATA: 6,
    SpeedResult.CONFIG_UNAVAILABLE: 7,
    SpeedResult.NO_SERVERS: 8,
    SpeedResult.CANCELLED: 9,
    SpeedResult.INTERRUPTED: 10,
    SpeedResult.PROTOCOL_ERROR: 11,
    SpeedResult.BUDGET_EXHAUSTED: 12,
    SpeedResult.INTERNAL_ERROR: 99,
}


class ServerKind(StrEnum):
    OOKLA = "ookla"
    SELF_HOSTED = "self_hosted"


class SpeedServer(_Strict):
    """The server a test ran against. ``id`` is Ookla's id or the self-hosted name."""

    kind: ServerKind
    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    name: ShortText
    url: Annotated[str, StringConstraints(max_length=500)]


class SpeedMethodName(StrEnum):
    """How a test's figures were made (agent/README "How a speed test measures")."""

    CONFIDENCE = "confidence"  # stopped when the rate's confidence interval is within 2 %
    STABLE = "stable"  # stopped when two halves of a stretch agree (before December 2026)
    SPEEDTEST_CLI = "speedtest-cli"  # all bytes over all the time


class SpeedMethod(_Strict):
    """What a test used, so figures from different methods can be told apart."""

    name: SpeedMethodName
    # The agent's own sockets: it sends uploads, so this governs them. None: unknown.
    congestion_control: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,15}$")] | None = (
        None
    )
    connections: Annotated[int, Field(ge=1, le=64)] | None = None


class SpeedMeasurement(_Strict):
    """One speed test: figures on success, ``result``/``result_code`` always."""

    result: SpeedResult
    result_code: int
    threshold_mbps: Mbps
    download_mbps: Mbps | None = None
    upload_mbps: Mbps | None = None
    latency_ms: Millis | None = None
    jitter_ms: Millis | None = None
    meets_threshold: bool | None = None
    bytes_received: ByteCount = 0
    bytes_sent: ByteCount = 0
    duration_s: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    server: SpeedServer | None = None
    error: Annotated[str, StringConstraints(max_length=500)] | None = None
    method: SpeedMethod | None = None  # absent from agents older than December 2026

    @model_validator(mode="after")
    def _figures_match_result(self) -> Self:
        if self.result_code != SPEED_RESULT_CODES[self.result]:
            raise ValueError(
                f"result_code {self.result_code} does not match result {self.result.value!r}"
            )
        figures = (
            self.download_mbps,
            self.upload_mbps,
            self.latency_ms,
            self.jitter_ms,
            self.meets_threshold,
        )
        if self.result is SpeedResult.SUCCESS:
            if self.download_mbps is None or any(f is None for f in figures):
                raise ValueError(
                    "a successful test carries download, upload, latency, jitter and verdict"
                )
            if self.meets_threshold != (self.download_mbps >= self.threshold_mbps):
                raise ValueError("meets_threshold disagrees with download_mbps and threshold_mbps")
        elif any(f is not None for f in figures):
            raise ValueError("a failed test carries no speed figures")
        return self

    @classmethod
    def failed(
        cls,
        result: SpeedResult,
        error: str,
        *,
        threshold_mbps: float,
        server: SpeedServer | None = None,
        duration_s: float = 0.0,
        bytes_received: int = 0,
        bytes_sent: int = 0,
        method: SpeedMethod | None = None,
    ) -> SpeedMeasurement:
        return cls(
            result=result,
            result_code=SPEED_RESULT_CODES[result],
            threshold_mbps=threshold_mbps,
            server=server,
            duration_s=duration_s,
            bytes_received=bytes_received,
            bytes_sent=bytes_sent,
            error=error[:500],
            method=method,
        )


class SpeedReport(Envelope, SpeedMeasurement):
    """Published on ``<root>/<school_id>/speed``; ``measured_at`` is the test's start."""

    @classmethod
    def of(
        cls, measurement: SpeedMeasurement, *, school_id: str, agent_id: str, measured_at: datetime
    ) -> SpeedReport:
        fields = {name: getattr(measurement, name) for name in SpeedMeasurement.model_fields}
        return cls(school_id=school_id, agent_id=agent_id, measured_at=measured_at, **fields)


# -------------------------------------------------------------- devices ----


class DeviceKind(StrEnum):
    PANIC_BUTTON = "panic_button"
    TURNSTILE = "turnstile"
    POLICE_LINK = "police_link"
    CAMERA = "camera"
    OTHER = "other"


class DeviceState(StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    LATE = "late"
    DOWN = "down"


class DeviceResult(StrEnum):
    """Outcome of one device check; ``DEVICE_RESULT_CODES`` gives its number."""

    SUCCESS = "success"
    TIMEOUT = "timeout"
    CONNECTION_REFUSED = "connection_refused"
    DNS_ERROR = "dns_error"
    TLS_ERROR = "tls_error"
    STATUS_MISMATCH = "status_mismatch"
    BODY_MISMATCH = "body_mismatch"
    REPLY_MISMATCH = "reply_mismatch"
    UNREACHABLE = "unreachable"
    CONNECTION_RESET = "connection_reset"
    PROTOCOL_ERROR = "protocol_error"
    NO_HEARTBEAT = "no_heartbeat"
    NOT_CHECKED = "not_checked"
    AGENT_LOST = "agent_lost"
    INTERNAL_ERROR = "internal_error"


DEVICE_RESULT_CODES: dict[DeviceResult, int] = {
    DeviceResult.SUCCESS: 0,
    DeviceResult.TIMEOUT: 1,
    DeviceResult.CONNECTION_REFUSED: 2,
    DeviceResult.DNS_ERROR: 3,
    DeviceResult.TLS_ERROR: 4,
    DeviceResult.STATUS_MISMATCH: 5,
    DeviceResult.BODY_MISMATCH: 6,
    DeviceResult.REPLY_MISMATCH: 7,
    DeviceResult.UNREACHABLE: 8,
    DeviceResult.CONNECTION_RESET: 9,
    DeviceResult.PROTOCOL_ERROR: 10,
    DeviceResult.NO_HEARTBEAT: 11,
    DeviceResult.NOT_CHECKED: 12,
    DeviceResult.AGENT_LOST: 13,
    DeviceResult.INTERNAL_ERROR: 99,
}


class DeviceObservation(_Strict):
    """One device's state as the agent sees it, and the check that last decided it.

    ``result`` is a :class:`DeviceResult` value; it is a plain name on the wire
    so that an older collector can still store a result it does not know yet.
    """

    device_id: DeviceId
    kind: DeviceKind
    label: ShortText
    state: DeviceState
    changed_at: AwareDatetime
    result: ResultName
    result_code: Annotated[int, Field(ge=0, le=999)]
    response_ms: Millis | None = None
    detail: ShortText | None = None


class DevicesReport(Envelope):
    """Published on ``<root>/<school_id>/devices``.

    ``full`` is true for the periodic list of every device (and the first one
    after start); a state change is published at once with the changed devices
    only. ``sequence`` counts this boot's reports from 0, so a gap shows a lost
    report and a new ``boot_id`` a restart.
    """

    boot_id: MessageId
    sequence: Annotated[int, Field(ge=0)]
    full: bool
    devices: Annotated[list[DeviceObservation], Field(max_length=1000)]


# ---------------------------------------------------------------- agent ----


class HostHealth(_Strict):
    cpu_percent: Percent
    memory_percent: Percent
    memory_available_bytes: ByteCount
    disk_percent: Percent
    disk_free_bytes: ByteCount
    uptime_s: Annotated[int, Field(ge=0)]
    load_1m: Annotated[float, Field(ge=0, le=10_000)] | None = None
    temperature_c: Annotated[float, Field(ge=-60, le=200)] | None = None


class HeartbeatCounts(_Strict):
    """Heartbeats the agent received since it started, accepted and rejected by reason."""

    accepted: ByteCount = 0
    unknown_device: ByteCount = 0
    bad_token: ByteCount = 0
    malformed: ByteCount = 0


class OutboxCounts(_Strict):
    """The agent's outbox: messages not yet confirmed, and drops.

    ``messages`` waits for the broker (``awaiting_broker``), for a receipt from
    the collector (``awaiting_receipt``), or for the clock (``held``) to be
    synchronised. ``undatable`` counts what was taken before a restart while
    the clock was wrong, and so could not be dated.
    """

    messages: ByteCount
    bytes: ByteCount
    oldest_age_s: Annotated[float, Field(ge=0, le=10**9)]
    dropped: ByteCount
    awaiting_broker: ByteCount | None = None
    awaiting_receipt: ByteCount | None = None
    held: ByteCount | None = None
    undatable: ByteCount | None = None


class RejectionCounts(_Strict):
    """Messages of this agent the collector refused, by reason (from its receipts)."""

    total: ByteCount = 0
    by_reason: Annotated[dict[str, ByteCount], Field(max_length=40)] = Field(default_factory=dict)
    last_reason: ResultName | None = None
    last_at: AwareDatetime | None = None


class ConfigState(_Strict):
    """The ministry's remote configuration at this agent (agent/remote_config.py)."""

    # What is in force: "local", or each scope's version, e.g. "all:4,region:2".
    version: Annotated[str, StringConstraints(max_length=100)]
    refused_total: ByteCount = 0
    refused_by_reason: Annotated[dict[str, ByteCount], Field(max_length=20)] = Field(
        default_factory=dict
    )
    last_refusal: ShortText | None = None


class AgentState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class StatusReason(StrEnum):
    STARTED = "started"
    HEARTBEAT = "heartbeat"
    STOPPED = "stopped"
    CONNECTION_LOST = "connection_lost"


class AgentStatus(Envelope):
    """Retained on ``<root>/<school_id>/agent``.

    The Last Will carries ``status=offline, reason=connection_lost``; since a
    will's time cannot be known when it is registered, the collector stores it
    at the time it arrives.
    """

    status: AgentState
    reason: StatusReason
    version: Annotated[str, StringConstraints(max_length=40)]
    boot_id: MessageId
    host: HostHealth | None = None
    data_used_month_bytes: ByteCount | None = None
    data_budget_month_bytes: ByteCount | None = None
    heartbeats: HeartbeatCounts | None = None
    outbox: OutboxCounts | None = None
    rejections: RejectionCounts | None = None
    # When a receipt last said InfluxDB stored one of this agent's messages.
    last_stored_at: AwareDatetime | None = None
    # Whether the system clock was synchronised; None from agents that cannot tell.
    clock_synced: bool | None = None
    # The remote configuration; None from agents without the ministry's key.
    config: ConfigState | None = None

    @model_validator(mode="after")
    def _online_carries_health(self) -> Self:
        if self.status is AgentState.ONLINE and self.host is None:
            raise ValueError("an online status carries host health")
        return self


# ---------------------------------------------------------- connectivity ----


class OutageCause(StrEnum):
    """The most basic layer that failed (agent/connectivity.py)."""

    NO_ROUTE = "no_route"
    GATEWAY = "gateway"
    DNS = "dns"
    UPSTREAM = "upstream"


Seconds = Annotated[float, Field(ge=0, le=31 * 86_400)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]


class ConnectivityReport(Envelope):
    """Published on ``<root>/<school_id>/connectivity`` once a period is over.

    ``measured_at`` is the period's start (UTC); a period is ``period_s`` long,
    an hour unless the agent's ``connectivity.report_s`` says less. Each check
    stands for ``interval_s``; ``down_<cause>_s`` add up the failed ones by
    cause. Periods the agent was not running have no report.
    """

    interval_s: Annotated[float, Field(gt=0, le=3600)]
    period_s: Annotated[float, Field(ge=60, le=3600)] = 3600.0
    checks: Count
    passed: Count
    down_no_route_s: Seconds = 0.0
    down_gateway_s: Seconds = 0.0
    down_dns_s: Seconds = 0.0
    down_upstream_s: Seconds = 0.0

    def complete_at(self) -> datetime:
        return self.measured_at + timedelta(seconds=self.period_s)

    @model_validator(mode="after")
    def _passed_within_checks(self) -> Self:
        if self.passed > self.checks:
            raise ValueError("passed exceeds checks")
        return self


class OutageReport(Envelope):
    """Published on ``<root>/<school_id>/outage`` once an outage ended.

    ``measured_at`` is its start: the first failed check; ``ended_at`` the
    first check that passed again (or the cause changed), each within one
    check interval of the truth.
    """

    ended_at: AwareDatetime
    duration_s: Seconds
    cause: OutageCause
    detail: ShortText | None = None

    def complete_at(self) -> datetime:
        return self.ended_at

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> Self:
        if self.ended_at < self.measured_at:
            raise ValueError("ended_at is before measured_at (the outage's start)")
        return self


MESSAGE_MODELS: dict[TopicKind, type[Envelope]] = {
    TopicKind.SPEED: SpeedReport,
    TopicKind.DEVICES: DevicesReport,
    TopicKind.AGENT: AgentStatus,
    TopicKind.CONNECTIVITY: ConnectivityReport,
    TopicKind.OUTAGE: OutageReport,
}


# ---------------------------------------------------------- dead letter ----


class RejectReason(StrEnum):
    """Why the collector refused a message; every rejection is counted by reason."""

    OVERSIZE = "oversize"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    SCHEMA_VIOLATION = "schema_violation"
    UNKNOWN_TOPIC = "unknown_topic"
    SCHOOL_MISMATCH = "school_mismatch"
    UNKNOWN_SCHOOL = "unknown_school"
    BAD_TIMESTAMP = "bad_timestamp"
    INFLUX_REJECTED = "influx_rejected"
    RATE_LIMITED = "rate_limited"


class DeadLetter(_Strict):
    """What the collector republishes on its dead-letter topic."""

    schema_version: Literal[1] = 1
    topic: str
    reason: RejectReason
    detail: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    received_at: AwareDatetime
    collector_id: str
    # How many messages this letter stands for: 1, or a school's messages over its
    # budget in one batch (the payload is the first of them).
    count: int = Field(default=1, ge=1)


# -------------------------------------------------------------- receipts ----


class _Lenient(BaseModel):
    """What the collector sends the agent: unknown fields from a newer collector are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class Refusal(_Lenient):
    """One message the collector refused; ``message_id`` is None when it could not be read."""

    message_id: MessageId | None = None
    reason: str
    detail: Annotated[str, StringConstraints(max_length=500)] = ""


class Receipt(_Lenient):
    """Published on ``<root>/<school_id>/receipts`` once InfluxDB accepted a batch.

    One per school per batch (split when it would name more than
    ``RECEIPT_MAX_IDS`` messages). ``stored`` are message ids InfluxDB has;
    ``refused`` the ones it will never store, with the reason. A
    ``rate_limited`` refusal is not final: the agent sends it again later.
    """

    schema_version: Literal[1] = 1
    school_id: SchoolId
    collector_id: Annotated[str, StringConstraints(max_length=64)]
    stored_at: AwareDatetime
    stored: Annotated[list[MessageId], Field(max_length=1000)] = Field(default_factory=list)
    refused: Annotated[list[Refusal], Field(max_length=1000)] = Field(default_factory=list)


RECEIPT_MAX_IDS = 500


class Capabilities(_Lenient):
    """Retained on the capabilities topic by the collectors (``mqtt.capabilities_topic``)."""

    schema_version: Literal[1] = 1
    collector_id: Annotated[str, StringConstraints(max_length=64)]
    receipts: bool
    announced_at: AwareDatetime


DEFAULT_CAPABILITIES_TOPIC = "school-monitor/capabilities"
