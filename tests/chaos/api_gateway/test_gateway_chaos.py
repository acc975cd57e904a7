"""The API gateway under chaos: under steady open-loop load through the entry address, a gateway node,
the Redis primary, all of Redis, the configuration store and a backend (hung, then dead) fail in turn. Each
test says what users see and checks the kata's availability rules:

- a killed node costs only the requests it had in flight; the other two carry everything after it;
- the limiter's outage is never the API's: requests pass (fail-open) while each node keeps its share of
  every limit as a ceiling, and the shared limiter is back by itself once Redis is;
- with the configuration store down, nodes serve with what they hold; changes wait and then arrive;
- a hung backend costs its own route one timeout per breaker window, then fast 503s; a dead one fast
  502/503s; other routes see nothing, and the route heals by itself once the backend is back;
- with the broker down requests pass as before; their usage events wait in the nodes and are all counted
  once it is back.

One stack for the module; every test leaves it whole for the next.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from katas.api_gateway.load import GatewayTraffic, Sent, create_load_clients, until_accepted
from katas.infra.stack import Stack
from loadgen import ConstantRate, run_load
from tests.integration.api_gateway.conftest import admin_call, gateway_stack, new_client, node_metric

RATE = 120
"""Requests per second of the steady load: well inside what the stack serves on two cores."""
RECOVERY_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with gateway_stack() as running:
        yield running


@pytest.fixture(scope="module")
def endpoints(stack: Stack) -> dict[str, Any]:
    return stack.endpoints()


@pytest.fixture(scope="module")
def load_keys(endpoints: dict[str, Any]) -> list[str]:
    async def make() -> list[str]:
        keys = await create_load_clients(endpoints, count=4, prefix="chaos")
        await until_accepted(endpoints["gateway"], keys)
        return keys

    return asyncio.run(make())


async def _under_load(
    endpoints: dict[str, Any],
    keys: list[str],
    seconds: float,
    fault_at_s: float,
    fault: Callable[[GatewayTraffic], None],
) -> tuple[GatewayTraffic, float]:
    """Steady load for `seconds`; `fault(traffic so far)` runs (in a thread: launchers block) `fault_at_s`
    into it. Returns the traffic (with its timeline) and the monotonic time the fault was done."""
    async with GatewayTraffic(endpoints["gateway"], keys, connections=32, keep_timeline=True) as traffic:
        load = asyncio.create_task(run_load(ConstantRate(RATE, seconds), traffic, progress=False))
        await asyncio.sleep(fault_at_s)
        await asyncio.to_thread(fault, traffic)
        done_at = time.monotonic()
        await load
    return traffic, done_at


def _failures(timeline: list[Sent]) -> list[Sent]:
    return [sent for sent in timeline if not 200 <= sent.status < 300]


def _describe(timeline: list[Sent]) -> str:
    return ", ".join(
        f"{s or e}: {n}" for (s, e), n in sorted(Counter((t.status, t.error) for t in timeline).items())
    )


async def test_a_killed_node_costs_only_its_requests_in_flight(
    stack: Stack, endpoints: dict[str, Any], load_keys: list[str]
) -> None:
    killed: list[str] = []

    def kill_the_busiest(traffic: GatewayTraffic) -> None:
        killed.append(traffic.nodes.most_common(1)[0][0])  # keep-alive connections may leave a node idle
        stack[killed[0]].kill()

    traffic, killed_at = await _under_load(endpoints, load_keys, 8.0, 3.0, kill_the_busiest)
    victim = stack[killed[0]]
    failed = _failures(traffic.timeline)
    print(f"{killed[0]} killed: {len(traffic.timeline)} requests, users saw {_describe(traffic.timeline)}")
    assert all(f.started <= killed_at + 0.1 for f in failed), "only requests sent around the kill failed"
    assert all(f.finished >= killed_at - 0.5 for f in failed), "...and only those still in flight"
    assert len(failed) <= 32, "at most one request per connection the node held"
    after = [s for s in traffic.timeline if s.started > killed_at + 0.2]
    assert after, "load went on after the kill"
    assert all(s.status == 200 for s in after), "the other two nodes carried everything after it"

    victim.start()
    served: Counter[str] = Counter()
    async with aiohttp.ClientSession(headers={"X-API-Key": load_keys[0]}) as http:
        for _ in range(9):
            async with http.get(
                f"{endpoints['gateway']}/orders/echo", headers={"Connection": "close"}
            ) as answer:
                served[answer.headers["X-Gateway-Node"]] += 1
    assert served[killed[0]] > 0, "the restarted node takes its share again"


async def _shared_again(endpoints: dict[str, Any], api_key: str, within_s: float) -> float:
    """Seconds until the nodes stop deciding alone (their fail-open counter stays still for 1 s)."""
    started = time.monotonic()
    async with aiohttp.ClientSession(headers={"X-API-Key": api_key}) as http:
        while True:
            before = node_metric(endpoints, "gateway_limiter_fail_open_total")
            for _ in range(30):
                async with http.get(f"{endpoints['gateway']}/orders/echo", headers={"Connection": "close"}):
                    pass
            await asyncio.sleep(0.5)
            if node_metric(endpoints, "gateway_limiter_fail_open_total") == before:
                return time.monotonic() - started
            assert time.monotonic() - started < within_s, "the shared limiter did not come back in time"


async def test_the_redis_primary_killed_no_request_fails_and_limits_come_back_shared(
    stack: Stack, endpoints: dict[str, Any], load_keys: list[str]
) -> None:
    primary = stack["redis"]
    traffic, killed_at = await _under_load(endpoints, load_keys, 6.0, 1.0, lambda _: primary.kill())
    print(f"Redis primary killed: users saw {_describe(traffic.timeline)}")
    assert not _failures(traffic.timeline), "fail-open: the limiter's outage is not the API's"
    back = await _shared_again(endpoints, load_keys[0], RECOVERY_LIMIT_S)
    print(
        f"shared limiting again {time.monotonic() - killed_at:.1f} s after the kill (checked for {back:.1f} s)"
    )
    primary.start()  # rejoins as a replica of the promoted one


async def test_all_redis_down_requests_pass_and_each_node_keeps_its_share_as_a_ceiling(
    stack: Stack, endpoints: dict[str, Any], load_keys: list[str]
) -> None:
    api_key = await new_client(endpoints, "ceiling", rate=30, burst=12)
    redis_servers = [stack["redis"], stack["redis-replica"]]

    def kill_all(_: GatewayTraffic) -> None:
        for server in redis_servers:
            server.kill()

    try:
        traffic, _ = await _under_load(endpoints, load_keys, 4.0, 0.5, kill_all)
        print(f"all Redis killed: users saw {_describe(traffic.timeline)}")
        assert not _failures(traffic.timeline)

        statuses: Counter[int] = Counter()
        connector = aiohttp.TCPConnector(force_close=True)
        started = time.monotonic()
        async with aiohttp.ClientSession(headers={"X-API-Key": api_key}, connector=connector) as http:
            while time.monotonic() - started < 3.0:
                async with http.get(f"{endpoints['gateway']}/orders/echo") as answer:
                    statuses[answer.status] += 1
        elapsed = time.monotonic() - started
        due = 12 + 30 * elapsed
        print(
            f"a client at 30/s (burst 12) without Redis: allowed {statuses[200]}, the limit allows {due:.0f}"
        )
        assert statuses[429] > 0, "a ceiling still holds"
        assert 0.75 * due <= statuses[200] <= 1.3 * due, "three nodes with a third of the limit each"
    finally:
        for server in redis_servers:
            server.start()
    await _shared_again(endpoints, load_keys[0], 20.0)


async def test_config_store_down_nodes_serve_with_what_they_hold(
    stack: Stack, endpoints: dict[str, Any], load_keys: list[str]
) -> None:
    store = stack["config"]
    try:
        traffic, _ = await _under_load(endpoints, load_keys, 5.0, 1.0, lambda _: store.kill())
        print(f"configuration store killed: users saw {_describe(traffic.timeline)}")
        assert not _failures(traffic.timeline)
        status, _ = await admin_call(
            endpoints, "PUT", "/clients/chaos-00/limits", {"limit_per_second": 10, "burst": 5}
        )
        assert status == 503, "the admin API says it cannot change anything"
    finally:
        store.start()
    restarted = time.monotonic()
    for _ in range(100):
        status, _ = await admin_call(endpoints, "GET", "/clients/chaos-00")
        if status == 200:
            break
        await asyncio.sleep(0.2)
    await new_client(
        endpoints, "after-the-store-came-back", rate=10, burst=5
    )  # waits until every node has it
    print(f"a new key worked on every node {time.monotonic() - restarted:.1f} s after the store restarted")
    assert time.monotonic() - restarted < 30


async def _probe(
    endpoints: dict[str, Any], key: str, path: str, seconds: float, *, clients: int = 1, pause_s: float = 0.0
) -> list[tuple[float, int, float]]:
    """(seconds since start, status, latency) of requests to `path` for `seconds`, from `clients` clients
    each sending one request at a time, `pause_s` apart."""
    seen: list[tuple[float, int, float]] = []
    started = time.monotonic()

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() - started < seconds:
            sent = time.monotonic()
            async with http.get(f"{endpoints['gateway']}{path}") as answer:
                seen.append((sent - started, answer.status, time.monotonic() - sent))
            await asyncio.sleep(pause_s)

    async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return sorted(seen)


async def test_a_hung_backend_costs_its_route_a_timeout_then_fast_503s(
    stack: Stack, endpoints: dict[str, Any], load_keys: list[str]
) -> None:
    payments = stack["payments"]
    enterprise = next(c for c in endpoints["demo_clients"] if c["tier"] == "enterprise")["api_key"]
    payments.pause()
    try:
        # Fifteen callers keep about ten requests a second on payments (its route allows 20/s per client):
        # each node's breaker needs ten failures among its last twenty calls to open.
        traffic, probes = await asyncio.gather(
            _under_load(endpoints, load_keys, 12.0, 0.0, lambda _: None),
            _probe(endpoints, enterprise, "/payments/items", 12.0, clients=15, pause_s=1.0),
        )
    finally:
        payments.resume()
    statuses = Counter(status for _, status, _ in probes)
    print(f"payments hung: /payments answers {dict(statuses)}; the rest saw {_describe(traffic[0].timeline)}")
    assert not _failures(traffic[0].timeline), "other routes are not affected"
    assert statuses[504] >= 1
    fast_503 = [latency for _, status, latency in probes if status == 503]
    assert fast_503, "the breaker opened"
    assert max(fast_503) < 0.5, "an open breaker answers at once"
    healed = await _probe(endpoints, enterprise, "/payments/items", RECOVERY_LIMIT_S)
    first_ok = next((t for t, status, _ in healed if status == 200), None)
    assert first_ok is not None, "the route healed by itself (half-open probe)"
    print(f"payments answered again {first_ok:.1f} s after it resumed")


async def test_a_dead_backend_gets_fast_refusals_and_heals_when_it_is_back(
    stack: Stack, endpoints: dict[str, Any], load_keys: list[str]
) -> None:
    catalog = stack["catalog"]
    traffic, _ = await _under_load(endpoints, load_keys, 6.0, 1.0, lambda _: catalog.kill())
    failed = _failures(traffic.timeline)
    print(f"catalog killed: users saw {_describe(traffic.timeline)}")
    assert {f.status for f in failed} <= {502, 503}, "clear answers, no hangs, no resets"
    catalog_share = 2 / 8  # two of the eight requests of the mix go to catalog
    assert len(failed) <= catalog_share * len(traffic.timeline) + 5, "only catalog's requests failed"
    catalog.start()
    enterprise = next(c for c in endpoints["demo_clients"] if c["tier"] == "enterprise")["api_key"]
    healed = await _probe(endpoints, enterprise, "/catalog/items", RECOVERY_LIMIT_S)
    assert any(status == 200 for _, status, _ in healed), "catalog answers again through the gateway"


async def test_the_broker_down_requests_pass_and_their_usage_arrives_once_it_is_back(
    stack: Stack, endpoints: dict[str, Any]
) -> None:
    api_key = await new_client(endpoints, "metered-through-an-outage", rate=1000, burst=1000)
    broker = stack["kafka"]
    statuses: Counter[int] = Counter()
    broker.kill()
    try:
        async with aiohttp.ClientSession(headers={"X-API-Key": api_key}) as http:
            for _ in range(50):
                async with http.get(f"{endpoints['gateway']}/orders/items/1") as answer:
                    statuses[answer.status] += 1
    finally:
        broker.start()
    print(f"broker killed: users saw {dict(statuses)}")
    assert statuses == Counter({200: 50}), "usage events wait in each node's buffer, requests do not"
    restarted = time.monotonic()
    admin = {"Authorization": f"Bearer {endpoints['admin_token']}"}
    expected = 50 + len(endpoints["nodes"])  # and new_client's probes, one per node
    async with aiohttp.ClientSession(headers=admin) as http:
        while True:
            async with http.get(
                f"{endpoints['usage']}/usage", params={"client": "metered-through-an-outage"}
            ) as a:
                counted = sum(row["requests"] for row in (await a.json())["minutes"])
            if counted == expected:
                break
            assert time.monotonic() - restarted < 90, f"usage counted {counted} of {expected} after 90 s"
            await asyncio.sleep(1.0)
    print(f"every usage event was counted {time.monotonic() - restarted:.1f} s after the broker restarted")
