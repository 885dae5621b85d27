"""The shipped TLS configuration on a real Mosquitto, with provisioned accounts and ACL.

deploy/mosquitto/secure.conf runs as shipped; only the paths and ports are this
test's own. The accounts and the ACL come from ``school-collector provision``.
"""

from __future__ import annotations

import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.provision import COLLECTOR_USER, CONFIG_PUBLISHER
from collector.speed_server import SpeedServer
from tests.support.secure_broker import SecureBroker, connect_client, start_secure_broker
from tests.support.services import run_agent, unique, wait_for

SCHOOLS = ("KZ-A", "KZ-B")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    server = start_secure_broker(tmp_path_factory.mktemp("secure-broker"), list(SCHOOLS))
    yield server
    server.broker.stop()


_client = connect_client


def test_anonymous_and_wrong_password_clients_are_refused(secure: SecureBroker) -> None:
    anonymous, answer = _client(secure, None, None)
    anonymous.loop_stop()
    assert answer == "Not authorized"
    wrong, answer = _client(secure, "KZ-A", "not-the-password")
    wrong.loop_stop()
    assert answer in ("Bad user name or password", "Not authorized")
    plain_anonymous, answer = _client(secure, None, None, tls=False)
    plain_anonymous.loop_stop()
    assert answer == "Not authorized"  # the loopback listener needs an account too


def test_a_plain_text_client_cannot_use_the_tls_listener(secure: SecureBroker) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("c-"), protocol=paho.MQTTv5)
    client.username_pw_set("KZ-A", secure.password("KZ-A"))
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", secure.tls_port)
    client.loop_start()
    try:
        assert not connected.wait(3)
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_school_cannot_publish_into_another_schools_subtree(secure: SecureBroker) -> None:
    collector, answer = _client(secure, COLLECTOR_USER, secure.password(COLLECTOR_USER), tls=False)
    assert answer == "Success"
    seen: list[str] = []
    subscribed = threading.Event()
    collector.on_message = lambda _c, _u, m: seen.append(m.topic)
    collector.on_subscribe = lambda *_: subscribed.set()
    collector.subscribe("schools/+/+", qos=1)
    assert subscribed.wait(5)

    school_a, answer = _client(secure, "KZ-A", secure.password("KZ-A"))
    assert answer == "Success"
    refused = school_a.publish("schools/KZ-B/speed", b'{"forged": true}', qos=1)
    refused.wait_for_publish(5)
    allowed = school_a.publish("schools/KZ-A/speed", b'{"own": true}', qos=1)
    allowed.wait_for_publish(5)
    wait_for(lambda: "schools/KZ-A/speed" in seen, what="school A's own message")
    time.sleep(0.5)
    for client in (school_a, collector):
        client.disconnect()
        client.loop_stop()
    assert seen == ["schools/KZ-A/speed"]  # the forged message never reached the collector


def _listen(client: paho.Client, topic: str) -> tuple[list[str], list[Any]]:
    """Subscribe ``client`` to ``topic``; return what it receives and the broker's answer."""
    seen: list[str] = []
    granted: list[Any] = []
    done = threading.Event()

    def on_subscribe(_c: paho.Client, _u: Any, _m: int, reasons: list[Any], _p: Any) -> None:
        granted.extend(reasons)
        done.set()

    client.on_subscribe = on_subscribe
    client.message_callback_add(
        topic, lambda _c, _u, m: seen.append(f"{m.topic} {m.payload.decode()}")
    )
    client.subscribe(topic, qos=1)
    assert done.wait(5)
    return seen, granted


def test_receipts_reach_only_their_own_school_and_no_school_can_forge_one(
    secure: SecureBroker,
) -> None:
    """A school reads its own receipts and the announcement; it writes neither."""
    collector, _ = _client(secure, COLLECTOR_USER, secure.password(COLLECTOR_USER), tls=False)
    school_a, _ = _client(secure, "KZ-A", secure.password("KZ-A"))
    school_b, _ = _client(secure, "KZ-B", secure.password("KZ-B"))
    a_receipts, _ = _listen(school_a, "schools/KZ-A/receipts")
    b_spying, _ = _listen(school_b, "schools/KZ-A/receipts")
    a_announcements, _ = _listen(school_a, "school-monitor/capabilities")
    for forged in ("schools/KZ-A/receipts", "schools/KZ-B/receipts"):
        school_b.publish(forged, b"forged", qos=1).wait_for_publish(5)
    school_b.publish("school-monitor/capabilities", b"forged", qos=1).wait_for_publish(5)
    collector.publish("schools/KZ-A/receipts", b"real", qos=1).wait_for_publish(5)
    collector.publish("school-monitor/capabilities", b"real", qos=1).wait_for_publish(5)
    wait_for(lambda: len(a_receipts) + len(a_announcements) >= 2, what="the real ones")
    time.sleep(0.5)
    for client in (collector, school_a, school_b):
        client.disconnect()
        client.loop_stop()
    assert a_receipts == ["schools/KZ-A/receipts real"]
    assert a_announcements == ["school-monitor/capabilities real"]
    assert b_spying == []


