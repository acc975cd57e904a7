"""The correlation engine over RedisWindowStore on a real Redis (started by the lab's launcher).

Same verdicts as the in-memory store; the state outlives the engine (and Redis itself restarting); keys are
bounded and expire; several engines sharing Redis still detect what one engine detects.
"""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from katas.infra.servers import RedisServer, Server
from katas.siem.adapters.redis_windows import DEFAULT_PREFIX, DEFAULT_TTL_SLACK_S, RedisWindowStore
from katas.siem.correlation import (
    DEFAULT_LATENESS_S,
    DEFAULT_MAX_ENTRIES,
    Alert,
    Claim,
    CorrelationEngine,
    InMemoryWindowStore,
    Observation,
    ReplyKind,
    WindowEntry,
    WindowStore,
    correlation_rules,
)
from katas.siem.detection import Detector, load_rules

pytestmark = pytest.mark.integration

Launch = Callable[[Server], Server]
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC).timestamp()
RULES = load_rules()
DETECTOR = Detector.from_rules(RULES)
NAMES = {rule.id: rule.name for rule in correlation_rules(RULES)}
SPAN_S = 300


# ------------------------------------------------------------------------------ events (contracts.md)
def event(ts: float, source: str, **fields: Any) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "event.id": str(uuid.uuid4()),
        "@timestamp": stamp,
        "event.kind": "event",
        "labels.source": source,
        **{key.replace("__", "."): value for key, value in fields.items()},
    }


def ssh(ts: float, user: str, ip: str, ok: bool, host: str = "web-1") -> dict[str, Any]:
    verb = "Accepted" if ok else "Failed"
    return event(
        ts, f"syslog-{host}", event__dataset="sshd", event__category=["authentication"],
        event__outcome="success" if ok else "failure", host__name=host, user__name=user, source__ip=ip,
        message=f"{verb} password for {user} from {ip} port 50022 ssh2",
    )  # fmt: skip


def win(ts: float, user: str, ip: str, code: str, host: str = "dc-1") -> dict[str, Any]:
    return event(
        ts, f"winlog-{host}", event__dataset="windows.security", event__code=code, host__name=host,
        user__name=user, source__ip=ip, event__category=["authentication"],
    )  # fmt: skip


def fw(ts: float, src: str, dst: str, port: int, allowed: bool) -> dict[str, Any]:
    return event(
        ts, "fw-edge", event__dataset="firewall", event__category=["network"],
        event__type=["connection", "allowed" if allowed else "denied"], source__ip=src, destination__ip=dst,
        destination__port=port,
    )  # fmt: skip


def cloud(ts: float, action: str, key: str, ip: str, account: str = "111122223333") -> dict[str, Any]:
    return event(
        ts, "cloudtrail", event__dataset="cloudtrail", event__action=action, labels__access_key_id=key,
        source__ip=ip, cloud__account__id=account, event__outcome="success",
    )  # fmt: skip


def attacks(t: float) -> list[dict[str, Any]]:
    """One instance of each alerting correlation, 40 s apart."""
    return [
        *[ssh(t + i, "alice", "203.0.113.10", ok=False) for i in range(6)],
        ssh(t + 20, "alice", "203.0.113.10", ok=True),
        *[win(t + 40 + i, "bob", "198.51.100.7", "4625") for i in range(6)],
        win(t + 60, "bob", "198.51.100.7", "4624"),
        *[fw(t + 80 + i, "192.0.2.66", "10.0.0.5", 20 + i, allowed=False) for i in range(12)],
        fw(t + 100, "192.0.2.66", "10.0.0.5", 22, allowed=True),
        ssh(t + 120, "mallory", "203.0.113.99", ok=True, host="web-2"),
        event(
            t + 130,
            "syslog-web-2",
            host__name="web-2",
            user__name="mallory",
            process__command_line="/usr/sbin/usermod -aG sudo backdoor",
        ),
        cloud(t + 160, "CreateAccessKey", "AKIAEXAMPLE0001", "198.51.100.20"),
        cloud(t + 170, "GetObject", "AKIAEXAMPLE0001", "203.0.113.200"),
        *[ssh(t + 200 + i, user, "192.0.2.200", ok=False) for i, user in enumerate("abcdef")],
        win(t + 210, "c", "192.0.2.200", "4624"),
        cloud(t + 240, "StopLogging", "AKIAADMIN000001", "198.51.100.30", account="444455556666"),
        cloud(t + 250, "CreateAccessKey", "AKIANEWKEY00001", "198.51.100.30", account="444455556666"),
    ]


