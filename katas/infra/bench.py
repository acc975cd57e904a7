"""Raw throughput of each native server on this machine: the ceilings kata pipelines are compared against.

`katas bench infra` starts every server with the lab's own launchers (`Stack`), one small stack per
measurement in a temporary run directory, drives it from Python with the clients the katas use, and stops it
again, also on error or Ctrl-C. All traffic stays on loopback and goes to the servers directly (no chaos
proxy). Each measurement runs for `seconds` and stops earlier if it reaches its cap on operations; a server
that fails does not stop the others: its rows carry the error instead of a value.

| measurement       | client                 | what is counted                                           |
| ----------------- | ---------------------- | --------------------------------------------------------- |
| kafka.produce     | aiokafka producer      | 200 B records acked (acks=all) by tansu on s3rver         |
| kafka.consume     | aiokafka consumer      | the same records read back by a consumer group            |
| mqtt.qos1         | paho-mqtt              | QoS 1 messages delivered by Mosquitto to a subscriber     |
| redis.pipelined   | redis.asyncio          | SET/GET commands in pipelines of 100                      |
| redis.unpipelined | redis.asyncio          | SET/GET round trips from concurrent clients               |
| chdb.insert       | katas.infra.clickhouse | rows of a 10-column event inserted as JSONEachRow batches |
| chdb.scan         | katas.infra.clickhouse | rows read by a GROUP BY aggregate over that table         |
| s3.put            | boto3                  | 1 KiB PutObject calls to s3rver from a thread pool        |

Every row also says how much CPU the client side and each server used while it was measured: a client
near 100% of a core means the Python client, not the server, sets that ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from katas.catalog import StackSpec
from katas.infra.s3 import s3_client
from katas.infra.servers import NODE_PACKAGES_DIR
from katas.infra.stack import Stack

KAFKA_TOPIC = "bench"
KAFKA_PARTITIONS = 4
KAFKA_VALUE_BYTES = 200
KAFKA_MAX_MESSAGES = 2_000_000
MQTT_PAYLOAD_BYTES = 200
MQTT_MAX_INFLIGHT = 100
MQTT_MAX_MESSAGES = 1_000_000
REDIS_PIPELINE = 100
REDIS_CLIENTS = 8
REDIS_MAX_OPS = 20_000_000
CHDB_BATCH_ROWS = 10_000
CHDB_MAX_ROWS = 20_000_000
CHDB_MAX_SCANS = 10_000
S3_OBJECT_BYTES = 1024
S3_THREADS = 8
S3_MAX_PUTS = 200_000
SETTLE_S = 10.0
"""How long a measurement may take beyond `seconds` to drain what it started (flush, deliver)."""


@dataclass
class BenchResult:
    """One row: a throughput `value` in `unit`; `error` says why the row cannot be trusted (value 0 if the
    server failed before anything was measured, the measured value if, say, messages went missing)."""

    name: str
    value: float
    unit: str
    detail: str
    error: str | None = None
    count: int = 0
    """Operations (messages, rows, commands, objects) counted in `elapsed_s`."""
    elapsed_s: float = 0.0
    cpu_percent: dict[str, float] = field(default_factory=dict)
    """CPU used while measuring, in % of one core: `client` (this process and its helpers), then servers."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.value > 0


def _rate(
    name: str, unit: str, count: int, elapsed_s: float, detail: str, cpu: CpuMeter | None = None
) -> BenchResult:
    value = count / elapsed_s if elapsed_s > 0 else 0.0
    usage = cpu.percent() if cpu is not None else {}
    if usage:
        detail += "; CPU " + ", ".join(f"{who} {pct:.0f}%" for who, pct in usage.items())
    return BenchResult(
        name, value, unit, detail, count=count, elapsed_s=round(elapsed_s, 3), cpu_percent=usage
    )


