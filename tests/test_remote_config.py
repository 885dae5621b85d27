"""The ministry's signed remote configuration: what an agent accepts, refuses and counts.

The end-to-end test runs three real agents (``school-agent run``) on the real
broker, two in one region and one in another, and the ministry's real
commands (``school-collector config keygen/sign/publish``).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from localstack import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from agent.config_file import load_settings
from agent.remote_config import (
    Document,
    RefusalReason,
    RemoteConfig,
    Scope,
    Signed,
    load,
    sign,
    verify,
)
from agent.settings import AgentSettings
from tests.conftest import capabilities_topic
from tests.support.services import REPO, TopicListener, command_env, unique, wait_for

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()


def _document(scope: Scope, target: str | None, version: int = 1, **settings: Any) -> Document:
    return Document(
        version=version,
        scope=scope,
        target=target,
        issued_at=datetime.now(UTC),
        settings=settings or {"speedtest": {"threshold_mbps": 30.0}},
    )


def _reason(payload: bytes, school_id: str = "KZ-A1", region: str | None = "Almaty") -> str:
    found = verify(payload, PUBLIC, school_id=school_id, region=region)
    assert not isinstance(found, Document), "accepted"
    return found.reason.value


def test_a_document_signed_for_this_school_its_region_or_all_is_accepted() -> None:
    for scope, target in ((Scope.ALL, None), (Scope.REGION, "Almaty"), (Scope.SCHOOL, "KZ-A1")):
        found = verify(
            sign(_document(scope, target), KEY), PUBLIC, school_id="KZ-A1", region="Almaty"
        )
        assert isinstance(found, Document), found


def test_unsigned_tampered_foreign_and_misdirected_documents_are_refused_by_reason() -> None:
    signed = Signed.model_validate_json(sign(_document(Scope.REGION, "Almaty"), KEY))
    unsigned = Signed(document=signed.document).model_dump_json().encode()
    assert _reason(unsigned) == "unsigned"
    tampered = signed.model_copy(update={"document": signed.document.replace("30.0", "3.0")})
    assert _reason(tampered.model_dump_json().encode()) == "bad_signature"
    other_key = sign(_document(Scope.REGION, "Almaty"), Ed25519PrivateKey.generate())
    assert _reason(other_key) == "bad_signature"
    garbage = signed.model_copy(update={"signature": base64.b64encode(b"x" * 64).decode()})
    assert _reason(garbage.model_dump_json().encode()) == "bad_signature"
    assert _reason(sign(_document(Scope.REGION, "Astana"), KEY)) == "wrong_target"
    assert _reason(sign(_document(Scope.SCHOOL, "KZ-A2"), KEY)) == "wrong_target"
    assert _reason(sign(_document(Scope.REGION, "Almaty"), KEY), region=None) == "wrong_target"
    assert _reason(b"{not json") == "malformed"
    assert _reason(b'{"document": "{}", "signature": "AA=="}') == "bad_signature"


def test_identity_credentials_and_the_broker_cannot_be_set_remotely() -> None:
    for settings in (
        {"mqtt": {"url": "mqtt://evil:1883"}},
        {"school_id": "KZ-B1"},
        {"state_dir": "/tmp"},
        {"remote_config": {"public_key": "/tmp/k"}},
    ):
        document = _document(Scope.ALL, None, **settings)
        assert _reason(sign(document, KEY)) == "forbidden_setting", settings


class Agent:
    """What the daemon gives RemoteConfig: a check and an apply over the real settings."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.applied: list[AgentSettings] = []

    def check(self, layers: list[dict[str, Any]]) -> None:
        from agent.config_file import ConfigError  # noqa: PLC0415

        try:
            load_settings(AgentSettings, self.config, layers=tuple(layers))
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    def apply(self, layers: list[dict[str, Any]]) -> None:
        self.applied.append(load_settings(AgentSettings, self.config, layers=tuple(layers)))


@pytest.fixture
def local(tmp_path: Path) -> Agent:
    config = tmp_path / "agent.toml"
    config.write_text('school_id = "KZ-A1"\nregion = "Almaty"\n\n[schedule]\nretries = 1\n')
    return Agent(config)


