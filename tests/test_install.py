"""deploy/agent/install.sh against a throwaway root: install, upgrade, uninstall."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.services import REPO

INSTALL = REPO / "deploy" / "agent" / "install.sh"
BUNDLE_TOML = 'school_id = "KZ-ALM-0001"\n\n[mqtt]\nurl = "mqtts://broker.example:8883"\n'


def _ids(root: Path, name: str) -> tuple[int, int]:
    uid = next(
        int(line.split(":")[2])
        for line in (root / "etc" / "passwd").read_text().splitlines()
        if line.startswith(f"{name}:")
    )
    gid = next(
        int(line.split(":")[2])
        for line in (root / "etc" / "group").read_text().splitlines()
        if line.startswith(f"{name}:")
    )
    return uid, gid


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the host's account files and systemd units, nothing else."""
    base = tmp_path_factory.mktemp("root")
    (base / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        shutil.copy2(Path("/etc") / name, base / "etc" / name)
    units = base / "usr" / "lib" / "systemd" / "system"
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=False, ignore_dangling_symlinks=True)
    return base


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=600, check=False
    )


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_install_upgrade_and_uninstall(root: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "agent.toml").write_text(BUNDLE_TOML)
    (bundle / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")

    first = _run("--root", str(root), "--bundle", str(bundle))
    assert first.returncode == 0, first.stdout + first.stderr
    uid, gid = _ids(root, "school-agent")
    assert uid < 1000  # a system user
    agent = root / "opt" / "school-agent" / "bin" / "school-agent"
    version = subprocess.run([str(agent), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("school-agent ")
    link = root / "usr" / "local" / "bin" / "school-agent"
    assert link.readlink() == Path("/opt/school-agent/bin/school-agent")  # on the PATH
    config = root / "etc" / "school-agent" / "agent.toml"
    assert config.read_text() == BUNDLE_TOML
    assert (_mode(config), config.stat().st_uid, config.stat().st_gid) == ("0o640", 0, gid)
    etc = root / "etc" / "school-agent"
    assert (_mode(etc), etc.stat().st_gid) == ("0o750", gid)
    state = root / "var" / "lib" / "school-agent"
    assert (_mode(state), state.stat().st_uid, state.stat().st_gid) == ("0o750", uid, gid)
    unit = root / "etc" / "systemd" / "system" / "school-agent.service"
    assert _mode(unit) == "0o644"
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "school-agent.service"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr[-2000:]
    bbr = root / "etc" / "sysctl.d" / "60-school-agent-bbr.conf"
    listed = bbr.read_text().split("tcp_allowed_congestion_control =")[1].split()
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
    assert set(listed) == {*allowed, "bbr"}, "bbr added, what the system allowed kept"
    module = root / "etc" / "modules-load.d" / "school-agent-bbr.conf"
    assert "tcp_bbr" in module.read_text().splitlines()

    (state / "outbox.db").write_text("queued measurements")
    config.write_text(BUNDLE_TOML + "# edited by the school's IT person\n")
    upgrade = _run("--root", str(root), "--bundle", str(bundle))
    assert upgrade.returncode == 0, upgrade.stderr
    assert "kept the existing" in upgrade.stdout
    assert config.read_text().endswith("# edited by the school's IT person\n")
    assert (state / "outbox.db").read_text() == "queued measurements"
    assert _ids(root, "school-agent") == (uid, gid)  # the same user, not a second one

    removed = _run("--root", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / "opt" / "school-agent").exists()
    assert not unit.exists()
    assert not link.is_symlink()
    assert not bbr.exists()
    assert not module.exists()
    assert config.exists()  # the credentials stay
    assert (state / "outbox.db").exists()  # and the data

    purged = _run("--root", str(root), "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not etc.exists()
    assert not state.exists()
    assert "school-agent:" not in (root / "etc" / "passwd").read_text()


def test_without_a_bundle_the_commented_sample_is_written(root: Path) -> None:
    result = _run("--root", str(root))
    try:
        assert result.returncode == 0, result.stderr
        config = root / "etc" / "school-agent" / "agent.toml"
        assert config.read_text() == (REPO / "agent" / "agent.sample.toml").read_text()
        assert "set school_id and mqtt.url" in result.stdout
    finally:
        _run("--root", str(root), "--uninstall", "--purge")


def test_the_help_explains_every_option() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for option in ("--bundle", "--uninstall", "--purge", "--root"):
        assert option in result.stdout
