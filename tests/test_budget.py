"""The monthly data budget: kept across restarts, shared with tests run by hand, reset monthly."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agent.budget import USAGE_FILE, DataBudget
from collector.speed_server import SpeedServer
from tests.support.services import run_agent

KZ = timezone(timedelta(hours=5))
NOV = datetime(2026, 11, 20, 10, 0, tzinfo=KZ)


def test_usage_survives_a_restart_and_resets_with_the_month(tmp_path: Path) -> None:
    DataBudget(tmp_path, 500, KZ).record(NOV, 120_000_000)
    again = DataBudget(tmp_path, 500, KZ)
    assert again.used(NOV) == 120_000_000
    assert again.remaining(NOV) == 380_000_000
    december = datetime(2026, 12, 1, 0, 30, tzinfo=KZ)  # still 30 November in UTC
    assert again.used(december) == 0
    assert again.remaining(december) == 500_000_000


def test_the_next_test_must_fit_as_large_as_the_largest_so_far(tmp_path: Path) -> None:
    budget = DataBudget(tmp_path, 300, KZ)
    assert budget.allows_test(NOV), "100 MB is assumed before the first test"
    budget.record(NOV, 150_000_000)
    assert budget.allows_test(NOV), "150 MB left fits a 150 MB test"
    budget.record(NOV, 10_000_000)
    assert not budget.allows_test(NOV), "140 MB left does not fit the largest test, 150 MB"


def test_without_a_cap_usage_is_still_counted(tmp_path: Path) -> None:
    budget = DataBudget(tmp_path, None, KZ)
    budget.record(NOV, 5)
    assert budget.allows_test(NOV)
    assert budget.remaining(NOV) is None
    assert budget.used(NOV) == 5


def test_an_unreadable_usage_file_is_reported_and_counted_from_zero(tmp_path: Path) -> None:
    (tmp_path / USAGE_FILE).write_text("{not json")
    budget = DataBudget(tmp_path, 300, KZ)
    assert budget.used(NOV) == 0
    budget.record(NOV, 7)
    assert json.loads((tmp_path / USAGE_FILE).read_text())["used_bytes"] == 7


def test_a_test_by_hand_respects_and_counts_against_the_budget(
    tmp_path: Path, speed_server: SpeedServer
) -> None:
    month = datetime.now(KZ).strftime("%Y-%m")
    usage = tmp_path / USAGE_FILE
    usage.write_text(
        json.dumps({"month": month, "used_bytes": 990_000_000, "largest_test_bytes": 50_000_000})
    )
    env = {
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path),
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url,
        "SCHOOL_AGENT_SPEEDTEST__MONTHLY_BUDGET_MB": "1000",
    }
    refused = run_agent("speedtest", env=env)
    assert refused.returncode == 1
    assert "990 of the 1000 MB monthly data budget" in refused.stderr
    assert "--ignore-budget" in refused.stderr

    forced = run_agent("speedtest", "--json", "--ignore-budget", env=env)
    assert forced.returncode == 0, forced.stderr
    measured = json.loads(forced.stdout)
    counted = json.loads(usage.read_text())["used_bytes"]
    assert counted == 990_000_000 + measured["bytes_received"] + measured["bytes_sent"]
