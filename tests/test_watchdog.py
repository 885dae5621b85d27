"""systemd's watchdog is fed from the agent's main loop: a hung loop stops the pings."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from localstack import Mosquitto

from agent.config_file import load_settings
from agent.daemon import Agent
from agent.settings import AgentSettings
from agent.watchdog import Notifier
from tests.support.fake_clock import FakeClock

START = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)


class HangingClock(FakeClock):
    """Virtual time whose ``wait`` hangs on its ``hang_at``-th call until released."""

    def __init__(self, start: datetime, hang_at: int) -> None:
        super().__init__(start)
        self.calls = 0
        self.hang_at = hang_at
        self.hanging = threading.Event()
        self.release = threading.Event()

    def wait(self, seconds: float, wake: threading.Event) -> bool:
        self.calls += 1
        if self.calls == self.hang_at:
            self.hanging.set()
            self.release.wait(30)
        return super().wait(seconds, wake)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.5)
    yield sock
    sock.close()


def _drain(sock: socket.socket) -> list[str]:
    found = []
    while True:
        try:
            found.append(sock.recv(1024).decode())
        except TimeoutError:
            return found


def test_a_hung_main_loop_stops_feeding_the_watchdog(
    broker: Mosquitto, notify_socket: socket.socket, tmp_path: Path
) -> None:
    settings = load_settings(
        AgentSettings,
        school_id="KZ-1",
        state_dir=tmp_path / "state",
        mqtt={"url": broker.url, "topic_root": "watchdog-test/schools"},
        schedule={"startup_test": False, "windows": ["23:00-23:30"], "timezone": "UTC"},
        clock={"hold_unsynced": False},  # the fake clock is the agent's clock
    )
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "2000000"})
    assert notifier.ping_interval_s() == 1.0
    clock = HangingClock(START, hang_at=6)
    agent = Agent(settings, clock=clock, notifier=notifier)
    runner = threading.Thread(target=agent.run_forever, daemon=True)
    runner.start()
    try:
        assert clock.hanging.wait(30)
        before_hang = _drain(notify_socket)
        assert before_hang[0].startswith("READY=1")
        assert before_hang.count("WATCHDOG=1") == 6  # one per turn of the loop
        assert _drain(notify_socket) == []  # hung: no ping, so systemd would restart it
        assert clock.calls == 6
    finally:
        clock.release.set()
        agent.stop()
        runner.join(30)
    assert "STOPPING=1" in _drain(notify_socket)


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.active
    assert notifier.ping_interval_s() is None
    notifier.ready()
    notifier.watchdog()  # no socket: nothing to send, nothing raised
