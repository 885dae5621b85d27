"""A snapshot of the school machine's health, from psutil, for the agent status."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from agent.contract import HostHealth

# Sensor chips in the order we trust them: the Raspberry Pi's SoC, then x86 packages.
_PREFERRED_SENSORS = ("cpu_thermal", "coretemp", "k10temp", "soc_thermal", "acpitz")


def prime_cpu_meter() -> None:
    """Start psutil's CPU meter, so the next reading averages since now."""
    psutil.cpu_percent(interval=None)


def read_host_health(disk_path: Path) -> HostHealth:
    """CPU (average since the previous reading), memory, disk, uptime, load, temperature."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(_existing_parent(disk_path)))
    return HostHealth(
        cpu_percent=min(100.0, psutil.cpu_percent(interval=None)),
        memory_percent=memory.percent,
        memory_available_bytes=memory.available,
        disk_percent=disk.percent,
        disk_free_bytes=disk.free,
        uptime_s=max(0, int(time.time() - psutil.boot_time())),
        load_1m=round(os.getloadavg()[0], 2),
        temperature_c=read_temperature(),
    )


def read_temperature() -> float | None:
    """The CPU temperature in °C, or None where the hardware has no sensor."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except (OSError, RuntimeError):
        return None
    for name in (*_PREFERRED_SENSORS, *sorted(sensors)):
        for entry in sensors.get(name, []):
            if -60 <= entry.current <= 200:
                return round(float(entry.current), 1)
    return None


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
