"""Every InfluxQL query of the dashboards and alert rules, and Grafana's macros expanded.

Grafana cannot run here, so tests and benchmarks play its part: they take each
panel's, variable's and alert rule's query from the provisioned files and
substitute ``$timeFilter``, ``$__interval`` and the template variables the way
Grafana does for InfluxQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from grafana.build import DASHBOARDS

REPO = Path(__file__).resolve().parents[2]
RULES = "grafana/provisioning/alerting/school-monitor.yaml"
DATASOURCE = "school-monitor-influxdb"


def in_tree(path: str) -> str:
    return (REPO / path).read_text()


def every_query(
    read: Callable[[str], str] = in_tree, span: str = "30d"
) -> list[tuple[str, str, str]]:
    """(where, query, time span) of every panel, variable and alert query.

    ``read``: a file's text by its path in the repository (another commit's, for
    a benchmark); ``span``: the dashboards' time range. An alert query's span is
    its rule's relativeTimeRange.
    """
    found: list[tuple[str, str, str]] = []
    for name in DASHBOARDS:
        board = json.loads(read(f"grafana/dashboards/{name}"))
        for panel in board["panels"]:
            found += [(f"{name}: {panel['title']}", t["query"], span)
                      for t in panel["targets"]]  # fmt: skip
        found += [(f"{name}: ${v['name']}", v["query"], span)
                  for v in board["templating"]["list"]]  # fmt: skip
    for group in yaml.safe_load(read(RULES))["groups"]:
        for rule in group["rules"]:
            found += [
                (f"alert {rule['uid']}: {item['refId']}", item["model"]["query"],
                 f"{item['relativeTimeRange']['from']}s")
                for item in rule["data"]
                if item["datasourceUid"] == DATASOURCE
            ]  # fmt: skip
    return found


def substitute(query: str, region: str, school: str, span: str, interval: str) -> str:
    """Grafana's macros and variables, as Grafana expands them for InfluxQL.

    Grafana's backend writes ``$timeFilter`` with both ends (``time >= <from>ms
    and time <= <to>ms``); a range ending now ends at now().
    """
    return (
        query.replace("$timeFilter", f"time >= now() - {span} and time <= now()")
        .replace("$__interval", interval)
        .replace("/^$region$/", f"/^{re.escape(region)}$/")
        .replace("/^$school$/", f"/^{re.escape(school)}$/")
    )