def test_a_school_can_read_nothing_of_another(secure: SecureBroker) -> None:
    school_b, answer = _client(secure, "KZ-B", secure.password("KZ-B"))
    assert answer == "Success"
    granted: list[Any] = []
    done = threading.Event()

    def on_subscribe(_c: paho.Client, _u: Any, _m: int, reasons: list[Any], _p: Any) -> None:
        granted.extend(reasons)
        done.set()

    school_b.on_subscribe = on_subscribe
    school_b.subscribe("schools/KZ-A/#", qos=1)
    done.wait(5)
    seen: list[str] = []
    school_b.on_message = lambda _c, _u, m: seen.append(m.topic)
    school_a, _ = _client(secure, "KZ-A", secure.password("KZ-A"))
    school_a.publish("schools/KZ-A/speed", b"{}", qos=1).wait_for_publish(5)
    time.sleep(0.5)
    for client in (school_a, school_b):
        client.disconnect()
        client.loop_stop()
    assert seen == []


def test_the_provisioned_agent_bundle_publishes_over_tls(
    secure: SecureBroker, speed_server: SpeedServer, tmp_path: Path
) -> None:
    bundle = secure.issued / "schools" / "KZ-A" / "agent.toml"
    assert (bundle.stat().st_mode & 0o777) == 0o600
    env = {
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path / "state"),
        # No collector here to give the time, and this machine's clock is not NTP-disciplined.
        "SCHOOL_AGENT_CLOCK__HOLD_UNSYNCED": "false",
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url,
    }
    result = run_agent("run", "--once", "--config", str(bundle), env=env)
    assert result.returncode == 0, result.stderr
    assert "all acknowledged by the broker" in result.stdout
    assert secure.password("KZ-A") not in result.stdout + result.stderr


def test_the_agent_refuses_a_broker_certificate_from_another_ca(
    secure: SecureBroker, speed_server: SpeedServer, tmp_path: Path
) -> None:
    bundle = secure.issued / "schools" / "KZ-A" / "agent.toml"
    env = {
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path / "state"),
        # No collector here to give the time, and this machine's clock is not NTP-disciplined.
        "SCHOOL_AGENT_CLOCK__HOLD_UNSYNCED": "false",
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url,
        "SCHOOL_AGENT_MQTT__CA_FILE": str(secure.other_ca),
    }
    result = run_agent("run", "--once", "--config", str(bundle), env=env)
    assert result.returncode == 3
    assert "TLS handshake with broker" in result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert secure.password("KZ-A") not in result.stderr


def test_insecure_mode_is_explicit_and_warns(
    secure: SecureBroker, speed_server: SpeedServer, tmp_path: Path
) -> None:
    bundle = secure.issued / "schools" / "KZ-A" / "agent.toml"
    env = {
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path / "state"),
        # No collector here to give the time, and this machine's clock is not NTP-disciplined.
        "SCHOOL_AGENT_CLOCK__HOLD_UNSYNCED": "false",
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url,
        "SCHOOL_AGENT_MQTT__CA_FILE": str(secure.other_ca),
        "SCHOOL_AGENT_MQTT__TLS_INSECURE": "true",
    }
    result = run_agent("run", "--once", "--config", str(bundle), env=env)
    assert result.returncode == 0, result.stderr
    assert "mqtt.tls_insecure is on" in result.stderr


