"""The limiter's Redis fails over: primary + replica + three Sentinels (the lab's launchers), nodes that
find the primary through the Sentinels, the primary killed under load. Shows that the nodes fail open to
their share during the failover, come back to the shared limiter by themselves, and that a client's
counters survive the failover (as far as replication had carried them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from katas.api_gateway.adapters.redis_limiter import RedisLimiter
from katas.api_gateway.adapters.sentinel import primary_via_sentinels
from katas.api_gateway.ratelimit import (
    FailOpenLimiter,
    Limit,
    LimitedKey,
    LimiterUnavailableError,
    LocalLimiter,
    Scope,
)
from katas.infra.ports import LOOPBACK
from katas.infra.servers import RedisSentinel, RedisServer

NODES = 3
SLOW = [LimitedKey(Scope.CLIENT, Limit(rate=0.1, burst=2), "slow-client")]
"""Two requests, then one per 10 s: whether it is still limited after the failover shows what survived."""
BUSY = [LimitedKey(Scope.CLIENT, Limit(rate=200, burst=40), "busy-client")]


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.1)
    return time.monotonic() - started


def _replication_lag_bytes(port: int, seconds: float) -> list[int]:
    """How far the replica's replication offset trails the primary's, sampled every 20 ms: what a kill
    at that moment would lose of the counters."""
    client = redis.Redis(port=port)
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = client.info("replication")
        replica = info.get("slave0")
        if isinstance(replica, dict):
            samples.append(int(info["master_repl_offset"]) - int(replica["offset"]))
        time.sleep(0.02)
    return samples


def test_the_limiter_survives_a_primary_kill(launch: Callable[[Any], Any], run_dir: Path) -> None:
    primary = launch(RedisServer("redis", run_dir))
    replica = launch(RedisServer("redis-replica", run_dir, replica_of=primary))
    sentinels = [launch(RedisSentinel(f"sentinel-{i}", run_dir, primary=primary)) for i in (1, 2, 3)]
    watcher = redis.Redis(port=sentinels[0].port)
    _wait(lambda: len(watcher.sentinel_sentinels("katas")) == 2, 15, "the sentinels finding each other")
    addresses = [(LOOPBACK, s.port) for s in sentinels]

    async def scenario() -> dict[str, Any]:
        clients = [primary_via_sentinels(addresses) for _ in range(NODES)]
        degraded_events: list[float] = []
        nodes = [
            FailOpenLimiter(
                RedisLimiter(c),
                LocalLimiter(share=1 / NODES),
                lambda e: degraded_events.append(time.monotonic()),
            )
            for c in clients
        ]
        # The slow client spends its burst; the write is replicated before the kill (WAIT).
        spent = [await nodes[0].check(SLOW) for _ in range(3)]
        await clients[0].execute_command("WAIT", 1, 2000)
        decisions: list[tuple[float, bool, bool]] = []
        stop = asyncio.Event()

        async def node_loop(node: FailOpenLimiter) -> None:
            while not stop.is_set():
                d = await node.check(BUSY)
                decisions.append((time.monotonic(), d.allowed, d.degraded))
                await asyncio.sleep(0.002)

        loops = [asyncio.create_task(node_loop(n)) for n in nodes]
        behind = await asyncio.to_thread(_replication_lag_bytes, primary.port, 1.0)
        killed_at = time.monotonic()
        await asyncio.to_thread(primary.kill)

        def back_on_the_shared_limiter() -> bool:
            first_degraded = next((t for t, _, deg in decisions if deg), None)
            return first_degraded is not None and any(
                t > first_degraded and not deg for t, _, deg in decisions[-50:]
            )

        recovered = await asyncio.to_thread(_wait, back_on_the_shared_limiter, 45, "recovery")
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*loops)
        after = None
        for _ in range(40):  # every node's pool finds the new primary by itself, some a little later
            try:
                after = await RedisLimiter(clients[0]).check(SLOW)
                break
            except LimiterUnavailableError:
                await asyncio.sleep(0.25)
        assert after is not None, "node 0 never reached the new primary"
        for c in clients:
            await c.aclose()
        return {"spent": spent, "after": after, "decisions": decisions, "killed_at": killed_at,
                "recovered_s": recovered, "degraded": len(degraded_events), "behind": behind}  # fmt: skip

    outcome = asyncio.run(scenario())
    assert [d.allowed for d in outcome["spent"]] == [True, True, False]
    assert not outcome["after"].allowed, "the slow client's spent burst survived the failover"
    assert not outcome["after"].degraded
    assert outcome["degraded"] > 0, "the nodes failed open while there was no primary"
    during = [(t, ok) for t, ok, deg in outcome["decisions"] if deg]
    assert all(t >= outcome["killed_at"] for t, _ in during)
    span = during[-1][0] - during[0][0]
    limit = BUSY[0].limit
    ceiling = NODES * -(-limit.burst // NODES) + limit.rate * span
    assert sum(ok for _, ok in during) <= 1.1 * ceiling, "failing open still keeps the nodes' shares"
    assert redis.Redis(port=replica.port).info("replication")["role"] == "master"
    behind = outcome["behind"]
    assert behind, "the replica's offset was sampled under load"
    print(
        f"replication under load: the replica was at most {max(behind)} bytes behind the primary "
        f"(median {sorted(behind)[len(behind) // 2]}, {len(behind)} samples); "
        f"failover: shared limiter back {outcome['recovered_s']:.1f} s after the kill; "
        f"{len(during)} decisions made by the nodes alone meanwhile ({sum(ok for _, ok in during)} allowed)"
    )
