"""Recorder: `sensors.readings` -> the raw hot table of each tenant's store; complete days -> Parquet.

**Recording.** The recorder reads the readings topic in its own consumer group ("recorder") and keeps
every reading, as it came, in `<tenant db>.raw` of the tenant's own ClickHouse store (`katas.sensors.raw`,
`katas.sensors.stores`). Readings are gathered into a batch for about a second (or `recorder_batch_rows`
readings, whichever comes first), inserted with one statement per tenant, and the batch's offsets are
committed only after every insert succeeded. A failed insert is retried until it succeeds or the service
stops, with nothing committed before; a crash re-delivers the batch, and what was inserted twice collapses
in the table (same building, timestamp and sensor). Readings repeated within a batch are written once.

How far behind it is: `recorder_unstored_readings`, set after every poll of the log, counts the records
on the readings topic not stored yet: those not fetched (the consumer lag, `stage_consumer_lag`) plus those
taken into the batch being gathered. The consumer lag alone would hide a slow store, whose backlog waits
in the batch rather than in the log.

**The `raw-rows-in-postgres` mistake.** With the switch, readings go to one PostgreSQL table instead, one
`INSERT` per reading in autocommit (`katas.sensors.adapters.postgres_raw`: the card's "before" world), and
the same gauge shows whether that keeps up with the rate. The ClickHouse stores still get their schema
(the API's readings route reads them, and finds nothing), and the archiver runs over them as ever.

Records that are not readings are counted (`recorder_unreadable`) and skipped, as the aggregator does (the
bridge only writes valid readings, so these come from elsewhere). Readings of a tenant the registry does
not know have no store to go to: counted (`recorder_unowned`), logged, skipped.

**Archiving.** A second worker archives, every `archive_every_s` (and shortly after start), every complete
day still in the hot tables to the cold tier as Parquet, one file per tenant, building and day
(`katas.sensors.raw.archive_tenant`); days that did not change since are not looked at again.
`POST /archive/run` (optionally `?day=YYYY-MM-DD`) runs a pass now and answers the files it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from fastapi import FastAPI, HTTPException, Query
from prometheus_client import Counter, Gauge, Histogram
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from katas.infra import kafka
from katas.infra.s3 import ensure_bucket, s3_client
from katas.infra.service import Worker, http_app, log, mistakes, run_service, until_done
from katas.infra.settings import infra_settings
from katas.sensors.adapters.postgres_raw import PostgresRawStore
from katas.sensors.raw import (
    ArchivedFile,
    ColdTier,
    RawSettings,
    archive_tenant,
    ensure_raw_schema,
    store_readings,
)
from katas.sensors.readings import InvalidReadingError, Reading
from katas.sensors.settings import SensorsSettings
from katas.sensors.stores import TenantWarehouses
from katas.sensors.topics import READINGS, TOPIC_PARTITIONS

GROUP = "recorder"

STORED = Counter("recorder_readings", "readings written to the raw hot tables")
REPEATED = Counter("recorder_repeated", "readings repeated within a batch, written once")
UNREADABLE = Counter("recorder_unreadable", "records on the readings topic that are not readings")
UNOWNED = Counter("recorder_unowned", "readings of a tenant without a store, not stored")
BATCHES = Counter("recorder_batches", "batches inserted and committed")
INSERT_RETRIES = Counter("recorder_insert_retries", "batch inserts retried after a failure")
INSERT_SECONDS = Histogram("recorder_insert_seconds", "time to insert one batch into the tenants' stores")
ARCHIVED_FILES = Counter("recorder_archived_files", "Parquet files written to the cold tier")
ARCHIVED_ROWS = Counter("recorder_archived_rows", "readings written to the cold tier")
ARCHIVE_FAILURES = Counter("recorder_archive_failures", "tenant archive passes that failed")
UNSTORED = Gauge(
    "recorder_unstored_readings",
    "records on the readings topic not stored yet: not fetched (the consumer lag) plus held in the batch",
)


class RecorderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENSORS_", extra="ignore", frozen=True)

    recorder_batch_rows: int = Field(default=20_000, ge=1)
    """Readings per insert at most: a backlog (after an outage) is taken in inserts of this size."""
    recorder_batch_s: float = Field(default=1.0, gt=0)
    """How long readings wait for their batch at most: one insert a second per store, which ClickHouse
    merges comfortably (an insert per small poll would make a part each)."""
    archive_every_s: float = Field(default=600.0, gt=0)
    archive_first_after_s: float = Field(default=20.0, ge=0)


# ---------------------------------------------------------------------------------------------- recording
@dataclass
class Batch:
    readings: dict[str, dict[tuple[str, datetime], Reading]] = field(default_factory=dict)
    """tenant -> (sensor topic, ts) -> reading: a repeat within the batch replaces, not adds."""
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    """The offsets to commit once the batch is stored: past its last record of each partition."""
    records: int = 0
    started: float = 0.0

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.readings.values())


class RawSink(Protocol):
    """Where a tenant's raw readings are written: the number of rows sent, or an exception."""

    async def write(self, tenant: str, readings: Iterable[Reading]) -> int: ...


