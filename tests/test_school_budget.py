"""A school's message budget: floods held to the contract's rate, replays never refused."""

from __future__ import annotations

from collector.school_budget import SchoolBudget, school_of

DAY_S = 86_400.0
T0 = 1_796_000_000.0


def test_a_flood_claiming_the_present_is_held_to_the_burst_then_the_hourly_rate() -> None:
    budget = SchoolBudget(messages_per_hour=1200, burst=1000)
    accepted = sum(budget.allow("KZ-F", T0 + i / 5000, T0) for i in range(5000))
    assert accepted == 1000
    # ten minutes later it has earned 1200 / 6 = 200 more, and no more than that
    later = T0 + 600
    assert sum(budget.allow("KZ-F", later + i / 5000, later) for i in range(1000)) == 200


def test_an_outbox_replayed_in_a_minute_is_never_refused() -> None:
    """30 days of a 10-device school (about 580 messages a day) arriving within 60 s."""
    budget = SchoolBudget(messages_per_hour=1200, burst=1000)
    count = 30 * 580
    accepted = sum(
        budget.allow("KZ-R", T0 + i * 60 / count, T0 - 30 * DAY_S + i * 30 * DAY_S / count)
        for i in range(count)
    )
    assert accepted == count


def test_a_backlog_drained_after_a_collector_outage_is_never_refused() -> None:
    """Eight hours of one school queued on the broker, delivered in ten seconds."""
    budget = SchoolBudget(messages_per_hour=1200, burst=1000)
    count = 8 * 25
    accepted = sum(
        budget.allow("KZ-Q", T0 + i * 10 / count, T0 - 8 * 3600 + i * 8 * 3600 / count)
        for i in range(count)
    )
    assert accepted == count


def test_messages_without_a_time_spend_the_budget_like_any_other() -> None:
    budget = SchoolBudget(messages_per_hour=1200, burst=10)
    assert sum(budget.allow("KZ-M", T0, None) for _ in range(50)) == 10


def test_one_school_over_budget_costs_another_nothing() -> None:
    budget = SchoolBudget(messages_per_hour=1200, burst=10)
    assert sum(budget.allow("KZ-F", T0, T0) for _ in range(100)) == 10
    assert budget.allow("KZ-N", T0, T0)


def test_refilled_buckets_are_forgotten_so_memory_follows_active_schools() -> None:
    budget = SchoolBudget(messages_per_hour=3600, burst=10)
    for school in range(1000):
        budget.allow(f"KZ-{school}", T0, T0)
    budget.allow("KZ-busy", T0 + 5, T0 + 5)
    for _ in range(9):
        budget.allow("KZ-busy", T0 + 5, T0 + 5)
    assert budget.forget_full(T0 + 5) == 1000  # one token each: full again after 1 s
    assert len(budget) == 1


def test_the_school_is_read_from_the_topic_under_any_root() -> None:
    assert school_of("schools/KZ-A/speed") == "KZ-A"
    assert school_of("t-1/schools/KZ-A/agent") == "KZ-A"
    assert school_of("nothing") == ""
