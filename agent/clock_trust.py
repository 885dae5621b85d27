"""Whether the agent may believe its own clock, and the true time of a measurement when not.

A Raspberry Pi has no real-time clock: after a power cut it boots with the
time it last saved, and keeps it until NTP syncs, which needs the very
network that may be down. A measurement stamped then would be stored at the
wrong moment, or refused.

The agent reads the kernel's own verdict: ``adjtimex(2)`` returns
``TIME_ERROR`` while the clock is unsynchronised (``STA_UNSYNC``), which is
what systemd-timesyncd, chrony and ntpd clear once they have disciplined it,
and what ``timedatectl`` reports as "System clock synchronized". Where
``adjtimex`` is unavailable, systemd-timesyncd's marker
``/run/systemd/timesync/synchronized`` decides; with neither, the clock is
believed (``None``: cannot tell).

A measurement taken while the clock is not believed is held, with the kernel's
boot id and its ``CLOCK_MONOTONIC`` time, which runs at the true rate
whatever the wall clock says. Its true time is found later from either

- the system clock, once synchronised: now minus the monotonic time elapsed;
- the collector's clock: a receipt's ``stored_at`` for a status the agent
  sent ``rtt`` seconds earlier was written within that round trip, so the
  true time when the receipt arrived is ``stored_at + rtt / 2``, within
  ``rtt / 2`` (only round trips of at most ``MAX_PROBE_RTT_S`` count).

Limit: a measurement held across a reboot cannot be dated (the monotonic
clock restarts); it is dropped and counted as ``undatable``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from agent.contract import DevicesReport, Envelope, OutageReport

TIME_ERROR = 5  # adjtimex's answer while the clock is unsynchronised
TIMESYNCD_MARKER = Path("/run/systemd/timesync/synchronized")
KERNEL_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# A receipt's time counts only if it came back within this many seconds.
MAX_PROBE_RTT_S = 10.0


class SyncSource(Protocol):
    def synchronised(self) -> bool | None:
        """True or False as the system says; None when it cannot tell."""


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux), read with modes = 0: nothing is set."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    )


class KernelSync:
    """The kernel's verdict through ``adjtimex(2)``; systemd-timesyncd's marker otherwise."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        library = ctypes.CDLL(name, use_errno=True) if name else None
        self._adjtimex = getattr(library, "adjtimex", None)

    def synchronised(self) -> bool | None:
        if self._adjtimex is not None:
            answer = self._adjtimex(ctypes.byref(_Timex()))
            if answer >= 0:
                return bool(answer != TIME_ERROR)
        if TIMESYNCD_MARKER.parent.is_dir():
            return TIMESYNCD_MARKER.exists()
        return None


class Unchecked:
    """For ``clock.hold_unsynced = false``: the system clock is believed as it is."""

    def synchronised(self) -> bool | None:
        return None


def kernel_boot_id() -> str:
    """This boot of the machine (not of the agent): monotonic times compare within one."""
    try:
        return KERNEL_BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class _Reference:
    true_s: float  # the true time (epoch seconds) ...
    monotonic_s: float  # ... at this monotonic time
    error_s: float


class TimeKeeper:
    """Says whether a measurement's time can be believed, and finds it when it cannot."""

    def __init__(
        self,
        sync: SyncSource,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        boot_id: str | None = None,
    ) -> None:
        self._sync = sync
        self._wall = wall
        self._monotonic = monotonic
        self.boot_id = boot_id or kernel_boot_id()
        self._lock = threading.Lock()
        self._unsynced_at: float | None = None  # monotonic time it was last seen unsynced
        self._reference: _Reference | None = None

    def synchronised(self) -> bool:
        """Whether the system clock may be believed now (noting when it may not)."""
        return self.sync_state() is not False

    def sync_state(self) -> bool | None:
        """The system's answer: synchronised, not, or None when unchecked or unknown."""
        state = self._sync.synchronised()
        if state is False:
            with self._lock:
                self._unsynced_at = self._monotonic()
        return state

    def believed(self, measured_monotonic: float) -> bool:
        """Whether a time stamped at ``measured_monotonic`` by the system clock is right:
        the clock is synchronised now and was throughout since then."""
        if not self.synchronised():
            return False
        with self._lock:
            last_unsynced = self._unsynced_at
        return last_unsynced is None or last_unsynced < measured_monotonic - 1.0

    def monotonic_of(self, stamped_wall: float) -> float:
        """The monotonic time at which the system clock showed ``stamped_wall`` (its offset
        from the monotonic clock has not changed since, for a time stamped just now)."""
        return self._monotonic() - (self._wall() - stamped_wall)

    def now_monotonic(self) -> float:
        return self._monotonic()

    def true_time(self, monotonic_s: float, boot_id: str) -> float | None:
        """The true time (epoch seconds) of ``monotonic_s`` in boot ``boot_id``; None while
        neither the system clock nor a receipt can tell."""
        if boot_id != self.boot_id:
            return None
        if self.synchronised():
            return self._wall() - (self._monotonic() - monotonic_s)
        with self._lock:
            reference = self._reference
        if reference is None:
            return None
        return reference.true_s + (monotonic_s - reference.monotonic_s)

    def datable(self, boot_id: str) -> bool:
        """Whether a measurement held in boot ``boot_id`` can ever be dated."""
        return boot_id == self.boot_id

    def heard(self, stored_at_s: float, sent_monotonic: float) -> None:
        """A receipt for a message sent at ``sent_monotonic`` says it was stored at
        ``stored_at_s`` by the collector's clock: keep the best such reference."""
        now = self._monotonic()
        rtt = now - sent_monotonic
        if not 0 <= rtt <= MAX_PROBE_RTT_S:
            return
        candidate = _Reference(stored_at_s + rtt / 2, now, rtt / 2)
        with self._lock:
            current = self._reference
            stale = current is None or now - current.monotonic_s > 3600
            if stale or current is None or candidate.error_s <= current.error_s:
                self._reference = candidate

    @property
    def has_reference(self) -> bool:
        with self._lock:
            return self._reference is not None


def restamped(message: Envelope, true_measured_s: float) -> Envelope:
    """``message`` with ``measured_at`` at its true time, and every other time it carries
    (a device's ``changed_at``, an outage's ``ended_at``) moved by the same amount: they
    came from the same clock."""
    delta = timedelta(seconds=true_measured_s - message.measured_at.timestamp())
    update: dict[str, object] = {"measured_at": message.measured_at + delta}
    if isinstance(message, OutageReport):
        update["ended_at"] = message.ended_at + delta
    if isinstance(message, DevicesReport):
        update["devices"] = [
            device.model_copy(update={"changed_at": device.changed_at + delta})
            for device in message.devices
        ]
    return message.model_copy(update=update)
