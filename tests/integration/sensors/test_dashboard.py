"""The dashboard on the real stack, in a real headless browser (Debian's /usr/bin/chromium driven by
Playwright), and from the attacker's side with a plain HTTP client.

The browser tests walk what a building manager does: sign in with the tenant's API token and see only
that tenant's buildings; open a building while its sensors publish, and watch floors and zones appear;
watch a second batch of readings change the page without a reload, with the freshness the page shows
under 5 s; switch to a floor and a zone; read the history chart (1-minute rollups written to the
tenant's own ClickHouse store). A hostile floor or zone id, written into the live view and published on
its channel, is shown as text and never runs. Plain HTTP: the event stream and the history without a
session, with a forged one, with the API token as the cookie, and for another tenant's building.

Buildings used here and nowhere else: par-007 (oakfield-reit), den-004 (crescent-properties), tor-011
(ironbridge-office-trust).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page, expect

from katas.infra.stack import Stack
from katas.sensors.aggregation import DEFAULT_ALLOWED_LATENESS, Scope, WindowResult
from katas.sensors.readings import UNITS, InvalidReadingError, Reading, format_timestamp
from katas.sensors.services.dashboard import SESSION_COOKIE, Sessions, live_events
from katas.sensors.storage import live_key, store_windows
from katas.sensors.topics import READINGS
from tests.integration.sensors.conftest import building_readings, publish, read_log, stack_fleet, warehouses

pytestmark = pytest.mark.integration

LIVE = "par-007"
"""Readings are published for it: the live tests."""
HISTORY = "den-004"
"""1-minute rollups are written for it: the history chart."""
HOSTILE = "tor-011"
"""Hostile floor and zone ids are written into its live view."""
WAIT_MS = 30_000
"""How long the browser waits for readings to come through bridge, log and aggregator."""


# -- fixtures and helpers ---------------------------------------------------------------------------


def dashboard_url(endpoints: dict[str, Any]) -> str:
    return str(endpoints.get("dashboard") or f"{endpoints['api']}/dashboard")


def tenant_of(endpoints: dict[str, Any], building: str) -> dict[str, Any]:
    return next(t for t in endpoints["tenants"] if building in t["buildings"])


async def signed_in(browser: Browser, endpoints: dict[str, Any], token: str) -> Page:
    """A new browser page, signed in with `token` through the sign-in form, on the buildings list."""
    page = await browser.new_page()
    await page.goto(dashboard_url(endpoints))
    await page.fill("#token", token)
    await page.click("#signin button[type=submit]")
    await page.wait_for_url("**/dashboard/buildings")
    return page


async def open_building(page: Page, endpoints: dict[str, Any], building: str) -> None:
    answer = await page.goto(f"{dashboard_url(endpoints)}/buildings/{building}")
    assert answer is not None
    assert answer.status == 200
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


def zones_of(messages: list[tuple[str, bytes]]) -> set[tuple[str, str]]:
    return {(t.split("/")[3], t.split("/")[4]) for t, _ in messages}


def admin_redis(endpoints: dict[str, Any]) -> aioredis.Redis:
    host, port = str(endpoints["redis"]).removeprefix("redis://").split("/")[0].rsplit(":", 1)
    return aioredis.Redis(host=host, port=int(port))


async def clock_past_the_watermark(endpoints: dict[str, Any]) -> None:
    """Wait (bounded) until readings timestamped 10 s ago are not late for the aggregator.

    The aggregator keeps one watermark for every building: the newest reading's time minus the allowed
    lateness. A test of the session that published readings timestamped ahead of the clock (the
    aggregator's test publishes up to 100 s into the future, to make a minute final from data alone)
    thereby makes readings timestamped now late, for every building, until the clock catches up."""
    newest = None
    for value in await asyncio.to_thread(read_log, endpoints["kafka"], READINGS):
        try:
            ts = Reading.from_json(value).ts
        except (InvalidReadingError, ValueError):
            continue
        newest = ts if newest is None or ts > newest else newest
    if newest is None:
        return
    # A reading at now - 10 s is in a 10 s window that ends after it; it is late once that end is at or
    # before the watermark (newest - lateness). 3 s of margin for the time the first batch takes.
    wait_s = (newest - DEFAULT_ALLOWED_LATENESS - (datetime.now(UTC) - timedelta(seconds=13))).total_seconds()
    assert wait_s < 120, f"readings on the log are timestamped {newest}, too far ahead of the clock"
    if wait_s > 0:
        await asyncio.sleep(wait_s)


def figures(value: float, at: datetime) -> dict[str, Any]:
    return {
        "start": format_timestamp(at.replace(second=at.second - at.second % 10, microsecond=0)),
        "size_s": 10,
        "mean": value,
        "min": value,
        "max": value,
        "last": value,
        "count": 1,
        "as_of": format_timestamp(at),
    }


# -- the browser: sign in, buildings, live updates, views, history, escaping -------------------------
async def test_a_tenant_signs_in_and_sees_only_its_buildings(browser: Browser, stack: Stack) -> None:
    endpoints = stack.endpoints()
    owner = tenant_of(endpoints, LIVE)

    page = await browser.new_page()
    await page.goto(dashboard_url(endpoints))
    await page.fill("#token", "not-a-token")
    await page.click("#signin button[type=submit]")
    await expect(page.locator(".error")).to_contain_text("not valid")

    page = await signed_in(browser, endpoints, owner["token"])
    listed = await page.locator("#buildings a[data-building]").evaluate_all(
        "links => links.map(a => a.dataset.building)"
    )
    assert sorted(listed) == sorted(owner["buildings"])

    foreign = await page.goto(f"{dashboard_url(endpoints)}/buildings/{HISTORY}")
    assert foreign is not None
    assert foreign.status == 404  # another tenant's building: as if it did not exist
    missing = await page.goto(f"{dashboard_url(endpoints)}/buildings/no-such-building")
    assert missing is not None
    assert missing.status == 404

    operator = await signed_in(browser, endpoints, endpoints["operator_token"])
    everything = await operator.locator("#buildings a[data-building]").evaluate_all(
        "links => links.map(a => a.dataset.building)"
    )
    assert sorted(everything) == sorted(b for t in endpoints["tenants"] for b in t["buildings"])


async def test_the_building_page_updates_live_and_shows_its_freshness(browser: Browser, stack: Stack) -> None:
    endpoints = stack.endpoints()
    owner = tenant_of(endpoints, LIVE)
    fleet = stack_fleet()
    page = await signed_in(browser, endpoints, owner["token"])
    await open_building(page, endpoints, LIVE)

    await clock_past_the_watermark(endpoints)
    now = datetime.now(UTC)
    first = building_readings(fleet, LIVE, now - timedelta(seconds=10), now)
    assert first, f"the stack's fleet has no readings for {LIVE}"
    await asyncio.to_thread(publish, endpoints["mqtt"][0], first)

    expected = zones_of(first)
    tiles = page.locator("#floors article.zone")
    await expect(tiles).to_have_count(len(expected), timeout=WAIT_MS)
    shown = await tiles.evaluate_all("tiles => tiles.map(t => [t.dataset.floor, t.dataset.zone])")
    assert {tuple(z) for z in shown} == expected
    floors = await page.locator("#floors section.floor").evaluate_all("s => s.map(f => f.dataset.floor)")
    assert sorted(floors) == sorted({floor for floor, _ in expected})
    building_co2 = page.locator('#building-figures .figure[data-type="co2"] .mean')
    await expect(building_co2).not_to_have_text("\N{EN DASH}", timeout=WAIT_MS)

    # A second batch, later: the page changes without a reload, and says how fresh it is.
    await page.evaluate("window.__sameDocument = true")
    co2 = {s.place.zone: s for s in fleet.sensors_of(LIVE) if s.type == "co2"}
    marked = 777.0
    at = datetime.now(UTC)
    second = [
        (
            s.topic,
            json.dumps(
                {
                    "sensor_id": s.id,
                    "type": "co2",
                    "value": marked,
                    "unit": UNITS["co2"],
                    "ts": format_timestamp(at),
                }
            ).encode(),
        )
        for s in co2.values()
    ]
    await asyncio.to_thread(publish, endpoints["mqtt"][0], second)
    floor, zone = sorted(expected)[0]
    figure = page.locator(f'#floors article.zone[data-zone="{zone}"] .figure[data-type="co2"]')
    await expect(figure).to_have_attribute("data-last", "777", timeout=WAIT_MS)
    freshness = float(await page.locator("#freshness").get_attribute("data-freshness-s") or "nan")
    newest = await page.locator("#freshness").get_attribute("data-newest")
    assert newest is not None
    assert datetime.fromisoformat(newest) >= at.replace(microsecond=at.microsecond // 1000 * 1000)
    assert 0 <= freshness < 5, f"the page showed data {freshness} s old"
    assert await page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1

    # The freshness figure keeps counting while nothing new arrives.
    await page.wait_for_timeout(2500)
    later = float(await page.locator("#freshness").get_attribute("data-freshness-s") or "nan")
    assert later >= freshness + 1.0

    # Floor view: only that floor; zone view: the zone's own figures.
    await page.click(f'#floor-links a[data-floor="{floor}"]')
    await expect(page.locator("#dashboard")).to_have_attribute("data-view", "floor")
    visible = await page.locator("#floors section.floor:visible").evaluate_all(
        "s => s.map(f => f.dataset.floor)"
    )
    assert visible == [floor]
    await page.click(f'#floors article.zone[data-zone="{zone}"] h3 a')
    await expect(page.locator("#dashboard")).to_have_attribute("data-view", "zone")
    await expect(page.locator("#zone-view")).to_be_visible()
    await expect(page.locator('#zone-figures tr[data-type="co2"] td[data-figure="last"]')).to_have_text("777")
    assert await page.evaluate("window.__sameDocument") is True


async def test_the_history_chart_draws_the_rollups(browser: Browser, stack: Stack) -> None:
    endpoints = stack.endpoints()
    owner = tenant_of(endpoints, HISTORY)
    fleet = stack_fleet()
    floor, zone = sorted((s.place.floor, s.place.zone) for s in fleet.sensors_of(HISTORY))[0]
    tenant = owner["tenant"]
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    minutes = [end - timedelta(minutes=m) for m in range(10, 0, -1)]
    rows = [
        WindowResult(scope, "co2", 60, m, m + timedelta(minutes=1), 6, v - 5, v + 5, 6 * v, v, m, True)
        for i, m in enumerate(minutes)
        for scope, v in (
            (Scope("building", tenant, HISTORY), 500.0 + i),
            (Scope("floor", tenant, HISTORY, floor), 600.0 + i),
            (Scope("zone", tenant, HISTORY, floor, zone), 700.0 + i),
        )
    ]
    stores = warehouses(stack)
    try:
        assert await store_windows(stores.of(tenant), stores.database(tenant), rows) == len(rows)
    finally:
        await stores.close()

    page = await signed_in(browser, endpoints, owner["token"])
    await page.goto(f"{dashboard_url(endpoints)}/buildings/{HISTORY}")
    chart = page.locator("#chart")
    await expect(chart).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    lines = chart.locator("svg[data-chart=history] path[data-series]")
    await expect(lines).to_have_count(1)
    assert int(await lines.first.get_attribute("data-points") or 0) >= len(minutes)

    await page.goto(f"{dashboard_url(endpoints)}/buildings/{HISTORY}#floor={floor}&zone={zone}")
    await expect(page.locator("#dashboard")).to_have_attribute("data-view", "zone")
    await expect(chart).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    await expect(lines).to_have_count(1)
    await expect(lines.first).to_have_attribute("data-series", zone)
    assert int(await lines.first.get_attribute("data-points") or 0) >= len(minutes)

    await page.select_option("#history-type", "light")  # no light rows in that range: an empty chart
    await expect(chart).to_have_attribute("data-state", "empty", timeout=WAIT_MS)


async def test_hostile_floor_and_zone_ids_are_shown_not_run(browser: Browser, stack: Stack) -> None:
    endpoints = stack.endpoints()
    owner = tenant_of(endpoints, HOSTILE)
    key = live_key(owner["tenant"], HOSTILE)
    in_snapshot = '"><img src=x onerror="window.__pwned=1">'
    in_update = "<script>window.__pwned=2</script>"
    floor = "f9<svg onload=window.__pwned=3>"
    now = datetime.now(UTC)
    admin = admin_redis(endpoints)
    fields = [f"zone|{floor}|{in_snapshot}|co2", f"zone|{floor}|{in_update}|co2"]
    try:
        await admin.hset(key, fields[0], json.dumps(figures(451.0, now)))
        page = await signed_in(browser, endpoints, owner["token"])
        await open_building(page, endpoints, HOSTILE)
        tile = page.locator("#floors article.zone").filter(has_text=in_snapshot)
        await expect(tile).to_have_count(1, timeout=WAIT_MS)
        assert await tile.get_attribute("data-zone") == in_snapshot

        update = [{"field": fields[1], **figures(452.0, datetime.now(UTC))}]
        await admin.publish(key, json.dumps(update))
        await expect(page.locator("#floors article.zone").filter(has_text=in_update)).to_have_count(
            1, timeout=WAIT_MS
        )
        await expect(page.locator("#floor-links a").filter(has_text=floor)).to_have_count(1)

        await page.click(f"#floors article.zone[data-zone='{in_update}'] h3 a")
        await expect(page.locator("#zone-title")).to_contain_text(in_update)
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("#dashboard img, #dashboard script, #floors svg").count() == 0
    finally:
        await admin.hdel(key, *fields)
        await admin.aclose()


# -- the attacker's side, over plain HTTP -----------------------------------------------------------
async def test_events_and_history_need_a_real_session_of_the_owner(stack: Stack) -> None:
    endpoints = stack.endpoints()
    owner, other = tenant_of(endpoints, LIVE), tenant_of(endpoints, HISTORY)
    base = dashboard_url(endpoints)
    events, history = f"{base}/buildings/{LIVE}/events", f"{base}/buildings/{LIVE}/history?type=co2"
    forged = Sessions(b"an attacker's own key, not the server's").issue(owner["tenant"], 2e9)

    async with httpx.AsyncClient(timeout=10) as anonymous:
        for url in (events, history):
            assert (await anonymous.get(url)).status_code == 401
            for cookie in (forged, owner["token"], forged.replace(".", "x", 1)):
                answer = await anonymous.get(url, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
                assert answer.status_code == 401
            bearer = {"Authorization": f"Bearer {owner['token']}"}
            assert (
                await anonymous.get(url, headers=bearer)
            ).status_code == 401  # the page's routes take no token
        page = await anonymous.get(f"{base}/buildings/{LIVE}")
        assert page.status_code == 303
        assert page.headers["location"] == "/dashboard"

    async with httpx.AsyncClient(base_url=base, timeout=10) as intruder:
        signed = await intruder.post("/session", data={"token": other["token"]})
        assert signed.status_code == 303
        for path in ("", "/events", "/history?type=co2"):
            assert (await intruder.get(f"/buildings/{LIVE}{path}")).status_code == 404

    async with httpx.AsyncClient(base_url=base, timeout=10) as tenant:
        assert (await tenant.post("/session", data={"token": owner["token"]})).status_code == 303
        async with tenant.stream("GET", f"/buildings/{LIVE}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert "script-src 'self'" in stream.headers["content-security-policy"]
            lines = stream.aiter_lines()
            first = [await anext(lines) for _ in range(3)]
        assert first[0].startswith("retry:")
        assert first[1] == "event: snapshot"
        snapshot = json.loads(first[2].removeprefix("data: "))
        assert {"now", "entries"} <= set(snapshot)
        assert all(e["floor"] and e["zone"] for e in snapshot["entries"] if e["level"] == "zone")

    async with httpx.AsyncClient(base_url=base, timeout=10) as operator:
        assert (
            await operator.post("/session", data={"token": endpoints["operator_token"]})
        ).status_code == 303
        async with operator.stream("GET", f"/buildings/{HISTORY}/events") as stream:
            assert stream.status_code == 200  # through the operator's Redis user, which reads every tenant
            lines = stream.aiter_lines()
            assert [await anext(lines) for _ in range(2)][1] == "event: snapshot"


async def numsub(admin: aioredis.Redis, channel: str) -> int:
    counts = await admin.pubsub_numsub(channel)
    return int(counts[0][1])


async def test_a_stream_sends_heartbeats_and_updates_and_lets_go_of_redis(stack: Stack) -> None:
    """The stream itself, on the stack's Redis: snapshot, a heartbeat while nothing happens, an update
    as soon as it is published, and its subscription gone once the stream is closed."""
    endpoints = stack.endpoints()
    admin = admin_redis(endpoints)
    tenant = tenant_of(endpoints, HOSTILE)["tenant"]
    key = live_key(tenant, HOSTILE)
    try:
        before = await numsub(admin, key)
        stream = live_events(admin, tenant, HOSTILE, heartbeat_s=0.2)
        assert b"event: snapshot" in await anext(stream)
        assert await numsub(admin, key) == before + 1
        assert await asyncio.wait_for(anext(stream), 2) == b": heartbeat\n\n"
        field = "zone|f01|f01-z77|light"
        await admin.publish(key, json.dumps([{"field": field, **figures(321.0, datetime.now(UTC))}]))
        await admin.publish(key, b"not json: left out")
        chunk = await asyncio.wait_for(anext(stream), 2)
        while chunk == b": heartbeat\n\n":
            chunk = await asyncio.wait_for(anext(stream), 2)
        event, data = chunk.decode().splitlines()[:2]
        assert event == "event: update"
        assert [(e["zone"], e["last"]) for e in json.loads(data.removeprefix("data: "))["entries"]] == [
            ("f01-z77", 321.0)
        ]
        await stream.aclose()
        assert await numsub(admin, key) == before
    finally:
        await admin.aclose()


async def test_a_closed_dashboard_lets_go_of_its_subscription(stack: Stack) -> None:
    endpoints = stack.endpoints()
    owner = tenant_of(endpoints, HOSTILE)
    admin = admin_redis(endpoints)
    key = live_key(owner["tenant"], HOSTILE)
    try:
        before = await numsub(admin, key)
        async with httpx.AsyncClient(base_url=dashboard_url(endpoints), timeout=10) as client:
            assert (await client.post("/session", data={"token": owner["token"]})).status_code == 303
            async with client.stream("GET", f"/buildings/{HOSTILE}/events") as stream:
                assert stream.status_code == 200
                await anext(stream.aiter_lines())
                assert await numsub(admin, key) == before + 1
        for _ in range(50):  # the server notices the closed connection and unsubscribes
            if await numsub(admin, key) == before:
                break
            await asyncio.sleep(0.1)
        assert await numsub(admin, key) == before
    finally:
        await admin.aclose()
