"""Every native launcher against its real server: start, stop, kill, pause, restart on the same data,
and the failover each kind of server must support for the katas that use it."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from botocore.exceptions import ClientError

from katas.infra.clickhouse import ClickHouse
from katas.infra.s3 import s3_client
from katas.infra.servers import (
    ChdbStore,
    MosquittoBroker,
    NginxServer,
    PostgresServer,
    RedisSentinel,
    RedisServer,
    S3rverServer,
    Server,
    ServerError,
    ServiceProcess,
    TansuBroker,
)

Launch = Callable[[Any], Any]


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until predicate holds; return the seconds it took, or fail naming what never happened."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"{what} did not happen within {timeout_s} s")


# -------------------------------------------------------------------------------------- Kafka on S3
async def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, f"m{i}".encode(), key=str(i % 7).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _consume_and_commit(bootstrap: str, topic: str, group: str, at_most: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < at_most and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=at_most - len(got))
            for records in batch.values():
                got += [r.value for r in records]
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


def test_kafka_group_offsets_survive_restart_of_broker_and_object_store(
    run_dir: Path, launch: Launch
) -> None:
    s3 = launch(S3rverServer("s3", run_dir))
    broker = launch(TansuBroker("kafka", run_dir, object_store=s3))
    topic, group = "events", "readers"
    asyncio.run(_create_topic(broker.address, topic, partitions=3))
    asyncio.run(_produce(broker.address, topic, 60))
    first = asyncio.run(_consume_and_commit(broker.address, topic, group, at_most=25))
    assert len(first) == 25

    broker.kill()
    s3.kill()
    s3.start()
    broker.start()

    rest = asyncio.run(_consume_and_commit(broker.address, topic, group, at_most=60))
    assert sorted(first + rest) == sorted(f"m{i}".encode() for i in range(60)), "committed offsets were lost"


# -------------------------------------------------------------------------------------------- s3rver
def test_s3_objects_survive_restart(run_dir: Path, launch: Launch) -> None:
    s3 = launch(S3rverServer("s3", run_dir, buckets=["lake"]))

    s3_client(s3.endpoint).put_object(Bucket="lake", Key="day=2026-11-29/part-0.parquet", Body=b"columns")
    s3_client(s3.endpoint).create_bucket(Bucket="made-on-demand")
    s3.kill()
    s3.start()
    body = (
        s3_client(s3.endpoint).get_object(Bucket="lake", Key="day=2026-11-29/part-0.parquet")["Body"].read()
    )
    assert body == b"columns"
    assert "made-on-demand" in {b["Name"] for b in s3_client(s3.endpoint).list_buckets()["Buckets"]}


def test_s3_lists_more_than_a_thousand_keys_page_by_page(run_dir: Path, launch: Launch) -> None:
    # S3 pages listings by 1,000 keys; s3rver's continuation token is DES-encrypted, which Node's
    # OpenSSL 3 offers only with its legacy provider. tansu and the cold tiers list partitions this size.
    s3 = launch(S3rverServer("s3", run_dir, buckets=["lake"]))
    client = s3_client(s3.endpoint, max_pool_connections=16)
    keys = [f"records/{i:08d}.batch" for i in range(1_050)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket="lake", Key=key, Body=b"x"), keys))

    pages = list(client.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix="records/"))

    assert [len(page.get("Contents", [])) for page in pages] == [1_000, 50]
    assert [obj["Key"] for page in pages for obj in page.get("Contents", [])] == keys


def test_s3_conditional_puts_refuse_a_writer_with_a_stale_view(run_dir: Path, launch: Launch) -> None:
    # tansu creates each partition's watermark with If-None-Match: * and moves it with If-Match: <etag>.
    s3 = launch(S3rverServer("s3", run_dir, buckets=["lake"]))
    client = s3_client(s3.endpoint)
    first = client.put_object(Bucket="lake", Key="watermark.json", Body=b"1", IfNoneMatch="*")

    with pytest.raises(ClientError) as created_twice:
        client.put_object(Bucket="lake", Key="watermark.json", Body=b"0", IfNoneMatch="*")
    moved = client.put_object(Bucket="lake", Key="watermark.json", Body=b"2", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        client.put_object(Bucket="lake", Key="watermark.json", Body=b"3", IfMatch=first["ETag"])

    assert created_twice.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert stale.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert moved["ETag"] != first["ETag"]
    assert client.get_object(Bucket="lake", Key="watermark.json")["Body"].read() == b"2"


# ---------------------------------------------------------------------------------------------- chDB
async def _chdb_roundtrip(url: str, rows: list[dict[str, Any]] | None) -> int:
    async with ClickHouse(url) as ch:
        if rows is not None:
            await ch.execute(
                "CREATE TABLE IF NOT EXISTS readings (id UInt32, zone String) ENGINE = MergeTree ORDER BY id"
            )
            await ch.insert("readings", rows)
        return int(await ch.scalar("SELECT count() FROM readings"))


def test_chdb_data_survives_a_restart_of_its_owner(run_dir: Path, launch: Launch) -> None:
    store = launch(ChdbStore("chdb", run_dir))
    rows = [{"id": i, "zone": f"z{i % 5}"} for i in range(1000)]
    assert asyncio.run(_chdb_roundtrip(store.endpoint, rows)) == 1000
    store.kill()
    store.start()
    assert asyncio.run(_chdb_roundtrip(store.endpoint, None)) == 1000


def test_chdb_directory_has_one_owner(run_dir: Path, launch: Launch) -> None:
    launch(ChdbStore("chdb", run_dir))
    intruder = ChdbStore("chdb", run_dir)  # same folder, second process
    with pytest.raises(ServerError, match="already owned"):
        launch(intruder)


# --------------------------------------------------------------------------------------------- Redis
def test_redis_restarts_on_the_same_data_and_pauses(run_dir: Path, launch: Launch) -> None:
    server = launch(RedisServer("redis", run_dir))
    client = redis.Redis.from_url(server.url, socket_timeout=0.5)
    client.set("counter", 41)
    client.incr("counter")
    server.restart()
    assert redis.Redis.from_url(server.url).get("counter") == b"42"

    server.pause()
    with pytest.raises(redis.TimeoutError):
        redis.Redis.from_url(server.url, socket_timeout=0.5).ping()
    server.resume()
    assert redis.Redis.from_url(server.url, socket_timeout=2).ping()


def test_sentinels_promote_the_replica_when_the_primary_is_killed(run_dir: Path, launch: Launch) -> None:
    primary = launch(RedisServer("redis", run_dir))
    replica = launch(RedisServer("redis-replica", run_dir, replica_of=primary))
    sentinels = [launch(RedisSentinel(f"sentinel-{i}", run_dir, primary=primary)) for i in (1, 2, 3)]
    client = redis.Redis.from_url(primary.url)
    client.set("tokens:client-a", 17)
    client.wait(1, 2000)  # the write has reached the replica

    def master_port() -> int | None:
        try:
            reply = redis.Redis(port=sentinels[0].port).sentinel_get_master_addr_by_name("katas")
        except redis.RedisError:
            return None
        return int(reply[1]) if reply else None

    wait_until(lambda: master_port() == primary.port, 10, "sentinels agreeing on the primary")
    wait_until(
        lambda: len(redis.Redis(port=sentinels[0].port).sentinel_sentinels("katas")) == 2,
        15,
        "sentinels discovering each other",
    )
    primary.kill()
    took = wait_until(lambda: master_port() == replica.port, 30, "failover to the replica")
    promoted = redis.Redis(port=replica.port)
    wait_until(lambda: promoted.info("replication")["role"] == "master", 10, "replica taking the master role")
    assert promoted.get("tokens:client-a") == b"17"
    promoted.set("after-failover", 1)  # writable
    print(f"sentinel failover took {took:.1f} s")

    # The roles Sentinel gave survive restarts (it rewrites each server's config file), so a restart of
    # both does not bring back the old topology behind the Sentinels' backs.
    primary.start()
    wait_until(
        lambda: redis.Redis(port=primary.port).info("replication")["role"] == "slave",
        15,
        "old primary demoted",
    )
    for server in (primary, replica):
        server.kill()
    for server in (primary, replica):
        server.start()
    assert redis.Redis(port=replica.port).info("replication")["role"] == "master"
    assert redis.Redis(port=primary.port).info("replication")["role"] == "slave"
    assert master_port() == replica.port


# ---------------------------------------------------------------------------------------- PostgreSQL
def test_postgres_standby_is_promoted_with_the_primarys_committed_rows(run_dir: Path, launch: Launch) -> None:
    primary = launch(PostgresServer("pg", run_dir))
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    standby = launch(PostgresServer("pg-standby", run_dir, standby_of=primary))
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g")
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()

    def replayed() -> bool:
        with psycopg.connect(standby.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", lsn).fetchone()
            return bool(row and row[0])

    wait_until(replayed, 15, "standby replaying the primary's WAL")
    primary.kill()
    standby.promote()
    with psycopg.connect(standby.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM orders").fetchone() == (500, 125250)
        conn.execute("INSERT INTO orders VALUES (501, 1)")  # a promoted standby takes writes


# --------------------------------------------------------------------------------------------- MQTT
class _Subscriber:
    """A persistent-session MQTT subscriber that records what arrives."""

    def __init__(self, port: int, client_id: str, topic: str) -> None:
        self.port, self.topic = port, topic
        self.received: list[bytes] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_message = lambda c, u, msg: self.received.append(msg.payload)
        self.client.on_subscribe = lambda *args: self.subscribed.set()

    def connect(self, subscribe: bool) -> None:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if subscribe:
            self.client.subscribe(self.topic, qos=1)
            assert self.subscribed.wait(5)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish_qos1(port: int, topic: str, payload: bytes) -> None:
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    info = publisher.publish(topic, payload, qos=1)
    info.wait_for_publish(5)
    assert info.is_published(), "the broker did not acknowledge the QoS 1 publish"
    publisher.disconnect()
    publisher.loop_stop()


def test_qos1_message_crosses_the_bridge_to_a_persistent_session_across_a_restart(
    run_dir: Path, launch: Launch
) -> None:
    region_b = launch(MosquittoBroker("mqtt-b", run_dir))
    region_a = launch(MosquittoBroker("mqtt-a", run_dir, bridges=[region_b]))
    topic = "sensors/acme/b1/f1/z1/s1"
    subscriber = _Subscriber(region_b.port, "hvac-feed", topic)
    subscriber.connect(subscribe=True)
    # the bridge is up once a message published in region A arrives in region B
    wait_until(
        lambda: (_publish_qos1(region_a.port, topic, b"probe"), bool(subscriber.received))[1], 15, "bridge"
    )
    subscriber.disconnect()

    _publish_qos1(region_a.port, topic, b"co2=1200")  # acknowledged by A while the subscriber is away
    time.sleep(1.5)  # the bridge forwards it to B, which queues it for the offline persistent session
    region_b.restart()  # B must keep the queued message on disk

    subscriber.received.clear()
    subscriber.connect(subscribe=False)
    try:
        wait_until(lambda: b"co2=1200" in subscriber.received, 15, "queued QoS 1 message delivery")
    finally:
        subscriber.disconnect()


# ------------------------------------------------------------------------------------------ failures
class MisconfiguredRedis(RedisServer):
    def command(self) -> list[str]:
        return [*super().command(), "--no-such-directive", "yes"]


def test_a_server_that_cannot_start_names_itself_its_command_and_its_log(
    run_dir: Path, launch: Launch
) -> None:
    with pytest.raises(ServerError) as failure:
        launch(MisconfiguredRedis("redis-broken", run_dir))
    message = str(failure.value)
    assert "redis server 'redis-broken' exited with code 1 while starting" in message
    assert "--no-such-directive yes" in message, "the command is missing"
    assert "Bad directive or wrong number of arguments" in message, "the log tail is missing"


def test_a_port_taken_by_another_process_is_refused_not_mistaken_for_health(
    run_dir: Path, launch: Launch
) -> None:
    taken = launch(RedisServer("redis", run_dir))
    with pytest.raises(ServerError, match=f"port {taken.port} is already in use"):
        launch(RedisServer("redis-clash", run_dir, port=taken.port))


def test_kill_and_stop_leave_no_process_behind(run_dir: Path, launch: Launch) -> None:
    servers: list[Server] = [launch(PostgresServer("pg", run_dir)), launch(RedisServer("redis", run_dir))]
    pids = [s.pid for s in servers]
    servers[0].kill()
    servers[1].stop()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


# ---------------------------------------------------------------------------------------------- nginx
def test_nginx_proxies_to_its_upstreams_and_limits_each_api_key(run_dir: Path, launch: Launch) -> None:
    backend = launch(
        ServiceProcess("orders", run_dir, module="katas.api_gateway.services.backend", args=["orders"])
    )
    nginx = launch(
        NginxServer("nginx", run_dir, upstreams={"/orders": backend.endpoint}, rate_per_s=5, burst=3)
    )
    statuses = []
    for _ in range(8):
        request = urllib.request.Request(f"{nginx.endpoint}/orders/items/1", headers={"X-API-Key": "k1"})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                statuses.append(answer.status)
                assert json.loads(answer.read())["id"] == "1"
        except urllib.error.HTTPError as refused:
            statuses.append(refused.code)
    assert statuses[:4] == [200] * 4, "the burst passes"
    assert 429 in statuses[4:], "then limit_req refuses"
    nginx.kill()
    assert not nginx.is_running()


def test_redis_and_sentinel_start_again_in_the_same_folder_on_new_ports(
    run_dir: Path, launch: Launch
) -> None:
    """A second `katas up` reuses the run folder but gets new ports: config files the servers rewrote for
    the old ports must not be kept (Sentinel would listen on, and watch, the old ones)."""
    first = [launch(RedisServer("redis", run_dir))]
    first.append(launch(RedisSentinel("sentinel-1", run_dir, primary=first[0])))
    for server in reversed(first):
        server.stop()
    primary = launch(RedisServer("redis", run_dir))
    sentinel = launch(RedisSentinel("sentinel-1", run_dir, primary=primary))
    assert primary.port != first[0].port
    reply = redis.Redis(port=sentinel.port).sentinel_get_master_addr_by_name("katas")
    assert int(reply[1]) == primary.port
