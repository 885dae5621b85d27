"""Is the school online? Reachability checked every minute, outages kept as intervals.

Every ``connectivity.interval_s`` the agent checks a few targets (a TCP connect,
an HTTP HEAD, a DNS lookup). A round passes when every target answers. When
one does not, the round is classified by the most basic layer that failed:

``no_route``
    the kernel's routing table (``/proc/net/route``) has no default route:
    the LAN is down, or the PC has no address;
``gateway``
    the default gateway does not answer at the link layer: a datagram to it
    leaves its ARP entry (``/proc/net/arp``) incomplete;
``upstream``
    the gateway answers, but something beyond it does not: the school's
    uplink or the internet beyond (names may fail too, when their server is
    out there);
``dns``
    the gateway answers and every service does (at the address its name last
    resolved to), but a name does not resolve.

Consecutive failed rounds with the same cause are one outage: it starts at
the first failed round and ends at the first round that passes (each within
one interval of the truth), or where the cause changes. Outages and the
hour's counts live in a small JSON file in the state directory, so a restart
loses neither; the time the agent was not running counts as neither up nor
down.

A wrong clock (a Raspberry Pi before NTP, agent/clock_trust.py) must not
misdate them. Each round notes the monotonic time beside the wall clock's, and
each period and outage keeps the monotonic time of its start: the publisher
holds what began while the clock was not believed and dates it once the clock
can be (its true time moves the period's start and the outage's end alike). A
jump of the wall clock between two rounds (NTP stepping it) hands the period
over and ends the open outage where the last round before the jump stood, so
no count or duration spans the jump. After a reboot the monotonic times mean
nothing: what was recorded under a clock not believed is dropped, with a
warning, and the rest keeps its wall-clock times.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.clock_trust import kernel_boot_id
from agent.contract import ConnectivityReport, OutageCause, OutageReport

log = logging.getLogger(__name__)

Cause = Literal["no_route", "gateway", "dns", "upstream"]
CAUSES: tuple[Cause, ...] = ("no_route", "gateway", "dns", "upstream")
ROUTES = Path("/proc/net/route")
ARP = Path("/proc/net/arp")
ARP_COMPLETE = 0x2
STEP_S = 2.0  # a wall clock that moved this much more or less than the monotonic one jumped
DISCARD_PORT = 9  # a datagram here makes the kernel resolve the gateway's link address
GATEWAY_PORT = 53  # a router answers here, or resets


# ------------------------------------------------------------------ probes --


def default_gateway(routes: Path = ROUTES) -> tuple[str, str] | None:
    """(interface, gateway address) of the IPv4 default route, or None without one."""
    try:
        lines = routes.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "00000000" and int(fields[3], 16) & 0x2:
            address = socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
            return fields[0], address
    return None


def gateway_answers(gateway: str, timeout_s: float, arp: Path = ARP) -> bool:
    """Whether ``gateway`` answers: a TCP connect to its port 53 is accepted or refused
    (either way the router is there), or else its link-layer address resolves.

    The ARP table alone can mislead: an entry stays "complete" for a while after its
    router went away, so the connect comes first, and an entry is read only after a
    datagram made the kernel check it again.
    """
    try:
        with socket.create_connection((gateway, GATEWAY_PORT), timeout=min(timeout_s, 1.0)):
            return True
    except ConnectionRefusedError:
        return True  # a reset: something at that address answered
    except OSError:
        pass
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.sendto(b"", (gateway, DISCARD_PORT))
    deadline = time.monotonic() + timeout_s
    while True:
        state = _neighbour_state(gateway)
        if state == "REACHABLE" or (state is None and _arp_complete(gateway, arp)):
            return True
        if state in ("FAILED", "INCOMPLETE") or time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _neighbour_state(address: str) -> str | None:
    """The kernel's reachability state of a neighbour (``ip -j neigh``); None if unknown."""
    try:
        answer = subprocess.run(
            ["ip", "-j", "neigh", "show", "to", address],
            capture_output=True, text=True, timeout=2, check=False,
        )  # fmt: skip
        entries = json.loads(answer.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    states = [state for entry in entries for state in entry.get("state", [])]
    return states[0] if states else None


def _arp_complete(address: str, arp: Path) -> bool:
    try:
        lines = arp.read_text().splitlines()[1:]
    except OSError:
        return True  # no ARP table to read (not Linux): cannot blame the gateway
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == address:
            return bool(int(fields[2], 16) & ARP_COMPLETE)
    return False


class Target(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, timeout_s: float) -> str | None:
        """None when it answered; else what went wrong, starting ``dns:`` when a name did not
        resolve and ``net:`` otherwise."""


class TcpTarget:
    """A TCP connect to ``host:port``. It keeps the address a name last resolved to: when
    the name no longer resolves, a connect to that address tells a DNS failure (the
    service still answers there) from the uplink's (nothing beyond the router does)."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._known: tuple[int, tuple[str, int]] | None = None  # family, address

    def check(self, timeout_s: float) -> str | None:
        try:
            found = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if self._known is None:
                return f"dns: {self.host}: {exc.strerror}"
            problem = self._connect(*self._known, timeout_s)
            if problem is None:
                return f"dns: {self.host}: {exc.strerror} (it answers at {self._known[1][0]})"
            return f"net: {self.host}: {exc.strerror}, and its last address: {problem}"
        family, _, _, _, address = found[0]
        where = (str(address[0]), int(address[1]))
        problem = self._connect(family, where, timeout_s)
        if problem is None:
            self._known = (family, where)
            return None
        return f"net: {self.host}:{self.port}: {problem}"

    @staticmethod
    def _connect(family: int, address: tuple[str, int], timeout_s: float) -> str | None:
        with socket.socket(family, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout_s)
            try:
                connection.connect(address)
            except OSError as exc:
                return str(exc.strerror or exc)
        return None


@dataclass(frozen=True)
class DnsTarget:
    name: str
    hostname: str

    def check(self, timeout_s: float) -> str | None:  # noqa: ARG002 - the resolver's own
        try:
            socket.getaddrinfo(self.hostname, None)
        except socket.gaierror as exc:
            return f"dns: {self.hostname}: {exc.strerror}"
        return None


@dataclass(frozen=True)
class HttpTarget:
    name: str
    url: str

    @cached_property
    def _client(self) -> Any:
        """One client for every round: a new one loads the CA certificates again (30 ms of
        CPU a round, measured by tests/bench/connectivity_cost.py). It keeps no connection
        between rounds, so each round connects afresh, as a check must."""
        import httpx  # noqa: PLC0415 - only with an HTTP target

        return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

    def check(self, timeout_s: float) -> str | None:
        import httpx  # noqa: PLC0415 - only with an HTTP target

        try:
            self._client.head(self.url, timeout=timeout_s)
        except httpx.ConnectError as exc:
            text = str(exc)
            hint = "dns" if "Name or service not known" in text or "resolution" in text else "net"
            return f"{hint}: {self.url}: {text[:120]}"
        except httpx.HTTPError as exc:
            return f"net: {self.url}: {type(exc).__name__}"
        return None  # any HTTP answer, even an error status, means it is reachable


def parse_target(spec: str) -> Target:
    """``tcp:HOST:PORT``, ``http:URL`` (a HEAD request) or ``dns:NAME``."""
    kind, _, rest = spec.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{spec!r}: write tcp:HOST:PORT, for example tcp:broker.edu.kz:8883")
        return TcpTarget(spec, host.strip("[]"), int(port))
    if kind == "http":
        if not rest.startswith(("http://", "https://")):
            raise ValueError(f"{spec!r}: write http:URL, for example http:http://speed.edu.kz:8080")
        return HttpTarget(spec, rest)
    if kind == "dns":
        if not rest or any(c in rest for c in " /:"):
            raise ValueError(f"{spec!r}: write dns:NAME, for example dns:broker.edu.kz")
        return DnsTarget(spec, rest)
    raise ValueError(f"{spec!r}: a target is tcp:HOST:PORT, http:URL or dns:NAME")


def default_targets(broker: tuple[str, int] | None, speed_urls: Iterable[str]) -> list[str]:
    """What the agent needs to reach: the broker, the self-hosted speed servers, and the
    broker's name in DNS (when it has one)."""
    found = []
    if broker is not None:
        host, port = broker
        found.append(f"tcp:{host}:{port}")
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            found.append(f"dns:{host}")  # a name, not an address
    found += [f"http:{url}" for url in speed_urls]
    return found


# ------------------------------------------------------------------ rounds --


@dataclass(frozen=True)
class Round:
    at: float  # epoch seconds when it ran, by the system clock
    cause: Cause | None  # None: every target answered
    detail: str = ""
    mono: float | None = None  # CLOCK_MONOTONIC when it ran (None: as ``at``)
    believed: bool = True  # whether the system clock could be believed then


def check_round(
    targets: Iterable[Target],
    timeout_s: float,
    *,
    gateway: Callable[[], tuple[str, str] | None] = default_gateway,
    answers: Callable[[str, float], bool] = gateway_answers,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    believed: Callable[[], bool] = lambda: True,
) -> Round:
    """Check every target; classify a failure by the most basic layer that failed."""
    at, mono, trusted = clock(), monotonic(), believed()
    failures = [(t.name, problem) for t in targets if (problem := t.check(timeout_s))]
    cause: Cause | None
    if not failures:
        cause, detail = None, ""
    else:
        detail = "; ".join(f"{name}: {problem}" for name, problem in failures)[:300]
        route = gateway()
        if route is None:
            cause = "no_route"
        elif not answers(route[1], min(timeout_s, 2.0)):
            cause, detail = "gateway", f"gateway {route[1]} on {route[0]} does not answer"
        elif any(problem.startswith("net:") for _, problem in failures):
            cause = "upstream"  # (names fail too when their server is beyond)
        else:
            cause = "dns"
    return Round(at, cause, detail, mono, trusted)


# ----------------------------------------------------------------- outages --


@dataclass
class Outage:
    start: float
    end: float | None
    cause: Cause
    detail: str = ""
    start_mono: float | None = None  # monotonic time of ``start``; None after a reboot
    unsynced: bool = False  # a round in it was taken while the clock was not believed

    @property
    def duration_s(self) -> float:
        return (self.end or self.start) - self.start

    def report(self, school_id: str, agent_id: str) -> OutageReport:
        """The message that tells the collector (times by this machine's clock)."""
        ended = self.end if self.end is not None else self.start
        return OutageReport(
            school_id=school_id,
            agent_id=agent_id,
            measured_at=datetime.fromtimestamp(self.start, UTC),
            ended_at=datetime.fromtimestamp(ended, UTC),
            duration_s=max(0.0, ended - self.start),
            cause=OutageCause(self.cause),
            detail=self.detail[:200] or None,
        )


@dataclass
class Hour:
    """One period's counts (UTC): a clock hour, or ``report_s`` of one."""

    start: float
    checks: int = 0
    passed: int = 0
    down_s: dict[str, float] = field(default_factory=dict)
    start_mono: float | None = None  # monotonic time of ``start``; None after a reboot
    unsynced: bool = False  # a round in it was taken while the clock was not believed

    def report(
        self, school_id: str, agent_id: str, interval_s: float, period_s: float
    ) -> ConnectivityReport:
        """The message that tells the collector (its start by this machine's clock)."""
        down = {f"down_{cause}_s": seconds for cause, seconds in self.down_s.items()}
        return ConnectivityReport.model_validate(
            {
                "school_id": school_id,
                "agent_id": agent_id,
                "measured_at": datetime.fromtimestamp(self.start, UTC),
                "interval_s": interval_s,
                "period_s": period_s,
                "checks": self.checks,
                "passed": self.passed,
            }
            | down,
            strict=False,
        )


@dataclass
class Ledger:
    """What the checks found, kept on disk: the open outage, the hour, what awaits sending."""

    interval_s: float
    report_s: float = 3600.0
    open: Outage | None = None
    hour: Hour | None = None
    last_round: float | None = None
    ended: list[Outage] = field(default_factory=list)  # not yet published
    hours: list[Hour] = field(default_factory=list)  # finished, not yet published
    boot_id: str = ""  # the machine's boot the monotonic times belong to
    last_mono: float | None = None

    def record(self, found: Round) -> None:
        """Add one round's result."""
        mono = found.at if found.mono is None else found.mono
        if self.last_round is not None and self._discontinuous(found.at, mono):
            # The agent was not running, or the clock jumped: neither up nor down since
            # the last round, which stood for its interval.
            self._close(self.last_round + self.interval_s)
            if self.hour is not None:
                self.hours.append(self.hour)
                self.hour = None
        self._roll_hour(found.at, mono)
        assert self.hour is not None  # noqa: S101 - set by _roll_hour
        self.hour.checks += 1
        self.hour.unsynced |= not found.believed
        if found.cause is None:
            self.hour.passed += 1
            self._close(found.at)
        else:
            # A round stands for its interval.
            self.hour.down_s[found.cause] = self.hour.down_s.get(found.cause, 0.0) + self.interval_s
            if self.open is not None and self.open.cause != found.cause:
                self._close(found.at)
            if self.open is None:
                self.open = Outage(found.at, None, found.cause, found.detail, start_mono=mono)
            self.open.unsynced |= not found.believed
        self.last_round, self.last_mono = found.at, mono

    def _discontinuous(self, at: float, mono: float) -> bool:
        """Whether the time since the last round is a gap (not running) or a clock jump."""
        assert self.last_round is not None  # noqa: S101 - checked by the caller
        wall_gap = at - self.last_round
        if wall_gap < 0 or wall_gap > 3 * self.interval_s:
            return True
        if self.last_mono is None:
            return False
        jump = wall_gap - (mono - self.last_mono)
        if abs(jump) > STEP_S:
            log.info("the system clock jumped by %+.0f s; a new connectivity period begins", jump)
            return True
        return False

    def _close(self, at: float) -> None:
        if self.open is not None:
            self.open.end = at
            self.ended.append(self.open)
            self.open = None

    def _roll_hour(self, at: float, mono: float) -> None:
        start = at - at % self.report_s
        if self.hour is not None and self.hour.start != start:
            self.hours.append(self.hour)
            self.hour = None
        if self.hour is None:
            self.hour = Hour(start, start_mono=mono - (at - start))

    def take(self) -> tuple[list[Outage], list[Hour]]:
        """What ended and what finished since the last call (to publish)."""
        taken = self.ended, self.hours
        self.ended, self.hours = [], []
        return taken

    # -- on disk ---------------------------------------------------------

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(asdict(self)))
        temporary.replace(path)

    @classmethod
    def load(
        cls, path: Path, interval_s: float, report_s: float = 3600.0, boot_id: str = ""
    ) -> Ledger:
        """The ledger saved at ``path``; a fresh one if there is none or it is damaged.

        Saved in another boot of the machine (``boot_id``), its monotonic times mean
        nothing: what was recorded while the clock was not believed cannot be dated
        and is dropped; the rest keeps its wall-clock times.
        """
        try:
            data = json.loads(path.read_text())
            outage, hour = data.get("open"), data.get("hour")
            ledger = cls(
                interval_s,
                report_s,
                open=Outage(**outage) if outage else None,
                hour=Hour(**hour) if hour else None,
                last_round=data.get("last_round"),
                ended=[Outage(**o) for o in data.get("ended", [])],
                hours=[Hour(**h) for h in data.get("hours", [])],
                boot_id=data.get("boot_id", ""),
                last_mono=data.get("last_mono"),
            )
        except (OSError, ValueError, TypeError, AttributeError):
            return cls(interval_s, report_s, boot_id=boot_id)
        if ledger.boot_id != boot_id:
            ledger._forget_monotonic(boot_id)
        return ledger

    def _forget_monotonic(self, boot_id: str) -> None:
        """A new boot: what was open is over; drop what cannot be dated, keep the wall-clock
        times of the rest."""
        if self.last_round is not None:
            self._close(self.last_round + self.interval_s)
        if self.hour is not None:
            self.hours.append(self.hour)
            self.hour = None
        pieces: list[Outage | Hour] = [*self.ended, *self.hours]
        lost = sum(1 for piece in pieces if piece.unsynced)
        if lost:
            log.warning(
                "%d connectivity record(s) made before a restart while the clock was not "
                "synchronised cannot be dated and were dropped; make sure NTP can reach "
                "its servers (timedatectl)",
                lost,
            )
        self.ended = [o for o in self.ended if not o.unsynced]
        self.hours = [h for h in self.hours if not h.unsynced]
        for piece in pieces:
            piece.start_mono = None  # (the dropped ones too: harmless)
        self.boot_id, self.last_round, self.last_mono = boot_id, None, None


