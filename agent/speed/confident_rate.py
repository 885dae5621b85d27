"""A transfer's rate, stopped as soon as it is known to within ±2 % with 95 % confidence.

The ``stable`` rule (stable_rate.py) waits for a stretch of 40 round trips
whose two halves agree: on a 600 ms satellite link that is 24 s a direction
at least, and often the whole 48 s it allows. Most of that time adds nothing
to the figure. This rule judges the same 100 ms samples differently:

1. **Only once the rate has stopped changing.** The stretch under judgement
   starts with the first bytes. While the second half of the stretch is
   faster than the first by more than ``rise_tolerance`` (3 %), or slower
   (slow start overshot and is paying it back), the oldest batch is warm-up
   and is dropped. A rate that still rises or sinks is never reported as
   stable, however steady its samples look.
2. **Batch means.** The stretch is cut into ``BATCHES`` (6) equal batches.
   Throughput samples a round trip apart are not independent (a sawtooth, a
   pacing cycle), so the interval is built on the batches' mean rates, each
   at least ``min_batch_s`` long (a round trip, 0.2 s at least): the
   method of batch means.
3. **The confidence interval.** The mean rate of the stretch is the bytes
   moved over its time (which is also the mean of the batch means); its 95 %
   interval is ``t(0.975, BATCHES-1) * sd(batch means) / sqrt(BATCHES)``. The
   test stops when the halves agree and that half-width is at most
   ``precision`` (2 %) of the mean.

A stretch is never shorter than ``BATCHES`` batches, so at least 6 round
trips on a long link and 1.2 s on a short one. A BBR transfer on a 600 ms
link, lossy or not, stops 6-9 s after it starts (tests/data/speed_traces).
A noisy one runs on until its interval is narrow enough, but not for long:
once the halves first agreed as long ago as the ``stable`` rule's stretch
(``min_stable_s``: 2 s or 40 round trips), it stops and reports the median
of its round trips' rates since that moment (``final``). A transfer whose halves
agree only now and then (a 300 Mbps sender that stalls every 0.8 s) used to run
to the time limit, and moved more data than the ``stable`` rule. One that
never settles at all runs to ``max_duration_s`` (the ``stable`` rule's limit
too) and reports the same median since the ramp ended.

The samples are what the link delivered (``counts_delivered``, see
transfer.py), so a lost segment does not make the count stall and leap.

>>> rule = ConfidentRate(rtt_s=0.08)
>>> for tenth in range(1, 40):
...     rule.add(tenth / 10, tenth * 125_000)   # a steady 10 Mbps
>>> round(rule.verdict().mbps, 1)
10.0
"""

from __future__ import annotations

import itertools
import math
import statistics

from agent.speed.byte_series import Stretch
from agent.speed.stable_rate import StableRateVerdict, plan_durations

BATCHES = 6
T_975 = 2.571  # Student's t, 97.5th percentile, 5 degrees of freedom (BATCHES - 1)


