"""Batches received messages into InfluxDB and acknowledges each only once it is stored.

One thread runs :meth:`Pipeline.run`. For each batch it decodes every message,
writes the points, sends rejects to the dead-letter topic, publishes each
school a receipt naming its messages stored and refused, and only then
acknowledges the MQTT messages. While InfluxDB is unavailable the batch is
retried with growing, jittered delays and nothing is acknowledged, so the
broker stops sending once the collector's receive window is full.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from agent.contract import (
    RECEIPT_MAX_IDS,
    AgentStatus,
    DeadLetter,
    DevicesReport,
    RejectReason,
    StatusReason,
    is_valid_id,
    receipts_topic,
)
from collector.counters import Counters, over_budget_lines
from collector.current_state import LateMarks
from collector.device_book import DeviceBook, Numbering
from collector.influx import InfluxError, InfluxRejected, InfluxUnavailable, InfluxWriter
from collector.influx.query import InfluxQL, influx_lookup
from collector.intake import Rejection, Trust, decode
from collector.points import NOWHERE, Place, PointMaker, ns
from collector.registry import SchoolRegistry
from collector.school_budget import SchoolBudget, school_of
from collector.settings import CollectorSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    """One MQTT message as received; ``generation`` names the connection it came on."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    generation: int
    arrived_ns: int


class Outlet(Protocol):
    """The MQTT side the pipeline answers through."""

    def is_current(self, item: Incoming) -> bool: ...
    def ack(self, item: Incoming) -> None: ...
    def dead_letter(self, letters: list[DeadLetter]) -> bool: ...
    def receipt(self, topic: str, payload: bytes) -> None: ...


MARK = -1  # the item index of a line that belongs to no message (a stored_late marker)
# Messages waiting in the hand-over queue after a batch that say a backlog is being
# drained. The national load (about 50 a second) leaves a few at most.
BACKLOG_WAITING = 1000
# A receipt's entries take at most this many bytes: half the shipped broker's packet limit.
RECEIPT_MAX_BYTES = 32 * 1024
_MESSAGE_ID = re.compile(r'"message_id"\s*:\s*"([0-9a-f]{32})"')


@dataclass
class _Batch:
    items: list[Incoming]
    lines: list[tuple[str, int]]  # line protocol, index of the item it came from
    rejects: dict[int, Rejection]
    # index -> the message's measured_at (ns), school, and when it was complete (ns)
    measured: dict[int, tuple[int, str, int]]
    over_budget: dict[str, list[int]]  # school -> its rate-limited items: one letter each
    ids: dict[int, tuple[str, str | None]]  # index -> (school, message_id) for its receipt


def _hand_over(
    handover: queue.Queue[_Batch | None], batch: _Batch | None, storer: threading.Thread
) -> None:
    """Put ``batch`` for the store thread, unless that thread has ended (it failed)."""
    while storer.is_alive():
        try:
            handover.put(batch, timeout=0.5)
        except queue.Full:
            continue
        return


