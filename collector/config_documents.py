"""``school-collector config``: the ministry's signed settings for schools, and who has them.

    school-collector config keygen --out /secure/config-key          # once; keep it offline
    school-collector config sign --key /secure/config-key/config-key.pem \\
        --scope region --target Almaty settings.toml --out almaty.json
    school-collector config publish almaty.json                      # retained on the broker
    school-collector config status                                   # which school has which

A document (agent/remote_config.py) is signed with the ministry's Ed25519
private key, which never needs to be on the server: only the public key goes
to the schools, in their bundles. It is published retained on
``<root>/config/<scope>[/<target>]`` with QoS 1, where the ACL lets each
school read its own, its region's and the one for all. The broker and the
collector only carry it: they cannot make one the agents accept.
"""

from __future__ import annotations

import os
import threading
import time
import tomllib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from agent.broker import BrokerSettings, new_client
from agent.config_file import ConfigError, load_settings
from agent.remote_config import REMOTE_KEYS, Document, Scope, Signed, sign, topic_for
from agent.settings import AgentSettings

# The broker account that may publish documents (school-collector provision issues it).
# Not a collector's: the broker binds a session to its account, and a publisher using a
# collector's would end that collector's connection and, with a clean start, its queue.
from collector.provision import CONFIG_PUBLISHER as PUBLISHER

PRIVATE_KEY = "config-key.pem"
PUBLIC_KEY = "config-key.pub"


class ConfigDocumentError(Exception):
    """What went wrong, naming the file or setting, and what to do."""


def keygen(out: Path) -> tuple[Path, Path]:
    """A new ministry key pair in ``out``: the private key (0600) and the public one."""
    private, public = out / PRIVATE_KEY, out / PUBLIC_KEY
    if private.exists():
        raise ConfigDocumentError(
            f"{private} exists: every school trusts the key it holds; remove it by hand "
            "only to replace the key, and give every school the new config-key.pub"
        )
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigDocumentError(f"{path}: not a readable PEM private key ({exc}); see "
                                  "`school-collector config keygen`") from exc  # fmt: skip
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigDocumentError(f"{path}: not an Ed25519 key (school-collector config keygen)")
    return key


def make_document(
    settings_file: Path, *, scope: Scope, target: str | None, version: int | None, note: str
) -> Document:
    """The document for ``settings_file`` (TOML, agent settings), checked before signing."""
    try:
        settings: dict[str, Any] = tomllib.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigDocumentError(f"{settings_file}: not readable TOML ({exc})") from exc
    if (scope is Scope.ALL) != (target is None):
        raise ConfigDocumentError(
            "--target names the region or school; give it for --scope region or school, not for all"
        )
    if forbidden := sorted(set(settings) - REMOTE_KEYS):
        raise ConfigDocumentError(
            f"{settings_file} sets {', '.join(forbidden)}; a remote document may set only "
            f"{', '.join(sorted(REMOTE_KEYS))} (agents would refuse it)"
        )
    _check_agent_settings(settings, settings_file)
    return Document(
        version=version if version is not None else int(time.time()),
        scope=scope,
        target=target,
        issued_at=datetime.now(UTC),
        note=note,
        settings=settings,
    )


def _check_agent_settings(settings: dict[str, Any], settings_file: Path) -> None:
    """The settings must be valid agent settings on their own, as agents will check."""
    try:
        load_settings(AgentSettings, None, layers=(settings,), school_id="KZ-CHECK")
    except ConfigError as exc:
        raise ConfigDocumentError(f"{settings_file}: {exc}") from exc


def sign_file(document: Document, key_file: Path) -> bytes:
    return sign(document, load_private_key(key_file))


def publish(signed: bytes, settings: BrokerSettings, topic_root: str, timeout_s: float = 30) -> str:
    """Publish a signed document retained with QoS 1 on its topic; return the topic."""
    try:
        document = Document.model_validate_json(Signed.model_validate_json(signed).document)
    except ValueError as exc:
        raise ConfigDocumentError(f"not a signed document ({exc}): use config sign") from exc
    topic = topic_for(topic_root, document.scope, document.target)
    user = settings.address().username
    if user is not None and user != PUBLISHER:
        raise ConfigDocumentError(
            f"mqtt.username is {user!r}: publish with the {PUBLISHER!r} account that "
            f"`school-collector provision` wrote (--config <issued>/collector/{PUBLISHER}.toml)"
            ", never a collector's (its session would be taken over)"
        )
    client, address = new_client(f"config-{uuid.uuid4().hex[:8]}", settings)
    done = threading.Event()
    client.on_publish = lambda *_: done.set()
    try:
        client.connect(address.host, address.port)
    except OSError as exc:
        raise ConfigDocumentError(f"cannot reach the broker {address} (mqtt.url): {exc}") from exc
    client.loop_start()
    try:
        client.publish(topic, signed, qos=1, retain=True)
        if not done.wait(timeout_s):
            raise ConfigDocumentError(
                f"the broker {address} did not acknowledge within {timeout_s:g} s: do this "
                f"account's credentials (mqtt.username) allow writing {topic}?"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return topic
