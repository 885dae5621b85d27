"""The agent's durable outbox: FIFO, bounded, and still there after kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from agent.outbox import Outbox
from tests.support.services import REPO


def test_messages_come_back_in_order_until_removed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    ids = [box.put(f"t/{n}", f"m{n}".encode(), retain=n == 2) for n in range(5)]
    assert ids == sorted(ids)
    first = box.after(0, 3)
    assert [m.payload for m in first] == [b"m0", b"m1", b"m2"]
    assert first[2].retain
    assert [m.topic for m in box.after(first[-1].id, 10)] == ["t/3", "t/4"]
    assert box.remove([ids[0], ids[1], 99_999]) == 2
    assert [m.payload for m in box.after(0, 10)] == [b"m2", b"m3", b"m4"]
    assert [m.payload for m in box.get([ids[4], ids[0], ids[2]])] == [b"m2", b"m4"]
    stats = box.stats()
    assert (stats.messages, stats.bytes, stats.dropped) == (3, 6, 0)


def test_what_was_stored_is_there_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    kept = box.put("t", b"kept")
    box.remove([box.put("t", b"sent")])
    box.close()
    again = Outbox(path)
    assert [(m.id, m.payload) for m in again.after(0, 10)] == [(kept, b"kept")]
    assert again.stats().messages == 1
    assert again.put("t", b"next") > kept


def test_every_put_that_returned_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from pathlib import Path; from agent.outbox import Outbox\n"
                f"box = Outbox(Path({str(path)!r}))\n"
                "for n in range(100000):\n"
                "    box.put('t', str(n).encode())\n"
                "    print(n, flush=True)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert writer.stdout is not None
    for line in writer.stdout:  # bounded by pytest-timeout
        if line.strip() == "200":
            break
    writer.send_signal(signal.SIGKILL)
    confirmed = 201 + sum(  # lines 0 to 200 were read above
        1 for line in writer.stdout if line.strip()
    )
    writer.wait()
    stored = [int(m.payload) for m in Outbox(path).after(0, 1_000_000)]
    assert stored[:confirmed] == list(range(confirmed))  # nothing confirmed is missing
    assert len(stored) <= confirmed + 1  # at most the one being written when killed


def test_when_full_the_oldest_go_first_and_are_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=100)
    for n in range(30):
        box.put("t", b"%09d" % n)  # 9 bytes each: 11 fit
    payloads = [int(m.payload) for m in box.after(0, 100)]
    assert payloads == list(range(19, 30))
    assert box.stats().dropped == 19
    box.close()
    assert Outbox(tmp_path / "outbox.db", max_bytes=100).stats().dropped == 19  # kept on disk


def test_messages_older_than_the_age_limit_are_dropped_and_counted(tmp_path: Path) -> None:
    now = [1_000_000.0]
    box = Outbox(tmp_path / "outbox.db", max_age_s=3600, clock=lambda: now[0])
    box.put("t", b"old")
    now[0] += 3000
    box.put("t", b"younger")
    now[0] += 1000  # the first is now 4000 s old
    box.put("t", b"new")
    assert [m.payload for m in box.after(0, 10)] == [b"younger", b"new"]
    stats = box.stats()
    assert (stats.dropped, stats.oldest_age_s) == (1, 1000)


def test_only_a_receipt_naming_one_of_its_messages_dates_the_last_central_store(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.put("t/KZ-1/speed", b"{}", message_id="mine")
    # A receipt that only refuses (an unknown school's), then one naming another's id.
    box.confirm([], 1000.0)
    box.refuse([("refused", "unknown_school", "not in the registry")])
    box.confirm(["not-here"], 1001.0)
    assert box.delivery().last_stored_at is None
    assert box.confirm(["mine"], 1002.0).removed == 1
    assert box.delivery().last_stored_at == 1002.0
    box.confirm(["mine"], 1003.0)  # a repeat's receipt: that message is gone already
    assert box.delivery().last_stored_at == 1002.0
    box.confirm([], 1004.0, sent_past=True)  # a status sent past the outbox was stored
    box.confirm([], 900.0, sent_past=True)  # an older receipt arriving late
    assert box.delivery().last_stored_at == 1004.0


def test_the_limits_hold_for_messages_waiting_for_a_receipt_or_the_clock(tmp_path: Path) -> None:
    now = [1_000_000.0]
    box = Outbox(
        tmp_path / "outbox.db",
        max_age_s=3600,
        clock=lambda: now[0],
        monotonic=lambda: now[0],  # a clock that is right: both run alike
        boot_id="boot-1",
    )
    acked = box.put("t", b"acked")
    box.acked([acked])  # the broker has it; it waits for a receipt
    held = box.put("t", b"held", held=("boot-1", now[0]))
    now[0] += 3000
    younger = box.put("t", b"younger")
    box.acked([younger])
    now[0] += 1000  # the first two are 4000 s old
    new = box.put("t", b"new")
    assert [m.payload for m in box.get([acked, held, younger, new])] == [b"younger", b"new"]
    stats = box.stats()
    assert (stats.dropped, stats.awaiting_receipt, stats.held, stats.oldest_age_s) == (
        2, 1, 0, 1000,
    )  # fmt: skip


def test_when_full_messages_waiting_for_a_receipt_or_the_clock_go_first_too(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=100, boot_id="boot-1")
    ids = [box.put("t", b"%09d" % 0), box.put("t", b"%09d" % 1, held=("boot-1", 1.0))]
    box.acked(ids[:1])
    ids += [box.put("t", b"%09d" % n) for n in range(2, 30)]  # 9 bytes each: 11 fit
    assert [int(m.payload) for m in box.get(ids)] == list(range(19, 30))
    stats = box.stats()
    assert (stats.dropped, stats.awaiting_receipt, stats.held) == (19, 0, 0)


def test_a_message_held_for_the_clock_is_aged_by_its_true_age_not_by_the_wall_clock(
    tmp_path: Path,
) -> None:
    # A Raspberry Pi off for 40 days boots with the time it last saved; when NTP
    # syncs, the wall clock jumps 40 days on while a minute passes.
    wall, monotonic = [1_000_000.0], [500.0]
    box = Outbox(
        tmp_path / "outbox.db",
        max_age_s=30 * 86_400,
        clock=lambda: wall[0],
        monotonic=lambda: monotonic[0],
        boot_id="boot-2",
    )
    held = box.put("t", b"held", held=("boot-2", 490.0))  # measured 10 s ago
    before = box.put("t", b"before the reboot", held=("boot-1", 9_000.0))
    wall[0] += 40 * 86_400
    monotonic[0] += 60
    after = box.put("t", b"after the jump")
    assert [m.payload for m in box.get([held, before, after])] == [
        b"held", b"before the reboot", b"after the jump",
    ]  # fmt: skip
    stats = box.stats()
    assert (stats.dropped, stats.held, stats.oldest_age_s) == (0, 2, 70)

    # Its true age does reach the limit; one held in an earlier boot has none (the
    # publisher drops it as undatable), and the size limit still bounds it.
    wall[0] += 30 * 86_400 + 1
    monotonic[0] += 30 * 86_400 + 1
    box.put("t", b"a month on")
    assert [m.payload for m in box.get([held, before, after])] == [b"before the reboot"]
    assert box.stats().dropped == 2


def test_a_held_message_once_dated_is_aged_from_its_true_time(tmp_path: Path) -> None:
    wall = [1_000_000.0]
    box = Outbox(
        tmp_path / "outbox.db",
        max_age_s=3600,
        clock=lambda: wall[0],
        monotonic=lambda: 100.0,
        boot_id="boot-1",
    )
    held = box.put("t", b"held", held=("boot-1", 90.0))
    wall[0] += 5 * 86_400  # NTP synced: the clock was five days behind
    released = box.release(held, b"dated", dated=wall[0] - 10)
    assert released is not None
    assert released.stored_at == wall[0] - 10
    assert box.stats().oldest_age_s == 10
    box.put("t", b"next")
    assert [m.payload for m in box.after(0, 10)] == [b"dated", b"next"]
    wall[0] += 3600
    box.put("t", b"an hour on")
    assert [m.payload for m in box.after(0, 10)] == [b"next", b"an hour on"]
