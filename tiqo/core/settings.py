"""Every setting in one table: key, type, default, environment variable and what it does.

Values come from (highest first) ``TIQO_*`` environment variables, ``config.toml``, the defaults here.
The same table renders ``tiqo config show`` and the docs.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tiqo.core.errors import ConfigError
from tiqo.core.paths import Paths
from tiqo.core.setting_kinds import Setting, boolean, integer
from tiqo.core.setting_table import SETTINGS

__all__ = [
    "BY_KEY",
    "SETTINGS",
    "Setting",
    "Settings",
    "markdown_table",
    "read_toml",
    "typed_for_toml",
    "validate",
    "write_config_value",
]


BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


def _lookup(table: Mapping[str, Any], dotted: str) -> Any:
    node: Any = table
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


class Settings:
    """Resolved settings plus the raw TOML (which also holds the ``[models.NAME]`` catalog)."""

    def __init__(self, paths: Paths, toml: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None):
        self.paths = paths
        self.toml: dict[str, Any] = dict(toml or {})
        self._env = dict(os.environ if env is None else env)
        self._values: dict[str, Any] = {}
        self._sources: dict[str, str] = {}
        for setting in SETTINGS:
            raw, source = self.raw(setting)
            try:
                self._values[setting.key] = setting.parse(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"setting {setting.key} = {raw!r} ({source}): {exc}",
                    hint=f"fix it with `tiqo config set {setting.key} VALUE` or unset {setting.env}",
                ) from None
            self._sources[setting.key] = source
        if boolean(self._env.get("TIQO_NO_AUTOSTART", "0")):
            self._values["daemon.autostart"] = False
            self._sources["daemon.autostart"] = "env TIQO_NO_AUTOSTART"

    def raw(self, setting: Setting) -> tuple[Any, str]:
        if setting.env in self._env:
            return self._env[setting.env], f"env {setting.env}"
        try:
            return _lookup(self.toml, setting.key), "config.toml"
        except KeyError:
            return setting.default, "default"

    @classmethod
    def load(cls, paths: Paths | None = None, env: Mapping[str, str] | None = None) -> Settings:
        paths = paths or Paths.from_env(dict(env) if env is not None else None)
        return cls(paths, read_toml(paths.config_file), env)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def source(self, key: str) -> str:
        return self._sources[key]

    @property
    def socket_path(self) -> Path:
        custom = self["daemon.socket"]
        return Path(custom).expanduser() if custom else self.paths.default_socket

    def model_entries(self) -> dict[str, dict[str, Any]]:
        """The ``[models.NAME]`` tables of config.toml."""
        models = self.toml.get("models", {})
        return {str(k): dict(v) for k, v in models.items() if isinstance(v, Mapping)}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint=f"fix or remove {path}") from None


def validate(key: str, value: str) -> Any:
    """Parse ``value`` for ``key`` the way the daemon will, or raise ``ConfigError``."""
    setting = BY_KEY.get(key)
    if setting is None:
        raise ConfigError(f"unknown setting {key!r}", hint="`tiqo config show` lists every setting")
    try:
        setting.parse(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return setting


def typed_for_toml(setting: Setting, value: str) -> Any:
    """The value as it should be written to TOML (booleans and integers unquoted)."""
    if setting.kind == "bool":
        return boolean(value)
    if setting.kind == "int":
        return integer(value)
    if setting.kind == "int|auto" and value.strip().lower() != "auto":
        return integer(value)
    if setting.kind == "float":
        return float(value)
    return value


def write_config_value(path: Path, parts: list[str], value: Any) -> None:
    """Set the key at ``parts`` in the TOML file at ``path`` (None removes it), keeping comments (tomlkit).

    Written mode 0600 from its first byte: keys.toml holds keys, and config.toml may hold a Redis password, a webhook
    URL or a provider's extra headers."""
    import tomlkit

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    node: Any = doc
    for part in parts[:-1]:
        if part not in node:
            node[part] = tomlkit.table()
        node = node[part]
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    _atomic_write(path, tomlkit.dumps(doc))


def _atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(text)
    os.replace(tmp, path)


def markdown_table() -> str:
    """The settings table as Markdown (the README embeds it; a test keeps the two in step)."""
    lines = ["| setting | environment | default | what it does |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        default = str(s.default).lower() if isinstance(s.default, bool) else str(s.default)
        lines.append(f"| `{s.key}` | `{s.env}` | `{default or '(empty)'}` | {s.doc} |")
    return "\n".join(lines)
