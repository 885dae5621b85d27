"""The agent's connectivity checks, run for real inside a test network's school namespace.

    ip netns exec SCHOOL python -m tests.support.connectivity_runner \\
        --interval 5 --ledger /tmp/x.json --seconds 120 --tcp broker.test:1883 --dns broker.test

Prints one JSON line per round (its time and cause) and per outage that ended.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agent.connectivity import ConnectivityMonitor, DnsTarget, Hour, Outage, Target, TcpTarget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--tcp", action="append", default=[], metavar="HOST:PORT")
    parser.add_argument("--dns", action="append", default=[], metavar="NAME")
    args = parser.parse_args()
    targets: list[Target] = [
        TcpTarget(f"tcp {t}", t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in args.tcp
    ]
    targets += [DnsTarget(f"dns {name}", name) for name in args.dns]

    def finished(outages: list[Outage], hours: list[Hour]) -> None:
        for outage in outages:
            print(json.dumps({"outage": vars(outage)}), flush=True)
        for hour in hours:
            print(json.dumps({"hour": vars(hour)}), flush=True)

    monitor = ConnectivityMonitor(targets, args.interval, args.ledger, finished, timeout_s=2.0)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        found = monitor.run_once()
        print(json.dumps({"round": found.at, "cause": found.cause}), flush=True)
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
