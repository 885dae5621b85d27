"""Client ids are bound to accounts: no school takes over or disconnects another's session.

A real Mosquitto with the shipped deploy/mosquitto/secure.conf, accounts and ACL
from ``school-collector provision``, a real collector and InfluxDB, and the real
agent and doctor. Every school PC holds its school's credentials; here school
KZ-B's account tries to be the collector and school KZ-A.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from localstack import Process

from collector.provision import COLLECTOR_USER
from collector.speed_server import SpeedServer
from tests.conftest import start_collector
from tests.support.publishing import SchoolPublisher
from tests.support.secure_broker import (
    SecureBroker,
    connect_client,
    listen,
    start_secure_broker,
)
from tests.support.services import (
    Influx,
    collector_process,
    command_env,
    run_agent,
    wait_for,
)

OBSERVER = "observer"  # a second collector account, to watch topics without the collector's


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    server = start_secure_broker(
        tmp_path_factory.mktemp("identity"), ["KZ-A", "KZ-B", "KZ-R"], (COLLECTOR_USER, OBSERVER)
    )
    yield server
    server.broker.stop()


def _collector(secure: SecureBroker, database: Influx, run_dir: Path) -> Process:
    env = secure.collector_env() | {
        "SCHOOL_COLLECTOR_INFLUX__URL": database.url,
        "SCHOOL_COLLECTOR_INFLUX__DATABASE": database.database,
        "SCHOOL_COLLECTOR_STATS_INTERVAL_S": "1",
        "SCHOOL_COLLECTOR_BATCH__MAX_WAIT_S": "0.2",
    }
    return collector_process(run_dir, command_env(**env))


def _school(secure: SecureBroker, school_id: str) -> SchoolPublisher:
    return SchoolPublisher(
        secure.tls_port, "schools", school_id,
        password=secure.password(school_id), ca_file=secure.ca,
    )  # fmt: skip


def _connections(process: Process) -> int:
    return process.log_file.read_text().count("connected to broker")


class Watch:
    """A client that counts how often the broker disconnected it."""

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.lost = 0
        client.on_disconnect = self._on_disconnect

    def _on_disconnect(self, *_: Any) -> None:
        self.lost += 1

    def close(self) -> None:
        self.client.on_disconnect = None
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize(
    "posing_as", [COLLECTOR_USER, "KZ-A", "agent-KZ-A-0123456789ab", "KZ-A.doctor", "anything"]
)
def test_a_school_asking_for_another_client_id_gets_only_its_own_session(
    secure: SecureBroker, posing_as: str
) -> None:
    """Whatever client id KZ-B asks for, its session is KZ-B's: the one it left earlier."""
    password = secure.password("KZ-B")
    own, answer = connect_client(secure, "KZ-B", password, client_id="KZ-B", session_expiry_s=600)
    assert answer == "Success"
    own.disconnect()
    own.loop_stop()
    posing, answer = connect_client(
        secure, "KZ-B", password, client_id=posing_as, clean_start=False, session_expiry_s=600
    )
    posing.disconnect()
    posing.loop_stop()
    assert answer == "Success"
    assert posing.user_data_get() == {"session_present": True}  # KZ-B's session, not posing_as's


def test_a_school_posing_as_the_collector_cannot_take_its_queued_messages(
    secure: SecureBroker, database: Influx, tmp_path: Path
) -> None:
    collector = _collector(secure, database, tmp_path)
    start_collector(collector)  # its persistent session now exists on the broker
    collector.stop()
    with _school(secure, "KZ-A") as school_a:
        school_a.publish_speeds(50)  # queued for the absent collector
    clean, _ = connect_client(secure, "KZ-B", secure.password("KZ-B"))  # KZ-B has no session now
    clean.disconnect()
    clean.loop_stop()
    thief, answer = connect_client(
        secure, "KZ-B", secure.password("KZ-B"), client_id=COLLECTOR_USER, clean_start=False
    )
    stolen: list[str] = []
    thief.on_message = lambda _c, _u, message: stolen.append(message.topic)
    assert answer == "Success"
    assert thief.user_data_get() == {"session_present": False}  # not the collector's session
    thief.subscribe("schools/+/+", qos=1)
    threading.Event().wait(1.0)
    thief.disconnect()
    thief.loop_stop()
    start_collector(collector)
    try:
        wait_for(lambda: database.count("speed") == 50, what="all 50 queued results stored")
    finally:
        collector.stop()
    assert stolen == []


def test_no_school_can_disconnect_the_running_collector_or_another_schools_agent(
    secure: SecureBroker, database: Influx, tmp_path: Path
) -> None:
    collector = start_collector(_collector(secure, database, tmp_path))
    agent_a, answer = connect_client(secure, "KZ-A", secure.password("KZ-A"), client_id="agent-a")
    assert answer == "Success"
    watch_a = Watch(agent_a)
    try:
        for posing_as in (COLLECTOR_USER, "KZ-A", "agent-a", COLLECTOR_USER, "KZ-A"):
            thief, answer = connect_client(
                secure, "KZ-B", secure.password("KZ-B"), client_id=posing_as, clean_start=False
            )
            assert answer == "Success"
            thief.disconnect()
            thief.loop_stop()
        threading.Event().wait(1.0)
        assert watch_a.lost == 0
        watch_a.close()  # KZ-A's publisher below uses KZ-A's account, hence its session
        with _school(secure, "KZ-A") as school_a:
            school_a.publish_speeds(10)
        wait_for(lambda: database.count("speed") == 10, what="KZ-A's results stored")
        assert collector.running()
        assert _connections(collector) == 1  # never dropped, never reconnected
    finally:
        watch_a.close()
        collector.stop()


