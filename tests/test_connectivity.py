"""Connectivity checks: the kernel's tables read right, rounds classified, outages as intervals.

The network namespace tests (a school's uplink cut, its gateway down, DNS
failing) come with the agent's wiring; these hold the parts to their rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.connectivity import (
    Cause,
    Ledger,
    Round,
    _arp_complete,
    check_round,
    default_gateway,
)

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
"""
ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0
192.0.2.9        0x1         0x0         00:00:00:00:00:00     *        eth0
"""


def test_the_default_route_and_its_gateway_come_from_the_kernels_table(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    assert default_gateway(routes) == ("eth0", "192.0.2.1")
    routes.write_text(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[1] + "\n")
    assert default_gateway(routes) is None  # a LAN route only: no way out


def test_an_incomplete_arp_entry_is_a_gateway_that_does_not_answer(tmp_path: Path) -> None:
    arp = tmp_path / "arp"
    arp.write_text(ARP)
    assert _arp_complete("192.0.2.1", arp)
    assert not _arp_complete("192.0.2.9", arp)
    assert not _arp_complete("192.0.2.77", arp)  # never resolved


@dataclass(frozen=True)
class Fake:
    name: str
    problem: str | None = None

    def check(self, timeout_s: float) -> str | None:
        return self.problem


def _round(targets: list[Fake], route: bool = True, answers: bool = True) -> Round:
    return check_round(
        targets, 1.0,
        gateway=lambda: ("eth0", "10.0.0.1") if route else None,
        answers=lambda _gateway, _timeout: answers,
        clock=lambda: 1000.0,
    )  # fmt: skip


def test_a_failed_round_is_blamed_on_the_most_basic_layer_that_failed() -> None:
    up, refused = Fake("broker"), Fake("broker", "net: 203.0.113.5:8883: refused")
    unresolved = Fake("dns", "dns: broker.example: Name or service not known")
    assert _round([up]).cause is None
    assert _round([refused]).cause == "upstream"
    assert _round([up, unresolved]).cause == "dns"
    assert _round([refused, unresolved], answers=False).cause == "gateway"
    assert _round([refused, unresolved], route=False).cause == "no_route"
    assert _round([up], route=False).cause is None  # every target answered: online


def test_consecutive_failures_are_one_outage_from_the_first_failed_round_to_the_first_pass() -> (
    None
):
    ledger = Ledger(interval_s=60)
    for minute in range(10):
        cause = "upstream" if 3 <= minute < 6 else None
        ledger.record(Round(7200 + 60 * minute, cause))  # type: ignore[arg-type]
    outages, hours = ledger.take()
    assert [(o.start, o.end, o.cause, o.duration_s) for o in outages] == [
        (7380, 7560, "upstream", 180)
    ]
    assert hours == []  # the hour is still running
    assert ledger.hour is not None
    assert (ledger.hour.checks, ledger.hour.passed, ledger.hour.down_s) == (
        10, 7, {"upstream": 180.0},
    )  # fmt: skip


def test_a_change_of_cause_ends_one_outage_and_starts_the_next() -> None:
    ledger = Ledger(interval_s=60)
    causes = [None, "upstream", "upstream", "gateway", "gateway", "dns", None]
    for minute, cause in enumerate(causes):
        ledger.record(Round(60 * minute, cause))  # type: ignore[arg-type]
    outages, _ = ledger.take()
    assert [(o.cause, o.start, o.end) for o in outages] == [
        ("upstream", 60, 180), ("gateway", 180, 300), ("dns", 300, 360),
    ]  # fmt: skip


def test_an_hour_that_ends_is_handed_over_whole() -> None:
    ledger = Ledger(interval_s=60)
    for minute in range(61):
        ledger.record(Round(60 * minute, "dns" if minute == 5 else None))
    _, hours = ledger.take()
    assert [(h.start, h.checks, h.passed, h.down_s) for h in hours] == [(0, 60, 59, {"dns": 60.0})]


def test_a_shorter_report_period_hands_over_each_period_that_ends() -> None:
    """connectivity.report_s = 60: a count a minute, on the minute."""
    ledger = Ledger(interval_s=5, report_s=60)
    for tick in range(25):  # two minutes and one round
        ledger.record(Round(5 * tick, "upstream" if tick == 13 else None))
    _, periods = ledger.take()
    assert [(p.start, p.checks, p.passed, p.down_s) for p in periods] == [
        (0, 12, 12, {}), (60, 12, 11, {"upstream": 5.0})]  # fmt: skip


def test_while_the_agent_was_not_running_counts_as_neither_up_nor_down(tmp_path: Path) -> None:
    path = tmp_path / "connectivity.json"
    ledger = Ledger(interval_s=60)
    ledger.record(Round(0, None))
    ledger.record(Round(60, "upstream"))
    ledger.save(path)  # then the PC is switched off for an hour
    again = Ledger.load(path, interval_s=60)
    assert again.open is not None
    again.record(Round(3660, None))
    outages, hours = again.take()
    assert [(o.start, o.end) for o in outages] == [(60, 120)]  # its last round, and its minute
    assert [(h.checks, h.passed) for h in hours] == [(2, 1)]


def test_a_damaged_ledger_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "connectivity.json"
    path.write_text("{not json")
    assert Ledger.load(path, interval_s=60).open is None


TWO_DAYS = 2 * 86_400.0


def test_a_clock_that_jumps_ends_the_period_and_the_outage_where_the_last_round_stood() -> None:
    """NTP steps a clock two days behind to the right time in the middle of an outage: no
    count or duration spans the jump, and each start keeps its monotonic time."""
    ledger = Ledger(interval_s=60)
    wall, mono = 1_000_020.0, 500.0  # two days behind; 1_000_020 is 20 s into an hour
    causes: list[Cause | None] = [None, None, "upstream", "upstream"]
    for minute, cause in enumerate(causes):
        ledger.record(Round(wall + 60 * minute, cause, mono=mono + 60 * minute, believed=False))
    ledger.record(Round(wall + TWO_DAYS + 240, None, mono=mono + 240, believed=True))

    outages, periods = ledger.take()
    assert [(o.start, o.end, o.start_mono, o.unsynced) for o in outages] == [
        (wall + 120, wall + 240, mono + 120, True)]  # fmt: skip
    assert outages[0].duration_s == 120  # not two days
    into_hour = wall % 3600
    assert [(p.start, p.start_mono, p.checks, p.passed) for p in periods] == [
        (wall - into_hour, mono - into_hour, 4, 2)]  # fmt: skip
    assert ledger.hour is not None
    assert (ledger.hour.checks, ledger.hour.unsynced) == (1, False)
    assert ledger.hour.start_mono == mono + 240 - (wall + TWO_DAYS + 240) % 3600


def test_a_clock_set_back_also_starts_afresh() -> None:
    ledger = Ledger(interval_s=60)
    ledger.record(Round(10_000.0, "dns", mono=50.0))
    ledger.record(Round(10_060.0 - 3 * 3600, "dns", mono=110.0))
    outages, periods = ledger.take()
    assert [(o.start, o.end) for o in outages] == [(10_000.0, 10_060.0)]  # ends, never negative
    assert [p.checks for p in periods] == [1]


def test_after_a_reboot_what_the_wrong_clock_recorded_is_dropped_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "connectivity.json"
    ledger = Ledger(interval_s=60, boot_id="boot-1")
    for minute in range(61):  # an hour under a believed clock, with one outage in it
        ledger.record(Round(60 * minute, "dns" if minute == 5 else None, mono=60.0 * minute))
    for minute in range(61, 64):  # then the clock is not believed
        ledger.record(Round(60 * minute, "gateway", mono=60.0 * minute, believed=False))
    ledger.save(path)

    again = Ledger.load(path, interval_s=60, boot_id="boot-2")
    outages, periods = again.take()
    assert [(o.cause, o.start, o.start_mono) for o in outages] == [("dns", 300, None)]
    assert [(p.start, p.checks, p.start_mono) for p in periods] == [(0, 60, None)]
    assert again.open is None
    assert again.hour is None

    same_boot = Ledger.load(path, interval_s=60, boot_id="boot-1")
    assert same_boot.open is not None
    assert same_boot.open.start_mono == 61 * 60.0