class Pipeline:
    def __init__(
        self,
        writer: InfluxWriter,
        settings: CollectorSettings,
        registry: SchoolRegistry | None = None,
        registry_loader: Callable[[], SchoolRegistry | None] | None = None,
        late: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """``late(school_id, measured_ns, stored_ns)`` hears of every message stored."""
        self._writer = writer
        self._settings = settings
        self._registry_loader = registry_loader
        self._registry = registry
        self._late = late
        self._late_marks = LateMarks()
        # Bounded by the receive window. A broker keeps at most
        # mqtt.receive_maximum unacknowledged messages in flight, so this never
        # fills; one that sends more (Mosquitto 2.0.11 does, once acknowledgements
        # flow while it drains a queued backlog) makes paho's network thread wait
        # in submit(), and TCP leaves the rest on the broker, instead of the
        # whole backlog piling up here in memory.
        self._queue: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self._window = settings.mqtt.receive_maximum
        self._queued = 0
        self._room = threading.Condition()
        # While the store thread waits for the broker to acknowledge dead letters,
        # paho's thread must keep reading (the PUBACKs come on the same socket).
        self._letters_in_flight = False
        # The last batch filled up before its max_wait_s: a backlog is being drained.
        self._backlog = False
        self._stopping = threading.Event()
        self.counters = Counters()
        self._budget = SchoolBudget(
            settings.school_budget.messages_per_hour, settings.school_budget.burst
        )
        self._influxql = InfluxQL(settings.influx)
        self._points = PointMaker(
            DeviceBook(influx_lookup(self._influxql)),
            self._numbered,
            place_of=self._place_of,
            school_hours=settings.school_hours.school_hours(),
        )

    @property
    def _trust(self) -> Trust:
        return Trust(
            self._registry,
            max_future=timedelta(seconds=self._settings.max_future_s),
            max_past=timedelta(days=self._settings.max_past_days),
        )

    def _place_of(self, school_id: str) -> Place:
        return self._registry.place_of(school_id) if self._registry is not None else NOWHERE

    def _refresh_registry(self) -> None:
        """Take the newest imported registry (when it comes from InfluxDB)."""
        if self._registry_loader is None:
            return
        try:
            fresh = self._registry_loader()
        except (InfluxError, OSError, KeyError) as exc:
            log.warning("could not read the school registry from InfluxDB: %s", exc)
            return
        if fresh is None:
            return
        if self._registry is None or len(fresh) != len(self._registry):
            log.info("school registry: %d schools in %d regions", len(fresh), len(fresh.regions()))
        self._registry = fresh

    # -- called from the MQTT network thread ------------------------------

    def submit(self, item: Incoming) -> None:
        """Queue ``item``; wait while the window is full. Once stopping, drop it unacknowledged."""
        with self._room:
            while not self._room.wait_for(self._has_room, timeout=0.5):
                pass
            if self._stopping.is_set():
                return  # unacknowledged: the broker sends it again
            self._queued += 1
        self._queue.put(item)

    def _has_room(self) -> bool:
        return self._queued < self._window or self._letters_in_flight or self._stopping.is_set()

    def _taken(self) -> None:
        with self._room:
            self._queued -= 1
            self._room.notify()

    # -- called from anywhere --------------------------------------------

    def draining(self) -> bool:
        """Whether the collector is working through a backlog (its batches fill up, or at
        least BACKLOG_WAITING messages wait behind the last one)."""
        return self._backlog

    def stop(self) -> None:
        self._stopping.set()
        with self._room:
            self._room.notify_all()

    # -- the pipeline thread ----------------------------------------------

    def run(self, outlet: Outlet) -> None:
        """Decode batches here while the previous one is written in a second thread.

        The hand-over holds one batch: while InfluxDB is away, decoding stops
        after it, the receive window fills, and the broker keeps the rest.
        """
        handover: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        failures: list[BaseException] = []
        storer = threading.Thread(
            target=self._store, args=(handover, outlet, failures), name="store"
        )
        storer.start()
        next_stats = time.monotonic() + self._settings.stats_interval_s
        self._refresh_registry()
        next_registry = time.monotonic() + self._settings.registry_refresh_s
        try:
            while not self._stopping.is_set():
                if time.monotonic() >= next_registry:
                    self._refresh_registry()
                    next_registry = time.monotonic() + self._settings.registry_refresh_s
                batch = self._collect(outlet)
                if batch.items:
                    _hand_over(handover, batch, storer)
                if time.monotonic() >= next_stats:
                    self._write_stats()
                    next_stats = time.monotonic() + self._settings.stats_interval_s
        finally:
            _hand_over(handover, None, storer)
            storer.join()
        if failures:  # unacknowledged messages stay on the broker; a restart takes them up
            raise failures[0]
        self._write_stats()
        self._influxql.close()
        log.info("collector stopped: %s", self.counters.summary())

    def _store(
        self,
        handover: queue.Queue[_Batch | None],
        outlet: Outlet,
        failures: list[BaseException],
    ) -> None:
        """Write, dead-letter and acknowledge each batch; an unexpected error stops run()."""
        try:
            while (batch := handover.get()) is not None:
                self._process(batch, outlet)
        except BaseException as exc:  # noqa: BLE001 - handed to run(), which raises it
            failures.append(exc)
            self._stopping.set()

    def _collect(self, outlet: Outlet) -> _Batch:
        """Up to ``batch.max_points`` lines, within ``batch.max_wait_s`` of the first."""
        batch = _Batch([], [], {}, {}, {}, {})
        limits = self._settings.batch
        deadline: float | None = None
        while len(batch.lines) < limits.max_points and not self._stopping.is_set():
            timeout = 0.25 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                if deadline is None:
                    self._backlog = False
                    return batch
                continue
            self._taken()
            if not outlet.is_current(item):
                continue  # received before a reconnect; the broker sends it again
            deadline = deadline or time.monotonic() + limits.max_wait_s
            self._add(batch, item)
        # A backlog: the batch filled up, or many messages still wait behind it. A batch
        # cut by max_wait_s while the broker hands over a queue (about 600 messages at a
        # drain's rate) does not fill; the hand-over queue then holds thousands.
        self._backlog = len(batch.lines) >= limits.max_points or self._queued >= BACKLOG_WAITING
        return batch

    def _add(self, batch: _Batch, item: Incoming) -> None:
        index = len(batch.items)
        batch.items.append(item)
        self.counters.add(received=1)
        mqtt = self._settings.mqtt
        decoded = decode(
            mqtt.topic_root, item.topic, item.payload, mqtt.max_payload_bytes, trust=self._trust
        )
        measured = None if isinstance(decoded, Rejection) else decoded.message.measured_at
        school = school_of(item.topic)
        if is_valid_id(school) and item.topic.startswith(mqtt.topic_root + "/"):
            # The ACL lets only this school publish here: its receipt goes back to it.
            message_id = (
                _message_id_in(item.payload)
                if isinstance(decoded, Rejection)
                else decoded.message.message_id
            )
            batch.ids[index] = (school, message_id)
        if not self._budget.allow(
            school, item.arrived_ns / 1e9, measured.timestamp() if measured else None
        ):
            budget = self._settings.school_budget
            batch.rejects[index] = Rejection(
                RejectReason.RATE_LIMITED,
                f"school {school[:64]!r} is over its budget of {budget.messages_per_hour:g} "
                f"messages an hour (burst {budget.burst}); revoke its account if it persists",
            )
            batch.over_budget.setdefault(school, []).append(index)
            return
        if isinstance(decoded, Rejection):
            batch.rejects[index] = decoded
            return
        message = decoded.message
        batch.lines.extend((line, index) for line in self._points.lines(message, item.arrived_ns))
        at_arrival = isinstance(message, AgentStatus) and (
            message.reason is StatusReason.CONNECTION_LOST or message.clock_synced is False
        )
        if not at_arrival:  # stored at its arrival; its measured_at says nothing of lag
            point = ns(message.measured_at)
            batch.measured[index] = (point, message.school_id, ns(message.complete_at()))

    def _numbered(self, report: DevicesReport, numbering: Numbering) -> None:
        where = f"school {report.school_id} agent {report.agent_id}"
        if numbering.restarted:
            self.counters.add(agent_restarts=1)
            log.info("%s restarted (boot %s)", where, report.boot_id[:8])
        if numbering.missing:
            self.counters.add(device_report_gaps=numbering.missing)
            log.warning(
                "%s: %d device report(s) missing before sequence %d",
                where,
                numbering.missing,
                report.sequence,
            )

    def _process(self, batch: _Batch, outlet: Outlet) -> None:
        # Late is late after the message was complete: an hour's connectivity counts are
        # dated at the hour's start and sent at its end.
        measured = [(done, school) for i, (_, school, done) in batch.measured.items()
                    if i not in batch.rejects]  # fmt: skip
        refused = self._write(batch.lines, lambda: self._late_marks.lines(measured, time.time_ns()))
        if refused is None:
            return  # stopping during an outage: acknowledge nothing, the broker keeps it all
        self._late_marks.written()
        for index, reason in refused.items():
            batch.rejects.setdefault(index, Rejection(RejectReason.INFLUX_REJECTED, reason))
        unacked: set[int] = set()
        if batch.rejects:
            if self._dead_letter(outlet, self._letters(batch)):
                self._count_rejections(batch)
            else:
                unacked = set(batch.rejects)  # they come again, and are dead-lettered then
        if self._settings.mqtt.receipts:
            self._send_receipts(batch, outlet, unacked)
        for index, item in enumerate(batch.items):
            if index not in unacked:
                outlet.ack(item)
        written = sum(1 for _, index in batch.lines if index not in refused)
        now = time.time_ns()
        stored = [when for index, when in batch.measured.items() if index not in batch.rejects]
        self.counters.stored_with_lag((now - done) / 1e6 for _, _, done in stored)
        if self._late is not None:
            for at, school_id, _ in stored:
                self._late(school_id, at, now)
        self.counters.add(
            batches=1, stored=len(batch.items) - len(batch.rejects), points_written=written
        )

    def _send_receipts(self, batch: _Batch, outlet: Outlet, unacked: set[int]) -> None:
        """One receipt per school in the batch: its messages stored, and those refused.

        Before the acknowledgements: a collector that dies in between leaves the
        messages on the broker, which sends them again, and they get their receipt
        then. Rejects whose dead letter failed are not named: they come again.
        """
        stored_at = datetime.now(UTC).isoformat()
        collector_id = self._settings.mqtt.client_id
        named: dict[str, list[tuple[str | None, Rejection | None]]] = {}
        for index, (school, message_id) in batch.ids.items():
            if index not in unacked:
                named.setdefault(school, []).append((message_id, batch.rejects.get(index)))
        root = self._settings.mqtt.topic_root
        sent = 0
        for school, entries in named.items():
            head = (
                f'{{"schema_version":1,"school_id":{json.dumps(school)},'
                f'"collector_id":{json.dumps(collector_id)},"stored_at":"{stored_at}"'
            )
            for stored, refused in _receipt_chunks(entries):
                payload = f'{head},"stored":[{",".join(stored)}],"refused":[{",".join(refused)}]}}'
                outlet.receipt(receipts_topic(root, school), payload.encode())
                sent += 1
        self.counters.add(receipts=sent)

    def _dead_letter(self, outlet: Outlet, letters: list[DeadLetter]) -> bool:
        """Publish ``letters`` while paho's thread may read past the window for their acks."""
        with self._room:
            self._letters_in_flight = True
            self._room.notify_all()
        try:
            return outlet.dead_letter(letters)
        finally:
            with self._room:
                self._letters_in_flight = False

    def _letters(self, batch: _Batch) -> list[DeadLetter]:
        """One letter per rejected message, but one per school for those over budget."""
        letters = [
            self._letter(batch.items[i], r)
            for i, r in batch.rejects.items()
            if r.reason is not RejectReason.RATE_LIMITED
        ]
        for indices in batch.over_budget.values():
            letter = self._letter(batch.items[indices[0]], batch.rejects[indices[0]])
            letters.append(letter.model_copy(update={"count": len(indices)}))
        return letters

    def _count_rejections(self, batch: _Batch) -> None:
        self.counters.add(dead_lettered=len(batch.rejects))
        for school, indices in batch.over_budget.items():
            self.counters.over_budget(school, len(indices))
        for index, rejection in batch.rejects.items():
            self.counters.reject(rejection.reason)
            if rejection.reason is RejectReason.RATE_LIMITED:
                continue  # told once per school per stats line, not per message
            log.warning(
                "rejected message on %s: %s: %s",
                batch.items[index].topic[:200],
                rejection.reason.value,
                rejection.detail,
            )

    def _write(
        self, lines: list[tuple[str, int]], marks: Callable[[], list[str]] = list
    ) -> dict[int, str] | None:
        """Write until InfluxDB accepts; return the refused items' reasons (None if stopped).

        ``marks()``: lines that go with each attempt, made at its time (the
        ``stored_late`` markers, which say how late the points are stored).
        """
        delay = self._settings.batch.retry_initial_s
        outage_logged = False
        while True:
            try:
                refused: dict[int, str] = {}
                self._isolate(lines + [(line, MARK) for line in marks()], refused)
                refused.pop(MARK, None)
            except InfluxUnavailable as exc:
                if not outage_logged:
                    log.error(  # noqa: TRY400 - an outage is expected; no traceback
                        "InfluxDB unavailable: %s; holding %d points, retrying", exc, len(lines)
                    )
                    outage_logged = True
                self.counters.add(write_retries=1)
                if self._stopping.wait(delay * random.uniform(0.5, 1.0)):  # noqa: S311 - jitter
                    return None
                delay = min(delay * 2, self._settings.batch.retry_max_s)
            else:
                if outage_logged:
                    log.info("InfluxDB is back; batch of %d points written", len(lines))
                return refused

    def _isolate(self, lines: list[tuple[str, int]], refused: dict[int, str]) -> None:
        """Write ``lines``; when InfluxDB blames the data, split until the bad lines are alone."""
        if not lines:
            return
        try:
            self._writer.write([line for line, _ in lines])
        except InfluxRejected as exc:
            if len(lines) == 1:
                refused[lines[0][1]] = str(exc)
                return
            middle = len(lines) // 2
            self._isolate(lines[:middle], refused)
            self._isolate(lines[middle:], refused)

    def _letter(self, item: Incoming, rejection: Rejection) -> DeadLetter:
        try:
            payload, encoding = item.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(item.payload).decode("ascii"), "base64"
        limit = self._settings.mqtt.max_payload_bytes
        return DeadLetter(
            topic=item.topic,
            reason=rejection.reason,
            detail=rejection.detail,
            payload=payload[:limit],
            payload_encoding=encoding,  # type: ignore[arg-type]
            received_at=datetime.fromtimestamp(item.arrived_ns / 1e9, UTC),
            collector_id=self._settings.mqtt.client_id,
        )

    def _write_stats(self) -> None:
        self._budget.forget_full(time.time())
        collector_id = self._settings.mqtt.client_id
        over = self.counters.take_over_budget()
        for school, count in over.most_common(20):
            log.warning(
                "school %s sent %d message(s) over its budget since the last report: rejected "
                "as rate_limited; if it goes on, revoke its account (collector/README.md, Floods)",
                school[:64],
                count,
            )
        lines = self.counters.lines(collector_id) + over_budget_lines(collector_id, over)
        try:
            self._writer.write(lines)
        except (InfluxUnavailable, InfluxRejected) as exc:
            log.debug("could not write collector stats: %s", exc)
        log.info("collector: %s", self.counters.summary())


def _receipt_chunks(
    entries: list[tuple[str | None, Rejection | None]],
) -> Iterator[tuple[list[str], list[str]]]:
    """The JSON of a school's stored ids and refusals, in receipts small enough for the
    broker: at most RECEIPT_MAX_IDS entries and RECEIPT_MAX_BYTES of them each (a flood's
    refusals carry a detail each; one packet over the broker's limit would cost the
    collector its connection)."""
    stored: list[str] = []
    refused: list[str] = []
    size = 0
    for message_id, rejection in entries:
        if rejection is None:
            if message_id is None:
                continue
            item = f'"{message_id}"'
            stored.append(item)
        else:
            item = json.dumps(
                {
                    "message_id": message_id,
                    "reason": rejection.reason.value,
                    # A flood's are many and alike: the reason says it all.
                    "detail": ""
                    if rejection.reason is RejectReason.RATE_LIMITED
                    else rejection.detail[:300],
                }
            )
            refused.append(item)
        size += len(item) + 1
        if len(stored) + len(refused) >= RECEIPT_MAX_IDS or size >= RECEIPT_MAX_BYTES:
            yield stored, refused
            stored, refused, size = [], [], 0
    if stored or refused:
        yield stored, refused


def _message_id_in(payload: bytes) -> str | None:
    """The ``message_id`` of a payload the collector refused, if one can be read."""
    match = _MESSAGE_ID.search(payload[:4096].decode("utf-8", "replace"))
    return match[1] if match else None
