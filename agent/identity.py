"""Who this agent is: a stable agent id kept in the state directory, a boot id per start."""

from __future__ import annotations

import uuid
from pathlib import Path

from agent.config_file import ConfigError
from agent.contract import is_valid_id

AGENT_ID_FILE = "agent-id"


def ensure_state_dir(state_dir: Path) -> Path:
    """Create the state directory (0700) or say how to fix it."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = state_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"state directory {state_dir} is not writable ({exc.strerror}); "
            "set state_dir (SCHOOL_AGENT_STATE_DIR) to a directory this user can write"
        ) from exc
    return state_dir


def load_agent_id(state_dir: Path) -> str:
    """The id generated on first start and kept in ``state_dir/agent-id``.

    A generated id, not a hardware serial: cloned SD cards and generic board
    UUIDs made many schools look like one in earlier tools. Deleting the file
    gives the machine a new identity.
    """
    path = state_dir / AGENT_ID_FILE
    if path.exists():
        agent_id = path.read_text(encoding="ascii").strip()
        if not is_valid_id(agent_id):
            raise ConfigError(f"{path} holds an invalid agent id; delete it to make a new one")
        return agent_id
    agent_id = uuid.uuid4().hex
    tmp = path.with_suffix(".tmp")
    tmp.write_text(agent_id + "\n", encoding="ascii")
    tmp.replace(path)
    return agent_id


def new_boot_id() -> str:
    return uuid.uuid4().hex
