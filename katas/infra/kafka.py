"""The lab's Kafka-protocol client settings and the consume-process-commit loop every pipeline stage uses.

At-least-once, on purpose: a stage commits a batch's offsets only after its handler has finished with the
batch (produced downstream and flushed, or stored), so a crash re-delivers the batch instead of losing
it, and stages downstream remove duplicates by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from prometheus_client import Counter, Gauge

from katas.infra.service import until_done
from katas.infra.settings import infra_settings

BATCH_RETRIES = Counter("stage_batch_retries", "batches handled again after their handler failed")


@functools.cache
def consumer_lag_gauge() -> Gauge:
    """Registered by the first consuming loop, so a service that only produces shows no lag at all."""
    return Gauge("stage_consumer_lag", "records on the stage's partitions not fetched yet (last fetch)")


BatchHandler = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


def bootstrap() -> str:
    return infra_settings().require("kafka_bootstrap")


def producer(**overrides: Any) -> AIOKafkaProducer[bytes, bytes]:
    """A producer that waits for the broker to store each batch and batches for throughput: tansu
    writes one object per produce request, so small requests are what makes it slow."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap(),
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "request_timeout_ms": 10_000,
    }
    return AIOKafkaProducer(**(options | overrides))


def consumer(*topics: str, group: str | None, **overrides: Any) -> AIOKafkaConsumer[bytes, bytes]:
    """A consumer in `group` that commits only when told to; `group=None` reads without a group."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap(),
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 2000,
        # tansu hands a departed member's partitions over only after its session times out: a restarted
        # worker waits about twice this before it consumes again (measured: ~11 s at 6 s, ~18 s at 10 s).
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
    }
    return AIOKafkaConsumer(*topics, **(options | overrides))


async def ensure_topics(partitions: Mapping[str, int]) -> None:
    """Create topics that do not exist yet (brokers may also auto-create, but with their defaults)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, n, 1) for name, n in partitions.items() if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another service created it first
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def consume_batches(
    source: AIOKafkaConsumer[bytes, bytes],
    handle: BatchHandler,
    stop: asyncio.Event,
    *,
    timeout_ms: int = 200,
    max_backoff_s: float = 5.0,
    commit_every_s: float = 1.0,
) -> None:
    """Fetch batches until `stop` is set; commit offsets only of batches `handle` returned from.

    If `handle` raises (a store or the broker is down: stages dead-letter bad input themselves, so what
    raises here is infrastructure), the same batch is handled again after a backoff, until it succeeds or
    the service is stopped; nothing of it is committed before. So a stage rides out an outage of what it
    writes to and recovers by itself, and the outage shows as lag and in `stage_batch_retries_total`.

    Offsets are committed at most every `commit_every_s` (and when the stage stops): tansu writes each
    commit to its object store, one object per partition plus the group's state, so committing after
    every small batch was half of all object-store writes. A crash re-delivers what was handled since the
    last commit, which every stage already tolerates (duplicates are removed by event id).
    """
    await source.start()
    last_commit = time.monotonic()
    handled_since_commit = False
    try:
        while not stop.is_set():
            batches = await source.getmany(timeout_ms=timeout_ms)
            records = [record for partition in batches.values() for record in partition]
            consumer_lag_gauge().set(await lag(source))
            if records:
                if not await until_done(
                    functools.partial(handle, records),
                    stop,
                    event="batch_failed",
                    max_backoff_s=max_backoff_s,
                    retries=BATCH_RETRIES,
                ):
                    return  # stopping: this batch is unhandled, so the commit below must not cover it
                handled_since_commit = True
            if handled_since_commit and time.monotonic() - last_commit >= commit_every_s:
                # The commit can fail too (tansu keeps offsets in its object store): retry it, never exit.
                if not await until_done(
                    source.commit,
                    stop,
                    event="commit_failed",
                    max_backoff_s=max_backoff_s,
                    retries=BATCH_RETRIES,
                ):
                    return
                last_commit, handled_since_commit = time.monotonic(), False
        if handled_since_commit:  # stopping between batches: keep what was handled
            with contextlib.suppress(Exception):
                await source.commit()
    finally:
        await source.stop()


async def partitions_of(consumer: AIOKafkaConsumer[bytes, bytes], topic: str) -> list[TopicPartition]:
    """Every partition of `topic`, from the cluster's metadata."""
    await consumer.topics()  # fetches the metadata
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


class ReadStalledError(RuntimeError):
    """The broker sent nothing for too long while a topic was read to its end."""


async def read_from_start(
    consumer: AIOKafkaConsumer[bytes, bytes], partitions: Sequence[TopicPartition], *, stall_s: float = 30.0
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Every record of `partitions`, oldest first, up to each partition's end when reading started.

    The end is the high watermark of the first fetch response for the partition, not `end_offsets`:
    tansu 0.6 answers ListOffsets (latest) with an offset short of the log end (1 for a partition of 16
    records in four batches, measured), so reading up to `end_offsets` stopped early. A consumer without
    a group, started by the caller; ReadStalledError if nothing arrives for `stall_s`."""
    consumer.assign(list(partitions))
    if not partitions:
        return
    await consumer.seek_to_beginning(*partitions)
    ends: dict[TopicPartition, int] = {}
    remaining = set(partitions)
    progress_at = time.monotonic()
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=500)
        for tp in remaining - ends.keys():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp], progress_at = highwater, time.monotonic()
        for tp, records in batches.items():
            progress_at = time.monotonic()
            end = ends.get(tp)
            wanted = [r for r in records if end is None or r.offset < end]
            if wanted:
                yield wanted
        for tp in remaining & ends.keys():
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
        if remaining and time.monotonic() - progress_at > stall_s:
            raise ReadStalledError(f"nothing from {sorted(str(tp) for tp in remaining)} for {stall_s:g} s")


async def lag(source: AIOKafkaConsumer[bytes, bytes]) -> int:
    """Records on the consumer's partitions beyond its position, from the high watermarks its last fetch
    returned (no request to the broker): how far behind the stage is."""
    behind = 0
    for partition in source.assignment():
        highwater = source.highwater(partition)
        if highwater is not None:
            behind += max(0, highwater - await source.position(partition))
    return behind
