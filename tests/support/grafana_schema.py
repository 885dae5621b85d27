"""Type-check dashboard JSON against Grafana's own published types, with TypeScript's compiler.

npm's ``@grafana/schema`` is the schema Grafana's frontend is built from. Three
releases (10.4, 11, 12) and ``tsc`` are installed side by side in
tests/grafana_schema/ (``npm ci``, run by deploy/setup.sh --dev).

Each dashboard becomes a TypeScript module in which

- the dashboard is an object literal of type ``Dashboard``;
- every panel's ``options`` is an object literal of that panel plugin's
  ``Options`` type, and its ``fieldConfig.defaults.custom`` of the plugin's
  ``FieldConfig`` type (the ``Dashboard`` type leaves both open).

Object literals make tsc reject unknown keys, and string unions reject bad enum
values. Two adjustments follow Grafana's own handling: the schema's TypeScript
enums are compared by their string values (``J``), as JSON holds them, and a
panel's options may leave out keys (``P``), because Grafana fills in the
plugin's defaults. A canary module must fail to compile, so that types which
quietly became ``any`` cannot pass everything.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.services import REPO

PACKAGES = REPO / "tests" / "grafana_schema"
MODULES = PACKAGES / "node_modules"
VERSIONS = ("schema-10", "schema-11", "schema-12")  # npm aliases in package.json
RAW = "@grafana/schema/dist/esm/raw/composable/{}/panelcfg/x/{}PanelCfg_types.gen"
# panel type -> (folder, type file prefix, whether it has a FieldConfig type)
PLUGINS = {
    "stat": ("stat", "Stat", False),
    "geomap": ("geomap", "Geomap", False),
    "table": ("table", "Table", True),
    "timeseries": ("timeseries", "TimeSeries", True),
    "piechart": ("piechart", "PieChart", True),
    "bargauge": ("bargauge", "BarGauge", False),
    "text": ("text", "Text", False),
    "state-timeline": ("statetimeline", "StateTimeline", True),
}
HELPERS = """\
export type J<T> = 0 extends 1 & T ? T
  : T extends string ? (string extends T ? string : `${T}`)
  : T extends readonly (infer U)[] ? J<U>[]
  : T extends object ? { [K in keyof T]: J<T[K]> } : T;
export type P<T> = 0 extends 1 & T ? T
  : T extends readonly unknown[] ? J<T>
  : T extends object ? { [K in keyof T]?: P<T[K]> } : J<T>;
