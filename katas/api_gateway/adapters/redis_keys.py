"""RedisKeyDirectory: clients and their API keys in Redis (keys stored hashed), looked up through a short
per-node cache.

`gw:client:<name>` holds a client's tier and limit as JSON; `gw:key:<sha256 of the key>` holds the name
of the client it belongs to. The key itself is never stored, so a copy of the store does not let anyone
call the API. A client identified otherwise (a client certificate) is looked up by name. SHA-256 without a salt is enough here,
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
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from katas.api_gateway.adapters import REDIS_UNREACHABLE
from katas.api_gateway.node import Client, KeyDirectoryUnavailableError
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Tier

DEFAULT_PREFIX = "gw"
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

    def _key(self, digest: str) -> str:
        return f"{self.prefix}:key:{digest}"

    def _client(self, name: str) -> str:
        return f"{self.prefix}:client:{name}"

    async def register(self, client: str, tier: Tier, limit: Limit) -> None:
        """Create or update a client (its tier and limit apply to all its keys once node caches expire)."""
        record = {"tier": tier.value, "rate": limit.rate, "burst": limit.burst}
        await self.redis.set(self._client(client), json.dumps(record))

    async def issue(self, client: str, tier: Tier | None = None, limit: Limit | None = None) -> str:
        """A new key for `client`, registered first with `tier` and `limit` when they are given (a client
        must exist before it gets a key). The key is returned once, here."""
        if tier is not None and limit is not None:
            await self.register(client, tier, limit)
        elif await self.stored_client(client) is None:
            raise LookupError(f"no client {client!r}: register it with a tier and a limit first")
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        await self.redis.set(self._key(key_hash(api_key)), client)
        return api_key

    async def stored_client(self, name: str) -> Client | None:
        """The client as stored now, without this node's cache (for the admin API)."""
        return await self._lookup_client(f"client:{name}")

    async def revoke(self, api_key: str) -> bool:
        return bool(await self.redis.delete(self._key(key_hash(api_key))))

    async def client_for(self, api_key: str) -> Client | None:
        return await self._cached(f"key:{key_hash(api_key)}", self._lookup_key)

    async def client_named(self, name: str) -> Client | None:
        return await self._cached(f"client:{name}", self._lookup_client)

    async def _lookup_key(self, entry: str) -> Client | None:
        name = await self.redis.get(self._key(entry.removeprefix("key:")))
        if name is None:
            return None
        return await self._lookup_client(f"client:{name.decode() if isinstance(name, bytes) else name}")

    async def _lookup_client(self, entry: str) -> Client | None:
        name = entry.removeprefix("client:")
        raw = await self.redis.get(self._client(name))
        if raw is None:
            return None
        record = json.loads(raw)
        return Client(name, Tier(record["tier"]), Limit(record["rate"], record["burst"]))

    async def _cached(self, entry: str, lookup: Callable[[str], Awaitable[Client | None]]) -> Client | None:
        now = self.clock()
        cached = self._cache.get(entry)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        try:
            client = await lookup(entry)
        except REDIS_UNREACHABLE as error:
            if cached is not None and now - cached[0] < self.cache_ttl_s + self.stale_grace_s:
                return cached[1]
            raise KeyDirectoryUnavailableError(f"key store unreachable: {error}") from error
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[entry] = (now, client)
        return client
