"""What a school can do about each reason the collector gives for refusing a message.

The agent logs it with the refusal, and ``school-agent doctor`` shows it with
the last one.
"""

from __future__ import annotations

from agent.contract import RejectReason

REFUSAL_ADVICE = {
    RejectReason.BAD_TIMESTAMP.value: "the PC's clock was wrong; check `timedatectl` and NTP",
    RejectReason.UNKNOWN_SCHOOL.value: (
        "the collector's registry does not list this school_id; check school_id in the config "
        "against the ministry's registry, or ask the ministry to import it"
    ),
    RejectReason.SCHOOL_MISMATCH.value: "school_id in the config differs from the account's",
    RejectReason.SCHEMA_VIOLATION.value: (
        "the collector does not accept this agent's messages: upgrade the agent, or tell the "
        "ministry (the collector must be upgraded first)"
    ),
    RejectReason.UNSUPPORTED_SCHEMA.value: "upgrade the agent (or the collector first)",
    RejectReason.RATE_LIMITED.value: (
        "this school sent more than its hourly budget; it is sent again later"
    ),
}
DEFAULT_ADVICE = "tell the ministry's operators; the collector's dead-letter topic has the details"
