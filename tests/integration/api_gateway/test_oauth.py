"""OAuth 2.0 end to end on real servers: the authorization server (client-credentials grant, JWKS,
rotation) and a gateway node that verifies tokens locally, both on loopback, with the configuration store,
Redis and a backend. After a key rotation the node accepts new tokens without a restart and still accepts
the old ones; a token's client gets the limits the store has now."""

from __future__ import annotations

import asyncio
import base64
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
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Route, Tier
from katas.api_gateway.services.auth_server import AuthorizationServer, register_client
from katas.api_gateway.tokens import TokenIssuer, TokenVerifier
from katas.infra.servers import RedisServer
from tests.integration.api_gateway.conftest import Follow, Serve, start_backend

ADMIN = "admin-secret-for-tests"
ISSUER, AUDIENCE = "http://auth.katas", "katas-gateway"


@dataclass
class Lab:
    auth: str
    gateway: str
    store: PostgresConfigStore


@pytest.fixture
async def lab(
    launch: Callable[[Any], Any],
    run_dir: Path,
    serve: Serve,
    config_store: PostgresConfigStore,
    follow: Follow,
) -> AsyncIterator[Lab]:
    redis_server = launch(RedisServer("redis", run_dir))
    orders = start_backend(launch, run_dir, "orders")
    redis = Redis.from_url(redis_server.url)
    await config_store.put_routes([Route(name="orders", prefix="/orders", backend="orders")])
    auth_url = await serve(
        AuthorizationServer(config_store, TokenIssuer(ISSUER, AUDIENCE, activate_after_s=6.0), ADMIN).app()
    )
    http = aiohttp.ClientSession()

    async def fetch_jwks() -> dict[str, Any]:
        async with http.get(f"{auth_url}/.well-known/jwks.json") as answer:
            answer.raise_for_status()
            body: dict[str, Any] = await answer.json()
            return body

    node = GatewayNode(
        NodeConfig({"orders": f"http://{orders.client_address}"}),
        Collaborators(
            RedisLimiter(redis), tokens=TokenVerifier(fetch_jwks, ISSUER, AUDIENCE, min_refresh_s=5.0)
        ),
        await follow(),
    )
    gateway_url = await serve(node.app())
    try:
        yield Lab(auth_url, gateway_url, config_store)
    finally:
        await http.close()
        await redis.aclose()


async def _token(auth: str, client_id: str, secret: str) -> tuple[int, dict[str, Any]]:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{auth}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        ) as answer,
    ):
        return answer.status, await answer.json()


async def _call(gateway: str, token: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway}/orders/echo", headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        return answer.status, await answer.json()


async def test_client_credentials_tokens_work_at_the_gateway_across_a_rotation(lab: Lab) -> None:
    secret = await register_client(lab.store, "billing-job", Tier.ENTERPRISE, Limit(rate=50, burst=20))
    status, issued = await _token(lab.auth, "billing-job", secret)
    assert status == 200
    assert issued["token_type"] == "Bearer"
    status, echo = await _call(lab.gateway, issued["access_token"])
    assert status == 200
    assert echo["headers"]["x-client"] == "billing-job"
    assert echo["headers"]["x-client-tier"] == "enterprise"
    assert "authorization" not in echo["headers"]

    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{lab.auth}/admin/rotate", headers={"Authorization": f"Bearer {ADMIN}"}) as answer,
    ):
        assert answer.status == 200
        new_kid = (await answer.json())["kid"]
    await asyncio.sleep(6.2)  # the new key signs once nodes could have fetched it
    _, rotated = await _token(lab.auth, "billing-job", secret)
    header = rotated["access_token"].split(".")[0]
    assert new_kid in base64.urlsafe_b64decode(header + "==").decode()
    assert (await _call(lab.gateway, rotated["access_token"]))[0] == 200, "the node learned the new key"
    assert (await _call(lab.gateway, issued["access_token"]))[0] == 200, "tokens from before still work"


async def test_refusals_follow_rfc_6749_and_6750(lab: Lab) -> None:
    await register_client(lab.store, "known", Tier.FREE, Limit(rate=5, burst=5))
    status, body = await _token(lab.auth, "known", "wrong-secret")
    assert (status, body["error"]) == (401, "invalid_client")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{lab.auth}/oauth/token", data={"grant_type": "password", "username": "u", "password": "p"}
        ) as answer,
    ):
        assert answer.status == 400
        assert (await answer.json())["error"] == "unsupported_grant_type"
    async with aiohttp.ClientSession() as http, http.post(f"{lab.auth}/admin/rotate") as answer:
        assert answer.status == 401
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{lab.gateway}/orders/echo", headers={"Authorization": "Bearer not.a.token"}) as answer,
    ):
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_token_clients_limits_come_from_the_store_not_the_token(lab: Lab) -> None:
    secret = await register_client(lab.store, "reporting", Tier.PRO, Limit(rate=50, burst=20))
    _, issued = await _token(lab.auth, "reporting", secret)
    headers = {"Authorization": f"Bearer {issued['access_token']}"}
    async with aiohttp.ClientSession(lab.gateway, headers=headers) as gw:
        async with gw.get("/orders/echo") as answer:
            assert answer.headers["RateLimit-Limit"] == "20"
        await lab.store.put_client("reporting", Tier.PRO, Limit(rate=5, burst=3))
        for _ in range(50):
            async with gw.get("/orders/echo") as answer:
                if answer.headers["RateLimit-Limit"] == "3":
                    break
            await asyncio.sleep(0.1)
        assert answer.headers["RateLimit-Limit"] == "3", "the same token, the store's new limit"
