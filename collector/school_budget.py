"""Each school's message budget at the collector, so that one school cannot flood the rest.

The contract bounds what an agent sends: a status every 5 minutes, a full
device list every 5 minutes (50 devices a message), device changes as they
happen, a few speed tests a day. A school with 10 devices sends about 25
messages per hour of its own time, one with 1,000 devices about 300. The
budget is a token bucket per school, ``messages_per_hour`` (1,200) with a burst
of ``burst`` (1,000).

Its clock is the larger of two advances since the school's previous message:
the collector's own (arrival) time and the message's ``measured_at``. An
agent replaying a month of outbox after an outage, or the broker handing over
a backlog that queued while the collector was away, arrives far faster than it
was measured, but each message advances ``measured_at`` as it did when it was
made, so the replay earns its own tokens and nothing of it is refused. A flood
of messages that all claim the present (or malformed ones, which claim no time)
earns tokens only as fast as real time passes: after the burst it is held to the
contract's rate, and the rest is rejected as ``rate_limited``.

What it cannot stop: a school that walks fake ``measured_at`` forward from
``max_past_days`` ago earns tokens for that whole span, at most
``messages_per_hour`` times the span (1.7 million for 60 days), once per
collector start, all of it in its own subtree: its own data, visibly absurd,
and the answer is again to revoke its account.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    arrived_s: float
    measured_s: float


@dataclass
class SchoolBudget:
    messages_per_hour: float
    burst: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, school_id: str, arrived_s: float, measured_s: float | None) -> bool:
        """Take one message from ``school_id``'s budget; False when it is spent.

        ``measured_s`` is the message's own time (None when it has none, e.g. it
        did not parse); both times are in seconds since the epoch.
        """
        bucket = self._buckets.get(school_id)
        measured = measured_s if measured_s is not None else float("-inf")
        if bucket is None:
            bucket = _Bucket(float(self.burst), arrived_s, measured)
            self._buckets[school_id] = bucket
        else:
            advance = max(arrived_s - bucket.arrived_s, measured - bucket.measured_s, 0.0)
            rate = self.messages_per_hour / 3600.0
            bucket.tokens = min(float(self.burst), bucket.tokens + advance * rate)
            bucket.arrived_s = max(bucket.arrived_s, arrived_s)
            bucket.measured_s = max(bucket.measured_s, measured)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def forget_full(self, now_s: float) -> int:
        """Drop the buckets that have refilled: recreating one full costs nothing.

        Keeps memory bounded by the schools active in the last burst / rate
        hours, not by every topic ever seen.
        """
        rate = self.messages_per_hour / 3600.0
        full = [
            school
            for school, bucket in self._buckets.items()
            if bucket.tokens + (now_s - bucket.arrived_s) * rate >= self.burst
        ]
        for school in full:
            del self._buckets[school]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)


def school_of(topic: str) -> str:
    """The school a topic ``<root>/<school_id>/<kind>`` is under (the ACL made it the sender's)."""
    parts = topic.rsplit("/", 2)
    return parts[-2] if len(parts) == 3 else ""  # root, school, kind
