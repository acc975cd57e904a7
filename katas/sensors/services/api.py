"""The HVAC and query API, and the dashboard's backend: every route a tenant reaches.

- `GET /buildings/{building}/zones`: the HVAC feed, from the live view in Redis (below);
- `GET /buildings/{building}/history` and `/readings`: rollups and raw readings from the tenant's own
  ClickHouse store (`services/history_routes.py`);
- `/dashboard/...`: the web page per building, live over server-sent events (`services/dashboard.py`).

`GET /buildings/{building}/zones` with `Authorization: Bearer <token>` answers, for every zone, its
floor and zone and, per sensor type, the latest 10 s window: mean, min, max, last, count and `as_of` (the
newest reading in it, so a client sees how fresh it is). Another tenant's building answers 404, exactly
like a building that does not exist, so the answer does not reveal which buildings exist.

Tenant isolation is enforced by Redis, not only here: at start the API provisions one Redis user per
tenant whose ACL reads only that tenant's keys (`katas.sensors.tenancy`), and serves each request through
the connection of the caller's tenant. The provisioning connection is closed before the first request.
With the `api-only-isolation` mistake switched on, the API reads through one all-powerful connection and
one pooled ClickHouse database, and the token check is the only barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Header, HTTPException
from prometheus_client import Histogram

from katas.infra.service import Worker, http_app, log, mistakes, own_url, publish_endpoints, run_service
from katas.infra.settings import infra_settings
from katas.sensors.readings import SENSOR_TYPES
from katas.sensors.services.auth import bearer_tenant
from katas.sensors.services.dashboard import dashboard_router
from katas.sensors.services.history_routes import history_router
from katas.sensors.settings import SensorsSettings
from katas.sensors.storage import read_live
from katas.sensors.stores import TenantRedis
from katas.sensors.tenancy import OPERATOR, Registry, Tokens, derive

USERS_CHECK_S = 1.0
"""How often the API checks that Redis still knows the tenants' users (a restarted Redis has forgotten
them): the HVAC feed is back within about this long of Redis."""

LATENCY = Histogram("api_zones_seconds", "time to answer GET /buildings/{building}/zones")


def zones_of(live: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The live hash's zone fields (`zone|floor|zone|type`) as one entry per zone, types as keys."""
    zones: dict[tuple[str, str], dict[str, Any]] = {}
    for field, figures in live.items():
        level, floor, zone, kind = field.split("|")
        if level != "zone" or kind not in SENSOR_TYPES:
            continue
        entry = zones.setdefault((floor, zone), {"floor": floor, "zone": zone})
        entry[kind] = {k: figures[k] for k in ("mean", "min", "max", "last", "count", "as_of")}
    return [zones[key] for key in sorted(zones)]


def create_app(
    registry: Registry,
    tokens: Tokens,
    read: Callable[[str], aioredis.Redis],
    *,
    session_key: bytes | None = None,
) -> FastAPI:
    """`read(tenant)` gives the Redis client to read with for a request of `tenant`; `session_key` signs
    the dashboard's session cookies (random per process when None)."""
    app = http_app("sensors API")

    @app.get("/buildings/{building}/zones")
    async def building_zones(
        building: str, authorization: Annotated[str | None, Header()] = None
    ) -> list[dict[str, Any]]:
        with LATENCY.time():
            tenant = bearer_tenant(tokens, authorization)
            owner = registry.owner(building)
            if owner is None or not registry.visible_to(tenant, building):
                raise HTTPException(404, f"no building {building!r}")
            return zones_of(await read_live(read(tenant), owner, building))

    app.include_router(dashboard_router(registry, tokens, read, session_key=session_key))
    return app


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    settings = SensorsSettings()
    secret = settings.tenancy_secret.get_secret_value()
    if not secret:
        raise SystemExit("SENSORS_TENANCY_SECRET is required")
    registry = settings.registry()
    tokens = Tokens.derive(secret, registry.tenants)
    url = infra_settings().require("redis_url")
    stores = TenantRedis(url, secret, list(registry.tenants))
    await stores.provision()
    # Derived from the stack's secret, so a restarted API (or a second one) honours the sessions it signed.
    session_key = derive(secret, "dashboard-sessions").encode()
    pooled = "api-only-isolation" in mistakes()
    if pooled:
        shared = aioredis.Redis.from_url(url)  # the mistake: one connection that may read every tenant's keys
        app = create_app(registry, tokens, lambda tenant: shared, session_key=session_key)
        log("mistake", name="api-only-isolation", reads="one connection and one store for every tenant")
    else:
        app = create_app(registry, tokens, lambda tenant: stores.clients[tenant], session_key=session_key)
    warehouses = settings.warehouses(pooled=pooled)
    app.include_router(history_router(registry, tokens, warehouses))
    publish_endpoints(
        api=own_url(),
        dashboard=f"{own_url()}/dashboard",
        tenants=[
            {"tenant": t, "token": tokens.token_of(t), "buildings": list(registry.buildings[t])}
            for t in registry.tenants
        ],
        operator_token=tokens.token_of(OPERATOR),
    )

    async def close_on_stop(stop: asyncio.Event) -> None:
        await stop.wait()
        await stores.close()
        await warehouses.close()

    async def keep_users(stop: asyncio.Event) -> None:
        """Provision the tenants' Redis users again whenever Redis has lost them (it was restarted)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), USERS_CHECK_S)
            if stop.is_set():
                return
            try:
                if await stores.restore_users():
                    log("redis_users_restored", tenants=len(stores.tenants))
            except (aioredis.RedisError, OSError) as exc:
                log("redis_users_unchecked", error=repr(exc)[:200])

    return app, [close_on_stop, keep_users]


if __name__ == "__main__":
    run_service(build)
