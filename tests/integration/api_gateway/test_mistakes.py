"""The kata's six common mistakes, each switched on in a stack of its own (`katas up api_gateway --mistake
NAME`) and shown failing, next to the same situation on the stack without mistakes, which holds.

Stacks: the package's normal one; `local-rate-counters`, `auth-db-every-request` and `no-circuit-breaker`
together (they touch different parts of the request path); `config-needs-restart` with
`fail-closed-limiter`; `single-redis-limiter` alone. Redis and backend faults are undone before each test
ends, so the stacks stay usable for the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import psycopg
import pytest

from katas.infra.servers import PostgresServer, RedisServer, ServiceProcess
from katas.infra.stack import Stack
from tests.integration.api_gateway.conftest import admin_call, gateway_stack, new_client, node_metric


@pytest.fixture(scope="module")
def request_path_mistakes() -> Iterator[Stack]:
    with gateway_stack("local-rate-counters", "auth-db-every-request", "no-circuit-breaker") as stack:
        yield stack


@pytest.fixture(scope="module")
def restart_and_fail_closed() -> Iterator[Stack]:
    with gateway_stack("config-needs-restart", "fail-closed-limiter") as stack:
        yield stack


@pytest.fixture(scope="module")
def single_redis() -> Iterator[Stack]:
    with gateway_stack("single-redis-limiter") as stack:
        yield stack


async def _hammer(
    entry: str, api_key: str, seconds: float, path: str = "/orders/echo"
) -> tuple[Counter[int], float]:
    """Eight clients, a new connection per request (so all three nodes serve them), for `seconds`."""
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def one_client() -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(headers={"X-API-Key": api_key}, connector=connector) as http:
            while time.monotonic() < deadline:
                async with http.get(f"{entry}{path}") as answer:
                    statuses[answer.status] += 1

    started = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(8)))
    return statuses, time.monotonic() - started


async def _allowed_over_due(stack: Stack, name: str) -> float:
    endpoints = stack.endpoints()
    api_key = await new_client(endpoints, name, rate=20, burst=10)
    await asyncio.sleep(1.0)  # the probes used part of the burst
    statuses, elapsed = await _hammer(endpoints["gateway"], api_key, 3.0)
    due = 10 + 20 * elapsed
    print(f"{name}: allowed {statuses[200]} in {elapsed:.1f} s, the limit allows {due:.0f}")
    return statuses[200] / due


async def test_local_rate_counters_give_a_client_about_three_times_its_limit(
    request_path_mistakes: Stack, normal_stack: Stack
) -> None:
    assert await _allowed_over_due(request_path_mistakes, "spread-mistake") > 2.5, "each node counted alone"
    assert abs(await _allowed_over_due(normal_stack, "spread-normal") - 1) <= 0.05, "one shared count"


def _store_transactions(stack: Stack) -> int:
    config = stack["config"]
    assert isinstance(config, PostgresServer)
    with psycopg.connect(config.dsn) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'").fetchone()
    assert row is not None
    return int(row[0])


STATS_FLUSH_S = 11.0
"""PostgreSQL 15 publishes a backend's transaction counts at most once a second, and an idle backend's
within 10 s: wait that long before reading them."""


async def _requests_per_store_transaction(stacks: dict[str, Stack], requests: int = 400) -> dict[str, float]:
    """Store transactions per request on each stack, measured side by side so the stats wait is paid once."""
    keys = {
        name: await new_client(stack.endpoints(), name, rate=1000, burst=1000)
        for name, stack in stacks.items()
    }
    await asyncio.sleep(STATS_FLUSH_S)  # what the set-up did is counted before `before`
    before = {name: _store_transactions(stack) for name, stack in stacks.items()}
    for name, stack in stacks.items():
        async with aiohttp.ClientSession(headers={"X-API-Key": keys[name]}) as http:
            for _ in range(requests):
                async with http.get(f"{stack.endpoints()['gateway']}/orders/echo") as answer:
                    assert answer.status == 200
    await asyncio.sleep(STATS_FLUSH_S)
    ratios = {}
    for name, stack in stacks.items():
        used = _store_transactions(stack) - before[name]
        print(f"{name}: {requests} requests, {used} store transactions")
        ratios[name] = used / requests
    return ratios


async def test_auth_db_every_request_puts_the_store_on_the_request_path(
    request_path_mistakes: Stack, normal_stack: Stack
) -> None:
    ratios = await _requests_per_store_transaction(
        {"db-mistake": request_path_mistakes, "db-normal": normal_stack}
    )
    assert ratios["db-mistake"] >= 1.0, "one lookup per request"
    assert ratios["db-normal"] < 0.1, "keys come from memory"

    # And the store's outage becomes the API's: every request fails, where the normal stack keeps serving
    # (tests/chaos/api_gateway shows that side with the store killed).
    endpoints = request_path_mistakes.endpoints()
    api_key = await new_client(endpoints, "db-outage", rate=1000, burst=1000)
    request_path_mistakes["config"].kill()
    try:
        async with (
            aiohttp.ClientSession(headers={"X-API-Key": api_key}) as http,
            http.get(f"{endpoints['gateway']}/orders/echo") as answer,
        ):
            assert answer.status == 503
    finally:
        request_path_mistakes["config"].start()


async def _orders_p90_while_payments_hangs(stack: Stack, name: str) -> tuple[float, Counter[int]]:
    """Payments stops answering (SIGSTOP) while 150 requests wait on it; how slow does /orders get?"""
    endpoints = stack.endpoints()
    status, _ = await admin_call(
        endpoints, "PUT", "/limits/payments", {"limit_per_second": 10_000, "burst": 10_000}
    )
    assert status == 200
    api_key = await new_client(endpoints, name, rate=10_000, burst=10_000)
    payments = stack["payments"]
    assert isinstance(payments, ServiceProcess)
    connector = aiohttp.TCPConnector(limit=0)
    payment_statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(headers={"X-API-Key": api_key}, connector=connector) as http:

        async def pay() -> None:
            async with http.get(f"{endpoints['gateway']}/payments/items") as answer:
                payment_statuses[answer.status] += 1

        async def order() -> float:
            started = time.monotonic()
            async with http.get(f"{endpoints['gateway']}/orders/items/1") as answer:
                assert answer.status == 200
            return time.monotonic() - started

        payments.pause()
        try:
            for _ in range(15):  # the breaker, where there is one, opens on these
                await asyncio.gather(*(pay() for _ in range(10)))
            hanging = [asyncio.create_task(pay()) for _ in range(150)]
            await asyncio.sleep(0.3)
            orders = sorted(await asyncio.gather(*(order() for _ in range(60))))
            await asyncio.gather(*hanging)
        finally:
            payments.resume()
    p90 = orders[int(len(orders) * 0.9)]
    print(
        f"{name}: /orders P90 {p90 * 1000:.0f} ms while payments hung; payments answers {dict(payment_statuses)}"
    )
    return p90, payment_statuses


async def test_no_circuit_breaker_lets_a_hung_backend_drain_the_pool(
    request_path_mistakes: Stack, normal_stack: Stack
) -> None:
    p90, payments = await _orders_p90_while_payments_hangs(request_path_mistakes, "pool-mistake")
    assert p90 > 0.5, "requests to a healthy backend waited for connections the hung one held"
    assert 503 not in payments, "nothing ever cut the hung backend off"
    p90, payments = await _orders_p90_while_payments_hangs(normal_stack, "pool-normal")
    assert p90 < 0.5, "the healthy backend has its own pool"
    assert payments[503] > 0, "the breaker opened and answered at once"


async def _limit_on_every_node(endpoints: dict[str, Any], api_key: str) -> list[str]:
    limits = []
    async with aiohttp.ClientSession(headers={"X-API-Key": api_key}) as http:
        for node in endpoints["nodes"]:
            async with http.get(f"{node}/orders/echo") as answer:
                limits.append(answer.headers.get("RateLimit-Limit", ""))
    return limits


async def test_config_needs_restart_ignores_a_change_until_the_nodes_restart(
    restart_and_fail_closed: Stack, normal_stack: Stack
) -> None:
    for stack, name in ((normal_stack, "cfg-normal"), (restart_and_fail_closed, "cfg-mistake")):
        endpoints = stack.endpoints()
        if stack is normal_stack:
            api_key = await new_client(endpoints, name, rate=100, burst=50)
        else:  # with this mistake even a new key needs a restart: create it, restart the nodes once
            status, body = await admin_call(
                endpoints,
                "POST",
                f"/clients/{name}/keys",
                {"tier": "pro", "limit_per_second": 100, "burst": 50},
            )
            assert status == 201
            api_key = body["api_key"]
            for node in ("gw1", "gw2", "gw3"):
                stack[node].restart()
        assert await _limit_on_every_node(endpoints, api_key) == ["50"] * 3
        status, _ = await admin_call(
            endpoints, "PUT", f"/clients/{name}/limits", {"limit_per_second": 10, "burst": 5}
        )
        assert status == 200
        await asyncio.sleep(10)  # a third of the kata's 30 s: the normal stack needs well under 1 s
        limits = await _limit_on_every_node(endpoints, api_key)
        print(f"{name}: RateLimit-Limit on the three nodes 10 s after the change: {limits}")
        if stack is normal_stack:
            assert limits == ["5"] * 3
        else:
            assert limits == ["50"] * 3, "the change waits for a restart"
            stack["gw1"].restart()
            assert (await _limit_on_every_node(endpoints, api_key))[0] == "5", "a restart applies it"


async def _statuses_while_the_primary_is_down(
    stack: Stack, name: str, api_key: str | None = None
) -> tuple[Counter[int], float]:
    endpoints = stack.endpoints()
    api_key = api_key or await new_client(endpoints, name, rate=1000, burst=1000)
    primary = stack["redis"]
    assert isinstance(primary, RedisServer)
    primary.kill()
    try:
        statuses, _ = await _hammer(endpoints["gateway"], api_key, 6.0)
        fail_open_before = node_metric(endpoints, "gateway_limiter_fail_open_total")
        await _hammer(endpoints["gateway"], api_key, 2.0)
        still_failing_open = node_metric(endpoints, "gateway_limiter_fail_open_total") - fail_open_before
    finally:
        primary.start()  # comes back as a replica of the promoted one, or as the primary again
    print(f"{name}: answers while the Redis primary was down {dict(statuses)}; "
          f"decisions taken alone 6-8 s after the kill: {still_failing_open:.0f}")  # fmt: skip
    return statuses, still_failing_open


async def test_fail_closed_limiter_refuses_everyone_while_redis_fails_over(
    restart_and_fail_closed: Stack,
) -> None:
    enterprise = next(
        c for c in restart_and_fail_closed.endpoints()["demo_clients"] if c["tier"] == "enterprise"
    )
    # A demo client: its key was there when the nodes started (this stack also has `config-needs-restart`).
    statuses, _ = await _statuses_while_the_primary_is_down(
        restart_and_fail_closed, "closed-mistake", enterprise["api_key"]
    )
    assert statuses[503] > 0, "the gateway itself refused traffic because its limiter was away"
    # The normal stack answers every request while the primary is down: test_single_redis_limiter_...
    # below and tests/chaos/api_gateway show it.


async def test_single_redis_limiter_never_comes_back_while_sentinels_promote_the_replica(
    single_redis: Stack, normal_stack: Stack
) -> None:
    statuses, alone = await _statuses_while_the_primary_is_down(single_redis, "single-mistake")
    assert set(statuses) == {200}, "fail-open still serves"
    assert alone > 0, "nodes pinned to the dead primary decide alone long after the replica was promoted"
    statuses, alone = await _statuses_while_the_primary_is_down(normal_stack, "single-normal")
    assert set(statuses) == {200}, "the normal stack serves every request while the primary is down"
    assert alone == 0, "through the Sentinels the nodes found the promoted replica"
