"""``school-collector fleet``: versions and configurations by school, read from the state.

Agents' statuses are written as the collector writes them, the state keeper
runs once, and the command reads what it wrote.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from collector.influx.v1 import V1Writer
from collector.line_protocol import FieldValue, encode
from collector.points import ns
from collector.settings import CollectorSettings, InfluxSettings
from collector.state_keeper import StateKeeper
from tests.support.services import Influx, collector_cli

NOW = datetime.now(UTC)
# school, region, agent version, configuration in force, minutes since its last status
AGENTS = [
    ("KZ-A1", "Almaty", "0.2.0", "all:7,region:5", 2),
    ("KZ-A2", "Almaty", "0.2.0", "all:7,region:4", 3),  # an older region document
    ("KZ-A3", "Almaty", "0.1.0", "all:7,region:5", 4),
    ("KZ-B1", "Astana", "0.2.0", "all:6", 5),  # an older document for all
    ("KZ-B2", "Astana", "0.2.0", "all:7", 2 * 24 * 60),  # silent for two days
]


def _status(school: str, region: str, version: str, config: str, minutes: int) -> str:
    tags = {"school_id": school, "region": region, "agent_id": f"agent-{school}",
            "status": "online"}  # fmt: skip
    fields: dict[str, FieldValue] = {
        "online": 1, "reason": "heartbeat", "version": version, "config_version": config,
        "config_refused": 0,
    }  # fmt: skip
    return encode("agent", tags, fields, ns(NOW - timedelta(minutes=minutes)))


def test_the_fleet_lists_versions_and_the_schools_behind_or_silent(database: Influx) -> None:
    influx = InfluxSettings(url=database.url, database=database.database)
    V1Writer(influx).write([_status(*agent) for agent in AGENTS])
    with StateKeeper(CollectorSettings(influx=influx)) as keeper:
        keeper.tick()

    result = collector_cli(database, "fleet", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = {row["school_id"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {a[0] for a in AGENTS}
    assert rows["KZ-A3"]["version"] == "0.1.0"
    assert rows["KZ-A1"]["config_version"] == "all:7,region:5"
    assert {s for s, row in rows.items() if row["behind"]} == {"KZ-A2", "KZ-B1"}
    assert {s for s, row in rows.items() if row["silent"]} == {"KZ-B2"}

    status = collector_cli(database, "config", "status", "--format", "json")
    assert json.loads(status.stdout) == json.loads(result.stdout)  # the same, from `config`

    table = collector_cli(database, "fleet")
    assert table.returncode == 0, table.stderr
    assert ["Almaty", "0.2.0", "all:7,region:5", "1"] in [
        x.split() for x in table.stdout.splitlines()
    ]
    assert "2 school(s) not on the latest configuration: KZ-A2, KZ-B1" in table.stdout
    assert "1 school(s) not heard from for a day or more: KZ-B2" in table.stdout
    csv = collector_cli(database, "fleet", "--format", "csv")
    assert csv.stdout.splitlines()[0].startswith("school_id,region,version,config_version")


def test_with_no_state_yet_the_command_says_what_writes_it(database: Influx) -> None:
    result = collector_cli(database, "fleet")
    assert result.returncode == 1
    assert "a running collector writes it" in result.stderr
