"""One cell of the accuracy benchmark in the suite: 20 Mbps at 80 ms, against a reference.

The full grid is tests/bench/speed_accuracy.py (README, "Speed accuracy");
this cell guards the measurement with a wide tolerance, since the suite
shares two cores with everything else.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.bench.speed_accuracy import (
    BBR_SPEED_PORT,
    IPERF_PORT,
    SPEED_PORT,
    run_agent,
    run_reference,
    speed_server,
)
from tests.support.shaped_link import LinkShape, ShapedLink

TOLERANCE = 0.15


@pytest.fixture(scope="module")
def link() -> Iterator[ShapedLink]:
    with ShapedLink(LinkShape(rate_mbps=20, rtt_ms=80)) as built:
        servers = [
            built.popen_in_server(
                ["iperf3", "-s", "-p", str(IPERF_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            speed_server(built, SPEED_PORT, "system"),
            speed_server(built, BBR_SPEED_PORT, "bbr"),
        ]
        for port in (IPERF_PORT, SPEED_PORT, BBR_SPEED_PORT):
            built.wait_for_server_port(port)
        yield built
        for server in servers:
            server.kill()
            server.wait()


def test_the_emulated_link_has_the_round_trip_asked_for(link: ShapedLink) -> None:
    assert link.measured_rtt_ms is not None
    assert 78 <= link.measured_rtt_ms <= 90


def test_agent_measures_20_mbps_at_80_ms_like_the_reference(link: ShapedLink) -> None:
    reference = {d: run_reference(link, d, "cubic") for d in ("download", "upload")}
    measured = run_agent(link, "confidence")

    assert measured["result"] == "success", measured.get("error")
    # The result names how it was made: the rule, BBR on the agent's sockets (root may
    # choose any algorithm the kernel has), and the connections for an 80 ms link.
    assert measured["method"] == {
        "name": "confidence",
        "congestion_control": "bbr",
        "connections": 16,
    }
    for direction in ("download", "upload"):
        ratio = measured[f"{direction}_mbps"] / reference[direction]
        assert abs(ratio - 1) <= TOLERANCE, (direction, measured, reference)
    assert 17 <= reference["download"] <= 20, "the reference itself sees the 20 Mbps shaping"
    assert 75 <= measured["latency_ms"] <= 95, "latency is the real round trip to the server"
    assert measured["jitter_ms"] < 10
