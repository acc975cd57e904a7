"""The usage analytics pipeline on real servers: gateway nodes' recorders -> tansu (on s3rver) -> the
aggregator service -> chDB -> the usage API service.

Recorders run in the test process, as they run inside a node; the aggregator and the usage API run as the
stack runs them, as service processes. Counts must come out exact (across two nodes, a flush at stop,
redelivered duplicates and a broker outage), percentiles within one rank of the exact value."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client import REGISTRY

from katas.api_gateway.adapters.usage_events import UsageRecorder
from katas.api_gateway.adapters.usage_store import UsageStore
from katas.api_gateway.analytics import UsageEvent, UsageWindow, minute_of, minute_text
from katas.api_gateway.node import Served
from katas.api_gateway.settings import gateway_settings
from katas.infra import kafka
from katas.infra.clickhouse import ClickHouse
from katas.infra.servers import ChdbStore, S3rverServer, Server, ServiceProcess, TansuBroker
from katas.infra.settings import infra_settings

pytestmark = pytest.mark.integration

TOKEN = "usage-test-admin-token-0123456789"
TOPIC = "gateway.usage"
T = TypeVar("T")
Launch = Callable[[Any], Any]


@dataclass
class Pipeline:
    broker: TansuBroker
    chdb: ChdbStore
    aggregator: ServiceProcess
    api: ServiceProcess

    def http(self, token: str | None = TOKEN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.api.endpoint, headers=headers, timeout=30)


def _use(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    infra_settings.cache_clear()
    gateway_settings.cache_clear()


# `run_dir` before `launch`, here and below: fixtures are torn down in reverse, so the servers stop before
# their folders are removed (the other way round the aggregator hangs in its final commit and is killed).
@pytest.fixture
def pipeline(run_dir: Path, launch: Launch, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    s3: S3rverServer = launch(S3rverServer("s3", run_dir))
    broker: TansuBroker = launch(TansuBroker("kafka", run_dir, object_store=s3))
    chdb: ChdbStore = launch(ChdbStore("chdb", run_dir))
    env = {**broker.client_env(), **chdb.client_env(), "GW_ADMIN_TOKEN": TOKEN, "GW_USAGE_TOPIC": TOPIC}
    _use(env, monkeypatch)
    aggregator = launch(
        ServiceProcess("aggregator", run_dir, module="katas.api_gateway.services.aggregator", env=env)
    )
    api = launch(ServiceProcess("usage", run_dir, module="katas.api_gateway.services.usage_api", env=env))
    yield Pipeline(broker, chdb, aggregator, api)
    infra_settings.cache_clear()
    gateway_settings.cache_clear()


class Node:
    """A recorder with its worker running, as in a gateway node."""

    def __init__(self, recorder: UsageRecorder) -> None:
        self.recorder = recorder
        self.halt = asyncio.Event()
        self.task = asyncio.create_task(recorder.run(self.halt))

    async def stop(self) -> None:
        self.halt.set()
        await asyncio.wait_for(self.task, 30)


StartNode = Callable[[UsageRecorder], Node]


@pytest.fixture
async def nodes() -> AsyncIterator[StartNode]:
    """`node = nodes(recorder)`: the recorder's worker runs until `node.stop()` or the test's end."""
    started: list[Node] = []

    def start(recorder: UsageRecorder) -> Node:
        started.append(Node(recorder))
        return started[-1]

    yield start
    for node in started:
        if not node.task.done():
            await node.stop()


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = await check()
        except httpx.HTTPError as exc:  # a service still starting or catching up: ask again
            last = exc
        else:
            if result:
                return result
            last = result
        await asyncio.sleep(0.5)
    pytest.fail(f"{what} did not happen within {timeout_s} s (last: {last!r})")


async def usage(http: httpx.AsyncClient, client: str, start: int, end: int) -> dict[str, Any]:
    answer = await http.get(
        "/usage", params={"client": client, "from": minute_text(start), "to": minute_text(end)}
    )
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(service: Server, name: str) -> float:
    lines = httpx.get(f"{service.endpoint}/metrics", timeout=5).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name + " "))


def within_one_rank(estimate: float, values: list[float], q: float) -> bool:
    """The t-digest's answer lies between the neighbours of the exact q-quantile's ranks."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = ordered[max(0, int(rank) - 1)]
    high = ordered[min(len(ordered) - 1, int(rank) + 2)]
    return low - 1e-6 <= estimate <= high + 1e-6


