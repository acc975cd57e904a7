"""One gateway node on real servers: backend processes, Redis for limits, the node on loopback with its
configuration in memory (how the store keeps it current is tests/integration/api_gateway/test_admin.py).

Shows the request path end to end: 401 without a key, routing with the reason for a refusal, credentials
kept from backends, internal fields stripped, a legacy backend's XML as JSON, 429 with Retry-After and
RateLimit headers, a backend timeout as 504, and a dead backend's circuit opening so the gateway answers
503 at once instead of waiting on it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from katas.api_gateway.adapters.redis_limiter import RedisLimiter
from katas.api_gateway.breaker import CircuitBreaker
from katas.api_gateway.config import Client, ConfigHolder, GatewayConfig, key_hash, new_api_key
from katas.api_gateway.node import Collaborators, GatewayNode, NodeConfig
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Conversion, Route, Tier
from katas.infra.ports import LOOPBACK
from katas.infra.proxy import ChaosProxy
from katas.infra.servers import RedisServer, ServiceProcess
from tests.integration.api_gateway.conftest import Serve, start_backend

ROUTES = (
    [
        Route(name="orders", prefix="/orders", backend="orders", strip_fields=frozenset({"_internal", "cost_cents"}),
              add_response_headers={"Cache-Control": "no-store"}),
        Route(name="invoices", prefix="/billing/invoices", backend="invoices", upstream_prefix="/invoices",
              conversion=Conversion.XML_TO_JSON, strip_fields=frozenset({"cost_cents", "internal"})),
        Route(name="slow", prefix="/payments", backend="payments", timeout_s=0.5),
        Route(name="reports", prefix="/reports", backend="orders", tiers=frozenset({Tier.ENTERPRISE})),
    ]
)  # fmt: skip


@dataclass
class Lab:
    url: str
    held: ConfigHolder
    payments: ServiceProcess
    breakers: dict[str, CircuitBreaker]
    payments_path: ChaosProxy
    """The network path to the payments backend, which chaos can slow down."""

    def client(self, name: str, tier: Tier, limit: Limit) -> str:
        """A new client with a new key, as the configuration store would hand it to the node."""
        api_key, current = new_api_key(), self.held.current
        self.held.apply(
            dataclasses.replace(
                current,
                version=current.version + 1,
                clients={**current.clients, name: Client(name, tier, limit)},
                key_owners={**current.key_owners, key_hash(api_key): name},
            )
        )
        return api_key


@pytest.fixture
def servers(launch: Callable[[Any], Any], run_dir: Path) -> dict[str, Any]:
    found: dict[str, Any] = {"redis": launch(RedisServer("redis", run_dir))}
    for name in ("orders", "invoices", "payments"):
        found[name] = start_backend(launch, run_dir, name)
    return found


@pytest.fixture
async def lab(servers: dict[str, Any], serve: Serve) -> AsyncIterator[Lab]:
    redis = Redis.from_url(servers["redis"].url)
    held = ConfigHolder(GatewayConfig.of(ROUTES, endpoint_limits={"orders": Limit(rate=5, burst=3)}))
    breakers: dict[str, CircuitBreaker] = {}
    payments_path = ChaosProxy("payments", (LOOPBACK, servers["payments"].port))
    payments_path.start()
    backends = {n: f"http://{servers[n].client_address}" for n in ("orders", "invoices")}
    backends["payments"] = f"http://{payments_path.address}"
    node = GatewayNode(NodeConfig(backends), Collaborators(RedisLimiter(redis), breakers=breakers), held)
    url = await serve(node.app())
    try:
        yield Lab(url, held, servers["payments"], breakers, payments_path)
    finally:
        await redis.aclose()
        payments_path.stop()


async def test_the_request_path_end_to_end(lab: Lab) -> None:
    key = lab.client("acme", Tier.PRO, Limit(rate=100, burst=50))
    async with aiohttp.ClientSession(lab.url, headers={"X-API-Key": key}) as gw:
        async with gw.get("/orders/items/1") as answer:
            body = await answer.json()
            assert answer.status == 200
            assert "cost_cents" not in body
            assert "_internal" not in body
            assert body["price_cents"] == 100
            assert answer.headers["Cache-Control"] == "no-store"
            assert answer.headers["RateLimit-Limit"] == "3"  # the orders route's own, tighter limit
        async with gw.post("/orders/echo", data=b"x", headers={"Authorization": "Bearer secret"}) as answer:
            seen = (await answer.json())["headers"]
            assert seen["x-client"] == "acme"
            assert seen["x-client-tier"] == "pro"
            assert "x-api-key" not in seen, "credentials stop at the gateway"
            assert "authorization" not in seen
        async with gw.get("/billing/invoices/items/2") as answer:
            assert answer.status == 200
            assert answer.content_type == "application/json"
            assert (await answer.json())["item"]["@id"] == "2"
        for path, status in (("/nowhere", 404), ("/reports/x", 403)):
            async with gw.get(path) as answer:
                assert answer.status == status
                assert "error" in await answer.json()

    async with aiohttp.ClientSession(lab.url) as anonymous:
        for headers in ({}, {"X-API-Key": "gwk_not-a-key"}):
            async with anonymous.get("/orders/items", headers=headers) as answer:
                assert answer.status == 401


async def test_a_client_over_its_limit_gets_429_with_retry_after(lab: Lab) -> None:
    key = lab.client("burst", Tier.FREE, Limit(rate=100, burst=50))
    async with aiohttp.ClientSession(lab.url, headers={"X-API-Key": key}) as gw:
        statuses = []
        for _ in range(6):
            async with gw.get("/orders/items") as answer:
                statuses.append(answer.status)
                last = answer
        assert statuses[:3] == [200, 200, 200]
        assert 429 in statuses[3:]
        assert last.headers["Retry-After"] == "1"
        assert last.headers["RateLimit-Remaining"] == "0"


async def test_a_dead_backend_opens_its_circuit_and_is_refused_at_once(lab: Lab) -> None:
    key = lab.client("ops", Tier.PRO, Limit(rate=1000, burst=500))
    lab.payments.kill()
    async with aiohttp.ClientSession(lab.url, headers={"X-API-Key": key}) as gw:
        statuses = []
        for _ in range(14):
            async with gw.get("/payments/items") as answer:
                statuses.append(answer.status)
        assert statuses[0] == 502
        assert statuses[-1] == 503, statuses
        assert lab.breakers["payments"].state == "open"
        async with gw.get("/payments/items") as answer:
            assert answer.headers["Retry-After"]
        async with gw.get("/orders/items/1") as answer:
            assert answer.status == 200, "other backends are not affected"


async def test_a_slow_backend_answers_504_within_the_routes_timeout(lab: Lab) -> None:
    key = lab.client("patient", Tier.PRO, Limit(rate=1000, burst=500))
    lab.payments_path.delay(400)  # each direction: a round trip takes about 0.8 s, the route allows 0.5 s
    async with aiohttp.ClientSession(lab.url, headers={"X-API-Key": key}) as gw:
        started = time.monotonic()
        async with gw.get("/payments/items") as answer:
            assert answer.status == 504
            assert "did not answer within 0.5 s" in (await answer.json())["error"]
        assert time.monotonic() - started < 2, "the gateway gave up at the route's timeout, not later"
        lab.payments_path.restore()
        async with gw.get("/payments/items") as answer:
            assert answer.status == 200
