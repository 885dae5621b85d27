"""The ministry's settings for all schools, a region or one school, signed with its key.

A document names its scope (``all``, ``region`` or ``school``), its target (the
region's or the school's name; none for ``all``), a version that only grows,
and the settings it sets. The ministry signs the document's exact bytes with
its Ed25519 key (``school-collector config sign``); the agent holds the public
key, from the school's bundle, and accepts a document only when:

- the signature verifies against that key (so neither the broker nor the
  collector, nor anyone who can publish on the topic, can change a setting);
- it is for this school: scope ``all``, its region, or its school id;
- its version is newer than the one applied for that scope (no replay of an
  older document);
- it sets only what a ministry may set remotely (:data:`REMOTE_KEYS`: speed
  servers and thresholds, the schedule, the data budget, devices, the
  connectivity checks), never the school's identity, credentials or broker;
- the settings it gives, merged with the rest, are valid.

Anything else is refused with a counted reason (:class:`Refusal`) and changes
nothing. What was applied is kept in the state directory, so a restart keeps
the configuration and the versions (against replays) without the broker.

Precedence, highest first: the environment, the local config file, then the
school's document, the region's, the one for all schools, then the defaults.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from agent.contract import ConfigState

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 64 * 1024
REMOTE_CONFIG_FILE = "remote_config.json"  # in the state directory
# Top-level agent settings a signed document may set.
REMOTE_KEYS = frozenset({
    "speedtest", "schedule", "devices", "device_report_interval_s", "connectivity",
    "status_interval_s", "heartbeat",
})  # fmt: skip


class Scope(StrEnum):
    ALL = "all"
    REGION = "region"
    SCHOOL = "school"


# Most specific first: a school's document overrides its region's, which overrides all's.
PRECEDENCE = (Scope.SCHOOL, Scope.REGION, Scope.ALL)


class RefusalReason(StrEnum):
    MALFORMED = "malformed"  # not a signed document at all
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    WRONG_TARGET = "wrong_target"
    REPLAYED = "replayed"  # a version not newer than the one applied
    FORBIDDEN_SETTING = "forbidden_setting"
    INVALID_SETTINGS = "invalid_settings"


class Document(BaseModel):
    """What the ministry says, before signing."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Annotated[int, Field(ge=1, le=2**53)]
    scope: Scope
    target: Annotated[str, Field(max_length=128)] | None = None
    issued_at: AwareDatetime
    note: Annotated[str, Field(max_length=500)] = ""
    settings: dict[str, Any]


class Signed(BaseModel):
    """What is published: the document's exact text and its signature (base64)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    document: Annotated[str, Field(max_length=MAX_DOCUMENT_BYTES)]
    signature: Annotated[str, Field(max_length=200)] | None = None


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


def sign(document: Document, key: Ed25519PrivateKey) -> bytes:
    """The message to publish for ``document``, signed with the ministry's ``key``."""
    text = document.model_dump_json()
    signature = base64.b64encode(key.sign(text.encode())).decode()
    return Signed(document=text, signature=signature).model_dump_json().encode()


def topic_for(root: str, scope: Scope, target: str | None) -> str:
    """Where a document is published (retained): ``<root>/config/<scope>[/<target>]``."""
    return f"{root}/config/{scope.value}" + (f"/{target}" if scope is not Scope.ALL else "")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The ministry's public key (PEM); ValueError naming the file when it is not one."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")  # noqa: TRY004 - a file's content
    return key


def verify(
    payload: bytes, key: Ed25519PublicKey, *, school_id: str, region: str | None
) -> Document | Refusal:
    """The document in ``payload`` if it is signed by ``key`` and meant for this school."""
    try:
        signed = Signed.model_validate_json(payload)
    except ValidationError as exc:
        return Refusal(RefusalReason.MALFORMED, _first_error(exc))
    if not signed.signature:
        return Refusal(RefusalReason.UNSIGNED, "the document carries no signature")
    try:
        key.verify(base64.b64decode(signed.signature, validate=True), signed.document.encode())
    except (InvalidSignature, binascii.Error, ValueError):
        return Refusal(RefusalReason.BAD_SIGNATURE, "it does not verify with the ministry's key")
    try:
        document = Document.model_validate_json(signed.document)
    except ValidationError as exc:  # signed, yet not a document: the ministry's tool is wrong
        return Refusal(RefusalReason.MALFORMED, _first_error(exc))
    return _for_this_school(document, school_id, region) or _settable(document) or document


def _for_this_school(document: Document, school_id: str, region: str | None) -> Refusal | None:
    if document.scope is Scope.ALL:
        if document.target is None:
            return None
        return Refusal(RefusalReason.WRONG_TARGET, "a document for all schools names a target")
    wanted = region if document.scope is Scope.REGION else school_id
    if wanted is not None and document.target == wanted:
        return None
    return Refusal(
        RefusalReason.WRONG_TARGET,
        f"for {document.scope.value} {document.target!r}; this is school {school_id!r} "
        f"in region {region!r}",
    )


