"""A stack built from a card's `[stack]`: wiring, endpoints, status details, and network chaos through
the proxy in front of the Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from katas.catalog import StackSpec
from katas.infra import chaos
from katas.infra.chaos import ChaosAction
from katas.infra.servers import PostgresServer, ServerError
from katas.infra.stack import Stack, StackError

SPEC = StackSpec.model_validate(
    {
        "servers": [
            {"name": "s3", "kind": "s3rver"},
            {"name": "kafka", "kind": "tansu", "options": {"object_store": "s3"}, "proxied": True},
            {"name": "redis", "kind": "redis"},
            {"name": "redis-replica", "kind": "redis_replica", "options": {"of": "redis"}},
        ],
        "services": [{"name": "webhook", "module": "katas.infra.webhook_receiver"}],
    }
)


async def _round_trip(bootstrap: str, topic: str, count: int) -> tuple[float, list[bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000)
    await producer.start()
    started = time.monotonic()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"{topic}-{i}".encode())
    finally:
        await producer.stop()
    took = time.monotonic() - started
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got += [r.value for r in records]
    finally:
        await consumer.stop()
    return took, got


def test_stack_wires_servers_services_and_endpoints(run_dir: Path) -> None:
    with Stack("demo", SPEC, run_dir / "demo", mistakes=("some-switch",)) as stack:
        endpoints = json.loads((run_dir / "demo" / "endpoints.json").read_text())
        assert endpoints["kafka"] == stack["kafka"].client_address
        assert endpoints["kafka"] != stack["kafka"].address, "the broker must be reached through its proxy"
        assert endpoints["webhook_log"].endswith("webhook.jsonl")

        env = stack.client_env()
        assert env["KATAS_KAFKA_BOOTSTRAP"] == endpoints["kafka"]
        assert env["KATAS_REDIS_URL"] == f"redis://{endpoints['redis']}/0", (
            "only the primary is the Redis URL"
        )
        assert env["KATAS_MISTAKES"] == "some-switch"

        _, got = asyncio.run(_round_trip(endpoints["kafka"], "plain", 5))
        assert sorted(got) == sorted(f"plain-{i}".encode() for i in range(5))

        rows = {row["name"]: row for row in stack.status()}
        assert all(row["healthy"] for row in rows.values())
        assert rows["redis"]["detail"].startswith("master")
        assert "link up" in rows["redis-replica"]["detail"]
        httpx.post(f"{endpoints['webhook']}/hooks/test", json={"n": 1}).raise_for_status()
        assert rows["kafka"]["network"] == "normal"
        assert rows["redis"]["network"] == "direct"
        assert "webhook_received" in {row["name"]: row for row in stack.status()}["webhook"]["detail"]

        chaos.apply(stack, ChaosAction.PAUSE, "webhook")
        frozen = {row["name"]: row for row in stack.status()}["webhook"]
        assert frozen["paused"]
        assert not frozen["healthy"]
        chaos.apply(stack, ChaosAction.RESUME, "webhook")
        assert {row["name"]: row for row in stack.status()}["webhook"]["healthy"]


def test_network_chaos_on_the_broker(run_dir: Path) -> None:
    with Stack("demo", SPEC, run_dir / "demo") as stack:
        bootstrap = stack["kafka"].client_address
        baseline, _ = asyncio.run(_round_trip(bootstrap, "baseline", 5))

        chaos.apply(stack, ChaosAction.DELAY, "kafka", ms=100)
        delayed, got = asyncio.run(_round_trip(bootstrap, "delayed", 5))
        assert len(got) == 5
        assert delayed >= baseline + 5 * 0.2 * 0.9, (
            f"5 acks through a 100 ms/direction delay took {delayed:.2f} s"
        )

        chaos.apply(stack, ChaosAction.CUT, "kafka")
        with pytest.raises(KafkaError):
            asyncio.run(_round_trip(bootstrap, "cut", 1))
        chaos.apply(stack, ChaosAction.RESTORE, "kafka")
        _, got = asyncio.run(_round_trip(bootstrap, "restored", 3))
        assert len(got) == 3

        with pytest.raises(StackError, match="has no network proxy"):
            chaos.apply(stack, ChaosAction.CUT, "redis")
        with pytest.raises(StackError, match="no component 'nope'"):
            chaos.apply(stack, ChaosAction.KILL, "nope")


def test_bad_stack_specs_are_refused_before_anything_starts(run_dir: Path) -> None:
    dangling = StackSpec.model_validate({"servers": [{"name": "kafka", "kind": "tansu", "options": {}}]})
    with pytest.raises(StackError, match="must name a server listed before it"):
        Stack("demo", dangling, run_dir / "a").start()
    wrong_kind = StackSpec.model_validate(
        {
            "servers": [
                {"name": "redis", "kind": "redis"},
                {"name": "kafka", "kind": "tansu", "options": {"object_store": "redis"}},
            ]
        }
    )
    stack = Stack("demo", wrong_kind, run_dir / "b")
    with pytest.raises(StackError, match="is a redis server, expected s3rver"):
        stack.start()
    assert not stack["redis"].is_running(), "a failed start must stop what it started"


def test_postgres_refuses_a_run_dir_its_user_cannot_enter(run_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands PostgreSQL to the postgres user")
    private = run_dir / "private"
    private.mkdir(mode=0o700)
    assert not private.stat().st_mode & stat.S_IXOTH
    with pytest.raises(ServerError, match="postgres user cannot enter"):
        PostgresServer("pg", private / "run").start()


def test_secrets_are_made_once_per_run_directory_and_published_on_request(run_dir: Path) -> None:
    spec = StackSpec.model_validate(
        {
            "services": [{"name": "webhook", "module": "katas.infra.webhook_receiver"}],
            "env": {"DEMO_SETTING": "on"},
            "secrets": ["DEMO_TOKEN", "DEMO_KEY"],
            "publish": {"token": "DEMO_TOKEN"},
        }
    )
    with Stack("demo", spec, run_dir / "demo") as stack:
        endpoints = json.loads((run_dir / "demo" / "endpoints.json").read_text())
        env = stack["webhook"].env
    assert endpoints["token"] == env["DEMO_TOKEN"]
    assert "DEMO_KEY" not in json.dumps(endpoints), "only published secrets may reach endpoints.json"
    assert len(env["DEMO_KEY"]) >= 32
    assert env["DEMO_SETTING"] == "on"
    secrets_file = run_dir / "demo" / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    again = Stack("demo", spec, run_dir / "demo")
    assert again.secrets() == {"DEMO_TOKEN": env["DEMO_TOKEN"], "DEMO_KEY": env["DEMO_KEY"]}, (
        "a restart keeps them"
    )


def test_publishing_a_variable_that_is_not_a_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="not secrets: NOPE"):
        StackSpec.model_validate({"secrets": ["A"], "publish": {"a": "NOPE"}})
