"""The exact response cache on Redis, shared by every daemon: entries as strings with the entry's TTL as their
expiry, hit and miss counts in one hash. Semantic entries (question vectors) stay in this daemon's store. Redis
down: the local SQLite cache serves (a warning event says so)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from tiqo.daemon.state.shared import CacheEntry, CacheStore, hit_counts

if TYPE_CHECKING:
    from tiqo.daemon.state.redis_shared import RedisState

STATS_TTL_S = 40 * 86400  # the counts live as long as the alerts that may quote them


class RedisCache:
    """Exact cache entries as strings with the entry's TTL as Redis expiry; hit and miss counts in one hash.
    Semantic entries (question vectors) stay in the local store. Redis down: the local SQLite cache serves."""

    def __init__(self, state: RedisState, local: CacheStore) -> None:
        self.state, self.local = state, local
        self.stats_key = f"{state.prefix}:cache-stats"

    def _entry(self, key: str) -> str:
        return f"{self.state.prefix}:cache:{key}"

    def cache_get(self, key: str, now: float, counter: str = "hits") -> dict[str, Any] | None:
        try:
            raw = self.state.client.get(self._entry(key))
            if raw is not None:
                self._bump(counter)
        except RedisError as exc:
            self.state.degraded("the response cache", exc)
            return self.local.cache_get(key, now, counter)
        if raw is None:
            return self.local.cache_get(key, now, counter) if counter != "hits" else None
        result: dict[str, Any] = json.loads(raw)
        return result

    def cache_put(self, entry: CacheEntry) -> None:
        if entry.sem_group is not None:  # the semantic index reads question vectors from the local store
            self.local.cache_put(entry)
        try:
            text = json.dumps(entry.response, separators=(",", ":"))
            self.state.client.set(self._entry(entry.key), text, px=max(1, int(entry.ttl * 1000)))
        except RedisError as exc:
            self.state.degraded("the response cache", exc)
            self.local.cache_put(entry)

    def cache_vectors(self, sem_group: str, now: float) -> list[tuple[str, bytes, float]]:
        return self.local.cache_vectors(sem_group, now)

    def _bump(self, name: str) -> None:
        pipe = self.state.client.pipeline(transaction=False)
        pipe.hincrby(self.stats_key, name, 1)
        pipe.expire(self.stats_key, STATS_TTL_S)
        pipe.execute()

    def cache_miss(self) -> None:
        try:
            self._bump("misses")
        except RedisError as exc:
            self.state.degraded("the response cache", exc)
            self.local.cache_miss()

    def cache_stats(self, now: float) -> dict[str, Any]:
        local = self.local.cache_stats(now)
        try:
            names = list(self.state.client.scan_iter(match=self._entry("*"), count=500))
            stats = self.state.client.hgetall(self.stats_key)
        except RedisError as exc:
            self.state.degraded("the response cache", exc)
            return local
        return {**local, "entries": len(names), **hit_counts(stats), "shared": True}

    def cache_clear(self, expired_only: bool = False, now: float | None = None) -> int:
        removed = self.local.cache_clear(expired_only, now)
        if expired_only:
            return removed  # Redis expires its own entries
        try:
            names = list(self.state.client.scan_iter(match=self._entry("*"), count=500))
            if names:
                removed += int(self.state.client.delete(*names))
            self.state.client.delete(self.stats_key)
        except RedisError as exc:
            self.state.degraded("the response cache", exc)
        return removed
