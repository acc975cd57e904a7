"""RedisWindowStore: the correlation engine's windows in Redis, updated by atomic Lua scripts.

Key layout (`prefix` defaults to `siem:cw`), per correlation rule and group value ("window"):

    siem:cw:{<rule id>:<group digest>}:z<stage>   sorted set: member -> event time (epoch s)
    siem:cw:{<rule id>:<group digest>}:d<stage>   hash: member -> payload, when not empty (a counted
                                                  value's event id, a nested occurrence's JSON)
    siem:cw:{<rule id>:<group digest>}:fired      event time of the last alert (suppression)

A batch of observations (one wave of the engine) is one pipeline of EVALSHA calls: one round trip. Each
call replies with one JSON string (cjson) rather than nested arrays, because redis-py parses RESP in Python
and a window's worth of bulk strings cost more than the script; for temporal rules the script computes the
chain (or the nearest entries) itself and replies with those few entries only.

Partitioning. Workers consume the Kafka partitions of `siem.events`, which are keyed by source, so the
events of one group (a user, an address) reach several workers: sshd lines from one host, 4625s from a
domain controller, CloudTrail from another. The state is therefore not partitioned by worker but by
window: the `{...}` hash tag makes each window (rule + group) the unit of partitioning, so with Redis
Cluster the windows spread over shards while every key of one window sits in one slot, and one Lua script
updates and reads a window atomically. Any worker can evaluate any group; two workers completing the same
window at once are serialised by Redis, and the `fired` key makes sure only one of them alerts.

Bounds. Each script call trims the stage it writes by event time (entries older than the entry's time
minus timespan and allowed lateness) and by size (the latest `max_entries`), and sets a TTL of
timespan + lateness + `ttl_slack_s` (wall clock) on the keys it writes, so a window that stops receiving
events disappears and Redis holds at most the windows active in the last ~8 minutes, each at most
stages x max_entries entries. The TTL is wall-clock while windows are in event time: `ttl_slack_s` is how
far the pipeline may lag behind real time before a window is forgotten too early.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from katas.siem.correlation import DEFAULT_LATENESS_S, Claim, Observation, WindowEntry

DEFAULT_PREFIX = "siem:cw"
DEFAULT_TTL_SLACK_S = 120.0
PIPELINE_CHUNK = 500
"""Observations sent per round trip (a batch of matches may need several)."""

# KEYS: the n stage sorted sets, then the n stage hashes (payloads; an empty payload is not stored).
# ARGV: stage (1-based), member, ts, payload, read from, read to, trim below (exclusive), max entries,
#       ttl ms, reply ("window", "chain" or "nearest": see WindowStore.observe).
# Returns one JSON string: per stage, a flat list member, score, payload, member, score, payload...
_OBSERVE = """
local n = #KEYS / 2
local s = tonumber(ARGV[1])
local z, h = KEYS[s], KEYS[n + s]
local lo, hi = ARGV[5], ARGV[6]
if redis.call('ZADD', z, 'GT', 'CH', ARGV[3], ARGV[2]) == 1 then
  if ARGV[4] == '' then
    redis.call('HDEL', h, ARGV[2])
  else
    redis.call('HSET', h, ARGV[2], ARGV[4])
  end
end
local cut = '(' .. ARGV[7]
local expired = redis.call('ZRANGEBYSCORE', z, '-inf', cut)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', z, '-inf', cut)
  redis.call('HDEL', h, unpack(expired))
end
local extra = redis.call('ZCARD', z) - tonumber(ARGV[8])
if extra > 0 then
  local oldest = redis.call('ZRANGE', z, 0, extra - 1)
  redis.call('ZREMRANGEBYRANK', z, 0, extra - 1)
  redis.call('HDEL', h, unpack(oldest))
end
redis.call('PEXPIRE', z, ARGV[9])
redis.call('PEXPIRE', h, ARGV[9])

local function entry(i, got, j)
  return {got[j], got[j + 1], redis.call('HGET', KEYS[n + i], got[j]) or ''}
end

