"""Speed tests with speedtest-cli against a real local speed server, and its failures as data."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from localstack import free_port, port_open

from agent.contract import SpeedResult
from agent.settings import SpeedtestSettings
from agent.speed import SilentProgress, SpeedTester
from agent.speed.endpoint import Endpoint
from agent.speed.runner import StopFlag, self_hosted_base
from agent.speed.transfer import Direction, Reading, SocketCount, transfer
from collector.speed_server import SpeedServer
from tests.support.misbehaving import FixedReplyServer, StallingServer
from tests.support.services import command_env, run_agent, wait_for


def test_speedtest_json_reports_real_figures(speed_server: SpeedServer) -> None:
    result = run_agent(
        "speedtest", "--json", env={"SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url}
    )

    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["result"] == "success"
    assert measured["result_code"] == 0
    assert measured["download_mbps"] > 20
    assert measured["upload_mbps"] > 20
    assert measured["latency_ms"] > 0
    assert measured["meets_threshold"] is True
    assert measured["bytes_received"] > 1_000_000
    assert measured["bytes_sent"] > 1_000_000
    assert measured["duration_s"] > 0
    assert measured["server"] == {
        "kind": "self_hosted",
        "id": "127.0.0.1",
        "name": speed_server.url.removeprefix("http://"),
        "url": speed_server.url,
    }


def test_speedtest_prints_a_readable_result(speed_server: SpeedServer) -> None:
    result = run_agent(
        "speedtest",
        env={
            "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url + "/speedtest/upload.php",
            "SCHOOL_AGENT_SPEEDTEST__SERVER_NAME": "almaty-1",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "(self_hosted, id almaty-1)" in result.stdout
    assert "meets the 20 Mbps standard" in result.stdout


def test_threshold_decides_the_verdict(speed_server: SpeedServer) -> None:
    settings = SpeedtestSettings(server_url=speed_server.url, threshold_mbps=100_000)
    measured = SpeedTester(settings).measure()

    assert measured.result is SpeedResult.SUCCESS
    assert measured.meets_threshold is False


@pytest.mark.parametrize(
    "url",
    ["http://h:1", "http://h:1/", "http://h:1/speedtest/upload.php", "http://h:1/speedtest/"],
)
def test_any_url_of_a_mini_server_names_its_base(url: str) -> None:
    assert self_hosted_base(url) == "http://h:1"


def _measure(url: str, timeout_s: float = 5) -> tuple[SpeedResult, int, str]:
    m = SpeedTester(SpeedtestSettings(server_url=url, timeout_s=timeout_s)).measure()
    assert m.download_mbps is None
    assert m.meets_threshold is None
    assert m.server is not None
    assert m.server.url == url
    return m.result, m.result_code, m.error or ""


def test_refused_connection_is_a_connection_failure() -> None:
    result, code, error = _measure(f"http://127.0.0.1:{free_port()}")
    assert (result, code) == (SpeedResult.CONNECTION_FAILED, 2)
    assert "Connection refused" in error


def test_http_403_is_an_http_error() -> None:
    server = FixedReplyServer(403, b"forbidden")
    try:
        result, code, error = _measure(server.url)
    finally:
        server.close()
    assert (result, code) == (SpeedResult.HTTP_ERROR, 4)
    assert "HTTP 403" in error


def test_a_web_server_that_is_not_a_speed_server_is_named_so() -> None:
    server = FixedReplyServer(200, b"<html>hello</html>")
    try:
        result, code, error = _measure(server.url)
    finally:
        server.close()
    assert (result, code) == (SpeedResult.INVALID_SERVER, 5)
    assert "not a speed server" in error


def test_a_server_that_never_answers_times_out() -> None:
    server = StallingServer()
    try:
        result, code, error = _measure(server.url, timeout_s=1)
    finally:
        server.close()
    assert (result, code) == (SpeedResult.TIMEOUT, 3)
    assert "timed out" in error


def test_a_failed_test_exits_non_zero_with_its_result_as_json() -> None:
    result = run_agent(
        "speedtest",
        "--json",
        env={"SCHOOL_AGENT_SPEEDTEST__SERVER_URL": f"http://127.0.0.1:{free_port()}"},
    )
    assert result.returncode == 1
    measured = json.loads(result.stdout)
    assert measured["result"] == "connection_failed"
    assert measured["download_mbps"] is None


@pytest.fixture
def isolated_namespace() -> Iterator[str]:
    """A network namespace with loopback only: no route to speedtest.net or anywhere else."""
    name = f"sm-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_self_hosted_mode_works_with_no_route_to_speedtest_net(isolated_namespace: str) -> None:
    inside = ["ip", "netns", "exec", isolated_namespace]
    port = free_port()
    server = subprocess.Popen(
        [*inside, sys.executable, "-m", "collector", "speed-server", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=command_env(),
    )
    try:
        probe = [
            *inside,
            sys.executable,
            "-c",
            f"import localstack; exit(not localstack.port_open({port}))",
        ]
        wait_for(
            lambda: (
                subprocess.run(probe, env=command_env(PYTHONPATH="deploy"), check=False).returncode
                == 0
            ),
            what="the speed server inside the namespace",
        )
        routes = subprocess.run(
            [*inside, "ip", "route"], capture_output=True, text=True, check=True
        )
        assert routes.stdout.strip() == "", "the namespace must have no route at all"
        result = subprocess.run(
            [*inside, sys.executable, "-m", "agent", "speedtest", "--json"],
            env=command_env(SCHOOL_AGENT_SPEEDTEST__SERVER_URL=f"http://127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["result"] == "success"
    assert not port_open(port), "the server lived inside the namespace, not on this host"


def test_ookla_mode_without_any_network_is_a_dns_error_not_a_crash(
    isolated_namespace: str,
) -> None:
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            isolated_namespace,
            sys.executable,
            "-m",
            "agent",
            "speedtest",
            "--json",
        ],
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    measured = json.loads(result.stdout)
    assert measured["result"] == "dns_error"
    assert measured["result_code"] == 1
    assert "speedtest.net configuration" in measured["error"]
    assert "Traceback" not in result.stderr


def test_progress_is_drawn_on_a_terminal(speed_server: SpeedServer) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "speedtest"],
        env=command_env(SCHOOL_AGENT_SPEEDTEST__SERVER_URL=speed_server.url),
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process is done with it
            break
        if not chunk:
            break
        drawn += chunk
    process.wait(timeout=120)
    os.close(controller)
    screen = drawn.decode(errors="replace")
    assert process.returncode == 0
    assert "Latency    " in screen
    assert "Download   [" in screen, "a bar while the download runs"
    assert "Upload     [" in screen
    assert re.search(r"Download   \[#+\.*\] [0-9.]+ Mbps", screen), "with the live rate"
    assert re.search(r"Upload     [0-9.]+ Mbps\r\n", screen), "and the figure when done"


def test_one_connection_downloads_file_after_file(speed_server: SpeedServer) -> None:
    """Persistent connections: the stream keeps requesting after each 32 MB file."""
    endpoint = Endpoint(f"{speed_server.url}/speedtest/upload.php")
    result = transfer(
        Direction.DOWNLOAD,
        endpoint,
        rtt_s=0.001,
        connections=1,
        timeout_s=10,
        stop=StopFlag(),
        progress=SilentProgress(),
        max_bytes=100_000_000,  # three files and more: only a reused connection gets there
    )
    assert result.bytes_moved == 100_000_000


def test_a_segment_count_in_bytes_never_falls_when_the_segment_size_estimate_shrinks() -> None:
    """The kernel's receive segment size shrinks mid-connection (two shorter segments in a
    row); 1000 segments times the new size once read below 900 times the old, and a
    13 Gbps loopback download reported -2787 Mbps. Each segment counts at its own size."""
    readings: list[Reading] = [(900, 65483), (1000, 32768), (1100, 65483), None]
    count = SocketCount(lambda _sock: readings.pop(0))
    first, second = socket.socketpair()
    with first, second:
        totals = [count.update(first) for _ in range(4)]
        assert totals == [
            900 * 65483,
            900 * 65483 + 100 * 32768,
            900 * 65483 + 100 * 32768 + 100 * 65483,
            900 * 65483 + 100 * 32768 + 100 * 65483,  # no reading: the count holds
        ]
        readings.append((10, 1000))
        assert count.update(second) == totals[-1] + 10 * 1000, "a new socket counts from 0"
