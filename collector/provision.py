"""``school-collector provision``: the registry as broker accounts, ACL and agent bundles.

For every school in the registry: a strong generated password, two entries in
Mosquitto's password file (PBKDF2-SHA512, the ``$7$`` format of
``mosquitto_passwd``): the agent's account (username = school id) and the
doctor's (``<school id>.doctor``, same password, no rights), and a bundle to
install on the school's PC: ``schools/<id>/agent.toml`` (school id, broker URL,
credentials, CA path) and ``schools/<id>/ca.pem``. Every collector gets an
account of its own (``collector/<name>.toml``). ``mosquitto/acl`` gives each
school's account write access to its own subtree only, and each collector read
access to every school and write access to the dead-letter topic.

The broker binds client ids to accounts (``use_username_as_clientid`` in
deploy/mosquitto/secure.conf): an account's session is its username's, so no
account can take over another's session, whatever client id it asks for.

Secrets are written with mode 0600 and never printed. Running it again changes
nothing (no file is rewritten); ``--rotate ID`` issues a new password for one
school; a school that left the registry loses its accounts and its bundle.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.broker import BrokerAddress
from agent.contract import DEFAULT_CAPABILITIES_TOPIC, TopicKind, receipts_topic, topic_for
from collector.registry import SchoolRegistry

ITERATIONS = 101  # mosquitto_passwd's default for $7$
COLLECTOR_USER = "school-collector"
# The account that publishes the ministry's signed configuration (school-collector config).
CONFIG_PUBLISHER = "config-publisher"
BUNDLE_CONFIG_KEY = "/etc/school-agent/config-key.pub"
DOCTOR_SUFFIX = ".doctor"  # a school id never contains a dot, so no school can be named so
DEFAULT_TOPIC_ROOT = "schools"
DEFAULT_DEAD_LETTER_TOPIC = "school-monitor/dead-letter"
_COLLECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def doctor_username(school_id: str) -> str:
    """The account ``school-agent doctor`` uses: it may connect, and do nothing else."""
    return school_id + DOCTOR_SUFFIX


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


@dataclass(frozen=True)
class Topics:
    """The topics the ACL is written for: the collectors' ``mqtt.topic_root``, dead letters
    and the announcement of receipts (``mqtt.capabilities_topic``)."""

    root: str = DEFAULT_TOPIC_ROOT
    dead_letter: str = DEFAULT_DEAD_LETTER_TOPIC
    capabilities: str = DEFAULT_CAPABILITIES_TOPIC


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


class _Accounts:
    """The password file being rebuilt: an existing hash is kept while its password verifies."""

    def __init__(self, existing: dict[str, str]) -> None:
        self.existing = existing
        self.entries: dict[str, str] = {}

    def keep_or_issue(self, users: tuple[str, ...], password: str | None, *, fresh: bool) -> str:
        """The password of ``users`` (one secret for them all); a new one when it must change."""
        if fresh or password is None:
            password = secrets.token_urlsafe(32)
        for user in users:
            current = self.existing.get(user, "")
            keep = not fresh and verify_password(password, current)
            self.entries[user] = current if keep else hash_password(password)
        return password

    def verifies(self, user: str, password: str | None) -> bool:
        return password is not None and verify_password(password, self.existing.get(user, ""))


def provision(
    registry: SchoolRegistry,
    out: Path,
    *,
    broker_url: str,
    ca_file: Path,
    bundle_ca_path: str = "/etc/school-agent/ca.pem",
    rotate: frozenset[str] = frozenset(),
    collectors: tuple[str, ...] = (COLLECTOR_USER,),
    topics: Topics = Topics(),
    config_key: Path | None = None,
) -> Summary:
    """``config_key``: the ministry's public key for remote configuration, copied into
    every bundle (``config-key.pub``) and named in each agent.toml."""
    BrokerAddress.parse(broker_url)  # raises ValueError on a bad URL
    school_ids = {school.school_id for school in registry}
    unknown = rotate - school_ids
    if unknown:
        raise ValueError(f"cannot rotate {', '.join(sorted(unknown))}: not in the registry")
    _check_collectors(collectors, school_ids)
    summary = Summary()
    accounts = _Accounts(_read_password_file(out / "mosquitto" / "passwords"))
    ca = ca_file.read_bytes()
    public_key = config_key.read_bytes() if config_key is not None else b""

    for name in (*collectors, CONFIG_PUBLISHER):
        path = out / "collector" / f"{name}.toml"
        old = _existing_password(path)
        if old is None and name == COLLECTOR_USER:  # issued before collectors had their names
            old = _existing_password(out / "collector" / "credentials.toml")
        fresh = not accounts.verifies(name, old)
        password = accounts.keep_or_issue((name,), old, fresh=fresh)
        summary.files_written += _write(path, _collector_toml(name, password), secret=True)

    for school in registry:
        bundle = out / "schools" / school.school_id
        old = _existing_password(bundle / "agent.toml")
        users = (school.school_id, doctor_username(school.school_id))
        # The doctor's entry follows the school's password (an older issue had none).
        fresh = school.school_id in rotate or not accounts.verifies(school.school_id, old)
        if not fresh:
            summary.unchanged.append(school.school_id)
        else:
            (summary.rotated if old is not None else summary.created).append(school.school_id)
        password = accounts.keep_or_issue(users, old, fresh=fresh)
        toml = _agent_toml(school.school_id, broker_url, password, bundle_ca_path, school.region,
                           key_path=BUNDLE_CONFIG_KEY if config_key else None)  # fmt: skip
        summary.files_written += _write(bundle / "agent.toml", toml, secret=True)
        summary.files_written += _write_bytes(bundle / "ca.pem", ca)
        if config_key is not None:
            summary.files_written += _write_bytes(bundle / "config-key.pub", public_key)

    for gone in sorted(set(accounts.existing) - set(accounts.entries)):
        if gone.endswith(DOCTOR_SUFFIX):
            continue  # goes with its school
        summary.revoked.append(gone)
        credentials = out / "collector" / f"{gone}.toml"
        if credentials.exists():  # a collector no longer named with --collector
            credentials.unlink()
        else:
            shutil.rmtree(out / "schools" / gone, ignore_errors=True)
    (out / "collector" / "credentials.toml").unlink(missing_ok=True)
    text = "".join(f"{user}:{hashed}\n" for user, hashed in sorted(accounts.entries.items()))
    summary.files_written += _write(out / "mosquitto" / "passwords", text, secret=True)
    regions = {school.school_id: school.region for school in registry}
    acl = _acl(collectors, sorted(school_ids), topics, regions)
    summary.files_written += _write(out / "mosquitto" / "acl", acl, secret=False)
    return summary


def _check_collectors(collectors: tuple[str, ...], school_ids: set[str]) -> None:
    if not collectors:
        raise ValueError("at least one collector account is needed (--collector NAME)")
    for name in collectors:
        if not _COLLECTOR_NAME.match(name) or name.endswith(DOCTOR_SUFFIX):
            raise ValueError(
                f"collector name {name!r}: use letters, digits, '.', '-', '_' (up to 64), "
                f"not ending in {DOCTOR_SUFFIX}"
            )
        if name in school_ids:
            raise ValueError(
                f"collector name {name!r} is also a school id in the registry; the broker "
                "binds each account to one session, so choose another --collector name"
            )
    if len(set(collectors)) != len(collectors):
        raise ValueError("a --collector name is given twice")
    if CONFIG_PUBLISHER in set(collectors) | school_ids:
        raise ValueError(
            f"{CONFIG_PUBLISHER!r} is the account that publishes remote configuration; "
            "no collector or school may have that name"
        )


def _acl(
    collectors: tuple[str, ...], school_ids: list[str], topics: Topics, regions: dict[str, str]
) -> str:
    lines = [
        "# Mosquitto ACL written by `school-collector provision`; do not edit, run it again.",
        "# Collectors read each kind of every school's messages, write every school's",
        "# receipts, read and write dead letters, and announce receipts. Each school's",
        "# account writes only its own kinds of message and reads only its own receipts",
        "# and the announcement, and the ministry's configuration for all schools, its",
        "# region and itself. Only config-publisher writes configuration (documents are",
        "# signed: the agents verify them). Doctor accounts (<id>.doctor) have no entry:",
        "# they may connect and do nothing else.",
        "",
        f"user {CONFIG_PUBLISHER}",
        f"topic write {topics.root}/config/#",
        "",
    ]
    kinds = [kind.value for kind in TopicKind]
    for name in collectors:
        lines += [f"user {name}"]
        lines += [f"topic read {topics.root}/+/{kind}" for kind in kinds]
        lines += [
            f"topic write {receipts_topic(topics.root, '+')}",
            f"topic readwrite {topics.dead_letter}",
            f"topic readwrite {topics.capabilities}",
            "",
        ]
    for school_id in school_ids:
        lines += [f"user {school_id}"]
        lines += [f"topic write {topic_for(topics.root, school_id, kind)}" for kind in TopicKind]
        lines += [
            f"topic read {receipts_topic(topics.root, school_id)}",
            f"topic read {topics.capabilities}",
            f"topic read {topics.root}/config/all",
            f"topic read {topics.root}/config/region/{regions[school_id]}",
            f"topic read {topics.root}/config/school/{school_id}",
            "",
        ]
    return "\n".join(lines)


def _collector_toml(name: str, password: str) -> str:
    return (
        "# school-collector credentials for the broker, from `school-collector provision`:\n"
        f"# school-collector run --config {name}.toml (or copy the [mqtt] keys).\n"
        "# The broker binds the session to the username, so client_id must equal it.\n"
        f'[mqtt]\nusername = "{name}"\npassword = "{password}"\nclient_id = "{name}"\n'
    )


def _agent_toml(
    school_id: str,
    broker_url: str,
    password: str,
    ca_path: str,
    region: str,
    *,
    key_path: str | None,
) -> str:
    remote = f'\n[remote_config]\npublic_key = "{key_path}"\n' if key_path else ""
    return (
        "# school-agent configuration issued by `school-collector provision`.\n"
        "# Install with `school-agent-setup --bundle DIR` (or as /etc/school-agent/agent.toml,\n"
        "# mode 0640, with ca.pem beside it).\n"
        f'school_id = "{school_id}"\n'
        f"region = {json.dumps(region)}\n\n"
        "[mqtt]\n"
        f'url = "{broker_url}"\n'
        f'username = "{school_id}"\n'
        f'password = "{password}"\n'
        f'doctor_username = "{doctor_username(school_id)}"\n'
        f'ca_file = "{ca_path}"\n' + remote
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
