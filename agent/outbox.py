"""Messages on disk until they are stored centrally: the agent's durable outbox.

SQLite in WAL mode with ``synchronous=FULL``: a message is on disk when
:meth:`Outbox.put` returns, and survives kill -9 and power loss. A message
waits for the broker's PUBACK, then (when the collectors send receipts) for
the collector's receipt that InfluxDB stored it, or refused it; only then does
it leave. One the broker acknowledged but no receipt named is sent again
(:meth:`Outbox.take_overdue`). The outbox is bounded by size and age; when
full, the oldest messages go first, and every drop is counted (the count
survives restarts and is reported in the agent status).

Both limits hold for every message, whatever it waits for (the broker, a
receipt, or the clock). A message's age is its true age: ``stored_at`` by the
wall clock, except for one held for the clock, whose ``stored_at`` was read
from a clock not believed (a Raspberry Pi boots with the time it last saved,
perhaps weeks behind, and jumps when NTP syncs). A held message is aged by the
monotonic clock since its measurement, in the boot it was taken; one held in
an earlier boot has no true age and is not aged out (it can never be dated;
the publisher drops it as undatable). Once dated, its ``stored_at`` becomes
the true time of its measurement.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.clock_trust import kernel_boot_id

MB = 1_000_000
DEFAULT_MAX_BYTES = 50 * MB
DEFAULT_MAX_AGE_S = 30 * 86_400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS facts (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Columns added since the first outbox; an older file gains them when opened.
_ADDED = {
    "message_id": "TEXT",
    "acked_at": "REAL",  # the broker's PUBACK (NULL: waiting for the broker)
    "resends": "INTEGER NOT NULL DEFAULT 0",  # sent again for want of a receipt
    # Held until the clock can date it: the kernel's boot id and the monotonic time
    # of the measurement (NULL: not held).
    "held_boot": "TEXT",
    "held_monotonic": "REAL",
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_message_id ON outbox (message_id);
CREATE INDEX IF NOT EXISTS outbox_acked_at ON outbox (acked_at);
"""
# The longest an unconfirmed message waits before it is sent again, however often it was.
MAX_RESEND_WAIT_S = 86_400.0
_BACKOFF_STEPS = 10


@dataclass(frozen=True)
class Stored:
    id: int
    topic: str
    payload: bytes
    retain: bool
    stored_at: float


@dataclass(frozen=True)
class OutboxStats:
    messages: int
    bytes: int
    oldest_age_s: float | None
    dropped: int
    awaiting_broker: int = 0
    awaiting_receipt: int = 0
    held: int = 0


@dataclass(frozen=True)
class Held:
    """A message held until the clock can date it."""

    id: int
    topic: str
    payload: bytes
    boot_id: str
    monotonic: float


@dataclass(frozen=True)
class LastRefusal:
    reason: str
    detail: str
    message_id: str | None
    at: float


@dataclass(frozen=True)
class Delivery:
    """What receipts said, kept on disk for the status and ``doctor``."""

    refused: dict[str, int] = field(default_factory=dict)
    last_refusal: LastRefusal | None = None
    last_stored_at: float | None = None
    confirmed: int = 0
    undatable: int = 0
    receipts: bool = False  # the collectors announced receipts (as last heard)

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


@dataclass(frozen=True)
class Confirmed:
    """What one receipt removed: how many, and the newest PUBACK time among them."""

    removed: int
    latest_acked_at: float | None


