"""RedisLimiter: the gateway's limits in Redis, checked and charged by one atomic Lua script per request.

Key layout (`prefix` defaults to `gw:rl`): `gw:rl:<scope>:<name>` holds one key's TAT (theoretical arrival
time, epoch milliseconds, see `katas.api_gateway.ratelimit`), with a TTL of the time until its burst is
back, so an idle client costs nothing.

Why a script: every node reads and moves the same TATs, so the read-check-write must be atomic, and all
limits of one request (client on endpoint, client, global) must be charged together or not at all: a
request refused by the global limit must not use up the client's allowance. Why Redis' clock (`TIME` in
the script) and not the node's: the nodes' clocks differ by milliseconds, which at a few hundred requests
per second is several requests of error; one clock makes the limit exact across nodes (measured in
tests/integration/api_gateway/test_redis_limiter.py).

Errors reaching Redis become `LimiterUnavailableError`; whether to fail open is the caller's choice
(`katas.api_gateway.ratelimit.FailOpenLimiter`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.asyncio import Redis

from katas.api_gateway.adapters import REDIS_UNREACHABLE
from katas.api_gateway.ratelimit import (
    Decision,
    LimitedKey,
    LimiterUnavailableError,
    Verdict,
    decide,
)

DEFAULT_PREFIX = "gw:rl"

# KEYS: one per limit. ARGV: cost, then per key its interval and tolerance in ms.
# Returns JSON: {"now": ms, "v": [[allowed 0/1, new_tat, remaining, reset_ms, retry_ms], ...]}; TATs are
# written only when every key allows.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cost = tonumber(ARGV[1])
local verdicts, all = {}, true
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  local start = math.max(tat, now)
  local new_tat = start + cost * interval
  local ahead = new_tat - now
  if ahead <= tolerance + 1e-6 then
    verdicts[i] = {1, new_tat, math.floor((tolerance - ahead) / interval + 1e-9), ahead, 0}
  else
    verdicts[i] = {0, start, 0, start - now, ahead - tolerance}
    all = false
  end
end
if all then
  for i, key in ipairs(KEYS) do
    local ttl = math.ceil(verdicts[i][2] - now)
    redis.call('SET', key, string.format('%.3f', verdicts[i][2]), 'PX', math.max(ttl, 1))
  end
end
return cjson.encode({now = now, v = verdicts})
"""


class RedisLimiter:
    """Limits shared by every node through one Redis (primary; Sentinel-discovered in the stack)."""

    def __init__(self, redis: Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(_GCRA)

    def key(self, limited: LimitedKey) -> str:
        return f"{self.prefix}:{limited.scope}:{limited.name}"

    async def check(self, keys: Sequence[LimitedKey], cost: int = 1) -> Decision:
        args: list[float] = [cost]
        for limited in keys:
            args += [limited.limit.interval_s * 1000, limited.limit.tolerance_s * 1000]
        try:
            reply = await self._script(keys=[self.key(k) for k in keys], args=args)
        except REDIS_UNREACHABLE as error:
            raise LimiterUnavailableError(f"rate limiter unreachable: {error}") from error
        verdicts = [
            Verdict(bool(allowed), new_tat / 1000, int(remaining), reset_ms / 1000, retry_ms / 1000)
            for allowed, new_tat, remaining, reset_ms, retry_ms in json.loads(reply)["v"]
        ]
        return decide(keys, verdicts)