@dataclass
class TenantStoresSink:
    """The design: one insert per tenant into the hot table of the tenant's own ClickHouse store."""

    stores: TenantWarehouses

    async def write(self, tenant: str, readings: Iterable[Reading]) -> int:
        return await store_readings(self.stores.of(tenant), self.stores.database(tenant), readings)


@dataclass
class PostgresSink:
    """The `raw-rows-in-postgres` mistake: every tenant's readings, one INSERT each, into one table."""

    store: PostgresRawStore

    async def write(self, tenant: str, readings: Iterable[Reading]) -> int:
        return await self.store.write(readings)


@dataclass
class Recorder:
    stores: TenantWarehouses
    """The registry's tenants, each with its store: a tenant not in it has nowhere to go."""
    sink: RawSink | None = None
    """Where readings are written; None: the tenants' own stores (`TenantStoresSink`)."""
    batch: Batch = field(default_factory=Batch)

    def take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if not self.batch.records:
            self.batch.started = time.monotonic()
        self.batch.records += 1
        tp = TopicPartition(record.topic, record.partition)
        self.batch.offsets[tp] = max(self.batch.offsets.get(tp, 0), record.offset + 1)
        try:
            reading = Reading.from_json(record.value or b"")
        except (InvalidReadingError, ValueError) as exc:
            UNREADABLE.inc()
            log("unreadable", offset=record.offset, error=str(exc)[:200])
            return
        held = self.batch.readings.setdefault(reading.place.tenant, {})
        key = (reading.place.topic, reading.ts)
        if key in held:
            REPEATED.inc()
        held[key] = reading

    def due(self, settings: RecorderSettings) -> bool:
        if not self.batch.records:
            return False
        full = self.batch.size >= settings.recorder_batch_rows
        return full or time.monotonic() - self.batch.started >= settings.recorder_batch_s

    async def store(self) -> None:
        """Write the batch's readings, one write per tenant, concurrently: one statement into each
        tenant's store (with `raw-rows-in-postgres`, a statement per reading on the one PostgreSQL
        connection, which runs them one at a time). A tenant whose write succeeded is dropped from the batch, so a retry after a partial failure writes only the
        rest. Raises if any insert failed (the caller retries)."""
        unowned = [t for t in self.batch.readings if t not in self.stores.urls]
        for tenant in unowned:
            count = len(self.batch.readings.pop(tenant))
            UNOWNED.inc(count)
            log("unowned", tenant=tenant, readings=count)
        tenants = list(self.batch.readings)
        sink = self.sink if self.sink is not None else TenantStoresSink(self.stores)
        with INSERT_SECONDS.time():
            results = await asyncio.gather(
                *(sink.write(t, self.batch.readings[t].values()) for t in tenants),
                return_exceptions=True,
            )
        failed = []
        for tenant, result in zip(tenants, results, strict=True):
            if isinstance(result, BaseException):
                failed.append((tenant, result))
            else:
                STORED.inc(result)
                del self.batch.readings[tenant]
        if failed:
            problems = "; ".join(f"{tenant}: {exc!r}"[:300] for tenant, exc in failed)
            raise RuntimeError(problems) from failed[0][1]