class Outbox:
    """A FIFO of messages on disk; safe to use from several threads."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        boot_id: str | None = None,
    ) -> None:
        """``monotonic`` and ``boot_id`` (the kernel's, by default) age the messages held
        for the clock: they must be those the measurements were held with."""
        self.path = path
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._clock = clock
        self._monotonic = monotonic
        self._boot_id = boot_id or kernel_boot_id()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # A queue read from its head: a small page cache does (SQLite's default is 2 MB).
        self._db.execute("PRAGMA cache_size=-256")
        self._db.executescript(_SCHEMA)
        self._migrate()
        row = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox")
        self._count, self._bytes = row.fetchone()

    def _migrate(self) -> None:
        """Give an outbox written by an older agent the columns it lacks."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for name, kind in _ADDED.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")
        if "message_id" not in have:
            self._db.execute(
                "UPDATE outbox SET message_id = "
                "json_extract(CAST(payload AS TEXT), '$.message_id') "
                "WHERE message_id IS NULL AND json_valid(CAST(payload AS TEXT))"
            )
        self._db.executescript(_INDEXES)

    def put(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        message_id: str | None = None,
        held: tuple[str, float] | None = None,
    ) -> int:
        """Store one message (on disk when this returns); return its id, in FIFO order.

        ``message_id`` is what receipts name it by; by default, the payload's own.
        ``held``: (kernel boot id, monotonic time of the measurement) for a message
        kept back until its time is known (:meth:`release`).
        """
        if message_id is None:
            message_id = _message_id_of(payload)
        with self._lock, self._transaction():
            boot, monotonic = held if held is not None else (None, None)
            cursor = self._db.execute(
                "INSERT INTO outbox (topic, payload, retain, stored_at, message_id, held_boot, "
                "held_monotonic) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (topic, payload, int(retain), self._clock(), message_id, boot, monotonic),
            )
            self._count += 1
            self._bytes += len(payload)
            self._enforce_limits()
            return int(cursor.lastrowid or 0)

    def after(self, last_id: int, limit: int) -> list[Stored]:
        """Up to ``limit`` messages waiting for the broker with an id above ``last_id``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, retain, stored_at FROM outbox "
                "WHERE id > ? AND acked_at IS NULL AND held_boot IS NULL ORDER BY id LIMIT ?",
                (last_id, limit),
            ).fetchall()
        return [Stored(r[0], r[1], bytes(r[2]), bool(r[3]), r[4]) for r in rows]

    def get(self, ids: Iterable[int]) -> list[Stored]:
        """The messages with these ids that are still stored, oldest first."""
        wanted = sorted(set(ids))
        found: list[Stored] = []
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT id, topic, payload, retain, stored_at FROM outbox "  # noqa: S608
                    f"WHERE id IN ({marks}) ORDER BY id",
                    chunk,
                ).fetchall()
                found += [Stored(r[0], r[1], bytes(r[2]), bool(r[3]), r[4]) for r in rows]
        return found

    def remove(self, ids: Iterable[int]) -> int:
        """Forget acknowledged messages; return how many were still stored."""
        wanted = list(ids)
        if not wanted:
            return 0
        removed = 0
        with self._lock, self._transaction():
            for message_id in wanted:
                removed += len(self._forget("id", message_id))
        return removed

    def contains(self, message_id: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM outbox WHERE id = ?", (message_id,)).fetchone()
        return row is not None

    def awaits_broker(self, message_id: int) -> bool:
        """Whether outbox id ``message_id`` is stored and not yet acknowledged by the broker."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM outbox WHERE id = ? AND acked_at IS NULL", (message_id,)
            ).fetchone()
        return row is not None

    # -- receipts ------------------------------------------------------------

    def acked(self, ids: Iterable[int]) -> None:
        """The broker acknowledged these: they now wait for a receipt."""
        with self._lock, self._transaction():
            now = self._clock()
            self._db.executemany(
                "UPDATE outbox SET acked_at = ? WHERE id = ? AND acked_at IS NULL",
                [(now, message_id) for message_id in ids],
            )

    def confirm(
        self, message_ids: Iterable[str], stored_at: float, *, sent_past: bool = False
    ) -> Confirmed:
        """A receipt says InfluxDB stored these messages (at ``stored_at``): forget them.

        The time of the last central store moves only when one of them was this
        outbox's, or (``sent_past``) a message of this agent sent past the outbox
        (a status while the clock is wrong): a receipt that only refuses, or names
        only messages already gone, says nothing of this agent's data being stored.
        It never moves back (receipts from several collectors may cross).
        """
        removed, latest = 0, None
        with self._lock, self._transaction():
            for message_id in message_ids:
                for acked_at in self._forget("message_id", message_id):
                    removed += 1
                    if acked_at is not None and (latest is None or acked_at > latest):
                        latest = acked_at
            if removed:
                self._add_counter("confirmed", removed)
            if removed or sent_past:
                self._db.execute(
                    "INSERT INTO facts (name, value) VALUES ('last_stored_at', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value "
                    "WHERE CAST(excluded.value AS REAL) > CAST(value AS REAL)",
                    (str(stored_at),),
                )
        return Confirmed(removed, latest)

    def refuse(self, refusals: Iterable[tuple[str | None, str, str]]) -> int:
        """A receipt says these ``(message_id, reason, detail)`` will never be stored.

        Each is counted by reason and the last is kept for ``doctor``; the
        messages named leave the outbox. Return how many left.
        """
        removed = 0
        with self._lock, self._transaction():
            for message_id, reason, detail in refusals:
                self._add_counter(f"refused:{reason}", 1)
                last = {"reason": reason, "detail": detail, "message_id": message_id}
                self._set_fact("last_refusal", json.dumps(last | {"at": self._clock()}))
                if message_id is not None:
                    removed += len(self._forget("message_id", message_id))
        return removed

    def release_acked(self) -> int:
        """Receipts are off: what the broker acknowledged is done with; return how many."""
        with self._lock, self._transaction():
            rows = self._db.execute(
                "DELETE FROM outbox WHERE acked_at IS NOT NULL RETURNING length(payload)"
            ).fetchall()
            self._count -= len(rows)
            self._bytes -= sum(size for (size,) in rows)
        return len(rows)

    def take_overdue(
        self, *, grace_s: float, timeout_s: float, confirmed_after: float | None, limit: int
    ) -> list[Stored]:
        """Messages the broker acknowledged that should have had a receipt by now.

        One is overdue when a message acknowledged after it was confirmed
        (``confirmed_after`` is the newest such PUBACK time) and it has waited
        ``grace_s``, or when it has waited ``timeout_s`` regardless. Both waits
        double with each resend (up to a day). The messages returned wait for
        the broker again.
        """
        now = self._clock()
        backoff = f"(1 << min(resends, {_BACKOFF_STEPS}))"
        with self._lock, self._transaction():
            rows = self._db.execute(
                "SELECT id, topic, payload, retain, stored_at FROM outbox "  # noqa: S608
                "WHERE acked_at IS NOT NULL AND ("
                f"  (acked_at < ? AND acked_at + min(? * {backoff}, ?) <= ?)"
                f"  OR acked_at + min(? * {backoff}, ?) <= ?"
                ") ORDER BY id LIMIT ?",
                (
                    confirmed_after if confirmed_after is not None else -1.0,
                    grace_s, MAX_RESEND_WAIT_S, now,
                    timeout_s, MAX_RESEND_WAIT_S, now,
                    limit,
                ),
            ).fetchall()  # fmt: skip
            self._db.executemany(
                "UPDATE outbox SET acked_at = NULL, resends = resends + 1 WHERE id = ?",
                [(row[0],) for row in rows],
            )
        return [Stored(r[0], r[1], bytes(r[2]), bool(r[3]), r[4]) for r in rows]

    # -- the clock ---------------------------------------------------------

    def held(self, limit: int = 1000) -> list[Held]:
        """Messages waiting for the clock, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, held_boot, held_monotonic FROM outbox "
                "WHERE held_boot IS NOT NULL ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [Held(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def release(self, message_id: int, payload: bytes, *, dated: float) -> Stored | None:
        """The held message ``message_id``, re-stamped as ``payload``, may now be sent.

        ``dated``: the true time of its measurement, its ``stored_at`` from now on,
        by which the age limit judges it."""
        with self._lock, self._transaction():
            old = self._db.execute(
                "SELECT length(payload) FROM outbox WHERE id = ? AND held_boot IS NOT NULL",
                (message_id,),
            ).fetchone()
            if old is None:
                return None
            row = self._db.execute(
                "UPDATE outbox SET payload = ?, stored_at = ?, held_boot = NULL, "
                "held_monotonic = NULL WHERE id = ? "
                "RETURNING id, topic, payload, retain, stored_at",
                (payload, dated, message_id),
            ).fetchone()
            self._bytes += len(payload) - old[0]
        return Stored(row[0], row[1], bytes(row[2]), bool(row[3]), row[4])

    def undatable(self, ids: Iterable[int]) -> int:
        """Held messages that can never be dated (taken before a reboot): dropped, counted."""
        removed = 0
        with self._lock, self._transaction():
            for message_id in ids:
                removed += len(self._forget("id", message_id))
            if removed:
                self._add_counter("undatable", removed)
        return removed

    def delivery(self) -> Delivery:
        """Refusals by reason, the last refusal, and when a receipt last confirmed a store."""
        with self._lock:
            return _delivery(self._db)

    def fact(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM facts WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_fact(self, name: str, value: str) -> None:
        with self._lock, self._transaction():
            self._set_fact(name, value)

    def stats(self) -> OutboxStats:
        with self._lock:
            oldest, acked, held = self._db.execute(
                f"SELECT max({_AGE}), count(acked_at), count(held_boot) FROM outbox",  # noqa: S608
                self._ages(),
            ).fetchone()
            dropped = self._dropped()
            return OutboxStats(
                messages=self._count,
                bytes=self._bytes,
                oldest_age_s=None if oldest is None else max(0.0, oldest),
                dropped=dropped,
                awaiting_broker=self._count - acked - held,
                awaiting_receipt=acked,
                held=held,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- inside the lock and a transaction ----------------------------------

    def _ages(self) -> dict[str, object]:
        return {"now": self._clock(), "boot": self._boot_id, "monotonic": self._monotonic()}

    def _enforce_limits(self) -> None:
        dropped = 0
        for size in self._db.execute(
            f"DELETE FROM outbox WHERE {_AGE} > :max_age RETURNING length(payload)",  # noqa: S608
            self._ages() | {"max_age": self._max_age_s},
        ).fetchall():
            dropped += 1
            self._bytes -= size[0]
        while self._bytes > self._max_bytes and self._count - dropped > 1:
            row = self._db.execute(
                "DELETE FROM outbox WHERE id = (SELECT min(id) FROM outbox) "
                "RETURNING length(payload)"
            ).fetchone()
            if row is None:
                break
            dropped += 1
            self._bytes -= row[0]
        if dropped:
            self._count -= dropped
            self._add_counter("dropped", dropped)

    def _forget(self, column: str, value: object) -> list[float | None]:
        """Delete the rows whose ``column`` (``id`` or ``message_id``) is ``value``, keeping
        the counts; return each one's PUBACK time."""
        rows = self._db.execute(
            f"DELETE FROM outbox WHERE {column} = ? RETURNING length(payload), acked_at",  # noqa: S608
            (value,),
        ).fetchall()
        for size, _ in rows:
            self._count -= 1
            self._bytes -= size
        return [acked_at for _, acked_at in rows]

    def _add_counter(self, name: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    def _set_fact(self, name: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO facts (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _dropped(self) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


# A message's true age (SQL, with :now, :boot and :monotonic): by the wall clock, or for
# one held for the clock, by the monotonic clock in its boot; NULL for one held in an
# earlier boot (it has no true age).
_AGE = (
    "(CASE WHEN held_boot IS NULL THEN :now - stored_at "
    "WHEN held_boot = :boot THEN :monotonic - held_monotonic END)"
)


def _message_id_of(payload: bytes) -> str | None:
    try:
        found = json.loads(payload).get("message_id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _delivery(db: sqlite3.Connection) -> Delivery:
    rows = db.execute("SELECT name, value FROM counters WHERE name LIKE 'refused:%'")
    refused = {name.removeprefix("refused:"): int(value) for name, value in rows}
    counters = dict(
        db.execute("SELECT name, value FROM counters WHERE name IN ('confirmed', 'undatable')")
    )
    facts = dict(db.execute("SELECT name, value FROM facts").fetchall())
    last = None
    if "last_refusal" in facts:
        data = json.loads(facts["last_refusal"])
        last = LastRefusal(data["reason"], data["detail"], data["message_id"], data["at"])
    stored = facts.get("last_stored_at")
    return Delivery(
        refused=refused,
        last_refusal=last,
        last_stored_at=float(stored) if stored is not None else None,
        confirmed=int(counters.get("confirmed", 0)),
        undatable=int(counters.get("undatable", 0)),
        receipts=facts.get("receipts") == "on",
    )


def read_delivery(path: Path) -> tuple[OutboxStats, Delivery]:
    """What the agent's outbox at ``path`` says, read without writing to it (for ``doctor``,
    beside a running agent, perhaps as another user). Raises :class:`sqlite3.Error`."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        count, size, oldest, acked, held = db.execute(
            f"SELECT count(*), coalesce(sum(length(payload)), 0), max({_AGE}), "  # noqa: S608
            "count(acked_at), count(held_boot) FROM outbox",
            {"now": time.time(), "boot": kernel_boot_id(), "monotonic": time.monotonic()},
        ).fetchone()
        dropped = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        stats = OutboxStats(
            messages=count,
            bytes=size,
            oldest_age_s=None if oldest is None else max(0.0, oldest),
            dropped=int(dropped[0]) if dropped else 0,
            awaiting_broker=count - acked - held,
            awaiting_receipt=acked,
            held=held,
        )
        return stats, _delivery(db)
    finally:
        db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one fsync'd commit per call."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_rest: object) -> None:
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")
