"""The state rules: late on a miss, down after N misses, up again after M successes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.contract import DeviceResult, DeviceState
from agent.devices.inventory import DeviceConfig
from agent.devices.state import DeviceTracker, Outcome

START = datetime(2026, 11, 22, 8, tzinfo=UTC)
OK = Outcome(DeviceResult.SUCCESS, response_ms=2.0)
MISS = Outcome(DeviceResult.TIMEOUT, detail="no answer")
UP, LATE, DOWN = DeviceState.UP, DeviceState.LATE, DeviceState.DOWN


def _tracker(down_after: int = 3, up_after: int = 2) -> DeviceTracker:
    device = DeviceConfig(
        id="pb",
        kind="panic_button",
        label="Panic",
        check="tcp",
        address="127.0.0.1:9",
        down_after=down_after,
        up_after=up_after,
    )
    return DeviceTracker(device, START)


def _run(tracker: DeviceTracker, outcomes: list[Outcome]) -> list[DeviceState]:
    states = []
    for step, outcome in enumerate(outcomes, 1):
        tracker.observe(outcome, START + timedelta(seconds=step))
        states.append(tracker.state)
    return states


def test_a_device_is_unknown_until_checked() -> None:
    tracker = _tracker()
    observation = tracker.observation()
    assert observation.state is DeviceState.UNKNOWN
    assert observation.result == "not_checked"
    assert observation.result_code == 12


def test_the_first_success_makes_it_up() -> None:
    assert _run(_tracker(), [OK]) == [DeviceState.UP]


def test_down_only_after_n_consecutive_misses() -> None:
    states = _run(_tracker(down_after=3), [OK, MISS, MISS, MISS, MISS])
    assert states == [UP, LATE, LATE, DOWN, DOWN]


def test_up_again_only_after_m_consecutive_successes() -> None:
    tracker = _tracker(down_after=2, up_after=3)
    _run(tracker, [MISS, MISS])
    assert tracker.state is DeviceState.DOWN
    assert _run(tracker, [OK, OK, MISS, OK, OK, OK]) == [DOWN, DOWN, DOWN, DOWN, DOWN, UP]


def test_a_flapping_link_never_shows_down() -> None:
    states = _run(_tracker(down_after=3), [OK, MISS] * 20)
    assert DeviceState.DOWN not in states
    assert set(states) == {DeviceState.UP, DeviceState.LATE}


def test_a_dead_device_answering_now_and_then_stays_down() -> None:
    tracker = _tracker(down_after=3, up_after=2)
    _run(tracker, [MISS] * 3)
    assert set(_run(tracker, [OK, MISS, MISS] * 10)) == {DeviceState.DOWN}


def test_down_after_one_makes_the_first_miss_down() -> None:
    assert _run(_tracker(down_after=1), [OK, MISS]) == [DeviceState.UP, DeviceState.DOWN]


def test_the_change_time_moves_only_on_a_change() -> None:
    tracker = _tracker()
    assert tracker.observe(OK, START + timedelta(seconds=1))
    assert not tracker.observe(OK, START + timedelta(seconds=2))
    assert tracker.changed_at == START + timedelta(seconds=1)
    assert tracker.observe(MISS, START + timedelta(seconds=3))
    observation = tracker.observation()
    assert observation.changed_at == START + timedelta(seconds=3)
    assert (observation.state, observation.result, observation.detail) == (
        DeviceState.LATE,
        "timeout",
        "no answer",
    )


def test_settling_asks_for_quick_rechecks_while_a_change_is_unconfirmed() -> None:
    tracker = _tracker(down_after=3, up_after=2)
    _run(tracker, [OK])
    assert not tracker.settling
    _run(tracker, [MISS])
    assert tracker.settling  # late: confirm the miss
    _run(tracker, [MISS, MISS])
    assert not tracker.settling  # down: back to the normal period
    _run(tracker, [OK])
    assert tracker.settling  # recovering: confirm the success
