"""The recorder on real servers: readings published over MQTT are kept in the raw hot table of their
tenant's own store, in no other, once each however often they were delivered; and a complete day goes to
the object store as one Parquet file per building, written once.

Buildings: dxb-005 (summit-estates) and gru-006 (harbourline-holdings) of the test fleet."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from katas.infra.s3 import s3_client
from katas.infra.stack import Stack
from katas.sensors.raw import RAW, raw_row
from katas.sensors.readings import Reading
from katas.sensors.stores import TenantWarehouses
from tests.conftest import wait_for
from tests.integration.sensors.conftest import in_stores, publish, stack_fleet

pytestmark = pytest.mark.integration


def stored(stack: Stack, building: str, since: datetime) -> dict[str, list[tuple[str, str]]]:
    """(sensor, ts) of the building's raw rows since `since`, as each tenant's store sees them (FINAL)."""

    async def query(stores: TenantWarehouses) -> dict[str, list[tuple[str, str]]]:
        found = {}
        for tenant, ch in stores:
            rows = await ch.rows(
                f"SELECT sensor_id, ts FROM {stores.table(tenant, RAW)} FINAL "
                f"WHERE building = '{building}' AND ts >= '{since:%Y-%m-%d %H:%M:%S}' ORDER BY ts, sensor_id"
            )
            found[tenant] = [(r["sensor_id"], r["ts"]) for r in rows]
        return found

    return in_stores(stack, query)


def test_readings_are_kept_once_in_their_tenants_store_and_no_other(stack: Stack) -> None:
    endpoints = stack.endpoints()
    fleet = stack_fleet()
    buildings = {"dxb-005": "summit-estates", "gru-006": "harbourline-holdings"}
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=40)
    messages = [
        (t, p)
        for t, p in fleet.readings(start, start + timedelta(seconds=30))
        if t.split("/")[2] in buildings
    ]
    readings = [Reading.from_mqtt(t, p) for t, p in messages]
    # The first readings twice, ahead of the rest: once the rest is stored, the repeats were handled.
    publish(endpoints["mqtt"][0], messages[:20] + messages)

    for building, owner in buildings.items():
        expected = sorted(
            (r.place.sensor_id, raw_row(r)["ts"]) for r in readings if r.place.building == building
        )

        def arrived(building: str = building, owner: str = owner, n: int = len(expected)) -> Any:
            found = stored(stack, building, start)
            return found if len(found[owner]) >= n else None

        found = wait_for(arrived, 90, f"{building}'s readings in the raw table")
        assert sorted(found[owner]) == expected  # each once (FINAL), however often it was delivered
        assert all(rows == [] for tenant, rows in found.items() if tenant != owner), "stored in another store"


def test_an_archive_pass_writes_a_past_day_as_one_parquet_file_once(stack: Stack) -> None:
    endpoints = stack.endpoints()
    tenant, building = "harbourline-holdings", "gru-006"
    sensors = stack_fleet().sensors_of(building)
    day = datetime.now(UTC).date() - timedelta(days=2)
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    readings = [
        Reading(s.place, s.type, float(n), noon + timedelta(seconds=10 * n, milliseconds=s.phase_ms))
        for s in sensors
        for n in range(30)
    ]

    async def insert(stores: TenantWarehouses) -> None:
        ch, table = stores.of(tenant), stores.table(tenant, RAW)
        await ch.insert(table, [raw_row(r) for r in readings])
        await ch.insert(table, [raw_row(r) for r in readings[:10]])  # redelivered, in another part

    in_stores(stack, insert)
    answer = archive(endpoints, day)
    files = [f for f in answer["written"] if f["building"] == building]
    key = f"tenant={tenant}/building={building}/day={day.isoformat()}/readings.parquet"
    assert files == [
        {"tenant": tenant, "building": building, "day": day.isoformat(), "key": key, "rows": 600}
    ]

    body = s3_client(endpoints["s3"]).get_object(Bucket="sensors-cold", Key=key)["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.column_names == [
        "tenant",
        "building",
        "floor",
        "zone",
        "sensor_id",
        "type",
        "value",
        "unit",
        "ts",
    ]
    rows = table.to_pylist()
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)  # sorted by time
    assert sorted((r["sensor_id"], r["ts"], r["value"]) for r in rows) == sorted(
        (r.place.sensor_id, r.ts.replace(microsecond=r.ts.microsecond // 1000 * 1000), r.value)
        for r in readings
    )
    assert {(r["tenant"], r["building"]) for r in rows} == {(tenant, building)}

    again = archive(endpoints, day)
    assert not [f for f in again["written"] if f["building"] == building], "the day was written again"
    assert again["errors"] == []


def test_the_archive_route_refuses_days_that_are_not_complete(stack: Stack) -> None:
    recorder = stack.endpoints()["recorder"]
    today = datetime.now(UTC).date()
    for day in (today.isoformat(), (today + timedelta(days=3)).isoformat(), "2026-02-30", "last-week"):
        answer = httpx.post(f"{recorder}/archive/run", params={"day": day}, timeout=30)
        assert answer.status_code == 400, day
        assert answer.json()["detail"]


def archive(endpoints: dict[str, Any], day: date) -> dict[str, Any]:
    answer = httpx.post(f"{endpoints['recorder']}/archive/run", params={"day": day.isoformat()}, timeout=120)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result
