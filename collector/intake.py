"""Decode and validate one MQTT message against the wire contract; never raises.

Every message is either accepted as a contract model or rejected with a
:class:`~agent.contract.RejectReason` and a short detail for the dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from agent.contract import MESSAGE_MODELS, Envelope, RejectReason, TopicKind, parse_topic

_MAX_DETAIL_ERRORS = 3


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class Accepted:
    kind: TopicKind
    message: Envelope


def decode(  # noqa: PLR0911 - one return per check reads best
    root: str, topic: str, payload: bytes, max_bytes: int
) -> Accepted | Rejection:
    """Check size, topic, encoding, JSON, schema and school identity, in that order."""
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
    if message.school_id != school_id:
        return Rejection(
            RejectReason.SCHOOL_MISMATCH,
            f"payload school_id {message.school_id!r} published under school {school_id!r}",
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
