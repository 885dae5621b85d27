"""The collector's own health: what it received, stored and rejected, by reason, and its lag.

Written every ``stats_interval_s`` to the ``collector`` and
``collector_rejections`` measurements (cumulative since start, as Telegraf's
internal plugin does), so Grafana can chart ingest rate and rejections. The
lag (from a message's ``measured_at`` to its write) is the exception: its
percentiles cover the messages stored since the previous stats line.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.contract import RejectReason
from collector.line_protocol import encode
from collector.points import COLLECTOR, COLLECTOR_RATE_LIMITED, COLLECTOR_REJECTIONS

# Lag buckets: 2 % wide from 1 ms to about 8 months; a percentile is its bucket's top.
_LAG_BOUNDS_MS = [1.02**step for step in range(1200)]


class LagMeter:
    """Percentiles of the lag of the messages stored since it was last read."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._buckets: Counter[int] = Counter()
        self._count = 0
        self._max_ms = 0.0

    def add(self, lags_ms: Iterable[float]) -> None:
        for lag in lags_ms:
            self._buckets[bisect.bisect_left(_LAG_BOUNDS_MS, lag)] += 1
            self._count += 1
            self._max_ms = max(self._max_ms, lag)

    def take(self) -> dict[str, float]:
        """``lag_p50_ms``, ``lag_p99_ms`` and ``lag_max_ms``, then start afresh; {} if none."""
        if not self._count:
            return {}
        found = {}
        seen = 0
        wanted = [("lag_p50_ms", 0.50 * self._count), ("lag_p99_ms", 0.99 * self._count)]
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            while wanted and seen >= wanted[0][1]:
                top = _LAG_BOUNDS_MS[min(bucket, len(_LAG_BOUNDS_MS) - 1)]
                found[wanted.pop(0)[0]] = round(min(top, self._max_ms), 1)
        found["lag_max_ms"] = round(self._max_ms, 1)
        self._reset()
        return found


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
    receipts: int = 0
    rejected: Counter[RejectReason] = field(default_factory=Counter)
    _over_budget: Counter[str] = field(default_factory=Counter, repr=False)
    lag: LagMeter = field(default_factory=LagMeter, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def stored_with_lag(self, lags_ms: Iterable[float]) -> None:
        with self._lock:
            self.lag.add(lags_ms)

    def reject(self, reason: RejectReason) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def over_budget(self, school_id: str, messages: int) -> None:
        with self._lock:
            self._over_budget[school_id] += messages

    def take_over_budget(self) -> Counter[str]:
        """Messages rejected as ``rate_limited`` per school since the last call."""
        with self._lock:
            taken, self._over_budget = self._over_budget, Counter()
        return taken

    def lines(self, collector_id: str) -> list[str]:
        at = time.time_ns()
        tags = {"collector_id": collector_id}
        with self._lock:
            totals: dict[str, int | float] = {
                "received": self.received,
                "stored": self.stored,
                "rejected": sum(self.rejected.values()),
                "points_written": self.points_written,
                "dead_lettered": self.dead_lettered,
                "batches": self.batches,
                "write_retries": self.write_retries,
                "device_report_gaps": self.device_report_gaps,
                "agent_restarts": self.agent_restarts,
                "receipts": self.receipts,
            }
            by_reason = sorted(self.rejected.items())
            lag = self.lag.take()
        return [encode(COLLECTOR, tags, totals | lag, at)] + [
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


def over_budget_lines(collector_id: str, over: Counter[str]) -> list[str]:
    """One ``collector_rate_limited`` point per school over its budget since the last line."""
    at = time.time_ns()
    return [
        encode(
            COLLECTOR_RATE_LIMITED,
            {"collector_id": collector_id, "school_id": school},
            {"messages": count},
            at,
        )
        for school, count in sorted(over.items())
    ]
