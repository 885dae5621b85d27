"""Watches every device at once: one asyncio task per device, in a thread of its own.

An active device is checked every ``period_s`` (every ``retry_s`` while a miss
or a recovery is being confirmed); a heartbeat device is expected at least
every ``period_s``. A slow or dead device only ever waits on its own timeout,
never on another device. A state change is reported at once; the whole list
every ``full_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from agent.contract import DeviceObservation, DeviceResult, DeviceState, utc_now
from agent.devices.inventory import DeviceConfig
from agent.devices.probes import Prober
from agent.devices.state import DeviceTracker, Outcome

log = logging.getLogger(__name__)

Report = Callable[[list[DeviceObservation], bool], object]  # (observations, full)


class DeviceMonitor:
    def __init__(
        self,
        devices: Sequence[DeviceConfig],
        *,
        on_report: Report,
        full_interval_s: float = 300.0,
        privileged_icmp: bool = False,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._devices = list(devices)
        self._on_report = on_report
        self._full_interval_s = full_interval_s
        self._now = now
        started = now()
        self._trackers = {d.id: DeviceTracker(d, started) for d in self._devices}
        self._probers = {
            d.id: Prober(d, privileged_icmp=privileged_icmp) for d in self._devices if d.active
        }
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats: dict[str, asyncio.Event] = {}
        self._beat_at: dict[str, float] = {}
        self._quiet = False  # check_once: one full report at the end, no change reports

    # -- any thread --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="device-monitor", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=15)

    def heartbeat(self, device_id: str) -> None:
        """A heartbeat was accepted for ``device_id`` (called from a listener's thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._beat, device_id)

    def snapshot(self) -> list[DeviceObservation]:
        with self._lock:
            return [tracker.observation() for tracker in self._trackers.values()]

    def check_once(self) -> list[DeviceObservation]:
        """Check every active device until it is ``up`` or ``down`` (``run --once``).

        A failing device is re-checked every ``retry_s`` up to ``down_after``
        times, as the daemon would; heartbeat devices stay ``unknown``.
        """
        self._quiet = True
        try:
            asyncio.run(self._settle_all())
        finally:
            self._quiet = False
        return self.snapshot()

    # -- the monitor's thread ----------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for device in self._devices:
            if not device.active:
                self._beats[device.id] = asyncio.Event()
        self._ready.set()
        tasks = [asyncio.create_task(self._full_reports(), name="full-reports")]
        for device in self._devices:
            watch = self._probe_loop(device) if device.active else self._heartbeat_watch(device)
            tasks.append(asyncio.create_task(watch, name=f"device-{device.id}"))
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _full_reports(self) -> None:
        while True:
            self._report(self.snapshot(), full=True)
            await asyncio.sleep(self._full_interval_s)

    async def _probe_loop(self, device: DeviceConfig) -> None:
        loop = asyncio.get_running_loop()
        prober = self._probers[device.id]
        while True:
            started = loop.time()
            interval = device.period_s
            try:
                self._observe(device, await prober.check())
                if self._trackers[device.id].settling:
                    interval = device.retry_s
            except Exception:  # a bug must not end this device's watch
                log.exception("checking device %s failed; trying again", device.id)
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    async def _heartbeat_watch(self, device: DeviceConfig) -> None:
        loop = asyncio.get_running_loop()
        beat = self._beats[device.id]
        since = loop.time()
        due = since + device.period_s
        while True:
            beat.clear()
            try:
                await asyncio.wait_for(beat.wait(), max(0.0, due - loop.time()))
                due = loop.time() + device.period_s
            except TimeoutError:
                silent = loop.time() - self._beat_at.get(device.id, since)
                self._observe(
                    device,
                    Outcome(DeviceResult.NO_HEARTBEAT, detail=f"no heartbeat for {silent:.0f} s"),
                )
                due = loop.time() + device.retry_s

    def _beat(self, device_id: str) -> None:
        event = self._beats.get(device_id)
        if event is None or self._loop is None:
            return
        self._beat_at[device_id] = self._loop.time()
        self._observe(self._trackers[device_id].device, Outcome(DeviceResult.SUCCESS))
        event.set()

    async def _settle_all(self) -> None:
        await asyncio.gather(*(self._settle(d) for d in self._devices if d.active))

    async def _settle(self, device: DeviceConfig) -> None:
        tracker = self._trackers[device.id]
        for attempt in range(device.down_after + device.up_after):
            if attempt:
                await asyncio.sleep(device.retry_s)
            self._observe(device, await self._probers[device.id].check())
            if tracker.state in (DeviceState.UP, DeviceState.DOWN) and not tracker.settling:
                return

    # -- both ----------------------------------------------------------------

    def _observe(self, device: DeviceConfig, outcome: Outcome) -> None:
        with self._lock:
            tracker = self._trackers[device.id]
            before = tracker.state
            changed = tracker.observe(outcome, self._now())
            observation = tracker.observation() if changed else None
        if observation is None or self._quiet:
            return
        log.log(
            logging.INFO if observation.state is DeviceState.UP else logging.WARNING,
            "device %s (%s, %s): %s -> %s (%s%s)",
            device.id,
            device.kind.value,
            device.target(),
            before.value,
            observation.state.value,
            outcome.result.value,
            f": {outcome.detail}" if outcome.detail else "",
        )
        self._report([observation], full=False)

    def _report(self, observations: list[DeviceObservation], *, full: bool) -> None:
        try:
            self._on_report(observations, full)
        except Exception:
            log.exception("could not publish the device report; the next one carries the state")
