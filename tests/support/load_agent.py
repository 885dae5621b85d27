"""A school agent that produces speed results quickly, for the fault-injection suite.

    python -m tests.support.load_agent --broker mqtt://127.0.0.1:1883 --root t/schools \\
        --school KZ-1 --state-dir /tmp/kz1 --count 150 --rate 30

It drives the agent's real :class:`~agent.publisher.Publisher` and
:class:`~agent.outbox.Outbox` (only the daemon's schedule is replaced by a
loop), prints ``stored <n> <message_id>`` once message ``n`` is in the outbox
on disk, and ``done`` once its outbox is empty: the broker acknowledged
everything or, when the collectors send receipts, the collector confirmed it. Killed and
started again with the same ``--state-dir``, it carries on where it stopped:
message ``n`` always has the same id and time, so producing it twice is
harmless, as a redelivery is.
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.contract import (
    SPEED_RESULT_CODES,
    SpeedMeasurement,
    SpeedReport,
    SpeedResult,
    TopicKind,
)
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.settings import AgentMqttSettings, OutboxSettings

BASE = datetime(2026, 11, 22, tzinfo=UTC)


def report(school_id: str, number: int) -> SpeedReport:
    download = 10.0 + number % 50
    measurement = SpeedMeasurement(
        result=SpeedResult.SUCCESS,
        result_code=SPEED_RESULT_CODES[SpeedResult.SUCCESS],
        threshold_mbps=20.0,
        download_mbps=download,
        upload_mbps=5.0,
        latency_ms=20.0,
        jitter_ms=1.0,
        meets_threshold=download >= 20.0,
        bytes_received=1000,
        bytes_sent=500,
        duration_s=1.0,
    )
    fields = {name: getattr(measurement, name) for name in SpeedMeasurement.model_fields}
    return SpeedReport(
        message_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{school_id}/{number}").hex,
        school_id=school_id,
        agent_id="load-agent",
        measured_at=BASE + timedelta(seconds=number),
        **fields,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--school", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=30.0, help="messages per second")
    parser.add_argument("--receipt-grace", type=float, default=2.0, help="outbox.receipt_grace_s")
    parser.add_argument(
        "--receipt-timeout", type=float, default=20.0, help="outbox.receipt_timeout_s"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    progress = args.state_dir / "produced"
    start = int(progress.read_text()) if progress.exists() else 0
    outbox = Outbox(args.state_dir / "outbox.db")
    publisher = Publisher(
        AgentMqttSettings(url=args.broker, topic_root=args.root),
        outbox,
        plan=OutboxSettings(
            replay_rate_per_s=200,
            max_in_flight=50,
            resend_after_s=10,
            receipt_grace_s=args.receipt_grace,
            receipt_timeout_s=args.receipt_timeout,
        ),
        school_id=args.school,
        agent_id="load-agent",
        boot_id=uuid.uuid4().hex,
        version="load",
    )
    publisher.start()
    for number in range(start, args.count):
        message = report(args.school, number)
        publisher.publish(message, TopicKind.SPEED)
        progress.write_text(str(number + 1))
        print(f"stored {number} {message.message_id}", flush=True)
        time.sleep(1 / args.rate)
    deadline = time.monotonic() + 600
    while outbox.stats().messages and time.monotonic() < deadline:
        time.sleep(0.1)
    print("done" if not outbox.stats().messages else "gave up", flush=True)
    publisher.close()


if __name__ == "__main__":
    main()
