"""Both write paths against the real InfluxDB 1.6: v1 /write, and v2 through influxdb-client."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localstack import InfluxDB, free_port
from pydantic import SecretStr

from collector.influx import InfluxRejected, InfluxUnavailable, make_writer
from collector.influx.query import InfluxQL, InfluxQueryError, Series
from collector.influx.v1 import V1Writer
from collector.influx.v2 import V2Writer
from collector.settings import InfluxSettings
from tests.support.influx_v2_shim import V2WriteShim
from tests.support.services import Influx, unique

LINE = 'speed,school_id=KZ-1 download_mbps=25.5,message_id="m1" 1700000000000000000'
ADMIN, PASSWORD = "admin", "s3cret-pass"


def test_v1_writes_a_point_that_influxql_reads_back(database: Influx) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    writer.write([LINE])

    rows = database.rows("SELECT download_mbps, school_id FROM speed")
    assert rows == [{"time": "2023-11-14T22:13:20Z", "download_mbps": 25.5, "school_id": "KZ-1"}]


def test_v1_field_type_conflict_is_a_rejection_not_an_outage(database: Influx) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    writer.write([LINE])

    with pytest.raises(InfluxRejected) as caught:
        writer.write(['speed,school_id=KZ-1 download_mbps="fast" 1700000000000000001'])
    assert caught.value.status == 400
    assert "field type conflict" in str(caught.value)


def test_v1_unreachable_server_is_an_outage() -> None:
    settings = InfluxSettings(url=f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(InfluxUnavailable, match="cannot reach"):
        V1Writer(settings).write([LINE])


def test_v1_missing_database_is_an_outage_with_a_hint(influxdb: InfluxDB) -> None:
    writer = V1Writer(InfluxSettings(url=influxdb.url, database=unique("absent_")))
    with pytest.raises(InfluxUnavailable, match=r"check influx\.database"):
        writer.write([LINE])


def test_query_errors_name_the_problem(database: Influx) -> None:
    with pytest.raises(InfluxQueryError, match="error parsing query"):
        database.client.query("SELEC nothing")


@pytest.fixture(scope="module")
def secured_influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """A second InfluxDB 1.6 with authentication on, and one admin user."""
    server = InfluxDB(tmp_path_factory.mktemp("secured"), free_port(), free_port(), auth=True)
    server.start()
    create = f"CREATE USER {ADMIN} WITH PASSWORD '{PASSWORD}' WITH ALL PRIVILEGES"
    _post_query(server.url, create)  # allowed without credentials while no user exists
    _post_query(server.url, "CREATE DATABASE v2test", auth=(ADMIN, PASSWORD))
    yield server
    server.stop()


def _post_query(url: str, q: str, auth: tuple[str, str] | None = None) -> None:
    credentials = urllib.parse.urlencode({"u": auth[0], "p": auth[1]}) if auth else ""
    request = urllib.request.Request(  # noqa: S310 - loopback test server
        f"{url}/query?{credentials}", data=urllib.parse.urlencode({"q": q}).encode()
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        assert "error" not in json.loads(reply.read())["results"][0]


def _v2_settings(shim: V2WriteShim, token: str, bucket: str = "v2test") -> InfluxSettings:
    return InfluxSettings(
        url=shim.url, api="v2", database=bucket, org="-", token=SecretStr(token), timeout_s=5
    )


def test_v2_path_writes_through_influxdb_client_end_to_end(secured_influxdb: InfluxDB) -> None:
    with V2WriteShim(secured_influxdb.port) as shim:
        writer = make_writer(_v2_settings(shim, f"{ADMIN}:{PASSWORD}", bucket="v2test/autogen"))
        assert isinstance(writer, V2Writer)
        writer.write([LINE])
        assert shim.requests == 1

    reader = InfluxQL(
        InfluxSettings(
            url=secured_influxdb.url,
            database="v2test",
            username=ADMIN,
            password=SecretStr(PASSWORD),
        )
    )
    series = reader.query("SELECT download_mbps FROM speed")
    assert series[0].rows() == [{"time": "2023-11-14T22:13:20Z", "download_mbps": 25.5}]


def test_v2_wrong_token_is_an_outage_that_names_the_setting(secured_influxdb: InfluxDB) -> None:
    with V2WriteShim(secured_influxdb.port) as shim:
        writer = make_writer(_v2_settings(shim, f"{ADMIN}:wrong"))
        with pytest.raises(
            InfluxUnavailable, match=r"401.*check influx\.username/password or influx\.token"
        ):
            writer.write([LINE])


def test_v2_bad_line_is_a_rejection(secured_influxdb: InfluxDB) -> None:
    with V2WriteShim(secured_influxdb.port) as shim:
        writer = make_writer(_v2_settings(shim, f"{ADMIN}:{PASSWORD}"))
        with pytest.raises(InfluxRejected) as caught:
            writer.write(["speed download_mbps=oops 1"])
    assert caught.value.status == 400
    assert "unable to parse" in str(caught.value)


def test_secrets_do_not_appear_in_writer_descriptions(tmp_path: Path) -> None:
    settings = InfluxSettings(
        url="http://127.0.0.1:1", api="v2", org="o", token=SecretStr("tok-en-123")
    )
    assert "tok-en-123" not in str(make_writer(settings))
    assert "tok-en-123" not in repr(settings)


def test_a_streamed_query_gives_the_rows_of_the_whole_answer_a_chunk_at_a_time(
    database: Influx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state keeper's long reads fold rows as InfluxDB sends them (``chunked=true``)."""
    from collector.influx import query as query_module  # noqa: PLC0415

    settings = InfluxSettings(url=database.url, database=database.database)
    V1Writer(settings).write([
        f"device,school_id=S{school},device_id=d{device} state_code={n}i {1_700_000_000 + n}"
        "000000000"
        for school in range(3) for device in range(4) for n in range(60)
    ])  # fmt: skip
    monkeypatch.setattr(query_module, "CHUNK_ROWS", 25)
    reader = InfluxQL(settings)
    statement = 'SELECT "state_code" FROM "device" GROUP BY "school_id", "device_id"'

    whole = reader.query(statement, epoch="ns")
    parts = list(reader.stream(statement, epoch="ns"))

    def rows(series: list[Series]) -> dict[tuple[tuple[str, str], ...], list[list[Any]]]:
        found: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
        for s in series:
            found.setdefault(tuple(sorted(s.tags.items())), []).extend(s.values)
        return found

    assert len(whole) == 12
    assert len(parts) > len(whole)  # series split in chunks of at most 25 rows
    assert all(len(s.values) <= 25 for s in parts)
    assert rows(parts) == rows(whole)
    with pytest.raises(InfluxQueryError):
        list(reader.stream('SELECT FROM "device"'))