def _remote(path: Path, agent: Agent) -> RemoteConfig:
    return RemoteConfig(
        path, PUBLIC, school_id="KZ-A1", region="Almaty", check=agent.check, apply=agent.apply
    )


def test_an_older_or_replayed_version_is_refused_and_what_is_in_force_survives_a_restart(
    tmp_path: Path, local: Agent
) -> None:
    state = tmp_path / "remote_config.json"
    remote = _remote(state, local)
    newer = sign(_document(Scope.REGION, "Almaty", 5), KEY)
    assert isinstance(remote.offer(newer), Document)
    assert isinstance(remote.offer(newer), Document)  # the retained copy on a reconnect
    assert remote.applied.refused == {}
    older = remote.offer(sign(_document(Scope.REGION, "Almaty", 4), KEY))
    assert not isinstance(older, Document)
    assert older is not None
    assert older.reason is RefusalReason.REPLAYED
    same_version_other_text = _document(Scope.REGION, "Almaty", 5, schedule={"retries": 3})
    assert not isinstance(remote.offer(sign(same_version_other_text, KEY)), Document)
    assert remote.offer(b"") is None  # a retained document cleared: nothing changes
    assert remote.state().refused_by_reason == {"replayed": 2}
    assert remote.state().version == "region:5"
    assert len(local.applied) == 1

    again = _remote(state, local)  # a restart: versions and counts come from disk
    assert again.applied.label() == "region:5"
    assert again.applied.refused == {"replayed": 2}
    replay = again.offer(sign(_document(Scope.REGION, "Almaty", 3), KEY))
    assert replay is not None
    assert not isinstance(replay, Document)
    assert load(state).layers() == [{"speedtest": {"threshold_mbps": 30.0}}]


def test_settings_the_agent_would_refuse_are_refused_whole(tmp_path: Path, local: Agent) -> None:
    remote = _remote(tmp_path / "remote_config.json", local)
    bad = _document(Scope.ALL, None, speedtest={"threshold_mbps": -5})
    found = remote.offer(sign(bad, KEY))
    assert found is not None
    assert not isinstance(found, Document)
    assert found.reason is RefusalReason.INVALID_SETTINGS
    assert "speedtest.threshold_mbps" in found.detail
    assert local.applied == []
    assert remote.applied.label() == "local"


def test_the_local_file_wins_then_the_school_then_the_region_then_all(
    tmp_path: Path, local: Agent
) -> None:
    remote = _remote(tmp_path / "remote_config.json", local)
    remote.offer(
        sign(
            _document(
                Scope.ALL,
                None,
                1,
                schedule={"retries": 4, "retry_interval_min": 7},
                speedtest={"threshold_mbps": 21.0, "timeout_s": 9.0},
            ),
            KEY,
        )
    )
    remote.offer(
        sign(_document(Scope.REGION, "Almaty", 1, speedtest={"threshold_mbps": 22.0}), KEY)
    )
    remote.offer(sign(_document(Scope.SCHOOL, "KZ-A1", 1, speedtest={"timeout_s": 11.0}), KEY))
    settings = local.applied[-1]
    assert settings.schedule.retries == 1  # the school's own file
    assert settings.schedule.retry_interval_min == 7  # all's, nothing above it
    assert settings.speedtest.threshold_mbps == 22.0  # the region's over all's
    assert settings.speedtest.timeout_s == 11.0  # the school's over all's
    assert remote.applied.label() == "all:1,region:1,school:1"


# -- end to end ----------------------------------------------------------------


def _collector_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=command_env(**(env or {})),
        timeout=60,
        check=False,
    )


