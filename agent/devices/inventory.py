"""The school's safety devices as configured: what each one is and how it is checked.

One ``[[devices]]`` table per device in the agent's TOML file (or a JSON list
in ``SCHOOL_AGENT_DEVICES``). Each entry is validated on its own, so an error
names the entry (``device 'panic-1' (entry 3): address: ...``), and ids must be
unique across the list.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from agent.contract import DeviceId, DeviceKind

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class CheckKind(StrEnum):
    TCP = "tcp"
    HTTP = "http"
    ICMP = "icmp"
    HEARTBEAT = "heartbeat"


# The settings that belong to one kind of check only.
_CHECK_FIELDS: dict[CheckKind, frozenset[str]] = {
    CheckKind.TCP: frozenset({"address", "send", "expect"}),
    CheckKind.HTTP: frozenset({"url", "expect_status", "expect_body", "verify_tls", "ca_file"}),
    CheckKind.ICMP: frozenset({"host"}),
    CheckKind.HEARTBEAT: frozenset({"token"}),
}
_REQUIRED: dict[CheckKind, tuple[str, ...]] = {
    CheckKind.TCP: ("address",),
    CheckKind.HTTP: ("url",),
    CheckKind.ICMP: ("host",),
    CheckKind.HEARTBEAT: ("token",),
}


def check_host(value: str) -> str:
    """An IP address or a DNS name; raise ValueError otherwise."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError(f"{value!r} is neither an IP address nor a host name") from None
    return value


def split_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); raise ValueError otherwise."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    if not match:
        raise ValueError(f"{value!r} is not host:port (use [address]:port for IPv6)")
    host = match[1] or match[3]
    port = int(match[2] or match[4])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return check_host(host), port


class DeviceConfig(BaseModel):
    """One device: identity, the check that tells whether it is alive, and its timing.

    Timing: a check every ``period_s`` (a heartbeat device must report at least
    that often). A failed check (or a heartbeat overdue) makes the device
    ``late``; it is re-checked every ``grace_s / (down_after - 1)`` seconds and
    becomes ``down`` after ``down_after`` consecutive misses, that is
    ``period_s + grace_s`` after its last sign of life. A ``down`` device is
    ``up`` again after ``up_after`` consecutive successes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: DeviceId
    kind: DeviceKind
    label: Annotated[str, Field(min_length=1, max_length=200)]
    check: CheckKind
    period_s: float = Field(default=60.0, ge=0.5, le=86_400)
    grace_s: float = Field(default=30.0, ge=0, le=86_400)
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    down_after: int = Field(default=3, ge=1, le=100)
    up_after: int = Field(default=2, ge=1, le=100)
    # tcp
    address: str | None = None
    send: Annotated[str, Field(max_length=1024)] | None = None
    expect: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    # http
    url: str | None = None
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = None
    expect_body: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    verify_tls: bool | None = None
    ca_file: Path | None = None
    # icmp
    host: str | None = None
    # heartbeat
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _check_settings(self) -> Self:
        foreign = sorted(
            name
            for kind, names in _CHECK_FIELDS.items()
            if kind is not self.check
            for name in names
            if getattr(self, name) is not None
        )
        if foreign:
            raise ValueError(f"{', '.join(foreign)} do(es) not apply to a {self.check} check")
        missing = [name for name in _REQUIRED[self.check] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.check} check needs {', '.join(missing)}")
        try:
            if self.address is not None:
                split_address(self.address)
            if self.host is not None:
                check_host(self.host)
        except ValueError as exc:
            raise ValueError(f"{'address' if self.address else 'host'}: {exc}") from None
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url must be an http:// or https:// URL, got {self.url!r}")
            try:
                check_host(parts.hostname)
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError as exc:
                raise ValueError(f"url: {exc}") from None
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} does not exist")
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError("token must be at least 16 characters (e.g. `openssl rand -hex 16`)")
        if self.active and self.timeout_s >= self.period_s:
            raise ValueError(f"timeout_s ({self.timeout_s:g}) must be shorter than period_s")
        return self

    @property
    def retry_s(self) -> float:
        """The interval between checks while a miss is being confirmed (or a recovery)."""
        if self.down_after > 1 and self.grace_s > 0:
            return max(0.5, self.grace_s / (self.down_after - 1))
        return self.period_s

    @property
    def active(self) -> bool:
        """Checked by the agent (rather than reporting heartbeats on its own)."""
        return self.check is not CheckKind.HEARTBEAT

    def target(self) -> str:
        """What is checked, for people: an address, a URL, a host, or ``heartbeat``."""
        return self.address or self.url or self.host or "heartbeat"


def parse_devices(entries: Any) -> list[DeviceConfig]:
    """Validate every entry, naming each bad one; then insist on unique ids."""
    if not isinstance(entries, list):
        raise TypeError("devices must be a list of device tables ([[devices]] in TOML)")
    devices: list[tuple[int, DeviceConfig]] = []
    problems: list[str] = []
    for number, entry in enumerate(entries, 1):
        name = _entry_name(entry, number)
        if isinstance(entry, DeviceConfig):
            devices.append((number, entry))
            continue
        try:
            devices.append((number, DeviceConfig.model_validate(entry)))
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(part) for part in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                if error["type"] == "extra_forbidden":
                    message = "unknown setting (a typo?)"
                problems.append(f"{name}: {where + ': ' if where else ''}{message}")
    seen: dict[str, int] = {}
    for number, device in devices:
        if device.id in seen:
            problems.append(
                f"device {device.id!r}: the id is used twice (entries {seen[device.id]} and "
                f"{number}); give every device its own id"
            )
        seen.setdefault(device.id, number)
    if problems:
        raise ValueError("\n    ".join(["", *problems]))
    return [device for _, device in devices]


def _entry_name(entry: Any, number: int) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else getattr(entry, "id", None)
    return f"device {ident!r} (entry {number})" if isinstance(ident, str) else f"entry {number}"
