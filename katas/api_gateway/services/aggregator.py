"""The usage aggregator: usage events from the broker into the usage store, `python -m
katas.api_gateway.services.aggregator`.

One consumer group (`usage-aggregator`) reads the usage topic with the lab's consume-process-commit loop
(katas.infra.kafka.consume_batches): a fetched batch is decoded, written to the store in one INSERT (the
store's materialized view folds it into the per-minute aggregates in the same query) and its offsets are
committed only afterwards. If the store is down the INSERT fails and the same batch is retried with
backoff; nothing is committed before it is stored, and redelivered events are dropped by id in the store
(katas.api_gateway.adapters.usage_store).

A record that is not a usage event cannot be fixed by retrying: it goes to the store's dead-letter table
with the reason, is counted in `usage_dead_letters_total` and logged, and the batch goes on. So nothing
malformed stops the pipeline, and nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiohttp import web
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from katas.api_gateway.adapters.usage_store import DeadLetter, UsageStore
from katas.api_gateway.analytics import UsageEvent, UsageEventError
from katas.api_gateway.settings import gateway_settings
from katas.infra import kafka
from katas.infra.clickhouse import ClickHouse
from katas.infra.service import Worker, aiohttp_reserved_routes, log, run_service
from katas.infra.settings import infra_settings

GROUP = "usage-aggregator"

STORED = Counter("usage_events_stored", "Usage events written to the store")
DUPLICATES = Counter("usage_events_duplicates", "Usage events delivered again and not stored twice")
DEAD_LETTERS = Counter("usage_dead_letters", "Records of the usage topic that were not usage events")


class Aggregator:
    def __init__(self, store: UsageStore, topic: str) -> None:
        self.store = store
        self.topic = topic

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Store a batch; raises only when the store is unreachable (the batch is then retried)."""
        events: list[UsageEvent] = []
        letters: list[DeadLetter] = []
        for record in records:
            try:
                events.append(UsageEvent.decode(record.value))
            except UsageEventError as exc:
                letters.append(
                    DeadLetter(record.topic, record.partition, record.offset, str(exc), record.value or b"")
                )
        # Events first: if the dead-letter INSERT fails, the retried batch's events are dropped as
        # duplicates by id, so nothing is counted twice in the aggregates.
        if events:
            inserted = await self.store.insert(events)
            STORED.inc(inserted.stored)
            DUPLICATES.inc(inserted.duplicates)
        if letters:
            await self.store.dead_letter(letters)
            DEAD_LETTERS.inc(len(letters))
            for letter in letters[:5]:  # a flood of bad records must not flood the log as well
                log(
                    "usage_dead_letter",
                    partition=letter.partition,
                    offset=letter.offset,
                    reason=letter.reason,
                )
            if len(letters) > 5:
                log("usage_dead_letters_more", count=len(letters) - 5)


async def build() -> tuple[web.Application, Sequence[Worker]]:
    settings = gateway_settings()
    ch = ClickHouse(infra_settings().require("clickhouse_url"))
    store = UsageStore(ch)
    await store.ensure_schema()
    await kafka.ensure_topics({settings.usage_topic: settings.usage_partitions})
    aggregator = Aggregator(store, settings.usage_topic)

    async def aggregate(stop: asyncio.Event) -> None:
        # Usage is read for billing and dashboards, not alerts: a second's wait per fetch is fine, and
        # every fetch costs tansu a listing of each partition's objects in the object store.
        source = kafka.consumer(
            settings.usage_topic, group=GROUP, fetch_max_wait_ms=1000, fetch_min_bytes=256 * 1024
        )
        await kafka.consume_batches(source, aggregator.handle, stop, timeout_ms=1000)

    app = web.Application()
    app.add_routes(aiohttp_reserved_routes())

    async def close(_: web.Application) -> None:
        await ch.close()

    app.on_cleanup.append(close)
    log("aggregator_ready", topic=settings.usage_topic, group=GROUP)
    return app, [aggregate]


if __name__ == "__main__":
    run_service(build)
