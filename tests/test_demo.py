"""The README's first command: the whole pipeline up locally, one agent measuring for real,
a simulated fleet, and the national rollout table."""

from __future__ import annotations

import json
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
            timeout=600,
            check=False,
        )
        stack = dict(  # "export NAME=value" lines
            line.removeprefix("export ").split("=", 1)
            for line in (tmp_path / "stack" / "stack.env").read_text().splitlines()
            if "=" in line
        )
        as_json = subprocess.run(
            [".venv/bin/school-collector", "rollout", "--format", "json"],
            cwd=REPO,
            env=env | stack,
            capture_output=True,
            text=True,
            timeout=120,
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
    assert "Published  2 messages (a status 'started', a speed result)" in out  # what exactly
    table = out.split("== the national rollout", 1)[1]
    printed = {
        cells[0]: (int(cells[2]), int(cells[3]), float(cells[4]))
        for line in table.splitlines()
        if len(cells := line.split()) >= 5 and cells[1] == "national"
    }
    assert as_json.returncode == 0, as_json.stderr
    rows = [row for row in json.loads(as_json.stdout) if row["region"] == "national"]
    assert len(printed) == len(rows) >= 4, out
    for row in rows:
        schools, total, percent = printed[row["metric"]]
        assert (schools, total) == (row["schools"], row["total"])
        assert percent == round(row["percent"], 1)
    assert rows[0]["total"] == 301  # the simulated 300 and the demo's own school
    assert "rollout --region" in out  # what to try next
    tried = out.split("Try:", 1)[1]
    assert "school-collector rollout --region '" in tried, out
    assert "' --format csv" in tried, out  # one region, for a spreadsheet
    assert "copy grafana/provisioning/ to /etc/grafana/provisioning/" in tried, out
    report = (tmp_path / "stack" / "report.html").read_text()
    assert "<svg" in report
    assert "School connectivity and safety" in report
    assert stop.returncode == 0
    assert stop.stdout.count("stopped") == 4, stop.stdout
