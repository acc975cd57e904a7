"""Mutual TLS at a gateway node: certificates from the CA the stack generates identify clients; a
certificate from another CA fails the handshake; API keys still work on the same TLS port."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from katas.api_gateway.adapters.redis_limiter import RedisLimiter
from katas.api_gateway.config import Client, ConfigHolder, GatewayConfig
from katas.api_gateway.node import Collaborators, GatewayNode, NodeConfig
from katas.api_gateway.pki import Pki, client_context, create_ca, issue, server_context
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Route, Tier
from katas.infra.ports import LOOPBACK
from katas.infra.servers import RedisServer
from tests.integration.api_gateway.conftest import Serve, start_backend


@dataclass
class Lab:
    url: str
    pki: Pki
    api_key: str


@pytest.fixture
async def lab(launch: Callable[[Any], Any], run_dir: Path, serve: Serve) -> AsyncIterator[Lab]:
    redis_server = launch(RedisServer("redis", run_dir))
    orders = start_backend(launch, run_dir, "orders")
    pki = create_ca(run_dir / "pki")
    server_cert, server_key = issue(pki, "gateway", server_names=(LOOPBACK, "localhost"))
    redis = Redis.from_url(redis_server.url)
    api_key = "gwk_a-key-for-the-mtls-test"
    config = GatewayConfig.of(
        [Route(name="orders", prefix="/orders", backend="orders")],
        [Client("partner-bank", Tier.ENTERPRISE, Limit(rate=100, burst=50)),
         Client("keyed", Tier.FREE, Limit(rate=10, burst=10))],
        {api_key: "keyed"},
    )  # fmt: skip
    node = GatewayNode(
        NodeConfig({"orders": f"http://{orders.client_address}"}),
        Collaborators(RedisLimiter(redis)),
        ConfigHolder(config),
    )
    url = await serve(node.app(), server_context(pki, server_cert, server_key))
    try:
        yield Lab(url, pki, api_key)
    finally:
        await redis.aclose()


async def _get(lab: Lab, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(ssl=context)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(f"{lab.url}/orders/echo", headers=headers or {}) as answer,
    ):
        return answer.status, await answer.json()


async def test_a_client_certificate_from_the_stacks_ca_identifies_the_client(lab: Lab) -> None:
    cert, key = issue(lab.pki, "partner-bank")
    status, echo = await _get(lab, client_context(lab.pki, cert, key))
    assert status == 200
    assert echo["headers"]["x-client"] == "partner-bank"
    assert echo["headers"]["x-client-tier"] == "enterprise"


async def test_unknown_or_missing_certificates_are_refused(lab: Lab, tmp_path: Path) -> None:
    cert, key = issue(lab.pki, "not-registered")
    assert (await _get(lab, client_context(lab.pki, cert, key)))[0] == 401
    assert (await _get(lab, client_context(lab.pki)))[0] == 401, "no certificate, no key: 401"
    assert (await _get(lab, client_context(lab.pki), {"X-API-Key": lab.api_key}))[0] == 200

    stranger_ca = create_ca(tmp_path / "other-ca", "Somebody else's CA")
    foreign_cert, foreign_key = issue(stranger_ca, "partner-bank")
    with pytest.raises(aiohttp.ClientError):
        await _get(lab, client_context(lab.pki, foreign_cert, foreign_key))
