"""Our line-protocol encoder: the same output as influxdb-client's Point, safe in the database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client.client.write.point import Point

from agent.contract import DeviceKind, DeviceObservation, DevicesReport, DeviceState
from collector.influx.v1 import V1Writer
from collector.line_protocol import FieldValue, encode
from collector.points import DEVICE_STATE_CODES, Place, device_lines, ns, text
from collector.settings import InfluxSettings
from tests.support.services import Influx

# Names and tag values as they can reach us: printable text, including the
# characters line protocol must escape (space, comma, equals sign, quotes).
names = st.text(
    st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\\"),
    min_size=1,
    max_size=12,
)
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(max_size=20),
)


@settings(max_examples=500, deadline=None)
@given(
    measurement=names.filter(lambda n: not n.startswith("#")),
    tags=st.dictionaries(names, names, max_size=4),
    fields=st.dictionaries(names, field_values, min_size=1, max_size=5),
    time_ns=st.integers(min_value=0, max_value=2**62),
)
def test_encoding_matches_influxdb_client_point(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], time_ns: int
) -> None:
    point = Point(measurement)
    for key, tag in tags.items():
        point.tag(key, tag)
    for key, value in fields.items():
        point.field(key, value)
    point.time(time_ns)

    assert encode(measurement, tags, fields, time_ns) == point.to_line_protocol()


def test_none_tags_and_fields_are_left_out() -> None:
    line = encode("m", {"a": None, "b": "x"}, {"f": None, "g": 1.0}, 5)
    assert line == "m,b=x g=1 5"


def test_a_point_without_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        encode("m", {"a": "b"}, {"f": None}, 1)


def test_integers_floats_and_booleans_keep_their_types() -> None:
    assert encode("m", {}, {"i": 3, "f": 3.0, "b": True}, 1) == "m b=true,f=3,i=3i 1"


AWKWARD = [
    'quote " and backslash \\ and both \\"',
    "comma, equals= and spaces  ",
    "unicode: Қазақстан мектебі ✓",
    "ends with a backslash \\",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_awkward_strings_survive_a_round_trip_through_influxdb(
    database: Influx, value: str
) -> None:
    writer = V1Writer(InfluxSettings(url=database.url, database=database.database))
    writer.write([encode("probe", {"school_id": "KZ 1,x=y"}, {"text": value}, 1_000)])

    rows = database.rows('SELECT "text", "school_id" FROM "probe"')
    assert rows[0]["text"] == value
    assert rows[0]["school_id"] == "KZ 1,x=y"


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(names, min_size=1, max_size=4),
    place=st.tuples(st.one_of(st.none(), names), st.one_of(st.none(), names)),
    label=st.text(max_size=20),
    detail=st.one_of(st.none(), st.text(max_size=20)),
    response_ms=st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)
def test_device_points_are_what_encode_writes(
    ids: list[str],
    place: tuple[str | None, str | None],
    label: str,
    detail: str | None,
    response_ms: float | None,
) -> None:
    """device_lines' fast path (shared tags escaped once) against the general encoder."""
    at = datetime(2026, 12, 2, 3, tzinfo=UTC)
    devices = [
        DeviceObservation.model_construct(
            device_id=device_id, kind=DeviceKind.TURNSTILE, label=label, state=DeviceState.DOWN,
            changed_at=at, result=f"r {device_id}", result_code=1, response_ms=response_ms,
            detail=detail,
        )
        for device_id in ids
    ]  # fmt: skip
    report = DevicesReport.model_construct(
        school_id="KZ 1,=x", agent_id=ids[0], measured_at=at, boot_id="0" * 32, sequence=1,
        full=True, devices=devices, message_id="m",
    )  # fmt: skip
    where = Place(region=place[0], district=place[1])
    expected = [
        encode(
            "device",
            {"school_id": report.school_id, "region": where.region, "district": where.district,
             "agent_id": report.agent_id, "device_id": d.device_id, "kind": d.kind.value,
             "result": d.result},
            {"state": d.state.value, "state_code": DEVICE_STATE_CODES[d.state.value], "up": 0,
             "response_ms": d.response_ms, "changed_at_ms": ns(at) // 1_000_000,
             "label": text(d.label), "detail": text(d.detail) if d.detail is not None else None},
            ns(at),
        )
        for d in devices
    ]  # fmt: skip
    assert device_lines(report, where)[:-1] == expected
