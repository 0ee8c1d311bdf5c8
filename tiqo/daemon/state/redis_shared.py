"""Every piece of shared state on one Redis server (``state.backend = redis``): rate limits, key usage and health,
provider breakers, the exact response cache and alert de-duplication, beside the budget counters.

Keys are ``PREFIX:…`` (``state.redis_prefix``) with a Redis Cluster hash tag ``{…}`` around what a script touches
together, and every key expires. Rate limits and key limits fail closed when Redis cannot be reached (a 503 naming
the fix: nothing is let through uncounted, so nothing is overspent or counted twice when it returns); breakers,
the cache and alerts fall back to this daemon's own state and publish a ``state`` warning event.

redis-py is imported only when this module is (through redis_counters).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError

from tiqo.core.errors import StateUnavailable
from tiqo.daemon.state.redis_counters import HINT, RedisCounters
from tiqo.daemon.state.shared import CacheStore, SharedState
from tiqo.policy.breaker import CircuitBreaker
from tiqo.policy.keys import KeyPool, period_start
from tiqo.policy.ratelimit import Admission, RateLimits

log = logging.getLogger("tiqo.state")
Arg = str | int | float
Warn = Callable[[str, str], Any]  # (piece, message): a warning event
BUCKET_TTL_S = 120  # a bucket untouched for a minute is full again: absent is the same
DAY_TTL_S = 2 * 86400
KEY_TTL_S = 8 * 86400  # beyond a quota day and the longest cooldown; SQLite keeps each daemon's own copy
BREAKER_TTL_S = 86400
ALERT_TTL_S = 40 * 86400  # beyond the longest alert period (a month) that the dedupe names
WARN_EVERY_S = 30.0

# KEYS[1] = the user's bucket hash. ARGV = now, rpm, tpm (0 = none), tokens, mode (admit | charge), ttl.
# admit: {1} when taken, else {0, seconds to wait (string), "rpm" | "tpm"}. charge: takes tokens from tpm.
BUCKETS = """
local now, mode = tonumber(ARGV[1]), ARGV[5]
local caps = {rpm = tonumber(ARGV[2]), tpm = tonumber(ARGV[3])}
local want = {rpm = 1, tpm = tonumber(ARGV[4])}
local level = {}
for _, kind in ipairs({'rpm', 'tpm'}) do
  local cap = caps[kind]
  if cap > 0 then
    local v = redis.call('HMGET', KEYS[1], kind .. ':cap', kind .. ':level', kind .. ':ts')
    local l, t = tonumber(v[2]), tonumber(v[3])
    if tonumber(v[1]) ~= cap or l == nil then
      l, t = cap, now
    end
    if now > t then
      l = math.min(cap, l + (now - t) * cap / 60)
      t = now
    end
    level[kind] = {l, t}
  end
end
if mode == 'admit' then
  local wait, what = 0, ''
  for kind, lt in pairs(level) do
    local cap = caps[kind]
    local need = math.min(want[kind], cap) - lt[1]
    if need > 1e-9 and need * 60 / cap > wait then
      wait, what = need * 60 / cap, kind
    end
  end
  if wait > 0 then
    return {0, tostring(wait), what}
  end
else
  level.rpm = nil
end
for kind, lt in pairs(level) do
  redis.call('HSET', KEYS[1], kind .. ':cap', caps[kind], kind .. ':level', tostring(lt[1] - want[kind]),
    kind .. ':ts', tostring(lt[2]))
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {1}
"""

# KEYS[1] = the user's count for one day. ARGV = limit, ttl. The count after this request, or -1 when full.
DAY = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  return -1
end
n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n
"""

