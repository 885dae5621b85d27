"""The agent's side of MQTT: its Last Will, QoS 1 publishes, waiting for the broker's acks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from agent.broker import AckLedger, BrokerError, ConnectionWatch, connect, new_client
from agent.contract import (
    AgentState,
    AgentStatus,
    Envelope,
    HeartbeatCounts,
    HostHealth,
    StatusReason,
    TopicKind,
    topic_for,
    utc_now,
)
from agent.settings import AgentMqttSettings

log = logging.getLogger(__name__)


class Publisher:
    """Publishes one school's messages with QoS 1; the broker's PUBACK is the receipt."""

    def __init__(
        self,
        settings: AgentMqttSettings,
        *,
        school_id: str,
        agent_id: str,
        boot_id: str,
        version: str,
    ) -> None:
        self._settings = settings
        self._school_id = school_id
        self._agent_id = agent_id
        self._boot_id = boot_id
        self._version = version
        self._client, self.address = new_client(f"agent-{school_id}-{agent_id[:12]}", settings)
        self._watch = ConnectionWatch(self._client, self.address)
        self._acks = AckLedger()
        self._client.on_publish = self._acks.on_publish
        will = self.status(AgentState.OFFLINE, StatusReason.CONNECTION_LOST)
        self._client.will_set(
            self._topic(TopicKind.AGENT), will.model_dump_json(), qos=1, retain=True
        )

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

    def start(self) -> None:
        """Connect in the background, retrying until the broker answers (the daemon's way)."""
        self._client.connect_async(
            self.address.host, self.address.port, keepalive=self._settings.keepalive_s
        )
        self._client.loop_start()

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
        )

    def publish(self, message: Envelope, kind: TopicKind) -> int:
        """Queue ``message`` with QoS 1 (retained for the agent status); return its mid.

        paho keeps a QoS 1 message in memory and re-sends it after a reconnect
        until the broker acknowledges it.
        """
        info = self._client.publish(
            self._topic(kind),
            message.model_dump_json(),
            qos=1,
            retain=kind is TopicKind.AGENT,
        )
        self._acks.track(info.mid)
        log.debug("queued %s message %s (mid %s)", kind.value, message.message_id, info.mid)
        return info.mid

    def settle(self) -> tuple[int, list[str], int]:
        """Late broker answers: (acknowledged, refusals, still waiting)."""
        return self._acks.settle()

    def wait_acked(self, mids: Iterable[int], timeout: float) -> None:
        """Block until the broker acknowledged every message, or raise :class:`BrokerError`."""
        missing, refusals = self._acks.wait(set(mids), timeout)
        if refusals:
            raise BrokerError(
                f"broker {self.address} refused {len(refusals)} message(s): {refusals[0]}; "
                "check that this school's credentials may publish under mqtt.topic_root"
            )
        if missing:
            raise BrokerError(
                f"broker {self.address} did not acknowledge {missing} message(s) "
                f"within {timeout:.0f} s; the broker may be overloaded or the link lost"
            )

    def close(self, final_status: AgentStatus | None = None) -> None:
        """Publish ``final_status`` (best effort), disconnect cleanly, stop the network thread."""
        if final_status is not None and self.connected:
            try:
                mid = self.publish(final_status, TopicKind.AGENT)
                self.wait_acked([mid], timeout=min(5.0, self._settings.ack_timeout_s))
            except BrokerError as exc:
                log.warning("could not publish the final status: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    def _topic(self, kind: TopicKind) -> str:
        return topic_for(self._settings.topic_root, self._school_id, kind)