# ------------------------------------------------------------------------------------------- CPU
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuMeter:
    """CPU used during a timed section by the client side and by each server, in % of one core.

    It tells which side is the bottleneck: a client near 100% means the Python client, not the server,
    sets the ceiling.
    """

    def __init__(self, servers: Mapping[str, int | None], helpers: Sequence[int] = ()) -> None:
        self.servers = {name: pid for name, pid in servers.items() if pid}
        self.helpers = list(helpers)
        self._start: dict[str, float] = {}
        self._used: dict[str, float] = {}
        self._wall = 0.0

    def _sample(self) -> dict[str, float]:
        client = time.process_time() + sum(_process_cpu_s(pid) for pid in self.helpers)
        return {"client": client} | {name: _process_cpu_s(pid) for name, pid in self.servers.items()}

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._start = self._sample()

    def stop(self) -> None:
        end = self._sample()
        self._wall = time.perf_counter() - self._wall
        self._used = {who: end[who] - self._start.get(who, 0.0) for who in end}

    def __enter__(self) -> CpuMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def percent(self) -> dict[str, float]:
        if self._wall <= 0:
            return {}
        return {who: round(100 * used / self._wall, 1) for who, used in self._used.items()}


def _pids(stack: Stack) -> dict[str, int | None]:
    return {server.name: server.pid for server in stack}


# ----------------------------------------------------------------------------------------- stacks
def _spec(*servers: dict[str, Any]) -> StackSpec:
    return StackSpec.model_validate({"servers": list(servers)})


@contextlib.contextmanager
def _stack(name: str, spec: StackSpec) -> Iterator[Stack]:
    """A stack of its own in a temporary run directory, stopped and deleted whatever happens."""
    with (
        tempfile.TemporaryDirectory(prefix=f"katas-bench-{name}-") as tmp,
        Stack("bench", spec, Path(tmp)) as stack,
    ):
        yield stack


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ------------------------------------------------------------------------------------------ Kafka
async def _kafka(bootstrap: str, seconds: float, pids: dict[str, int | None]) -> list[BenchResult]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(KAFKA_TOPIC, num_partitions=KAFKA_PARTITIONS, replication_factor=1)]
        )
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        request_timeout_ms=30_000,
    )
    delivered = failed = sent = 0
    first_error: list[BaseException | None] = []
    sending = True
    settled = asyncio.Event()  # every record sent is acked or failed

    def done(future: asyncio.Future[Any]) -> None:
        nonlocal delivered, failed
        if future.cancelled() or future.exception() is not None:
            failed += 1
            if not first_error:
                first_error.append(None if future.cancelled() else future.exception())
        else:
            delivered += 1
        if not sending and delivered + failed == sent:
            settled.set()

    body = random.randbytes(KAFKA_VALUE_BYTES - 12)
    produce_cpu = CpuMeter(pids)
    await producer.start()
    try:
        produce_cpu.start()
        start = time.perf_counter()
        deadline = start + seconds
        while sent < KAFKA_MAX_MESSAGES and time.perf_counter() < deadline:
            for _ in range(1000):  # check the clock every 1000 sends
                future = await producer.send(KAFKA_TOPIC, value=b"%012d" % sent + body)
                future.add_done_callback(done)
                sent += 1
        sending = False
        if delivered + failed == sent:
            settled.set()
        await asyncio.wait_for(producer.flush(), SETTLE_S + seconds)
        await asyncio.wait_for(settled.wait(), SETTLE_S)  # done callbacks run on the loop's next turns
        produce_s = time.perf_counter() - start
        produce_cpu.stop()
    finally:
        await producer.stop()
    if failed:
        raise RuntimeError(
            f"{failed:,} of {sent:,} records were not acked: {first_error[0] or 'cancelled'!r}"
        )
    produced = _rate(
        "kafka.produce",
        "msgs/s",
        delivered,
        produce_s,
        f"aiokafka, {KAFKA_PARTITIONS} partitions, {KAFKA_VALUE_BYTES} B values, acks=all, linger 20 ms, "
        f"batches up to 512 KiB; {delivered:,} acked",
        produce_cpu,
    )

    consumer = AIOKafkaConsumer(
        KAFKA_TOPIC,
        bootstrap_servers=bootstrap,
        group_id="bench-readers",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    consume_cpu = CpuMeter(pids)
    joined_at = time.perf_counter()
    await consumer.start()
    try:
        consumed = 0
        first_fetch: float | None = None
        give_up = joined_at + seconds + SETTLE_S * 3  # joining the group may take a few seconds
        while consumed < delivered:
            now = time.perf_counter()
            if now > give_up or (first_fetch is not None and now > first_fetch + seconds):
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=50_000)
            if first_fetch is None and batches:
                first_fetch = now  # the start of the call that returned the first records
                consume_cpu.start()
            consumed += sum(len(records) for records in batches.values())
        consume_end = time.perf_counter()
        if first_fetch is None:
            raise RuntimeError(f"the consumer group read nothing within {give_up - joined_at:.0f} s")
        consume_cpu.stop()
        await asyncio.wait_for(consumer.commit(), SETTLE_S)
    finally:
        await consumer.stop()
    consumed_result = _rate(
        "kafka.consume",
        "msgs/s",
        consumed,
        consume_end - first_fetch,
        f"aiokafka consumer group, getmany up to 50k; read {consumed:,} of {delivered:,}, "
        f"first records {first_fetch - joined_at:.1f} s after start (group join not counted)",
        consume_cpu,
    )
    return [produced, consumed_result]


