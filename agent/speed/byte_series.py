"""Bytes moved so far, sampled over time: the input every stopping rule judges."""

from __future__ import annotations

import bisect


class ByteSeries:
    """``(seconds since the start, bytes moved by then)`` samples, in order.

    >>> series = ByteSeries()
    >>> series.add(1.0, 1_000)
    >>> series.rate(0.0, 0.5)   # bytes per second, interpolated between samples
    1000.0
    """

    def __init__(self) -> None:
        self._times: list[float] = [0.0]
        self._bytes: list[int] = [0]
        self.first_bytes_at: float | None = None  # the sample before bytes first moved

    @property
    def total_bytes(self) -> int:
        return self._bytes[-1]

    @property
    def elapsed(self) -> float:
        return self._times[-1]

    def add(self, at_s: float, total_bytes: int) -> None:
        """Record that ``total_bytes`` had moved ``at_s`` seconds after the start."""
        if at_s <= self._times[-1]:
            return
        self._times.append(at_s)
        self._bytes.append(total_bytes)
        if self.first_bytes_at is None and total_bytes > 0:
            self.first_bytes_at = self._times[-2]

    def rate(self, start: float, end: float) -> float:
        """Bytes per second between two moments, interpolating between samples."""
        if end <= start:
            return 0.0
        return (self.bytes_at(end) - self.bytes_at(start)) / (end - start)

    def bytes_at(self, moment: float) -> float:
        i = bisect.bisect_left(self._times, moment)
        if i < len(self._times) and self._times[i] == moment:
            return float(self._bytes[i])
        if i == 0:
            return float(self._bytes[0])
        if i >= len(self._times):
            return float(self._bytes[-1])
        t0, t1 = self._times[i - 1], self._times[i]
        b0, b1 = self._bytes[i - 1], self._bytes[i]
        return b0 + (b1 - b0) * (moment - t0) / (t1 - t0)


class Stretch:
    """The samples, and where the stretch a stopping rule judges starts (its first bytes)."""

    def __init__(self) -> None:
        self._series = ByteSeries()
        self._start: float | None = None  # start of the stretch under judgement

    @property
    def total_bytes(self) -> int:
        return self._series.total_bytes

    @property
    def elapsed(self) -> float:
        return self._series.elapsed

    def add(self, at_s: float, total_bytes: int) -> None:
        """Record that ``total_bytes`` had moved ``at_s`` seconds after the start."""
        self._series.add(at_s, total_bytes)
        if self._start is None:
            self._start = self._series.first_bytes_at  # the stretch starts with the first bytes