def test_provisioning_again_changes_nothing_and_rotation_changes_one(
    secure: SecureBroker, tmp_path: Path
) -> None:
    from collector.provision import provision  # noqa: PLC0415
    from collector.registry import School, SchoolRegistry  # noqa: PLC0415

    out = tmp_path / "issued"
    registry = SchoolRegistry([School(s, "Almaty") for s in (*SCHOOLS, "KZ-C")])

    def run(**kwargs: Any) -> Any:
        return provision(registry, out, broker_url="mqtts://b:8883", ca_file=secure.ca, **kwargs)

    first = run()
    assert sorted(first.created) == ["KZ-A", "KZ-B", "KZ-C"]
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    again = run()
    assert (again.files_written, again.created, again.rotated) == (0, [], [])
    assert snapshot == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in snapshot}
    old_c = (out / "schools" / "KZ-C" / "agent.toml").read_text()
    old_a = (out / "schools" / "KZ-A" / "agent.toml").read_text()
    rotated = run(rotate=frozenset({"KZ-C"}))
    assert rotated.rotated == ["KZ-C"]
    assert (out / "schools" / "KZ-C" / "agent.toml").read_text() != old_c
    assert (out / "schools" / "KZ-A" / "agent.toml").read_text() == old_a
    for path in (out / "mosquitto" / "passwords", out / "schools" / "KZ-C" / "agent.toml"):
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    registry = SchoolRegistry([School(s, "Almaty") for s in SCHOOLS])
    revoked = run()
    assert revoked.revoked == ["KZ-C"]
    assert not (out / "schools" / "KZ-C").exists()
    accounts = (out / "mosquitto" / "passwords").read_text()
    assert "KZ-C:" not in accounts
    assert "KZ-C.doctor:" not in accounts
    assert "user KZ-C\n" not in (out / "mosquitto" / "acl").read_text()
    two = run(collectors=(COLLECTOR_USER, "collector-2"))
    assert (two.revoked, (out / "collector" / "collector-2.toml").exists()) == ([], True)
    one = run()
    assert one.revoked == ["collector-2"]
    assert not (out / "collector" / "collector-2.toml").exists()
    assert "collector-2:" not in (out / "mosquitto" / "passwords").read_text()
    assert (out / "schools" / "KZ-A" / "agent.toml").exists()


def test_configuration_reaches_a_school_from_its_own_topics_only_and_only_the_publisher_writes(
    secure: SecureBroker,
) -> None:
    """KZ-A (Almaty) reads the ministry's documents for all, Almaty and itself; it reads no
    other region's or school's; neither a school nor a collector can write one."""
    publisher, answer = _client(secure, CONFIG_PUBLISHER, _issued_password(secure), tls=False)
    assert answer == "Success"
    school_a, _ = _client(secure, "KZ-A", secure.password("KZ-A"))
    school_b, _ = _client(secure, "KZ-B", secure.password("KZ-B"))
    collector, _ = _client(secure, COLLECTOR_USER, secure.password(COLLECTOR_USER), tls=False)
    mine = ("schools/config/all", "schools/config/region/Almaty", "schools/config/school/KZ-A")
    others = ("schools/config/region/Astana", "schools/config/school/KZ-B")
    forged = {school_b: "schools/config/school/KZ-A", collector: "schools/config/all"}
    for topic in (*mine, *others):
        publisher.publish(topic, f"signed {topic}".encode(), qos=1, retain=True).wait_for_publish(5)
    for client, topic in forged.items():  # neither may write: the broker drops them
        client.publish(topic, b"forged", qos=1, retain=True).wait_for_publish(5)
    seen, granted = _listen(school_a, "schools/config/#")
    wait_for(lambda: len(seen) >= len(mine), what="school A's three documents")
    time.sleep(0.5)
    for client in (publisher, school_a, school_b, collector):
        client.disconnect()
        client.loop_stop()
    assert sorted(seen) == sorted(f"{topic} signed {topic}" for topic in mine)
    assert not granted[0].is_failure  # the subscription stands; the ACL filters each topic


def _issued_password(secure: SecureBroker) -> str:
    path = secure.issued / "collector" / f"{CONFIG_PUBLISHER}.toml"
    return str(tomllib.loads(path.read_text())["mqtt"]["password"])


def test_with_the_ministrys_key_every_bundle_carries_it_its_region_and_the_setting(
    secure: SecureBroker, tmp_path: Path
) -> None:
    from agent.remote_config import load_public_key  # noqa: PLC0415
    from agent.settings import AgentSettings  # noqa: PLC0415
    from collector.config_documents import keygen  # noqa: PLC0415
    from collector.provision import provision  # noqa: PLC0415
    from collector.registry import School, SchoolRegistry  # noqa: PLC0415

    _, public = keygen(tmp_path / "ministry")
    registry = SchoolRegistry([School("KZ-A", "Almaty"), School("KZ-D", "North Kazakhstan")])
    out = tmp_path / "issued"
    provision(registry, out, broker_url="mqtts://b:8883", ca_file=secure.ca, config_key=public)
    bundle = out / "schools" / "KZ-D"
    assert (bundle / "config-key.pub").read_bytes() == public.read_bytes()
    issued = tomllib.loads((bundle / "agent.toml").read_text())
    issued["mqtt"]["ca_file"] = str(secure.ca)  # (where ca.pem is here, not at the school)
    settings = AgentSettings.model_validate(issued)
    assert settings.region == "North Kazakhstan"
    assert settings.remote_config.public_key == Path("/etc/school-agent/config-key.pub")
    load_public_key(bundle / "config-key.pub")  # a key the agent can read
    publisher = out / "collector" / f"{CONFIG_PUBLISHER}.toml"
    assert oct(publisher.stat().st_mode & 0o777) == "0o600"
    assert (
        "topic read schools/config/region/North Kazakhstan"
        in (out / "mosquitto" / "acl").read_text()
    )
