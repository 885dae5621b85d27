"""The agent's work: publish its status, test the speed on schedule, repeat (or once)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent import __version__
from agent.broker import BrokerError
from agent.budget import MB, DataBudget
from agent.clock import Clock, SystemClock
from agent.clock_trust import KernelSync, TimeKeeper, Unchecked
from agent.config_file import ConfigError
from agent.connectivity import ConnectivityMonitor, Hour, Outage, parse_target
from agent.contract import (
    AgentState,
    AgentStatus,
    DeviceObservation,
    SpeedMeasurement,
    SpeedReport,
    SpeedResult,
    StatusReason,
    TopicKind,
)
from agent.devices.heartbeat_http import HeartbeatEndpoint
from agent.devices.heartbeat_mqtt import HeartbeatSubscriber
from agent.devices.heartbeats import HeartbeatDesk
from agent.devices.inventory import split_address
from agent.devices.monitor import DeviceMonitor
from agent.devices.probes import IcmpUnavailable, icmp_mode
from agent.devices.reports import DeviceReporter
from agent.host_health import prime_cpu_meter, read_host_health
from agent.identity import ensure_state_dir, load_agent_id, new_boot_id
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.remote_config import REMOTE_CONFIG_FILE, RemoteConfig, Scope, load_public_key
from agent.remote_config import topic_for as config_topic
from agent.schedule import SpeedSchedule
from agent.settings import AgentSettings, connectivity_targets
from agent.speed.progress import Progress
from agent.speed.runner import SpeedTester
from agent.watchdog import Notifier

log = logging.getLogger(__name__)

# Results that a retry 15 minutes later will not change.
NOT_RETRIED = frozenset({SpeedResult.SUCCESS, SpeedResult.BUDGET_EXHAUSTED, SpeedResult.CANCELLED})


@dataclass(frozen=True)
class OnceSummary:
    speed: SpeedReport
    messages_acknowledged: int
    devices: list[DeviceObservation]
    receipts: bool = False  # the collectors send receipts
    unconfirmed: int = 0  # messages no receipt named within mqtt.ack_timeout_s
    published: str = ""  # what the messages were, for a person


class Agent:
    """One school's agent: its identity, broker connection, speed tester, schedule and budget."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        notifier: Notifier | None = None,
        reload: Callable[[tuple[dict[str, Any], ...]], AgentSettings] | None = None,
    ) -> None:
        """``reload(layers)``: the settings with these layers of remote configuration under
        the local ones (raises ConfigError); without it, remote configuration is off."""
        settings.require_for_run()
        assert settings.school_id is not None  # noqa: S101 - checked by require_for_run
        self.settings = settings
        self.school_id = settings.school_id
        self.clock = clock or SystemClock()
        state_dir = ensure_state_dir(settings.state_dir)
        self.agent_id = settings.agent_id or load_agent_id(state_dir)
        self.boot_id = new_boot_id()
        keep = settings.outbox
        sync = KernelSync() if settings.clock.hold_unsynced else Unchecked()
        self.time_keeper = TimeKeeper(sync)
        self.outbox = Outbox(
            state_dir / "outbox.db",
            max_bytes=int(keep.max_mb * MB),
            max_age_s=keep.max_age_days * 86_400,
            # What held measurements are aged by: the clocks they are held with.
            monotonic=self.time_keeper.now_monotonic,
            boot_id=self.time_keeper.boot_id,
        )
        self.publisher = Publisher(
            settings.mqtt,
            self.outbox,
            plan=keep,
            school_id=self.school_id,
            agent_id=self.agent_id,
            boot_id=self.boot_id,
            version=__version__,
            time_keeper=self.time_keeper,
        )
        self._rng = rng or random.Random()  # noqa: S311 - spreading a fleet, not secrecy
        self._build_parts(settings)
        self._reload = reload
        self._new_settings: AgentSettings | None = None  # a remote configuration to apply
        self.remote = self._remote_config(settings, state_dir)
        self._listeners: list[HeartbeatEndpoint | HeartbeatSubscriber] = []
        self.notifier = notifier or Notifier()
        self._stopping = threading.Event()
        self._wanted = threading.Event()  # a manual test was asked for
        self._wake = threading.Event()

    def _build_parts(self, settings: AgentSettings) -> None:
        """What works from the settings: the speed tester, the schedule, the budget, the
        device checks and the connectivity checks (built again for a new configuration)."""
        state_dir = settings.state_dir
        self.tester = SpeedTester(settings.speedtest)
        plan = settings.schedule
        self.schedule = SpeedSchedule(
            plan.parsed_windows(),
            plan.tz(),
            self._rng,
            retries=plan.retries,
            retry_interval=timedelta(minutes=plan.retry_interval_min),
        )
        self.budget = DataBudget(state_dir, settings.speedtest.monthly_budget_mb, plan.tz())
        self.reporter = DeviceReporter(
            self.publisher.publish,
            school_id=self.school_id,
            agent_id=self.agent_id,
            boot_id=self.boot_id,
            now=self.clock.now,
        )
        self.devices = DeviceMonitor(
            settings.devices,
            on_report=self.reporter,
            full_interval_s=settings.device_report_interval_s,
            privileged_icmp=_icmp_mode(settings),
            now=self.clock.now,
        )
        self.heartbeats = HeartbeatDesk(settings.devices, self.devices.heartbeat)
        reach = settings.connectivity
        self.connectivity = (
            ConnectivityMonitor(
                [parse_target(spec) for spec in connectivity_targets(settings)],
                reach.interval_s,
                state_dir / "connectivity.json",
                self._publish_connectivity,
                timeout_s=reach.timeout_s,
                report_s=reach.report_s,
                believed=self.time_keeper.synchronised,
                boot_id=self.time_keeper.boot_id,
            )
            if reach.enabled
            else None
        )

    # -- remote configuration ----------------------------------------------

    def _remote_config(self, settings: AgentSettings, state_dir: Path) -> RemoteConfig | None:
        """Documents for this school, its region and all, verified with the ministry's key."""
        path = settings.remote_config.public_key
        if path is None:
            return None
        try:
            key = load_public_key(path)
        except ValueError as exc:
            raise ConfigError(
                f"remote_config.public_key: {exc}; install the bundle's config-key.pub "
                "(school-agent-setup --bundle DIR) or unset the setting"
            ) from exc
        remote = RemoteConfig(
            state_dir / REMOTE_CONFIG_FILE,
            key,
            school_id=self.school_id,
            region=settings.region,
            check=self._check_layers,
            apply=self._apply_layers,
        )
        root = settings.mqtt.topic_root
        topics = [
            config_topic(root, Scope.ALL, None),
            config_topic(root, Scope.SCHOOL, self.school_id),
        ]
        if settings.region is not None:
            topics.append(config_topic(root, Scope.REGION, settings.region))
        self.publisher.listen(topics, remote.offer)
        return remote

    def _check_layers(self, layers: list[dict[str, Any]]) -> None:
        """Raise ValueError unless these layers give valid settings."""
        if self._reload is None:
            raise ValueError("this agent was started without a config file to layer them under")
        try:
            self._reload(tuple(layers))
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    def _apply_layers(self, layers: list[dict[str, Any]]) -> None:
        """Put the layers in force: the main loop rebuilds what depends on them."""
        if self._reload is not None:
            self._new_settings = self._reload(tuple(layers))
            self._wake.set()

    def _reconfigure(self, settings: AgentSettings) -> None:
        """Stop the device and connectivity checks, build the parts again, start them."""
        if self.connectivity is not None:
            self.connectivity.stop()
        self._stop_devices()
        self._listeners = []
        self.settings = settings
        self._build_parts(settings)
        self._open_listeners()
        self._start_devices()
        if self.connectivity is not None:
            self.connectivity.start()
        assert self.remote is not None  # noqa: S101 - only remote configuration gets here
        log.info("configuration %s in force", self.remote.applied.label())

    def stop(self) -> None:
        """Ask the loop to end (from a signal handler): the running test is cut short."""
        self._stopping.set()
        self.tester.stop.set()
        self._wake.set()

    def trigger(self) -> None:
        """Ask for a speed test now, outside the schedule (SIGUSR1)."""
        self._wanted.set()
        self._wake.set()

    # -- once ------------------------------------------------------------

    def run_once(self, progress: Progress | None = None) -> OnceSummary:
        """Measure everything once, publish with QoS 1, return when the broker acked it all."""
        prime_cpu_meter()
        self.publisher.connect()
        try:
            self.clock.wait(0.2, self._wake)  # let the CPU meter average over a moment
            stored = [self._publish_status(StatusReason.STARTED)]
            what = ["a status 'started'"]
            devices = self.devices.check_once() if self.settings.devices else []
            if devices:
                reports = self.reporter(devices, full=True)
                stored += reports
                what.append(f"{len(reports)} device report(s) of {len(devices)} device(s)")
            what.append("a speed result")
            started = time.monotonic()
            report = self._speed_test(progress)
            stored.append(
                self.publisher.publish(report, TopicKind.SPEED, measured_monotonic=started)
            )
            self.publisher.wait_acked(stored, self.settings.mqtt.ack_timeout_s)
            unconfirmed = self.publisher.wait_stored(stored, self.settings.mqtt.ack_timeout_s)
        except BrokerError:
            self.publisher.close()
            raise
        self.publisher.close(self._status(AgentState.OFFLINE, StatusReason.STOPPED))
        return OnceSummary(
            report, len(stored), devices, self.publisher.receipts, unconfirmed, ", ".join(what)
        )

    # -- daemon ----------------------------------------------------------

    def run_forever(self) -> None:
        prime_cpu_meter()
        self._open_listeners()
        self.publisher.start()
        self._start_devices()
        if self.connectivity is not None:
            self.connectivity.start()
        now = self.clock.now()
        next_status = now
        if self.settings.schedule.startup_test:
            next_test = self.schedule.start(now)
        else:
            next_test = self.schedule.next_slot(now)
        log.info(
            "agent %s for school %s started; broker %s; first speed test at %s",
            self.agent_id,
            self.school_id,
            self.publisher.address,
            _local(next_test, self.settings),
        )
        reason = StatusReason.STARTED
        self.notifier.ready(f"school {self.school_id}, broker {self.publisher.address}")
        while not self._stopping.is_set():
            self.notifier.watchdog()  # from this loop only: if it hangs, systemd restarts us
            if (settings := self._new_settings) is not None:
                self._new_settings = None
                self._unattended(self._reconfigure, settings)
                next_test = self.schedule.next_slot(self.clock.now())
                next_status = self.clock.now()  # say at once which configuration is in force
            now = self.clock.now()
            if now >= next_status:
                self._unattended(self._publish_status, reason)
                reason = StatusReason.HEARTBEAT
                next_status = now + timedelta(seconds=self.settings.status_interval_s)
            if self._wanted.is_set():
                self._wanted.clear()
                log.info("speed test asked for by hand")
                self._unattended(self._test_and_publish)
            if now >= next_test:
                result = self._unattended(self._test_and_publish)
                next_test = self.schedule.after_test(
                    self.clock.now(), succeeded=result in NOT_RETRIED
                )
                log.info("next speed test at %s", _local(next_test, self.settings))
            self._unattended(self._log_broker_answers)
            until = min(next_status, next_test)
            pause = (until - self.clock.now()).total_seconds()
            if (ping := self.notifier.ping_interval_s()) is not None:
                pause = min(pause, ping)
            if self.clock.wait(pause, self._wake):
                self._wake.clear()
        self.notifier.stopping()
        if self.connectivity is not None:
            self.connectivity.stop()
        self._stop_devices()
        self.publisher.close(self._status(AgentState.OFFLINE, StatusReason.STOPPED))
        log.info("agent stopped")

    def _open_listeners(self) -> None:
        """Bind the heartbeat endpoints (when a device sends heartbeats); fail early if taken."""
        plan = self.settings.heartbeat
        if self.heartbeats.wanted:
            if plan.listen:
                host, port = split_address(plan.listen)
                try:
                    self._listeners.append(HeartbeatEndpoint(host, port, self.heartbeats))
                except OSError as exc:
                    raise ConfigError(str(exc)) from exc
            if plan.mqtt.url:
                self._listeners.append(
                    HeartbeatSubscriber(plan.mqtt, plan.topic_prefix, self.heartbeats)
                )

    def _start_devices(self) -> None:
        """Start the heartbeat listeners and the device checks."""
        if not self.settings.devices:
            return
        self.devices.start()  # first: a heartbeat needs the monitor running
        for listener in self._listeners:
            listener.start()
        log.info("watching %d device(s)", len(self.settings.devices))

    def _stop_devices(self) -> None:
        for listener in self._listeners:
            listener.close()
        self.devices.stop()

    # -- steps -----------------------------------------------------------

    @staticmethod
    def _unattended(step: Callable[..., object], *args: object) -> object:
        """Run one step of the daemon; a bug is logged, and the agent keeps working."""
        try:
            return step(*args)
        except Exception:
            log.exception("%s failed; carrying on", getattr(step, "__name__", "a step"))
            return None

    def _test_and_publish(self) -> SpeedResult:
        started = time.monotonic()
        report = self._speed_test(None)
        self.publisher.publish(report, TopicKind.SPEED, measured_monotonic=started)
        return report.result

    def _speed_test(self, progress: Progress | None) -> SpeedReport:
        started_at = self.clock.now()
        if self.budget.allows_test(started_at):
            measurement = self.tester.measure(progress, max_bytes=self.budget.remaining(started_at))
            self.budget.record(started_at, measurement.bytes_received + measurement.bytes_sent)
        else:
            measurement = self._budget_exhausted(started_at)
        _log_measurement(measurement)
        return SpeedReport.of(
            measurement, school_id=self.school_id, agent_id=self.agent_id, measured_at=started_at
        )

    def _budget_exhausted(self, now: datetime) -> SpeedMeasurement:
        used = self.budget.used(now) / MB
        cap = (self.budget.cap_bytes or 0) / MB
        return SpeedMeasurement.failed(
            SpeedResult.BUDGET_EXHAUSTED,
            f"skipped: {used:.0f} of the {cap:.0f} MB monthly data budget used; tests resume "
            "next month (or raise speedtest.monthly_budget_mb)",
            threshold_mbps=self.settings.speedtest.threshold_mbps,
        )

    def _status(self, state: AgentState, reason: StatusReason) -> AgentStatus:
        now = self.clock.now()
        online = state is AgentState.ONLINE
        return self.publisher.status(
            state,
            reason,
            read_host_health(self.settings.state_dir) if online else None,
            measured_at=now,
            data_used_month_bytes=self.budget.used(now),
            data_budget_month_bytes=self.budget.cap_bytes,
            heartbeats=self.heartbeats.counts() if self.heartbeats.wanted else None,
            config=self.remote.state() if self.remote is not None and online else None,
        )

    def _publish_status(self, reason: StatusReason) -> int:
        return self.publisher.publish(self._status(AgentState.ONLINE, reason), TopicKind.AGENT)

    def _publish_connectivity(self, outages: list[Outage], hours: list[Hour]) -> None:
        """Each period that is over and each outage that ended, through the outbox, dated
        by the monotonic time of their start (held while the clock cannot be believed)."""
        reach = self.settings.connectivity
        for hour in hours:
            self.publisher.publish(
                hour.report(self.school_id, self.agent_id, reach.interval_s, reach.report_s),
                TopicKind.CONNECTIVITY,
                measured_monotonic=hour.start_mono,
                time_known=hour.start_mono is None,
            )
        for outage in outages:
            report = outage.report(self.school_id, self.agent_id)
            self.publisher.publish(
                report,
                TopicKind.OUTAGE,
                measured_monotonic=outage.start_mono,
                time_known=outage.start_mono is None,
            )
            log.warning(
                "outage: %s for %.0f s from %s by this machine's clock (%s)",
                report.cause,
                report.duration_s,
                report.measured_at.isoformat(timespec="seconds"),
                report.detail or "",
            )

    def _log_broker_answers(self) -> None:
        acked, refusals, waiting = self.publisher.settle()
        for refusal in refusals:
            log.error("broker refused a message: %s", refusal)
        if acked:
            log.debug("broker acknowledged %d message(s); %d still waiting", acked, waiting)


def _log_measurement(m: SpeedMeasurement) -> None:
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


def _icmp_mode(settings: AgentSettings) -> bool:
    """Whether ICMP checks need raw sockets; a clear start-up error when none are allowed."""
    try:
        return icmp_mode(settings.devices)
    except IcmpUnavailable as exc:
        raise ConfigError(str(exc)) from exc


def _local(moment: datetime, settings: AgentSettings) -> str:
    return moment.astimezone(settings.schedule.tz()).strftime("%Y-%m-%d %H:%M %Z")
