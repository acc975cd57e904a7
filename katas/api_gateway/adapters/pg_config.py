"""The configuration store: routes, clients, API-key digests and limits in PostgreSQL, and the change feed
every node follows.

Every write is one transaction that also bumps a single version number and sends `NOTIFY gw_config`.
PostgreSQL delivers a notification only when the transaction commits, so a node that hears it always
reads the change. Nodes (`ConfigWatcher`) listen, reload the whole configuration in one snapshot
transaction, and also compare the version every `poll_s`: a notification lost with a dropped connection
costs at most that long. Why PostgreSQL and its own LISTEN/NOTIFY rather than etcd, or PostgreSQL with
Redis pub/sub: docs/decisions.md ("Kata 6: the configuration store").

`PostgresKeyLookup` reads a client from the store on every request: it exists for the
`auth-db-every-request` mistake, so the lab can measure what a store on the request path costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from katas.api_gateway.config import (
    Client,
    GatewayConfig,
    KeyDirectoryUnavailableError,
    key_hash,
    key_label,
    new_api_key,
)
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Route, RouteTable, Tier

CHANNEL = "gw_config"
GLOBAL_SCOPE = "global"

SCHEMA = """
CREATE TABLE IF NOT EXISTS gw_version (
    id int PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO gw_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS gw_clients (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    tier text NOT NULL,
    rate double precision NOT NULL CHECK (rate > 0),
    burst integer NOT NULL CHECK (burst >= 1),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gw_api_keys (
    key_sha256 text PRIMARY KEY,
    client text NOT NULL REFERENCES gw_clients (name) ON DELETE CASCADE,
    label text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS gw_api_keys_client ON gw_api_keys (client);
CREATE TABLE IF NOT EXISTS gw_oauth_secrets (
    client text PRIMARY KEY REFERENCES gw_clients (name) ON DELETE CASCADE,
    secret_sha256 text NOT NULL
);
CREATE TABLE IF NOT EXISTS gw_routes (
    name text PRIMARY KEY,
    spec jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS gw_limits (
    scope text PRIMARY KEY,
    rate double precision NOT NULL CHECK (rate > 0),
    burst integer NOT NULL CHECK (burst >= 1)
);
"""

BUMP = "UPDATE gw_version SET version = version + 1, changed_at = now() WHERE id = 1 RETURNING version"


class ConfigStoreUnavailableError(ConnectionError):
    pass


class PostgresConfigStore:
    """Reads and writes the configuration; one short transaction per call, from a small pool."""

    def __init__(self, dsn: str, *, max_connections: int = 4, timeout_s: float = 2.0) -> None:
        self.dsn = dsn
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            timeout=timeout_s,
            open=False,
            check=AsyncConnectionPool.check_connection,  # a store restart leaves dead connections behind
            kwargs={"connect_timeout": max(1, round(timeout_s))},
        )

    async def open(self) -> PostgresConfigStore:
        await self.pool.open(wait=False)
        async with self.pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(7406)")  # nodes may start side by side
            await conn.execute(SCHEMA)
        return self

    async def close(self) -> None:
        await self.pool.close()

    async def _write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> int:
        """Run the statements and bump the version in one transaction; returns the new version."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                for sql, params in statements:
                    await conn.execute(sql, params)
                row = await (await conn.execute(BUMP)).fetchone()
                assert row is not None
                version = int(row[0])
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(version)))
                return version
        except (psycopg.OperationalError, TimeoutError) as error:
            raise ConfigStoreUnavailableError(f"configuration store unreachable: {error}") from error

    # -- writes -------------------------------------------------------------------------------------------
    async def put_client(self, name: str, tier: Tier, limit: Limit) -> int:
        return await self._write(
            [
                (
                    "INSERT INTO gw_clients (name, tier, rate, burst) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET tier = EXCLUDED.tier, rate = EXCLUDED.rate, "
                    "burst = EXCLUDED.burst, updated_at = now()",
                    (name, tier.value, limit.rate, limit.burst),
                )
            ]
        )

    async def issue_key(self, client: str) -> str:
        """A new API key for an existing client, returned once, here; only its digest is stored."""
        if await self.client(client) is None:
            raise LookupError(f"no client {client!r}: create it with a tier and a limit first")
        api_key = new_api_key()
        await self._write(
            [
                (
                    "INSERT INTO gw_api_keys (key_sha256, client, label) VALUES (%s, %s, %s)",
                    (key_hash(api_key), client, key_label(api_key)),
                )
            ]
        )
        return api_key

    async def add_key(self, client: str, api_key: str) -> None:
        """Store a key chosen elsewhere (the stack's demo keys, derived from its secret); idempotent."""
        await self._write(
            [
                (
                    "INSERT INTO gw_api_keys (key_sha256, client, label) VALUES (%s, %s, %s) "
                    "ON CONFLICT (key_sha256) DO NOTHING",
                    (key_hash(api_key), client, key_label(api_key)),
                )
            ]
        )

    async def set_oauth_secret(self, client: str, secret: str) -> None:
        """The client-credentials secret of an existing client (its digest only), for the auth server."""
        await self._write(
            [
                (
                    "INSERT INTO gw_oauth_secrets (client, secret_sha256) VALUES (%s, %s) "
                    "ON CONFLICT (client) DO UPDATE SET secret_sha256 = EXCLUDED.secret_sha256",
                    (client, key_hash(secret)),
                )
            ]
        )

    async def oauth_client(self, client_id: str) -> tuple[Client, str] | None:
        """A client and the digest of its OAuth secret, for the auth server to check a token request."""
        rows = await self.query(
            "SELECT c.name, c.tier, c.rate, c.burst, s.secret_sha256 FROM gw_oauth_secrets s "
            "JOIN gw_clients c ON c.name = s.client WHERE s.client = %s",
            (client_id,),
        )
        return (_client(rows[0][:4]), str(rows[0][4])) if rows else None

    async def revoke_key(self, api_key: str) -> bool:
        return await self.revoke_digest(key_hash(api_key))

    async def revoke_digest(self, digest: str, *, client: str | None = None) -> bool:
        """Revoke by digest (a portal knows a key only by its digest), optionally only if `client` owns it."""
        found = await self.query(
            "SELECT 1 FROM gw_api_keys WHERE key_sha256 = %s AND revoked_at IS NULL "
            "AND (%s::text IS NULL OR client = %s)",
            (digest, client, client),
        )
        if not found:
            return False
        await self._write(
            [
                (
                    "UPDATE gw_api_keys SET revoked_at = now() WHERE key_sha256 = %s AND revoked_at IS NULL",
                    (digest,),
                )
            ]
        )
        return True

    async def put_routes(self, routes: Iterable[Route], *, replace: bool = False) -> int:
        routes = RouteTable(list(routes)).routes  # refuses duplicate names before anything is written
        statements: list[tuple[str, tuple[Any, ...]]] = [("DELETE FROM gw_routes", ())] if replace else []
        statements += [
            (
                "INSERT INTO gw_routes (name, spec) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec",
                (route.name, route.model_dump_json()),
            )
            for route in routes
        ]
        return await self._write(statements)

    async def delete_route(self, name: str) -> int:
        return await self._write([("DELETE FROM gw_routes WHERE name = %s", (name,))])

    async def put_limit(self, scope: str, limit: Limit) -> int:
        """`scope` is "global" or a route name (that route's limit per client)."""
        return await self._write(
            [
                (
                    "INSERT INTO gw_limits (scope, rate, burst) VALUES (%s, %s, %s) "
                    "ON CONFLICT (scope) DO UPDATE SET rate = EXCLUDED.rate, burst = EXCLUDED.burst",
                    (scope, limit.rate, limit.burst),
                )
            ]
        )

    # -- reads --------------------------------------------------------------------------------------------
    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            async with self.pool.connection() as conn:
                cursor = conn.cursor(row_factory=tuple_row)
                await cursor.execute(sql, params)
                return await cursor.fetchall()
        except (psycopg.OperationalError, TimeoutError) as error:
            raise ConfigStoreUnavailableError(f"configuration store unreachable: {error}") from error

    async def client(self, name: str) -> Client | None:
        rows = await self.query("SELECT name, tier, rate, burst FROM gw_clients WHERE name = %s", (name,))
        return _client(rows[0]) if rows else None

    async def keys_of(self, client: str) -> list[dict[str, Any]]:
        """A client's keys as a portal lists them: digest, label, created, revoked (never the key)."""
        rows = await self.query(
            "SELECT key_sha256, label, created_at, revoked_at FROM gw_api_keys WHERE client = %s "
            "ORDER BY created_at",
            (client,),
        )
        return [
            {"id": digest, "label": label, "created_at": created.isoformat(),
             "revoked_at": revoked.isoformat() if revoked else None}
            for digest, label, created, revoked in rows
        ]  # fmt: skip

    async def version(self) -> int:
        rows = await self.query("SELECT version FROM gw_version WHERE id = 1")
        return int(rows[0][0])

    async def snapshot(self) -> GatewayConfig:
        """The whole configuration as of one moment (one repeatable-read transaction)."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                version = (await (await conn.execute("SELECT version FROM gw_version")).fetchall())[0][0]
                clients = await (
                    await conn.execute("SELECT name, tier, rate, burst FROM gw_clients")
                ).fetchall()
                keys = await (
                    await conn.execute("SELECT key_sha256, client FROM gw_api_keys WHERE revoked_at IS NULL")
                ).fetchall()
                routes = await (await conn.execute("SELECT spec FROM gw_routes")).fetchall()
                limits = await (await conn.execute("SELECT scope, rate, burst FROM gw_limits")).fetchall()
        except (psycopg.OperationalError, TimeoutError) as error:
            raise ConfigStoreUnavailableError(f"configuration store unreachable: {error}") from error
        by_scope = {scope: Limit(rate, burst) for scope, rate, burst in limits}
        return GatewayConfig(
            version=int(version),
            routes=RouteTable([Route.model_validate(_json(spec)) for (spec,) in routes]),
            clients={row[0]: _client(row) for row in clients},
            key_owners=dict(keys),
            endpoint_limits={scope: limit for scope, limit in by_scope.items() if scope != GLOBAL_SCOPE},
            global_limit=by_scope.get(GLOBAL_SCOPE),
        )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _client(row: tuple[Any, ...]) -> Client:
    name, tier, rate, burst = row
    return Client(name, Tier(tier), Limit(float(rate), int(burst)))


class ConfigWatcher:
    """Keeps a node's configuration current: LISTEN for changes, reload on each, and poll the version every
    `poll_s` in case a notification was lost. While the store is down the node keeps what it has."""

    def __init__(
        self,
        store: PostgresConfigStore,
        apply: Callable[[GatewayConfig], object],
        *,
        poll_s: float = 5.0,
        on_error: Callable[[Exception], None] = lambda error: None,
    ) -> None:
        self.store = store
        self.apply = apply
        self.poll_s = poll_s
        self.on_error = on_error
        self.loaded_version = -1
        self.checked_at = 0.0

    async def reload(self) -> GatewayConfig:
        config = await self.store.snapshot()
        self.apply(config)
        self.loaded_version, self.checked_at = config.version, time.monotonic()
        return config

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                await self._follow(stop)
            except (psycopg.OperationalError, ConfigStoreUnavailableError, OSError, TimeoutError) as error:
                self.on_error(error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 2.0)  # at most 2 s, so a store back up is noticed soon

    async def _follow(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.store.dsn, autocommit=True, connect_timeout=2
        ) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            await self.reload()  # after LISTEN, so no change falls between the two
            while not stop.is_set():
                heard = [n async for n in conn.notifies(timeout=1.0, stop_after=1)]  # wakes for `stop`
                if heard:
                    await self.reload()
                elif time.monotonic() - self.checked_at >= self.poll_s:
                    if await self.store.version() != self.loaded_version:
                        await self.reload()
                    self.checked_at = time.monotonic()


class PostgresKeyLookup:
    """A `KeyDirectory` that asks the store on every request: the `auth-db-every-request` mistake."""

    def __init__(self, store: PostgresConfigStore) -> None:
        self.store = store

    async def client_for(self, api_key: str) -> Client | None:
        try:
            rows = await self.store.query(
                "SELECT c.name, c.tier, c.rate, c.burst FROM gw_api_keys k JOIN gw_clients c ON c.name = k.client "
                "WHERE k.key_sha256 = %s AND k.revoked_at IS NULL",
                (key_hash(api_key),),
            )
        except ConfigStoreUnavailableError as error:
            raise KeyDirectoryUnavailableError(str(error)) from error
        return _client(rows[0]) if rows else None

    async def client_named(self, name: str) -> Client | None:
        try:
            return await self.store.client(name)
        except ConfigStoreUnavailableError as error:
            raise KeyDirectoryUnavailableError(str(error)) from error
