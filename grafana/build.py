"""The Grafana dashboards as code: ``python grafana/build.py`` writes grafana/dashboards/*.json.

Each dashboard is built in grafana/boards/ from the pieces in grafana/parts.py.
The measurements and fields are the README's; tests run every query, with
Grafana's macros substituted, against a real InfluxDB holding a simulated fleet,
and type-check every file against Grafana's published schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python grafana/build.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grafana.boards.devices import devices
from grafana.boards.fleet import fleet
from grafana.boards.national import national
from grafana.boards.pipeline import pipeline
from grafana.boards.school import school
from grafana.parts import Json

HERE = Path(__file__).resolve().parent
DASHBOARDS: dict[str, Callable[[], Json]] = {
    "national-overview.json": national,
    "region-and-school.json": school,
    "safety-devices.json": devices,
    "fleet-health.json": fleet,
    "pipeline-health.json": pipeline,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    argparse.ArgumentParser(
        description="Write grafana/dashboards/*.json from the code in grafana/boards/ "
        "(tests check that the committed files are what this writes)."
    ).parse_args()
    out = HERE / "dashboards"
    out.mkdir(exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")  # noqa: T201 - a build script
    return 0


if __name__ == "__main__":
    sys.exit(main())