def _settable(document: Document) -> Refusal | None:
    forbidden = sorted(set(document.settings) - REMOTE_KEYS)
    if not forbidden:
        return None
    return Refusal(
        RefusalReason.FORBIDDEN_SETTING,
        f"sets {', '.join(forbidden)}, which only the school's own config may set",
    )


@dataclass
class Applied:
    """The documents in force, by scope, and what was refused (kept on disk)."""

    documents: dict[Scope, Document] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    last_refusal: str | None = None

    def layers(self) -> list[dict[str, Any]]:
        """The settings of each document in force, most specific first."""
        return [self.documents[s].settings for s in PRECEDENCE if s in self.documents]

    def versions(self) -> dict[str, int]:
        return {scope.value: doc.version for scope, doc in sorted(self.documents.items())}

    def label(self) -> str:
        """The configuration in force, as the status and the doctor show it."""
        return ",".join(f"{s}:{v}" for s, v in self.versions().items()) or "local"


class RemoteConfig:
    """Takes each document published for this school; applies what passes, counts the rest.

    ``check(layers)`` validates the settings the layers would give (raises
    ValueError with a reason), and ``apply(layers)`` puts them in force; both
    are the agent's. The file ``path`` keeps what is in force across restarts.
    """

    def __init__(
        self,
        path: Path,
        key: Ed25519PublicKey,
        *,
        school_id: str,
        region: str | None,
        check: Callable[[list[dict[str, Any]]], None],
        apply: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self._path = path
        self._key = key
        self._school_id = school_id
        self._region = region
        self._check = check
        self._apply = apply
        self._lock = threading.Lock()
        self.applied = load(path)

    def state(self) -> ConfigState:
        """What the status says of it."""
        with self._lock:
            applied = self.applied
            return ConfigState(
                version=applied.label(),
                refused_total=sum(applied.refused.values()),
                refused_by_reason=dict(sorted(applied.refused.items())),
                last_refusal=(applied.last_refusal or "")[:200] or None,
            )

    def offer(self, payload: bytes) -> Document | Refusal | None:
        """Verify a published document and apply it, or refuse it and count why; None for an
        empty message (a retained document cleared: what is in force stays)."""
        if not payload:
            return None
        with self._lock:
            found = verify(payload, self._key, school_id=self._school_id, region=self._region)
            if isinstance(found, Document):
                found = self._take(found)
            if isinstance(found, Refusal):
                reason = found.reason.value
                self.applied.refused[reason] = self.applied.refused.get(reason, 0) + 1
                self.applied.last_refusal = str(found)
                log.warning("remote configuration refused: %s", found)
            self._save()
            return found

    def _take(self, document: Document) -> Document | Refusal:
        current = self.applied.documents.get(document.scope)
        if current is not None and document.version <= current.version:
            if document.version == current.version and document == current:
                return document  # the retained copy again, after a reconnect: nothing new
            return Refusal(
                RefusalReason.REPLAYED,
                f"version {document.version} of {document.scope.value}; "
                f"{current.version} is in force",
            )
        documents = dict(self.applied.documents) | {document.scope: document}
        layers = [documents[s].settings for s in PRECEDENCE if s in documents]
        try:
            self._check(layers)
        except ValueError as exc:
            return Refusal(RefusalReason.INVALID_SETTINGS, str(exc)[:500])
        self.applied.documents = documents
        self._apply(layers)
        log.info(
            "remote configuration applied: %s version %d (in force: %s)",
            document.scope.value, document.version, self.applied.label(),
        )  # fmt: skip
        return document

    def _save(self) -> None:
        data = {
            "documents": {
                s.value: d.model_dump(mode="json") for s, d in self.applied.documents.items()
            },
            "refused": self.applied.refused,
            "last_refusal": self.applied.last_refusal,
        }
        temporary = self._path.with_name(self._path.name + ".tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(self._path)


def load(path: Path) -> Applied:
    """What ``path`` says is in force; nothing when it is missing or damaged (logged)."""
    try:
        data: Mapping[str, Any] = json.loads(path.read_text())
        return Applied(
            documents={
                Scope(s): Document.model_validate(d, strict=False)
                for s, d in data.get("documents", {}).items()
            },
            refused={str(k): int(v) for k, v in data.get("refused", {}).items()},
            last_refusal=data.get("last_refusal"),
        )
    except FileNotFoundError:
        return Applied()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s is damaged (%s); starting with the local configuration only", path, exc)
        return Applied()


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "the message"
    return f"{where}: {error['msg']}"[:300]