# ----------------------------------------------------------------- monitor --


class ConnectivityMonitor:
    """Runs a round every ``interval_s`` in a thread of its own; what ends goes to ``finished``.

    ``finished(outages, hours)`` receives each outage once it ended and each
    hour once it is over (the agent publishes them through its outbox). The
    ledger is saved after every round. ``believed`` says whether the system
    clock can be believed (the agent's TimeKeeper); ``boot_id`` is the machine's
    boot, for the monotonic times the ledger keeps.
    """

    def __init__(
        self,
        targets: list[Target],
        interval_s: float,
        ledger_path: Path,
        finished: Callable[[list[Outage], list[Hour]], None],
        *,
        timeout_s: float = 3.0,
        report_s: float = 3600.0,
        believed: Callable[[], bool] = lambda: True,
        boot_id: str | None = None,
    ) -> None:
        self._targets = targets
        self._interval_s = interval_s
        self._path = ledger_path
        self._finished = finished
        self._timeout_s = timeout_s
        self._believed = believed
        self.ledger = Ledger.load(ledger_path, interval_s, report_s, boot_id or kernel_boot_id())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connectivity", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._interval_s + 15)

    def run_once(self) -> Round:
        found = check_round(self._targets, self._timeout_s, believed=self._believed)
        self.ledger.record(found)
        outages, hours = self.ledger.take()
        if outages or hours:
            self._finished(outages, hours)
        self.ledger.save(self._path)
        if found.cause is not None:
            log.debug("connectivity check failed: %s (%s)", found.cause, found.detail)
        return found

    def _run(self) -> None:
        next_round = time.monotonic()
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a bug must not end the checks for good
                log.exception("a connectivity round failed; carrying on")
            next_round += self._interval_s
            if self._stop.wait(max(0.0, next_round - time.monotonic())):
                break
            next_round = max(next_round, time.monotonic() - self._interval_s)