def _bench_kafka(seconds: float) -> list[BenchResult]:
    spec = _spec(
        {"name": "s3", "kind": "s3rver"},
        {"name": "kafka", "kind": "tansu", "options": {"object_store": "s3"}},
    )
    with _stack("kafka", spec) as stack:
        return asyncio.run(_kafka(stack["kafka"].client_address, seconds, _pids(stack)))


# ------------------------------------------------------------------------------------------- MQTT
def _bench_mqtt(seconds: float) -> list[BenchResult]:
    with _stack("mqtt", _spec({"name": "mqtt", "kind": "mosquitto"})) as stack:
        return [_mqtt(*_host_port(stack["mqtt"].client_address), seconds, _pids(stack))]


def _mqtt_subscriber(host: str, port: int, ready: Any, stop: Any, received: Any, last_arrival: Any) -> None:
    """The subscriber, run in a process of its own so it does not share the publisher's GIL."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        received.value += 1
        last_arrival.value = time.monotonic()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=MQTTProtocolVersion.MQTTv311
    )
    client.on_message = on_message
    client.on_subscribe = lambda *args: ready.set()
    client.connect(host, port)
    client.subscribe("bench/#", qos=1)
    while not stop.is_set():
        client.loop(timeout=0.1)
    client.disconnect()


def _mqtt(host: str, port: int, seconds: float, pids: dict[str, int | None]) -> BenchResult:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    received, last_arrival = ctx.RawValue("q", 0), ctx.RawValue("d", 0.0)
    subscriber = ctx.Process(
        target=_mqtt_subscriber,
        args=(host, port, ready, stop, received, last_arrival),
        name="bench-mqtt-sub",
        daemon=True,
    )
    # paho scans every unacked message on each PUBACK once its own queue is in use, so the publisher keeps
    # at most max_inflight messages outstanding and paho's queue stays empty.
    window = threading.Semaphore(MQTT_MAX_INFLIGHT)
    publisher = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=MQTTProtocolVersion.MQTTv311
    )
    publisher.max_inflight_messages_set(MQTT_MAX_INFLIGHT)
    publisher.on_publish = lambda *args: window.release()
    published = 0
    subscriber.start()
    try:
        waited = time.monotonic() + 30
        while not ready.wait(0.1):
            if not subscriber.is_alive() or time.monotonic() > waited:
                raise RuntimeError("the subscriber did not get a SUBACK (see its traceback on stderr)")
        publisher.connect(host, port)
        publisher.loop_start()
        payload = random.randbytes(MQTT_PAYLOAD_BYTES)
        cpu = CpuMeter(pids, helpers=[subscriber.pid] if subscriber.pid else [])
        cpu.start()
        start = time.monotonic()
        deadline = start + seconds
        while published < MQTT_MAX_MESSAGES and time.monotonic() < deadline:
            if not window.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
            publisher.publish("bench/load", payload, qos=1)
            published += 1
        settle = time.monotonic() + SETTLE_S
        while received.value < published and time.monotonic() < settle:
            time.sleep(0.01)
        cpu.stop()
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        stop.set()
        subscriber.join(10)
        if subscriber.is_alive():
            subscriber.kill()
            subscriber.join()
    delivered = int(received.value)
    if not delivered:
        raise RuntimeError(f"the subscriber received none of the {published:,} messages published")
    detail = (
        f"paho-mqtt publisher (max_inflight {MQTT_MAX_INFLIGHT}) -> Mosquitto -> paho subscriber in another "
        f"process, {MQTT_PAYLOAD_BYTES} B payloads; delivered {delivered:,} of {published:,}"
    )
    result = _rate("mqtt.qos1", "msgs/s", delivered, float(last_arrival.value) - start, detail, cpu)
    if delivered < published:
        result.error = (
            f"{published - delivered:,} of {published:,} QoS 1 messages not delivered in {SETTLE_S:.0f} s"
        )
    return result


# ------------------------------------------------------------------------------------------ Redis
async def _redis(url: str, seconds: float, pids: dict[str, int | None]) -> list[BenchResult]:
    from redis.asyncio import Redis

    client = Redis.from_url(url, max_connections=REDIS_CLIENTS * 2)
    try:
        await client.ping()
        value = random.randbytes(100)
        keys = [f"bench:{i}" for i in range(10_000)]

        ops = 0
        with CpuMeter(pids) as cpu:
            start = time.perf_counter()
            deadline = start + seconds
            while ops < REDIS_MAX_OPS and time.perf_counter() < deadline:
                pipe = client.pipeline(transaction=False)
                for i in range(REDIS_PIPELINE // 2):
                    key = keys[(ops // 2 + i) % len(keys)]
                    pipe.set(key, value)
                    pipe.get(key)
                await pipe.execute()
                ops += REDIS_PIPELINE
            elapsed = time.perf_counter() - start
        pipelined = _rate(
            "redis.pipelined",
            "ops/s",
            ops,
            elapsed,
            f"redis.asyncio, 1 connection, pipelines of {REDIS_PIPELINE} (half SET, half GET), 100 B values",
            cpu,
        )

        counts = [0] * REDIS_CLIENTS

        async def worker(n: int, deadline: float) -> None:
            done = 0
            while time.perf_counter() < deadline and done < REDIS_MAX_OPS // REDIS_CLIENTS:
                key = keys[(n * 1000 + done) % len(keys)]
                await client.set(key, value)
                await client.get(key)
                done += 2
            counts[n] = done

        with CpuMeter(pids) as cpu:
            start = time.perf_counter()
            await asyncio.gather(*(worker(n, start + seconds) for n in range(REDIS_CLIENTS)))
            elapsed = time.perf_counter() - start
        unpipelined = _rate(
            "redis.unpipelined",
            "ops/s",
            sum(counts),
            elapsed,
            f"redis.asyncio, {REDIS_CLIENTS} concurrent clients, one command per round trip (SET then GET)",
            cpu,
        )
        return [pipelined, unpipelined]
    finally:
        await client.aclose()


def _bench_redis(seconds: float) -> list[BenchResult]:
    from katas.infra.servers import RedisServer

    with _stack("redis", _spec({"name": "redis", "kind": "redis"})) as stack:
        server = stack["redis"]
        assert isinstance(server, RedisServer)
        return asyncio.run(_redis(server.url, seconds, _pids(stack)))


# ------------------------------------------------------------------------------------------- chDB
CHDB_TABLE = """
CREATE TABLE bench_events (
    ts DateTime64(3),
    tenant LowCardinality(String),
    device_id UInt32,
    kind LowCardinality(String),
    severity UInt8,
    value Float64,
    latency_ms UInt32,
    region LowCardinality(String),
    ok Bool,
    message String
) ENGINE = MergeTree ORDER BY (tenant, ts)
"""
CHDB_SCAN = (
    "SELECT kind, count() AS n, avg(value) AS mean, max(latency_ms) AS worst, uniq(device_id) AS devices "
    "FROM bench_events GROUP BY kind"
)


def _chdb_batches(count: int) -> list[bytes]:
    """JSONEachRow bodies of CHDB_BATCH_ROWS rows each, encoded before the clock starts."""
    rng = random.Random(7)
    kinds = ["login", "logout", "alert", "metric", "config", "heartbeat"]
    regions = ["eu-west", "eu-central", "us-east", "us-west", "ap-south"]
    base_ms = int(time.time() * 1000)
    bodies = []
    for b in range(count):
        rows = []
        for i in range(CHDB_BATCH_ROWS):
            n = b * CHDB_BATCH_ROWS + i
            row = {
                "ts": (base_ms + n) / 1000,
                "tenant": f"tenant-{rng.randrange(20)}",
                "device_id": rng.randrange(100_000),
                "kind": rng.choice(kinds),
                "severity": rng.randrange(8),
                "value": round(rng.random() * 1000, 3),
                "latency_ms": rng.randrange(2000),
                "region": rng.choice(regions),
                "ok": rng.random() > 0.05,
                "message": f"event {n} from device {rng.randrange(100_000)}",
            }
            rows.append(json.dumps(row, separators=(",", ":")))
        bodies.append("\n".join(rows).encode())
    return bodies


async def _chdb(url: str, seconds: float, pids: dict[str, int | None]) -> list[BenchResult]:
    from katas.infra.clickhouse import ClickHouse

    bodies = _chdb_batches(4)
    async with ClickHouse(url, timeout_s=60 + seconds) as ch:
        await ch.execute(CHDB_TABLE)
        inserted = 0
        with CpuMeter(pids) as insert_cpu:
            start = time.perf_counter()
            deadline = start + seconds
            while inserted < CHDB_MAX_ROWS and time.perf_counter() < deadline:
                body = bodies[(inserted // CHDB_BATCH_ROWS) % len(bodies)]
                await ch.execute("INSERT INTO bench_events FORMAT JSONEachRow", body)
                inserted += CHDB_BATCH_ROWS
            insert_s = time.perf_counter() - start
        stored = int(await ch.scalar("SELECT count() FROM bench_events"))
        if stored != inserted:
            raise RuntimeError(f"inserted {inserted:,} rows but the table holds {stored:,}")
        batch_kib = sum(len(b) for b in bodies) / len(bodies) / 1024
        insert = _rate(
            "chdb.insert",
            "rows/s",
            inserted,
            insert_s,
            f"chDB store owner over HTTP, JSONEachRow batches of {CHDB_BATCH_ROWS:,} rows "
            f"(~{batch_kib:,.0f} KiB), 10-column MergeTree table",
            insert_cpu,
        )

        scans = 0
        with CpuMeter(pids) as scan_cpu:
            start = time.perf_counter()
            deadline = start + seconds
            while scans < CHDB_MAX_SCANS and time.perf_counter() < deadline:
                groups = await ch.rows(CHDB_SCAN)
                if sum(int(g["n"]) for g in groups) != stored:
                    raise RuntimeError(f"the aggregate counted {groups} rows, expected {stored:,}")
                scans += 1
            scan_s = time.perf_counter() - start
        scan = _rate(
            "chdb.scan",
            "rows/s",
            scans * stored,
            scan_s,
            f"GROUP BY kind with count/avg/max/uniq over the {stored:,} inserted rows, "
            f"{scans:,} queries one after another",
            scan_cpu,
        )
        return [insert, scan]


def _bench_chdb(seconds: float) -> list[BenchResult]:
    with _stack("chdb", _spec({"name": "chdb", "kind": "chdb"})) as stack:
        return asyncio.run(_chdb(stack["chdb"].endpoint, seconds, _pids(stack)))


# --------------------------------------------------------------------------------------------- S3
def _bench_s3(seconds: float) -> list[BenchResult]:
    spec = _spec({"name": "s3", "kind": "s3rver", "options": {"buckets": "bench"}})
    with _stack("s3", spec) as stack:
        return [_s3(stack["s3"].endpoint, seconds, _pids(stack))]


def _s3(endpoint: str, seconds: float, pids: dict[str, int | None]) -> BenchResult:
    client = s3_client(endpoint, max_pool_connections=S3_THREADS * 2, retries={"max_attempts": 1})
    client.head_bucket(Bucket="bench")
    body = random.randbytes(S3_OBJECT_BYTES)
    per_thread = S3_MAX_PUTS // S3_THREADS

    def worker(n: int, deadline: float) -> int:
        done = 0
        while done < per_thread and time.perf_counter() < deadline:
            client.put_object(Bucket="bench", Key=f"bench/{n}/{done}", Body=body)
            done += 1
        return done

    with CpuMeter(pids) as cpu, ThreadPoolExecutor(S3_THREADS, thread_name_prefix="bench-s3") as pool:
        start = time.perf_counter()
        futures = [pool.submit(worker, n, start + seconds) for n in range(S3_THREADS)]
        puts = sum(f.result() for f in futures)
        elapsed = time.perf_counter() - start
    return _rate(
        "s3.put",
        "PUTs/s",
        puts,
        elapsed,
        f"boto3 PutObject, {S3_OBJECT_BYTES} B objects, {S3_THREADS} threads",
        cpu,
    )


# ------------------------------------------------------------------------------------------ run all
@dataclass(frozen=True)
class Measurement:
    rows: tuple[tuple[str, str], ...]
    """(name, unit) of the rows it returns, so a failure can fill them with the error."""
    run: Callable[[float], list[BenchResult]]


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement((("kafka.produce", "msgs/s"), ("kafka.consume", "msgs/s")), _bench_kafka),
    Measurement((("mqtt.qos1", "msgs/s"),), _bench_mqtt),
    Measurement((("redis.pipelined", "ops/s"), ("redis.unpipelined", "ops/s")), _bench_redis),
    Measurement((("chdb.insert", "rows/s"), ("chdb.scan", "rows/s")), _bench_chdb),
    Measurement((("s3.put", "PUTs/s"),), _bench_s3),
)


def run_all(seconds: float = 5.0, progress: Callable[[str], None] | None = None) -> list[BenchResult]:
    """Run every measurement, each on servers of its own; a failing one yields rows with its error."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    results: list[BenchResult] = []
    for measurement in MEASUREMENTS:
        if progress is not None:
            progress(", ".join(name for name, _ in measurement.rows))
        try:
            rows = measurement.run(seconds)
        except Exception as exc:  # one broken server must not hide the others' numbers
            message = f"{type(exc).__name__}: {exc}"
            rows = [BenchResult(name, 0.0, unit, "", error=message) for name, unit in measurement.rows]
        results.extend(rows)
    return results


