"""Settings from the environment and a TOML file, with errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.broker import BrokerAddress, BrokerSettings, redact_url
from agent.config_file import ConfigError, FileSettings, load_settings
from agent.devices.inventory import DeviceConfig
from agent.settings import AgentSettings
from collector.settings import CollectorSettings

SAMPLES = Path(__file__).resolve().parents[1]


def test_agent_defaults_follow_the_national_standard() -> None:
    settings = load_settings(AgentSettings)
    assert settings.speedtest.threshold_mbps == 20.0
    assert settings.speedtest.server_url is None  # Ookla's own server selection
    assert settings.mqtt.topic_root == "schools"


def test_environment_nests_with_double_underscores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHOOL_AGENT_SCHOOL_ID", "KZ-1")
    monkeypatch.setenv("SCHOOL_AGENT_MQTT__URL", "mqtts://broker.example:8883")
    monkeypatch.setenv("SCHOOL_AGENT_SPEEDTEST__THRESHOLD_MBPS", "50")
    settings = load_settings(AgentSettings)
    assert settings.school_id == "KZ-1"
    assert settings.mqtt.address().tls
    assert settings.speedtest.threshold_mbps == 50.0


def test_environment_overrides_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'school_id = "KZ-FILE"\n'
        '[mqtt]\nurl = "mqtt://file:1883"\n'
        "[speedtest]\nthreshold_mbps = 30\n"
    )
    monkeypatch.setenv("SCHOOL_AGENT_SCHOOL_ID", "KZ-ENV")
    settings = load_settings(AgentSettings, config)
    assert settings.school_id == "KZ-ENV"
    assert settings.mqtt.url == "mqtt://file:1883"
    assert settings.speedtest.threshold_mbps == 30.0


def test_run_requires_school_id_and_broker_and_says_how_to_set_them() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentSettings).require_for_run()
    message = str(caught.value)
    assert "school_id: required" in message
    assert "SCHOOL_AGENT_SCHOOL_ID" in message
    assert "SCHOOL_AGENT_MQTT__URL" in message


@pytest.mark.parametrize(
    ("toml", "complaint"),
    [
        ('[mqtt]\nurl = "http://broker"\n', "must start with mqtt:// or mqtts://"),
        ("[speedtest]\nthreshold_mbps = -5\n", "greater than 0"),
        ('[speedtest]\nserver_url = "ftp://x"\n', "http:// or https://"),
        ('[mqtt]\ntopic_root = "a/#"\n', "without wildcards"),
        ('scool_id = "typo"\n', "unknown setting (a typo?)"),
        ('school_id = "KZ/1"\n', "should match pattern"),
    ],
)
def test_bad_settings_name_the_key_and_the_variable(
    tmp_path: Path, toml: str, complaint: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match="invalid configuration") as caught:
        load_settings(AgentSettings, config)
    assert complaint in str(caught.value)
    assert "SCHOOL_AGENT_" in str(caught.value)


def test_missing_or_broken_config_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(AgentSettings, tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("school_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(AgentSettings, broken)


def test_broker_credentials_come_from_the_url_or_separate_settings() -> None:
    from_url = BrokerSettings(url="mqtt://school%2F1:p%40ss@host").address()
    assert (from_url.username, from_url.password, from_url.port) == ("school/1", "p@ss", 1883)
    separate = BrokerSettings(url="mqtts://u:old@host", username="KZ-1", password="new").address()
    assert (separate.username, separate.password, separate.port) == ("KZ-1", "new", 8883)


def test_passwords_never_appear_in_descriptions() -> None:
    address = BrokerAddress.parse("mqtt://KZ-1:hunter2@host:1884")
    assert "hunter2" not in str(address)
    assert "hunter2" not in repr(address)
    assert redact_url("mqtt://KZ-1:hunter2@host") == "mqtt://KZ-1:***@host"
    with pytest.raises(ValueError, match="must start with mqtt://") as caught:
        BrokerAddress.parse("http://KZ-1:hunter2@host")
    assert "hunter2" not in str(caught.value)


def test_collector_v2_needs_token_and_org(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHOOL_COLLECTOR_INFLUX__API", "v2")
    with pytest.raises(ConfigError, match=r"needs influx\.token and influx\.org"):
        load_settings(CollectorSettings)


def test_dead_letters_must_not_loop_back_into_the_subscription(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCHOOL_COLLECTOR_MQTT__DEAD_LETTER_TOPIC", "schools/dead")
    with pytest.raises(ConfigError, match="outside topic_root"):
        load_settings(CollectorSettings)


@pytest.mark.parametrize(
    ("cls", "path"),
    [
        (AgentSettings, "agent/agent.sample.toml"),
        (CollectorSettings, "collector/collector.sample.toml"),
    ],
)
def test_sample_config_files_load_and_list_every_setting(
    cls: type[FileSettings], path: str
) -> None:
    sample = SAMPLES / path
    load_settings(cls, sample)  # raises ConfigError if the sample is invalid
    text = sample.read_text()
    _assert_listed(cls, text, path, section="")


def _assert_listed(cls: type[BaseModel], text: str, path: str, section: str) -> None:
    """Every setting of ``cls`` appears in the sample: a key, a [section] or [[list]]."""
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        dotted = f"{section}.{name}" if section else name
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            assert f"[{dotted}]" in text, f"[{dotted}] is missing from {path}"
            _assert_listed(annotation, text, path, dotted)
        elif dotted == "devices":
            assert "[[devices]]" in text, f"[[devices]] is missing from {path}"
            for key in DeviceConfig.model_fields:
                assert f"# {key} =" in text, f"devices' {key} is missing from {path}"
        else:
            assert f"{name} =" in text, f"{dotted} is missing from {path}"
