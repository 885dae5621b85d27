"""The README's nginx recipe for a self-hosted speed server, run for real."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from localstack import Process, find, free_port, port_open

from tests.support.services import REPO, run_agent

RECIPE = REPO / "deploy" / "speed-server"


@pytest.fixture
def nginx_speed_server(tmp_path: Path) -> Iterator[str]:
    nginx = find("nginx")
    assert nginx, "nginx is installed by deploy/setup.sh --dev"
    root = tmp_path / "www"
    subprocess.run(
        ["bash", str(RECIPE / "make-files.sh"), str(root)], check=True, capture_output=True
    )
    port = free_port()
    site = (RECIPE / "speedtest.nginx.conf").read_text()
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    site = site.replace("root /var/www/speedtest;", f"root {root};")
    assert str(root) in site, "the recipe's root line changed"
    assert str(port) in site, "the recipe's listen line changed"
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
