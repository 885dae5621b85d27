"""The agent's settings: environment ``SCHOOL_AGENT_*`` (``__`` nests) and a TOML file.

Every setting is listed, with its default, in agent/README.md and in
``agent/agent.sample.toml``.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from agent.broker import BrokerSettings
from agent.config_file import FileSettings, require
from agent.connectivity import default_targets, parse_target
from agent.contract import DEFAULT_CAPABILITIES_TOPIC, DEFAULT_TOPIC_ROOT, AgentId, SchoolId
from agent.devices.inventory import DeviceConfig, parse_devices, split_address
from agent.schedule import Window

ENV_PREFIX = "SCHOOL_AGENT_"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def default_state_dir() -> Path:
    """systemd's ``$STATE_DIRECTORY`` when set, else ``~/.local/state/school-agent``."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    return Path.home() / ".local" / "state" / "school-agent"


def check_topic_root(value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/") or any(c in value for c in "+#"):
        raise ValueError("topic root must be non-empty, without wildcards or outer slashes")
    return value


TopicRoot = Annotated[str, AfterValidator(check_topic_root)]


class AgentMqttSettings(BrokerSettings):
    topic_root: TopicRoot = DEFAULT_TOPIC_ROOT
    ack_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # Receipts: "auto" follows the collectors' retained announcement on
    # capabilities_topic; "on" always waits for a receipt; "off" trusts the PUBACK.
    receipts: Literal["auto", "on", "off"] = "auto"
    capabilities_topic: str = DEFAULT_CAPABILITIES_TOPIC
    # How long the broker keeps this agent's session (its subscriptions) while it is
    # away. Not the receipts sent meanwhile: they come at QoS 0, and are lost; the
    # messages they named are sent again.
    session_expiry_s: int = Field(default=7 * 86_400, ge=0, le=2**32 - 1)
    # The account `doctor` connects with (same password): the broker binds each
    # account to one session, so the doctor must not use the agent's own.
    doctor_username: str | None = None


def _speed_server_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL of a speed server, got {value!r}")
    return value


class SpeedtestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server_url: str | None = None
    server_urls: list[str] = Field(default_factory=list)
    server_name: str | None = None
    server_ids: list[int] = Field(default_factory=list)
    exclude_server_ids: list[int] = Field(default_factory=list)
    threshold_mbps: float = Field(default=20.0, gt=0, le=100_000)
    method: Literal["confidence", "stable", "speedtest-cli"] = "confidence"
    congestion_control: str = Field(default="bbr", pattern=r"^[a-z0-9_]{1,15}$")
    connections: int | None = Field(default=None, ge=1, le=32)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    monthly_budget_mb: float | None = Field(default=None, gt=0)

    @field_validator("server_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else _speed_server_url(value)

    @field_validator("server_urls")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        return [_speed_server_url(url) for url in value]

    @model_validator(mode="after")
    def _ids_only_for_ookla(self) -> Self:
        if (self.server_ids or self.exclude_server_ids) and self.self_hosted_urls():
            raise ValueError(
                "server_ids and exclude_server_ids choose among Ookla's servers; "
                "they cannot be combined with server_url(s)"
            )
        return self

    def self_hosted_urls(self) -> list[str]:
        """Every self-hosted server configured, ``server_url`` first."""
        urls = [self.server_url] if self.server_url else []
        return urls + [url for url in self.server_urls if url not in urls]

    @field_validator("server_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("-", "").replace(".", "").isalnum():
            raise ValueError("use letters, digits, dots and dashes only")
        return value


def parse_timezone(text: str) -> tzinfo:
    """``UTC``, a fixed offset (``+05:00``, ``UTC+5``) or an IANA name (``Asia/Almaty``)."""
    match = re.fullmatch(r"(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?", text.strip())
    if match:
        sign = -1 if match[1] == "-" else 1
        offset = timedelta(hours=int(match[2]), minutes=int(match[3] or 0))
        if offset > timedelta(hours=14):
            raise ValueError(f"offset {text!r} is beyond 14 hours")
        return timezone(sign * offset)
    if text.strip().upper() in ("UTC", "GMT", "Z"):
        return UTC
    try:
        return ZoneInfo(text.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {text!r}: use an offset like +05:00 or a name like Asia/Almaty"
        ) from exc


def _known_timezone(text: str) -> str:
    parse_timezone(text)
    return text


# A time-zone setting, checked when read (parse_timezone gives its tzinfo).
TimezoneText = Annotated[str, AfterValidator(_known_timezone)]


class ScheduleSettings(BaseModel):
    """When the daemon tests the speed: see agent/schedule.py."""

    model_config = ConfigDict(extra="forbid")

    windows: list[str] = Field(
        default_factory=lambda: ["08:00-12:00", "12:00-16:00", "16:00-20:00"], min_length=1
    )
    timezone: TimezoneText = "+05:00"
    startup_test: bool = True
    retries: int = Field(default=3, ge=0, le=10)
    retry_interval_min: float = Field(default=15.0, gt=0, le=24 * 60)

    @field_validator("windows")
    @classmethod
    def _windows_parse(cls, value: list[str]) -> list[str]:
        for text in value:
            Window.parse(text)
        return value

    def parsed_windows(self) -> list[Window]:
        return [Window.parse(text) for text in self.windows]

    def tz(self) -> tzinfo:
        return parse_timezone(self.timezone)


class OutboxSettings(BaseModel):
    """The durable outbox (``<state_dir>/outbox.db``): its bounds and how fast it empties."""

    model_config = ConfigDict(extra="forbid")

    max_mb: float = Field(default=50.0, gt=0, le=100_000)
    max_age_days: float = Field(default=30.0, gt=0, le=3650)
    replay_rate_per_s: float = Field(default=5.0, gt=0, le=10_000)
    max_in_flight: int = Field(default=20, ge=1, le=1000)
    resend_after_s: float = Field(default=60.0, ge=1, le=86_400)
    # A message the broker acknowledged but no receipt named is sent again once a
    # later one was confirmed and it waited receipt_grace_s, or after
    # receipt_timeout_s regardless; both double with each resend, up to a day.
    receipt_grace_s: float = Field(default=120.0, ge=1, le=86_400)
    receipt_timeout_s: float = Field(default=3600.0, ge=1, le=86_400)


class RemoteConfigSettings(BaseModel):
    """The ministry's signed remote configuration (see agent/remote_config.py)."""

    model_config = ConfigDict(extra="forbid")

    # The ministry's Ed25519 public key (PEM), from the school's bundle; unset: off.
    public_key: Path | None = None


class ClockSettings(BaseModel):
    """Whether measurements wait for a synchronised clock (see agent/clock_trust.py)."""

    model_config = ConfigDict(extra="forbid")

    # Hold what is measured while the kernel says the clock is unsynchronised, and date
    # it once it is, or from the collector's receipts; false believes the clock as is.
    hold_unsynced: bool = True


class ConnectivitySettings(BaseModel):
    """Reachability checked every interval_s; outages kept and published (agent/connectivity.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_s: float = Field(default=60.0, ge=5, le=3600)
    timeout_s: float = Field(default=3.0, gt=0, le=30)
    # how long each published count covers: an hour, or a part of one that divides it
    report_s: int = Field(default=3600, ge=60, le=3600)
    # tcp:HOST:PORT, http:URL (a HEAD) or dns:NAME; empty: the broker, the self-hosted
    # speed servers and the broker's name.
    targets: list[str] = Field(default_factory=list, max_length=20)

    @field_validator("targets")
    @classmethod
    def _targets_parse(cls, value: list[str]) -> list[str]:
        for spec in value:
            parse_target(spec)
        return value

    @field_validator("report_s")
    @classmethod
    def _report_divides_the_hour(cls, value: int) -> int:
        if 3600 % value:
            raise ValueError(f"{value} does not divide an hour: use 3600, 1800, 900, 300 or 60")
        return value


class HeartbeatSettings(BaseModel):
    """Where heartbeat devices report (used only when some device has ``check = "heartbeat"``)."""

    model_config = ConfigDict(extra="forbid")

    listen: str = "0.0.0.0:8470"
    mqtt: BrokerSettings = Field(default_factory=BrokerSettings)
    topic_prefix: TopicRoot = "heartbeats"

    @field_validator("listen")
    @classmethod
    def _listen_parses(cls, value: str) -> str:
        if value:
            split_address(value)
        return value


class AgentSettings(FileSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )
    env_prefix_for_help: ClassVar[str] = ENV_PREFIX

    school_id: SchoolId | None = None
    agent_id: AgentId | None = None
    region: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    state_dir: Path = Field(default_factory=default_state_dir)
    status_interval_s: float = Field(default=300.0, ge=5, le=86_400)
    log_level: LogLevel = "INFO"
    mqtt: AgentMqttSettings = Field(default_factory=AgentMqttSettings)
    speedtest: SpeedtestSettings = Field(default_factory=SpeedtestSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    devices: Annotated[list[DeviceConfig], Field(max_length=500)] = Field(default_factory=list)
    device_report_interval_s: float = Field(default=300.0, ge=5, le=86_400)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    clock: ClockSettings = Field(default_factory=ClockSettings)
    connectivity: ConnectivitySettings = Field(default_factory=ConnectivitySettings)
    remote_config: RemoteConfigSettings = Field(default_factory=RemoteConfigSettings)

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_parse(cls, value: object) -> list[DeviceConfig]:
        return parse_devices(value)

    def require_for_run(self) -> None:
        """The daemon needs to know who it is and where to publish."""
        require(self, "school_id", "mqtt.url", env_prefix=ENV_PREFIX)


def connectivity_targets(settings: AgentSettings) -> list[str]:
    """The targets set, or those the agent needs: its broker, speed servers, their names."""
    if settings.connectivity.targets:
        return list(settings.connectivity.targets)
    broker = None
    if settings.mqtt.url is not None:
        address = settings.mqtt.address()
        broker = (address.host, address.port)
    return default_targets(broker, settings.speedtest.self_hosted_urls())
