"""The admin API on real servers, and how fast its changes reach two gateway nodes that follow the
configuration store (PostgreSQL, LISTEN/NOTIFY): a revoked key is refused by both within 5 s, new limits
and a new route apply on both within 30 s (the kata's targets), measured. With the store down the nodes
keep serving what they hold, the admin API says it cannot write, and the nodes catch up once it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from katas.api_gateway.adapters.pg_config import PostgresConfigStore
from katas.api_gateway.adapters.redis_limiter import RedisLimiter
from katas.api_gateway.node import Collaborators, GatewayNode, NodeConfig
from katas.api_gateway.routing import Route
from katas.api_gateway.services.admin import AdminApi
from katas.infra.servers import PostgresServer, RedisServer
from tests.integration.api_gateway.conftest import Follow, Serve, start_backend

ADMIN = "admin-token-for-the-tests"
REVOCATION_LIMIT_S = 5.0
PROPAGATION_LIMIT_S = 30.0


@dataclass
class Lab:
    admin: str
    nodes: list[str]
    store_server: PostgresServer


@pytest.fixture
async def lab(
    launch: Callable[[Any], Any],
    run_dir: Path,
    serve: Serve,
    config_server: PostgresServer,
    config_store: PostgresConfigStore,
    follow: Follow,
) -> AsyncIterator[Lab]:
    redis_server = launch(RedisServer("redis", run_dir))
    backends = {
        name: f"http://{start_backend(launch, run_dir, name).client_address}" for name in ("orders", "users")
    }
    await config_store.put_routes([Route(name="orders", prefix="/orders", backend="orders")])
    connections = [Redis.from_url(redis_server.url) for _ in range(2)]
    try:
        admin = await serve(AdminApi(config_store, ADMIN).app())
        nodes = [
            await serve(
                GatewayNode(
                    NodeConfig(backends, node_name=f"node-{i}"),
                    Collaborators(RedisLimiter(redis)),
                    await follow(),
                ).app()
            )
            for i, redis in enumerate(connections, start=1)
        ]
        yield Lab(admin, nodes, config_server)
    finally:
        for redis in connections:
            await redis.aclose()


async def _status(url: str, api_key: str, path: str = "/orders/echo") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}{path}", headers={"X-API-Key": api_key}) as a,
    ):
        return a.status, a.headers.get("RateLimit-Limit", "")


async def _until(check: Callable[[], Any], limit_s: float, what: str) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit_s, f"{what} took longer than {limit_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_admin_changes_reach_every_node_in_time(lab: Lab) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(lab.admin, headers=auth) as admin:
        async with admin.post(
            "/clients/acme/keys", json={"tier": "pro", "limit_per_second": 50, "burst": 20}
        ) as a:
            assert a.status == 201
            api_key = (await a.json())["api_key"]
        await _until(lambda: _all_status(lab, api_key, 200), REVOCATION_LIMIT_S, "a new key")
        for url in lab.nodes:
            assert await _status(url, api_key) == (200, "20")

        assert await _status(lab.nodes[0], api_key, "/users/echo") == (404, "")
        route = {"name": "users", "prefix": "/users", "backend": "users"}
        async with admin.put("/routes/users", json=route) as a:
            assert a.status == 200

        async def route_served() -> bool:
            return [(await _status(url, api_key, "/users/echo"))[0] for url in lab.nodes] == [200, 200]

        routed = await _until(route_served, PROPAGATION_LIMIT_S, "route propagation")

        async with admin.put("/clients/acme/limits", json={"limit_per_second": 5, "burst": 3}) as a:
            assert a.status == 200
            assert (await a.json())["burst"] == 3

        async def limits_applied() -> bool:
            return [(await _status(url, api_key))[1] for url in lab.nodes] == ["3", "3"]

        propagated = await _until(limits_applied, PROPAGATION_LIMIT_S, "limit propagation")

        async with admin.delete(f"/keys/{api_key}") as a:
            assert a.status == 204

        async def refused_everywhere() -> bool:
            return [(await _status(url, api_key))[0] for url in lab.nodes] == [401, 401]

        revoked = await _until(refused_everywhere, REVOCATION_LIMIT_S, "revocation")
    print(f"on both nodes: limits after {propagated:.2f} s, route {routed:.2f} s, revocation {revoked:.2f} s")


async def test_with_the_store_down_nodes_serve_what_they_hold_and_catch_up_after(lab: Lab) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(lab.admin, headers=auth) as admin:
        async with admin.post(
            "/clients/steady/keys", json={"tier": "pro", "limit_per_second": 50, "burst": 20}
        ) as a:
            api_key = (await a.json())["api_key"]
        await _until(lambda: _all_status(lab, api_key, 200), 5, "the new key")

        lab.store_server.kill()
        assert [await _status(url, api_key) for url in lab.nodes] == [(200, "20")] * 2, "nodes keep serving"
        async with admin.put("/clients/steady/limits", json={"limit_per_second": 5, "burst": 3}) as a:
            assert a.status == 503, "a write the store cannot take is refused, not lost silently"
            assert a.headers["Retry-After"]

        lab.store_server.start()
        for _ in range(100):  # the pool reconnects on its own; the first calls may still meet a dead socket
            async with admin.put("/clients/steady/limits", json={"limit_per_second": 5, "burst": 3}) as a:
                if a.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert a.status == 200

        async def caught_up() -> bool:
            return [(await _status(url, api_key))[1] for url in lab.nodes] == ["3", "3"]

        await _until(caught_up, PROPAGATION_LIMIT_S, "catching up after the store's restart")


async def _all_status(lab: Lab, api_key: str, status: int) -> bool:
    return [(await _status(url, api_key))[0] for url in lab.nodes] == [status] * len(lab.nodes)


async def test_the_admin_api_refuses_what_it_cannot_do(lab: Lab) -> None:
    async with aiohttp.ClientSession(lab.admin) as anonymous, anonymous.post("/clients/x/keys") as a:
        assert a.status == 401
    async with aiohttp.ClientSession(lab.admin, headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        cases = [
            ("POST", "/clients/new-client/keys", {}, 400),  # a new client needs its tier and limit
            ("POST", "/clients/c/keys", {"tier": "gold", "limit_per_second": 1, "burst": 1}, 400),
            ("PUT", "/clients/nobody/limits", {"limit_per_second": 1, "burst": 1}, 404),
            ("DELETE", "/keys/gwk_unknown", None, 404),
        ]
        for method, path, body, status in cases:
            async with admin.request(method, path, json=body) as a:
                assert a.status == status, (method, path, await a.text())
        async with admin.post(
            "/clients/c/keys", json={"tier": "free", "limit_per_second": 1, "burst": 1}
        ) as a:
            assert a.status == 201
        async with admin.put("/clients/c/limits", json={"limit_per_second": -1, "burst": 0}) as a:
            assert a.status == 400
