"""The thresholds behind the rollout definitions (the collector's ``rollout.*`` settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rules:
    """The thresholds behind the definitions; the collector's ``rollout.*`` settings."""

    threshold_mbps: float = 20.0
    speed_window_days: float = 30.0
    reporting_days: float = 7.0
    live_days: float = 21.0
    dropped_days: float = 28.0
    device_fresh_minutes: float = 15.0
