"""Every command answers --help, and usage errors say what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.services import command_env

COMMANDS = [
    ["agent"],
    ["agent", "run"],
    ["agent", "speedtest"],
    ["collector"],
    ["collector", "run"],
    ["collector", "query"],
    ["collector", "speed-server"],
]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env=command_env(**env),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    result = _run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_agent_run_without_a_school_id_exits_with_a_clear_message() -> None:
    result = _run("agent", "run", "--once", SCHOOL_AGENT_MQTT__URL="mqtt://127.0.0.1:1")
    assert result.returncode == 2
    assert "school_id: required" in result.stderr
    assert "SCHOOL_AGENT_SCHOOL_ID" in result.stderr


def test_bad_setting_in_the_environment_is_reported_not_raised() -> None:
    result = _run("collector", "run", SCHOOL_COLLECTOR_INFLUX__API="v3")
    assert result.returncode == 2
    assert "influx.api" in result.stderr
    assert "Traceback" not in result.stderr
