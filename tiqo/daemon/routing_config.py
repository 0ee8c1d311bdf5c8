"""Routing configuration as the daemon reads it: [aliases], [routes], [tiers] and [classification] from config.toml,
each falling back to the shipped default policy (data/routing.toml)."""

from __future__ import annotations

import functools
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

from tiqo.core.settings import Settings
from tiqo.daemon.providers import ProviderHub
from tiqo.policy.classify import DATA_CLASSES
from tiqo.policy.ratelimit import RateLimits
from tiqo.policy.routing import RoutingConfig, Tier, UserProfile

log = logging.getLogger("tiqo.gateway")

DEFAULT_ROUTING = Path(__file__).parent / "data" / "routing.toml"


@functools.cache
def default_routing() -> dict[str, Any]:
    with DEFAULT_ROUTING.open("rb") as fh:
        return tomllib.load(fh)


def routing_config(settings: Settings, hub: ProviderHub) -> RoutingConfig:
    """[aliases], [routes] and [tiers] from config.toml; each one missing there comes from the default policy."""
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
        provider_max_class={p.name: p.max_class for p in hub.providers.values()},
        users=users_config(settings),
    )


def users_config(settings: Settings) -> dict[str, UserProfile]:
    """``[users.NAME]`` tables: tier, data_class (the user's default), rpm, tpm, rpd."""
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


def _limits(where: str, entry: dict[str, Any]) -> RateLimits:
    values: dict[str, int | None] = {}
    for key in ("rpm", "tpm", "rpd"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            log.warning("%s.%s = %r ignored: use a positive whole number", where, key, value)
            value = None
        values[key] = value
    return RateLimits(**values)


def restricted_patterns(settings: Settings) -> list[re.Pattern[str]]:
    """``[classification] restricted_patterns`` from config.toml, else the shipped ones (secrets, private keys,
    card numbers, e-mail addresses)."""
    table = settings.toml.get("classification", {})
    patterns = table.get("restricted_patterns", default_routing().get("classification", {}).get("restricted_patterns"))
    out = []
    for p in patterns:
        try:
            out.append(re.compile(str(p)))
        except re.error as exc:
            log.warning("classification pattern %r ignored: %s", p, exc)
    return out
