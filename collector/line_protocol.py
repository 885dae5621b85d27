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


def encode(
    measurement: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, FieldValue],
    time_ns: int,
) -> str:
    """One line of line protocol; raises ValueError when no field has a value."""
    tag_part = "".join(
        f",{key.translate(_ESCAPE_KEY)}={_tag_value(value)}"
        for key, value in sorted(tags.items())
        if value
    )
    field_part = ",".join(
        f"{key.translate(_ESCAPE_KEY)}={rendered}"
        for key, value in sorted(fields.items())
        if (rendered := _field_value(value)) is not None
    )
    if not field_part:
        raise ValueError(f"a {measurement!r} point needs at least one field")
    return f"{measurement.translate(_ESCAPE_MEASUREMENT)}{tag_part} {field_part} {time_ns}"


def _tag_value(value: str) -> str:
    escaped = value.translate(_ESCAPE_KEY)
    return escaped + " " if escaped.endswith("\\") else escaped


def _field_value(value: FieldValue) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = str(value)
        return text[:-2] if text.endswith(".0") else text
    return '"' + value.translate(_ESCAPE_STRING) + '"'
