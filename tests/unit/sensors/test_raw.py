"""The raw tiers without servers: the hot row of a reading, SQL literals, the cold layout, which days and
buildings an archive pass writes, how the recorder batches records, and the backfill's layout."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest
from aiokafka import ConsumerRecord

from katas.sensors.backfill import Layout, backfill_raw_day, backfill_rollups
from katas.sensors.fleet import Fleet
from katas.sensors.raw import (
    ColdTier,
    DayPartition,
    FileRecord,
    buildings_to_write,
    days_to_scan,
    raw_row,
    raw_schema,
    sql_name,
    sql_string,
    sql_time,
)
from katas.sensors.readings import Place, Reading
from katas.sensors.services.recorder import Recorder, RecorderSettings
from katas.sensors.stores import TenantWarehouses

pytestmark = pytest.mark.unit

COLD = ColdTier("http://127.0.0.1:9000/", "sensors-cold", "KEY", "SECRET")
TS = datetime(2026, 3, 2, 8, 0, 5, 123456, tzinfo=UTC)


def reading(tenant: str = "acme", sensor: str = "lon-001-f01-z01-co21", ts: datetime = TS) -> Reading:
    return Reading(Place(tenant, "lon-001", "f01", "f01-z01", sensor), "co2", 612.0, ts)


def test_a_reading_is_one_hot_row_in_its_stored_unit_at_millisecond_precision() -> None:
    assert raw_row(reading()) == {
        "tenant": "acme",
        "building": "lon-001",
        "floor": "f01",
        "zone": "f01-z01",
        "sensor_id": "lon-001-f01-z01-co21",
        "type": "co2",
        "value": 612.0,
        "unit": "ppm",
        "ts": "2026-03-02 08:00:05.123",
    }


def test_literals_are_escaped_and_names_are_checked() -> None:
    assert sql_string("it's a \\ test") == "'it\\'s a \\\\ test'"
    with pytest.raises(ValueError, match="control characters"):
        sql_string("a\nb")
    assert sql_name("lon-001") == "'lon-001'"
    for hostile in ("lon' OR '1'='1", "../x", "a b", ""):
        with pytest.raises(ValueError, match="is not a name"):
            sql_name(hostile)
    assert sql_time(TS) == "toDateTime64('2026-03-02 08:00:05.123', 3, 'UTC')"
    with pytest.raises(ValueError, match="no time zone"):
        sql_time(datetime(2026, 3, 2))


def test_the_hot_table_collapses_redeliveries_and_keeps_today_plus_the_retention() -> None:
    table = raw_schema("sensors_acme", hot_days=2)[1]
    assert "ReplacingMergeTree" in table
    assert "ORDER BY (building, ts, sensor_id)" in table
    assert "PARTITION BY toDate(ts)" in table
    assert "TTL toDate(ts) + toIntervalDay(3)" in table


def test_cold_files_are_one_per_tenant_building_and_day() -> None:
    key = COLD.key("acme", "lon-001", date(2026, 3, 2))
    assert key == "tenant=acme/building=lon-001/day=2026-03-02/readings.parquet"
    assert COLD.url(key) == f"http://127.0.0.1:9000/sensors-cold/{key}"
    with pytest.raises(ValueError, match="is not a name"):
        COLD.key("acme", "lon-001/../../other", date(2026, 3, 2))
    days = COLD.days_function("acme", "lon-001", [date(2026, 3, 2), date(2026, 3, 1)])
    assert "day={2026-03-01,2026-03-02}/readings.parquet" in days
    assert "'Parquet'" in days
    assert COLD.scrub("s3(url, 'KEY', 'SECRET')") == "s3(url, 'KEY', '***')"


def test_an_archive_pass_looks_only_at_complete_days_whose_parts_changed() -> None:
    d1, d2, d3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
    parts = [DayPartition(d1, 10, "a"), DayPartition(d2, 10, "b"), DayPartition(d3, 10, "c")]
    assert days_to_scan(parts, {}, today=d3) == parts[:2]  # today is not complete
    assert days_to_scan(parts, {d1: "a", d2: "old"}, today=d3) == [parts[1]]
    assert days_to_scan(parts, {}, today=d3, only=d1) == [parts[0]]


def test_a_file_is_written_for_a_new_building_or_more_rows_never_for_fewer() -> None:
    counts = {"new": 5, "grew": 12, "same": 10, "shrank": 4}
    archived = {"grew": FileRecord(10, 10), "same": FileRecord(10, 10), "shrank": FileRecord(10, 10)}
    assert buildings_to_write(counts, archived) == (["new"], ["grew"])


def record(offset: int, value: bytes, partition: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="sensors.readings",
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=(),
    )


def test_the_recorder_batches_once_per_reading_and_commits_past_every_record() -> None:
    stores = TenantWarehouses.assign(["acme"], ["http://127.0.0.1:9"])
    recorder = Recorder(stores)
    recorder.take(record(0, reading().to_json()))
    recorder.take(record(1, reading().to_json()))  # redelivered
    recorder.take(record(2, b"not a reading"))
    recorder.take(record(7, reading(sensor="lon-001-f01-z01-co22").to_json(), partition=1))
    recorder.take(record(3, reading(tenant="nobody").to_json()))
    assert recorder.batch.records == 5
    assert recorder.batch.size == 3
    assert {tp.partition: offset for tp, offset in recorder.batch.offsets.items()} == {0: 4, 1: 8}
    settings = RecorderSettings(recorder_batch_rows=3, recorder_batch_s=60)
    assert recorder.due(settings)  # full
    assert not recorder.due(RecorderSettings(recorder_batch_rows=10, recorder_batch_s=60))

    del recorder.batch.readings["acme"]  # no store to reach here: leave the unowned tenant only
    asyncio.run(recorder.store())
    assert recorder.batch.readings == {}  # the unowned readings were counted and dropped


def test_a_layout_is_the_fleets_sensors_of_the_building() -> None:
    fleet = Fleet.build(seed=1, buildings=1, sensors_per_building=1000)
    layout = Layout.of(fleet, fleet.buildings[0].id)
    assert len(layout.sensors) == 1000
    assert len(layout.zones) == 100
    zone = layout.zones[0]
    assert [
        layout.sensors_per(zone, k) for k in ("temperature", "humidity", "co2", "occupancy", "light")
    ] == [
        4,
        2,
        1,
        1,
        2,
    ]


def test_backfills_refuse_sizes_they_cannot_make() -> None:
    layout = Layout(())
    with pytest.raises(ValueError, match="no sensors"):
        asyncio.run(backfill_rollups(None, "db", "acme", "lon-001", layout, TS, days=1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hours must be"):
        asyncio.run(backfill_raw_day(None, "db", "acme", "lon-001", layout, TS.date(), hours=25))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divide an hour"):
        asyncio.run(backfill_raw_day(None, "db", "acme", "lon-001", layout, TS.date(), interval_s=7))  # type: ignore[arg-type]
