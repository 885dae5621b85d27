"""School hours: when a school is expected to be online (the collector's ``school_hours``).

Giga's uptime counts reachability checks from 08:00 to 20:00 local time; the
availability that the rollout's ``school_hours_available`` and the map judge
is the same: the checks of the hours inside school hours. An agent reports its
checks per hour (UTC). An hour counts as a school hour when its middle lies
within school hours in the setting's time zone, so a zone offset by half an
hour still gives whole hours. The collector decides this when it stores the
hour, so a changed setting applies to hours stored from then on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from agent.schedule import Window


@dataclass(frozen=True)
class SchoolHours:
    window: Window
    timezone: tzinfo

    def covers(self, moment: datetime) -> bool:
        """Whether ``moment`` (timezone-aware) falls within school hours, locally."""
        local = moment.astimezone(self.timezone).time()
        return self.window.start <= local < self.window.end

    def covers_hour(self, hour_start: datetime, period_s: float = 3600.0) -> bool:
        """Whether the hour (or shorter period) starting at ``hour_start`` is a school hour,
        by its middle."""
        return self.covers(hour_start + timedelta(seconds=period_s / 2))
