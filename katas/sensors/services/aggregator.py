"""Aggregator: `sensors.readings` -> 10 s and 1 min event-time windows per zone, floor and building.

Every second the open 10 s windows that changed go to the live view in Redis (what the HVAC API and the
dashboard read, so they trail the readings by about a second plus the pipeline's lag), and the windows
that became final go to ClickHouse as 1-minute rows. Once an hour of 1-minute rows is final, it is rolled
up inside ClickHouse into a 1-hour row (`storage.rollup_hours`).

Offsets are committed only up to the first reading whose 1-minute window is still open. After a crash the
aggregator reads those readings again and rebuilds the open windows exactly; nothing that was only in
memory is lost. A window that was already final and is rebuilt in part (an out-of-order reading read
again) can only have fewer readings than the stored row, and the table keeps the row with the most
(ReplacingMergeTree versioned by count). Readings delivered twice (MQTT and the log are at least once) are
recognised by sensor and timestamp and counted once.

Readings too late for their window (beyond the allowed lateness) are counted, not added; the readings
log keeps them, so a retroactive rule (the alerter replays the log) still sees them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from fastapi import FastAPI
from prometheus_client import Counter, Gauge

from katas.infra import kafka
from katas.infra.service import Worker, http_app, log, mistakes, run_service, until_done
from katas.infra.settings import infra_settings
from katas.sensors.aggregation import Added, WindowAggregator, WindowResult
from katas.sensors.readings import InvalidReadingError, Reading, RecentReadings
from katas.sensors.settings import SensorsSettings
from katas.sensors.storage import LIVE_SIZE_S, LiveView, ensure_schema, rollup_hours, store_windows
from katas.sensors.stores import TenantWarehouses
from katas.sensors.topics import READINGS, TOPIC_PARTITIONS

AGGREGATED = Counter("aggregator_readings", "readings added to windows")
DUPLICATES = Counter(
    "aggregator_duplicates", "readings seen before (same sensor and timestamp), not counted again"
)
LATE = Counter("aggregator_late", "readings too late for their window")
UNREADABLE = Counter("aggregator_unreadable", "records on the readings topic that are not readings")
STORED = Counter("aggregator_windows_stored", "final 1-minute windows written to ClickHouse")
UNOWNED = Counter(
    "aggregator_windows_unowned", "final windows of a tenant the registry does not know, not stored"
)
LIVE = Counter("aggregator_live_updates", "live-view fields written to Redis")
OPEN_WINDOWS = Gauge("aggregator_open_windows", "windows in memory, not final yet")
FLUSH_EVERY_S = 1.0
GROUP = "aggregator"
CLOSED = -1
"""The pending end of a record that holds nothing open (late, duplicate, unreadable)."""


@dataclass
class SafeOffsets:
    """Per partition, the records consumed and the end (µs) of the longest window each one is in, so the
    committed offset never passes a reading whose window is still open."""

    _pending: dict[TopicPartition, deque[tuple[int, int]]] = field(default_factory=dict)

    def consumed(self, tp: TopicPartition, offset: int, window_end_us: int) -> None:
        self._pending.setdefault(tp, deque()).append((offset, window_end_us))

    def committable(self, watermark_us: int) -> dict[TopicPartition, int]:
        """The offsets to commit: past every record whose windows are final by `watermark_us`."""
        offsets = {}
        for tp, pending in self._pending.items():
            last_safe = None
            while pending and pending[0][1] <= watermark_us:
                last_safe = pending.popleft()[0]
            if last_safe is not None:
                offsets[tp] = last_safe + 1
        return offsets


@dataclass
class Aggregation:
    stores: TenantWarehouses
    live: LiveView
    windows: WindowAggregator = field(default_factory=WindowAggregator)
    seen: RecentReadings = field(default_factory=RecentReadings)
    offsets: SafeOffsets = field(default_factory=SafeOffsets)
    _unwritten: list[WindowResult] = field(default_factory=list)

    def take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        try:
            reading = Reading.from_json(record.value or b"")
        except (InvalidReadingError, ValueError) as exc:
            UNREADABLE.inc()
            log("unreadable", offset=record.offset, error=str(exc)[:200])
            self.offsets.consumed(tp, record.offset, CLOSED)
            return
        if not self.seen.first_time(reading):
            DUPLICATES.inc()
            self.offsets.consumed(tp, record.offset, CLOSED)
            return
        outcome = self.windows.add(reading)
        if isinstance(outcome, Added):
            AGGREGATED.inc()
            ts_us = int(reading.ts.timestamp() * 1_000_000)
            size_us = max(self.windows.sizes) * 1_000_000
            self.offsets.consumed(tp, record.offset, ts_us - ts_us % size_us + size_us)
        else:
            LATE.inc()
            self.offsets.consumed(tp, record.offset, CLOSED)

    async def flush(self) -> None:
        """Write what changed since the last flush that succeeded. The aggregator emits each window once,
        so what a failed write left unwritten is kept and written again on the next call; writing a
        window twice changes nothing (the table keeps one row per window, the live view the newest)."""
        self._unwritten += self.windows.flush()
        OPEN_WINDOWS.set(self.windows.open_windows)
        # The live view first: it is what dashboards and the HVAC feed read, and a tenant's store can be
        # busy for seconds (a day's archive), which must not make the live view stale.
        LIVE.inc(await self.live.write([r for r in self._unwritten if r.size_s == LIVE_SIZE_S]))
        final: dict[str, list[WindowResult]] = {}
        for result in self._unwritten:
            if result.final:
                final.setdefault(result.scope.tenant, []).append(result)

        async def store(tenant: str, results: list[WindowResult]) -> None:
            ch, database = self.stores.of(tenant), self.stores.database(tenant)
            STORED.inc(await store_windows(ch, database, results))
            await rollup_hours(ch, database, _hours_final_by(results))

        unowned = [r for tenant, results in final.items() if tenant not in self.stores.urls for r in results]
        UNOWNED.inc(len(unowned))  # a tenant the registry does not know has no store to go to
        # The tenants' stores are separate servers: written side by side, a slow one delays no other.
        await asyncio.gather(*(store(t, rs) for t, rs in final.items() if t in self.stores.urls))
        self._unwritten = []

    def committable(self) -> dict[TopicPartition, int]:
        """The offsets safe to commit once `flush` succeeded: past every reading whose windows are final."""
        watermark = self.windows.watermark
        if watermark is None:
            return {}
        return self.offsets.committable(int(watermark.timestamp() * 1_000_000))


def _hours_final_by(final: Sequence[WindowResult]) -> list[datetime]:
    """The hours whose last minute just became final: their 1-hour rows can be rolled up now."""
    return sorted(
        {
            r.start.replace(minute=0, second=0, microsecond=0)
            for r in final
            if r.size_s == 60 and r.end.minute == 0 and r.end.second == 0
        }
    )


async def aggregate(
    consumer: AIOKafkaConsumer[bytes, bytes], aggregation: Aggregation, stop: asyncio.Event
) -> None:
    await consumer.start()
    last_flush = time.monotonic()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            records = [r for partition in batches.values() for r in partition]
            for record in records:
                aggregation.take(record)
            if not records and await kafka.lag(consumer) == 0:
                aggregation.windows.advance(datetime.now(UTC))  # idle: let windows close by the clock
            if time.monotonic() - last_flush >= FLUSH_EVERY_S:
                if not await until_done(aggregation.flush, stop, event="flush_failed"):
                    return
                offsets = aggregation.committable()
                if offsets and not await until_done(
                    functools.partial(consumer.commit, offsets), stop, event="commit_failed"
                ):
                    return
                last_flush = time.monotonic()
    finally:
        await consumer.stop()


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    settings = infra_settings()
    stores = SensorsSettings().warehouses(pooled="api-only-isolation" in mistakes())
    for tenant, ch in stores:
        await ensure_schema(ch, stores.database(tenant))
    redis = aioredis.Redis.from_url(settings.require("redis_url"))
    aggregation = Aggregation(stores, LiveView(redis))
    consumer = kafka.consumer(READINGS, group=GROUP)

    async def run(stop: asyncio.Event) -> None:
        try:
            await aggregate(consumer, aggregation, stop)
        finally:
            await stores.close()
            await redis.aclose()

    return http_app("sensors aggregator"), [run]


if __name__ == "__main__":
    run_service(build)