def render(results: list[BenchResult]) -> Table:
    table = Table(title="Raw throughput of the native servers (loopback, this machine)")
    table.add_column("measurement")
    table.add_column("throughput", justify="right")
    table.add_column("unit")
    table.add_column("how", overflow="fold")
    for r in results:
        value = f"{r.value:,.0f}" if r.value > 0 else "-"
        if r.error is None:
            table.add_row(r.name, value, r.unit, escape(r.detail))
        else:
            first_line = next(iter(r.error.splitlines()), "") or "error"
            detail = escape(f"{r.detail}; " if r.detail else "") + f"[red]{escape(first_line)}[/]"
            table.add_row(r.name, f"[red]{value}[/]", r.unit, detail)
    return table


# ----------------------------------------------------------------------------------- machine facts
def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if model:
            facts["cpu_model"] = model.group(1).strip()
    with contextlib.suppress(OSError, ValueError):
        meminfo = Path("/proc/meminfo").read_text()
        total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
        if total:
            facts["memory_gib"] = round(int(total.group(1)) / 1024 / 1024, 1)
    return facts


def _command_output(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def server_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    try:
        from katas.infra.servers import _tansu_binary

        versions["tansu"] = _command_output([_tansu_binary(), "--version"])
    except (ImportError, FileNotFoundError) as exc:
        versions["tansu"] = f"unknown ({exc})"
    versions["redis"] = _command_output(["redis-server", "--version"])
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    versions["mosquitto"] = _command_output([mosquitto, "-h"])
    try:
        import chdb

        versions["chdb"] = f"{chdb.__version__} (ClickHouse {getattr(chdb, 'engine_version', '?')})"
    except ImportError as exc:
        versions["chdb"] = f"unknown ({exc})"
    package = NODE_PACKAGES_DIR / "node_modules" / "s3rver" / "package.json"
    try:
        versions["s3rver"] = str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError) as exc:
        versions["s3rver"] = f"unknown ({exc})"
    versions["node"] = _command_output(["node", "--version"])
    return versions


def write_json(results: list[BenchResult], path: Path) -> None:
    document = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "versions": server_versions(),
        "results": [{**asdict(r), "ok": r.ok} for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


__all__ = ["BenchResult", "machine_facts", "render", "run_all", "server_versions", "write_json"]
