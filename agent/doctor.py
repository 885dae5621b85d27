"""``school-agent doctor``: is this installation able to do its job? A pass/fail list.

Each check says what it found and, when it fails, what to do. The exit code
is 0 when nothing failed (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from agent.broker import BrokerError, ConnectionWatch, connect, new_client
from agent.clock_trust import KernelSync, SyncSource
from agent.config_file import ConfigError
from agent.contract import DeviceState
from agent.devices.monitor import DeviceMonitor
from agent.devices.probes import IcmpUnavailable, icmp_mode
from agent.outbox import read_delivery
from agent.refusals import DEFAULT_ADVICE, REFUSAL_ADVICE
from agent.settings import AgentSettings
from agent.speed.endpoint import Endpoint, SpeedTestFailed
from agent.speed.latency import measure_latency

MB = 1_000_000
# Messages waiting longer than this make the delivery check a warning.
STUCK_S = 6 * 3600


class Verdict(StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.verdict.value}  {self.check:<14} {self.detail}"


def diagnose(settings: AgentSettings) -> list[Finding]:
    findings = [_config(settings), _clock(settings), _disk(settings)]
    if settings.mqtt.url is not None:
        dns = _dns(settings.mqtt.address().host)
        findings.append(dns)
        if dns.verdict is Verdict.PASS:
            findings.append(_broker(settings))
    findings.append(_delivery(settings))
    if settings.remote_config.public_key is not None:
        findings.append(_remote_config(settings))
    findings += _speed_servers(settings)
    findings += _devices(settings)
    return findings


def _remote_config(settings: AgentSettings) -> Finding:
    """The ministry's configuration in force, and the last document refused (read only)."""
    from agent.remote_config import REMOTE_CONFIG_FILE, load, load_public_key  # noqa: PLC0415

    assert settings.remote_config.public_key is not None  # noqa: S101 - checked by the caller
    try:
        load_public_key(settings.remote_config.public_key)
    except ValueError as exc:
        return Finding(Verdict.FAIL, "remote config", f"{exc}; install the bundle's "
                       "config-key.pub (school-agent-setup --bundle DIR)")  # fmt: skip
    applied = load(settings.state_dir / REMOTE_CONFIG_FILE)
    text = f"in force: {applied.label()}"
    if notes := [d.note for d in applied.documents.values() if d.note]:
        text += f" ({'; '.join(notes)})"
    if applied.refused:
        counts = ", ".join(f"{n} {r}" for r, n in sorted(applied.refused.items()))
        return Finding(
            Verdict.WARN, "remote config",
            f"{text}. Refused so far: {counts}; the last: {applied.last_refusal}. To do: "
            "nothing here if it was not from the ministry; else tell the ministry (a document "
            "for another school or region, an older version, or one the key does not sign)",
        )  # fmt: skip
    return Finding(Verdict.PASS, "remote config", text)


def _config(settings: AgentSettings) -> Finding:
    try:
        settings.require_for_run()
    except ConfigError as exc:
        return Finding(Verdict.FAIL, "config", f"{exc}".replace("\n", " "))
    return Finding(Verdict.PASS, "config", f"school {settings.school_id}")


def _clock(settings: AgentSettings, sync: SyncSource | None = None) -> Finding:
    """The kernel's verdict (adjtimex), the one the agent itself acts on."""
    state = (sync or KernelSync()).synchronised()
    if state is True:
        return Finding(Verdict.PASS, "clock", "synchronised (the kernel says so)")
    if state is None:
        return Finding(
            Verdict.WARN, "clock",
            "cannot tell whether the clock is synchronised; results carry its time, so "
            "make sure NTP runs (timedatectl set-ntp true)",
        )  # fmt: skip
    if not settings.clock.hold_unsynced:
        return Finding(
            Verdict.FAIL, "clock",
            "not synchronised, and clock.hold_unsynced is off: results go out with this "
            "clock's time; run: timedatectl set-ntp true, and let NTP (UDP 123) out",
        )  # fmt: skip
    return Finding(
        Verdict.WARN, "clock",
        "not synchronised: measurements wait in the outbox until it is, or until the "
        "collector's receipts give the time; run: timedatectl set-ntp true, and let NTP "
        "(UDP 123) out",
    )  # fmt: skip


