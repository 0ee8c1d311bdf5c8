"""Routing configuration as the daemon reads it: [aliases], [routes], [tiers] and [classification] from config.toml,
each falling back to the shipped default policy (data/routing.toml)."""

from __future__ import annotations

import functools
import logging
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tiqo.core.errors import ConfigError
from tiqo.core.settings import Settings
from tiqo.policy.classify import DATA_CLASSES
from tiqo.policy.ratelimit import RateLimits
from tiqo.policy.routing import RoutingConfig, Tier, UserProfile
from tiqo.policy.textscan import SYNTAX_URL, PatternError, ScanPattern, compile_pattern

log = logging.getLogger("tiqo.gateway")

DEFAULT_ROUTING = Path(__file__).parent / "data" / "routing.toml"


@functools.cache
def default_routing() -> dict[str, Any]:
    with DEFAULT_ROUTING.open("rb") as fh:
        return tomllib.load(fh)


def routing_config(settings: Settings, provider_max_class: Mapping[str, str]) -> RoutingConfig:
    """[aliases], [routes] and [tiers] from config.toml; each one missing there comes from the default policy.
    ``provider_max_class``: the most sensitive data class each configured provider may receive."""
    defaults = default_routing()
    toml = {k: settings.toml.get(k, defaults.get(k, {})) for k in ("aliases", "routes", "tiers")}
    aliases = {"default": [settings["llm.default_model"]]}  # config may redefine it
    for name, value in toml.get("aliases", {}).items():
        aliases[str(name)] = [value] if isinstance(value, str) else [str(v) for v in value]
    routes: dict[str, dict[str, list[str]]] = {}
    for task, table in toml.get("routes", {}).items():
        if isinstance(table, dict):
            routes[str(task)] = {str(c): ([v] if isinstance(v, str) else [str(x) for x in v]) for c, v in table.items()}
    tiers = {}
    for name, entry in toml.get("tiers", {}).items():
        if isinstance(entry, dict):
            providers = entry.get("providers")
            tiers[str(name)] = Tier(
                str(name),
                None if providers is None else tuple(str(p) for p in providers),
                str(entry.get("description", "")),
                premium=bool(entry.get("premium", True)),
                limits=_limits(f"tiers.{name}", entry),
            )
    return RoutingConfig(
        routes=routes,
        aliases=aliases,
        tiers=tiers,
        local_fallback=settings["llm.default_model"],
        provider_max_class=dict(provider_max_class),
        users=users_config(settings),
    )


def users_config(settings: Settings) -> dict[str, UserProfile]:
    """``[users.NAME]`` tables: tier, data_class (the least their requests get), rpm, tpm, rpd."""
    out = {}
    for name, entry in settings.toml.get("users", {}).items():
        if not isinstance(entry, dict):
            log.warning("users.%s ignored: not a table", name)
            continue
        data_class = entry.get("data_class")
        if data_class is not None and data_class not in DATA_CLASSES:
            log.warning("users.%s.data_class %r ignored: use one of %s", name, data_class, ", ".join(DATA_CLASSES))
            data_class = None
        tier = entry.get("tier")
        out[str(name)] = UserProfile(
            str(name), None if tier is None else str(tier), data_class, _limits(f"users.{name}", entry)
        )
    return out


def tcp_tier(user_tier: str | None, listen_tier: str, tiers: Iterable[str]) -> tuple[str, str]:
    """The tier of a TCP caller, and where it comes from (``user`` or ``daemon.listen_tier``).

    Fail-closed: a token user whose ``[users.NAME]`` names no tier gets ``daemon.listen_tier`` (``free`` by default:
    local models only, with limits), never ``routing.tier`` (``default``: every provider, no limits), which is for
    the Unix socket's callers. ``daemon.listen_tier = "default"`` opens it up, explicitly. A listen tier that is not
    configured refuses the request rather than falling back to anything."""
    if user_tier:
        return user_tier, "user"
    if listen_tier == "default" or listen_tier in tiers:
        return listen_tier, "daemon.listen_tier"
    raise ConfigError(
        f"daemon.listen_tier {listen_tier!r} is not a configured tier ({', '.join(tiers) or 'none'}), and this "
        "user has none of their own",
        hint="give the user a tier with `tiqo users token NAME --tier TIER` (or [users.NAME] tier in config.toml), "
        "or set one that exists: `tiqo config set daemon.listen_tier free`",
        param="daemon.listen_tier",
    )


def _limits(where: str, entry: dict[str, Any]) -> RateLimits:
    values: dict[str, int | None] = {}
    for key in ("rpm", "tpm", "rpd"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            log.warning("%s.%s = %r ignored: use a positive whole number", where, key, value)
            value = None
        values[key] = value
    return RateLimits(**values)


def restricted_patterns(settings: Settings) -> list[ScanPattern]:
    """``[classification] restricted_patterns`` from config.toml, else the shipped ones (secrets, private keys,
    card numbers, e-mail addresses), compiled for the linear-time engine (RE2).

    A pattern that cannot run there is a ``ConfigError`` naming it: dropping it would let the data it was meant to
    keep here leave the machine, and running it on a backtracking engine would let one request freeze the daemon."""
    table = settings.toml.get("classification", {})
    patterns = table.get("restricted_patterns", default_routing().get("classification", {}).get("restricted_patterns"))
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(
            f"[classification] restricted_patterns must be a list of strings, not {patterns!r}",
            hint=f"fix or remove it in {settings.paths.config_file}",
            param="classification.restricted_patterns",
        )
    try:
        return [compile_pattern(p) for p in patterns]
    except PatternError as exc:
        raise ConfigError(
            f"[classification] restricted_patterns: {exc}",
            hint=f"rewrite it in RE2 syntax (no look-around or back-references; \\z, not \\Z, for the end; see "
            f"{SYNTAX_URL}) or remove it from {settings.paths.config_file}",
            param="classification.restricted_patterns",
        ) from None
