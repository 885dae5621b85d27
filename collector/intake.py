"""Decode and validate one MQTT message against the wire contract; never raises.

Every message is either accepted as a contract model or rejected with a
:class:`~agent.contract.RejectReason` and a short detail for the dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from agent.contract import (
    MESSAGE_MODELS,
    AgentStatus,
    Envelope,
    RejectReason,
    StatusReason,
    TopicKind,
    parse_topic,
)
from collector.registry import SchoolRegistry

_MAX_DETAIL_ERRORS = 3
# Fields with a default in the models that a payload must still carry: a missing
# message_id or measured_at filled in here would differ on every redelivery.
WIRE_REQUIRED = ("schema_version", "message_id", "measured_at")


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class Trust:
    """What the collector checks beyond the contract: known schools, plausible times."""

    registry: SchoolRegistry | None = None
    max_future: timedelta = timedelta(minutes=5)
    max_past: timedelta = timedelta(days=60)


@dataclass(frozen=True)
class Accepted:
    kind: TopicKind
    message: Envelope


def decode(  # noqa: PLR0911 - one return per check reads best
    root: str,
    topic: str,
    payload: bytes,
    max_bytes: int,
    *,
    trust: Trust | None = None,
    now: datetime | None = None,
) -> Accepted | Rejection:
    """Check size, topic, encoding, JSON, schema, school identity and time, in that order."""
    trust = trust or Trust()
    if len(payload) > max_bytes:
        return Rejection(RejectReason.OVERSIZE, f"{len(payload)} bytes; the limit is {max_bytes}")
    where = parse_topic(root, topic)
    if where is None:
        return Rejection(
            RejectReason.UNKNOWN_TOPIC,
            f"expected {root}/<school_id>/<speed|devices|agent>",
        )
    school_id, kind = where
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(RejectReason.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}")
    try:
        message = MESSAGE_MODELS[kind].model_validate_json(payload)
    except ValidationError as exc:
        return _describe(exc)
    except RecursionError:
        return Rejection(RejectReason.INVALID_JSON, "JSON nested too deeply")
    absent = [name for name in WIRE_REQUIRED if name not in message.model_fields_set]
    if absent:  # defaults are for building messages, not for filling in what a sender left out
        return Rejection(RejectReason.SCHEMA_VIOLATION, f"missing fields: {', '.join(absent)}")
    if message.school_id != school_id:
        return Rejection(
            RejectReason.SCHOOL_MISMATCH,
            f"payload school_id {message.school_id!r} published under school {school_id!r}",
        )
    if trust.registry is not None and school_id not in trust.registry:
        return Rejection(RejectReason.UNKNOWN_SCHOOL, f"school {school_id!r} is not registered")
    return _check_time(kind, message, trust, now or datetime.now(UTC))


def _check_time(
    kind: TopicKind, message: Envelope, trust: Trust, now: datetime
) -> Accepted | Rejection:
    """``measured_at`` within the window. A Last Will (written when the agent connected,
    maybe long ago) and a status marked ``clock_synced: false`` are stored at their
    arrival, so their own time is not checked."""
    if isinstance(message, AgentStatus) and message.clock_synced is False:
        return Accepted(kind, message)
    at = message.measured_at
    if at > now + trust.max_future:
        ahead = (at - now).total_seconds()
        return Rejection(
            RejectReason.BAD_TIMESTAMP,
            f"measured_at {at.isoformat()} is {ahead:.0f} s in the future; check the agent's clock",
        )
    will = isinstance(message, AgentStatus) and message.reason is StatusReason.CONNECTION_LOST
    if not will and at < now - trust.max_past:
        return Rejection(
            RejectReason.BAD_TIMESTAMP,
            f"measured_at {at.isoformat()} is more than {trust.max_past.days} days old",
        )
    return Accepted(kind, message)


def _describe(exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return Rejection(RejectReason.INVALID_JSON, errors[0]["msg"][:200])
    if any(e["loc"] == ("schema_version",) and e["type"] != "missing" for e in errors):
        return Rejection(RejectReason.UNSUPPORTED_SCHEMA, "schema_version must be 1")
    missing = [_where(e) for e in errors if e["type"] == "missing"]
    others = [e for e in errors if e["type"] != "missing"]
    parts = [f"missing fields: {', '.join(missing)}"] if missing else []
    parts += [f"{_where(e)}: {e['msg']}" for e in others[:_MAX_DETAIL_ERRORS]]
    if len(others) > _MAX_DETAIL_ERRORS:
        parts.append(f"and {len(others) - _MAX_DETAIL_ERRORS} more")
    return Rejection(RejectReason.SCHEMA_VIOLATION, "; ".join(parts)[:500])


def _where(error: ErrorDetails) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(message)"
