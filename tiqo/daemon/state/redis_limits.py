"""Per-user rate limits on Redis: token buckets (rpm, tpm) and daily request counts, one Lua script each, so the
check and the count are one atomic step across every daemon. Both fail closed (a 503 naming the fix)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tiqo.policy.ratelimit import Admission, RateLimits

if TYPE_CHECKING:
    from tiqo.daemon.state.redis_shared import Arg, RedisState

BUCKET_TTL_S = 120  # a bucket untouched for a minute is full again: absent is the same
DAY_TTL_S = 2 * 86400

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


class RedisLimiter:
    """Per-user token buckets (rpm, tpm) and daily request counts, one script each. Fails closed."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._buckets = state.client.register_script(BUCKETS)
        self._day = state.client.register_script(DAY)

    def _bucket(self, user: str) -> str:
        return f"{self.state.prefix}:rl:{{{user}}}"

    def admit(self, user: str, limits: RateLimits, prompt_tokens: int, now: float) -> Admission:
        if not (limits.rpm or limits.tpm):
            return Admission(True)
        args: list[Arg] = [now, limits.rpm or 0, limits.tpm or 0, prompt_tokens, "admit", BUCKET_TTL_S]
        with self.state.closed("rate limits"):
            out = self._buckets(keys=[self._bucket(user)], args=args)
        if int(out[0]) == 1:
            return Admission(True)
        wait, kind = float(out[1]), str(out[2])
        what = f"{limits.rpm} requests per minute" if kind == "rpm" else f"{limits.tpm} tokens per minute"
        return Admission(False, math.ceil(wait * 10) / 10, f"user {user} is over {what}")

    def charge_tokens(self, user: str, limits: RateLimits, tokens: int, now: float) -> None:
        if not limits.tpm or tokens <= 0:
            return
        with self.state.closed("rate limits"):
            self._buckets(keys=[self._bucket(user)], args=[now, 0, limits.tpm, tokens, "charge", BUCKET_TTL_S])

    def count_request(self, user: str, day: str, limit: int | None) -> int | None:
        key = f"{self.state.prefix}:rl:{{{user}}}:{day}"
        with self.state.closed("daily request counts"):
            n = int(self._day(keys=[key], args=[limit if limit is not None else 2**62, DAY_TTL_S]))
        return None if n < 0 else n
