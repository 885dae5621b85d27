"""The collector's ledger of broker answers: it keeps what someone waits for, and only that."""

from __future__ import annotations

import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.broker import AckLedger

SUCCESS = ReasonCode(PacketTypes.PUBACK)
REFUSED = ReasonCode(PacketTypes.PUBACK, "Not authorized")


def _answer(ledger: AckLedger, mid: int, reason: ReasonCode = SUCCESS) -> None:
    ledger.on_publish(None, None, mid, reason, None)  # type: ignore[arg-type]


def test_a_tracked_publish_gets_its_answer_and_refusals_are_named() -> None:
    ledger = AckLedger()
    ledger.track(1)
    ledger.track(2)
    _answer(ledger, 1)
    _answer(ledger, 2, REFUSED)
    assert ledger.wait({1, 2}, timeout=1) == (0, ["Not authorized"])


def test_an_answer_that_comes_before_the_mid_is_tracked_still_counts() -> None:
    ledger = AckLedger()
    _answer(ledger, 7)  # the broker was quicker than the publishing thread
    ledger.track(7)
    assert ledger.wait({7}, timeout=0) == (0, [])


def test_answers_nobody_waits_for_are_not_kept() -> None:
    """The collector's receipts: each gets an on_publish, none is waited for."""
    ledger = AckLedger()
    ledger.EARLY_S = 0.05
    for mid in range(1, 20_001):
        _answer(ledger, mid)
    time.sleep(0.1)
    _answer(ledger, 20_001)  # an answer prunes the expired ones
    assert len(ledger._early) == 1
    assert not ledger._answers


def test_an_old_answer_does_not_confirm_a_later_publish_with_the_same_mid() -> None:
    ledger = AckLedger()
    ledger.EARLY_S = 0.05
    _answer(ledger, 9)  # a receipt's answer, long ago
    time.sleep(0.1)
    ledger.track(9)  # a dead letter that reuses the mid
    assert ledger.wait({9}, timeout=0.1) == (1, [])


def test_a_late_answer_after_the_waiter_gave_up_is_not_kept_for_good() -> None:
    ledger = AckLedger()
    ledger.EARLY_S = 0.05
    ledger.track(3)
    assert ledger.wait({3}, timeout=0.01) == (1, [])
    _answer(ledger, 3)
    time.sleep(0.1)
    _answer(ledger, 4)
    assert 3 not in ledger._early
    assert not ledger._answers