# KEYS[1] = one key's hash. ARGV = now, quota day start, minute start, rpm, tpm, rpd, tpd (0 = none), est tokens,
# requests to add (1 = a claim: check, then count; 0 = add tokens only), tokens to add, ttl.
# '' when counted, else why the key is not usable.
KEY = """
local h, now = KEYS[1], tonumber(ARGV[1])
local v = redis.call('HMGET', h, 'enabled', 'disabled_reason', 'cooldown_until', 'cooldown_reason',
  'exhausted_until', 'period_start', 'requests_day', 'tokens_day', 'minute_start', 'requests_minute', 'tokens_minute')
local rd, td, rm, tm = tonumber(v[7]) or 0, tonumber(v[8]) or 0, tonumber(v[10]) or 0, tonumber(v[11]) or 0
if v[6] ~= ARGV[2] then rd, td = 0, 0 end
if v[9] ~= ARGV[3] then rm, tm = 0, 0 end
local rpm, tpm, rpd, tpd = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local est, add_r, add_t = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
if add_r > 0 then
  if v[1] == '0' then return 'disabled: ' .. (v[2] or '') end
  if (tonumber(v[5]) or 0) > now then return 'quota exhausted upstream' end
  if (tonumber(v[3]) or 0) > now then return 'cooling down (' .. (v[4] or '') .. ')' end
  if rpd > 0 and rd >= rpd then return 'daily requests used (' .. rd .. '/' .. rpd .. ')' end
  if tpd > 0 and td + est > tpd then return 'daily tokens used (' .. td .. '/' .. tpd .. ')' end
  if rpm > 0 and rm >= rpm then return 'rpm limit (' .. rm .. '/' .. rpm .. ')' end
  if tpm > 0 and tm > 0 and tm + est > tpm then return 'tpm limit (' .. tm .. '/' .. tpm .. ')' end
end
redis.call('HSET', h, 'period_start', ARGV[2], 'requests_day', rd + add_r, 'tokens_day', td + add_t,
  'minute_start', ARGV[3], 'requests_minute', rm + add_r, 'tokens_minute', tm + add_t)
redis.call('HINCRBY', h, 'requests_total', add_r)
redis.call('HINCRBY', h, 'tokens_total', add_t)
redis.call('EXPIRE', h, ARGV[11])
return ''
"""

# KEYS[1] = the breaker hash, KEYS[2] = its probe lock. ARGV = now, threshold, error, was probe (0/1), ttl.
# {consecutive failures, opened_at or ''}: opens at the threshold, re-opens when the probe failed.
FAIL = """
local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local opened = redis.call('HGET', KEYS[1], 'opened_at')
if ARGV[4] == '1' or (f >= tonumber(ARGV[2]) and not opened) then
  opened = ARGV[1]
  redis.call('HSET', KEYS[1], 'opened_at', opened)
  redis.call('DEL', KEYS[2])
end
redis.call('HSET', KEYS[1], 'last_error', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {f, opened or ''}
"""


def _minute(now: float) -> float:
    return now - now % 60


class RedisState:
    """The shared pieces on one client (the budget counters' connection)."""

    def __init__(self, counters: RedisCounters, warn: Warn | None = None) -> None:
        self.counters = counters
        self.client = counters.client
        self.prefix = counters.prefix
        self.url = counters.url
        self.warn = warn
        self._warned: dict[str, float] = {}
        self._buckets = self.client.register_script(BUCKETS)
        self._day = self.client.register_script(DAY)
        self._key = self.client.register_script(KEY)
        self._fail = self.client.register_script(FAIL)

    def pieces(self, local_cache: CacheStore) -> SharedState:
        return SharedState(
            limiter=RedisLimiter(self),
            days=RedisLimiter(self),
            keys=RedisKeyStates(self),
            breakers=RedisBreakers(self),
            cache=RedisCache(self, local_cache),
            alerts=RedisAlerts(self),
            shared=True,
        )

    @contextmanager
    def closed(self, what: str) -> Iterator[None]:
        """Fail closed: Redis errors become a 503 naming the fix."""
        try:
            yield
        except RedisError as exc:
            raise StateUnavailable(
                f"cannot reach the Redis server that holds the {what} ({self.url}): {exc}; refusing rather than "
                "letting the request through uncounted",
                hint=HINT,
                retry_after=5,
            ) from exc

    def degraded(self, piece: str, exc: Exception) -> None:
        """A piece that falls back to local state: log and publish a warning, at most every WARN_EVERY_S."""
        now = time.monotonic()
        if now - self._warned.get(piece, -math.inf) < WARN_EVERY_S:
            return
        self._warned[piece] = now
        message = f"Redis ({self.url}) unreachable: {piece} fall back to this daemon's own state ({exc}); {HINT}"
        log.warning("%s", message)
        if self.warn is not None:
            self.warn(piece, message)


