"""Messages on disk until the broker acknowledged them: the agent's durable outbox.

SQLite in WAL mode with ``synchronous=FULL``: a message is on disk when
:meth:`Outbox.put` returns, and survives kill -9 and power loss. It leaves only
through :meth:`Outbox.remove`, once the broker acknowledged it (QoS 1). The
outbox is bounded by size and age; when full, the oldest messages go first,
and every drop is counted (the count survives restarts and is reported in the
agent status).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

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
"""


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


class Outbox:
    """A FIFO of messages on disk; safe to use from several threads."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # A queue read from its head: a small page cache does (SQLite's default is 2 MB).
        self._db.execute("PRAGMA cache_size=-256")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox")
        self._count, self._bytes = row.fetchone()

    def put(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Store one message (on disk when this returns); return its id, in FIFO order."""
        with self._lock, self._transaction():
            cursor = self._db.execute(
                "INSERT INTO outbox (topic, payload, retain, stored_at) VALUES (?, ?, ?, ?)",
                (topic, payload, int(retain), self._clock()),
            )
            self._count += 1
            self._bytes += len(payload)
            self._enforce_limits()
            return int(cursor.lastrowid or 0)

    def after(self, last_id: int, limit: int) -> list[Stored]:
        """Up to ``limit`` messages with an id above ``last_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, retain, stored_at FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
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
                row = self._db.execute(
                    "DELETE FROM outbox WHERE id = ? RETURNING length(payload)", (message_id,)
                ).fetchone()
                if row is not None:
                    removed += 1
                    self._count -= 1
                    self._bytes -= row[0]
        return removed

    def contains(self, message_id: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM outbox WHERE id = ?", (message_id,)).fetchone()
        return row is not None

    def stats(self) -> OutboxStats:
        with self._lock:
            oldest = self._db.execute("SELECT min(stored_at) FROM outbox").fetchone()[0]
            dropped = self._dropped()
            return OutboxStats(
                messages=self._count,
                bytes=self._bytes,
                oldest_age_s=None if oldest is None else max(0.0, self._clock() - oldest),
                dropped=dropped,
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- inside the lock and a transaction ----------------------------------

    def _enforce_limits(self) -> None:
        dropped = 0
        too_old = self._clock() - self._max_age_s
        for size in self._db.execute(
            "DELETE FROM outbox WHERE stored_at < ? RETURNING length(payload)", (too_old,)
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
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (dropped,),
            )

    def _dropped(self) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one fsync'd commit per call."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_rest: object) -> None:
        self._db.execute("ROLLBACK" if kind is not None else "COMMIT")
