"""The agent's work: measure, publish, repeat (or once)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent import __version__
from agent.broker import BrokerError
from agent.contract import (
    AgentState,
    SpeedReport,
    StatusReason,
    TopicKind,
)
from agent.host_health import prime_cpu_meter, read_host_health
from agent.identity import ensure_state_dir, load_agent_id, new_boot_id
from agent.publisher import Publisher
from agent.settings import AgentSettings
from agent.speed.progress import Progress
from agent.speed.runner import SpeedTester

log = logging.getLogger(__name__)

FIRST_TEST_DELAY_S = (5.0, 60.0)  # a fleet rebooting together must not test together


@dataclass(frozen=True)
class OnceSummary:
    speed: SpeedReport
    messages_acknowledged: int


class Agent:
    """One school's agent: its identity, its broker connection, its speed tester."""

    def __init__(self, settings: AgentSettings) -> None:
        settings.require_for_run()
        assert settings.school_id is not None  # noqa: S101 - checked by require_for_run
        self.settings = settings
        self.school_id = settings.school_id
        state_dir = ensure_state_dir(settings.state_dir)
        self.agent_id = settings.agent_id or load_agent_id(state_dir)
        self.boot_id = new_boot_id()
        self.publisher = Publisher(
            settings.mqtt,
            school_id=self.school_id,
            agent_id=self.agent_id,
            boot_id=self.boot_id,
            version=__version__,
        )
        self.tester = SpeedTester(settings.speedtest)
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Ask the loop to end (from a signal handler): the running test is cut short."""
        self._stopping.set()
        self.tester.stop.set()

    # -- once ------------------------------------------------------------

    def run_once(self, progress: Progress | None = None) -> OnceSummary:
        """Measure everything once, publish with QoS 1, return when the broker acked it all."""
        prime_cpu_meter()
        self.publisher.connect()
        try:
            time.sleep(0.2)  # let the CPU meter average over a moment, not an instant
            mids = [self._publish_status(StatusReason.STARTED)]
            report = self._measure_speed(progress)
            mids.append(self.publisher.publish(report, TopicKind.SPEED))
            self.publisher.wait_acked(mids, self.settings.mqtt.ack_timeout_s)
        except BrokerError:
            self.publisher.close()
            raise
        self.publisher.close(self.publisher.status(AgentState.OFFLINE, StatusReason.STOPPED))
        return OnceSummary(report, len(mids))

    # -- daemon ----------------------------------------------------------

    def run_forever(self) -> None:
        prime_cpu_meter()
        self.publisher.start()
        log.info(
            "agent %s for school %s started; broker %s",
            self.agent_id,
            self.school_id,
            self.publisher.address,
        )
        now = time.monotonic()
        next_status = now
        next_speed = now + random.uniform(*FIRST_TEST_DELAY_S)  # noqa: S311 - spreading, not secrecy
        reason = StatusReason.STARTED
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_status:
                self._unattended(self._publish_status, reason)
                reason = StatusReason.HEARTBEAT
                next_status = now + self.settings.status_interval_s
            if now >= next_speed:
                self._unattended(self._publish_speed)
                next_speed = time.monotonic() + self._speed_interval()
            self._unattended(self._log_broker_answers)
            self._stopping.wait(max(0.0, min(next_status, next_speed) - time.monotonic()))
        self.publisher.close(self.publisher.status(AgentState.OFFLINE, StatusReason.STOPPED))
        log.info("agent stopped")

    # -- steps -----------------------------------------------------------

    @staticmethod
    def _unattended(step: Callable[..., object], *args: object) -> None:
        """Run one step of the daemon; a bug is logged, and the agent keeps working."""
        try:
            step(*args)
        except Exception:
            log.exception("%s failed; carrying on", getattr(step, "__name__", "a step"))

    def _publish_speed(self) -> int:
        return self.publisher.publish(self._measure_speed(None), TopicKind.SPEED)

    def _publish_status(self, reason: StatusReason) -> int:
        host = read_host_health(self.settings.state_dir)
        return self.publisher.publish(
            self.publisher.status(AgentState.ONLINE, reason, host), TopicKind.AGENT
        )

    def _measure_speed(self, progress: Progress | None) -> SpeedReport:
        timed = self.tester.measure(progress)
        m = timed.measurement
        if m.download_mbps is not None:
            log.info(
                "speed test: %.2f down, %.2f up Mbps, %.1f ms (%s)",
                m.download_mbps,
                m.upload_mbps,
                m.latency_ms,
                "meets" if m.meets_threshold else "below",
            )
        else:
            log.warning("speed test failed: %s (%s)", m.result.value, m.error)
        return SpeedReport.of(
            m, school_id=self.school_id, agent_id=self.agent_id, measured_at=timed.started_at
        )

    def _speed_interval(self) -> float:
        base = self.settings.speedtest.interval_hours * 3600
        return base * random.uniform(0.9, 1.1)  # noqa: S311 - spreading, not secrecy

    def _log_broker_answers(self) -> None:
        acked, refusals, waiting = self.publisher.settle()
        for refusal in refusals:
            log.error("broker refused a message: %s", refusal)
        if acked:
            log.debug("broker acknowledged %d message(s); %d still waiting", acked, waiting)