class RedisLimiter:
    """Per-user token buckets (rpm, tpm) and daily request counts, one script each. Fails closed."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def _bucket(self, user: str) -> str:
        return f"{self.state.prefix}:rl:{{{user}}}"

    def admit(self, user: str, limits: RateLimits, prompt_tokens: int, now: float) -> Admission:
        if not (limits.rpm or limits.tpm):
            return Admission(True)
        args: list[Arg] = [now, limits.rpm or 0, limits.tpm or 0, prompt_tokens, "admit", BUCKET_TTL_S]
        with self.state.closed("rate limits"):
            out = self.state._buckets(keys=[self._bucket(user)], args=args)
        if int(out[0]) == 1:
            return Admission(True)
        wait, kind = float(out[1]), str(out[2])
        what = f"{limits.rpm} requests per minute" if kind == "rpm" else f"{limits.tpm} tokens per minute"
        return Admission(False, math.ceil(wait * 10) / 10, f"user {user} is over {what}")

    def charge_tokens(self, user: str, limits: RateLimits, tokens: int, now: float) -> None:
        if not limits.tpm or tokens <= 0:
            return
        with self.state.closed("rate limits"):
            self.state._buckets(keys=[self._bucket(user)], args=[now, 0, limits.tpm, tokens, "charge", BUCKET_TTL_S])

    def count_request(self, user: str, day: str, limit: int | None) -> int | None:
        key = f"{self.state.prefix}:rl:{{{user}}}:{day}"
        with self.state.closed("daily request counts"):
            n = int(self.state._day(keys=[key], args=[limit if limit is not None else 2**62, DAY_TTL_S]))
        return None if n < 0 else n


_INT_FIELDS = ("requests_day", "tokens_day", "requests_minute", "tokens_minute", "requests_total", "tokens_total")
_FLOAT_FIELDS = ("cooldown_until", "exhausted_until", "period_start", "minute_start")


class RedisKeyStates:
    """Key usage (atomic claims against rpm/tpm/rpd/tpd in the key's own quota day) and health (cooldowns,
    exhaustion, disabling) in one hash per key. Claims fail closed; a failed refresh keeps the local view."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def _key(self, provider: str, name: str) -> str:
        return f"{self.state.prefix}:key:{{{provider}/{name}}}"

    def refresh(self, pool: KeyPool, now: float) -> None:
        names = list(pool.limits)
        if not names:
            return
        try:
            pipe = self.state.client.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(self._key(pool.provider, name))
            rows = pipe.execute()
        except RedisError as exc:
            self.state.degraded("key states (reads)", exc)
            return
        for name, row in zip(names, rows, strict=True):
            if not row:
                continue
            st = pool.states[name]
            for f in _INT_FIELDS:
                if f in row:
                    setattr(st, f, int(row[f]))
            for f in _FLOAT_FIELDS:
                if f in row:
                    setattr(st, f, float(row[f]))
            if "enabled" in row:
                st.enabled = row["enabled"] == "1"
                st.disabled_reason = row.get("disabled_reason", "")
            st.cooldown_reason = row.get("cooldown_reason", st.cooldown_reason)

    def _run(self, pool: KeyPool, name: str, now: float, est: int, add_r: int, add_t: int) -> str:
        lim = pool.limits[name]
        start = period_start(now, lim.reset, lim.tz)
        args: list[Arg] = [now, repr(start), repr(_minute(now)), lim.rpm or 0, lim.tpm or 0, lim.rpd or 0, lim.tpd or 0]
        args += [est, add_r, add_t, KEY_TTL_S]
        with self.state.closed("key limits"):
            return str(self.state._key(keys=[self._key(pool.provider, name)], args=args))

    def claim(self, pool: KeyPool, name: str, now: float, est_tokens: int) -> str | None:
        return self._run(pool, name, now, est_tokens, 1, 0) or None

    def count_tokens(self, pool: KeyPool, name: str, tokens: int, now: float) -> None:
        if tokens > 0:
            self._run(pool, name, now, 0, 0, tokens)

    def save_health(self, pool: KeyPool, name: str) -> None:
        st = pool.states[name]
        key = self._key(pool.provider, name)
        fields = {
            "enabled": "1" if st.enabled else "0",
            "disabled_reason": st.disabled_reason,
            "cooldown_until": repr(st.cooldown_until),
            "cooldown_reason": st.cooldown_reason,
            "exhausted_until": repr(st.exhausted_until),
        }
        with self.state.closed("key states"):
            pipe = self.state.client.pipeline(transaction=True)
            pipe.hset(key, items=[x for pair in fields.items() for x in pair])
            pipe.expire(key, KEY_TTL_S)
            pipe.execute()


