"""The agent's Debian package (deploy/agent/package.sh), by dpkg's and apt's own rules.

The amd64 package is installed, upgraded, removed and purged by apt in a
Debian 12 root made with debootstrap (deploy/setup.sh keeps it as a tarball,
.run/debian-bookworm.tar), chrooted, in a network namespace of its own with
nothing in it: an install that fetched anything would fail. The arm64
package's compiled files are read with binutils' readelf. The apt repository
is read by the root's apt, over ``file:``, with its signing key.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.services import REPO

PACKAGE = REPO / "deploy" / "agent" / "package.sh"
CHECK = REPO / "deploy" / "agent" / "package_check.py"
LOCK = REPO / "deploy" / "requirements.lock"
DEBIAN_ROOT = REPO / ".run" / "debian-bookworm.tar"
BUNDLE_TOML = 'school_id = "KZ-ALM-0001"\n\n[mqtt]\nurl = "mqtts://broker.example:8883"\n'


def _package(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(PACKAGE), *args], capture_output=True, text=True, timeout=900,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": sys.executable,
             "HOME": str(Path.home())},
        check=False,
    )  # fmt: skip


@dataclass(frozen=True)
class Built:
    amd64: Path
    amd64_newer: Path
    arm64: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("dist")
    for args in (["--arch", "amd64"], ["--arch", "amd64", "--revision", "2"], ["--arch", "arm64"]):
        result = _package("build", *args, "--out", str(out))
        assert result.returncode == 0, result.stdout + result.stderr
    return Built(
        out / "school-agent_0.1.0-1_amd64.deb",
        out / "school-agent_0.1.0-2_amd64.deb",
        out / "school-agent_0.1.0-1_arm64.deb",
    )


class Chroot:
    """A Debian 12 root, run in a network namespace with nothing in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.netns = f"sm-deb-{uuid.uuid4().hex[:6]}"

    def __enter__(self) -> Chroot:
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(self.root / "proc")], check=True)
        return self

    def __exit__(self, *_: object) -> None:
        subprocess.run(["umount", "-l", str(self.root / "proc")], check=False)
        subprocess.run(["ip", "netns", "del", self.netns], check=False)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, "chroot", str(self.root), *command],
            capture_output=True, text=True, timeout=600, check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
                 "LC_ALL": "C"},
        )  # fmt: skip
        if check:
            assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr}"
        return result

    def ids(self, name: str) -> tuple[int, int]:
        entry = self.run("getent", "passwd", name).stdout.split(":")
        return int(entry[2]), int(entry[3])

    def owner_mode(self, path: str) -> tuple[str, str]:
        stat = self.run("stat", "-c", "%U:%G %a", path).stdout.split()
        return stat[0], stat[1]


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    assert DEBIAN_ROOT.exists(), f"{DEBIAN_ROOT} is missing: run bash deploy/setup.sh --dev"
    root = tmp_path_factory.mktemp("debian")
    subprocess.run(["tar", "-xf", str(DEBIAN_ROOT), "-C", str(root)], check=True)
    with Chroot(root) as chroot:
        yield chroot


def _apt(debian: Chroot, *args: str) -> str:
    return debian.run("apt-get", "-y", "-q", "-o", "Acquire::Retries=0", *args).stdout


def test_install_upgrade_remove_and_purge_offline_in_debian_12(
    built: Built, debian: Chroot, tmp_path: Path
) -> None:
    for deb in (built.amd64, built.amd64_newer):
        shutil.copy2(deb, debian.root / "tmp" / deb.name)
    _apt(debian, "install", f"/tmp/{built.amd64.name}")

    assert debian.run("dpkg-query", "-W", "-f", "${Version}", "school-agent").stdout == "0.1.0-1"
    version = debian.run("school-agent", "--version").stdout
    assert version.startswith("school-agent 0.1.0")  # the root's own python3.11
    uid, gid = debian.ids("school-agent")
    assert uid < 1000  # a system user
    assert debian.owner_mode("/etc/school-agent") == ("root:school-agent", "750")
    assert debian.owner_mode("/etc/school-agent/agent.toml") == ("root:school-agent", "640")
    assert debian.owner_mode("/var/lib/school-agent") == ("school-agent:school-agent", "750")
    assert debian.owner_mode("/lib/systemd/system/school-agent.service") == ("root:root", "644")
    assert debian.owner_mode("/opt/school-agent/bin/school-agent") == ("root:root", "755")
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={debian.root}", "school-agent.service"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr[-2000:]
    bbr = debian.root / "etc" / "sysctl.d" / "60-school-agent-bbr.conf"
    assert "bbr" in bbr.read_text().split("tcp_allowed_congestion_control =")[1].split()

    bundle = debian.root / "tmp" / "bundle"
    bundle.mkdir()
    (bundle / "agent.toml").write_text(BUNDLE_TOML)
    (bundle / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    debian.run("school-agent-setup", "--bundle", "/tmp/bundle")
    config = debian.root / "etc" / "school-agent" / "agent.toml"
    assert config.read_text() == BUNDLE_TOML
    state = debian.root / "var" / "lib" / "school-agent"
    (state / "outbox.db").write_text("queued measurements")
    config.write_text(BUNDLE_TOML + "# edited by the school's IT person\n")

    _apt(debian, "install", f"/tmp/{built.amd64_newer.name}")
    assert debian.run("dpkg-query", "-W", "-f", "${Version}", "school-agent").stdout == "0.1.0-2"
    assert config.read_text().endswith("# edited by the school's IT person\n")
    assert (state / "outbox.db").read_text() == "queued measurements"
    assert debian.ids("school-agent") == (uid, gid)

    _apt(debian, "remove", "school-agent")
    assert not (debian.root / "opt" / "school-agent").exists()
    assert not (debian.root / "usr" / "bin" / "school-agent").is_symlink()
    assert not bbr.exists()
    assert config.exists()  # the credentials stay
    assert (state / "outbox.db").exists()  # and the data

    _apt(debian, "purge", "school-agent")
    assert not config.parent.exists()
    assert not state.exists()
    assert debian.run("getent", "passwd", "school-agent", check=False).returncode == 2


def _readelf_machine(path: Path) -> str:
    header = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True,
                            check=True).stdout  # fmt: skip
    return re.search(r"Machine:\s+(.+)", header).group(1).strip()  # type: ignore[union-attr]


