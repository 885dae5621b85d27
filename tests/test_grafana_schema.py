"""Every dashboard type-checks against Grafana's published schema for 10.4, 11 and 12."""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.support.grafana_schema import check
from tests.support.services import REPO

DASHBOARDS = REPO / "grafana" / "dashboards"


def _boards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def test_every_dashboard_type_checks_against_grafana_10_11_and_12() -> None:
    found = check(_boards())
    assert sorted(version.split(".")[0] for version in found) == ["10", "11", "12"]
    assert found == {version: [] for version in found}


def _panel(board: dict[str, Any], kind: str) -> tuple[int, dict[str, Any]]:
    return next((n, p) for n, p in enumerate(board["panels"]) if p["type"] == kind)


def test_unknown_keys_and_bad_enum_values_fail() -> None:
    board = copy.deepcopy(_boards()["national-overview.json"])
    stat, stat_panel = _panel(board, "stat")
    stat_panel["options"]["graphMode"] = "bogus"
    geomap, geomap_panel = _panel(board, "geomap")
    geomap_panel["options"]["view"]["bogusKey"] = True
    table, table_panel = _panel(board, "table")
    table_panel["fieldConfig"]["defaults"]["thresholds"]["mode"] = "relative"
    found = check({"broken.json": board})
    for version, errors in found.items():
        text = "\n".join(errors)
        assert f"broken.json#/panels/{stat}/options/graphMode" in text, version
        assert f"broken.json#/panels/{geomap}/options/view/bogusKey" in text, version
        assert f"broken.json#/panels/{table}/fieldConfig/defaults/thresholds/mode" in text, version
        assert len(errors) == 3, text
