"""The national registry in InfluxDB: imported whole or not at all, used by the collector."""

from __future__ import annotations

from pathlib import Path

from localstack import Mosquitto, Process

from agent.contract import DeviceKind
from collector.influx.query import InfluxQL
from collector.registry_store import NewerRegistry, load_registry
from collector.settings import InfluxSettings
from tests.support.publishing import SchoolPublisher
from tests.support.services import Influx, collector_cli, command_env, wait_for

HEADER = (
    "school_id,name,region,district,area,latitude,longitude,students,staff,devices,"
    "security_contract\n"
)
GOOD = HEADER + (
    "KZ-ALM-1,School 1,Almaty,Bostandyk,urban,43.2,76.9,1200,95,panic_button;turnstile,yes\n"
    "KZ-ALM-2,School 2,Almaty,Medeu,urban,43.3,76.95,800,60,turnstile,no\n"
    "KZ-TUR-1,Rural school,Turkistan,Sairam,rural,42.3,69.6,150,20,,\n"
)


def test_a_registry_is_imported_and_read_back_whole(database: Influx, tmp_path: Path) -> None:
    path = tmp_path / "schools.csv"
    path.write_text(GOOD)
    result = collector_cli(database, "registry", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert "imported 3 schools in 2 regions" in result.stdout
    registry = load_registry(InfluxQL(InfluxSettings(url=database.url, database=database.database)))
    assert registry is not None
    first = registry.get("KZ-ALM-1")
    assert first is not None
    assert (first.district, first.area, first.students, first.security_contract) == (
        "Bostandyk", "urban", 1200, True,
    )  # fmt: skip
    assert first.devices == {DeviceKind.PANIC_BUTTON, DeviceKind.TURNSTILE}
    rural = registry.get("KZ-TUR-1")
    assert rural is not None
    assert (rural.devices, rural.security_contract) == (frozenset(), None)
    shown = collector_cli(database, "registry", "show")
    assert ["Almaty", "2"] in [line.split() for line in shown.stdout.splitlines()]
    assert "3 schools" in shown.stdout


def test_a_file_with_bad_rows_names_every_line_and_imports_nothing(
    database: Influx, tmp_path: Path
) -> None:
    path = tmp_path / "schools.csv"
    path.write_text(
        GOOD
        + "KZ BAD,x,Almaty,,,,,,,,\n"  # line 5
        + "KZ-X-1,x,Almaty,,suburban,,,,,,\n"  # line 6
        + "KZ-X-2,x,Almaty,,,91,,,,,\n"  # line 7
        + "KZ-X-3,x,Almaty,,,,,,,smoke_alarm,\n"  # line 8
        + "KZ-ALM-1,again,Almaty,,,,,,,,\n"  # line 9
    )
    result = collector_cli(database, "registry", "import", str(path))
    assert result.returncode == 2
    for line in ("line 5:", "line 6: area", "line 7: latitude", "line 8: devices", "line 9:"):
        assert line in result.stderr
    assert "5 bad row(s); nothing was used" in result.stderr
    assert database.rows("SHOW MEASUREMENTS") == []


def test_the_newest_import_is_the_registry(database: Influx, tmp_path: Path) -> None:
    path = tmp_path / "schools.csv"
    path.write_text(GOOD)
    assert collector_cli(database, "registry", "import", str(path)).returncode == 0
    path.write_text(GOOD.rsplit("\n", 2)[0] + "\n")  # the rural school closed
    assert collector_cli(database, "registry", "import", str(path)).returncode == 0
    registry = load_registry(InfluxQL(InfluxSettings(url=database.url, database=database.database)))
    assert registry is not None
    assert [school.school_id for school in registry] == ["KZ-ALM-1", "KZ-ALM-2"]


def test_the_collector_reads_the_registry_again_only_after_a_newer_import(
    database: Influx, tmp_path: Path
) -> None:
    newer = NewerRegistry(InfluxQL(InfluxSettings(url=database.url, database=database.database)))
    assert newer() is None  # nothing imported yet
    path = tmp_path / "schools.csv"
    path.write_text(GOOD)
    assert collector_cli(database, "registry", "import", str(path)).returncode == 0
    first = newer()
    assert first is not None
    assert len(first) == 3
    assert newer() is None  # the same import: not read again
    path.write_text(GOOD.rsplit("\n", 2)[0] + "\n")
    assert collector_cli(database, "registry", "import", str(path)).returncode == 0
    second = newer()
    assert second is not None
    assert [school.school_id for school in second] == ["KZ-ALM-1", "KZ-ALM-2"]
    assert newer() is None


def test_the_collector_tags_by_region_and_rejects_unregistered_schools(
    collector_env: dict[str, str],
    broker: Mosquitto,
    database: Influx,
    topic_root: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "schools.csv"
    path.write_text(GOOD)
    assert collector_cli(database, "registry", "import", str(path)).returncode == 0
    from tests.conftest import start_collector  # noqa: PLC0415
    from tests.support.services import collector_process  # noqa: PLC0415

    collector: Process = start_collector(collector_process(tmp_path, command_env(**collector_env)))
    try:
        with SchoolPublisher(broker.port, topic_root, "KZ-ALM-2") as school:
            school.publish_speed(download_mbps=30.0)
        with SchoolPublisher(broker.port, topic_root, "KZ-NOT-REGISTERED") as stranger:
            stranger.publish_speed(download_mbps=99.0)
        rows = wait_for(lambda: database.rows("SELECT * FROM speed"), what="the speed point")
        rejected = wait_for(
            lambda: database.rows(
                "SELECT last(count) FROM collector_rejections WHERE reason = 'unknown_school'"
            ),
            what="the unknown_school rejection",
        )
    finally:
        collector.stop()
    assert [(r["school_id"], r["region"], r["district"]) for r in rows] == [
        ("KZ-ALM-2", "Almaty", "Medeu")
    ]
    assert rejected[0]["last"] == 1