class RedisBreakers:
    """Provider breakers in one hash each; the half-open probe is a lock (SET NX with expiry), so exactly one daemon
    probes and a probe whose daemon died frees itself. Redis down: the local breaker decides (a warning says so)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def _keys(self, provider: str) -> list[str]:
        base = f"{self.state.prefix}:br:{{{provider}}}"
        return [base, base + ":probe"]

    def sync(self, provider: str, breaker: CircuitBreaker) -> None:
        try:
            row = self.state.client.hmget(self._keys(provider)[0], "failures", "opened_at", "last_error")
        except RedisError as exc:
            self.state.degraded("breakers", exc)
            return
        breaker.failures = int(row[0] or 0)
        breaker.opened_at = float(row[1]) if row[1] else None
        breaker.last_error = str(row[2] or "")

    def take_probe(self, provider: str, breaker: CircuitBreaker, now: float) -> bool:
        ttl = max(10, math.ceil(breaker.cooldown_s))
        try:
            return bool(self.state.client.set(self._keys(provider)[1], str(now), nx=True, ex=ttl))
        except RedisError as exc:
            self.state.degraded("breakers", exc)
            return True

    def failure(self, provider: str, breaker: CircuitBreaker, now: float, error: str, was_probe: bool) -> bool:
        args: list[Arg] = [repr(now), breaker.threshold, error, "1" if was_probe else "0", BREAKER_TTL_S]
        try:
            failures, opened = self.state._fail(keys=self._keys(provider), args=args)
        except RedisError as exc:
            self.state.degraded("breakers", exc)
            return False
        breaker.failures, breaker.last_error = int(failures), error
        breaker.opened_at = float(opened) if opened else None
        breaker.probing = False
        return True

    def success(self, provider: str) -> None:
        try:
            self.state.client.delete(*self._keys(provider))
        except RedisError as exc:
            self.state.degraded("breakers", exc)

    def release_probe(self, provider: str) -> None:
        try:
            self.state.client.delete(self._keys(provider)[1])
        except RedisError as exc:
            self.state.degraded("breakers", exc)


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

    def cache_put(
        self,
        key: str,
        scope: str,
        model: str,
        response: dict[str, Any],
        ttl: float,
        now: float,
        sem_group: str | None = None,
        vector: bytes | None = None,
    ) -> None:
        if sem_group is not None:  # the semantic index reads question vectors from the local store
            self.local.cache_put(key, scope, model, response, ttl, now, sem_group, vector)
        try:
            text = json.dumps(response, separators=(",", ":"))
            self.state.client.set(self._entry(key), text, px=max(1, int(ttl * 1000)))
        except RedisError as exc:
            self.state.degraded("the response cache", exc)
            self.local.cache_put(key, scope, model, response, ttl, now, sem_group, vector)

    def cache_vectors(self, sem_group: str, now: float) -> list[tuple[str, bytes, float]]:
        return self.local.cache_vectors(sem_group, now)

    def _bump(self, name: str) -> None:
        pipe = self.state.client.pipeline(transaction=False)
        pipe.hincrby(self.stats_key, name, 1)
        pipe.expire(self.stats_key, ALERT_TTL_S)
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
        hits, semantic, misses = (int(stats.get(k, 0)) for k in ("hits", "semantic_hits", "misses"))
        served = hits + semantic
        return {
            **local,
            "entries": len(names),
            "hits": hits,
            "semantic_hits": semantic,
            "misses": misses,
            "hit_rate": round(served / (served + misses), 4) if served + misses else None,
            "shared": True,
        }

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


class RedisAlerts:
    """One alert per dedupe across every daemon: the first SET NX (with expiry) raises it. Redis down: every daemon
    raises its own (a duplicate alert beats a lost one)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def first(self, dedupe: str) -> bool:
        try:
            key = f"{self.state.prefix}:alert:{dedupe}"
            return bool(self.state.client.set(key, str(time.time()), nx=True, ex=ALERT_TTL_S))
        except RedisError as exc:
            self.state.degraded("alerts", exc)
            return True
