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
    per_student_kbps: float = 50.0
    per_student_from: int = 400
    availability_target: float = 99.0  # percent of the checks in school hours
    availability_window_days: float = 30.0

    def standard_mbps(self, students: int | None) -> float:
        """A school's standard: ``threshold_mbps``, or ``per_student_kbps`` per student when
        that is more and the school has more than ``per_student_from`` students (the ITU and
        UN target: 20 Mbps, or 50 kbps per student above 400 students)."""
        if students is None or students <= self.per_student_from:
            return self.threshold_mbps
        return max(self.threshold_mbps, self.per_student_kbps * students / 1000)


# Giga Maps' categories: good at or above the school's standard, moderate from this up
# to it, bad below it.
GIGA_MODERATE_FROM_MBPS = 1.0
