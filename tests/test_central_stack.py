"""deploy/server: the compose file against the Compose schema, its mounts, units, broker config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from localstack import Mosquitto, free_port, port_open

from tests.support.services import REPO, wait_for

SERVER = REPO / "deploy" / "server"
SCHEMA = REPO / ".cache" / "compose-spec.json"  # fetched by deploy/setup.sh --dev


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((SERVER / "compose.yaml").read_text()))


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: e.path)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    assert set(_compose()["services"]) == {"mosquitto", "influxdb", "collector", "grafana"}


def test_the_schema_check_catches_a_mistake() -> None:
    broken = _compose()
    broken["services"]["collector"]["restart"] = ["always"]  # must be a string
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors(broken))


def test_every_file_the_stack_mounts_is_in_the_repository() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source in compose.get("volumes", {}):
                continue  # a named volume
            if source.startswith("${"):
                variable = re.match(r"\$\{(\w+)", source)
                assert variable, source
                sample = (SERVER / "stack.env.sample").read_text()
                assert f"{variable[1]}=" in sample, f"{name}: {variable[1]} not in stack.env.sample"
                continue
            assert (SERVER / source).resolve().exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build:
            context = (SERVER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()
    for variable in set(re.findall(r"\$\{(\w+)", (SERVER / "compose.yaml").read_text())):
        assert f"{variable}=" in (SERVER / "stack.env.sample").read_text(), variable


def test_the_dockerfile_copies_only_what_exists() -> None:
    for line in (SERVER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


def test_the_stacks_mosquitto_config_runs(tmp_path: Path) -> None:
    """The stack's mosquitto.conf on a real Mosquitto, its container paths mapped here."""
    (tmp_path / "conf.d").mkdir()
    shutil.copy(REPO / "deploy" / "mosquitto" / "school-monitor.conf", tmp_path / "conf.d")
    (tmp_path / "passwords").write_text("")
    (tmp_path / "acl").write_text("user school-collector\ntopic read schools/+/+\n")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(tmp_path / "broker.key"),
         "-out", str(tmp_path / "broker.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    plain, tls = free_port(), free_port()
    config = (
        (SERVER / "mosquitto.conf").read_text()
        .replace("/mosquitto/config/passwords", str(tmp_path / "passwords"))
        .replace("/mosquitto/config/acl", str(tmp_path / "acl"))
        .replace("/mosquitto/config/conf.d", str(tmp_path / "conf.d"))
        .replace("/mosquitto/certs/", f"{tmp_path}/")
        .replace("persistence_location /mosquitto/data/\n", "")
        .replace("listener 1883 0.0.0.0", f"listener {plain} 127.0.0.1")
        .replace("listener 8883", f"listener {tls} 127.0.0.1")
    )  # fmt: skip
    broker = Mosquitto(tmp_path / "run", plain, listeners=config)
    broker.start()
    try:
        wait_for(lambda: port_open(tls), what="the TLS listener")
    finally:
        broker.stop()


@pytest.mark.parametrize(
    ("unit", "program"),
    [
        (
            REPO / "deploy" / "server" / "school-collector.service",
            "/opt/school-collector/bin/school-collector",
        ),
        (REPO / "deploy" / "agent" / "school-agent.service", "/opt/school-agent/bin/school-agent"),
    ],
)
def test_the_units_verify(unit: Path, program: str, tmp_path: Path) -> None:
    """systemd-analyze verify in a root holding the host's units and the unit's program."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system",
                    symlinks=False, ignore_dangling_symlinks=True)  # fmt: skip
    installed = root / "etc/systemd/system" / unit.name
    installed.parent.mkdir(parents=True)
    shutil.copy(unit, installed)
    executable = root / program.lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")  # only its presence is checked by verify
    executable.chmod(0o755)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit.name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