@pytest.fixture
def fleet(broker: Mosquitto, topic_root: str, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Three agents: KZ-A1, KZ-A2 in Almaty, KZ-B1 in Astana, with the ministry's key."""
    keygen = _collector_cli("config", "keygen", "--out", str(tmp_path / "ministry"))
    assert keygen.returncode == 0, keygen.stderr
    processes, states = [], {}
    for school, region in (("KZ-A1", "Almaty"), ("KZ-A2", "Almaty"), ("KZ-B1", "Astana")):
        config = tmp_path / f"{school}.toml"
        config.write_text(
            f'school_id = "{school}"\nregion = "{region}"\n\n[remote_config]\n'
            f'public_key = "{tmp_path / "ministry" / "config-key.pub"}"\n'
        )
        states[school] = tmp_path / f"state-{school}"
        env = command_env(
            SCHOOL_AGENT_MQTT__URL=broker.url,
            SCHOOL_AGENT_MQTT__TOPIC_ROOT=topic_root,
            SCHOOL_AGENT_MQTT__CAPABILITIES_TOPIC=capabilities_topic(topic_root),
            SCHOOL_AGENT_STATE_DIR=str(states[school]),
            SCHOOL_AGENT_STATUS_INTERVAL_S="5",
            SCHOOL_AGENT_SCHEDULE__STARTUP_TEST="false",
            SCHOOL_AGENT_CONNECTIVITY__ENABLED="false",
            SCHOOL_AGENT_CLOCK__HOLD_UNSYNCED="false",  # this machine runs no NTP
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / f"{school}.log").open("w"),
            )
        )
    try:
        yield states
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def _publish_retained(broker: Mosquitto, topic: str, payload: bytes) -> None:
    """As anyone who may write the topic (a compromised broker or collector account)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("hostile-"))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _config_of(listener: TopicListener, school: str) -> dict[str, Any] | None:
    found = [m for m in listener.snapshot() if m.get("school_id") == school and m.get("config")]
    return found[-1]["config"] if found else None


def test_a_region_document_reaches_exactly_that_regions_agents_and_bad_ones_are_counted(
    broker: Mosquitto, topic_root: str, tmp_path: Path, fleet: dict[str, Path]
) -> None:
    listener = TopicListener(broker.port, f"{topic_root}/+/agent")
    devices = TopicListener(broker.port, f"{topic_root}/+/devices")
    gate = socket.create_server(("127.0.0.1", 0))  # a turnstile's controller, answering TCP
    ministry = tmp_path / "ministry"
    env = {
        "SCHOOL_COLLECTOR_MQTT__URL": broker.url,
        "SCHOOL_COLLECTOR_MQTT__TOPIC_ROOT": topic_root,
    }

    def signed(name: str, *args: str) -> Path:
        settings = tmp_path / f"{name}.toml"
        settings.write_text(
            '[speedtest]\nthreshold_mbps = 30.0\n\n[[devices]]\nid = "gate-1"\n'
            f'kind = "turnstile"\nlabel = "Main gate"\ncheck = "tcp"\n'
            f'address = "127.0.0.1:{gate.getsockname()[1]}"\n'
        )
        out = tmp_path / f"{name}.json"
        result = _collector_cli(
            "config",
            "sign",
            str(settings),
            "--key",
            str(ministry / "config-key.pem"),
            "--out",
            str(out),
            *args,
        )
        assert result.returncode == 0, result.stderr
        return out

    def publish(document: Path) -> None:
        result = _collector_cli("config", "publish", str(document), env=env)
        assert result.returncode == 0, result.stderr

    try:
        wait_for(
            lambda: all(_config_of(listener, s) for s in fleet),
            timeout=60,
            what="every agent's first status",
        )
        publish(
            signed(
                "almaty-5",
                "--scope",
                "region",
                "--target",
                "Almaty",
                "--version",
                "5",
                "--note",
                "the national speed server",
            )
        )

        def on_region_5() -> bool:
            return all(
                (_config_of(listener, s) or {}).get("version") == "region:5"
                for s in ("KZ-A1", "KZ-A2")
            )

        wait_for(on_region_5, timeout=30, what="KZ-A1 and KZ-A2 on region:5")

        def watching() -> set[str]:
            return {
                m["school_id"]
                for m in devices.snapshot()
                if any(d["device_id"] == "gate-1" and d["state"] == "up" for d in m["devices"])
            }

        # Applied without a restart: the agents of Almaty now check the device it added.
        wait_for(lambda: watching() == {"KZ-A1", "KZ-A2"}, timeout=30, what="the gate checked")

        older = signed("almaty-4", "--scope", "region", "--target", "Almaty", "--version", "4")
        publish(older)  # replaces the retained 5 on the broker: agents refuse it
        tampered = tmp_path / "tampered.json"
        text = json.loads(
            signed(
                "almaty-6", "--scope", "region", "--target", "Almaty", "--version", "6"
            ).read_text()
        )
        text["document"] = text["document"].replace("30.0", "3.0")
        tampered.write_text(json.dumps(text))
        publish(tampered)
        for_a2 = signed("a2", "--scope", "school", "--target", "KZ-A2", "--version", "9")
        # published where KZ-A1 reads, as a hostile account with write access would
        _publish_retained(broker, f"{topic_root}/config/school/KZ-A1", for_a2.read_bytes())
        unsigned = json.loads(for_a2.read_text())
        unsigned.pop("signature")
        _publish_retained(broker, f"{topic_root}/config/all", json.dumps(unsigned).encode())

        want = {"replayed": 1, "bad_signature": 1, "wrong_target": 1, "unsigned": 1}
        wait_for(
            lambda: (_config_of(listener, "KZ-A1") or {}).get("refused_by_reason") == want,
            timeout=30,
            what="KZ-A1's refusals counted",
        )
        a1 = _config_of(listener, "KZ-A1")
        assert a1 is not None
        assert a1["version"] == "region:5"  # still what it applied
        b1 = _config_of(listener, "KZ-B1")
        assert b1 is not None
        assert b1["version"] == "local"  # Astana's agent never took Almaty's settings
        assert b1["refused_by_reason"] == {"unsigned": 1}  # it too reads config/all

        doctor = subprocess.run(
            [sys.executable, "-m", "agent", "doctor", "--config", str(tmp_path / "KZ-A1.toml")],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
            env=command_env(SCHOOL_AGENT_STATE_DIR=str(fleet["KZ-A1"])),
        )
        line = next(x for x in doctor.stdout.splitlines() if "remote config" in x)
        assert "in force: region:5 (the national speed server)" in line
        assert "1 replayed" in line
        assert line.startswith("WARN")
        assert watching() == {"KZ-A1", "KZ-A2"}  # never KZ-B1
    finally:
        listener.close()
        devices.close()
        gate.close()


def test_a_kept_document_no_longer_valid_leaves_the_agent_running_on_its_local_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade that changes a setting a kept document sets must not stop the agent."""
    from agent.cli import with_remote_config  # noqa: PLC0415

    state = tmp_path / "state"
    state.mkdir()
    kept = _document(Scope.ALL, None, 3, speedtest={"threshold_mbps": -1.0})
    (state / "remote_config.json").write_text(
        json.dumps({"documents": {"all": kept.model_dump(mode="json")}})
    )
    config = tmp_path / "agent.toml"
    config.write_text(
        f'school_id = "KZ-A1"\nstate_dir = "{state}"\n\n[remote_config]\n'
        f'public_key = "{tmp_path / "key.pub"}"\n'
    )
    local = load_settings(AgentSettings, config)
    assert with_remote_config(local, config) is local
    assert "no longer gives valid settings" in caplog.text
    assert "speedtest.threshold_mbps" in caplog.text


def test_a_document_is_never_published_with_a_collectors_account(tmp_path: Path) -> None:
    """The broker binds a session to its account: a collector's would be taken over."""
    from agent.broker import BrokerSettings  # noqa: PLC0415
    from collector.config_documents import ConfigDocumentError, publish  # noqa: PLC0415

    signed = sign(_document(Scope.ALL, None), KEY)
    collector = BrokerSettings(url="mqtt://school-collector:secret@127.0.0.1:1")
    with pytest.raises(ConfigDocumentError, match="config-publisher"):
        publish(signed, collector, "schools")