def _delivery(settings: AgentSettings, now: float | None = None) -> Finding:
    """What the outbox says: waiting messages, the last central store, the last refusal."""
    path = settings.state_dir / "outbox.db"
    if not path.exists():
        return Finding(Verdict.PASS, "delivery", f"nothing sent yet (no {path})")
    try:
        stats, delivery = read_delivery(path)
    except sqlite3.Error as exc:
        return Finding(
            Verdict.WARN, "delivery",
            f"cannot read {path}: {exc}; run doctor as the agent's user (or root)",
        )  # fmt: skip
    now = time.time() if now is None else now
    waiting = (
        f"{stats.awaiting_broker} message(s) wait for the broker, "
        f"{stats.awaiting_receipt} for the collector's receipt"
    )
    if delivery.last_stored_at is not None:
        stored = f"last stored centrally {_when(delivery.last_stored_at, now)}"
    elif delivery.receipts:
        stored = "no receipt has confirmed a central store yet"
    else:
        stored = "the collectors send no receipts (the broker's acknowledgement is the last word)"
    last = delivery.last_refusal
    if last is not None:
        advice = REFUSAL_ADVICE.get(last.reason, DEFAULT_ADVICE)
        return Finding(
            Verdict.WARN, "delivery",
            f"{waiting}; {stored}. {delivery.refused_total} message(s) refused so far; the "
            f"last {_when(last.at, now)}: {last.reason} ({last.detail[:200]}). To do: {advice}",
        )  # fmt: skip
    oldest = stats.oldest_age_s or 0.0
    if stats.messages and oldest > STUCK_S:
        return Finding(
            Verdict.WARN, "delivery",
            f"{waiting}, the oldest for {oldest / 3600:.1f} h; {stored}. Check the broker "
            "check above and the agent's log (journalctl -u school-agent)",
        )  # fmt: skip
    return Finding(Verdict.PASS, "delivery", f"{waiting}; {stored}")


def _when(moment: float, now: float) -> str:
    at = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")
    ago = max(0.0, now - moment)
    if ago < 120:
        return f"at {at} ({ago:.0f} s ago)"
    if ago < 2 * 3600:
        return f"at {at} ({ago / 60:.0f} min ago)"
    return f"at {at} ({ago / 3600:.1f} h ago)"


def _disk(settings: AgentSettings) -> Finding:
    directory = settings.state_dir
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    free = shutil.disk_usage(directory).free
    need = int(settings.outbox.max_mb * MB * 2)
    text = f"{free / MB:.0f} MB free for {settings.state_dir} (the outbox needs up to "
    text += f"{settings.outbox.max_mb:g} MB)"
    if free < need:
        return Finding(Verdict.FAIL, "disk", text + "; free some space or lower outbox.max_mb")
    return Finding(Verdict.PASS, "disk", text)


def _dns(host: str) -> Finding:
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError as exc:
        return Finding(
            Verdict.FAIL, "dns",
            f"cannot resolve the broker {host}: {exc}; check the network and /etc/resolv.conf",
        )  # fmt: skip
    return Finding(Verdict.PASS, "dns", f"{host} is {', '.join(sorted(addresses))}")


def _broker(settings: AgentSettings) -> Finding:
    """Connect as the doctor, never in the running agent's session (it would be dropped)."""
    mqtt = settings.mqtt
    if mqtt.doctor_username is not None:
        mqtt = mqtt.model_copy(update={"username": mqtt.doctor_username})
    school = settings.school_id or "unknown"
    client, address = new_client(f"doctor-{school}-{secrets.token_hex(4)}", mqtt)
    watch = ConnectionWatch(client, address)
    try:
        connect(client, address, keepalive=settings.mqtt.keepalive_s)
        client.loop_start()
        watch.wait(settings.mqtt.connect_timeout_s)
    except BrokerError as exc:
        hint = (
            f" (the doctor connects as mqtt.doctor_username {mqtt.doctor_username!r}: check it "
            "against the bundle from `school-collector provision`)"
            if mqtt.doctor_username is not None and watch.refusal is not None
            else ""
        )
        return Finding(Verdict.FAIL, "broker", f"{exc}{hint}")
    finally:
        client.disconnect()
        client.loop_stop()
    return Finding(Verdict.PASS, "broker", f"{address} accepted this school's credentials")


def _speed_servers(settings: AgentSettings) -> list[Finding]:
    urls = settings.speedtest.self_hosted_urls()
    if not urls:
        return [Finding(Verdict.PASS, "speed server", "Ookla's servers (chosen at each test)")]
    found = []
    for url in urls:
        try:
            latency = measure_latency(
                Endpoint(f"{url.rstrip('/')}/speedtest/upload.php"),
                count=3,
                timeout_s=settings.speedtest.timeout_s,
            )
        except SpeedTestFailed as exc:
            found.append(Finding(Verdict.FAIL, "speed server", f"{url}: {exc}; check the URL"))
            continue
        found.append(Finding(Verdict.PASS, "speed server", f"{url}: {latency.median_ms:.1f} ms"))
    return found


def _devices(settings: AgentSettings) -> list[Finding]:
    if not settings.devices:
        return []
    try:
        privileged = icmp_mode(settings.devices)
    except IcmpUnavailable as exc:
        return [Finding(Verdict.FAIL, "devices", str(exc))]
    monitor = DeviceMonitor(settings.devices, on_report=lambda *_: None, privileged_icmp=privileged)
    found = []
    for device, seen in zip(settings.devices, monitor.check_once(), strict=True):
        name = f"device {device.id}"
        if not device.active:
            found.append(Finding(Verdict.PASS, name, "reports heartbeats (not checked here)"))
        elif seen.state is DeviceState.UP:
            found.append(Finding(Verdict.PASS, name, f"{device.target()}: {seen.response_ms} ms"))
        else:
            found.append(
                Finding(
                    Verdict.FAIL, name,
                    f"{device.target()}: {seen.result} ({seen.detail}); check that it is on "
                    "and reachable from this machine, and its address in the config",
                )
            )  # fmt: skip
    return found
