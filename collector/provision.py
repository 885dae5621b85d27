"""``school-collector provision``: the registry as broker accounts and agent bundles.

For every school in the registry: a strong generated password, an entry in
Mosquitto's password file (PBKDF2-SHA512, the ``$7$`` format of
``mosquitto_passwd``; username = school id), and a bundle to install on the
school's PC: ``schools/<id>/agent.toml`` (school id, broker URL, credentials,
CA path) and ``schools/<id>/ca.pem``. The collector gets an account of its own.

Secrets are written with mode 0600 and never printed. Running it again changes
nothing (no file is rewritten); ``--rotate ID`` issues a new password for one
school; a school that left the registry loses its account and its bundle.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.broker import BrokerAddress
from collector.registry import SchoolRegistry

ITERATIONS = 101  # mosquitto_passwd's default for $7$
COLLECTOR_USER = "school-collector"


@dataclass
class Summary:
    created: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    files_written: int = 0

    def __str__(self) -> str:
        return (
            f"{len(self.created)} new, {len(self.rotated)} rotated, "
            f"{len(self.unchanged)} unchanged, {len(self.revoked)} revoked; "
            f"{self.files_written} file(s) written"
        )


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto 2 password-file hash: ``$7$<iterations>$<salt>$<pbkdf2-sha512>``."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return f"$7${ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":  # "", "7", iterations, salt, hash
        return False
    try:
        salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
        rounds = int(parts[2])
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds)
    return hmac.compare_digest(digest, expected)


def provision(
    registry: SchoolRegistry,
    out: Path,
    *,
    broker_url: str,
    ca_file: Path,
    bundle_ca_path: str = "/etc/school-agent/ca.pem",
    rotate: frozenset[str] = frozenset(),
) -> Summary:
    BrokerAddress.parse(broker_url)  # raises ValueError on a bad URL
    unknown = rotate - {school.school_id for school in registry}
    if unknown:
        raise ValueError(f"cannot rotate {', '.join(sorted(unknown))}: not in the registry")
    summary = Summary()
    entries = _read_password_file(out / "mosquitto" / "passwords")
    ca = ca_file.read_bytes()
    new_entries: dict[str, str] = {}

    collector_file = out / "collector" / "credentials.toml"
    password = _existing_password(collector_file)
    if password is None or not verify_password(password, entries.get(COLLECTOR_USER, "")):
        password = secrets.token_urlsafe(32)
        new_entries[COLLECTOR_USER] = hash_password(password)
    else:
        new_entries[COLLECTOR_USER] = entries[COLLECTOR_USER]
    summary.files_written += _write(
        collector_file,
        f'# school-collector credentials for the broker\n[mqtt]\nusername = "{COLLECTOR_USER}"\n'
        f'password = "{password}"\n',
        secret=True,
    )

    for school in registry:
        bundle = out / "schools" / school.school_id
        password = _existing_password(bundle / "agent.toml")
        current = entries.get(school.school_id, "")
        if school.school_id in rotate or password is None or not verify_password(password, current):
            (summary.rotated if password is not None else summary.created).append(school.school_id)
            password = secrets.token_urlsafe(32)
            new_entries[school.school_id] = hash_password(password)
        else:
            summary.unchanged.append(school.school_id)
            new_entries[school.school_id] = current
        summary.files_written += _write(
            bundle / "agent.toml", _agent_toml(school.school_id, broker_url, password,
                                               bundle_ca_path), secret=True)  # fmt: skip
        summary.files_written += _write_bytes(bundle / "ca.pem", ca)

    for gone in sorted(set(entries) - set(new_entries)):
        summary.revoked.append(gone)
        shutil.rmtree(out / "schools" / gone, ignore_errors=True)
    text = "".join(f"{user}:{hashed}\n" for user, hashed in sorted(new_entries.items()))
    summary.files_written += _write(out / "mosquitto" / "passwords", text, secret=True)
    return summary


def _agent_toml(school_id: str, broker_url: str, password: str, ca_path: str) -> str:
    return (
        "# school-agent configuration issued by `school-collector provision`.\n"
        "# Install as /etc/school-agent/agent.toml (mode 0600) with ca.pem beside it.\n"
        f'school_id = "{school_id}"\n\n'
        "[mqtt]\n"
        f'url = "{broker_url}"\n'
        f'username = "{school_id}"\n'
        f'password = "{password}"\n'
        f'ca_file = "{ca_path}"\n'
    )


def _existing_password(path: Path) -> str | None:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    password = document.get("mqtt", {}).get("password")
    return password if isinstance(password, str) else None


def _read_password_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _write(path: Path, text: str, *, secret: bool) -> int:
    return _write_bytes(path, text.encode(), mode=0o600 if secret else 0o644)


def _write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> int:
    """Write only when the content changes (so a second run touches nothing); 1 if written."""
    if path.exists() and path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)  # noqa: PTH101 - the umask must not widen it
    temporary.replace(path)
    return 1
