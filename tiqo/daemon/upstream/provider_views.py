"""The providers as `tiqo providers list`, `tiqo keys list` and `route explain` show them: rows read from the hub's
live state (pools, breakers, replicas, config errors), secrets redacted. Nothing here changes the hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiqo.daemon.upstream.providers import ProviderHub


def provider_rows(hub: ProviderHub) -> list[dict[str, Any]]:
    """One row per provider, those that failed to load included (with the config error and where to fix it)."""
    now = hub.clock()
    out = []
    for p in hub.providers.values():
        base_url = p.config.base_url
        if p.replicas is not None:
            base_url = ", ".join(e.url for e in p.replicas.endpoints)
        out.append(
            {
                "name": p.name,
                "kind": p.config.kind,
                "base_url": base_url,
                "loaded": p.kind is not None,
                "keys": hub.key_count(p.name),
                "key_strategy": p.pool.strategy,
                "max_class": p.max_class,
                "trusted": p.trusted,
                "endpoints": p.replicas.describe() if p.replicas is not None else None,
                "circuit": p.breaker.state(now),
                "status": hub.unavailable(p.name) or "available",
                "timeouts": {
                    "connect": p.timeouts.connect,
                    "first_byte": p.timeouts.first_byte,
                    "idle": p.timeouts.idle,
                },
            }
        )
    for name, error in hub.errors.items():
        entry = hub.settings.toml.get("providers", {}).get(name, {})
        out.append(
            {
                "name": name,
                "kind": str(entry.get("kind", "?")),
                "base_url": str(entry.get("base_url", "")),
                "loaded": False,
                "keys": 0,
                "status": f"config error: {error} (fix [providers.{name}] in config.toml)",
            }
        )
    return out


def replica_rows(hub: ProviderHub, names: list[str]) -> dict[str, dict[str, Any]]:
    """For ``route explain``: the endpoints of the providers among ``names`` that have several, and the one the
    next request would go to (least outstanding per weight among the healthy ones)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        p = hub.providers.get(name)
        if p is None or p.replicas is None:
            continue
        nxt = p.replicas.choose()
        out[name] = {"endpoints": p.replicas.describe(), "next": nxt.url if nxt is not None else None}
    return out


def key_rows(hub: ProviderHub, provider: str | None = None) -> list[dict[str, Any]]:
    """One row per key (of ``provider``, or of all), as every daemon sharing the key states sees it."""
    now = hub.clock()
    rows = []
    for p in hub.providers.values():
        if provider is not None and p.name != provider:
            continue
        if hub.key_states is not None:
            hub.key_states.refresh(p.pool, now)
        redacted = hub.redacted_keys(p.name)
        for key_name in p.pool.limits:
            row = p.pool.describe(key_name, now)
            row["key"] = redacted[key_name]
            state = p.pool.states[key_name]
            cooled = state.cooldown_reason if state.cooldown_until else ""
            row["last_error"] = state.last_error or state.disabled_reason or cooled or None
            rows.append(row)
    return rows
