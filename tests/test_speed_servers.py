"""Which server a test runs against: Ookla's choice, pinned or excluded ids, self-hosted URLs.

Ookla's selection runs for real, offline: a namespace whose /etc/hosts sends
www.speedtest.net to a local fake (tests/support/fake_speedtest_net.py) that
serves the configuration over HTTPS only and lists two local speed servers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from localstack import free_port

from agent.contract import ServerKind, SpeedResult
from agent.settings import SpeedtestSettings
from agent.speed import SpeedTester
from agent.speed.endpoint import Endpoint
from agent.speed.latency import MIN_SAMPLES, measure_latency
from collector.speed_server import SpeedServer
from tests.support.misbehaving import MisbehavingSpeedServer
from tests.support.services import REPO, command_env

FAKE = REPO / "tests" / "support" / "fake_speedtest_net.py"
SERVERS = ["1001,127.0.0.1:8081,43.25,76.95,Almaty", "1002,127.0.0.1:8082,43.25,76.95,Astana"]


@dataclass
class OfflineInternet:
    namespace: str
    cert: Path
    fake: subprocess.Popen[str]

    def speedtest(self, **settings: str) -> dict[str, Any]:
        env = command_env(SSL_CERT_FILE=str(self.cert)) | {
            f"SCHOOL_AGENT_SPEEDTEST__{key.upper()}": value for key, value in settings.items()
        }
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.namespace,
                sys.executable,
                "-m",
                "agent",
                "speedtest",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.stdout, result.stderr
        return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def offline_internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineInternet]:
    tmp = tmp_path_factory.mktemp("speedtest-net")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=www.speedtest.net",
            "-addext",
            "subjectAltName=DNS:www.speedtest.net,DNS:c.speedtest.net",
        ],
        check=True,
        capture_output=True,
    )
    name = f"sm-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / name
    etc.mkdir(parents=True)
    (etc / "hosts").write_text("127.0.0.1 localhost www.speedtest.net c.speedtest.net\n")
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    subprocess.run(["ip", "netns", "add", name], check=True)
    inside = ["ip", "netns", "exec", name]
    subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
    speed_servers = [
        subprocess.Popen(
            [*inside, sys.executable, "-m", "collector", "speed-server", "--port", port],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=str(REPO),
        )
        for port in ("8081", "8082")
    ]
    # The server prints its "listening" line once bound; without waiting, a
    # loaded CI machine ran the first test before 8082 was listening.
    for server in speed_servers:
        assert server.stdout is not None
        lines = [server.stdout.readline()]
        if lines[0].startswith("speed-server: congestion control"):  # refused: a warning first
            lines.append(server.stdout.readline())
        assert lines[-1].startswith("speed server listening"), lines
    fake = subprocess.Popen(
        [
            *inside,
            sys.executable,
            str(FAKE),
            "--cert",
            str(cert),
            "--key",
            str(key),
            *[arg for spec in SERVERS for arg in ("--server", spec)],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    assert fake.stdout.readline().strip() == "ready", fake.stderr.read() if fake.stderr else ""
    try:
        yield OfflineInternet(name, cert, fake)
    finally:
        fake.kill()
        fake.wait()
        for server in speed_servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)
        for file in etc.iterdir():
            file.unlink()
        etc.rmdir()


def test_ookla_selection_fetches_the_configuration_over_https(
    offline_internet: OfflineInternet,
) -> None:
    measured = offline_internet.speedtest()

    assert measured["result"] == "success", measured["error"]
    assert measured["server"]["kind"] == "ookla"
    assert measured["server"]["id"] in {"1001", "1002"}
    assert measured["server"]["url"].startswith("http://127.0.0.1:808")


def test_a_pinned_server_id_is_the_one_used(offline_internet: OfflineInternet) -> None:
    measured = offline_internet.speedtest(server_ids="[1002]")
    assert measured["result"] == "success", measured["error"]
    assert measured["server"]["id"] == "1002"
    assert measured["server"]["name"] == "Test Astana (Astana)"


def test_an_excluded_server_is_never_used(offline_internet: OfflineInternet) -> None:
    measured = offline_internet.speedtest(exclude_server_ids="[1001]")
    assert measured["result"] == "success", measured["error"]
    assert measured["server"]["id"] == "1002"


def test_a_pin_that_matches_no_server_is_reported(offline_internet: OfflineInternet) -> None:
    measured = offline_internet.speedtest(server_ids="[999]")
    assert measured["result"] == "no_servers"
    assert measured["result_code"] == 8


def test_the_configuration_never_went_over_plain_http(offline_internet: OfflineInternet) -> None:
    offline_internet.speedtest()
    offline_internet.fake.kill()
    assert offline_internet.fake.stdout is not None
    requests = offline_internet.fake.stdout.read().split("\n")
    assert "https /speedtest-config.php" in requests
    assert "http /speedtest-config.php" not in requests


def test_among_self_hosted_servers_the_nearest_that_answers_is_used(
    speed_server: SpeedServer,
) -> None:
    far = MisbehavingSpeedServer("slow")
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        settings = SpeedtestSettings(server_urls=[dead, far.url, speed_server.url])
        measured = SpeedTester(settings).measure()
    finally:
        far.close()
    assert measured.result is SpeedResult.SUCCESS, measured.error
    assert measured.server is not None
    assert measured.server.kind is ServerKind.SELF_HOSTED
    assert measured.server.url == speed_server.url


def test_ids_cannot_be_combined_with_self_hosted_servers() -> None:
    with pytest.raises(ValueError, match="Ookla's servers"):
        SpeedtestSettings(server_url="http://x:1", server_ids=[5])


def test_latency_on_a_long_link_takes_the_samples_that_fit_in_its_time() -> None:
    far = MisbehavingSpeedServer("slow")  # every request one 50 ms round trip away
    endpoint = Endpoint(f"{far.url}/speedtest/upload.php")
    try:
        short_link = measure_latency(endpoint)  # 10 requests take 0.5 s: all of them
        long_link = measure_latency(endpoint, within_s=0.2)  # as 3 s is to a satellite link
    finally:
        far.close()
    assert len(short_link.samples_ms) == 10
    assert len(long_link.samples_ms) == MIN_SAMPLES
    assert long_link.median_ms >= 50
