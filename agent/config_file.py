"""Load pydantic-settings classes from the environment and a TOML file.

Precedence, highest first: environment variables, the TOML file, the layers of
remote configuration given (agent/remote_config.py; most specific first),
defaults.
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
_LAYERS: ContextVar[tuple[dict[str, Any], ...]] = ContextVar("layers", default=())


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
        layers = _LAYERS.get()
        if layers:
            sources.append(LayersSource(settings_cls, layers))
        return tuple(sources)


class LayersSource(PydanticBaseSettingsSource):
    """Settings from dictionaries, the first one's values winning (tables merged key by key)."""

    def __init__(self, settings_cls: type[BaseSettings], layers: tuple[dict[str, Any], ...]):
        super().__init__(settings_cls)
        self._layers = layers

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # noqa: ARG002
        return None, field_name, False  # (unused: __call__ gives every value at once)

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for layer in reversed(self._layers):
            merged = merged_tables(merged, layer)
        return merged


def merged_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values on top; tables (dicts) are merged, lists replaced."""
    found = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(found.get(key), dict):
            found[key] = merged_tables(found[key], value)
        else:
            found[key] = value
    return found


S = TypeVar("S", bound=FileSettings)


def load_settings(
    cls: type[S],
    config_file: Path | None = None,
    layers: tuple[dict[str, Any], ...] = (),
    **overrides: Any,
) -> S:
    """Build ``cls`` from the environment, ``config_file`` and below them ``layers``;
    raise :class:`ConfigError`."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist; check --config")
        try:
            tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
    token, layers_token = _CONFIG_FILE.set(config_file), _LAYERS.set(layers)
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, cls.env_prefix_for_help, config_file)) from None
    finally:
        _CONFIG_FILE.reset(token)
        _LAYERS.reset(layers_token)


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