def test_every_compiled_file_of_the_arm64_package_is_aarch64_and_the_libraries_are_the_lock(
    built: Built, tmp_path: Path
) -> None:
    subprocess.run(["dpkg-deb", "-x", str(built.arm64), str(tmp_path)], check=True)
    lib = tmp_path / "opt" / "school-agent" / "lib"
    compiled = [p for p in lib.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"]
    assert compiled, "no compiled files at all: pydantic-core and psutil have some"
    assert {_readelf_machine(p) for p in compiled} == {"AArch64"}

    pins = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", LOCK.read_text(), re.M))
    want = {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in pins.items()}
    have: dict[str, str] = {}
    for info in lib.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        have[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert have.pop("school-monitor") == "0.1.0"
    assert have == want
    fields = subprocess.run(["dpkg-deb", "-f", str(built.arm64), "Architecture", "Depends"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "Architecture: arm64" in fields
    assert "python3.11" in fields


def test_an_amd64_library_in_an_arm64_build_is_named_and_fails_the_check(tmp_path: Path) -> None:
    stray = next(Path(sys.prefix).rglob("_psutil_linux*.so"))  # this machine's: x86_64
    (tmp_path / "psutil").mkdir()
    shutil.copy2(stray, tmp_path / "psutil" / stray.name)
    (tmp_path / "psutil" / "__init__.py").write_text("")
    result = subprocess.run([sys.executable, str(CHECK), "elf", str(tmp_path), "aarch64"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 1
    assert f"psutil/{stray.name} is built for x86_64, not aarch64" in result.stderr


def test_the_signed_repository_serves_upgrades_and_a_tampered_index_is_refused(
    built: Built, debian: Chroot, tmp_path: Path
) -> None:
    keys, served = tmp_path / "keys", debian.root / "srv" / "apt"
    first = _package("repo", "--key-dir", str(keys), "--out", str(served), str(built.amd64))
    assert first.returncode == 0, first.stdout + first.stderr
    keyring = debian.root / "etc" / "apt" / "keyrings"
    keyring.mkdir(parents=True, exist_ok=True)
    shutil.copy2(served / "school-monitor-archive.asc", keyring / "school-monitor.asc")
    sources = debian.root / "etc" / "apt" / "sources.list.d" / "school-monitor.sources"
    sources.write_text("Types: deb\nURIs: file:/srv/apt\nSuites: stable\nComponents: main\n"
                       "Signed-By: /etc/apt/keyrings/school-monitor.asc\n")  # fmt: skip
    only_ours = ["-o", "Dir::Etc::SourceList=/dev/null",
                 "-o", "Dir::Etc::SourceParts=/etc/apt/sources.list.d"]  # fmt: skip
    _apt(debian, *only_ours, "update")
    _apt(debian, *only_ours, "install", "school-agent")
    assert debian.run("dpkg-query", "-W", "-f", "${Version}", "school-agent").stdout == "0.1.0-1"

    second = _package("repo", "--key-dir", str(keys), "--out", str(served), str(built.amd64_newer))
    assert second.returncode == 0, second.stderr
    _apt(debian, *only_ours, "update")
    policy = debian.run("apt-cache", *only_ours, "policy", "school-agent").stdout
    assert "Candidate: 0.1.0-2" in policy
    upgrade = debian.run("unattended-upgrade", "--dry-run", "-d", check=False)
    assert "school-agent" in upgrade.stdout + upgrade.stderr

    packages = served / "dists" / "stable" / "main" / "binary-amd64" / "Packages"
    packages.write_text(packages.read_text().replace("0.1.0-2", "0.1.0-9"))
    (packages.parent / "Packages.gz").unlink()
    shutil.rmtree(debian.root / "var" / "lib" / "apt" / "lists")  # nothing cached: fetch it
    tampered = debian.run("apt-get", *only_ours, "update", check=False)
    assert tampered.returncode != 0
    assert "Hash Sum mismatch" in tampered.stdout + tampered.stderr
    policy = debian.run("apt-cache", *only_ours, "policy", "school-agent").stdout
    assert "0.1.0-9" not in policy

    release = served / "dists" / "stable" / "InRelease"
    release.write_text(release.read_text().replace("Label: school-monitor", "Label: other"))
    forged = debian.run("apt-get", *only_ours, "update", check=False)
    assert forged.returncode != 0
    assert "signatures were invalid" in forged.stdout + forged.stderr
    _apt(debian, "purge", "school-agent")


def test_every_runtime_dependency_of_the_project_is_pinned_by_the_lock() -> None:
    """The lock is regenerated with pyproject.toml: a new dependency must be in it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def name(text: str) -> str:
        found = re.match(r"[A-Za-z0-9._-]+", text)
        assert found is not None, text
        return re.sub(r"[-_.]+", "-", found.group(0)).lower()

    pins = {name(n) for n in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", LOCK.read_text(), re.M)}
    wanted = {name(dependency) for dependency in project["dependencies"]}
    assert wanted <= pins, f"not in {LOCK.name}: {sorted(wanted - pins)} (see its header)"