# ------------------------------------------------------------------------------------ the happy path
async def test_counts_and_percentiles_per_client_route_and_minute(
    pipeline: Pipeline, nodes: StartNode
) -> None:
    first = minute_of(time.time()) - 180
    minutes = (first, first + 60)
    expected: dict[tuple[str, int, str], list[tuple[int, float]]] = {}
    served: list[Served] = []
    for ci, client in enumerate(("acme", "globex", "initech")):
        for ri, route in enumerate(("orders", "payments")):
            for mi, minute in enumerate(minutes):
                n = 20 + 7 * ci + 5 * ri + 3 * mi
                for j in range(n):
                    status = 429 if j % 5 == 0 else 503 if j % 7 == 0 else 404 if j % 11 == 0 else 200
                    ms = float((j + 1) * (ci + 1) + 10 * ri)
                    at = minute + (j * 59 / n)
                    served.append(Served(at, "node", client, route, "GET", status, ms / 1000))
                    expected.setdefault((client, minute, route), []).append((status, ms))
    unidentified = [Served(first + 5, "node", "", "unauthenticated", "GET", 401, 0.001)] * 9
    random.Random(6).shuffle(served)

    # Two nodes: one sends as it goes, the other holds everything (long linger) until its stop flushes it.
    node_a = nodes(UsageRecorder("gw-a", TOPIC, linger_s=0.05))
    node_b = nodes(UsageRecorder("gw-b", TOPIC, linger_s=60, batch_max=100_000))
    half = len(served) // 2
    for event in served[:half] + unidentified:
        node_a.recorder.record(event)
    for event in served[half:]:
        node_b.recorder.record(event)
    await asyncio.sleep(1)
    assert node_b.recorder.sent == 0, "the lingering node must not have sent yet"
    await node_b.stop()
    assert node_b.recorder.sent == len(served) - half, "a stopping recorder must flush what it holds"

    async with pipeline.http() as http:
        for client in ("acme", "globex", "initech"):
            total = sum(len(v) for k, v in expected.items() if k[0] == client)

            async def arrived(client: str = client, total: int = total) -> dict[str, Any] | None:
                body = await usage(http, client, first, first + 120)
                return body if sum(m["requests"] for m in body["minutes"]) >= total else None

            body = await wait_for(arrived, 90, f"the usage of {client}")
            assert body["client"] == client
            rows = body["minutes"]
            assert [(r["minute"], r["route"]) for r in rows] == sorted(
                (minute_text(m), r) for (c, m, r) in expected if c == client
            ), "one row per minute and route, by minute then route"
            for row in rows:
                calls = expected[(client, _epoch(row["minute"]), row["route"])]
                assert row["requests"] == len(calls)
                assert row["refused"] == sum(1 for status, _ in calls if status == 429)
                assert row["errors"] == sum(1 for status, _ in calls if status >= 500)
                latencies = [ms for _, ms in calls]
                for field, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
                    assert within_one_rank(row[field], latencies, q), (client, row, field, sorted(latencies))

        summary = (
            await http.get(
                "/usage/summary", params={"from": minute_text(first), "to": minute_text(first + 120)}
            )
        ).json()
        assert summary["clients"] == [
            {
                "client": client,
                "requests": sum(len(v) for k, v in expected.items() if k[0] == client),
                "refused": sum(1 for k, v in expected.items() if k[0] == client for s, _ in v if s == 429),
                "errors": sum(1 for k, v in expected.items() if k[0] == client for s, _ in v if s >= 500),
            }
            for client in ("acme", "globex", "initech")
        ]
        assert summary["unidentified"] == {"requests": 9, "refused": 0, "errors": 0}

        # Redelivery: ten stored events produced again, then a record that is no usage event, on the
        # same partition (same key) so the aggregator reaches it only after the duplicates.
        ch = ClickHouse(pipeline.chdb.endpoint)
        stored = await ch.rows(
            "SELECT event_id, toFloat64(at) AS at, node, client, route, method, status, latency_ms "
            "FROM usage_events WHERE client = 'acme' ORDER BY event_id LIMIT 10"
        )
        before = await usage(http, "acme", first, first + 120)
        producer = kafka.producer()
        await producer.start()
        try:
            for row in stored:
                event = UsageEvent(
                    row["event_id"], row["at"], row["node"], row["client"], row["route"], row["method"],
                    row["status"], row["latency_ms"],
                )  # fmt: skip
                await producer.send(TOPIC, event.encode(), key=event.key())
            await producer.send_and_wait(TOPIC, b'{"v": 1, "id": "no-status"}', key=b"acme")
        finally:
            await producer.stop()

        async def dead_lettered() -> list[dict[str, Any]] | None:
            return await ch.rows("SELECT reason, payload FROM usage_dead_letters") or None

        letters = await wait_for(dead_lettered, 60, "the malformed record's dead letter")
        assert letters == [{"reason": letters[0]["reason"], "payload": '{"v": 1, "id": "no-status"}'}]
        assert letters[0]["reason"].startswith("at: expected a number"), letters
        assert await usage(http, "acme", first, first + 120) == before, "redelivered events counted twice"
        assert scrape(pipeline.aggregator, "usage_events_duplicates_total") == 10
        assert scrape(pipeline.aggregator, "usage_dead_letters_total") == 1
        window = UsageWindow(first, first + 120)
        reconciled = await UsageStore(ch).reconcile(window)
        assert reconciled == {
            "raw_rows": len(served) + 9,
            "raw_events": len(served) + 9,
            "aggregated": len(served) + 9,
        }
        await ch.close()

    await node_a.stop()
    assert node_a.recorder.dropped == node_b.recorder.dropped == 0


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


