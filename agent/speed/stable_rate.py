"""The rate of a transfer once it is stable: warm-up discarded, stopped as soon as it settles.

speedtest-cli divides all bytes by the whole wall time, so TCP's slow start
counts against the link; on a satellite round trip of 600 ms that alone
halves the figure. Here the transfer is sampled every 100 ms and judged on a
*stretch* that starts after the first bytes arrive:

- when the second half of the stretch is faster than the first by more than
  ``tolerance``, the rate is still growing: the first half is warm-up, dropped;
- when both halves agree within ``tolerance`` and the stretch is long enough
  (``min_stable_s``, longer on long round trips), the rate is stable: the test
  stops and reports the mean rate over the stretch;
- at ``max_duration_s`` (or when the data budget is spent) it reports the
  mean over the stretch it has.

>>> rate = StableRate(rtt_s=0.08)
>>> rate.add(0.1, 125_000)   # seconds since start, bytes so far
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.speed.byte_series import Stretch


@dataclass(frozen=True)
class StableRateVerdict:
    mbps: float
    stable: bool  # False: cut short by time or budget before both halves agreed
    warmup_s: float
    measured_s: float


def plan_durations(rtt_s: float) -> tuple[float, float]:
    """(shortest stable stretch, longest whole test) for a link with this idle round trip.

    A stretch must span many round trips. Parallel TCP flows fill the
    bottleneck together, lose together and recover over a few round trips:
    on a 600 ms link the rate halves for 2 s about every 12 s (20 round
    trips), and the steady state includes those dips. 40 round trips cover
    two such cycles; short links stop after 2 s.
    """
    min_stable = max(2.0, 40 * rtt_s)
    max_duration = min(60.0, max(8.0, 6.0 + 70 * rtt_s))
    return min_stable, max_duration


class StableRate(Stretch):
    counts_delivered = False  # bytes read or acknowledged in order, as before December 2026

    def __init__(
        self,
        rtt_s: float,
        *,
        tolerance: float = 0.03,
        min_stable_s: float | None = None,
        max_duration_s: float | None = None,
    ) -> None:
        super().__init__()
        planned_stable, planned_max = plan_durations(rtt_s)
        self.tolerance = tolerance
        self.min_stable_s = min_stable_s if min_stable_s is not None else planned_stable
        self.max_duration_s = max_duration_s if max_duration_s is not None else planned_max

    def verdict(self) -> StableRateVerdict | None:
        """The rate once it is stable, or None while the test should go on."""
        if self._start is None:
            return None
        while self.elapsed - self._start >= self.min_stable_s:
            middle = (self._start + self.elapsed) / 2
            first = self._rate(self._start, middle)
            second = self._rate(middle, self.elapsed)
            if second > first * (1 + self.tolerance):
                self._start = middle  # still growing: that half was warm-up
                continue
            if abs(second - first) <= self.tolerance * max(first, second):
                return self._conclude(stable=True)
            return None  # falling or noisy: let more samples decide
        return None

    def final(self) -> StableRateVerdict:
        """The best figure available now (time is up, or the budget is spent)."""
        if self._start is None or self.elapsed <= self._start:
            return StableRateVerdict(0.0, stable=False, warmup_s=self.elapsed, measured_s=0.0)
        if self.elapsed - self._start >= 2 * self.min_stable_s:
            middle = (self._start + self.elapsed) / 2
            if self._rate(middle, self.elapsed) > self._rate(self._start, middle) * (
                1 + self.tolerance
            ):
                self._start = middle  # the first half was still warm-up
        return self._conclude(stable=False)

    def _conclude(self, *, stable: bool) -> StableRateVerdict:
        assert self._start is not None  # noqa: S101 - callers check
        bps = self._rate(self._start, self.elapsed) * 8
        return StableRateVerdict(
            mbps=bps / 1e6,
            stable=stable,
            warmup_s=self._start,
            measured_s=self.elapsed - self._start,
        )

    def _rate(self, start: float, end: float) -> float:
        return self._series.rate(start, end)
