"""The confidence stopping rule's decisions on recorded transfers (tests/data/speed_traces).

Each series was recorded by tests/bench/speed_traces.py: the agent's own
transfer on a shaped link, 100 ms samples of the bytes moved in order and of
the bytes the link delivered, with no rule stopping it. Replaying a series
through the rule shows when it would have stopped and what it would have
reported. The truth is the shaped link's own goodput (its rate times
1448/1514, the TCP payload of a full frame, less the loss), which the
long-running iperf3 references of the accuracy benchmark reach too.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.speed.confident_rate import ConfidentRate
from agent.speed.stable_rate import StableRateVerdict

TRACES = Path(__file__).parent / "data" / "speed_traces"


@dataclass(frozen=True)
class Trace:
    rate_mbps: float
    loss: float
    rtt_s: float
    times: list[float]
    moved: list[int]  # in order: read (download) or acknowledged (upload)
    delivered: list[int]  # segments the link delivered, in order or not

    @classmethod
    def load(cls, name: str) -> Trace:
        raw = json.loads((TRACES / f"{name}.json").read_text())
        fields = ("rate_mbps", "loss", "rtt_s", "times", "bytes", "delivered")
        return cls(*(raw[name] for name in fields))

    @property
    def goodput_mbps(self) -> float:
        return self.rate_mbps * 1448 / 1514 * (1 - self.loss)

    def mbps(self, start: float, end: float) -> float:
        """The delivered rate between two moments of the recording."""
        i, j = bisect.bisect_left(self.times, start), bisect.bisect_left(self.times, end)
        j = min(j, len(self.times) - 1)
        seconds = self.times[j] - self.times[i]
        return (self.delivered[j] - self.delivered[i]) * 8 / seconds / 1e6


@dataclass(frozen=True)
class Decision:
    verdict: StableRateVerdict | None  # None: the rule never stopped within the recording
    at_s: float


def replay(trace: Trace, *, series: str = "delivered", **settings: float) -> Decision:
    rule = ConfidentRate(trace.rtt_s, **settings)
    counts = trace.delivered if series == "delivered" else trace.moved
    for at, count in zip(trace.times, counts, strict=True):
        rule.add(at, count)
        if verdict := rule.verdict():
            return Decision(verdict, at)
    return Decision(None, trace.times[-1])


def test_a_steady_transfer_stops_within_a_few_seconds_at_the_links_rate() -> None:
    trace = Trace.load("steady")  # 20 Mbps, 600 ms, BBR: ramps for 3 s, then flat

    decision = replay(trace)

    assert decision.verdict is not None
    assert decision.verdict.stable
    assert decision.at_s < 10, "the stable rule needed 37 s on this recording"
    assert decision.verdict.mbps == pytest.approx(trace.goodput_mbps, rel=0.02)


def test_a_ramping_transfer_is_never_judged_before_its_rate_stops_rising() -> None:
    trace = Trace.load("ramping")  # 100 Mbps, 600 ms: BBR's start-up takes about 5 s
    ramp_end = next(t for t in trace.times if trace.mbps(t, t + 1) >= 0.95 * trace.goodput_mbps)
    assert ramp_end > 3, "the recording ramps for seconds"

    for stop_at in trace.times:  # at no moment of the ramp does the rule stop
        if stop_at >= ramp_end:
            break
        early = Trace(trace.rate_mbps, trace.loss, trace.rtt_s, *_until(trace, stop_at))
        assert replay(early).verdict is None, f"stopped during the ramp, at {stop_at} s"
    decision = replay(trace)
    assert decision.verdict is not None
    assert decision.verdict.stable
    assert decision.verdict.warmup_s >= ramp_end - trace.rtt_s, "the ramp is not in the figure"
    assert decision.verdict.mbps == pytest.approx(trace.goodput_mbps, rel=0.02)


def _until(trace: Trace, moment: float) -> tuple[list[float], list[int], list[int]]:
    n = bisect.bisect_right(trace.times, moment)
    return trace.times[:n], trace.moved[:n], trace.delivered[:n]


def test_a_lossy_transfer_is_judged_on_what_the_link_delivered() -> None:
    trace = Trace.load("lossy")  # 20 Mbps, 600 ms, 0.5 % loss, BBR

    delivered = replay(trace)
    in_order = replay(trace, series="moved")

    # Counted in order, every loss stalls a connection for a round trip and then
    # leaps: the rule sees a rate it cannot trust and keeps going.
    assert in_order.verdict is None
    # Counted as delivered, the rate is as steady as the link, and as fast.
    assert delivered.verdict is not None
    assert delivered.verdict.stable
    assert delivered.at_s < 10
    assert delivered.verdict.mbps == pytest.approx(trace.goodput_mbps, rel=0.02)


def test_a_sawtooth_never_passes_for_a_steady_rate() -> None:
    trace = Trace.load("sawtooth")  # one cubic upload, 20 Mbps, 80 ms, 0.5 % loss
    rates = [trace.mbps(t, t + 1) for t in range(3, 19)]
    assert max(rates) > 2 * min(rates), "the recording saws: each loss halves the window"

    decision = replay(trace)

    # Never judged steady: cut once it first looked settled as long ago as the
    # stable rule's stretch (40 round trips, 3.3 s: several teeth), and reported as
    # the mean since then, teeth and all.
    assert decision.verdict is not None
    assert not decision.verdict.stable
    assert decision.verdict.measured_s >= 40 * trace.rtt_s
    long_run = trace.mbps(3, trace.times[-1])  # after slow start, to the end (20 s)
    assert decision.verdict.mbps == pytest.approx(long_run, rel=0.2)


def test_a_sender_that_backs_off_is_judged_while_it_kept_the_link_busy() -> None:
    # Cubic on a lossy satellite link: 16 connections fill the link for a few
    # seconds, then each loss makes them back off and the rate sinks for good.
    # What the link delivered while busy is its rate; the decline is the sender's.
    trace = Trace.load("backing-off")
    assert trace.mbps(15, 25) < 0.8 * trace.goodput_mbps, "the recording sinks"

    decision = replay(trace)

    assert decision.verdict is not None
    assert decision.verdict.mbps == pytest.approx(trace.goodput_mbps, rel=0.03)


def test_a_falling_rate_is_not_judged_until_it_settles() -> None:
    rule = ConfidentRate(rtt_s=0.1)
    total = 0.0
    for tenth in range(1, 60):  # 20 Mbps falling to 8 Mbps over six seconds
        total += (20 - 2 * tenth / 10) * 1e6 / 8 / 10
        rule.add(tenth / 10, int(total))
        assert rule.verdict() is None, f"judged a falling rate at {tenth / 10} s"


def test_a_stalled_transfer_is_never_judged() -> None:
    rule = ConfidentRate(rtt_s=0.08)
    for tenth in range(1, 20):  # 10 Mbps for two seconds, then nothing more arrives
        rule.add(tenth / 10, tenth * 125_000)
    for tenth in range(20, 100):
        rule.add(tenth / 10, 19 * 125_000)
        assert rule.verdict() is None, f"judged a dead link at {tenth / 10} s"


def test_a_rate_that_never_stays_settled_is_judged_once_the_stable_rule_would_stop() -> None:
    # 1 s of ramp to a 100 Mbps link, then the sender stalls to 60 Mbps for 100 ms
    # every 0.8 s (a busy sender, as the 300 Mbps recordings show). The halves of
    # a short stretch never agree on this: the rule once ran to its time limit.
    rule = ConfidentRate(rtt_s=0.1)
    total, decision = 0.0, None
    for tenth in range(1, int(rule.max_duration_s * 10)):
        mbps = 10 * tenth if tenth <= 10 else (60 if tenth % 8 == 2 else 100)
        total += mbps * 1e6 / 8 / 10
        rule.add(tenth / 10, int(total))
        if decision := rule.verdict():
            break

    assert decision is not None, "the dips never let the rule stop"
    assert rule.elapsed <= 1.5 + rule.min_stable_s, "no longer than the stable rule's stretch"
    assert decision.warmup_s <= 1.5, "judged since the rate first settled"
    # A typical round trip's rate (the median): the link's, not the sender's stalls.
    assert decision.mbps == pytest.approx(100, rel=0.01)
