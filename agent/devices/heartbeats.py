"""Passive heartbeats: devices that report on their own, each with its own token.

Both listeners (HTTP, and MQTT on the school's local broker) hand what they
receive to one :class:`HeartbeatDesk`, which checks the device id and token,
counts every acceptance and rejection by reason, and tells the monitor.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from enum import StrEnum

from agent.contract import HeartbeatCounts
from agent.devices.inventory import CheckKind, DeviceConfig

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    UNKNOWN_DEVICE = "unknown_device"
    BAD_TOKEN = "bad_token"  # noqa: S105 - a verdict, not a secret
    MALFORMED = "malformed"


class HeartbeatDesk:
    """Accepts a heartbeat only from a configured heartbeat device with its own token."""

    def __init__(
        self, devices: Iterable[DeviceConfig], on_heartbeat: Callable[[str], None]
    ) -> None:
        self._tokens = {
            d.id: d.token.get_secret_value().encode()
            for d in devices
            if d.check is CheckKind.HEARTBEAT and d.token is not None
        }
        self._on_heartbeat = on_heartbeat
        self._counts: dict[Verdict, int] = dict.fromkeys(Verdict, 0)
        self._lock = threading.Lock()

    @property
    def wanted(self) -> bool:
        """True when some device is checked by its heartbeats."""
        return bool(self._tokens)

    def receive(self, device_id: str, token: str | None, via: str) -> Verdict:
        expected = self._tokens.get(device_id)
        if expected is None:
            verdict = Verdict.UNKNOWN_DEVICE
        elif token is None or not hmac.compare_digest(expected, token.encode()):
            verdict = Verdict.BAD_TOKEN
        else:
            verdict = Verdict.ACCEPTED
        self._count(verdict, device_id[:64], via)
        if verdict is Verdict.ACCEPTED:
            self._on_heartbeat(device_id)
        return verdict

    def malformed(self, via: str, what: str) -> None:
        self._count(Verdict.MALFORMED, what[:64], via)

    def counts(self) -> HeartbeatCounts:
        with self._lock:
            return HeartbeatCounts(**{v.value: n for v, n in self._counts.items()})

    def _count(self, verdict: Verdict, device_id: str, via: str) -> None:
        with self._lock:
            self._counts[verdict] += 1
            seen = self._counts[verdict]
        if verdict is Verdict.ACCEPTED:
            log.debug("heartbeat from %s via %s", device_id, via)
        elif seen <= 10 or seen & (seen - 1) == 0:
            log.warning(
                "rejected heartbeat via %s: %s (%r); %d rejected for this reason so far",
                via,
                verdict.value,
                device_id,
                seen,
            )
