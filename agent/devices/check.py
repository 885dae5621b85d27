"""``school-agent devices``: check the configured devices once, by hand."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config_file import ConfigError
from agent.contract import DeviceObservation, DeviceState
from agent.devices.monitor import DeviceMonitor
from agent.devices.probes import IcmpUnavailable, icmp_mode
from agent.settings import AgentSettings


def check_devices(
    settings: AgentSettings, *, as_json: bool, config_file: Path | None = None
) -> int:
    """Check every active device until it is up or down; print; 0 when all are up."""
    if not settings.devices:
        read = (
            f"the config file {config_file}"
            if config_file is not None
            else "no config file (give --config /etc/school-agent/agent.toml, or set "
            "$SCHOOL_AGENT_CONFIG)"
        )
        print(
            f"school-agent: no devices configured: read {read}, and SCHOOL_AGENT_DEVICES is "
            "not set. Add a [[devices]] table per device to the config file (agent/README.md, "
            "Configuring devices; an example in agent/agent.sample.toml)",
            file=sys.stderr,
        )
        return 2
    try:
        privileged = icmp_mode(settings.devices)
    except IcmpUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    monitor = DeviceMonitor(settings.devices, on_report=lambda *_: None, privileged_icmp=privileged)
    observations = monitor.check_once()
    if as_json:
        for observation in observations:
            print(observation.model_dump_json())
    else:
        print(describe_devices(observations))
    checked = [o for o, d in zip(observations, settings.devices, strict=True) if d.active]
    return 0 if all(o.state is DeviceState.UP for o in checked) else 1


def describe_devices(observations: Sequence[DeviceObservation]) -> str:
    rows = [("DEVICE", "KIND", "STATE", "RESULT", "MS", "DETAIL")]
    for o in observations:
        ms = f"{o.response_ms:.1f}" if o.response_ms is not None else "-"
        rows.append((o.device_id, o.kind.value, o.state.value, o.result, ms, o.detail or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True))
        + "  "
        + row[5]
        for row in rows
    ).rstrip()
