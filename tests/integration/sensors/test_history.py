"""Historical queries through the API on real servers: a building's rollups (backfilled in its tenant's
store) as series, from the attacker's side too; and raw readings across the cold and hot tiers.

Buildings: waw-009 (summit-estates, backfilled rollups) and tor-010 (ironbridge-office-trust, raw rows
in both tiers) of the test fleet."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from katas.infra.stack import Stack
from katas.sensors.backfill import Layout, backfill_rollups
from katas.sensors.raw import RAW, raw_row
from katas.sensors.readings import Reading
from katas.sensors.storage import WINDOWS
from katas.sensors.stores import TenantWarehouses
from tests.integration.sensors.conftest import in_stores, stack_fleet

pytestmark = pytest.mark.integration

ROLLUPS_TENANT, ROLLUPS_BUILDING = "summit-estates", "waw-009"
RAW_TENANT, RAW_BUILDING = "ironbridge-office-trust", "tor-010"
END = datetime(2025, 6, 11, 12, tzinfo=UTC)
"""The backfilled rollups cover the two days before this (a fixed past, so no live reading lands there)."""


def token_of(endpoints: dict[str, Any], tenant: str) -> str:
    return str(next(t["token"] for t in endpoints["tenants"] if t["tenant"] == tenant))


def get(endpoints: dict[str, Any], path: str, token: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{endpoints['api']}{path}", params=params, headers=headers, timeout=60)


def rfc(ts: datetime, *, ms: bool = False) -> str:
    """RFC 3339 as the test sends it (seconds) or as the API answers it (milliseconds)."""
    return ts.isoformat(timespec="milliseconds" if ms else "seconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def backfilled(stack: Stack) -> Layout:
    layout = Layout.of(stack_fleet(), ROLLUPS_BUILDING)

    async def fill(stores: TenantWarehouses) -> None:
        ch, db = stores.of(ROLLUPS_TENANT), stores.database(ROLLUPS_TENANT)
        await backfill_rollups(ch, db, ROLLUPS_TENANT, ROLLUPS_BUILDING, layout, END, days=2)

    in_stores(stack, fill)
    return layout


def minute_sums(
    stack: Stack, level: str, kind: str
) -> dict[tuple[str, str, str], tuple[int, float, float, float]]:
    """Straight from the store: (floor, zone, hour) -> (count, sum, min, max) of the minute rows."""

    async def query(stores: TenantWarehouses) -> list[dict[str, Any]]:
        return await stores.of(ROLLUPS_TENANT).rows(
            f"""SELECT floor, zone, toStartOfHour(start) AS hour, sum(count) AS n, sum(sum) AS total,
                       min(min) AS lo, max(max) AS hi
            FROM {stores.table(ROLLUPS_TENANT, WINDOWS)} FINAL
            WHERE building = '{ROLLUPS_BUILDING}' AND size_s = 60 AND level = '{level}' AND type = '{kind}'
            GROUP BY floor, zone, hour"""
        )

    return {
        (r["floor"], r["zone"], rfc(datetime.fromisoformat(r["hour"]).replace(tzinfo=UTC), ms=True)): (
            int(r["n"]),
            r["total"],
            r["lo"],
            r["hi"],
        )
        for r in in_stores(stack, query)
    }


def test_a_zones_history_is_one_hourly_series_per_zone_from_the_rollups(
    stack: Stack, backfilled: Layout
) -> None:
    endpoints = stack.endpoints()
    answer = get(
        endpoints,
        f"/buildings/{ROLLUPS_BUILDING}/history",
        token_of(endpoints, ROLLUPS_TENANT),
        type="co2",
        level="zone",
        **{"from": rfc(END - timedelta(days=2)), "to": rfc(END)},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("building", "type", "level", "step_s")} == {
        "building": ROLLUPS_BUILDING,
        "type": "co2",
        "level": "zone",
        "step_s": 3600,  # more than a day: hourly
    }
    assert [(s["floor"], s["zone"]) for s in body["series"]] == sorted(backfilled.zones)
    expected = minute_sums(stack, "zone", "co2")
    hours = [rfc(END - timedelta(days=2) + timedelta(hours=n), ms=True) for n in range(48)]
    for series in body["series"]:
        assert [p["t"] for p in series["points"]] == hours
        per_hour = 60 * 6 * backfilled.sensors_per((series["floor"], series["zone"]), "co2")
        for point in series["points"]:
            count, total, lo, hi = expected[(series["floor"], series["zone"], point["t"])]
            assert point["count"] == count == per_hour
            assert point["mean"] == pytest.approx(total / count)
            assert (point["min"], point["max"]) == (pytest.approx(lo), pytest.approx(hi))
            assert lo <= point["mean"] <= hi


def test_a_short_range_is_minutes_and_the_building_is_one_series(stack: Stack, backfilled: Layout) -> None:
    endpoints = stack.endpoints()
    start = END - timedelta(hours=6)
    answer = get(
        endpoints,
        f"/buildings/{ROLLUPS_BUILDING}/history",
        token_of(endpoints, ROLLUPS_TENANT),
        type="temperature",
        **{"from": rfc(start), "to": rfc(END)},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["level"], body["step_s"]) == ("building", 60)
    [series] = body["series"]
    assert (series["floor"], series["zone"]) == (None, None)
    assert len(series["points"]) == 360
    sensors = sum(backfilled.sensors_per(zone, "temperature") for zone in backfilled.zones)
    assert {p["count"] for p in series["points"]} == {6 * sensors}
    assert series["points"][0]["t"] == rfc(start, ms=True)


def test_an_hour_not_rolled_up_yet_is_summed_from_its_minutes(stack: Stack, backfilled: Layout) -> None:
    endpoints = stack.endpoints()
    last_hour = END - timedelta(hours=1)

    async def drop_last_hour(stores: TenantWarehouses) -> None:
        await stores.of(ROLLUPS_TENANT).execute(
            f"""ALTER TABLE {stores.table(ROLLUPS_TENANT, WINDOWS)} DELETE
            WHERE building = '{ROLLUPS_BUILDING}' AND size_s = 3600
              AND start = toDateTime64('{last_hour:%Y-%m-%d %H:%M:%S}', 3, 'UTC')
            SETTINGS mutations_sync = 2"""
        )

    in_stores(stack, drop_last_hour)
    answer = get(
        endpoints,
        f"/buildings/{ROLLUPS_BUILDING}/history",
        token_of(endpoints, ROLLUPS_TENANT),
        type="co2",
        level="floor",
        **{"from": rfc(END - timedelta(hours=30)), "to": rfc(END)},
    )
    assert answer.status_code == 200, answer.text
    expected = minute_sums(stack, "floor", "co2")
    for series in answer.json()["series"]:
        assert len(series["points"]) == 30
        last = series["points"][-1]
        assert last["t"] == rfc(last_hour, ms=True)
        assert last["count"] == expected[(series["floor"], "", last["t"])][0]


def test_history_is_the_owners_and_the_operators_only(stack: Stack, backfilled: Layout) -> None:
    endpoints = stack.endpoints()
    path = f"/buildings/{ROLLUPS_BUILDING}/history"
    params = {"type": "co2", "from": rfc(END - timedelta(hours=1)), "to": rfc(END)}
    owner = get(endpoints, path, token_of(endpoints, ROLLUPS_TENANT), **params)
    assert owner.status_code == 200
    assert owner.json()["series"]
    operator = get(endpoints, path, endpoints["operator_token"], **params)
    assert operator.status_code == 200
    assert operator.json() == owner.json()
    for tenant in (RAW_TENANT, "harbourline-holdings"):
        other = get(endpoints, path, token_of(endpoints, tenant), **params)
        assert other.status_code == 404, tenant
        bad_and_other = get(endpoints, path, token_of(endpoints, tenant), type="pressure")
        assert bad_and_other.status_code == 404, "a bad query about another tenant's building told it exists"
    assert (
        get(
            endpoints, "/buildings/no-such-building/history", endpoints["operator_token"], **params
        ).status_code
        == 404
    )
    assert get(endpoints, path, None, **params).status_code == 401
    assert get(endpoints, path, "not-a-token", **params).status_code == 401


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"from": "2025-06-10T00:00:00Z", "to": "2025-06-11T00:00:00Z"}, "type: Field required"),
        ({"type": "co2", "from": "2025-06-10T00:00:00Z"}, "to: Field required"),
        ({"type": "co2", "from": "2025-06-10T00:00:00", "to": "2025-06-11T00:00:00Z"}, "no time zone"),
        ({"type": "co2", "from": "2025-06-11T00:00:00Z", "to": "2025-06-10T00:00:00Z"}, "'to' must be after"),
        (
            {"type": "co2", "from": "2024-01-01T00:00:00Z", "to": "2025-06-10T00:00:00Z"},
            "longer than 400 days",
        ),
        (
            {"type": "co2", "from": "2025-06-01T00:00:00Z", "to": "2025-06-11T00:00:00Z", "step": "60"},
            "step=3600",
        ),
        (
            {"type": "co2", "from": "2025-06-10T00:00:00Z", "to": "2025-06-11T00:00:00Z", "step": "15"},
            "60 or 3600",
        ),
        (
            {"type": "co2'--", "from": "2025-06-10T00:00:00Z", "to": "2025-06-11T00:00:00Z"},
            "type: Input should be",
        ),
        (
            {"type": "co2", "level": "room", "from": "2025-06-10T00:00:00Z", "to": "2025-06-11T00:00:00Z"},
            "level",
        ),
    ],
)
def test_a_bad_history_query_is_a_400_with_its_reason(
    stack: Stack, params: dict[str, str], reason: str
) -> None:
    endpoints = stack.endpoints()
    answer = get(
        endpoints, f"/buildings/{ROLLUPS_BUILDING}/history", token_of(endpoints, ROLLUPS_TENANT), **params
    )
    assert answer.status_code == 400
    assert reason in answer.json()["detail"]


def test_readings_over_an_expired_day_and_a_hot_one_come_from_both_tiers(stack: Stack) -> None:
    endpoints = stack.endpoints()
    sensors = stack_fleet().sensors_of(RAW_BUILDING)
    today = datetime.now(UTC).date()
    cold_day, hot_day = today - timedelta(days=2), today - timedelta(days=1)

    def readings_of(day: date) -> list[Reading]:
        ten = datetime(day.year, day.month, day.day, 10, tzinfo=UTC)
        return [
            Reading(s.place, s.type, 20.0 + n, ten + timedelta(seconds=10 * n, milliseconds=s.phase_ms))
            for s in sensors
            for n in range(6)
        ]

    inserted = readings_of(cold_day) + readings_of(hot_day)

    async def insert(stores: TenantWarehouses) -> None:
        await stores.of(RAW_TENANT).insert(stores.table(RAW_TENANT, RAW), [raw_row(r) for r in inserted])

    in_stores(stack, insert)
    archived = httpx.post(
        f"{endpoints['recorder']}/archive/run", params={"day": cold_day.isoformat()}, timeout=120
    )
    assert archived.status_code == 200, archived.text
    assert [f["rows"] for f in archived.json()["written"] if f["building"] == RAW_BUILDING] == [
        len(sensors) * 6
    ]

    token = token_of(endpoints, RAW_TENANT)
    span = {"from": f"{cold_day.isoformat()}T00:00:00Z", "to": f"{today.isoformat()}T00:00:00Z"}
    path = f"/buildings/{RAW_BUILDING}/readings"
    expected = sorted(
        (r.place.sensor_id, raw_row(r)["ts"].replace(" ", "T") + "Z", r.value) for r in inserted
    )

    def answered() -> dict[str, Any]:
        answer = get(endpoints, path, token, **span)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert sorted((r["sensor_id"], r["ts"], r["value"]) for r in body["readings"]) == expected
        assert [r["ts"] for r in body["readings"]] == sorted(r["ts"] for r in body["readings"])
        assert (body["count"], body["truncated"]) == (len(expected), False)
        return body

    both_hot = answered()
    assert both_hot["tiers"] == {"hot_days": [cold_day.isoformat(), hot_day.isoformat()], "cold_days": []}

    async def expire(stores: TenantWarehouses) -> None:  # what the hot tier's TTL does to an old day
        await stores.of(RAW_TENANT).execute(
            f"""ALTER TABLE {stores.table(RAW_TENANT, RAW)} DELETE
            WHERE building = '{RAW_BUILDING}' AND toDate(ts) = '{cold_day.isoformat()}'
            SETTINGS mutations_sync = 2"""
        )

    in_stores(stack, expire)
    one_cold = answered()
    assert one_cold["tiers"] == {"hot_days": [hot_day.isoformat()], "cold_days": [cold_day.isoformat()]}

    sensor = sensors[0].id
    one = get(endpoints, path, token, sensor=sensor, **span).json()
    assert [r["sensor_id"] for r in one["readings"]] == [sensor] * 12
    assert get(endpoints, path, endpoints["operator_token"], **span).json()["count"] == len(expected)
    assert get(endpoints, path, token_of(endpoints, ROLLUPS_TENANT), **span).status_code == 404
    refused = get(endpoints, path, token, sensor="x' OR '1'='1", **span)
    assert refused.status_code == 400
    assert "is not a sensor id" in refused.json()["detail"]