def test_the_same_account_twice_is_one_session_the_first_connection_is_replaced(
    secure: SecureBroker,
) -> None:
    """The control for the tests above: a second connection of KZ-A does displace KZ-A."""
    first, _ = connect_client(secure, "KZ-A", secure.password("KZ-A"), client_id="lab-pc-1")
    watch = Watch(first)
    first.reconnect_delay_set(30, 60)  # do not fight back during the test
    second, answer = connect_client(secure, "KZ-A", secure.password("KZ-A"), client_id="lab-pc-2")
    try:
        assert answer == "Success"
        wait_for(lambda: watch.lost >= 1, timeout=10, what="the first connection to be dropped")
    finally:
        watch.close()
        second.disconnect()
        second.loop_stop()


def test_doctor_accounts_and_school_accounts_publish_nothing_the_collectors_read(
    secure: SecureBroker,
) -> None:
    """A doctor account may only connect; no school may write dead letters."""
    observer, seen = listen(secure, OBSERVER, "schools/+/+")
    observer.subscribe("school-monitor/dead-letter", qos=1)
    doctor, answer = connect_client(secure, "KZ-A.doctor", secure.password("KZ-A.doctor"))
    assert answer == "Success"
    school_b, answer = connect_client(secure, "KZ-B", secure.password("KZ-B"))
    assert answer == "Success"
    try:
        time.sleep(0.5)  # the observer's second subscription is in place
        forgeries = [
            (doctor, "schools/KZ-A/speed"),
            (doctor, "school-monitor/dead-letter"),
            (school_b, "school-monitor/dead-letter"),
        ]
        for client, topic in forgeries:
            client.publish(topic, b'{"forged": true}', qos=1).wait_for_publish(5)
        school_b.publish("schools/KZ-B/speed", b'{"own": true}', qos=1).wait_for_publish(5)
        wait_for(lambda: {"own": True} in seen, what="school B's own message (the control)")
        time.sleep(0.5)
        assert seen == [{"own": True}]
    finally:
        for client in (doctor, school_b, observer):
            client.disconnect()
            client.loop_stop()


def test_doctor_beside_a_running_agent_leaves_it_connected_and_its_will_unfired(
    secure: SecureBroker, speed_server: SpeedServer, tmp_path: Path
) -> None:
    observer, statuses = listen(secure, OBSERVER, "schools/KZ-A/agent")
    env = {
        "SCHOOL_AGENT_STATE_DIR": str(tmp_path / "state"),
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url,
        "SCHOOL_AGENT_SCHEDULE__STARTUP_TEST": "false",
    }
    bundle = secure.bundle("KZ-A")
    agent = Process(
        "agent", [sys.executable, "-m", "agent", "run", "--config", str(bundle)], tmp_path,
        command_env(**env),
    )  # fmt: skip
    agent.start()
    try:
        wait_for(
            lambda: any(s.get("reason") == "started" for s in statuses),
            what=f"the agent's started status (log: {agent.log_file})",
        )
        doctor = run_agent("doctor", "--config", str(bundle), env=env)
        assert "PASS  broker" in doctor.stdout or "PASS broker" in doctor.stdout, doctor.stdout
        threading.Event().wait(3.0)  # a displaced agent would have lost its connection by now
        assert [s["reason"] for s in statuses if s["status"] == "offline"] == []
        assert _connections(agent) == 1, agent.log_tail()
    finally:
        agent.stop()
        observer.disconnect()
        observer.loop_stop()


def test_a_revoked_school_is_disconnected_at_reload_and_refused_after(
    secure: SecureBroker,
) -> None:
    """The operator's answer to a hostile school: provision without it, reload the broker."""
    password = secure.password("KZ-R")
    school, answer = connect_client(secure, "KZ-R", password)
    assert answer == "Success"
    watch = Watch(school)
    school.reconnect_delay_set(30, 60)
    registry = secure.registry.read_text()
    secure.registry.write_text(registry.replace("KZ-R,Almaty\n", ""))
    try:
        result = secure.provision()
        assert result.returncode == 0, result.stderr
        assert "revoked: KZ-R" in result.stdout
        os.kill(secure.broker.process.pid() or 0, signal.SIGHUP)  # systemctl reload mosquitto
        wait_for(lambda: watch.lost >= 1, timeout=10, what="the revoked school to be disconnected")
        again, answer = connect_client(secure, "KZ-R", password)
        again.loop_stop()
        assert answer in ("Not authorized", "Bad user name or password")
        still, answer = connect_client(secure, "KZ-A", secure.password("KZ-A"))
        still.disconnect()
        still.loop_stop()
        assert answer == "Success"
    finally:
        watch.close()
        secure.registry.write_text(registry)
        secure.provision()
        os.kill(secure.broker.process.pid() or 0, signal.SIGHUP)
