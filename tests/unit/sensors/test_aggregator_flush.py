"""The aggregator service's write step, without servers: a write that fails loses no window, because the
domain aggregator emits each window only once (stand-ins for ClickHouse and Redis record what reaches them)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from katas.infra.clickhouse import ClickHouse
from katas.sensors.aggregation import WindowResult, aggregate
from katas.sensors.fleet import Fleet
from katas.sensors.readings import Reading
from katas.sensors.services.aggregator import Aggregation
from katas.sensors.storage import LiveView
from katas.sensors.stores import TenantWarehouses

pytestmark = pytest.mark.unit


class FlakyStore(ClickHouse):
    """Refuses the first `failures` inserts, then keeps every row it is given."""

    def __init__(self, failures: int) -> None:
        self.url = "http://127.0.0.1:9"  # never contacted
        super().__init__(self.url)
        self.failures = failures
        self.stored: list[Mapping[str, Any]] = []

    async def insert(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the store is down")
        kept = list(rows)
        self.stored += kept
        return len(kept)

    async def execute(self, sql: str, body: bytes = b"", default_format: str = "TabSeparated") -> bytes:
        return b""


class RecordingView(LiveView):
    def __init__(self) -> None:
        self.written: list[WindowResult] = []

    async def write(self, results: Sequence[WindowResult]) -> int:
        self.written += results
        return len(results)


def records(readings: list[Reading]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord("sensors.readings", 0, offset, 0, 0, None, r.to_json(), None, 0, 0, [])
        for offset, r in enumerate(readings)
    ]


def test_a_failed_write_is_made_again_on_the_next_flush_and_then_the_offsets_move() -> None:
    fleet = Fleet.build(seed=7, buildings=1, sensors_per_building=20)
    start = datetime(2026, 11, 2, 10, tzinfo=UTC)
    readings = [
        Reading.from_mqtt(t, p, now=start + timedelta(hours=1))
        for t, p in fleet.readings(start, start + timedelta(minutes=2))
    ]
    store, view = FlakyStore(failures=1), RecordingView()
    (tenant,) = [t.id for t in fleet.tenants]
    stores = TenantWarehouses.assign([tenant], [store.url])
    stores.clients[store.url] = store  # the flaky stand-in is the tenant's store
    aggregation = Aggregation(stores, view)
    for record in records(readings):
        aggregation.take(record)
    aggregation.windows.advance(start + timedelta(hours=1))  # every window final

    with pytest.raises(ConnectionError):
        asyncio.run(aggregation.flush())
    asyncio.run(aggregation.flush())

    expected = aggregate(readings, sizes=(60,))
    assert len(store.stored) == len(expected)  # every final window, though the first write failed
    assert sum(r["count"] for r in store.stored) == sum(w.count for w in expected)
    assert aggregation.committable() == {TopicPartition("sensors.readings", 0): len(readings)}
