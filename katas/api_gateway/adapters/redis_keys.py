"""RedisKeyDirectory: API keys stored hashed in Redis, looked up through a short per-node cache.

`gw:key:<sha256 of the key>` holds the client's name, tier and limit as JSON; the key itself is never
stored, so a copy of the store does not let anyone call the API. SHA-256 without a salt is enough here,
unlike for passwords: keys are 32 random bytes, too many to guess or tabulate.

Each node caches a lookup (found or not) for `cache_ttl_s`: that bounds how long a revoked key keeps
working on a node (the kata asks for 5 s everywhere; the default is 2 s), and it is what keeps the key
store off the request path (the `auth-db-every-request` mistake is a TTL of 0). While Redis is
unreachable, entries past their TTL are still served for `stale_grace_s`, then lookups fail with
`KeyDirectoryUnavailableError` (the node answers 503: it cannot tell who is calling).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from katas.api_gateway.node import Client, KeyDirectoryUnavailableError
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Tier

DEFAULT_PREFIX = "gw:key"
KEY_PREFIX = "gwk_"


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class RedisKeyDirectory:
    def __init__(
        self,
        redis: Redis,
        *,
        cache_ttl_s: float = 2.0,
        stale_grace_s: float = 60.0,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.cache_ttl_s = cache_ttl_s
        self.stale_grace_s = stale_grace_s
        self.prefix = prefix
        self.clock = clock
        self._cache: dict[str, tuple[float, Client | None]] = {}

    def _name(self, digest: str) -> str:
        return f"{self.prefix}:{digest}"

    async def issue(self, client: str, tier: Tier, limit: Limit) -> str:
        """A new key for `client`; only its hash is stored. The key is returned once, here."""
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = {"client": client, "tier": tier.value, "rate": limit.rate, "burst": limit.burst}
        await self.redis.set(self._name(key_hash(api_key)), json.dumps(record))
        return api_key

    async def revoke(self, api_key: str) -> bool:
        return bool(await self.redis.delete(self._name(key_hash(api_key))))

    async def client_for(self, api_key: str) -> Client | None:
        digest = key_hash(api_key)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        try:
            raw = await self.redis.get(self._name(digest))
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            if cached is not None and now - cached[0] < self.cache_ttl_s + self.stale_grace_s:
                return cached[1]
            raise KeyDirectoryUnavailableError(f"key store unreachable: {error}") from error
        client = None
        if raw is not None:
            record = json.loads(raw)
            client = Client(record["client"], Tier(record["tier"]), Limit(record["rate"], record["burst"]))
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[digest] = (now, client)
        return client
