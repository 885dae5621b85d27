"""The school registry: which schools exist, and their regions.

A CSV file with a header row and at least the columns ``school_id`` and
``region`` (``name`` and any others are kept for people, and ignored)::

    school_id,name,region
    KZ-ALM-0001,School No. 1,Almaty
    KZ-AST-0002,Lyceum No. 2,Astana

With a registry loaded (``registry_file``), the collector rejects messages of
unknown schools and tags every point with the school's region; provisioning
(``school-collector provision``) issues one credential per registered school.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.contract import is_valid_id

_REGION = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")


class RegistryError(ValueError):
    """The registry file is unusable; the message names the file and the line."""


@dataclass(frozen=True)
class School:
    school_id: str
    region: str
    name: str = ""


class SchoolRegistry:
    def __init__(self, schools: list[School]) -> None:
        self._schools = {school.school_id: school for school in schools}

    @classmethod
    def load(cls, path: Path) -> SchoolRegistry:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"cannot read the school registry {path}: {exc}") from exc
        rows = csv.DictReader(text.splitlines())
        missing = {"school_id", "region"} - set(rows.fieldnames or [])
        if missing:
            raise RegistryError(
                f"{path}: the header must name the columns school_id and region "
                f"(missing: {', '.join(sorted(missing))})"
            )
        schools: list[School] = []
        seen: dict[str, int] = {}
        for line, row in enumerate(rows, 2):
            school_id = (row.get("school_id") or "").strip()
            region = (row.get("region") or "").strip()
            if not is_valid_id(school_id):
                raise RegistryError(
                    f"{path}, line {line}: school_id {school_id!r} must be letters, digits, "
                    "'-' and '_' (up to 64)"
                )
            if not _REGION.match(region):
                raise RegistryError(f"{path}, line {line}: region must be 1-100 printable chars")
            if school_id in seen:
                raise RegistryError(
                    f"{path}, line {line}: school {school_id} is listed twice "
                    f"(first on line {seen[school_id]})"
                )
            seen[school_id] = line
            schools.append(School(school_id, region, (row.get("name") or "").strip()))
        return cls(schools)

    def __len__(self) -> int:
        return len(self._schools)

    def __contains__(self, school_id: object) -> bool:
        return school_id in self._schools

    def __iter__(self) -> Iterator[School]:
        return iter(sorted(self._schools.values(), key=lambda s: s.school_id))

    def region_of(self, school_id: str) -> str | None:
        school = self._schools.get(school_id)
        return school.region if school else None
