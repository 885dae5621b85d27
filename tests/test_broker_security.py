"""The shipped TLS and ACL configuration on a real Mosquitto, with provisioned accounts.

deploy/mosquitto/secure.conf and deploy/mosquitto/acl run as shipped; only the
paths and ports are this test's own. The accounts come from
``school-collector provision``.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from localstack import Mosquitto, free_port, port_open
from paho.mqtt.enums import CallbackAPIVersion

from collector.provision import COLLECTOR_USER
from collector.speed_server import SpeedServer
from tests.support.services import REPO, command_env, run_agent, unique, wait_for

SHIPPED = REPO / "deploy" / "mosquitto"
SCHOOLS = ("KZ-A", "KZ-B")


def _openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name}", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    cert, key, request = directory / "broker.crt", directory / "broker.key", directory / "b.csr"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(key), "-out", str(request))  # fmt: skip
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    return cert, key


@dataclass
class SecureBroker:
    broker: Mosquitto
    tls_port: int
    ca: Path
    other_ca: Path
    issued: Path

    def password(self, user: str) -> str:
        import tomllib  # noqa: PLC0415

        path = (
            self.issued / "collector" / "credentials.toml"
            if user == COLLECTOR_USER
            else self.issued / "schools" / user / "agent.toml"
        )
        return str(tomllib.loads(path.read_text())["mqtt"]["password"])


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    base = tmp_path_factory.mktemp("secure-broker")
    ca = make_ca(base, "ministry-ca")
    other_ca = make_ca(base, "other-ca")
    cert, key = make_server_cert(base, ca)
    registry = base / "schools.csv"
    registry.write_text("school_id,region\n" + "".join(f"{s},Almaty\n" for s in SCHOOLS))
    issued = base / "issued"
    plain, tls = free_port(), free_port()
    result = subprocess.run(
        [sys.executable, "-m", "collector", "provision", "--registry", str(registry),
         "--out", str(issued), "--broker-url", f"mqtts://localhost:{tls}",
         "--ca-file", str(ca[0]), "--bundle-ca-path", str(issued / "ca-for-agents.pem")],
        capture_output=True, text=True, env=command_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (issued / "ca-for-agents.pem").write_bytes(ca[0].read_bytes())
    acl = base / "acl"
    acl.write_text((SHIPPED / "acl").read_text())
    listeners = (
        (SHIPPED / "secure.conf")
        .read_text()
        .replace("/etc/mosquitto/school-monitor/passwords", str(issued / "mosquitto" / "passwords"))
        .replace("/etc/mosquitto/school-monitor/acl", str(acl))
        .replace("/etc/mosquitto/certs/broker.crt", str(cert))
        .replace("/etc/mosquitto/certs/broker.key", str(key))
        .replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
        .replace("listener 8883", f"listener {tls} 127.0.0.1")
    )
    broker = Mosquitto(base / "mosquitto", plain, listeners=listeners)
    broker.start()
    wait_for(lambda: port_open(tls), what="the TLS listener")
    yield SecureBroker(broker, tls, ca[0], other_ca[0], issued)
    broker.stop()


def _client(
    secure: SecureBroker, user: str | None, password: str | None, *, tls: bool = True
) -> tuple[paho.Client, str]:
    """Connect; return the client and the broker's answer ("Success" or a refusal)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("c-"), protocol=paho.MQTTv5)
    if user is not None:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set_context(ssl.create_default_context(cafile=str(secure.ca)))
    answer: list[str] = []
    done = threading.Event()

    def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        answer.append(str(reason))
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: done.set()
    port = secure.tls_port if tls else secure.broker.port
    try:
        client.connect("localhost" if tls else "127.0.0.1", port)
    except (OSError, ssl.SSLError) as exc:
        return client, f"connect failed: {exc}"
    client.loop_start()
    done.wait(10)
    return client, answer[0] if answer else "no answer"


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


def test_a_school_can_read_nothing(secure: SecureBroker) -> None:
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


@pytest.fixture
def speed() -> Iterator[SpeedServer]:
    server = SpeedServer()
    server.start_in_background()
    yield server
    server.shutdown()
    server.server_close()


def test_the_provisioned_agent_bundle_publishes_over_tls(
    secure: SecureBroker, speed: SpeedServer, tmp_path: Path
) -> None:
    bundle = secure.issued / "schools" / "KZ-A" / "agent.toml"
    assert (bundle.stat().st_mode & 0o777) == 0o600
    env = {
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path / "state"),
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed.url,
    }
    result = run_agent("run", "--once", "--config", str(bundle), env=env)
    assert result.returncode == 0, result.stderr
    assert "all acknowledged by the broker" in result.stdout
    assert secure.password("KZ-A") not in result.stdout + result.stderr


def test_the_agent_refuses_a_broker_certificate_from_another_ca(
    secure: SecureBroker, speed: SpeedServer, tmp_path: Path
) -> None:
    bundle = secure.issued / "schools" / "KZ-A" / "agent.toml"
    env = {
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path / "state"),
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed.url,
        "SCHOOL_AGENT_MQTT__CA_FILE": str(secure.other_ca),
    }
    result = run_agent("run", "--once", "--config", str(bundle), env=env)
    assert result.returncode == 3
    assert "TLS handshake with broker" in result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert secure.password("KZ-A") not in result.stderr


def test_insecure_mode_is_explicit_and_warns(
    secure: SecureBroker, speed: SpeedServer, tmp_path: Path
) -> None:
    bundle = secure.issued / "schools" / "KZ-A" / "agent.toml"
    env = {
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path / "state"),
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed.url,
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
    assert "KZ-C:" not in (out / "mosquitto" / "passwords").read_text()
