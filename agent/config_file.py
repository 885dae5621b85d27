"""Load pydantic-settings classes from the environment and a TOML file.

Precedence, highest first: environment variables, the TOML file, defaults.
Validation errors become one :class:`ConfigError` whose message names every
bad setting, both as a file key and as an environment variable.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("config_file", default=None)


class ConfigError(Exception):
    """The configuration is unusable; the message says which setting and what to do."""


class FileSettings(BaseSettings):
    """Base for settings read from ``env_prefix``-ed variables and a TOML file."""

    env_prefix_for_help: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - pydantic-settings signature
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _CONFIG_FILE.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


S = TypeVar("S", bound=FileSettings)


def load_settings(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from the environment and ``config_file``; raise :class:`ConfigError`."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist; check --config")
        try:
            tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
    token = _CONFIG_FILE.set(config_file)
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, cls.env_prefix_for_help, config_file)) from None
    finally:
        _CONFIG_FILE.reset(token)


def describe_errors(exc: ValidationError, env_prefix: str, config_file: Path | None) -> str:
    source = f" in {config_file}" if config_file else ""
    lines = [f"invalid configuration{source}:"]
    for error in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in error["loc"])
        env = env_prefix + "__".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (a typo?)"
        lines.append(f"  {key}: {message}  [file key {key!r} or environment {env}]")
    return "\n".join(lines)


def require(settings: object, *keys: str, env_prefix: str) -> None:
    """Raise :class:`ConfigError` listing every dotted ``key`` of ``settings`` that is unset."""
    missing = []
    for key in keys:
        value: Any = settings
        for part in key.split("."):
            value = getattr(value, part)
        if value is None:
            env = env_prefix + key.replace(".", "__").upper()
            missing.append(f"  {key}: required  [file key {key!r} or environment {env}]")
    if missing:
        raise ConfigError("missing required settings:\n" + "\n".join(missing))


def origin(key: str, env_prefix: str, config_file: Path | None) -> str:
    """Where the dotted setting ``key`` got its value, for a message that names it."""
    env = env_prefix + key.replace(".", "__").upper()
    if env in os.environ:
        return f"from the environment, {env}"
    if config_file is not None:
        try:
            value: Any = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            value = {}
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return f"from {config_file}"
    read = f"not set in {config_file}" if config_file else "no config file read"
    return f"the default ({read}, no {env} in the environment)"
