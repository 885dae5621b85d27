"""A school's uplink cut, then its router gone, then its DNS failing: three outages, each
with its cause, each within one check interval of the truth.

The agent's connectivity checks run in a school namespace of a test network
(tests/support/school_network.py): a router namespace and an upstream with a
service and a DNS server. Nothing leaves this machine.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.school_network import BROKER_NAME, SERVICE_PORT, SchoolNetwork
from tests.support.services import REPO

INTERVAL_S = 5.0
FAULT_S = 25.0  # each outage; three minutes in the field, shortened here


@pytest.mark.timeout(240)
def test_each_outage_is_recorded_with_its_cause_within_one_interval(tmp_path: Path) -> None:
    with SchoolNetwork() as network:
        runner = subprocess.Popen(
            ["ip", "netns", "exec", network.school, sys.executable, "-m",
             "tests.support.connectivity_runner", "--interval", str(INTERVAL_S),
             "--ledger", str(tmp_path / "connectivity.json"), "--seconds", "150",
             "--tcp", f"{BROKER_NAME}:{SERVICE_PORT}", "--dns", BROKER_NAME],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        truth: list[tuple[str, float, float]] = []
        try:
            time.sleep(2 * INTERVAL_S)
            for cause, fault in (
                ("upstream", network.uplink),
                ("gateway", network.router),
            ):
                began = time.time()
                fault(up=False)
                time.sleep(FAULT_S)
                fault(up=True)
                truth.append((cause, began, time.time()))
                time.sleep(2 * INTERVAL_S)
            began = time.time()
            network.dns_down()
            time.sleep(FAULT_S)
            network.dns_up()
            truth.append(("dns", began, time.time()))
            time.sleep(2 * INTERVAL_S)
        finally:
            runner.terminate()
            out, _ = runner.communicate(timeout=30)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    outages = [line["outage"] for line in lines if "outage" in line]
    rounds = [(line["round"], line["cause"]) for line in lines if "round" in line]
    assert [o["cause"] for o in outages] == [cause for cause, _, _ in truth], rounds
    for outage, (cause, began, ended) in zip(outages, truth, strict=True):
        assert 0 <= outage["start"] - began <= INTERVAL_S, (cause, outage, began)
        assert -1 <= outage["end"] - ended <= INTERVAL_S, (cause, outage, ended)
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(rounds)]
    assert max(gaps) <= INTERVAL_S + 0.5  # a round never took longer than its interval
