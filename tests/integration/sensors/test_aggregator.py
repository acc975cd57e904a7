"""The aggregator on real servers: readings through MQTT and the log become 1-minute rows in chDB and a
live view in Redis, equal to what the domain's own windows compute from the same readings; a reading
delivered twice is counted once. And the 1-hour rollup inside chDB."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis

from katas.infra.stack import Stack
from katas.sensors.aggregation import aggregate
from katas.sensors.readings import Reading
from katas.sensors.storage import WINDOWS, live_key, rollup_hours, store_windows
from tests.conftest import wait_for
from tests.integration.sensors.conftest import building_readings, publish, stack_fleet, warehouses

pytestmark = pytest.mark.integration


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC)


def stored_rows(stack: Stack, tenant: str, building: str, size_s: int) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        stores = warehouses(stack)
        try:
            return await stores.of(tenant).rows(
                "SELECT level, floor, zone, type, start, count, min, max, sum "
                f"FROM {stores.table(tenant, WINDOWS)} FINAL WHERE building = '{building}' "
                f"AND size_s = {size_s} ORDER BY level, floor, zone, type, start"
            )
        finally:
            await stores.close()

    return asyncio.run(go())


def test_readings_become_minute_rows_and_a_live_view(stack: Stack) -> None:
    endpoints = stack.endpoints()
    fleet = stack_fleet()
    building = fleet.building("nyc-012")
    # An idle aggregator closes windows by the clock (now minus lateness and grace), so readings older
    # than that would be refused as late. The minute under way is open; readings 40 s into the next one
    # move the watermark (newest minus the 30 s of lateness) past its end, so its windows become final
    # from the data alone.
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    messages = building_readings(fleet, building.id, minute, minute + timedelta(seconds=100))
    publish(endpoints["mqtt"][0], messages + messages[:40])  # the first 40 twice: a redelivery

    readings = [Reading.from_mqtt(t, p) for t, p in messages]
    expected = {
        (r.scope.level, r.scope.floor or "", r.scope.zone or "", r.type, r.start): r
        for r in aggregate([r for r in readings if r.ts < minute + timedelta(minutes=1)], sizes=(60,))
    }

    def minute_rows() -> list[dict[str, Any]]:
        rows = stored_rows(stack, building.tenant, building.id, 60)
        return [row for row in rows if parse_time(row["start"]) == minute]

    rows = wait_for(
        lambda: (rows := minute_rows()) and len(rows) >= len(expected) and rows,
        120,
        "the minute's windows stored",
    )
    assert len(rows) == len(expected)
    for row in rows:
        key = (row["level"], row["floor"], row["zone"], row["type"], parse_time(row["start"]))
        window = expected[key]
        assert int(row["count"]) == window.count, key  # the repeated readings were not counted again
        assert (row["min"], row["max"]) == (window.min, window.max)
        assert row["sum"] == pytest.approx(window.sum)

    live = Redis.from_url(f"redis://{endpoints['redis']}", decode_responses=True).hgetall(
        live_key(building.tenant, building.id)
    )
    fields = {str(k): json.loads(v) for k, v in live.items()}
    zones = {f for f in fields if f.startswith("zone|")}
    assert len(zones) == len({(r.place.floor, r.place.zone, r.type) for r in readings})
    newest = max(r.ts for r in readings)
    assert max(parse_time(v["as_of"]) for v in fields.values()) == newest


def test_an_hour_of_minute_rows_rolls_up_into_one_row_per_scope_and_type(stack: Stack) -> None:
    fleet = stack_fleet()
    building = fleet.building("tyo-003")
    hour = datetime(2026, 1, 5, 9, tzinfo=UTC)
    readings = [
        Reading.from_mqtt(t, p, now=hour + timedelta(hours=2))
        for t, p in building_readings(fleet, building.id, hour, hour + timedelta(hours=1))
    ]
    minutes = aggregate(readings, sizes=(60,))

    async def roll() -> None:
        stores = warehouses(stack)
        ch, database = stores.of(building.tenant), stores.database(building.tenant)
        try:
            await store_windows(ch, database, minutes)
            await rollup_hours(ch, database, [hour])
            await rollup_hours(ch, database, [hour])  # again: the same rows, collapsed
        finally:
            await stores.close()

    asyncio.run(roll())
    hourly = stored_rows(stack, building.tenant, building.id, 3600)
    assert len(hourly) == len({(m.scope, m.type) for m in minutes})
    for row in hourly:
        parts = [m for m in minutes if (m.scope.level, m.scope.floor or "", m.scope.zone or "", m.type)
                 == (row["level"], row["floor"], row["zone"], row["type"])]  # fmt: skip
        assert int(row["count"]) == sum(m.count for m in parts)
        assert (row["min"], row["max"]) == (min(m.min for m in parts), max(m.max for m in parts))
        assert parse_time(row["start"]) == hour
