"""The README's nginx recipe for a self-hosted speed server, run for real."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from localstack import Process, find, free_port, port_open

from tests.support.services import REPO, run_agent

RECIPE = REPO / "deploy" / "speed-server"
ALLOWED = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")


@contextlib.contextmanager
def _recipe_served(tmp_path: Path, changes: dict[str, str] | None = None) -> Iterator[str]:
    """The recipe under a real nginx on loopback, with ``changes`` made to its text.

    nginx logs each request's method, status and length to access.log.
    """
    nginx = find("nginx")
    assert nginx, "nginx is installed by deploy/setup.sh --dev"
    root = tmp_path / "www"
    subprocess.run(
        ["bash", str(RECIPE / "make-files.sh"), str(root)], check=True, capture_output=True
    )
    port = free_port()
    site = (RECIPE / "speedtest.nginx.conf").read_text()
    for old, new in {
        "listen 8080;": f"listen 127.0.0.1:{port};",
        "root /var/www/speedtest;": f"root {root};",
        "access_log off;": f"access_log {tmp_path}/access.log sizes;",
        **(changes or {}),
    }.items():
        assert old in site, f"the recipe no longer has {old!r}"
        site = site.replace(old, new)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"""daemon off;
user root;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    log_format sizes '$request_method $status $http_content_length';
    include {tmp_path}/site.conf;
}}
"""
    )
    process = Process(
        "nginx", [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], tmp_path
    )
    process.start()
    process.wait_until(lambda: port_open(port), "listening")
    yield f"http://127.0.0.1:{port}"
    process.stop()


@pytest.fixture
def nginx_speed_server(tmp_path: Path) -> Iterator[str]:
    with _recipe_served(tmp_path) as url:
        yield url


def _uploads(tmp_path: Path) -> list[tuple[int, int]]:
    """(status, MiB of body announced) of every upload nginx logged."""
    lines = (tmp_path / "access.log").read_text().split("\n")
    fields = [line.split() for line in lines if line.startswith("POST ")]
    return [(int(status), int(length) // 2**20) for _, status, length in fields]


def test_agent_measures_against_the_nginx_recipe(nginx_speed_server: str) -> None:
    result = run_agent(
        "speedtest", "--json", env={"SCHOOL_AGENT_SPEEDTEST__SERVER_URL": nginx_speed_server}
    )

    assert result.returncode == 0, result.stdout + result.stderr
    measured = json.loads(result.stdout)
    assert measured["result"] == "success"
    assert measured["bytes_received"] > 1_000_000
    assert measured["bytes_sent"] > 1_000_000
    assert measured["download_mbps"] > 20
    assert measured["upload_mbps"] > 20


def test_the_sysctl_recipe_makes_nginx_send_downloads_with_bbr(tmp_path: Path) -> None:
    """In a network namespace of its own (its default congestion control is its own)."""
    nginx = find("nginx")
    assert nginx, "nginx is installed by deploy/setup.sh --dev"
    namespace = f"bbr-{tmp_path.name[-8:]}"
    inside = ["ip", "netns", "exec", namespace]
    # A namespace may only default to an algorithm the machine allows (global; put back).
    allowed = ALLOWED.read_text().split()
    ALLOWED.write_text(" ".join(dict.fromkeys([*allowed, "cubic", "bbr"])))
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [*inside, "sysctl", "-qw", "net.ipv4.tcp_congestion_control=cubic"], check=True
        )  # a stock Debian host
        subprocess.run(
            [*inside, "sysctl", "-q", "-p", str(RECIPE / "60-speed-server-bbr.conf")], check=True
        )
        root = tmp_path / "www"
        (root / "speedtest").mkdir(parents=True)
        (root / "speedtest" / "random4000x4000.jpg").write_bytes(b"\0" * 8_000_000)
        site = (RECIPE / "speedtest.nginx.conf").read_text()
        site = site.replace("root /var/www/speedtest;", f"root {root};")
        (tmp_path / "nginx.conf").write_text(
            f"daemon off; user root; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
            f"events {{}}\nhttp {{ client_body_temp_path {tmp_path}/body;\n{site}\n}}\n"
        )
        server = subprocess.Popen([*inside, nginx, "-p", str(tmp_path), "-c", "nginx.conf"])
        try:
            # A download held half-read: the server's socket is then listed with its algorithm.
            probe = (
                "import socket,subprocess,time\n"
                "for _ in range(100):\n"
                "    try: c=socket.create_connection(('127.0.0.1',8080)); break\n"
                "    except OSError: time.sleep(0.1)\n"
                "c.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4096)\n"
                "c.sendall(b'GET /speedtest/random4000x4000.jpg HTTP/1.1\\r\\n'\n"
                "          b'Host: x\\r\\n\\r\\n')\n"
                "c.recv(1024); time.sleep(0.5)\n"
                "print(subprocess.run(['ss','-Htin','state','established','( sport = :8080 )'],"
                "capture_output=True,text=True).stdout)\n"
            )
            listed = subprocess.run(
                [*inside, "python3", "-c", probe], capture_output=True, text=True, timeout=60,
                check=True,
            ).stdout  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        ALLOWED.write_text(" ".join(allowed))
    assert " bbr " in f" {listed} ", listed
    assert "cubic" not in listed


def test_upload_bodies_double_from_4_to_64_mb_on_each_connection(
    nginx_speed_server: str, tmp_path: Path
) -> None:
    """Each POST is followed by a round trip with nothing sent: larger bodies, fewer pauses."""
    result = run_agent(
        "speedtest", "--json", env={"SCHOOL_AGENT_SPEEDTEST__SERVER_URL": nginx_speed_server}
    )

    assert result.returncode == 0, result.stdout + result.stderr
    uploads = _uploads(tmp_path)
    assert {status for status, _ in uploads} == {200}, uploads
    sizes = [mib for _, mib in uploads]
    assert set(sizes) <= {4, 8, 16, 32, 64}, sizes
    assert sizes.count(4) >= sizes.count(8) >= sizes.count(16) >= 1, sizes
    assert 64 in sizes, sizes  # loopback is fast enough to reach the limit


def test_a_server_that_refuses_larger_bodies_keeps_them_at_the_largest_it_took(
    tmp_path: Path,
) -> None:
    with _recipe_served(tmp_path, {"client_max_body_size 64m;": "client_max_body_size 8m;"}) as url:
        result = run_agent("speedtest", "--json", env={"SCHOOL_AGENT_SPEEDTEST__SERVER_URL": url})

    assert result.returncode == 0, result.stdout + result.stderr
    measured = json.loads(result.stdout)
    assert measured["result"] == "success"
    assert measured["upload_mbps"] > 20
    uploads = _uploads(tmp_path)
    refused = [mib for status, mib in uploads if status == 413]
    taken = [mib for status, mib in uploads if status == 200]
    assert 1 <= len(refused) <= 8, uploads  # at most once per connection
    assert set(taken) <= {4, 8}, uploads
    assert taken.count(8) > len(refused), uploads  # and went on at 8 MB after