export type NoFieldConfig = { [K in "__none__"]?: never };
"""
CANARY = (
    "import type { P } from './helpers';\n"
    f"import type * as s from '{RAW.format('stat', 'Stat')}';\n"
    "// @ts-expect-error a bad enum value must fail\n"
    "export const canary: P<s.Options> = { graphMode: 'bogus' };\n"
)
ERROR = re.compile(r"(\S+?\.ts)\((\d+),\d+\): (.*)")


class _Raw(str):
    """A TypeScript expression written as it is."""


@dataclass
class _Module:
    """A dashboard as TypeScript, with the JSON pointer behind each line."""

    lines: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)

    def add(self, text: str, where: str) -> None:
        self.lines.append(text)
        self.where.append(where)

    def value(self, value: Any, pointer: str, indent: int, head: str) -> None:
        pad = "  " * indent
        if isinstance(value, _Raw):
            self.add(pad + head + value, pointer)
        elif isinstance(value, dict | list) and value:
            items = list(value.items() if isinstance(value, dict) else enumerate(value))
            opening, closing = "{}" if isinstance(value, dict) else "[]"
            self.add(pad + head + opening, pointer)
            for number, (key, item) in enumerate(items):
                name = json.dumps(key) + ": " if isinstance(value, dict) else ""
                self.value(item, f"{pointer}/{key}", indent + 1, name)
                if number < len(items) - 1:
                    self.lines[-1] += ","
            self.add(pad + closing, pointer)
        else:
            self.add(pad + head + json.dumps(value), pointer)

    def declare(self, value: Any, pointer: str, head: str) -> None:
        self.value(value, pointer, 0, head)
        self.lines[-1] += ";"


def _panels(panels: list[Any], pointer: str = "/panels") -> Iterator[tuple[Any, str]]:
    for number, item in enumerate(panels):
        yield item, f"{pointer}/{number}"
        yield from _panels(item.get("panels", []), f"{pointer}/{number}/panels")


def _module(board: dict[str, Any]) -> _Module:
    module = _Module()
    module.add("import type { Dashboard } from '@grafana/schema';", "")
    module.add("import type { J, P, NoFieldConfig } from './helpers';", "")
    for folder, prefix, _ in PLUGINS.values():
        module.add(f"import type * as {folder} from '{RAW.format(folder, prefix)}';", "")
    module.add('type AnyPanel = NonNullable<J<Dashboard>["panels"]>[number];', "")
    panels = board.get("panels", [])
    for number, item in enumerate(panels):  # one literal each: tsc reports per panel
        module.declare(item, f"/panels/{number}", f"const panel_{number}: AnyPanel = ")
    names = ", ".join(f"panel_{number}" for number in range(len(panels)))
    whole = board | {"panels": _Raw(f"[{names}]")}
    module.declare(whole, "", "export const board: J<Dashboard> = ")
    for item, pointer in _panels(panels):
        if item.get("type") == "row":
            continue
        if item.get("type") not in PLUGINS:
            raise ValueError(f"{pointer}: panel type {item.get('type')!r}: add it to PLUGINS")
        folder, _, has_field_config = PLUGINS[item["type"]]
        name = pointer[1:].replace("/", "_")
        module.declare(
            item.get("options", {}),
            f"{pointer}/options",
            f"export const {name}_options: P<{folder}.Options> = ",
        )
        custom = item.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
        kind = f"P<{folder}.FieldConfig>" if has_field_config else "NoFieldConfig"
        module.declare(
            custom,
            f"{pointer}/fieldConfig/defaults/custom",
            f"export const {name}_custom: {kind} = ",
        )
    return module


def check(boards: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """{Grafana schema version: its errors, as ``board.json#/json/pointer: message``}."""
    if not (MODULES / "typescript").is_dir():
        raise FileNotFoundError(f"{MODULES}: run deploy/setup.sh --dev (npm ci in {PACKAGES})")
    found: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="grafana-schema-") as scratch:
        for alias in VERSIONS:
            out = Path(scratch) / alias
            out.mkdir()
            modules = {
                re.sub(r"\W", "_", name.removesuffix(".json")) + ".ts": (name, _module(board))
                for name, board in boards.items()
            }
            for file, (_, module) in modules.items():
                (out / file).write_text("\n".join(module.lines) + "\n")
            (out / "helpers.ts").write_text(HELPERS)
            (out / "canary.ts").write_text(CANARY)
            schema = str(MODULES / alias)
            config = {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "skipLibCheck": False,
                    "types": [],
                    "target": "es2022",
                    "lib": ["es2022"],
                    "module": "preserve",
                    "moduleResolution": "bundler",
                    # the alias must answer to the name its own type files import
                    "paths": {"@grafana/schema": [schema], "@grafana/schema/*": [schema + "/*"]},
                },
                "files": ["helpers.ts", "canary.ts", *modules],
            }
            (out / "tsconfig.json").write_text(json.dumps(config))
            done = subprocess.run(
                [str(MODULES / ".bin" / "tsc"), "-p", str(out), "--pretty", "false"],
                capture_output=True,
                text=True,
                check=False,
            )
            version = json.loads((MODULES / alias / "package.json").read_text())["version"]
            errors = []
            for line in (done.stdout + done.stderr).splitlines():
                match = ERROR.match(line)
                if match and Path(match[1]).name in modules:
                    name, module = modules[Path(match[1]).name]
                    errors.append(f"{name}#{module.where[int(match[2]) - 1]}: {match[3]}")
                else:
                    errors.append(line)
            if done.returncode and not errors:
                errors.append(f"tsc exited {done.returncode} with no message")
            found[version] = errors
    return found
