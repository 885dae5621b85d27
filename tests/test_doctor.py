"""``school-agent doctor``: a pass/fail list with what to do, on real services."""

from __future__ import annotations

import json

from localstack import Mosquitto, free_port

from agent.doctor import Verdict, _clock
from agent.settings import AgentSettings
from collector.speed_server import SpeedServer
from tests.support.device_sims import TcpDevice
from tests.support.services import run_agent


def _lines(output: str) -> dict[str, str]:
    """{check: "VERDICT detail"} from doctor's "VERDICT  check          detail" lines."""
    return {
        line[6:20].strip(): f"{line[:4]} {line[21:]}"
        for line in output.splitlines()
        if line[:4] in ("PASS", "WARN", "FAIL")
    }


def test_a_healthy_installation_passes(
    agent_env: dict[str, str], broker: Mosquitto, speed_server: SpeedServer
) -> None:
    gate = TcpDevice()
    devices = [{"id": "gate", "kind": "turnstile", "label": "Gate", "check": "tcp",
                "address": gate.address}]  # fmt: skip
    try:
        result = run_agent("doctor", env=agent_env | {"SCHOOL_AGENT_DEVICES": json.dumps(devices)})
    finally:
        gate.stop()
    found = _lines(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("config", "disk", "dns", "broker", "speed server", "device gate"):
        assert found[check].startswith("PASS"), (check, result.stdout)
    assert found["clock"].split()[0] in ("PASS", "WARN")  # no timedatectl in a container
    assert "all checks passed" in result.stdout


def test_each_failure_says_what_to_do(agent_env: dict[str, str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = agent_env | {
        "SCHOOL_AGENT_MQTT__URL": f"mqtt://{dead}",
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": f"http://{dead}",
        "SCHOOL_AGENT_DEVICES": json.dumps(
            [{"id": "panic", "kind": "panic_button", "label": "Panic", "check": "tcp",
              "address": dead, "down_after": 1}]
        ),
    }  # fmt: skip
    result = run_agent("doctor", env=env)
    found = _lines(result.stdout)
    assert result.returncode == 1
    assert found["broker"].startswith("FAIL")
    assert "check mqtt.url" in found["broker"]
    assert found["speed server"].startswith("FAIL")
    assert found["device panic"].startswith("FAIL")
    assert "connection_refused" in found["device panic"]
    assert "3 check(s) failed" in result.stdout


def test_a_missing_school_id_fails_the_config_check(agent_env: dict[str, str]) -> None:
    env = {k: v for k, v in agent_env.items() if k != "SCHOOL_AGENT_SCHOOL_ID"}
    result = run_agent("doctor", env=env)
    assert result.returncode == 1
    assert _lines(result.stdout)["config"].startswith("FAIL")
    assert "school_id: required" in result.stdout


class _Sync:
    def __init__(self, state: bool | None) -> None:
        self.state = state

    def synchronised(self) -> bool | None:
        return self.state


def test_the_clock_check_says_what_an_unsynchronised_clock_means_for_the_data() -> None:
    held = AgentSettings(school_id="KZ-1")
    believed = AgentSettings(school_id="KZ-1", clock={"hold_unsynced": False})
    assert _clock(held, _Sync(True)).verdict is Verdict.PASS
    waiting = _clock(held, _Sync(False))
    assert waiting.verdict is Verdict.WARN
    assert "wait in the outbox" in waiting.detail
    wrong = _clock(believed, _Sync(False))
    assert wrong.verdict is Verdict.FAIL  # results would go out with a wrong time
    assert "clock.hold_unsynced" in wrong.detail
    assert _clock(held, _Sync(None)).verdict is Verdict.WARN
