"""The project's READMEs: the root overview and each folder's reference, read as one contract."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FILES = ("README.md", "agent/README.md", "collector/README.md", "grafana/README.md")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def combined() -> str:
    """Every README, one after another, each starting a new ``## `` section."""
    return "\n\n".join(f"## ({name})\n\n{(REPO / name).read_text()}" for name in FILES)


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation gone, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"^#{1,6} (.+)$", line)):
            found.add(anchor(match[1]))
    return found


def broken_links() -> list[str]:
    """Every relative link of every README that points at no file, or at no heading."""
    broken = []
    for name in FILES:
        text = (REPO / name).read_text()
        here = (REPO / name).parent
        for target in _LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address: not reachable from here
            path, _, fragment = target.partition("#")
            resolved = Path(os.path.normpath(here / path)) if path else REPO / name
            if not resolved.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif fragment and (
                resolved.suffix != ".md" or fragment not in anchors(resolved.read_text())
            ):
                broken.append(f"{name}: {target} (no such heading)")
    return broken
