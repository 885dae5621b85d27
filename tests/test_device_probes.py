"""Active checks against real local servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localstack import free_port

from agent.contract import DeviceResult
from agent.devices.inventory import DeviceConfig
from agent.devices.probes import Prober, icmp_privileged
from agent.devices.state import Outcome
from tests.support.device_sims import HttpDevice, TcpDevice, self_signed_certificate
from tests.support.services import REPO, command_env


def _check(privileged_icmp: bool = False, **settings: Any) -> Outcome:
    device = DeviceConfig.model_validate(
        {"id": "d1", "kind": "panic_button", "label": "Device"} | settings
    )
    return asyncio.run(Prober(device, privileged_icmp=privileged_icmp).check())


def _assert(outcome: Outcome, result: DeviceResult) -> None:
    assert outcome.result is result, outcome
    if result is DeviceResult.SUCCESS:
        assert outcome.response_ms is not None
        assert outcome.response_ms > 0
    else:
        assert outcome.response_ms is None
        assert outcome.detail


@pytest.fixture
def http_device() -> Iterator[HttpDevice]:
    device = HttpDevice()
    yield device
    device.close()


# -- TCP ------------------------------------------------------------------------


def test_tcp_connect_to_a_listening_device_succeeds() -> None:
    device = TcpDevice()
    _assert(_check(check="tcp", address=device.address), DeviceResult.SUCCESS)
    device.stop()


def test_tcp_to_a_closed_port_is_connection_refused() -> None:
    _assert(
        _check(check="tcp", address=f"127.0.0.1:{free_port()}"), DeviceResult.CONNECTION_REFUSED
    )


def test_tcp_exchange_succeeds_on_the_expected_reply() -> None:
    device = TcpDevice(reply=b"PONG\r\n")
    outcome = _check(check="tcp", address=device.address, send="PING\\r\\n", expect="PONG")
    _assert(outcome, DeviceResult.SUCCESS)
    device.stop()


def test_tcp_exchange_with_a_wrong_reply_is_reply_mismatch() -> None:
    device = TcpDevice(reply=b"ERR\n")
    outcome = _check(check="tcp", address=device.address, send="PING\n", expect="PONG")
    _assert(outcome, DeviceResult.REPLY_MISMATCH)
    device.stop()


def test_tcp_exchange_with_a_silent_device_times_out_on_time() -> None:
    with socket.socket() as silent:  # the kernel accepts; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        outcome = _check(check="tcp", address=address, send="PING", expect="PONG", timeout_s=0.5)
        took = time.monotonic() - started
    _assert(outcome, DeviceResult.TIMEOUT)
    assert took < 5  # bounded by timeout_s, not by the device


# -- HTTP ------------------------------------------------------------------------


def test_http_health_endpoint_succeeds(http_device: HttpDevice) -> None:
    _assert(_check(check="http", url=http_device.url, expect_body="ok"), DeviceResult.SUCCESS)


def test_http_403_is_a_status_mismatch(http_device: HttpDevice) -> None:
    http_device.status = 403
    outcome = _check(check="http", url=http_device.url)
    _assert(outcome, DeviceResult.STATUS_MISMATCH)
    assert "HTTP 403" in (outcome.detail or "")


def test_http_expected_status_list_is_honoured(http_device: HttpDevice) -> None:
    http_device.status = 204
    http_device.body = ""
    _assert(_check(check="http", url=http_device.url, expect_status=[204]), DeviceResult.SUCCESS)
    _assert(
        _check(check="http", url=http_device.url, expect_status=[200]),
        DeviceResult.STATUS_MISMATCH,
    )


def test_http_body_without_the_expected_text_is_a_body_mismatch(http_device: HttpDevice) -> None:
    http_device.body = "status: degraded"
    _assert(
        _check(check="http", url=http_device.url, expect_body="status: ok"),
        DeviceResult.BODY_MISMATCH,
    )


def test_http_slow_device_times_out_within_its_timeout(http_device: HttpDevice) -> None:
    http_device.delay_s = 3
    started = time.monotonic()
    outcome = _check(check="http", url=http_device.url, timeout_s=0.5)
    assert time.monotonic() - started < 2.5
    _assert(outcome, DeviceResult.TIMEOUT)


def test_http_garbage_is_a_protocol_error(http_device: HttpDevice) -> None:
    http_device.garbage = True
    _assert(_check(check="http", url=http_device.url), DeviceResult.PROTOCOL_ERROR)


def test_http_to_a_closed_port_is_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    _assert(_check(check="http", url=url), DeviceResult.CONNECTION_REFUSED)


def test_https_with_an_untrusted_certificate_is_a_tls_error(tmp_path: Path) -> None:
    device = HttpDevice(certificate=self_signed_certificate(tmp_path))
    try:
        _assert(_check(check="http", url=device.url), DeviceResult.TLS_ERROR)
    finally:
        device.close()


def test_https_trusts_a_configured_ca_or_skips_verification_when_told(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    device = HttpDevice(certificate=(cert, key))
    try:
        _assert(_check(check="http", url=device.url, ca_file=str(cert)), DeviceResult.SUCCESS)
        _assert(_check(check="http", url=device.url, verify_tls=False), DeviceResult.SUCCESS)
    finally:
        device.close()


def test_https_to_a_plain_http_device_is_a_tls_error(http_device: HttpDevice) -> None:
    url = http_device.url.replace("http://", "https://")
    _assert(_check(check="http", url=url), DeviceResult.TLS_ERROR)


# -- ICMP and name lookup, in namespaces of their own -----------------------------


def test_icmp_echo_to_a_live_host_succeeds() -> None:
    outcome = _check(check="icmp", host="127.0.0.1", privileged_icmp=icmp_privileged())
    _assert(outcome, DeviceResult.SUCCESS)


class Namespace:
    """A network namespace with loopback up (and its own resolv.conf), removed on exit."""

    def __init__(self) -> None:
        self.name = f"sm-{uuid.uuid4().hex[:8]}"
        self._etc = Path("/etc/netns") / self.name

    def __enter__(self) -> Namespace:
        self._etc.mkdir(parents=True)
        (self._etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # nothing answers
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")
        return self

    def run(self, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True)

    def devices(self, devices: list[dict[str, Any]], *, user: str | None = None) -> Any:
        """``school-agent devices --json`` inside the namespace (as ``user`` if given)."""
        prefix = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups"] if user else []
        env = command_env(
            SCHOOL_AGENT_DEVICES=json.dumps(devices), PYTHONPATH=str(REPO), HOME="/tmp"
        )
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                *prefix,
                sys.executable,
                "-m",
                "agent",
                "devices",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
            cwd="/",
        )

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)
        for path in self._etc.iterdir():
            path.unlink()
        self._etc.rmdir()


def _one(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout.strip(), result.stderr
    return dict(json.loads(result.stdout.splitlines()[0]))


def _device(**settings: Any) -> dict[str, Any]:
    return {"id": "d1", "kind": "police_link", "label": "Police", "down_after": 1} | settings


def test_an_unknown_host_name_is_a_dns_error() -> None:
    with Namespace() as ns:
        result = ns.devices([_device(check="tcp", address="police-gateway.example.invalid:443")])
    observed = _one(result)
    assert (observed["result"], observed["state"]) == ("dns_error", "down")
    assert result.returncode == 1


def test_icmp_without_an_answer_times_out() -> None:
    with Namespace() as ns:
        # A veth pair whose far end drops every frame: they are addressed to another MAC.
        ns.run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ns.run("ip", "addr", "add", "10.99.0.1/24", "dev", "v0")
        ns.run("ip", "link", "set", "v0", "up")
        ns.run("ip", "link", "set", "v1", "up")
        ns.run("ip", "neigh", "add", "10.99.0.2", "lladdr", "02:00:00:00:00:02", "dev", "v0")
        result = ns.devices([_device(check="icmp", host="10.99.0.2", timeout_s=0.5)])
    observed = _one(result)
    assert (observed["result"], observed["state"]) == ("timeout", "down")


def test_icmp_works_unprivileged_where_the_system_allows_it() -> None:
    with Namespace() as ns:
        ns.run("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647")
        result = ns.devices([_device(check="icmp", host="127.0.0.1")], user="nobody")
    assert _one(result)["result"] == "success", result.stderr
    assert result.returncode == 0


def test_icmp_where_the_system_forbids_it_is_a_clear_start_up_error() -> None:
    with Namespace() as ns:
        ns.run("sysctl", "-q", "-w", "net.ipv4.ping_group_range=1 0")
        result = ns.devices([_device(check="icmp", host="127.0.0.1")], user="nobody")
    assert result.returncode == 2
    assert "ICMP checks are not allowed for this user" in result.stderr
    assert "ping_group_range" in result.stderr
    assert "CAP_NET_RAW" in result.stderr
