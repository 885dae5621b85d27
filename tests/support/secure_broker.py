"""The shipped broker configuration on a real Mosquitto, with accounts from ``provision``.

deploy/mosquitto/secure.conf runs as shipped; only paths and ports are the
test's own. Accounts, the ACL and the agents' bundles come from
``school-collector provision`` run on a registry of the given schools.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from localstack import Mosquitto, free_port, port_open
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.provision import COLLECTOR_USER
from tests.support.services import REPO, command_env, unique, wait_for

SHIPPED = REPO / "deploy" / "mosquitto"


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
    registry: Path
    collectors: tuple[str, ...] = (COLLECTOR_USER,)

    def password(self, user: str) -> str:
        if user in self.collectors:
            path = self.issued / "collector" / f"{user}.toml"
        else:
            path = self.bundle(user.removesuffix(".doctor"))
        return str(tomllib.loads(path.read_text())["mqtt"]["password"])

    def bundle(self, school_id: str) -> Path:
        return self.issued / "schools" / school_id / "agent.toml"

    def provision(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``school-collector provision`` on this broker's registry and issue directory."""
        return subprocess.run(
            [sys.executable, "-m", "collector", "provision", "--registry", str(self.registry),
             "--out", str(self.issued), "--broker-url", f"mqtts://localhost:{self.tls_port}",
             "--ca-file", str(self.ca), "--bundle-ca-path", str(self.issued / "ca-for-agents.pem"),
             *(f"--collector={name}" for name in self.collectors), *args],
            capture_output=True, text=True, env=command_env(), check=False,
        )  # fmt: skip

    def collector_env(self, name: str = COLLECTOR_USER) -> dict[str, str]:
        """Settings of a real collector on the loopback listener with its own account."""
        return {
            "SCHOOL_COLLECTOR_MQTT__URL": self.broker.url,
            "SCHOOL_COLLECTOR_MQTT__USERNAME": name,
            "SCHOOL_COLLECTOR_MQTT__PASSWORD": self.password(name),
            "SCHOOL_COLLECTOR_MQTT__CLIENT_ID": name,
        }

    def log(self) -> str:
        return self.broker.process.log_file.read_text(errors="replace")


def start_secure_broker(
    base: Path, schools: list[str], collectors: tuple[str, ...] = (COLLECTOR_USER,)
) -> SecureBroker:
    """Provision ``schools`` and start Mosquitto with secure.conf and the issued files."""
    base.mkdir(parents=True, exist_ok=True)
    ca = make_ca(base, "ministry-ca")
    other_ca = make_ca(base, "other-ca")
    cert, key = make_server_cert(base, ca)
    registry = base / "schools.csv"
    registry.write_text("school_id,region\n" + "".join(f"{s},Almaty\n" for s in schools))
    issued = base / "issued"
    plain, tls = free_port(), free_port()
    secure = SecureBroker(
        Mosquitto(base / "mosquitto", plain), tls, ca[0], other_ca[0], issued, registry, collectors
    )
    result = secure.provision()
    assert result.returncode == 0, result.stderr
    (issued / "ca-for-agents.pem").write_bytes(ca[0].read_bytes())
    secure.broker.listeners = (
        (SHIPPED / "secure.conf")
        .read_text()
        .replace("/etc/mosquitto/school-monitor/passwords", str(issued / "mosquitto" / "passwords"))
        .replace("/etc/mosquitto/school-monitor/acl", str(issued / "mosquitto" / "acl"))
        .replace("/etc/mosquitto/certs/broker.crt", str(cert))
        .replace("/etc/mosquitto/certs/broker.key", str(key))
        .replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
        .replace("listener 8883", f"listener {tls} 127.0.0.1")
    )
    secure.broker.start()
    wait_for(lambda: port_open(tls), what="the TLS listener")
    return secure


def connect_client(
    secure: SecureBroker,
    user: str | None,
    password: str | None,
    *,
    tls: bool = True,
    client_id: str | None = None,
    clean_start: bool = True,
    session_expiry_s: int = 0,
) -> tuple[paho.Client, str]:
    """Connect; return the client and the broker's answer ("Success" or a refusal).

    The client's user data holds ``session_present`` from the broker's answer.
    """
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id or unique("c-"), protocol=paho.MQTTv5
    )
    if user is not None:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set_context(ssl.create_default_context(cafile=str(secure.ca)))
    answer: list[str] = []
    done = threading.Event()

    def on_connect(_c: paho.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        answer.append(str(reason))
        client.user_data_set({"session_present": bool(flags.session_present)})
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: done.set()
    port = secure.tls_port if tls else secure.broker.port
    try:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
        host = "localhost" if tls else "127.0.0.1"
        client.connect(host, port, clean_start=clean_start, properties=properties)
    except (OSError, ssl.SSLError) as exc:
        return client, f"connect failed: {exc}"
    client.loop_start()
    done.wait(10)
    return client, answer[0] if answer else "no answer"


def listen(secure: SecureBroker, account: str, topic: str) -> tuple[paho.Client, list[Any]]:
    """Subscribe ``topic`` with a collector ``account`` on the loopback listener.

    Returns the client (disconnect it when done) and the list the JSON payloads
    arriving there are appended to.
    """
    received: list[Any] = []
    client, answer = connect_client(
        secure, account, secure.password(account), tls=False, client_id=account
    )
    assert answer == "Success", answer
    client.on_message = lambda _c, _u, message: received.append(json.loads(message.payload))
    client.subscribe(topic, qos=1)
    return client, received
