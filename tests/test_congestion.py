"""Congestion control on a speed test's sockets: BBR where allowed, the default where not.

An unprivileged process may only choose what
``net.ipv4.tcp_allowed_congestion_control`` lists (the kernel answers EPERM
otherwise). These tests set that list for their own duration (it is global
to the machine, so they put it back), and choose ``reno``, which every Linux
kernel has built in.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.speed import congestion
from collector.speed_server import SpeedServer
from tests.support.services import REPO

ALLOWED = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
NOBODY = 65534


@pytest.fixture
def allowed_list() -> Iterator[Path]:
    saved = ALLOWED.read_text().strip()
    try:
        yield ALLOWED
    finally:
        ALLOWED.write_text(saved)


def _default() -> str:
    default = congestion.system_default()
    assert default, "this kernel names its default congestion control"
    return default


def test_an_algorithm_the_kernel_lacks_leaves_the_default_in_force() -> None:
    with socket.socket() as sock:
        assert congestion.choose(sock, "no-such-cc") == _default()


def test_a_chosen_algorithm_is_in_force_on_the_socket() -> None:
    with socket.socket() as sock:
        assert congestion.choose(sock, "reno") == "reno"
        assert congestion.in_force(sock) == "reno"


def _choose_as_nobody(wanted: str) -> str:
    """What ``choose`` gives an unprivileged process (a forked child that drops root)."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with socket.socket() as sock:
                os.write(write, (congestion.choose(sock, wanted) or "").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        got = answer.read()
    os.waitpid(child, 0)
    return got


def test_an_unprivileged_agent_falls_back_where_the_algorithm_is_not_allowed(
    allowed_list: Path,
) -> None:
    default = _default()
    allowed_list.write_text(default)  # what a stock system allows: its default only
    assert "reno" in congestion.available()

    assert _choose_as_nobody("reno") == default


def test_an_unprivileged_agent_gets_the_algorithm_once_it_is_allowed(allowed_list: Path) -> None:
    allowed_list.write_text(f"{_default()} reno")  # what the agent's package adds

    assert _choose_as_nobody("reno") == "reno"


def test_a_speed_test_where_the_algorithm_is_refused_succeeds_and_names_what_it_used(
    allowed_list: Path, speed_server: SpeedServer
) -> None:
    default = _default()
    allowed_list.write_text(default)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHOOL_")}
    env |= {
        "SCHOOL_AGENT_SPEEDTEST__SERVER_URL": speed_server.url,
        "SCHOOL_AGENT_SPEEDTEST__CONGESTION_CONTROL": "reno",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-m", "agent", "speedtest", "--json"],
        capture_output=True, text=True, env=env, timeout=120, check=False, cwd="/",
    )  # fmt: skip

    measured = json.loads(result.stdout)
    assert measured["result"] == "success", measured.get("error")
    assert measured["method"]["name"] == "confidence"
    assert measured["method"]["congestion_control"] == default


def test_the_speed_server_sends_with_the_algorithm_it_was_given() -> None:
    server = SpeedServer(congestion_control="reno")
    try:
        assert server.congestion == "reno"
        host, port = server.server_address[:2]
        with socket.create_connection((str(host), port)) as client:
            accepted, _ = server.socket.accept()  # what a request's handler would get
            with accepted:
                assert congestion.in_force(accepted) == "reno"
            assert congestion.in_force(client) == _default()
    finally:
        server.server_close()
