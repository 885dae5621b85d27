"""The agent's side of MQTT: every message through the durable outbox, QoS 1, in order.

:meth:`Publisher.publish` stores the message in the :class:`~agent.outbox.Outbox`
and returns; a pump thread sends what the outbox holds, oldest first, at most
``max_in_flight`` unacknowledged at a time and at most ``replay_rate_per_s``
per second after a short burst (so a backlog after a long outage does not flood
the broker). The broker's PUBACK removes a message from the outbox. After a
restart, whatever was not acknowledged is sent again with its original
``message_id`` and ``measured_at``; the collector turns a repeat into the same
point, so nothing is lost and nothing is counted twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from agent.broker import BrokerError, ConnectionWatch, connect, new_client
from agent.contract import (
    AgentState,
    AgentStatus,
    Envelope,
    HeartbeatCounts,
    HostHealth,
    OutboxCounts,
    StatusReason,
    TopicKind,
    topic_for,
    utc_now,
)
from agent.outbox import Outbox
from agent.settings import AgentMqttSettings, OutboxSettings

log = logging.getLogger(__name__)


class _Bucket:
    """A token bucket: ``burst`` at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def delay(self) -> float:
        """Seconds to wait before the next send (0 when a token is there; it is taken)."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


class Publisher:
    """Publishes one school's messages through its outbox; the PUBACK is the receipt."""

    def __init__(
        self,
        settings: AgentMqttSettings,
        outbox: Outbox,
        *,
        school_id: str,
        agent_id: str,
        boot_id: str,
        version: str,
        plan: OutboxSettings | None = None,
    ) -> None:
        self._settings = settings
        self.outbox = outbox
        self._plan = plan or OutboxSettings()
        self._school_id = school_id
        self._agent_id = agent_id
        self._boot_id = boot_id
        self._version = version
        self._client, self.address = new_client(f"agent-{school_id}-{agent_id[:12]}", settings)
        self._watch = ConnectionWatch(self._client, self.address)
        self._client.on_publish = self._on_publish
        will = self.status(AgentState.OFFLINE, StatusReason.CONNECTION_LOST)
        self._client.will_set(
            self._topic(TopicKind.AGENT), will.model_dump_json(), qos=1, retain=True
        )
        self._changed = threading.Condition()
        self._in_flight: dict[int, tuple[int, float]] = {}  # mid -> (outbox id, sent at)
        self._early: dict[int, tuple[ReasonCode, float]] = {}  # mid -> (answer, when)
        self._cursor = 0  # the newest outbox id handed to paho
        self._acked = 0
        self._refusals: list[str] = []
        self._closing = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, name="mqtt-pump", daemon=True)

    @property
    def connected(self) -> bool:
        return self._watch.connected

    def connect(self) -> None:
        """Connect now and wait for the broker's answer; raise :class:`BrokerError` if refused."""
        connect(self._client, self.address, keepalive=self._settings.keepalive_s)
        self._client.loop_start()
        try:
            self._watch.wait(self._settings.connect_timeout_s)
        except BrokerError:
            self.close()
            raise
        self._pump_thread.start()

    def start(self) -> None:
        """Connect in the background, retrying until the broker answers (the daemon's way)."""
        self._client.connect_async(
            self.address.host, self.address.port, keepalive=self._settings.keepalive_s
        )
        self._client.loop_start()
        self._pump_thread.start()

    def status(
        self,
        state: AgentState,
        reason: StatusReason,
        host: HostHealth | None = None,
        *,
        measured_at: datetime | None = None,
        data_used_month_bytes: int | None = None,
        data_budget_month_bytes: int | None = None,
        heartbeats: HeartbeatCounts | None = None,
    ) -> AgentStatus:
        outbox = None
        if state is AgentState.ONLINE:
            stats = self.outbox.stats()
            outbox = OutboxCounts(
                messages=stats.messages,
                bytes=stats.bytes,
                oldest_age_s=round(stats.oldest_age_s or 0.0, 3),
                dropped=stats.dropped,
            )
        return AgentStatus(
            school_id=self._school_id,
            agent_id=self._agent_id,
            measured_at=measured_at or utc_now(),
            status=state,
            reason=reason,
            version=self._version,
            boot_id=self._boot_id,
            host=host,
            data_used_month_bytes=data_used_month_bytes,
            data_budget_month_bytes=data_budget_month_bytes,
            heartbeats=heartbeats,
            outbox=outbox,
        )

    def publish(self, message: Envelope, kind: TopicKind) -> int:
        """Store ``message`` in the outbox (on disk when this returns); return its outbox id."""
        stored = self.outbox.put(
            self._topic(kind),
            message.model_dump_json().encode(),
            retain=kind is TopicKind.AGENT,
        )
        log.debug("stored %s message %s (outbox %d)", kind.value, message.message_id, stored)
        with self._changed:
            self._changed.notify_all()
        return stored

    def settle(self) -> tuple[int, list[str], int]:
        """Since the last call: (acknowledged, refusals, still waiting in the outbox)."""
        with self._changed:
            acked, refusals = self._acked, self._refusals
            self._acked, self._refusals = 0, []
        return acked, refusals, self.outbox.stats().messages

    def wait_acked(self, ids: Iterable[int], timeout: float) -> None:
        """Block until the broker acknowledged every outbox id, or raise :class:`BrokerError`."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                wanted = {i for i in wanted if self.outbox.contains(i)}
                left = deadline - time.monotonic()
                if not wanted or left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
            refusals = list(self._refusals)
        if refusals:
            raise BrokerError(
                f"broker {self.address} refused {len(refusals)} message(s): {refusals[0]}; "
                "check that this school's credentials may publish under mqtt.topic_root"
            )
        if wanted:
            raise BrokerError(
                f"broker {self.address} did not acknowledge {len(wanted)} message(s) "
                f"within {timeout:.0f} s; they stay in the outbox ({self.outbox.path}) and are "
                "sent on the next run"
            )

    def close(self, final_status: AgentStatus | None = None) -> None:
        """Publish ``final_status`` after everything before it (up to ``ack_timeout_s``),
        disconnect cleanly, stop the threads. What is left stays in the outbox."""
        if final_status is not None and self.connected:
            try:
                stored = self.publish(final_status, TopicKind.AGENT)
                self.wait_acked([stored], timeout=self._settings.ack_timeout_s)
            except BrokerError as exc:
                log.warning("could not publish the final status: %s", exc)
        self._closing.set()
        with self._changed:
            self._changed.notify_all()
        if self._pump_thread.is_alive():
            self._pump_thread.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    # -- the pump thread ---------------------------------------------------

    def _pump(self) -> None:
        bucket = _Bucket(self._plan.replay_rate_per_s, self._plan.max_in_flight)
        while not self._closing.is_set():
            with self._changed:
                self._changed.wait(0.5)
            try:
                if self.connected:
                    self._resend_stale()
                    self._send_next(bucket)
            except Exception:  # a bug must not stop delivery for good
                log.exception("sending from the outbox failed; trying again")
                self._closing.wait(1)

    def _send_next(self, bucket: _Bucket) -> None:
        with self._changed:
            room = self._plan.max_in_flight - len(self._in_flight)
            cursor = self._cursor
        if room <= 0:
            return
        for message in self.outbox.after(cursor, room):
            while (pause := bucket.delay()) > 0:
                if self._closing.wait(pause):
                    return
            if not self.connected:
                return
            self._send(message.id, message.topic, message.payload, message.retain)

    def _send(self, outbox_id: int, topic: str, payload: bytes, retain: bool) -> None:
        # Not under our lock: paho calls on_publish under its own, and publish takes that one.
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        with self._changed:
            self._cursor = max(self._cursor, outbox_id)
            early = self._early.pop(info.mid, None)
            if early is None:
                self._in_flight[info.mid] = (outbox_id, time.monotonic())
            else:  # the PUBACK overtook this bookkeeping
                self._settle_one(outbox_id, early[0])

    def _resend_stale(self) -> None:
        """Send again what waited too long for its PUBACK (lost with a broker, say)."""
        limit = time.monotonic() - self._plan.resend_after_s
        with self._changed:
            stale = {mid: oid for mid, (oid, at) in self._in_flight.items() if at < limit}
            for mid in stale:
                del self._in_flight[mid]
        if not stale:
            return
        log.info("no acknowledgement for %d message(s); sending them again", len(stale))
        for message in self.outbox.get(stale.values()):
            self._send(message.id, message.topic, message.payload, message.retain)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        now = time.monotonic()
        with self._changed:
            entry = self._in_flight.pop(mid, None)
            if entry is None:
                # Before _send recorded it, or a copy already given up on: keep it a moment.
                self._early = {m: e for m, e in self._early.items() if now - e[1] < 60}
                self._early[mid] = (reason, now)
                return
            self._settle_one(entry[0], reason)

    def _settle_one(self, outbox_id: int, reason: ReasonCode) -> None:
        """The broker answered ``outbox_id`` (called with the lock held)."""
        if reason.is_failure:
            self._refusals.append(str(reason))
            log.error("broker refused message %d: %s; dropping it", outbox_id, reason)
        else:
            self._acked += 1
        self.outbox.remove([outbox_id])
        self._changed.notify_all()

    def _topic(self, kind: TopicKind) -> str:
        return topic_for(self._settings.topic_root, self._school_id, kind)
