"""The shared rate limiter on a real Redis: three gateway nodes hammering one client together are held to
one limit within 5 %, where per-node counters (the `local-rate-counters` mistake) give about three times
it; idle keys expire; and a Redis outage fails open to each node's share, then recovers by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from katas.api_gateway.adapters.redis_limiter import RedisLimiter
from katas.api_gateway.ratelimit import (
    FailOpenLimiter,
    Limit,
    LimitedKey,
    LimiterUnavailableError,
    LocalLimiter,
    Scope,
    SharedLimiter,
)
from katas.infra.servers import RedisServer

NODES = 3
LIMIT = Limit(rate=200, burst=40)
SPAN_S = 3.0
KEYS = [LimitedKey(Scope.CLIENT, LIMIT, "acme")]


@pytest.fixture
def redis_server(launch: Callable[[Any], Any], run_dir: Path) -> RedisServer:
    server: RedisServer = launch(RedisServer("redis", run_dir))
    return server


async def _hammer(limiters: list[SharedLimiter], span_s: float) -> tuple[int, int, float]:
    """Every node sends as fast as it can for `span_s`; (allowed, sent, seconds from first to last)."""
    allowed = sent = 0
    started = time.monotonic()

    async def node(limiter: SharedLimiter) -> None:
        nonlocal allowed, sent
        while time.monotonic() - started < span_s:
            decision = await limiter.check(KEYS)
            sent += 1
            allowed += decision.allowed
            await asyncio.sleep(0)  # a local limiter never waits: let the other nodes run too

    await asyncio.gather(*(node(limiter) for limiter in limiters))
    return allowed, sent, time.monotonic() - started


def test_three_nodes_share_one_limit_within_five_percent(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[int, int, float]:
        clients = [Redis.from_url(redis_server.url) for _ in range(NODES)]
        try:
            return await _hammer([RedisLimiter(client) for client in clients], SPAN_S)
        finally:
            for client in clients:
                await client.aclose()

    allowed, sent, elapsed = asyncio.run(scenario())
    expected = LIMIT.burst + LIMIT.rate * elapsed
    print(f"{NODES} nodes: allowed {allowed} of {sent} in {elapsed:.2f} s; the limit allows {expected:.0f}")
    assert sent > 2 * expected, "the nodes must offer well above the limit for this to prove anything"
    assert abs(allowed - expected) <= 0.05 * expected, f"allowed {allowed} of {sent}, expected {expected:.0f}"


def test_per_node_counters_give_a_client_about_n_times_its_limit() -> None:
    # The mistake the shared limiter avoids (switch `local-rate-counters`): each node counts on its own.
    allowed, _, elapsed = asyncio.run(_hammer([LocalLimiter() for _ in range(NODES)], 1.0))
    expected = LIMIT.burst + LIMIT.rate * elapsed
    assert allowed > (NODES - 0.5) * expected


def test_an_idle_key_expires_once_its_burst_is_back(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[int, int]:
        async with Redis.from_url(redis_server.url) as client:
            limiter = RedisLimiter(client)
            await limiter.check([LimitedKey(Scope.CLIENT, Limit(rate=10, burst=5), "idle")])
            ttl_ms = await client.pttl(limiter.key(LimitedKey(Scope.CLIENT, LIMIT, "idle")))
            await asyncio.sleep(0.3)
            left = await client.exists(limiter.key(LimitedKey(Scope.CLIENT, LIMIT, "idle")))
            return ttl_ms, left

    ttl_ms, left = asyncio.run(scenario())
    assert 0 < ttl_ms <= 100, "one request of 10/s is given back within 100 ms"
    assert left == 0


def test_a_redis_outage_fails_open_to_each_nodes_share_and_recovers(redis_server: RedisServer) -> None:
    unavailable: list[LimiterUnavailableError] = []

    async def scenario() -> tuple[int, int, bool, bool]:
        async with Redis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
            node = FailOpenLimiter(RedisLimiter(client), LocalLimiter(share=1 / NODES), unavailable.append)
            healthy = await node.check(KEYS)
            redis_server.kill()
            during = [await node.check(KEYS) for _ in range(100)]
            await asyncio.to_thread(redis_server.start)
            after = await node.check(KEYS)
            return (
                sum(d.allowed for d in during),
                sum(d.degraded for d in during),
                healthy.degraded,
                after.degraded,
            )

    allowed, degraded, first_degraded, after_degraded = asyncio.run(scenario())
    assert not first_degraded
    assert degraded == 100, "every decision during the outage is the node's own"
    assert len(unavailable) == 100
    share_of_burst = -(-LIMIT.burst // NODES)
    assert share_of_burst <= allowed <= share_of_burst + 5, "open, but only up to this node's share"
    assert not after_degraded, "back on the shared limiter once Redis is back"
