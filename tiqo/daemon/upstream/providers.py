"""External providers as configured: endpoints, their protocol kinds (plugins), key pools with secrets, breakers.

Config: ``[providers.NAME]`` in config.toml (kind, base_url or endpoints (replicas.py), key_strategy, max_class,
trusted, timeouts, headers).
Secrets: ``keys.toml`` (mode 0600) as ``[PROVIDER.KEYNAME]`` with ``secret`` and limits. Key health and usage live in
SQLite (``Store``) so they survive restarts. Secrets never leave this module except into an upstream request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tiqo.core.durations import parse_duration
from tiqo.core.errors import Conflict, NotFound
from tiqo.core.settings import Settings, read_toml, write_config_value
from tiqo.daemon.state.shared import Breakers, KeyStates
from tiqo.daemon.state.store import Store
from tiqo.daemon.upstream.client import Timeouts
from tiqo.daemon.upstream.provider_entries import (
    check_name,
    check_private,
    key_entry,
    key_tables,
    keyless,
    provider_entry,
    redact,
)
from tiqo.daemon.upstream.provider_views import key_rows, provider_rows, replica_rows
from tiqo.daemon.upstream.provider_watch import Alert, ProviderWatch, Publish, WatchedBreaker
from tiqo.daemon.upstream.replicas import Replicas, ReplicaSet, parse_endpoints
from tiqo.policy.breaker import CircuitBreaker
from tiqo.policy.keys import KeyPool, KeyState
from tiqo.sdk.provider import ProviderConfig, ProviderKind

log = logging.getLogger("tiqo.providers")
FLUSH_S = 1.0  # key usage counters reach SQLite within this long (health changes at once)


@dataclass
class Provider:
    config: ProviderConfig
    kind: ProviderKind | None  # None: no loaded plugin speaks config.kind
    pool: KeyPool
    breaker: CircuitBreaker
    timeouts: Timeouts
    max_class: str
    # Inside this machine's trust boundary (another tiqo on the same private network, run by the same people):
    # it may receive restricted data, as a local model may. Only ever set by the user, never inferred.
    trusted: bool = False
    replicas: ReplicaSet | None = None  # several endpoints (replicas.py); None: the one base_url

    @property
    def name(self) -> str:
        return self.config.name


class ProviderHub:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        kinds: dict[str, ProviderKind],
        clock: Callable[[], float] = time.time,
        *,
        key_states: KeyStates | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self.settings, self.store, self.kinds, self.clock = settings, store, kinds, clock
        # Shared with other daemons (state.backend = redis); None: this daemon's pools and breakers are the truth
        self.key_states, self.breakers = key_states, breakers
        self.providers: dict[str, Provider] = {}
        self.replicas = Replicas(settings["routing.replica_probe_interval"], clock)
        self._secrets: dict[str, dict[str, str]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self.version = 0  # bumped when providers change (routing caches what it derives from them)
        self._flush_handle: asyncio.TimerHandle | None = None
        self.told = ProviderWatch(clock)  # breaker and key changes as events and alerts
        self.reload()

    def watch(self, publish: Publish, alert: Alert) -> None:
        """Publish breaker and key state changes as events, and raise alerts when a breaker opens or a key is
        disabled, exhausted or tripped (the daemon wires its event bus and budget alerts here)."""
        self.told.publish, self.told.alert = publish, alert

    # ------------------------------------------------------------ loading
    def reload(self) -> None:
        keys = read_toml(self.settings.paths.keys_file)
        check_private(self.settings.paths.keys_file)
        self.providers.clear()
        self.replicas.sets.clear()
        self._secrets.clear()
        self.errors: dict[str, str] = {}
        for name, entry in self.settings.toml.get("providers", {}).items():
            if not isinstance(entry, dict):
                continue
            try:
                self._build(str(name), entry, keys.get(name, {}))
            except (TypeError, ValueError) as exc:  # a hand-edited mistake must not stop the daemon
                log.warning("provider %s ignored: %s", name, exc)
                self.errors[str(name)] = str(exc)

    def _build(self, name: str, entry: dict[str, Any], keys: dict[str, Any]) -> None:
        self.version += 1
        kind_name = str(entry.get("kind", "openai"))
        kind = self.kinds.get(kind_name)
        endpoints = parse_endpoints(entry)
        trusted = entry.get("trusted", False)
        if not isinstance(trusted, bool):
            raise ValueError("trusted must be true or false")
        base_url = str(entry.get("base_url") or (kind.default_base_url if kind else "")).rstrip("/")
        replica_set = None
        if endpoints is not None:
            # Kinds build on this base URL as on any other; the upstream client resolves it to an endpoint
            base_url = Replicas.base_url(name)
            replica_set = self._replica_set(name, endpoints)
        options = {k: v for k, v in entry.items() if k not in ("kind", "base_url", "endpoints", "trusted")}
        config = ProviderConfig(name=name, kind=kind_name, base_url=base_url, options=options)
        limits, secrets = key_tables(name, keys)
        states = {n: KeyState.from_dict(s) for n, s in self.store.load_key_states(name).items() if n in limits}
        s = self.settings
        pool = KeyPool(
            provider=name,
            limits=limits,
            states=states,
            strategy=str(entry.get("key_strategy", s["routing.key_strategy"])),
            breaker_threshold=s["routing.breaker_failures"],
            breaker_cooldown_s=s["routing.breaker_cooldown"],
        )
        for key_name, enabled in ((k, v.get("enabled", True)) for k, v in keys.items() if isinstance(v, dict)):
            if key_name in limits and not enabled and pool.states[key_name].enabled:
                pool.set_enabled(key_name, False, "by user")
        timeouts = Timeouts(
            connect=parse_duration(entry.get("timeout_connect", s["routing.timeout_connect"])),
            first_byte=parse_duration(entry.get("timeout_first_byte", s["routing.timeout_first_byte"])),
            idle=parse_duration(entry.get("timeout_idle", s["routing.timeout_idle"])),
        )
        breaker = WatchedBreaker(s["routing.breaker_failures"], s["routing.breaker_cooldown"])
        breaker.on_change = lambda state, b: self.told.breaker_changed(name, state, b)
        breaker.shared, breaker.provider = self.breakers, name
        now = self.clock()
        for key_name in limits:
            self.told.key_status[(name, key_name)] = pool.describe(key_name, now)["status"]
        max_class = "restricted" if trusted else str(entry.get("max_class", "confidential"))
        if max_class == "restricted" and not trusted:
            raise ValueError('max_class "restricted" needs trusted = true (the provider is inside your trust boundary)')
        self.providers[name] = Provider(config, kind, pool, breaker, timeouts, max_class, trusted, replica_set)
        self._secrets[name] = secrets

    def _replica_set(self, name: str, endpoints: list[Any]) -> ReplicaSet:
        """The provider's replica set; rebuilt on a config change, but an unchanged one keeps its live state
        (outstanding requests, health) across a rebuild (adding a key rebuilds the provider)."""
        old = self.replicas.sets.get(name)
        if old is not None and [(e.url, e.weight) for e in old.endpoints] == [(e.url, e.weight) for e in endpoints]:
            return old
        replica_set = ReplicaSet(name, endpoints, self.settings["routing.replica_failures"])
        self.replicas.sets[name] = replica_set
        return replica_set

    def replica_takes_failure(self, name: str, kind: str) -> bool:
        """A failure that the replica layer has already counted against one endpoint, while another is healthy:
        the provider as a whole is fine, so its circuit breaker must not hear of it."""
        from tiqo.daemon.upstream.client import REPLICA_FAILURES

        provider = self.providers.get(name)
        return (
            provider is not None
            and provider.replicas is not None
            and kind in REPLICA_FAILURES
            and provider.replicas.healthy() > 0
        )

    # ------------------------------------------------------------ lookups
    def get(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:
            raise NotFound(
                f"no provider named {name!r}",
                hint="`tiqo providers list` shows them; `tiqo providers add NAME --kind KIND --base-url URL` adds one",
            )
        return provider

    def for_call(self, provider: Provider, data_class: str) -> Provider:
        """The provider as one call sees it: a trusted one (another tiqo inside the trust boundary) is told the
        request's data class (``X-Tiqo-Class``), so the remote daemon applies the same rules (restricted data stays
        on its machine too)."""
        if not provider.trusted:
            return provider
        headers = {**(provider.config.options.get("headers") or {}), "X-Tiqo-Class": data_class}
        config = dataclasses.replace(provider.config, options={**provider.config.options, "headers": headers})
        return dataclasses.replace(provider, config=config)

    def secret(self, provider: str, key_name: str | None) -> str | None:
        return None if key_name is None else self._secrets.get(provider, {}).get(key_name)

    def has_keys(self, provider: str) -> bool:
        return bool(self._secrets.get(provider))

    def unavailable(self, name: str, est_tokens: int = 0) -> str | None:
        """Why ``name`` cannot take a request now, or None."""
        provider = self.providers.get(name)
        if provider is None:
            return f"provider {name} is not configured"
        if provider.kind is None:
            return f"no plugin speaks kind {provider.config.kind!r} (see `tiqo plugins`)"
        now = self.clock()
        if self.breakers is not None:
            self.breakers.sync(name, provider.breaker)
        if not provider.breaker.allows(now):
            return provider.breaker.describe(now)
        if not self.has_keys(name):
            if keyless(provider.config.options):
                return None  # a local vLLM, another tiqo, or a fixed auth header
            return f'no keys (add one with `tiqo keys add {name}`, or set auth = "none" for a keyless server)'
        if self.key_states is not None:
            self.key_states.refresh(provider.pool, now)
        verdicts = provider.pool.verdicts(now, est_tokens)
        if any(v.usable for v in verdicts):
            return None
        return "no usable key: " + "; ".join(f"{v.name} {v.reason}" for v in verdicts)

    def take_probe(self, name: str) -> str | None:
        """With shared breakers, a half-open breaker lets one call through across every daemon: None when this
        call may go (it is the probe, or the breaker is closed), else why not."""
        provider = self.providers[name]
        now = self.clock()
        if self.breakers is None or provider.breaker.state(now) != "half_open":
            return None
        if self.breakers.take_probe(name, provider.breaker, now):
            return None
        return "circuit half-open (another daemon is probing)"

    def pick_key(self, name: str, est_tokens: int, exclude: set[str]) -> str | None:
        """The next key by the pool's strategy; with shared key states, counted atomically against its limits
        across every daemon (a key another daemon used up is skipped). None: no usable key is left."""
        pool = self.providers[name].pool
        now = self.clock()
        if self.key_states is None:
            return pool.pick(now, est_tokens, exclude)
        skip = set(exclude)
        while (key := pool.pick(now, est_tokens, skip)) is not None:
            if self.key_states.claim(pool, key, now, est_tokens) is None:
                return key
            skip.add(key)
        return None

    def key_used(self, name: str, key_name: str, tokens: int) -> None:
        """Tokens a call on a key consumed, for the shared tpm/tpd counts (the pool counted its own)."""
        if self.key_states is not None:
            self.key_states.count_tokens(self.providers[name].pool, key_name, tokens, self.clock())

    def retry_after(self, name: str) -> float | None:
        provider = self.providers.get(name)
        if provider is None:
            return None
        now = self.clock()
        times = [t for t in (provider.breaker.open_until(), provider.pool.next_available(now)) if t is not None]
        return max(0.0, min(times) - now) if times else None

    def persist(self, provider: str, key_name: str, *, now: bool = False) -> None:
        """Save a key's state. Usage counters are written at most every FLUSH_S (batched, off the hot path);
        health changes (``now=True``: cooldowns, exhaustion, disabling) at once."""
        self._dirty.add((provider, key_name))
        if now and self.key_states is not None and provider in self.providers:
            self.key_states.save_health(self.providers[provider].pool, key_name)
        p = self.providers.get(provider)
        if p is not None and (now or self.told.key_status.get((provider, key_name), "healthy") != "healthy"):
            self.told.key_changed(provider, key_name, p.pool)
        if now:
            self.flush()
            return
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        dirty, self._dirty = self._dirty, set()
        for provider, key_name in dirty:
            p = self.providers.get(provider)
            if p is not None and key_name in p.pool.states:
                self.store.save_key_state(provider, key_name, p.pool.states[key_name].to_dict())

    def describe(self) -> list[dict[str, Any]]:
        return provider_rows(self)

    def describe_replicas(self, names: list[str]) -> dict[str, dict[str, Any]]:
        return replica_rows(self, names)

    def describe_keys(self, provider: str | None = None) -> list[dict[str, Any]]:
        return key_rows(self, provider)

    def redacted_keys(self, provider: str) -> dict[str, str]:
        """Key name → its secret redacted (for listings: a secret leaves this module only into a request)."""
        return {name: redact(secret) for name, secret in self._secrets.get(provider, {}).items()}

    def key_count(self, provider: str) -> int:
        return len(self._secrets.get(provider, {}))

    def max_classes(self) -> dict[str, str]:
        """The most sensitive data class each provider may receive (routing filters candidates by it)."""
        return {p.name: p.max_class for p in self.providers.values()}

    # ------------------------------------------------------------ changes
    def add_provider(self, name: str, kind: str, base_url: str | None, options: dict[str, Any]) -> Provider:
        check_name(name, "provider")
        if name in self.providers or name in self.errors:
            raise Conflict(f"provider {name!r} already exists", hint=f"remove it first with `tiqo providers rm {name}`")
        entry = provider_entry(kind, base_url, options, self.kinds)
        write_config_value(self.settings.paths.config_file, ["providers", name], entry)
        self.settings.toml.setdefault("providers", {})[name] = entry
        self._build(name, entry, read_toml(self.settings.paths.keys_file).get(name, {}))
        log.info("provider %s added (%s, %s)", name, kind, entry["base_url"])
        return self.providers[name]

    def remove_provider(self, name: str, models_using: list[str]) -> None:
        if name not in self.errors:
            self.get(name)
        if models_using:
            raise Conflict(
                f"provider {name} is used by models {', '.join(models_using)}",
                hint="remove those models first with `tiqo models rm NAME`",
            )
        write_config_value(self.settings.paths.config_file, ["providers", name], None)
        write_config_value(self.settings.paths.keys_file, [name], None)
        self.settings.toml.get("providers", {}).pop(name, None)
        self.store.delete_key_state(name)
        self.providers.pop(name, None)
        self.errors.pop(name, None)
        self.version += 1
        self._secrets.pop(name, None)

    def add_key(self, provider: str, key_name: str | None, secret: str, limits: dict[str, Any]) -> str:
        p = self.get(provider)
        key_name, entry = key_entry(provider, key_name, secret, limits, self._secrets.get(provider, {}))
        write_config_value(self.settings.paths.keys_file, [provider, key_name], entry)
        self.flush()  # the pool is rebuilt from SQLite below
        self.store.delete_key_state(provider, key_name)
        keys = read_toml(self.settings.paths.keys_file)
        self._build(provider, self.settings.toml["providers"][provider], keys.get(provider, {}))
        log.info("key %s added to %s (%s)", key_name, provider, p.config.kind)
        return key_name

    def remove_key(self, provider: str, key_name: str) -> None:
        self._key(provider, key_name)
        write_config_value(self.settings.paths.keys_file, [provider, key_name], None)
        self.flush()
        self.store.delete_key_state(provider, key_name)
        keys = read_toml(self.settings.paths.keys_file)
        self._build(provider, self.settings.toml["providers"][provider], keys.get(provider, {}))

    def set_key_enabled(self, provider: str, key_name: str, enabled: bool) -> None:
        p = self._key(provider, key_name)
        write_config_value(self.settings.paths.keys_file, [provider, key_name, "enabled"], None if enabled else False)
        p.pool.set_enabled(key_name, enabled, "by user")
        self.persist(provider, key_name, now=True)

    def _key(self, provider: str, key_name: str) -> Provider:
        p = self.get(provider)
        if key_name not in p.pool.limits:
            names = ", ".join(p.pool.limits) or "none"
            raise NotFound(
                f"{provider} has no key named {key_name!r} (keys: {names})", hint="`tiqo keys list` shows them"
            )
        return p
