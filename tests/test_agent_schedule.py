"""The daemon on a controllable clock: schedule, retries, budget and manual tests, no sleeps.

The real Agent runs its real loop against the real broker and a real local
speed server; only time is virtual, so days of schedule pass in seconds.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from localstack import Mosquitto, free_port

from agent.config_file import load_settings
from agent.daemon import Agent
from agent.settings import AgentSettings
from collector.speed_server import SpeedServer
from tests.support.fake_clock import FakeClock
from tests.support.services import TopicListener, wait_for

KZ = timezone(timedelta(hours=5))


@pytest.fixture
def make_agent(broker: Mosquitto, topic_root: str, school_id: str, tmp_path: Path) -> Iterator[Any]:
    listeners: list[TopicListener] = []

    def make(
        start: datetime, status_interval_s: float = 86_400, **speedtest: str
    ) -> tuple[Agent, FakeClock, TopicListener]:
        settings = load_settings(
            AgentSettings,
            school_id=school_id,
            state_dir=tmp_path / "state",
            status_interval_s=status_interval_s,
            mqtt={"url": broker.url, "topic_root": topic_root},
            speedtest=speedtest,
            clock={"hold_unsynced": False},  # the fake clock is the agent's clock
        )
        clock = FakeClock(start)
        listener = TopicListener(broker.port, f"{topic_root}/{school_id}/#")
        listeners.append(listener)
        return Agent(settings, clock=clock), clock, listener

    yield make
    for listener in listeners:
        listener.close()


def _run_until(agent: Agent, clock: FakeClock, end: datetime) -> None:
    clock.at(end, agent.stop)
    runner = threading.Thread(target=agent.run_forever, daemon=True)
    runner.start()
    runner.join(timeout=240)
    assert not runner.is_alive(), "the agent did not stop"


def _speed_reports(listener: TopicListener, count: int) -> list[dict[str, Any]]:
    def reports() -> list[dict[str, Any]] | None:
        found = [m for m in listener.snapshot() if "result_code" in m]
        return found if len(found) >= count else None

    found = wait_for(reports, timeout=30, what=f"{count} speed reports")
    return sorted(found, key=lambda m: m["measured_at"])


def _local(report: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(report["measured_at"]).astimezone(KZ)


def test_the_daemon_tests_after_start_and_once_in_each_window_each_day(
    make_agent: Any, speed_server: SpeedServer
) -> None:
    start = datetime(2026, 11, 2, 6, 0, tzinfo=KZ)
    agent, clock, listener = make_agent(start, server_url=speed_server.url, method="speedtest-cli")
    _run_until(agent, clock, start + timedelta(days=2))

    reports = _speed_reports(listener, 7)
    times = [_local(r) for r in reports]
    assert len(reports) == 7  # start-up, then 3 windows on each of 2 days
    assert all(r["result"] == "success" for r in reports)
    assert timedelta(minutes=1) <= times[0] - start <= timedelta(minutes=10)
    windows = [(8, 12), (12, 16), (16, 20)] * 2
    for moment, (low, high) in zip(times[1:], windows, strict=True):
        assert low <= moment.hour < high, moment


def test_a_failing_server_is_retried_three_times_then_the_next_window(
    make_agent: Any,
) -> None:
    start = datetime(2026, 11, 2, 6, 0, tzinfo=KZ)
    agent, clock, listener = make_agent(start, server_url=f"http://127.0.0.1:{free_port()}")
    # Until 13:00: the 08-12 window's test may fall as late as 12:00, its retries 45 min later.
    _run_until(agent, clock, start.replace(hour=13))

    reports = _speed_reports(listener, 8)
    assert {r["result"] for r in reports} == {"connection_failed"}
    times = [_local(r) for r in reports]
    assert [b - a for a, b in itertools.pairwise(times[:4])] == [timedelta(minutes=15)] * 3
    assert 8 <= times[4].hour < 12, "after three retries, the next window"
    assert [b - a for a, b in itertools.pairwise(times[4:8])] == [timedelta(minutes=15)] * 3


def test_a_spent_budget_skips_tests_until_the_month_turns(
    make_agent: Any, speed_server: SpeedServer
) -> None:
    start = datetime(2026, 11, 30, 6, 0, tzinfo=KZ)
    agent, clock, listener = make_agent(
        start, status_interval_s=3 * 3600, server_url=speed_server.url, monthly_budget_mb="300"
    )
    _run_until(agent, clock, datetime(2026, 12, 1, 12, 0, tzinfo=KZ))

    reports = _speed_reports(listener, 5)
    results = [(r["result"], _local(r).day) for r in reports]
    assert results[0] == ("success", 30), "the first test of the month fits"
    assert results[1:4] == [("budget_exhausted", 30)] * 3, "then the rest of November is skipped"
    assert results[4] == ("success", 1), "December starts a new budget"
    first = reports[0]
    moved = first["bytes_received"] + first["bytes_sent"]
    http_headers = 64 * 1024  # the budget caps bodies; each upload request adds ~200 bytes
    assert moved <= 300_000_000 + http_headers, "a test never spends more than the budget left"
    assert moved >= 250_000_000, "but it may spend what is left"
    skipped = reports[1]
    assert skipped["download_mbps"] is None
    assert "monthly data budget" in skipped["error"]
    statuses = [m for m in listener.snapshot() if m.get("status") == "online"]
    assert statuses[0]["data_budget_month_bytes"] == 300_000_000
    assert any(s["data_used_month_bytes"] == moved for s in statuses), statuses


def test_a_manual_test_runs_when_asked_outside_the_schedule(
    make_agent: Any, speed_server: SpeedServer
) -> None:
    start = datetime(2026, 11, 2, 20, 30, tzinfo=KZ)
    agent, clock, listener = make_agent(start, server_url=speed_server.url, method="speedtest-cli")
    asked = start.replace(hour=23, minute=0)
    clock.at(asked, agent.trigger)
    _run_until(agent, clock, start + timedelta(hours=4))

    reports = _speed_reports(listener, 2)
    assert [_local(r) for r in reports][1] == asked