def noise(t: float, seconds: float, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(int(seconds * 2)):
        ts, n = t + i / 2, rng.randrange(20)
        kind = rng.randrange(4)
        if kind == 0:
            out.append(ssh(ts, f"emp{n}", f"10.2.0.{n}", ok=True))
        elif kind == 1:
            out.append(win(ts, f"emp{n}", f"10.3.0.{n}", "4624"))
        elif kind == 2:
            out.append(fw(ts, f"10.4.0.{n}", "10.0.0.80", 443, allowed=True))
        else:
            out.append(cloud(ts, "ListBuckets", f"AKIABENIGN{n:05d}", f"10.6.0.{n}"))
    return out


def stream() -> list[dict[str, Any]]:
    events = noise(T0, 900) + attacks(T0 + 60) + attacks(T0 + 600)
    return sorted(events, key=lambda e: e["@timestamp"])


ALL_ATTACKS = sorted(str(rule.name) for rule in correlation_rules(RULES) if rule.output)


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture
async def redis_server(run_dir: Path, launch: Launch) -> RedisServer:
    server = launch(RedisServer("redis", run_dir))
    assert isinstance(server, RedisServer)
    return server


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url)
    yield redis
    await redis.aclose()


async def run(events: Sequence[dict[str, Any]], engine: CorrelationEngine, batch: int = 100) -> list[Alert]:
    alerts: list[Alert] = []
    for i in range(0, len(events), batch):
        alerts += await engine.process(DETECTOR.match(events[i : i + batch]))
    return alerts


def engine(store: WindowStore) -> CorrelationEngine:
    return CorrelationEngine.from_rules(RULES, store)


def canonical(alerts: list[Alert]) -> list[str]:
    return sorted(a.model_dump_json() for a in alerts)


def fired(alerts: list[Alert]) -> list[str]:
    return sorted(str(NAMES[a.rule]) for a in alerts)


async def window_keys(redis: Redis) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{DEFAULT_PREFIX}:*", count=1000)]


# ----------------------------------------------------------------------------------------------- tests
async def test_redis_gives_the_same_alerts_as_the_in_memory_store(client: Redis) -> None:
    events = stream()
    expected = await run(events, engine(InMemoryWindowStore()))
    assert fired(expected) == sorted(ALL_ATTACKS * 2)
    assert canonical(await run(events, engine(RedisWindowStore(client)))) == canonical(expected)


async def test_the_store_matches_the_in_memory_store_operation_by_operation(client: Redis) -> None:
    """The Lua scripts and the Python reference agree on every reply, trims and caps included."""
    rng = random.Random(11)
    redis_store, memory = RedisWindowStore(client, prefix="t:ops"), InMemoryWindowStore()
    ts = T0
    batch: list[Observation] = []
    claims: list[Claim] = []
    for _ in range(1500):
        ts += rng.uniform(-20, 25)  # mostly forwards, sometimes late
        window, stages = rng.choice([("w:a", 1), ("w:b", 2), ("w:c", 3)])
        member = rng.choice("abcdefghij") + str(rng.randrange(30))
        data = rng.choice(["", f"{member}-id", '{"ids":["x"],"first":1.0,"n":2}'])
        entry = WindowEntry(member, round(ts, 3), data)
        reply: ReplyKind = rng.choice(["window", "chain", "nearest"])
        batch.append(Observation(window, rng.randrange(stages), stages, entry, 120, 8, reply))
        claims.append(Claim(window, round(ts + rng.uniform(-100, 100), 3), 120))
        if rng.random() < 0.3:  # batches of varied sizes, as the engine's waves
            assert await redis_store.observe(batch) == await memory.observe(batch)
            assert await redis_store.claim(claims) == await memory.claim(claims)
            batch, claims = [], []
    assert await redis_store.observe(batch) == await memory.observe(batch)


