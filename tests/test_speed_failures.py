"""Failure is data: every way a speed test can fail gives a result and a code, never a hang.

Each case runs the real speed test against a real local server that
misbehaves on purpose, or over a real link that is cut mid-test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.contract import SPEED_RESULT_CODES, SpeedMeasurement, SpeedResult
from agent.settings import SpeedtestSettings
from agent.speed import SpeedTester
from tests.bench.speed_accuracy import speed_server
from tests.support.misbehaving import GarbageServer, MisbehavingSpeedServer
from tests.support.services import command_env
from tests.support.shaped_link import SERVER_IP, LinkShape, ShapedLink

TIMEOUT_S = 2.0


def _measure(url: str) -> SpeedMeasurement:
    return SpeedTester(SpeedtestSettings(server_url=url, timeout_s=TIMEOUT_S)).measure()


def _assert_failed(measured: SpeedMeasurement, result: SpeedResult) -> None:
    assert measured.result is result, measured.error
    assert measured.result_code == SPEED_RESULT_CODES[result]
    assert measured.download_mbps is None
    assert measured.upload_mbps is None
    assert measured.meets_threshold is None
    assert measured.error
    # bounded: a few timeouts at most, never the minutes of a hung socket
    assert measured.duration_s < 10 * TIMEOUT_S, measured.duration_s


def test_a_server_that_answers_garbage_is_a_protocol_error() -> None:
    server = GarbageServer()
    try:
        measured = _measure(server.url)
    finally:
        server.close()
    _assert_failed(measured, SpeedResult.PROTOCOL_ERROR)
    assert "does not speak HTTP" in (measured.error or "")


@pytest.mark.parametrize(
    ("mode", "result"),
    [
        ("garbage", SpeedResult.PROTOCOL_ERROR),
        ("stall", SpeedResult.INTERRUPTED),
        ("close", SpeedResult.INTERRUPTED),
    ],
)
def test_a_download_spoiled_midway_is_named(mode: str, result: SpeedResult) -> None:
    server = MisbehavingSpeedServer(mode)
    try:
        measured = _measure(server.url)
    finally:
        server.close()
    _assert_failed(measured, result)
    if mode != "garbage":
        assert measured.bytes_received > 0, "the bytes that did arrive are counted"


def test_an_unknown_host_is_a_dns_error(tmp_path: Path) -> None:
    """Inside a namespace with its own resolv.conf, so no query leaves this machine."""
    name = f"sm-{uuid.uuid4().hex[:8]}"
    resolv = Path("/etc/netns") / name
    resolv.mkdir(parents=True)
    (resolv / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # nothing listens there
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        result = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-m", "agent", "speedtest", "--json"],
            env=command_env(SCHOOL_AGENT_SPEEDTEST__SERVER_URL="http://speed.school.invalid:8080"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        (resolv / "resolv.conf").unlink()
        resolv.rmdir()
    measured = SpeedMeasurement.model_validate_json(result.stdout)
    _assert_failed(measured, SpeedResult.DNS_ERROR)
    assert result.returncode == 1


@pytest.fixture
def slow_link() -> Iterator[ShapedLink]:
    with ShapedLink(LinkShape(rate_mbps=20, rtt_ms=80)) as link:
        server = speed_server(link, 8080, "bbr")
        link.wait_for_server_port(8080)
        yield link
        server.kill()
        server.wait()


def _cut_once_downloading(link: ShapedLink) -> None:
    """Take the link down once the download's connections are open (the latency probe has one)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["ip", "netns", "exec", link.server_ns, "ss", "-Htn", "state", "established",
             "( sport = :8080 )"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        if len(listed.splitlines()) >= 4:
            time.sleep(0.2)  # data is flowing; the download lasts 1.2 s at least (6 batches)
            break
        time.sleep(0.05)
    link.cut()


def test_a_link_lost_mid_test_is_interrupted_not_a_hang(slow_link: ShapedLink) -> None:
    agent = slow_link.popen_in_client(
        [sys.executable, "-m", "agent", "speedtest", "--json"],
        env=command_env(
            SCHOOL_AGENT_SPEEDTEST__SERVER_URL=f"http://{SERVER_IP}:8080",
            SCHOOL_AGENT_SPEEDTEST__TIMEOUT_S=str(TIMEOUT_S * 2),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cut = threading.Thread(target=_cut_once_downloading, args=(slow_link,))
    cut.start()
    started = time.monotonic()
    out, err = agent.communicate(timeout=120)
    cut.join()
    assert time.monotonic() - started < 60, "bounded by the timeout, not by TCP's minutes"
    measured = SpeedMeasurement.model_validate_json(out)
    assert measured.result is SpeedResult.INTERRUPTED, (measured.error, err[-500:])
    assert measured.result_code == 10
    assert measured.bytes_received > 0
    assert measured.download_mbps is None
    json.loads(out)  # one JSON object, as --json promises
