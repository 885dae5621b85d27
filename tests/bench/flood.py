"""Flood benchmark: one school's account publishing flat out, against the shipped broker.

    .venv/bin/python -m tests.bench.flood                   # about 2 minutes
    .venv/bin/python -m tests.bench.flood --seconds 30

The shipped deploy/mosquitto/secure.conf with accounts from ``provision``, a
real collector with its stock settings (budget included) and InfluxDB, all on
loopback. It measures, in one run:

1. **The flood.** School KZ-F publishes valid speed results as fast as its one
   TLS connection goes (QoS 1; the broker binds its account to one session, so
   it gets no second connection) for ``--seconds``, while the collector is away:
   everything queues on the collector's persistent session.
2. **The collector throwing it away.** The collector starts and drains that
   queue: all but the school's burst is rejected as ``rate_limited`` without a
   write. Its messages/s against the flood's rate says whether a flood can grow
   the queue while the collector runs.
3. **How long the queue absorbs it.** ``max_queued_messages`` (1,400,000 as
   shipped) divided by the flood's rate, with the collector away; with it
   running, the queue grows only at the flood's rate minus the collector's.

QoS 0 floods are not measured: Mosquitto queues no QoS 0 message for an
absent client (``queue_qos0_messages`` is off), so they cannot fill the queue.
The flooder runs on the same two cores as broker and collector; a real one
is bounded by its school's uplink as well (a 20 Mbps uplink carries about
2,900 of these 850-byte messages a second).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy"))  # localstack, as pytest's pythonpath gives it

from localstack import InfluxDB, free_port  # noqa: E402

from collector.influx.query import InfluxQL  # noqa: E402
from collector.influx.v1 import V1Writer  # noqa: E402
from collector.settings import InfluxSettings  # noqa: E402
from tests.bench.ingest import Usage, _wait  # noqa: E402
from tests.support.flooder import Flooder  # noqa: E402
from tests.support.secure_broker import start_secure_broker  # noqa: E402
from tests.support.services import collector_process, command_env  # noqa: E402

FLOODER = "KZ-F"
QUEUE_LIMIT = 1_400_000  # max_queued_messages in deploy/mosquitto/school-monitor.conf


def _counter(client: InfluxQL, name: str) -> int:
    rows = client.query(f'SELECT last("{name}") FROM "collector"')
    return int(rows[0].values[0][1]) if rows and rows[0].values else 0


def run(seconds: float, limit: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as work:
        base = Path(work)
        secure = start_secure_broker(base / "broker", [FLOODER, "KZ-N"])
        influx = InfluxDB(base / "influx", free_port(), free_port())
        influx.start()
        settings = InfluxSettings(url=influx.url, database="flood")
        V1Writer(settings).ensure_database()
        query = InfluxQL(settings)
        env = command_env(**secure.collector_env()) | {
            "SCHOOL_COLLECTOR_INFLUX__URL": influx.url,
            "SCHOOL_COLLECTOR_INFLUX__DATABASE": "flood",
            "SCHOOL_COLLECTOR_STATS_INTERVAL_S": "1",
            "SCHOOL_COLLECTOR_LOG_LEVEL": "WARNING",
        }
        collector = collector_process(base, env)
        try:
            print("creating the collector's session...", flush=True)
            collector.start()
            # its counters are written once it is connected and subscribed
            _wait(lambda: bool(query.query('SELECT last("received") FROM "collector"')), 60,
                  "the collector")  # fmt: skip
            collector.stop()

            print(f"flooding for {seconds:g} s with the collector away...", flush=True)
            started = time.monotonic()
            sent = Flooder(secure, FLOODER).run(seconds, limit)
            flood_s = time.monotonic() - started
            flood_rate = sent / flood_s

            print(f"  {sent} messages queued ({flood_rate:.0f}/s); draining...", flush=True)
            collector.start()
            pid = collector.pid()
            assert pid is not None
            usage = Usage([psutil.Process(pid)])
            drain_started = time.monotonic()
            last_report = drain_started
            while _counter(query, "received") < sent:
                if time.monotonic() - drain_started > 600:
                    raise TimeoutError("the collector did not drain the flood in 10 minutes")
                if time.monotonic() - last_report > 5:
                    print(f"  received {_counter(query, 'received')} of {sent}", flush=True)
                    last_report = time.monotonic()
                time.sleep(0.2)
            drain_s = time.monotonic() - drain_started
            cpu = usage.percent()
            received = _counter(query, "received")
            stored = _counter(query, "stored")
            rejected = _counter(query, "rejected")
        finally:
            collector.stop()
            secure.broker.stop()
            influx.stop()
    reject_rate = received / drain_s  # includes the ~1 s start-up: a lower bound
    return {
        "flood_seconds": round(flood_s, 1),
        "flood_messages": sent,
        "flood_rate_per_s": round(flood_rate),
        "drain_seconds": round(drain_s, 1),
        "collector_rate_per_s": round(reject_rate),
        "collector_cpu_percent": round(cpu, 1),
        "stored": stored,
        "rejected": rejected,
        "queue_full_after_s_collector_away": round(QUEUE_LIMIT / flood_rate),
        "queue_growth_per_s_collector_running": max(0, round(flood_rate - reject_rate)),
    }


def table(figures: dict[str, Any]) -> str:
    growth = figures["queue_growth_per_s_collector_running"]
    running = (
        "never: the collector throws the flood away faster than it comes"
        if growth == 0
        else f"after {QUEUE_LIMIT / growth / 60:.0f} minutes"
    )
    rows = [
        ("one school's flood over TLS, QoS 1 (one connection)",
         (f"{figures['flood_rate_per_s']:,} messages/s "
         f"({figures['flood_messages']:,} in {figures['flood_seconds']} s)")),
        ("the collector draining it (all but the burst rejected)",
         (f"{figures['collector_rate_per_s']:,} messages/s at "
         f"{figures['collector_cpu_percent']} % of a core")),
        ("stored / rejected as rate_limited", f"{figures['stored']:,} / {figures['rejected']:,}"),
        (f"the collector's queue ({QUEUE_LIMIT:,}) full, collector away",
         f"after {figures['queue_full_after_s_collector_away'] / 60:.0f} minutes"),
        ("the queue full, collector running", running),
    ]  # fmt: skip
    lines = ["| measure | result |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.flood",
        description="One school floods the shipped broker: its rate, the collector's, the queue.",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="flood length (20)")
    parser.add_argument("--limit", type=int, default=500_000, help="at most this many messages")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(args.seconds, args.limit)
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
