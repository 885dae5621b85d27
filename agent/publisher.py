"""The agent's side of MQTT: every message through the durable outbox, QoS 1, in order.

:meth:`Publisher.publish` stores the message in the :class:`~agent.outbox.Outbox`
and returns; a pump thread sends what the outbox holds, oldest first, at most
``max_in_flight`` unacknowledged at a time and at most ``replay_rate_per_s``
per second after a short burst (so a backlog after a long outage does not flood
the broker).

A broker's PUBACK is not the end: Mosquitto writes its queues to disk only
every ``autosave_interval``, so a crash loses what it acknowledged since. When
the collectors announce receipts (a retained :class:`~agent.contract.Capabilities`
message), a message stays in the outbox after its PUBACK until the collector's
:class:`~agent.contract.Receipt` says InfluxDB stored it, or refused it. The
receipts come on the school's own topic with QoS 0, which the broker does not
keep for an absent client: one sent while the agent was away is lost. A message
acknowledged but never named by a receipt is therefore sent again
(``outbox.receipt_grace_s``, ``outbox.receipt_timeout_s``). Whatever is sent
twice keeps its ``message_id`` and ``measured_at``; the collector turns a
repeat into the same point, so nothing is lost and nothing is counted twice.
Without the announcement the PUBACK removes the message, as before receipts
existed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from agent.broker import BrokerError, ConnectionWatch, connect, new_client
from agent.clock_trust import TimeKeeper, Unchecked, restamped
from agent.contract import (
    MESSAGE_MODELS,
    AgentState,
    AgentStatus,
    Capabilities,
    ConfigState,
    Envelope,
    HeartbeatCounts,
    HostHealth,
    OutboxCounts,
    Receipt,
    RejectionCounts,
    RejectReason,
    StatusReason,
    TopicKind,
    receipts_topic,
    topic_for,
    utc_now,
)
from agent.outbox import Outbox
from agent.refusals import DEFAULT_ADVICE, REFUSAL_ADVICE
from agent.settings import AgentMqttSettings, OutboxSettings

log = logging.getLogger(__name__)

_REASON = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# How often the outbox is searched for messages whose receipt is overdue, or that
# wait for the clock.
OVERDUE_CHECK_S = 5.0
# A status sent at once while the clock is wrong expires on the broker after this long.
LIVE_EXPIRY_S = 60
MAX_PROBES = 20
# A refusal reason is logged at most this often (each is counted every time).
REFUSAL_LOG_INTERVAL_S = 3600.0


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
    """Publishes one school's messages through its outbox, until the collector's receipt
    (or, from collectors without receipts, the broker's PUBACK) ends each one's stay."""

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
        time_keeper: TimeKeeper | None = None,
    ) -> None:
        """``time_keeper`` decides whether measurements wait for the clock (default:
        the system clock is believed as it is)."""
        self._settings = settings
        self._time = time_keeper or TimeKeeper(Unchecked())
        self._probes: dict[str, float] = {}  # live status id -> monotonic time sent
        self._waiting_live: tuple[Envelope, TopicKind] | None = None  # for the next connection
        self.outbox = outbox
        self._plan = plan or OutboxSettings()
        self._school_id = school_id
        self._agent_id = agent_id
        self._boot_id = boot_id
        self._version = version
        self._client, self.address = new_client(
            f"agent-{school_id}-{agent_id[:12]}", settings, manual_ack=True
        )
        self._watch = ConnectionWatch(self._client, self.address, on_connected=self._subscribe)
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._listened: dict[str, Callable[[bytes], object]] = {}
        self._listened_mid: int | None = None
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
        # Receipts: on when set so, or (auto) as the collectors last announced.
        remembered = outbox.fact("receipts") if settings.receipts == "auto" else None
        self._receipts = settings.receipts == "on" or remembered == "on"
        if not self._receipts:
            outbox.release_acked()  # kept by an earlier run that waited for receipts
        self._receipts_refused = False  # the broker refused this school's receipts topic
        self._confirmed_after: float | None = None  # newest PUBACK time a receipt confirmed
        self._refusal_logged: dict[str, float] = {}

    @property
    def connected(self) -> bool:
        return self._watch.connected

    @property
    def receipts(self) -> bool:
        """Whether messages wait for the collector's receipt (not only the broker's PUBACK)."""
        return self._receipts

    def _connect_options(self) -> dict[str, Any]:
        """A persistent session: the broker keeps the subscriptions while the agent is
        away, so they hold from the moment it is back (a receipt sent before it has
        subscribed again still reaches it). Receipts themselves (QoS 0) are not kept."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._settings.session_expiry_s
        return {
            "keepalive": self._settings.keepalive_s,
            "clean_start": False,
            "properties": properties,
        }

    def connect(self) -> None:
        """Connect now and wait for the broker's answer; raise :class:`BrokerError` if refused."""
        connect(self._client, self.address, **self._connect_options())
        self._client.loop_start()
        try:
            self._watch.wait(self._settings.connect_timeout_s)
        except BrokerError:
            self.close()
            raise
        self._pump_thread.start()

    def start(self) -> None:
        """Connect in the background, retrying until the broker answers (the daemon's way)."""
        self._client.connect_async(self.address.host, self.address.port, **self._connect_options())
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
        config: ConfigState | None = None,
    ) -> AgentStatus:
        outbox = rejections = last_stored = None
        if state is AgentState.ONLINE:
            stats = self.outbox.stats()
            outbox = OutboxCounts(
                messages=stats.messages,
                bytes=stats.bytes,
                oldest_age_s=round(stats.oldest_age_s or 0.0, 3),
                dropped=stats.dropped,
                awaiting_broker=stats.awaiting_broker,
                awaiting_receipt=stats.awaiting_receipt,
                held=stats.held,
            )
            delivery = self.outbox.delivery()
            outbox = outbox.model_copy(update={"undatable": delivery.undatable})
            last = delivery.last_refusal
            rejections = RejectionCounts(
                total=delivery.refused_total,
                by_reason=dict(sorted(delivery.refused.items())[:40]),
                last_reason=last.reason if last and _REASON.match(last.reason) else None,
                last_at=datetime.fromtimestamp(last.at, UTC) if last else None,
            )
            if delivery.last_stored_at is not None:
                last_stored = datetime.fromtimestamp(delivery.last_stored_at, UTC)
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
            rejections=rejections,
            last_stored_at=last_stored,
            clock_synced=self._time.sync_state(),
            config=config,
        )

    def publish(
        self,
        message: Envelope,
        kind: TopicKind,
        *,
        measured_monotonic: float | None = None,
        time_known: bool = False,
    ) -> int:
        """Store ``message`` in the outbox (on disk when this returns); return its outbox id.

        ``measured_monotonic``: the monotonic time of ``measured_at`` (default: now, for
        a message stamped just now). While the clock cannot be believed the message is
        held until it can be dated; a status is then sent at once instead, not kept
        (0 is returned): the collector stores it at its arrival. ``time_known``: the
        ``measured_at`` was stamped while the clock was believed (a record kept from
        before a reboot), so it is sent as it is.
        """
        if measured_monotonic is None:
            measured_monotonic = self._time.monotonic_of(message.measured_at.timestamp())
        believed = time_known or self._time.believed(measured_monotonic)
        if kind is TopicKind.AGENT and not believed:
            self._send_live(message, kind)
            return 0
        held = None if believed else (self._time.boot_id, measured_monotonic)
        stored = self.outbox.put(
            self._topic(kind),
            message.model_dump_json().encode(),
            retain=kind is TopicKind.AGENT,
            message_id=message.message_id,
            held=held,
        )
        log.debug(
            "stored %s message %s (outbox %d%s)",
            kind.value,
            message.message_id,
            stored,
            ", held for the clock" if held else "",
        )
        with self._changed:
            self._changed.notify_all()
        return stored

    def _send_live(self, message: Envelope, kind: TopicKind) -> None:
        """A status while the clock is wrong: now or never, marked so, expiring in a minute.

        Its receipt doubles as a time signal: the collector's ``stored_at`` for a
        message sent a moment ago gives the true time (agent/clock_trust.py).
        """
        if isinstance(message, AgentStatus):
            message = message.model_copy(update={"clock_synced": False})
        if not self.connected:
            with self._changed:  # the newest goes out as soon as the broker answers
                self._waiting_live = (message, kind)
            return
        self._publish_live(message, kind)

    def _publish_live(self, message: Envelope, kind: TopicKind) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = LIVE_EXPIRY_S
        with self._changed:
            self._probes[message.message_id] = self._time.now_monotonic()
            while len(self._probes) > MAX_PROBES:
                self._probes.pop(next(iter(self._probes)))
        self._client.publish(
            self._topic(kind), message.model_dump_json(), qos=1, retain=True, properties=properties
        )

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
                wanted = {i for i in wanted if self.outbox.awaits_broker(i)}
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
        held = {h.id for h in self.outbox.held()} & wanted
        if held:
            raise BrokerError(
                f"{len(held)} measurement(s) wait for the clock: the system clock is not "
                "synchronised, and no receipt from the collector has given the time yet. They "
                f"stay in the outbox ({self.outbox.path}) until one of them can date them; "
                "check NTP (timedatectl) and that the collector runs"
            )
        if wanted:
            raise BrokerError(
                f"broker {self.address} did not acknowledge {len(wanted)} message(s) "
                f"within {timeout:.0f} s; they stay in the outbox ({self.outbox.path}) and are "
                "sent on the next run"
            )

    def wait_stored(self, ids: Iterable[int], timeout: float) -> int:
        """Wait up to ``timeout`` for receipts naming every outbox id; return how many still
        wait (0 at once when receipts are off: the PUBACK was the last word)."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._receipts:
                wanted = {i for i in wanted if self.outbox.contains(i)}
                left = deadline - time.monotonic()
                if not wanted or left <= 0:
                    return len(wanted)
                self._changed.wait(min(left, 0.5))
        return 0

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
        next_overdue = time.monotonic()
        while not self._closing.is_set():
            with self._changed:
                self._changed.wait(0.5)
            try:
                # Watch the clock, so that a measurement it was wrong for is known so.
                self._time.synchronised()
                if self.connected:
                    self._resend_stale()
                    if time.monotonic() >= next_overdue:
                        self._release_held()
                        if self._receipts:
                            self._resend_unconfirmed()
                        next_overdue = time.monotonic() + OVERDUE_CHECK_S
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

    def _release_held(self) -> None:
        """Date what waited for the clock, and send it; drop what can never be dated."""
        undatable: list[int] = []
        released = 0
        for held in self.outbox.held():
            if not self._time.datable(held.boot_id):
                undatable.append(held.id)
                continue
            true_s = self._time.true_time(held.monotonic, held.boot_id)
            if true_s is None:
                break  # nothing can be dated yet
            kind = TopicKind(held.topic.rsplit("/", 1)[-1])
            message = MESSAGE_MODELS[kind].model_validate_json(held.payload)
            payload = restamped(message, true_s).model_dump_json().encode()
            stored = self.outbox.release(held.id, payload, dated=true_s)
            if stored is not None:
                released += 1
                self._send(stored.id, stored.topic, stored.payload, stored.retain)
        if released:
            log.info("the clock can be trusted: %d measurement(s) dated and sent", released)
        if undatable:
            self.outbox.undatable(undatable)
            log.warning(
                "%d measurement(s) taken before a restart while the clock was not synchronised "
                "cannot be dated and were dropped (counted as outbox.undatable in the status); "
                "make sure NTP can reach its servers (timedatectl)",
                len(undatable),
            )

    def _resend_unconfirmed(self) -> None:
        """Send again what the broker acknowledged but no receipt named in time."""
        with self._changed:
            room = self._plan.max_in_flight - len(self._in_flight)
        if room <= 0:
            return
        overdue = self.outbox.take_overdue(
            grace_s=self._plan.receipt_grace_s,
            timeout_s=self._plan.receipt_timeout_s,
            confirmed_after=self._confirmed_after,
            limit=room,
        )
        if overdue:
            log.info(
                "no receipt from the collector for %d message(s) the broker acknowledged; "
                "sending them again (the broker may have lost them)",
                len(overdue),
            )
        for message in overdue:
            self._send(message.id, message.topic, message.payload, message.retain)

    # -- receipts and announcements (paho's network thread) ------------------

    def listen(self, topics: list[str], handler: Callable[[bytes], object]) -> None:
        """Also subscribe to ``topics`` (the remote configuration's, retained) on every
        connection, and hand each message's payload to ``handler`` (paho's thread)."""
        self._listened = dict.fromkeys(topics, handler)

    def _subscribe(self, client: paho.Client, _session_present: bool) -> None:
        """On every connection: this school's receipts and the collectors' announcement.

        Both before anything is published on it, so the broker answers in that
        order: the retained announcement arrives before the first PUBACK.
        """
        options = SubscribeOptions(qos=1)
        client.subscribe(
            [
                (receipts_topic(self._settings.topic_root, self._school_id), options),
                (self._settings.capabilities_topic, options),
            ]
        )
        if self._listened:
            _, self._listened_mid = client.subscribe([(t, options) for t in self._listened])
        with self._changed:
            waiting, self._waiting_live = self._waiting_live, None
        if waiting is not None:
            self._publish_live(*waiting)

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, reasons: list[Any], _p: Any
    ) -> None:
        if mid == self._listened_mid:
            refused = [t for t, r in zip(self._listened, reasons, strict=False) if r.is_failure]
            if refused:
                log.warning(
                    "the broker refused the subscription to %s: the ministry's configuration "
                    "for them does not reach this agent. Is `region` right in the config? "
                    "Else ask the ministry to install the ACL of a newer `school-collector "
                    "provision`",
                    ", ".join(refused),
                )
            return
        if reasons and reasons[0].is_failure:
            log.warning(
                "the broker refused the subscription to this school's receipts (%s); "
                "messages leave the outbox at the broker's acknowledgement. Ask the ministry "
                "to install the ACL of a newer `school-collector provision`",
                reasons[0],
            )
            self._receipts_refused = True
            self._announced(receipts=False)
        else:
            self._receipts_refused = False  # the retained announcement follows and decides

    def _on_message(self, client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            if message.topic == self._settings.capabilities_topic:
                self._on_capabilities(bytes(message.payload))
            elif message.topic == receipts_topic(self._settings.topic_root, self._school_id):
                self._on_receipt(bytes(message.payload))
            elif (handler := self._listened.get(message.topic)) is not None:
                handler(bytes(message.payload))
        except (ValidationError, ValueError) as exc:
            log.warning("ignored a malformed message on %s: %s", message.topic, exc)
        except Exception:  # the receipt is acked below anyway; a bug must not stop the loop
            log.exception("could not handle a message on %s", message.topic)
        finally:
            client.ack(message.mid, message.qos)

    def _on_capabilities(self, payload: bytes) -> None:
        if not payload:  # an announcement cleared by hand: silence changes nothing
            return
        capabilities = Capabilities.model_validate_json(payload)
        self._announced(receipts=capabilities.receipts and not self._receipts_refused)

    def _announced(self, *, receipts: bool) -> None:
        """What the collectors said about receipts. Only an announcement changes the mode,
        never its absence: a broker that crashed may have lost the retained message."""
        with self._changed:
            if self._settings.receipts != "auto" or receipts == self._receipts:
                return
            self._receipts = receipts
        self.outbox.set_fact("receipts", "on" if receipts else "off")
        if receipts:
            log.info("the collectors send receipts: messages now stay until InfluxDB has them")
        else:
            released = self.outbox.release_acked()
            log.info(
                "the collectors send no receipts: the broker's acknowledgement is the last word "
                "(%d message(s) waiting for a receipt released)",
                released,
            )
        with self._changed:
            self._changed.notify_all()

    def _on_receipt(self, payload: bytes) -> None:
        receipt = Receipt.model_validate_json(payload)
        if receipt.school_id != self._school_id:
            raise ValueError(f"a receipt for school {receipt.school_id!r}, not this one")
        stored_at = receipt.stored_at.timestamp()
        with self._changed:
            probes = [self._probes.pop(i) for i in receipt.stored if i in self._probes]
        for sent in probes:
            self._time.heard(stored_at, sent)
        confirmed = self.outbox.confirm(receipt.stored, stored_at, sent_past=bool(probes))
        final = [r for r in receipt.refused if r.reason != RejectReason.RATE_LIMITED.value]
        if final:
            self.outbox.refuse((r.message_id, r.reason, r.detail) for r in final)
        for refusal in receipt.refused:
            self._log_refusal(refusal.reason, refusal.detail)
        with self._changed:
            latest = confirmed.latest_acked_at
            if latest is not None and (self._confirmed_after or 0) < latest:
                self._confirmed_after = latest
            self._changed.notify_all()
        log.debug(
            "receipt from %s: %d stored (%d were waiting here), %d refused",
            receipt.collector_id,
            len(receipt.stored),
            confirmed.removed,
            len(receipt.refused),
        )

    def _log_refusal(self, reason: str, detail: str) -> None:
        """Each reason at most once an hour (every refusal is counted regardless)."""
        now = time.monotonic()
        last = self._refusal_logged.get(reason)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            return
        self._refusal_logged[reason] = now
        log.error(
            "the collector refused a message: %s (%s); %s. Counted in the agent status; "
            "`school-agent doctor` shows the last one (logged at most once an hour per reason)",
            reason,
            detail[:200],
            REFUSAL_ADVICE.get(reason, DEFAULT_ADVICE),
        )

    # -- PUBACKs ---------------------------------------------------------------

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
            self.outbox.remove([outbox_id])
        else:
            self._acked += 1
            if self._receipts:
                self.outbox.acked([outbox_id])  # now it waits for the collector's receipt
            else:
                self.outbox.remove([outbox_id])
        self._changed.notify_all()

    def _topic(self, kind: TopicKind) -> str:
        return topic_for(self._settings.topic_root, self._school_id, kind)