class ConfidentRate(Stretch):
    counts_delivered = True  # segments delivered: a loss does not stall the count (transfer.py)

    def __init__(
        self,
        rtt_s: float,
        *,
        precision: float = 0.02,
        rise_tolerance: float = 0.03,
        batch_rtts: float = 1.0,
        max_duration_s: float | None = None,
    ) -> None:
        self.precision = precision
        self.rise_tolerance = rise_tolerance
        super().__init__()
        self.min_batch_s = max(0.2, batch_rtts * rtt_s)
        self.min_stable_s, planned_max = plan_durations(rtt_s)
        self.max_duration_s = max_duration_s if max_duration_s is not None else planned_max
        self._ramp_end: float | None = None  # where the rate first stopped rising
        self._ramping = True
        self._settled_at: float | None = None  # when the halves first agreed

    @property
    def min_stretch_s(self) -> float:
        return BATCHES * self.min_batch_s

    def add(self, at_s: float, total_bytes: int) -> None:
        super().add(at_s, total_bytes)
        if self._ramp_end is None:
            self._ramp_end = self._start

    def verdict(self) -> StableRateVerdict | None:
        """The rate once it is known to within ``precision``, or None while the test goes on."""
        if self._drop_warmup():
            mean, half_width = self.interval()
            if half_width <= self.precision * mean:
                return self._conclude(stable=True)
        if self._settled_at is None or self._stalled():
            return None
        if self.elapsed - self._settled_at >= self.min_stable_s:
            return self.final()  # settled as long ago as the stable rule's stretch: no longer
        return None

    def final(self) -> StableRateVerdict:
        """The best figure available now (time is up, or the budget is spent).

        The rate never stayed settled. Since it first settled (or, if it never
        did, since it stopped rising), the transfer is cut into batches of a
        round trip, and the figure is the median of their rates: what the link
        carried in a typical round trip. A mean would count the sender's own
        pauses against the link: BBR's connections all pause for about a second
        every 10 s (ProbeRTT), 8 % of a long run on a 600 ms link.
        """
        if self._start is None or self.elapsed <= self._start:
            return StableRateVerdict(0.0, stable=False, warmup_s=self.elapsed, measured_s=0.0)
        self._drop_warmup()
        start = self._settled_at if self._settled_at is not None else self._ramp_end
        assert start is not None  # noqa: S101 - set with the first bytes
        count = max(1, int((self.elapsed - start) / self.min_batch_s))
        edges = [start + i * (self.elapsed - start) / count for i in range(count + 1)]
        rates = [self._series.rate(a, b) for a, b in itertools.pairwise(edges)]
        return StableRateVerdict(
            mbps=statistics.median(rates) * 8 / 1e6,
            stable=False,
            warmup_s=start,
            measured_s=self.elapsed - start,
        )

    def interval(self) -> tuple[float, float]:
        """(mean bytes/s of the stretch, half-width of its 95 % interval, bytes/s)."""
        assert self._start is not None  # noqa: S101 - callers check
        start, end = self._start, self.elapsed
        batch = (end - start) / BATCHES
        edges = [start + i * batch for i in range(BATCHES)] + [end]
        means = [self._series.rate(a, b) for a, b in itertools.pairwise(edges)]
        mean = self._series.rate(start, end)
        return mean, T_975 * statistics.stdev(means) / math.sqrt(BATCHES)

    def _drop_warmup(self) -> bool:
        """Drop warm-up while the rate changes; True once a long enough, settled stretch remains.

        A stretch has settled when its two halves agree within ``rise_tolerance``.
        While the second half is faster (a ramp) or slower (slow start's overshoot
        being paid back), the oldest batch is warm-up and is dropped.
        """
        if self._start is None:
            return False
        while self.elapsed - self._start >= self.min_stretch_s:
            middle = (self._start + self.elapsed) / 2
            first = self._series.rate(self._start, middle)
            second = self._series.rate(middle, self.elapsed)
            if first <= 0 or second <= 0:
                return False  # a stall is no rate: the transfer's timeout judges it
            rising = second > first * (1 + self.rise_tolerance)
            self._ramping = self._ramping and rising  # the first fall or settling ends the ramp
            if abs(second - first) <= self.rise_tolerance * first:
                if self._settled_at is None:
                    self._settled_at = self._start
                return True
            self._start += self.min_batch_s
            if self._ramping:
                self._ramp_end = self._start
        return False

    def _stalled(self) -> bool:
        """Nothing moved over the last batch: a stall is no rate (the transfer's timeout)."""
        return self._series.rate(self.elapsed - self.min_batch_s, self.elapsed) <= 0

    def _conclude(self, *, stable: bool) -> StableRateVerdict:
        assert self._start is not None  # noqa: S101 - callers check
        return StableRateVerdict(
            mbps=self._series.rate(self._start, self.elapsed) * 8 / 1e6,
            stable=stable,
            warmup_s=self._start,
            measured_s=self.elapsed - self._start,
        )