# ------------------------------------------------------------------------------------- broker outage
async def test_broker_outage_never_blocks_recording_and_buffered_events_arrive(
    pipeline: Pipeline, nodes: StartNode
) -> None:
    capacity, batch_max, recorded = 300, 100, 1000
    recorder = UsageRecorder(
        "gw-o", TOPIC, capacity=capacity, batch_max=batch_max, linger_s=0.05, send_timeout_s=2
    )
    nodes(recorder)
    minute = minute_of(time.time()) - 60
    async with pipeline.http() as http:
        recorder.record(Served(minute + 1, "gw-o", "warm", "orders", "GET", 200, 0.001))

        async def warm() -> bool:
            body = await usage(http, "warm", minute, minute + 60)
            return bool(body["minutes"])

        await wait_for(warm, 60, "the first event")

        await asyncio.to_thread(pipeline.broker.kill)
        dropped_before = counter("gateway_usage_events_dropped_total", reason="buffer_full")
        failures_before = counter("gateway_usage_send_failures_total")
        slowest = 0.0
        for i in range(recorded):
            started = time.perf_counter()
            recorder.record(Served(minute + 30, "gw-o", "outage", "orders", "GET", 200, (i + 1) / 1000))
            slowest = max(slowest, time.perf_counter() - started)
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # let the worker take a batch and fail to deliver it
        assert slowest < 0.01, f"record() took {slowest * 1000:.1f} ms with the broker down"
        held = recorder.held
        assert capacity <= held <= capacity + batch_max, held
        dropped = counter("gateway_usage_events_dropped_total", reason="buffer_full") - dropped_before
        assert dropped == recorded - held, "every event not held must be counted as dropped"

        async def failed() -> bool:
            return counter("gateway_usage_send_failures_total") > failures_before

        await wait_for(failed, 30, "a failed delivery")
        assert recorder.held == held, "nothing may be lost or dropped while retrying"

        await asyncio.to_thread(pipeline.broker.start)

        async def delivered() -> list[dict[str, Any]] | None:
            body = await usage(http, "outage", minute, minute + 60)
            return body["minutes"] if sum(m["requests"] for m in body["minutes"]) >= held else None

        rows = await wait_for(delivered, 120, "the buffered events")
        assert [(r["route"], r["requests"]) for r in rows] == [("orders", held)]
        ch = ClickHouse(pipeline.chdb.endpoint)
        markers = {
            round(row["latency_ms"])
            for row in await ch.rows("SELECT latency_ms FROM usage_events WHERE client = 'outage'")
        }
        await ch.close()
        assert len(markers) == held
        newest = set(range(recorded - capacity + 1, recorded + 1))
        assert newest <= markers, "the newest events are kept; the oldest are dropped"
        assert recorder.held == 0


