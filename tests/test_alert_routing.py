"""Alert routing: the teams file becomes contact points and a policy Grafana would load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.alert_routing import TELEGRAM_TOKEN_ENV, load_teams, provisioning, render
from tests.support.grafana_provisioning import (
    check_dashboard_providers,
    check_datasources,
    check_notifications,
    check_rules,
)
from tests.support.services import REPO

GRAFANA = REPO / "grafana" / "provisioning"
EXAMPLE = REPO / "deploy" / "alert-teams.example.toml"


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def test_the_shipped_provisioning_files_follow_grafanas_format() -> None:
    assert check_rules(_load(GRAFANA / "alerting" / "school-monitor.yaml")) == []
    for path in (GRAFANA / "datasources").glob("*.yaml"):
        assert check_datasources(_load(path)) == [], path.name
    assert check_dashboard_providers(_load(GRAFANA / "dashboards" / "school-monitor.yaml")) == []


def test_the_checker_finds_what_grafana_would_refuse_or_mangle() -> None:
    rules = _load(GRAFANA / "alerting" / "school-monitor.yaml")
    rule = rules["groups"][0]["rules"][0]
    rule["noDataState"] = "Ok"
    rule["labels"]["school"] = "{{ $labels.school_id }}"  # labels are environment-expanded
    rule["data"][-1]["model"]["conditions"][0]["evaluator"]["type"] = "above"
    rule["colour"] = "red"
    problems = "\n".join(check_rules(rules))
    assert "noDataState 'Ok'" in problems
    assert "would eat the `$`" in problems
    assert "evaluator 'above'" in problems
    assert "unknown key 'colour'" in problems


def test_the_example_teams_become_contact_points_and_routes_by_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "123456:very-secret-token"
    monkeypatch.setenv(TELEGRAM_TOKEN_ENV, secret)
    out = tmp_path / "notifications.json"
    done = subprocess.run(
        [sys.executable, "-m", "collector", "alert-routing", str(EXAMPLE), "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert secret not in text + done.stdout + done.stderr
    document = yaml.safe_load(text)  # Grafana parses .json files as YAML too
    assert check_notifications(document) == []
    points = {p["name"]: p for p in document["contactPoints"]}
    assert set(points) == {
        "school-monitor national", "school-monitor Almaty", "school-monitor Turkistan"
    }  # fmt: skip
    national = {r["type"]: r["settings"] for r in points["school-monitor national"]["receivers"]}
    assert set(national) == {"email", "telegram", "webhook"}
    assert national["telegram"]["bottoken"] == f"$__env{{{TELEGRAM_TOKEN_ENV}}}"
    assert (
        national["webhook"]["authorization_credentials"] == "$__env{SCHOOL_MONITOR_TICKETS_TOKEN}"
    )
    (policy,) = document["policies"]
    assert policy["receiver"] == "school-monitor national"
    assert policy["group_by"] == ["alertname", "grafana_folder", "region"]
    routes = {r["object_matchers"][0][2]: r["receiver"] for r in policy["routes"]}
    assert routes == {"Almaty": "school-monitor Almaty", "Turkistan": "school-monitor Turkistan"}


def test_a_region_name_of_any_script_gives_valid_uids(tmp_path: Path) -> None:
    teams = tmp_path / "teams.toml"
    teams.write_text(
        '[national]\nemail = ["noc@example.kz", "duty$desk@example.kz"]\n'
        '[regions."Алматы облысы / Жетісу"]\ntelegram_chat_id = "-100"\n'
    )
    document = provisioning(load_teams(teams))
    assert check_notifications(document) == []
    assert yaml.safe_load(render(load_teams(teams))) == document
    assert "Алматы" in render(load_teams(teams))  # readable, not escaped


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[national]\nemail = ["noc@example.kz"]\n[regions.Almaty]\n', "team 'Almaty' has no"),
        ('[national]\nemail = ["not an address"]\n', "national.email: Value error"),
        ('[national]\nwebhook_url = "https://x"\nwebhook_token_env = "my token"\n', "name an env"),
        ("[regions.Almaty]\n", "national: Field required"),
    ],
)
def test_a_wrong_teams_file_names_the_file_and_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    teams = tmp_path / "teams.toml"
    teams.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "collector", "alert-routing", str(teams)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert str(teams) in done.stderr
    assert message in done.stderr


def test_a_missing_teams_file_points_at_the_example(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "collector", "alert-routing", str(tmp_path / "none.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "deploy/alert-teams.example.toml" in done.stderr


def test_every_alert_condition_is_a_threshold_or_reduce_on_reduced_data() -> None:
    """Grafana alerts only on numbers: the condition ends in a reduce or threshold."""
    rules = _load(GRAFANA / "alerting" / "school-monitor.yaml")["groups"][0]["rules"]
    assert len(rules) == 9
    for rule in rules:
        models = {item["refId"]: item for item in rule["data"]}
        condition = models[rule["condition"]]
        assert condition["datasourceUid"] == "__expr__", rule["uid"]
        assert condition["model"]["type"] in ("reduce", "threshold"), rule["uid"]
        for item in rule["data"]:  # every query is reduced before anything uses it
            if item["datasourceUid"] != "__expr__":
                ref = item["refId"]
                users = [
                    m for m in models.values()
                    if m["model"].get("expression") == ref
                    or f"${ref}" in str(m["model"].get("expression", ""))
                ]  # fmt: skip
                assert users, (rule["uid"], item["refId"])
                assert all(m["model"]["type"] == "reduce" for m in users), (rule["uid"], users)
