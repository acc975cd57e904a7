"""The admin API on real servers, and how fast its changes reach two gateway nodes that share nothing but
Redis: a revoked key is refused by both within 5 s, new limits apply on both within 30 s (the kata's
targets), measured."""

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

from katas.api_gateway.adapters.redis_keys import RedisKeyDirectory
from katas.api_gateway.adapters.redis_limiter import RedisLimiter
from katas.api_gateway.node import Collaborators, GatewayNode, NodeConfig
from katas.api_gateway.routing import Route, RouteTable
from katas.api_gateway.services.admin import AdminApi
from katas.infra.servers import RedisServer
from tests.integration.api_gateway.conftest import Serve, start_backend

ADMIN = "admin-token-for-the-tests"
REVOCATION_LIMIT_S = 5.0
PROPAGATION_LIMIT_S = 30.0


@dataclass
class Lab:
    admin: str
    nodes: list[str]


@pytest.fixture
async def lab(launch: Callable[[Any], Any], run_dir: Path, serve: Serve) -> AsyncIterator[Lab]:
    redis_server = launch(RedisServer("redis", run_dir))
    orders = start_backend(launch, run_dir, "orders")
    connections = [Redis.from_url(redis_server.url) for _ in range(3)]
    routes = RouteTable([Route(name="orders", prefix="/orders", backend="orders")])
    try:
        admin = await serve(AdminApi(RedisKeyDirectory(connections[0]), ADMIN).app())
        nodes = [
            await serve(
                GatewayNode(
                    NodeConfig(routes, {"orders": f"http://{orders.client_address}"}, node_name=f"node-{i}"),
                    Collaborators(RedisKeyDirectory(redis), RedisLimiter(redis)),
                ).app()
            )
            for i, redis in enumerate(connections[1:], start=1)
        ]
        yield Lab(admin, nodes)
    finally:
        for redis in connections:
            await redis.aclose()


async def _status(url: str, api_key: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/orders/echo", headers={"X-API-Key": api_key}) as a,
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
        for url in lab.nodes:
            assert await _status(url, api_key) == (200, "20")

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
    print(f"limits applied on both nodes after {propagated:.2f} s; revocation after {revoked:.2f} s")


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