# ------------------------------------------------------------------------------------------ usage API
@pytest.fixture
def usage_api(
    run_dir: Path, launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> tuple[ChdbStore, ServiceProcess]:
    chdb: ChdbStore = launch(ChdbStore("chdb", run_dir))
    env = {**chdb.client_env(), "GW_ADMIN_TOKEN": TOKEN}
    _use(env, monkeypatch)
    api: ServiceProcess = launch(
        ServiceProcess("usage", run_dir, module="katas.api_gateway.services.usage_api", env=env)
    )
    return chdb, api


async def test_usage_api_answers_ranges_and_refuses_bad_tokens_and_parameters(
    usage_api: tuple[ChdbStore, ServiceProcess],
) -> None:
    chdb, api = usage_api
    first = minute_of(time.time()) - 600
    ch = ClickHouse(chdb.endpoint)
    store = UsageStore(ch)
    events = [
        UsageEvent(
            f"e{i}", first + 60 * (i % 3) + 10, "gw1", "acme", ("orders", "catalog")[i % 2], "GET", 200, 5.0
        )
        for i in range(12)
    ]
    assert (await store.insert(events)).stored == 12
    await ch.close()

    base = f"http://{api.address}"
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        # The range covers the minutes starting in [from rounded down, to): the middle minute only.
        answer = await http.get(
            "/usage",
            headers=good,
            params={"client": "acme", "from": minute_text(first + 60 + 30), "to": minute_text(first + 120)},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "client": "acme",
            "minutes": [
                {"minute": minute_text(first + 60), "route": route, "requests": 2, "refused": 0, "errors": 0,
                 "p50_ms": 5.0, "p95_ms": 5.0, "p99_ms": 5.0}
                for route in ("catalog", "orders")
            ],
        }  # fmt: skip
        default = (await http.get("/usage", headers=good, params={"client": "acme"})).json()
        assert sum(m["requests"] for m in default["minutes"]) == 12, "the last 60 minutes by default"
        offset = (
            await http.get(
                "/usage",
                headers=good,
                params={"client": "acme", "from": minute_text(first).replace("Z", "+00:00")},
            )
        ).json()
        assert sum(m["requests"] for m in offset["minutes"]) == 12
        assert (await http.get("/usage", headers=good, params={"client": "nobody"})).json() == {
            "client": "nobody",
            "minutes": [],
        }

        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": TOKEN}):  # fmt: skip
            for path in ("/usage?client=acme", "/usage/summary"):
                refused = await http.get(path, headers=headers)
                assert refused.status_code == 401, (headers, path, refused.text)
                assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert (await http.get("/healthz")).status_code == 200, "health needs no token"

        bad = {
            "client is required": {},
            "client: 1 to 64": {"client": "acme'; DROP TABLE usage_events; --"},
            "unknown parameter 'since'": {"client": "acme", "since": "2025-01-01T00:00:00Z"},
            "from: ": {"client": "acme", "from": "yesterday"},
            "the time needs an offset": {"client": "acme", "from": "2025-01-01T00:00:00"},
            "to: ": {"client": "acme", "to": "2025-13-01T00:00:00Z"},
            "from must be before to": {
                "client": "acme",
                "from": "2025-01-02T00:00:00Z",
                "to": "2025-01-01T00:00:00Z",
            },
            "longer than 31 days": {
                "client": "acme",
                "from": "2025-01-01T00:00:00Z",
                "to": "2025-03-01T00:00:00Z",
            },
        }
        for reason, params in bad.items():
            answer = await http.get("/usage", headers=good, params=params)
            assert answer.status_code == 400, (params, answer.text)
            assert reason in answer.json()["error"], (reason, answer.json())
        repeated = await http.get("/usage?client=acme&client=globex", headers=good)
        assert repeated.status_code == 400
        assert "more than once" in repeated.json()["error"]
        summary_bad = await http.get("/usage/summary", headers=good, params={"client": "acme"})
        assert summary_bad.status_code == 400, "the summary has no client parameter"

        await asyncio.to_thread(chdb.kill)
        down = await http.get("/usage", headers=good, params={"client": "acme"})
        assert down.status_code == 503, down.text
        assert down.headers["Retry-After"]
        assert (await http.get("/usage/summary", headers=good)).status_code == 503
        assert (await http.get("/healthz")).status_code == 200, "the API stays up while its store is down"
