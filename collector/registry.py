"""The national school registry: which schools exist, where, and what they have.

A CSV file with a header row. ``school_id`` and ``region`` are required; the
other columns are optional (left empty, or left out)::

    school_id,name,region,district,area,latitude,longitude,students,staff,devices,security_contract
    KZ-ALM-0001,School No. 1,Almaty,Bostandyk,urban,43.238,76.889,1200,95,panic_button;turnstile,yes

``area`` is ``urban`` or ``rural``; ``devices`` lists the installed safety
devices (``panic_button``, ``turnstile``, ``police_link``, ``camera``,
``other``, separated by ``;``); ``security_contract`` is ``yes`` or ``no``.

Every row is checked before anything is used, and every bad row is reported
with its line number: a file with errors is refused as a whole.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.contract import DeviceKind, is_valid_id
from collector.points import NOWHERE, Place

_LABEL = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")
MAX_ERRORS_SHOWN = 20
COLUMNS = (
    "school_id", "name", "region", "district", "area", "latitude", "longitude",
    "students", "staff", "devices", "security_contract",
)  # fmt: skip


class RegistryError(ValueError):
    """The registry is unusable; the message names the file and every bad line."""


@dataclass(frozen=True)
class School:
    school_id: str
    region: str
    name: str = ""
    district: str | None = None
    area: str | None = None  # urban, rural
    latitude: float | None = None
    longitude: float | None = None
    students: int | None = None
    staff: int | None = None
    devices: frozenset[DeviceKind] = frozenset()
    security_contract: bool | None = None

    def has(self, kind: DeviceKind) -> bool:
        return kind in self.devices


class SchoolRegistry:
    def __init__(self, schools: list[School]) -> None:
        self._schools = {school.school_id: school for school in schools}

    @classmethod
    def load(cls, path: Path) -> SchoolRegistry:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"cannot read the school registry {path}: {exc}") from exc
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "registry") -> SchoolRegistry:
        rows = csv.DictReader(text.splitlines())
        header = set(rows.fieldnames or [])
        missing = {"school_id", "region"} - header
        if missing:
            raise RegistryError(
                f"{source}: the header must name the columns school_id and region "
                f"(missing: {', '.join(sorted(missing))})"
            )
        unknown = header - set(COLUMNS)
        if unknown:
            raise RegistryError(
                f"{source}: unknown column(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(COLUMNS)}"
            )
        schools: list[School] = []
        errors: list[str] = []
        seen: dict[str, int] = {}
        for line, row in enumerate(rows, 2):
            try:
                school = _school(row)
            except ValueError as exc:
                errors.append(f"line {line}: {exc}")
                continue
            if school.school_id in seen:
                errors.append(
                    f"line {line}: school {school.school_id} is listed twice "
                    f"(first on line {seen[school.school_id]})"
                )
                continue
            seen[school.school_id] = line
            schools.append(school)
        if errors:
            shown = errors[:MAX_ERRORS_SHOWN]
            more = len(errors) - len(shown)
            raise RegistryError(
                f"{source}: {len(errors)} bad row(s); nothing was used:\n  "
                + "\n  ".join(shown)
                + (f"\n  and {more} more" if more else "")
            )
        return cls(schools)

    def __len__(self) -> int:
        return len(self._schools)

    def __contains__(self, school_id: object) -> bool:
        return school_id in self._schools

    def __iter__(self) -> Iterator[School]:
        return iter(sorted(self._schools.values(), key=lambda s: s.school_id))

    def get(self, school_id: str) -> School | None:
        return self._schools.get(school_id)

    def region_of(self, school_id: str) -> str | None:
        school = self._schools.get(school_id)
        return school.region if school else None

    def place_of(self, school_id: str) -> Place:
        """The region and district tags for a school's points (none if unknown)."""
        school = self._schools.get(school_id)
        return Place(school.region, school.district) if school else NOWHERE

    def regions(self) -> list[str]:
        return sorted({school.region for school in self._schools.values()})


def _school(row: dict[str, str | None]) -> School:
    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    school_id = cell("school_id")
    if not is_valid_id(school_id):
        raise ValueError(f"school_id {school_id!r} must be letters, digits, '-' and '_' (1-64)")
    region = cell("region")
    if not _LABEL.match(region):
        raise ValueError("region must be 1-100 printable characters")
    district = cell("district") or None
    if district is not None and not _LABEL.match(district):
        raise ValueError("district must be 1-100 printable characters")
    area = cell("area").lower() or None
    if area not in (None, "urban", "rural"):
        raise ValueError(f"area must be urban or rural, not {area!r}")
    latitude = _number(cell("latitude"), "latitude", -90, 90)
    longitude = _number(cell("longitude"), "longitude", -180, 180)
    students = _count(cell("students"), "students")
    staff = _count(cell("staff"), "staff")
    devices: set[DeviceKind] = set()
    for name in filter(None, (part.strip() for part in cell("devices").split(";"))):
        try:
            devices.add(DeviceKind(name))
        except ValueError:
            kinds = ", ".join(kind.value for kind in DeviceKind)
            raise ValueError(f"devices: unknown kind {name!r} (known: {kinds})") from None
    contract_text = cell("security_contract").lower()
    if contract_text not in ("", "yes", "no"):
        raise ValueError(f"security_contract must be yes or no, not {contract_text!r}")
    name = cell("name")
    if len(name) > 200:
        raise ValueError("name is longer than 200 characters")
    return School(
        school_id=school_id,
        region=region,
        name=name,
        district=district,
        area=area,
        latitude=latitude,
        longitude=longitude,
        students=students,
        staff=staff,
        devices=frozenset(devices),
        security_contract=None if not contract_text else contract_text == "yes",
    )


def _number(text: str, name: str, low: float, high: float) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is outside {low}..{high}")
    return value


def _count(text: str, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or int(text) > 1_000_000:
        raise ValueError(f"{name} {text!r} must be a whole number up to 1000000")
    return int(text)
