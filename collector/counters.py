"""The collector's own health: what it received, stored and rejected, by reason.

Written every ``stats_interval_s`` to the ``collector`` and
``collector_rejections`` measurements (cumulative since start, as Telegraf's
internal plugin does), so Grafana can chart ingest rate and rejections.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from agent.contract import RejectReason
from collector.line_protocol import encode
from collector.points import COLLECTOR, COLLECTOR_REJECTIONS


@dataclass
class Counters:
    received: int = 0
    stored: int = 0
    points_written: int = 0
    dead_lettered: int = 0
    batches: int = 0
    write_retries: int = 0
    device_report_gaps: int = 0
    agent_restarts: int = 0
    rejected: Counter[RejectReason] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def reject(self, reason: RejectReason) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def lines(self, collector_id: str) -> list[str]:
        at = time.time_ns()
        tags = {"collector_id": collector_id}
        with self._lock:
            totals = {
                "received": self.received,
                "stored": self.stored,
                "rejected": sum(self.rejected.values()),
                "points_written": self.points_written,
                "dead_lettered": self.dead_lettered,
                "batches": self.batches,
                "write_retries": self.write_retries,
                "device_report_gaps": self.device_report_gaps,
                "agent_restarts": self.agent_restarts,
            }
            by_reason = sorted(self.rejected.items())
        return [encode(COLLECTOR, tags, totals, at)] + [
            encode(COLLECTOR_REJECTIONS, tags | {"reason": reason.value}, {"count": count}, at)
            for reason, count in by_reason
        ]

    def summary(self) -> str:
        with self._lock:
            rejected = ", ".join(f"{r.value}={n}" for r, n in sorted(self.rejected.items()))
            return (
                f"received {self.received}, stored {self.stored}, "
                f"rejected {sum(self.rejected.values())} ({rejected or 'none'}), "
                f"dead-lettered {self.dead_lettered}, write retries {self.write_retries}"
            )
