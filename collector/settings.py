"""The collector's settings: environment ``SCHOOL_COLLECTOR_*`` (``__`` nests) and a TOML file.

Every setting is listed, with its default, in collector/README.md and in
``collector/collector.sample.toml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from agent.broker import BrokerSettings
from agent.config_file import FileSettings
from agent.contract import DEFAULT_CAPABILITIES_TOPIC, DEFAULT_TOPIC_ROOT, MAX_PAYLOAD_BYTES
from agent.schedule import Window
from agent.settings import LogLevel, TimezoneText, TopicRoot, parse_timezone
from collector.rollout_rules import Rules
from collector.school_hours import SchoolHours

ENV_PREFIX = "SCHOOL_COLLECTOR_"


class CollectorMqttSettings(BrokerSettings):
    url: str | None = "mqtt://localhost:1883"
    client_id: str = Field(default="school-collector", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    topic_root: TopicRoot = DEFAULT_TOPIC_ROOT
    dead_letter_topic: str = "school-monitor/dead-letter"
    session_expiry_s: int = Field(default=7 * 86_400, ge=0, le=2**32 - 1)
    receive_maximum: int = Field(default=10_000, ge=1, le=65_535)
    max_payload_bytes: int = Field(default=MAX_PAYLOAD_BYTES, ge=1024, le=16 * 1024 * 1024)
    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    # Receipts to each school once InfluxDB stored its messages, announced (retained)
    # on capabilities_topic. Every collector of a share group must agree.
    receipts: bool = True
    capabilities_topic: str = DEFAULT_CAPABILITIES_TOPIC

    @field_validator("dead_letter_topic", "capabilities_topic")
    @classmethod
    def _plain_topic(cls, value: str) -> str:
        if not value or any(c in value for c in "+#"):
            raise ValueError("must be a topic without wildcards")
        return value

    @model_validator(mode="after")
    def _dead_letters_outside_root(self) -> Self:
        for name in ("dead_letter_topic", "capabilities_topic"):
            if getattr(self, name).startswith(self.topic_root + "/"):
                raise ValueError(f"{name} must lie outside topic_root, where only schools publish")
        return self


class InfluxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = "http://localhost:8086"
    api: Literal["v1", "v2"] = "v1"
    database: str = Field(default="school_monitor", min_length=1)
    retention_policy: str | None = None
    org: str | None = None
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    create_database: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        if parts.password:
            raise ValueError("put credentials in influx.username/password or influx.token")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _v2_needs_token(self) -> Self:
        if self.api == "v2" and (self.token is None or not self.org):
            raise ValueError(
                "api 'v2' needs influx.token and influx.org "
                "(for InfluxDB 1.8's compatibility API: token 'user:password', org '-')"
            )
        return self


class BatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_points: int = Field(default=5000, ge=1, le=100_000)
    max_wait_s: float = Field(default=0.5, gt=0, le=60)
    retry_initial_s: float = Field(default=1.0, gt=0, le=60)
    retry_max_s: float = Field(default=60.0, gt=0, le=3600)


class RolloutSettings(BaseModel):
    """The thresholds of the rollout percentages (collector/README.md, "Rollout percentages")."""

    model_config = ConfigDict(extra="forbid")

    # at most 10 minutes: the national dashboard lists the schools to chase from the last runs
    interval_s: float = Field(default=300.0, ge=10, le=600)
    threshold_mbps: float = Field(default=20.0, gt=0, le=100_000)
    speed_window_days: float = Field(default=30.0, gt=0, le=366)
    reporting_days: float = Field(default=7.0, gt=0, le=366)
    live_days: float = Field(default=21.0, gt=0, le=366)
    dropped_days: float = Field(default=28.0, gt=0, le=366)
    device_fresh_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    per_student_kbps: float = Field(default=50.0, ge=0, le=100_000)
    per_student_from: int = Field(default=400, ge=0, le=1_000_000)
    availability_target: float = Field(default=99.0, ge=0, le=100)
    availability_window_days: float = Field(default=30.0, gt=0, le=366)

    def rules(self) -> Rules:
        return Rules(**self.model_dump(exclude={"interval_s"}))


class SchoolHoursSettings(BaseModel):
    """When schools are expected online: the availability judged in school hours."""

    model_config = ConfigDict(extra="forbid")

    hours: str = "08:00-20:00"
    timezone: TimezoneText = "+05:00"

    @field_validator("hours")
    @classmethod
    def _hours_parse(cls, value: str) -> str:
        Window.parse(value)
        return value

    def school_hours(self) -> SchoolHours:
        return SchoolHours(Window.parse(self.hours), parse_timezone(self.timezone))


class StateSettings(BaseModel):
    """The current state the collector keeps for "now" questions (collector/README.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # at most 2 minutes: readers scan 20 minutes, a refresh (15) and two ticks
    interval_s: float = Field(default=60.0, ge=5, le=120)


class RetentionSettings(BaseModel):
    """How long InfluxDB keeps raw points and their summaries (collector/README.md)."""

    model_config = ConfigDict(extra="forbid")

    raw_days: int = Field(default=90, ge=1, le=3650)
    history_days: int = Field(default=0, ge=0, le=36_500)
    summary_interval_s: int = Field(default=3600, ge=1, le=86_400)


class SchoolBudgetSettings(BaseModel):
    """How many messages one school may send before the rest is ``rate_limited``."""

    model_config = ConfigDict(extra="forbid")

    messages_per_hour: float = Field(default=1200.0, gt=0, le=10_000_000)
    burst: int = Field(default=1000, ge=1, le=10_000_000)


class CollectorSettings(FileSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )
    env_prefix_for_help: ClassVar[str] = ENV_PREFIX

    log_level: LogLevel = "INFO"
    stats_interval_s: float = Field(default=60.0, ge=1, le=3600)
    mqtt: CollectorMqttSettings = Field(default_factory=CollectorMqttSettings)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    school_hours: SchoolHoursSettings = Field(default_factory=SchoolHoursSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    school_budget: SchoolBudgetSettings = Field(default_factory=SchoolBudgetSettings)
    registry_file: Path | None = None
    registry_refresh_s: float = Field(default=300.0, ge=1, le=86_400)
    max_future_s: float = Field(default=300.0, ge=0, le=86_400)
    max_past_days: float = Field(default=60.0, gt=0, le=3650)

    @model_validator(mode="after")
    def _raw_outlives_its_readers(self) -> Self:
        rules = self.rollout
        needed = max(self.max_past_days, rules.speed_window_days, rules.dropped_days,
                     rules.reporting_days, rules.live_days,
                     rules.availability_window_days)  # fmt: skip
        if self.retention.raw_days < needed:
            raise ValueError(
                f"retention.raw_days ({self.retention.raw_days}) must be at least {needed:g}: "
                "max_past_days and the rollout windows read raw points that old"
            )
        return self

    @field_validator("registry_file")
    @classmethod
    def _registry_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist; give the school registry CSV")
        return value
