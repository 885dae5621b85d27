"""InfluxDB line protocol, typed and small.

``measurement,tag=value field=1.5,count=3i,flag=true,text="a \\"b\\"" 1700000000000000000``

Tags are sorted by key, and so are fields; a None tag or field is left out. The output
matches influxdb-client's ``Point.to_line_protocol`` (a test checks this) at a fraction
of its cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FieldValue = float | int | bool | str | None

_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_KEY = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})


_KEYS: dict[str, str] = {}  # key -> escaped; keys are few (measurements, tags, fields)
_TAG_VALUES: dict[str, str] = {}  # value -> escaped; school and device ids repeat all day
_TAG_VALUES_MAX = 500_000


def encode(
    measurement: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, FieldValue],
    time_ns: int,
) -> str:
    """One line of line protocol; raises ValueError when no field has a value.

    Escaped keys and tag values are remembered: the collector writes the same
    few keys and the same schools' ids over and over.
    """
    parts = [_escaped_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value:
            parts += (",", _key(key), "=", _tag_value(value))
    parts.append(" ")
    first = True
    for key in sorted(fields):
        rendered = _field_value(fields[key])
        if rendered is not None:
            if first:
                first = False
            else:
                parts.append(",")
            parts += (_key(key), "=", rendered)
    if first:
        raise ValueError(f"a {measurement!r} point needs at least one field")
    parts += (" ", str(time_ns))
    return "".join(parts)


def tag(key: str, value: str | None) -> str:
    """``,key=value`` as :func:`encode` writes it, or "" for an empty tag (left out)."""
    return "," + _key(key) + "=" + _tag_value(value) if value else ""


def field_set(fields: tuple[tuple[str, FieldValue], ...]) -> str:
    """``key=value,...`` of ``fields`` given in key order, as :func:`encode` writes them."""
    found = []
    for key, value in fields:
        rendered = _field_value(value)
        if rendered is not None:
            found.append(_key(key) + "=" + rendered)
    if not found:
        raise ValueError("a point needs at least one field")
    return ",".join(found)


def _escaped_measurement(measurement: str) -> str:
    key = "\0" + measurement  # not a valid key, so never confused with one
    escaped = _KEYS.get(key)
    if escaped is None:
        escaped = _KEYS[key] = measurement.translate(_ESCAPE_MEASUREMENT)
    return escaped


def _key(key: str) -> str:
    escaped = _KEYS.get(key)
    if escaped is None:
        escaped = _KEYS[key] = key.translate(_ESCAPE_KEY)
    return escaped


def _tag_value(value: str) -> str:
    escaped = _TAG_VALUES.get(value)
    if escaped is None:
        escaped = value.translate(_ESCAPE_KEY)
        if escaped.endswith("\\"):
            escaped += " "
        if len(_TAG_VALUES) >= _TAG_VALUES_MAX:
            _TAG_VALUES.clear()
        _TAG_VALUES[value] = escaped
    return escaped


def _field_value(value: FieldValue) -> str | None:  # noqa: PLR0911 - a fast path per type
    kind = type(value)
    if kind is str:
        return '"' + value.translate(_ESCAPE_STRING) + '"'  # type: ignore[union-attr]
    if kind is int:
        return f"{value}i"
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            return None
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if value is None:
        return None
    if kind is bool:
        return "true" if value else "false"
    return _field_value_slow(value)


def _field_value_slow(value: FieldValue) -> str | None:
    """Subclasses (an IntEnum, a str enum): by what they are, as before."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{int(value)}i"
    if isinstance(value, float):
        return _field_value(float(value))
    return _field_value(str(value))
