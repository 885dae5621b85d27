"""TCP congestion control for a speed test's own sockets: BBR where the system allows it.

The sender's congestion control decides how fast a transfer reaches a long
link's rate. Cubic, the Linux default, climbs for many seconds on a 600 ms
satellite round trip and then saws up and down every few seconds, so a test
must run long (and move much data) to average it out. BBR paces at the rate
it measured and reaches it in a few round trips.

A process chooses it for one socket with ``TCP_CONGESTION``. An unprivileged
process may only choose what ``net.ipv4.tcp_allowed_congestion_control``
lists; the agent's package adds ``bbr`` there (deploy/agent/school-agent-setup).
Where the kernel refuses (not allowed, not built, not Linux), the socket keeps
the system's default and the test says which algorithm it used.

>>> import socket
>>> sock = socket.socket()
>>> choose(sock, "no-such-algorithm") in (None, system_default())
True
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc/sys/net/ipv4")
_NAME_BYTES = 16  # TCP_CA_NAME_MAX


def in_force(sock: socket.socket) -> str | None:
    """The congestion control algorithm ``sock`` uses, or None where the system cannot say."""
    option = getattr(socket, "TCP_CONGESTION", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, _NAME_BYTES)
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode("ascii", "replace") or None


def choose(sock: socket.socket, wanted: str | None) -> str | None:
    """Ask for ``wanted`` on ``sock`` (None: leave the default); return what is in force.

    A refusal is not an error: the transfer goes on with the system's default,
    and the caller records the algorithm actually used.
    """
    option = getattr(socket, "TCP_CONGESTION", None)
    if wanted and option is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, wanted.encode("ascii"))
        except OSError as exc:
            log.debug("congestion control %s refused (%s); keeping the default", wanted, exc)
    return in_force(sock)


def system_default() -> str | None:
    """``net.ipv4.tcp_congestion_control`` of this network namespace, where readable."""
    return _read_proc("tcp_congestion_control")


def allowed() -> list[str]:
    """What an unprivileged process may choose (``net.ipv4.tcp_allowed_congestion_control``)."""
    return (_read_proc("tcp_allowed_congestion_control") or "").split()


def available() -> list[str]:
    """What the kernel has loaded (``net.ipv4.tcp_available_congestion_control``)."""
    return (_read_proc("tcp_available_congestion_control") or "").split()


def _read_proc(name: str) -> str | None:
    try:
        return (PROC / name).read_text().strip() or None
    except OSError:
        return None
