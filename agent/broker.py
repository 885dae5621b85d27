"""How both sides reach the MQTT broker: URL, credentials, TLS, paho client.

``mqtt://host[:1883]`` is plain TCP, ``mqtts://host[:8883]`` is TLS.
Credentials may sit in the URL (``mqtt://user:password@host``) or in the
separate ``username`` / ``password`` settings, which win when both are given.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerError(Exception):
    """The broker could not be reached, refused us, or did not acknowledge in time."""


class BrokerSettings(BaseModel):
    """MQTT settings common to the agent and the collector (``mqtt.*``)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    tls_insecure: bool = False
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    connect_timeout_s: float = Field(default=15.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _url_parses(cls, value: str | None) -> str | None:
        if value is not None:
            BrokerAddress.parse(value)
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"CA file {value} does not exist; give the path to a PEM file")
        return value

    def address(self) -> BrokerAddress:
        if self.url is None:
            raise BrokerError("mqtt.url is required")
        parsed = BrokerAddress.parse(self.url)
        username = self.username if self.username is not None else parsed.username
        password = (
            self.password.get_secret_value() if self.password is not None else parsed.password
        )
        return BrokerAddress(parsed.tls, parsed.host, parsed.port, username, password)


@dataclass(frozen=True)
class BrokerAddress:
    tls: bool
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(
                f"broker URL must start with mqtt:// or mqtts://, got {redact_url(url)!r}"
            )
        if not parts.hostname:
            raise ValueError(f"broker URL has no host: {redact_url(url)!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"broker URL must not have a path: {redact_url(url)!r}")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise ValueError(f"broker URL has a bad port: {redact_url(url)!r}") from exc
        return cls(
            tls=parts.scheme == "mqtts",
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"

    __repr__ = __str__  # never show the password, even in a traceback


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def new_client(
    client_id: str,
    settings: BrokerSettings,
    *,
    manual_ack: bool = False,
) -> tuple[paho.Client, BrokerAddress]:
    """A paho MQTT 5 client configured for ``settings`` (not yet connected)."""
    address = settings.address()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
        manual_ack=manual_ack,
    )
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None
        )
        if settings.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            log.warning(
                "mqtt.tls_insecure is on: the certificate of broker %s is NOT verified, so "
                "anyone on the path can pose as the broker; set mqtt.ca_file and turn it off",
                address,
            )
        client.tls_set_context(context)
    client.reconnect_delay_set(min_delay=1, max_delay=60)
    return client, address


class ConnectionWatch:
    """Tracks connect/disconnect of a paho client so callers can wait on it."""

    def __init__(
        self,
        client: paho.Client,
        address: BrokerAddress,
        on_connected: Callable[[paho.Client, bool], None] | None = None,
    ) -> None:
        self._address = address
        self._on_connected = on_connected
        self._connected = threading.Event()
        self._answered = threading.Event()
        self.refusal: str | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait(self, timeout: float) -> None:
        """Block until connected; raise :class:`BrokerError` saying what to do if not."""
        if not self._answered.wait(timeout) and not self._connected.is_set():
            raise BrokerError(
                f"no answer from broker {self._address} within {timeout:.0f} s; "
                "check mqtt.url and that the broker is running and reachable"
            )
        if not self._connected.is_set():
            raise BrokerError(
                f"broker {self._address} refused the connection: {self.refusal}; "
                "check mqtt.username and mqtt.password"
            )

    def _on_connect(
        self, client: paho.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            self.refusal = str(reason)
            log.error("broker %s refused the connection: %s", self._address, reason)
        else:
            session = "resumed session" if flags.session_present else "new session"
            log.info("connected to broker %s (%s)", self._address, session)
            if self._on_connected is not None:
                self._on_connected(client, bool(flags.session_present))
            self._connected.set()
        self._answered.set()

    def _on_disconnect(
        self, _c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if reason.value == 0:  # we asked for it (Normal disconnection)
            log.info("disconnected from broker %s", self._address)
        elif was_connected:
            log.warning("lost connection to broker %s (%s); reconnecting", self._address, reason)

    def _on_connect_fail(self, _c: paho.Client, _u: Any) -> None:
        log.warning("could not reach broker %s; retrying", self._address)


def connect(client: paho.Client, address: BrokerAddress, **kwargs: Any) -> None:
    """First connection attempt, translating socket errors into :class:`BrokerError`."""
    try:
        client.connect(address.host, address.port, **kwargs)
    except ssl.SSLError as exc:
        raise BrokerError(
            f"TLS handshake with broker {address} failed: {exc.reason or exc}; "
            "check mqtt.ca_file and the broker's certificate"
        ) from exc
    except OSError as exc:
        raise BrokerError(
            f"cannot connect to broker {address}: {exc.strerror or exc}; "
            "check mqtt.url and that the broker is running and reachable"
        ) from exc


class AckLedger:
    """The broker's answers to the QoS 1 publishes someone waits for.

    paho's ``MQTTMessageInfo.is_published`` keeps raising for a message first
    published while disconnected, even after it was re-sent and acknowledged,
    so the ``on_publish`` callback is the receipt. paho calls it for every
    publish, the collector's QoS 0 receipts included (tens of thousands a
    minute in a drain): only answers to tracked mids are kept, and an answer
    to an untracked mid for EARLY_S, in case its publisher has not tracked it
    yet (the answer can come before ``publish`` returns). Kept longer, it
    would confirm a later message that reuses the mid (paho reuses one after
    65,535 publishes: a minute of a drain), and hold memory; those were every
    answer once, 141 MB in a drain of 100,000 messages.
    """

    EARLY_S = 5.0

    def __init__(self) -> None:
        self._answers: dict[int, str | None] = {}  # mid: the refusal, or None
        self._early: dict[int, tuple[float, str | None]] = {}  # in order of arrival
        self._pending: set[int] = set()
        self._changed = threading.Condition()

    def track(self, mid: int) -> None:
        with self._changed:
            early = self._early.pop(mid, None)
            if early is not None and time.monotonic() - early[0] <= self.EARLY_S:
                self._answers[mid] = early[1]
            else:
                self._pending.add(mid)

    def on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        refusal = str(reason) if reason.is_failure else None
        now = time.monotonic()
        with self._changed:
            if mid in self._pending:
                self._pending.discard(mid)
                self._answers[mid] = refusal
                self._changed.notify_all()
                return
            self._early.pop(mid, None)
            self._early[mid] = (now, refusal)
            while self._early:
                oldest = next(iter(self._early))
                if now - self._early[oldest][0] <= self.EARLY_S:
                    break
                del self._early[oldest]

    def wait(self, mids: set[int], timeout: float) -> tuple[int, list[str]]:
        """Wait for an answer to every mid; return (how many got none, refusals).

        A mid that got none stays unanswered: its late answer is not kept.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not mids <= self._answers.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            answers = [self._answers.pop(mid) for mid in mids & self._answers.keys()]
            self._pending -= mids
        return len(mids) - len(answers), [refusal for refusal in answers if refusal is not None]