async def record(
    consumer: AIOKafkaConsumer[bytes, bytes],
    recorder: Recorder,
    settings: RecorderSettings,
    stop: asyncio.Event,
) -> None:
    """Consume, batch, store, then commit: offsets move only past readings that are stored."""

    async def flush() -> bool:
        if not await until_done(recorder.store, stop, event="insert_failed", retries=INSERT_RETRIES):
            return False
        offsets = dict(recorder.batch.offsets)
        if offsets and not await until_done(
            functools.partial(consumer.commit, offsets), stop, event="commit_failed"
        ):
            return False
        BATCHES.inc()
        recorder.batch = Batch()
        return True

    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.recorder_batch_rows)
            for records in batches.values():
                for record in records:
                    recorder.take(record)
            behind = await kafka.lag(consumer)
            kafka.consumer_lag_gauge().set(behind)
            UNSTORED.set(behind + recorder.batch.records)
            if recorder.due(settings) and not await flush():
                return
        if recorder.batch.records:  # stopping: store what is held if the stores answer, else leave it
            with contextlib.suppress(Exception):
                await recorder.store()
                await consumer.commit(dict(recorder.batch.offsets))
    finally:
        await consumer.stop()


# ---------------------------------------------------------------------------------------------- archiving
@dataclass
class Archiver:
    stores: TenantWarehouses
    cold: ColdTier
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def run_pass(self, *, today: date | None = None, only: date | None = None) -> dict[str, Any]:
        """Archive every tenant's complete, changed days (or only `only`); one pass at a time. A tenant
        whose store fails is reported and the others are still archived."""
        today = today or datetime.now(UTC).date()
        written: list[ArchivedFile] = []
        errors: list[dict[str, str]] = []
        started = time.monotonic()
        async with self.lock:
            for tenant, ch in self.stores:
                try:
                    files = await archive_tenant(
                        ch, self.stores.database(tenant), tenant, self.cold, today=today, only=only
                    )
                except Exception as exc:
                    ARCHIVE_FAILURES.inc()
                    error = self.cold.scrub(repr(exc))[:500]
                    log("archive_failed", tenant=tenant, error=error)
                    errors.append({"tenant": tenant, "error": error})
                    continue
                for file in files:
                    ARCHIVED_FILES.inc()
                    ARCHIVED_ROWS.inc(file.rows)
                    log("archived", **file.to_dict())
                written += files
        return {
            "today": today.isoformat(),
            "day": only.isoformat() if only else None,
            "written": [f.to_dict() for f in written],
            "errors": errors,
            "seconds": round(time.monotonic() - started, 3),
        }

    async def loop(self, settings: RecorderSettings, stop: asyncio.Event) -> None:
        wait = settings.archive_first_after_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                return
            await self.run_pass()
            wait = settings.archive_every_s


def create_app(archiver: Archiver) -> FastAPI:
    app = http_app("sensors recorder")

    @app.post("/archive/run")
    async def archive_run(
        day: Annotated[str | None, Query(description="YYYY-MM-DD: archive only this day")] = None,
    ) -> dict[str, Any]:
        only = None
        if day is not None:
            try:
                only = date.fromisoformat(day)
            except ValueError:
                raise HTTPException(400, f"day {day!r} is not YYYY-MM-DD") from None
            if only >= datetime.now(UTC).date():
                raise HTTPException(400, f"day {day} is not complete yet: only days before today (UTC)")
        return await archiver.run_pass(only=only)

    return app


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    raw, settings = RawSettings(), RecorderSettings()
    switched = mistakes()
    stores = SensorsSettings().warehouses(pooled="api-only-isolation" in switched)
    for tenant, ch in stores:
        await ensure_raw_schema(ch, stores.database(tenant), raw.raw_hot_days)
    cold = ColdTier.from_settings(raw)
    await asyncio.to_thread(ensure_bucket, s3_client(), raw.cold_bucket)
    postgres: PostgresRawStore | None = None
    if "raw-rows-in-postgres" in switched:
        postgres = await PostgresRawStore(infra_settings().require("postgres_dsn")).open()
        log("mistake", name="raw-rows-in-postgres", writes="one INSERT per reading into PostgreSQL")
    recorder = Recorder(stores, PostgresSink(postgres) if postgres else None)
    archiver = Archiver(stores, cold)
    consumer = kafka.consumer(READINGS, group=GROUP)

    async def recording(stop: asyncio.Event) -> None:
        try:
            await record(consumer, recorder, settings, stop)
        finally:
            async with archiver.lock:  # not under a pass that is still writing
                await stores.close()
            if postgres is not None:
                await postgres.close()

    async def archiving(stop: asyncio.Event) -> None:
        await archiver.loop(settings, stop)

    return create_app(archiver), [recording, archiving]


if __name__ == "__main__":
    run_service(build)
