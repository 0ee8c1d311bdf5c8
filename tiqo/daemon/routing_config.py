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
from tiqo.policy.routing import RoutingConfig, Tier

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
            )
    return RoutingConfig(
        routes=routes,
        aliases=aliases,
        tiers=tiers,
        local_fallback=settings["llm.default_model"],
        provider_max_class={p.name: p.max_class for p in hub.providers.values()},
    )


def restricted_patterns(settings: Settings) -> list[re.Pattern[str]]:
    patterns = settings.toml.get("classification", {}).get("restricted_patterns", [])
    out = []
    for p in patterns:
        try:
            out.append(re.compile(str(p)))
        except re.error as exc:
            log.warning("classification pattern %r ignored: %s", p, exc)
    return out
