"""What a newcomer runs into in the first hour: every failure names its cause and its fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from localstack import InfluxDB, free_port

from collector.influx.query import InfluxQL
from collector.influx.v1 import V1Writer
from collector.settings import InfluxSettings
from tests.support.services import REPO, Influx, command_env, unique


def _collector(
    *args: str, inside: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*inside, sys.executable, "-m", "collector", *args],
        env=command_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_setup_with_npm_unreachable_names_the_command_its_output_and_the_fix(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "clone"
    (tree / "deploy").mkdir(parents=True)
    for name in ("setup.sh", "localstack.py"):
        shutil.copy(REPO / "deploy" / name, tree / "deploy" / name)
    (tree / "tests" / "grafana_schema").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", tree)
    shutil.copy(REPO / "tests/grafana_schema/package-lock.json", tree / "tests/grafana_schema")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "npm_config_registry": f"http://127.0.0.1:{free_port()}/",  # nothing listens
        "npm_config_cache": str(tmp_path / "npm-cache"),  # nothing cached either
        "npm_config_fetch_retries": "0",
    }
    result = subprocess.run(
        ["bash", str(tree / "deploy" / "setup.sh"), "--dev"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "setup: this failed: npm pack" in result.stderr  # the command
    assert "ECONNREFUSED" in result.stderr  # its own last lines
    assert "must be reachable" in result.stderr  # what to do
    assert "run deploy/setup.sh --dev again" in result.stderr
    assert list(scratch.iterdir()) == []  # no temporary folder left behind


def test_rollout_on_a_database_the_collector_never_prepared_says_what_to_run(
    influxdb: InfluxDB,
) -> None:
    bare = unique("bare_")
    InfluxQL(InfluxSettings(url=influxdb.url, database=bare)).query(f'CREATE DATABASE "{bare}"')
    for args in (["rollout"], ["rollout", "--at", "2026-11-01T00:00:00+00:00"]):
        result = _collector(
            *args,
            SCHOOL_COLLECTOR_INFLUX__URL=influxdb.url,
            SCHOOL_COLLECTOR_INFLUX__DATABASE=bare,
        )
        assert result.returncode != 0
        assert "school-collector retention apply" in result.stderr, result.stderr
        assert "start the collector once" in result.stderr.lower()


def test_a_query_that_cannot_reach_influxdb_names_the_setting_and_the_demo(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    from_env = _collector("query", "SHOW DATABASES", SCHOOL_COLLECTOR_INFLUX__URL=url)
    assert from_env.returncode == 1
    assert f"InfluxDB at {url}" in from_env.stderr
    assert "from the environment, SCHOOL_COLLECTOR_INFLUX__URL" in from_env.stderr
    assert ".run/stack/stack.env" in from_env.stderr
    config = tmp_path / "collector.toml"
    config.write_text(f'[influx]\nurl = "{url}"\n')
    from_file = _collector("query", "SHOW DATABASES", "--config", str(config))
    assert f"from {config}" in from_file.stderr
    # The issue's own case: a new shell, no setting and no config file (command_env drops
    # every SCHOOL_* variable, SCHOOL_COLLECTOR_CONFIG too), so the default localhost:8086,
    # in a network namespace of its own, where nothing listens there.
    namespace = f"fh-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        new_shell = _collector("query", "SHOW DATABASES", inside=("ip", "netns", "exec", namespace))
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    assert new_shell.returncode == 1
    default = (
        "cannot reach InfluxDB at http://localhost:8086 (influx.url: the default (no config "
        "file read, no SCHOOL_COLLECTOR_INFLUX__URL in the environment))"
    )
    assert default in new_shell.stderr, new_shell.stderr
    assert "for the demo's services: set -a; . .run/stack/stack.env; set +a" in new_shell.stderr


def test_rollout_without_a_registry_says_how_to_import_one(database: Influx) -> None:
    V1Writer(InfluxSettings(url=database.url, database=database.database)).write(
        [f"speed,school_id=KZ-1 result_code=0i {1_700_000_000_000_000_000}"]
    )
    result = _collector(
        "rollout",
        SCHOOL_COLLECTOR_INFLUX__URL=database.url,
        SCHOOL_COLLECTOR_INFLUX__DATABASE=database.database,
    )
    assert result.returncode == 1
    assert "school-collector registry import FILE.csv" in result.stderr
    assert "(by then)" not in result.stderr
    assert "no school registry imported yet" in result.stderr


def test_devices_without_devices_names_the_file_it_read(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'school_id = "{unique("KZ-")}"\n')
    env = command_env(SCHOOL_AGENT_STATE_DIR=str(tmp_path / "state"))
    with_file = subprocess.run(
        [sys.executable, "-m", "agent", "devices", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert with_file.returncode == 2
    assert f"the config file {config}" in with_file.stderr
    assert "[[devices]]" in with_file.stderr
    without = subprocess.run(
        [sys.executable, "-m", "agent", "devices"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "no config file" in without.stderr
    assert "--config" in without.stderr


def test_every_option_of_rollout_and_simulate_says_what_it_does_and_its_default() -> None:
    rollout = _collector("rollout", "--help").stdout
    assert "(default: table)" in rollout
    simulate = " ".join(_collector("simulate", "--help").stdout.split())
    for option in ("--schools SCHOOLS how many schools", "--seed SEED the random seed",
                   "--tests-per-day TESTS_PER_DAY speed tests per school per day"):  # fmt: skip
        assert option in simulate
    assert "(default: 7400" in simulate
    assert "the same 30 days (default: 1)" in simulate  # --seed
    assert "speed tests per school per day (default: 1.0)" in simulate
    assert "(fast, no collector needed; default: mqtt)" in simulate  # --via
    assert "as fast as the broker acknowledges; default: 0.0)" in simulate  # --compression


def test_the_demos_help_is_only_help() -> None:
    result = subprocess.run(
        ["bash", "deploy/demo.sh", "--help"], cwd=REPO, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert "set -euo" not in result.stdout
    assert "bash deploy/demo.sh stop" in result.stdout