local out = {}
local mode = ARGV[10]
if mode == 'window' then
  for i = 1, n do
    local got = redis.call('ZRANGEBYSCORE', KEYS[i], lo, hi, 'WITHSCORES')
    local flat = {}
    if #got > 0 then
      local members = {}
      for j = 1, #got, 2 do members[#members + 1] = got[j] end
      local data = redis.call('HMGET', KEYS[n + i], unpack(members))
      for j = 1, #members do
        flat[#flat + 1] = members[j]
        flat[#flat + 1] = got[2 * j]
        flat[#flat + 1] = data[j] or ''
      end
    end
    out[i] = flat
  end
  return cjson.encode(out)
end

for i = 1, n do out[i] = {} end
out[s] = {ARGV[2], ARGV[3], ARGV[4]}
if mode == 'chain' then
  local current = ARGV[3]
  for i = s - 1, 1, -1 do
    local got = redis.call('ZREVRANGEBYSCORE', KEYS[i], '(' .. current, lo, 'WITHSCORES', 'LIMIT', 0, 1)
    if #got == 0 then break end
    out[i] = entry(i, got, 1)
    current = got[2]
  end
  current = ARGV[3]
  for i = s + 1, n do
    local got = redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. current, hi, 'WITHSCORES', 'LIMIT', 0, 1)
    if #got == 0 then break end
    out[i] = entry(i, got, 1)
    current = got[2]
  end
else -- nearest
  for i = 1, n do
    if i ~= s then
      local flat = {}
      local before = redis.call('ZREVRANGEBYSCORE', KEYS[i], ARGV[3], lo, 'WITHSCORES', 'LIMIT', 0, 1)
      if #before > 0 then
        for _, v in ipairs(entry(i, before, 1)) do flat[#flat + 1] = v end
      end
      local after = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[3], hi, 'WITHSCORES', 'LIMIT', 0, 1)
      if #after > 0 and (#before == 0 or after[1] ~= before[1]) then
        for _, v in ipairs(entry(i, after, 1)) do flat[#flat + 1] = v end
      end
      out[i] = flat
    end
  end
end
return cjson.encode(out)
"""

# KEYS: the window's fired key. ARGV: ts, span s, ttl ms. Returns 1 if this alert is the first in span.
_CLAIM = """
local ts = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[1])
if last and math.abs(ts - tonumber(last)) < tonumber(ARGV[2]) then
  return 0
end
if (not last) or ts > tonumber(last) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
return 1
"""


class RedisWindowStore:
    """A `WindowStore` in Redis (see the module docstring for keys, partitioning and bounds)."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        lateness_s: float = DEFAULT_LATENESS_S,
        ttl_slack_s: float = DEFAULT_TTL_SLACK_S,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.lateness_s = lateness_s
        self.ttl_slack_s = ttl_slack_s
        self._observe = client.register_script(_OBSERVE)
        self._claim = client.register_script(_CLAIM)

    def key(self, window: str, suffix: str) -> str:
        return f"{self.prefix}:{{{window}}}:{suffix}"

    def _ttl_ms(self, span_s: float) -> int:
        return int((span_s + self.lateness_s + self.ttl_slack_s) * 1000)

    async def observe(self, observations: Sequence[Observation]) -> list[list[list[WindowEntry]]]:
        replies: list[Any] = []
        for start in range(0, len(observations), PIPELINE_CHUNK):
            async with self.client.pipeline(transaction=False) as pipe:
                for o in observations[start : start + PIPELINE_CHUNK]:
                    await self._observe(keys=self._keys(o), args=self._args(o), client=pipe)
                replies += await pipe.execute()
        # One JSON reply per observation; cjson encodes an empty Lua table as {}: a stage without entries.
        return [
            [
                [WindowEntry(flat[j], float(flat[j + 1]), flat[j + 2]) for j in range(0, len(flat), 3)]
                if flat
                else []
                for flat in json.loads(reply)
            ]
            for reply in replies
        ]

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        async with self.client.pipeline(transaction=False) as pipe:
            for c in claims:
                args: list[str | int] = [repr(c.ts), repr(c.span_s), self._ttl_ms(c.span_s)]
                await self._claim(keys=[self.key(c.window, "fired")], args=args, client=pipe)
            return [bool(int(reply)) for reply in await pipe.execute()]

    def _keys(self, o: Observation) -> list[str]:
        return [self.key(o.window, f"z{i}") for i in range(o.stages)] + [
            self.key(o.window, f"d{i}") for i in range(o.stages)
        ]

    def _args(self, o: Observation) -> list[str | int]:
        ts = o.entry.ts
        return [
            o.stage + 1,
            o.entry.member,
            repr(ts),
            o.entry.data,
            repr(ts - o.span_s),
            repr(ts + o.span_s),
            repr(ts - o.span_s - self.lateness_s),
            o.max_entries,
            self._ttl_ms(o.span_s),
            o.reply,
        ]
