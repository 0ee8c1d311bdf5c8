"""Provider circuit breakers on Redis, seen by every daemon: one hash each, opened by one Lua script, with exactly one
half-open probe among the daemons. Redis down: this daemon's own breaker decides (a warning event says so)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from tiqo.policy.breaker import CircuitBreaker

if TYPE_CHECKING:
    from tiqo.daemon.state.redis_shared import Arg, RedisState

BREAKER_TTL_S = 86400

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


class RedisBreakers:
    """Provider breakers in one hash each; the half-open probe is a lock (SET NX with expiry), so exactly one daemon
    probes and a probe whose daemon died frees itself. Redis down: the local breaker decides (a warning says so)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._fail = state.client.register_script(FAIL)

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
            failures, opened = self._fail(keys=self._keys(provider), args=args)
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
