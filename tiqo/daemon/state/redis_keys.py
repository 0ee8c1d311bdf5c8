"""Key usage and health on Redis: one hash per key, claimed atomically against its rpm/tpm/rpd/tpd in the key's own
quota day (one Lua script). Claims fail closed; a failed refresh keeps this daemon's view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from tiqo.daemon.state.redis_counters import for_each
from tiqo.policy.keys import KeyPool, period_start

if TYPE_CHECKING:
    from tiqo.daemon.state.redis_shared import Arg, RedisState

KEY_TTL_S = 8 * 86400  # beyond a quota day and the longest cooldown; SQLite keeps each daemon's own copy

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

_INT_FIELDS = ("requests_day", "tokens_day", "requests_minute", "tokens_minute", "requests_total", "tokens_total")
_FLOAT_FIELDS = ("cooldown_until", "exhausted_until", "period_start", "minute_start")


def _minute(now: float) -> float:
    return now - now % 60


class RedisKeyStates:
    """Key usage (atomic claims against rpm/tpm/rpd/tpd in the key's own quota day) and health (cooldowns,
    exhaustion, disabling) in one hash per key. Claims fail closed; a failed refresh keeps the local view."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._script = state.client.register_script(KEY)

    def _key(self, provider: str, name: str) -> str:
        return f"{self.state.prefix}:key:{{{provider}/{name}}}"

    def refresh(self, pool: KeyPool, now: float) -> None:
        names = list(pool.limits)
        if not names:
            return
        try:
            rows = for_each(self.state.client, [self._key(pool.provider, n) for n in names], lambda p, k: p.hgetall(k))
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
            return str(self._script(keys=[self._key(pool.provider, name)], args=args))

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
