"""The device inventory: every bad entry is refused at start-up with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.config_file import ConfigError, load_settings
from agent.devices.inventory import CheckKind, DeviceConfig, parse_devices
from agent.settings import AgentSettings
from tests.support.services import run_agent

TOKEN = "0123456789abcdef0123"


def _device(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "panic-1",
        "kind": "panic_button",
        "label": "Panic button, main entrance",
        "check": "tcp",
        "address": "10.0.0.21:502",
    } | overrides


def _problem(*entries: dict[str, Any]) -> str:
    with pytest.raises(ValueError, match=r".") as caught:
        parse_devices(list(entries))
    return str(caught.value)


def test_one_entry_of_each_check_kind_is_accepted() -> None:
    devices = parse_devices(
        [
            _device(),
            _device(
                id="gate",
                kind="turnstile",
                check="http",
                address=None,
                url="https://10.0.0.30/health",
                expect_status=[200],
                expect_body="ok",
            ),
            _device(id="police", kind="police_link", check="icmp", address=None, host="10.1.1.1"),
            _device(id="panel", check="heartbeat", address=None, token=TOKEN, period_s=30),
        ]
    )
    assert [d.check for d in devices] == list(CheckKind)
    assert devices[3].active is False
    assert devices[0].retry_s == 15.0  # grace 30 s over the 2 confirming checks
    assert TOKEN not in repr(devices[3])  # the token is a secret


def test_a_duplicate_id_names_both_entries() -> None:
    message = _problem(_device(), _device(kind="camera"), _device(id="other"), _device())
    assert "device 'panic-1': the id is used twice (entries 1 and 2)" in message


def test_an_unknown_kind_names_the_entry_and_the_kinds() -> None:
    message = _problem(_device(), _device(id="x9", kind="smoke_alarm"))
    assert "device 'x9' (entry 2): kind:" in message
    assert "'panic_button', 'turnstile', 'police_link', 'camera' or 'other'" in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"address": "10.0.0.21"}, "address: '10.0.0.21' is not host:port"),
        ({"address": "10.0.0.21:70000"}, "address: port 70000 is out of range"),
        ({"address": "bad host!:80"}, "address: 'bad host!' is neither an IP address nor a host"),
        ({"check": "http", "address": None, "url": "ftp://x/"}, "url must be an http://"),
        ({"check": "http", "address": None, "url": "http://a b/"}, "url: 'a b' is neither"),
        ({"check": "icmp", "address": None, "host": "-x-"}, "host: '-x-' is neither"),
        ({"check": "icmp"}, "address do(es) not apply to a icmp check"),
        ({"check": "http", "address": None}, "a http check needs url"),
        ({"check": "heartbeat", "address": None, "token": "short"}, "at least 16 characters"),
        ({"timeout_s": 60}, "timeout_s (60) must be shorter than period_s"),
        ({"colour": "red"}, "colour: unknown setting (a typo?)"),
    ],
)
def test_a_bad_entry_is_refused_by_name(overrides: dict[str, Any], expected: str) -> None:
    message = _problem(_device(**overrides))
    assert message.strip().startswith("device 'panic-1' (entry 1): ")
    assert expected in message


def test_the_list_comes_from_the_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'school_id = "KZ-1"\n\n[[devices]]\nid = "p1"\nkind = "panic_button"\n'
        'label = "Panic"\ncheck = "tcp"\naddress = "127.0.0.1:9"\n\n'
        '[[devices]]\nid = "p1"\nkind = "turnstile"\nlabel = "Gate"\ncheck = "icmp"\n'
        'host = "127.0.0.1"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentSettings, config)
    assert "device 'p1': the id is used twice (entries 1 and 2)" in str(caught.value)
    assert str(config) in str(caught.value)


def test_the_list_comes_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHOOL_AGENT_DEVICES", json.dumps([_device()]))
    settings = load_settings(AgentSettings)
    assert settings.devices == [DeviceConfig.model_validate(_device())]


def test_the_agent_refuses_to_start_and_says_which_entry() -> None:
    env = {"SCHOOL_AGENT_DEVICES": json.dumps([_device(), _device(id="b", address="x:0")])}
    result = run_agent("devices", env=env, timeout=60)
    assert result.returncode == 2
    assert "device 'b' (entry 2): address: port 0 is out of range" in result.stderr
