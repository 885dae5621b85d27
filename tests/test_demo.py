"""The README's first command: the whole pipeline up locally, one agent measuring for real."""

from __future__ import annotations

import subprocess
from pathlib import Path

from localstack import free_port

from tests.support.services import REPO, command_env


def test_demo_brings_the_pipeline_up_and_prints_what_was_stored(tmp_path: Path) -> None:
    env = command_env(SCHOOL_MONITOR_RUN_DIR=str(tmp_path / "stack"))
    ports = [f"--{name}-port={free_port()}" for name in ("mqtt", "influx", "influx-rpc", "speed")]
    try:
        demo = subprocess.run(
            ["bash", "deploy/demo.sh", *ports],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        stop = subprocess.run(
            ["bash", "deploy/demo.sh", "stop"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "InfluxQL: SELECT school_id, result, download_mbps" in out
    stored = out.split("== speed", 1)[1].splitlines()
    assert "KZ-DEMO-0001  success" in stored[3], out
    assert "online   started" in out
    assert stop.returncode == 0
    assert stop.stdout.count("stopped") == 4, stop.stdout
