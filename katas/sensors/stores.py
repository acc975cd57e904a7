"""Tenant isolation in storage: where each tenant's rows live, and the connections that may read them.

Two stores hold tenant data, and each enforces isolation itself, so a query that forgets the tenant (a
bug) cannot return another tenant's rows:

- **ClickHouse (rollups, raw readings): a store per tenant.** chDB, ClickHouse in-process, has no access
  management (`CREATE USER` and `CREATE ROW POLICY` are refused, and a session has one fixed user), so
  row policies per tenant are not available natively. Each tenant gets a store of its own instead: the
  card starts one chDB store owner per tenant (`chdb-1`, `chdb-2` …, in the registry's tenant order),
  and inside it a database named after the tenant. Every service reaches a tenant's rows only through
  `TenantWarehouses.of(tenant)`; the operator's queries fan out over all of them. Under Compose the
  stores may be one ClickHouse server, where the per-tenant databases still keep the rows apart.
- **Redis (the live view): a user per tenant.** `TenantRedis` provisions one Redis user per tenant whose
  ACL reads only that tenant's keys, and the API serves each request through its tenant's connection.

The `api-only-isolation` mistake pools every tenant into the first store's shared `sensors` database and
reads through one all-powerful connection, so only the API's own filters keep tenants apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import redis.asyncio as aioredis

from katas.infra.clickhouse import ClickHouse
from katas.sensors.tenancy import OPERATOR, READ_COMMANDS, derive, redis_key_pattern, redis_user

POOLED_DATABASE: Final = "sensors"
"""The one database of every tenant when the `api-only-isolation` mistake pools them."""


class TooFewStoresError(RuntimeError):
    """The fleet has more tenants than the stack has stores: two tenants would share one."""


def tenant_database(tenant: str) -> str:
    """The tenant's database inside its store: its id, made a ClickHouse identifier."""
    return "sensors_" + "".join(c if c.isalnum() else "_" for c in tenant)


@dataclass
class TenantWarehouses:
    """tenant -> the ClickHouse store that holds its rows, and the database they are in."""

    urls: dict[str, str]
    databases: dict[str, str]
    pooled: bool = False
    timeout_s: float = 30.0
    clients: dict[str, ClickHouse] = field(default_factory=dict, repr=False)
    """Open clients by store URL, made on first use (a test may put a stand-in here)."""

    @classmethod
    def assign(
        cls,
        tenants: Sequence[str],
        store_urls: Sequence[str],
        *,
        pooled: bool = False,
        timeout_s: float = 30.0,
    ) -> TenantWarehouses:
        """Tenant i of the registry gets store i. More stores than tenants is fine (some stay empty); fewer
        is refused, because two tenants in one store would no longer be kept apart by storage."""
        if not store_urls:
            raise TooFewStoresError("no ClickHouse store is configured (KATAS_CLICKHOUSE_URL is empty)")
        if pooled:
            urls = dict.fromkeys(tenants, store_urls[0])
            return cls(urls, dict.fromkeys(tenants, POOLED_DATABASE), pooled=True, timeout_s=timeout_s)
        if len(store_urls) < len(tenants):
            raise TooFewStoresError(
                f"the fleet has {len(tenants)} tenants but the stack has {len(store_urls)} ClickHouse stores; "
                "give every tenant a store (kata.toml [stack] servers) or set SENSORS_FLEET_TENANTS lower"
            )
        return cls(
            dict(zip(tenants, store_urls, strict=False)),
            {t: tenant_database(t) for t in tenants},
            timeout_s=timeout_s,
        )

    @property
    def tenants(self) -> list[str]:
        return list(self.urls)

    def of(self, tenant: str) -> ClickHouse:
        """The client of the store that holds `tenant`'s rows (KeyError for a tenant nobody registered)."""
        url = self.urls[tenant]
        client = self.clients.get(url)
        if client is None:
            client = self.clients[url] = ClickHouse(url, timeout_s=self.timeout_s)
        return client

    def database(self, tenant: str) -> str:
        return self.databases[tenant]

    def table(self, tenant: str, name: str) -> str:
        return f"{self.databases[tenant]}.{name}"

    def __iter__(self) -> Iterator[tuple[str, ClickHouse]]:
        """(tenant, client) for every tenant: what an operator's query fans out over."""
        return ((tenant, self.of(tenant)) for tenant in self.urls)

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients.values()))
        self.clients.clear()


class TenantRedis:
    """One Redis connection per tenant (and the operator), each logged in as that tenant's own user."""

    def __init__(self, url: str, secret: str, tenants: Sequence[str]) -> None:
        self.url = url
        self.secret = secret
        self.tenants = (*tenants, OPERATOR)
        self.clients: dict[str, aioredis.Redis] = {}

    async def provision(self) -> None:
        """Create (or reset) every tenant's Redis user; then log in as each."""
        await self._set_users()
        for tenant in self.tenants:
            self.clients[tenant] = aioredis.Redis.from_url(
                self.url, username=redis_user(tenant), password=derive(self.secret, f"redis:{tenant}")
            )

    async def restore_users(self) -> bool:
        """Create the users again if Redis has lost them; whether it had. Redis keeps ACL users in memory
        only (no aclfile: they are not in the AOF either), so a restarted Redis refuses every tenant's
        connection (WRONGPASS) until they are provisioned again."""
        admin = aioredis.Redis.from_url(self.url)
        try:
            known = {u.decode() if isinstance(u, bytes) else str(u) for u in await admin.acl_users()}
        finally:
            await admin.aclose()
        if {redis_user(tenant) for tenant in self.tenants} <= known:
            return False
        await self._set_users()
        return True

    async def _set_users(self) -> None:
        admin = aioredis.Redis.from_url(self.url)
        try:
            for tenant in self.tenants:
                await admin.acl_setuser(
                    redis_user(tenant),
                    enabled=True,
                    reset=True,
                    passwords=[f"+{derive(self.secret, f'redis:{tenant}')}"],
                    keys=[redis_key_pattern(tenant)],
                    channels=[redis_key_pattern(tenant)],
                    categories=["-@all"],
                    commands=list(READ_COMMANDS),
                )
        finally:
            await admin.aclose()

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))