async def test_state_survives_a_new_engine_and_a_redis_restart(
    client: Redis, redis_server: RedisServer
) -> None:
    events = stream()
    expected = await run(events, engine(InMemoryWindowStore()))
    first, second, third = events[:400], events[400:1100], events[1100:]
    alerts = await run(first, engine(RedisWindowStore(client)))
    # A worker restart: a new client, a new engine, nothing carried over in memory.
    async with Redis.from_url(redis_server.url) as other:
        alerts += await run(second, engine(RedisWindowStore(other)))
    # Redis itself restarts (SIGTERM: it writes its append-only file) and comes back with the windows.
    redis_server.restart()
    async with Redis.from_url(redis_server.url) as again:
        alerts += await run(third, engine(RedisWindowStore(again)))
    # The same decisions; which events an alert lists may depend on where the batches were cut.
    assert sorted(a.fingerprint for a in alerts) == sorted(a.fingerprint for a in expected)
    assert fired(alerts) == sorted(ALL_ATTACKS * 2)


async def test_keys_are_bounded_and_carry_a_ttl(client: Redis) -> None:
    flood = [ssh(T0 + 0.05 * i, "alice", "203.0.113.10", ok=False) for i in range(1000)]
    flood += [fw(T0 + 0.05 * i, "192.0.2.66", "10.0.0.5", i, allowed=False) for i in range(1000)]
    flood.sort(key=lambda e: e["@timestamp"])
    await run(flood, engine(RedisWindowStore(client)), batch=500)
    keys = await window_keys(client)
    assert keys
    ttl_ms = (SPAN_S + DEFAULT_LATENESS_S + DEFAULT_TTL_SLACK_S) * 1000
    for key in keys:
        ttl = await client.pttl(key)
        assert 0 < ttl <= ttl_ms, key
        if b":z" in key:
            size = await client.zcard(key)
            assert size <= DEFAULT_MAX_ENTRIES, key
            # Payloads are trimmed with their entries (a plain event's empty payload is not stored).
            assert await client.hlen(key.replace(b":z", b":d")) <= size
    total = sum([await client.zcard(k) for k in keys if b":z" in k])
    assert total <= 5 * DEFAULT_MAX_ENTRIES  # of 2000 matched events
    # Every key of one window shares a hash tag: one Redis Cluster slot, one atomic script.
    assert all(key.count(b"{") == 1 and key.count(b"}") == 1 for key in keys)


async def test_idle_windows_expire(client: Redis) -> None:
    store = RedisWindowStore(client, prefix="t:ttl", lateness_s=0, ttl_slack_s=0.3)
    await store.observe([Observation("w", 0, 2, WindowEntry("e1", T0, "e1"), span_s=0.5, max_entries=8)])
    assert await store.claim([Claim("w", T0, 0.5)]) == [True]
    assert len([k async for k in client.scan_iter(match="t:ttl:*")]) == 3
    await asyncio.sleep(1.2)
    assert [k async for k in client.scan_iter(match="t:ttl:*")] == []


async def test_two_engines_sharing_redis_over_interleaved_halves_still_detect(client: Redis) -> None:
    events = stream()
    expected = await run(events, engine(InMemoryWindowStore()))
    a, b = engine(RedisWindowStore(client)), engine(RedisWindowStore(client))
    alerts: list[Alert] = []
    for i in range(0, len(events), 20):
        chunk = events[i : i + 20]
        alerts += await a.process(DETECTOR.match(chunk[0::2]))
        alerts += await b.process(DETECTOR.match(chunk[1::2]))
    assert fired(alerts) == fired(expected)


async def test_workers_on_partitions_by_source_running_concurrently_still_detect(
    client: Redis, redis_server: RedisServer
) -> None:
    """Kafka partitions are keyed by source; one worker per partition, all at once, against one Redis."""
    events = stream()
    partitions: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        partitions.setdefault(zlib.crc32(e["labels.source"].encode()) % 3, []).append(e)

    async def worker(part: list[dict[str, Any]]) -> list[Alert]:
        async with Redis.from_url(redis_server.url) as own:
            eng = engine(RedisWindowStore(own))
            out: list[Alert] = []
            for i in range(0, len(part), 25):
                out += await eng.process(DETECTOR.match(part[i : i + 25]))
                await asyncio.sleep(0)
            return out

    results = await asyncio.gather(*(worker(part) for part in partitions.values()))
    alerts = [a for result in results for a in result]
    assert fired(alerts) == sorted(ALL_ATTACKS * 2)  # each attack once per window: no duplicates
