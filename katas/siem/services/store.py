"""Store: normalized events from `siem.events` into the hot store, and the hot -> cold lifecycle.

Writes are batched (one INSERT per fetched batch, at most `write_batch_max` rows) and the batch's offsets
are committed after the INSERT returned, so a crash re-delivers; the hot table and search remove the
duplicates by event id. The lifecycle runs beside the writer and moves events older than the hot
retention to Parquet on the object store (see katas.siem.lifecycle for why a crash mid-move is safe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from aiokafka import ConsumerRecord
from fastapi import FastAPI
from prometheus_client import Counter

from katas.infra import kafka
from katas.infra.clickhouse import ClickHouse
from katas.infra.s3 import ensure_bucket
from katas.infra.service import Worker, http_app, log, mistakes, run_service
from katas.infra.settings import infra_settings
from katas.siem import lifecycle, storage
from katas.siem.cold import ColdStore
from katas.siem.services.events import read_events
from katas.siem.settings import SiemSettings
from katas.siem.topics import EVENTS, TOPIC_PARTITIONS

STORED = Counter("store_events", "normalized events inserted into the hot store")
UNREADABLE = Counter("store_unreadable", "records on siem.events that were not normalized events")
MOVED = Counter("store_moved_to_cold", "events moved from the hot store to Parquet")
LIFECYCLE_FAILURES = Counter("store_lifecycle_failures", "lifecycle runs that failed and wait for the next")


class Writer:
    def __init__(self, ch: ClickHouse, batch_max: int) -> None:
        self.ch = ch
        self.batch_max = batch_max

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        events = read_events(records)
        UNREADABLE.inc(len(records) - len(events))
        for start in range(0, len(events), self.batch_max):
            STORED.inc(await storage.insert_events(self.ch, events[start : start + self.batch_max]))


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    settings = SiemSettings()
    ch = ClickHouse(infra_settings().require("clickhouse_url"))
    no_lifecycle = "no-lifecycle" in mistakes()
    hot_ttl = timedelta(days=3650) if no_lifecycle else timedelta(seconds=settings.hot_ttl_s)
    await storage.ensure_schema(ch, hot_ttl=hot_ttl)
    cold = ColdStore.from_settings(settings.cold_bucket)
    await asyncio.to_thread(ensure_bucket, cold.client, settings.cold_bucket)
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    writer = Writer(ch, settings.write_batch_max)
    policy = lifecycle.LifecyclePolicy(hot_retention=timedelta(seconds=settings.hot_retention_s))

    async def write_stream(stop: asyncio.Event) -> None:
        await kafka.consume_batches(kafka.consumer(EVENTS, group="store"), writer.handle, stop)

    def report(result: lifecycle.LifecycleReport) -> None:
        if result.rows_moved:
            MOVED.inc(result.rows_moved)
            log("moved_to_cold", rows=result.rows_moved, objects=result.objects_written)

    def report_failure(error: Exception) -> None:
        # The hot or cold store is down: the journal makes the next run finish or redo this one.
        LIFECYCLE_FAILURES.inc()
        log("lifecycle_failed", error=f"{type(error).__name__}: {error}")

    async def move_to_cold(stop: asyncio.Event) -> None:
        interval = timedelta(seconds=settings.lifecycle_interval_s)
        await lifecycle.run_forever(
            ch, cold, policy, interval, stop, on_report=report, on_error=report_failure
        )

    if no_lifecycle:  # the mistake: everything stays in the hot store, forever
        log("lifecycle_off", reason="mistake no-lifecycle")
        return http_app("SIEM store"), [write_stream]
    return http_app("SIEM store"), [write_stream, move_to_cold]


if __name__ == "__main__":
    run_service(build)
