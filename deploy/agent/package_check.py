"""Checks of the agent's package contents, run by deploy/agent/package.sh and the tests.

    python3 deploy/agent/package_check.py elf LIB MACHINE   # every compiled file is for MACHINE
    python3 deploy/agent/package_check.py lock LIB LOCK     # the libraries are the lock's, exactly

``elf`` reads each ELF file's header (``e_machine``) under LIB and fails naming
every file built for another CPU, so an amd64 library cannot slip into the
arm64 package. ``lock`` compares the ``*.dist-info`` folders under LIB with the
pins of the lock file and fails on a missing, extra or different version;
it prints the libraries, one ``name==version`` a line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal

ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm", 0x03: "i386"}
PROJECT = "school-monitor"


def elf_machine(path: Path) -> str | None:
    """The CPU an ELF file is built for; None for a file that is not ELF."""
    with path.open("rb") as file:
        header = file.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
    number = int.from_bytes(header[18:20], order)
    return ELF_MACHINES.get(number, hex(number))


def foreign_binaries(lib: Path, machine: str) -> list[tuple[Path, str]]:
    """Every compiled file under ``lib`` that is not for ``machine``, with its own CPU."""
    found = []
    for path in sorted(lib.rglob("*")):
        if path.is_file() and not path.is_symlink():
            cpu = elf_machine(path)
            if cpu is not None and cpu != machine:
                found.append((path, cpu))
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> dict[str, str]:
    """The lock file's pins: normalised name to version."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def installed(lib: Path) -> dict[str, str]:
    """The libraries installed under ``lib``: normalised name to version."""
    found = {}
    for info in lib.glob("*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
        found[normalise(name)] = version
    return found


def lock_differences(lib: Path, lock: Path) -> list[str]:
    want, have = locked(lock), installed(lib)
    have.pop(PROJECT, None)
    problems = [f"{n}: locked {v}, missing" for n, v in want.items() if n not in have]
    problems += [f"{n}: locked {v}, installed {have[n]}" for n, v in want.items()
                 if n in have and have[n] != v]  # fmt: skip
    problems += [f"{n} {v}: not in the lock" for n, v in have.items() if n not in want]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in {"elf", "lock"}:
        print(__doc__, file=sys.stderr)
        return 2
    lib = Path(argv[2])
    if argv[1] == "elf":
        foreign = foreign_binaries(lib, argv[3])
        for path, cpu in foreign:
            print(f"package_check: {path.relative_to(lib)} is built for {cpu}, not {argv[3]}",
                  file=sys.stderr)  # fmt: skip
        return 1 if foreign else 0
    problems = lock_differences(lib, Path(argv[3]))
    for problem in problems:
        print(f"package_check: {problem} ({argv[3]})", file=sys.stderr)
    if problems:
        return 1
    for name, version in sorted(installed(lib).items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
