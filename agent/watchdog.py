"""systemd's notify protocol: readiness, and the watchdog fed from the agent's main loop.

Under ``Type=notify`` with ``WatchdogSec=``, systemd sets ``NOTIFY_SOCKET`` and
``WATCHDOG_USEC``. The daemon sends ``READY=1`` once it runs and ``WATCHDOG=1``
on every turn of its main loop, at least every half watchdog period, so a
loop that hangs stops the pings and systemd restarts the agent. Outside
systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
        except ValueError:
            usec = 0
        self.watchdog_s = usec / 1_000_000 if usec > 0 else None

    @property
    def active(self) -> bool:
        return self._address is not None

    def ping_interval_s(self) -> float | None:
        """How often the main loop must turn for the watchdog (half its period)."""
        return self.watchdog_s / 2 if self.watchdog_s else None

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        if self.watchdog_s:
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        address = self._address
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self._address, exc)
