"""The dashboard's pure parts and its routes that need no server: session cookies (forged, altered,
expired), the live view's fields turned into the page's entries (anything malformed left out), the
event format, and the sign-in flow, redirects, tenant checks and security headers of the router, served
in process. The event stream itself needs Redis: tests/integration/sensors/test_dashboard.py."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from katas.sensors.services.dashboard import (
    CSP,
    SESSION_COOKIE,
    Sessions,
    building_url,
    dashboard_router,
    form_field,
    live_entry,
    snapshot_entries,
    sse,
    update_entries,
)
from katas.sensors.tenancy import OPERATOR, Registry, Tokens

pytestmark = pytest.mark.unit

KEY = b"k" * 32
NOW = 1_800_000_000.0
FIGURES = {
    "start": "2026-01-01T10:00:00.000Z",
    "size_s": 10,
    "mean": 512.5,
    "min": 400,
    "max": 600,
    "last": 530,
    "count": 4,
    "as_of": "2026-01-01T10:00:07.250Z",
}
REGISTRY = Registry({"acme": ("acm-001", "acm-002"), "globex": ("glx-001",)})
TOKENS = Tokens.derive("unit-secret", REGISTRY.tenants)


# -- sessions ---------------------------------------------------------------------------------------
def test_a_session_names_its_tenant_until_it_expires() -> None:
    sessions = Sessions(KEY, ttl_s=60)
    cookie = sessions.issue("acme", NOW)
    assert sessions.tenant_of(cookie, NOW) == "acme"
    assert sessions.tenant_of(cookie, NOW + 59) == "acme"
    assert sessions.tenant_of(cookie, NOW + 60) is None


def test_a_forged_or_altered_session_names_nobody() -> None:
    sessions = Sessions(KEY)
    cookie = sessions.issue("acme", NOW)
    tenant, expires, mac = cookie.split(".")
    other = Sessions(b"x" * 32).issue("globex", NOW)
    globex = other.split(".")[0]
    assert sessions.tenant_of(other, NOW) is None  # signed with another key
    assert sessions.tenant_of(f"{globex}.{expires}.{mac}", NOW) is None  # tenant swapped
    assert sessions.tenant_of(f"{tenant}.{int(expires) + 9999}.{mac}", NOW) is None  # extended
    for junk in ("", ".", "..", "a.b.c", "x" * 600, cookie + "0", TOKENS.token_of("acme")):
        assert sessions.tenant_of(junk, NOW) is None


def test_form_field_reads_the_token_and_nothing_odd() -> None:
    assert form_field(b"token=abc%20&x=1", "token") == "abc"
    assert form_field(b"x=1", "token") == ""
    assert form_field(b"\xff\xfe", "token") == ""
    assert form_field(b"&".join(b"a%d=1" % i for i in range(50)), "token") == ""


# -- entries and events -----------------------------------------------------------------------------
def test_a_live_field_becomes_an_entry() -> None:
    entry = live_entry("zone|f01|f01-z01|co2", FIGURES)
    assert entry == {"level": "zone", "floor": "f01", "zone": "f01-z01", "type": "co2", **FIGURES}


@pytest.mark.parametrize(
    ("field", "figures"),
    [
        ("zone|f01|f01-z01", FIGURES),
        ("room|f01|f01-z01|co2", FIGURES),
        ("zone|f01|f01-z01|radon", FIGURES),
        ("zone|f01|f01-z01|co2", {**FIGURES, "mean": "512"}),
        ("zone|f01|f01-z01|co2", {**FIGURES, "mean": float("nan")}),
        ("zone|f01|f01-z01|co2", {**FIGURES, "count": True}),
        ("zone|f01|f01-z01|co2", {**FIGURES, "as_of": "yesterday"}),
        ("zone|f01|f01-z01|co2", {k: v for k, v in FIGURES.items() if k != "last"}),
        ("zone|f01|" + "z" * 300 + "|co2", FIGURES),
        ("zone|f01|f01-z01|co2", [1, 2]),
    ],
)
def test_anything_else_is_left_out(field: str, figures: object) -> None:
    assert live_entry(field, figures) is None


def test_a_snapshot_keeps_the_readable_fields_in_order() -> None:
    raw: dict[bytes | str, bytes | str] = {
        b"zone|f02|f02-z01|co2": json.dumps(FIGURES).encode(),
        b"building|||co2": json.dumps(FIGURES).encode(),
        b"zone|f01|f01-z01|co2": b"not json",
        "floor|f01||light": json.dumps(FIGURES),
    }
    assert [(e["level"], e["floor"], e["type"]) for e in snapshot_entries(raw)] == [
        ("building", "", "co2"),
        ("floor", "f01", "light"),
        ("zone", "f02", "co2"),
    ]


def test_an_update_is_the_published_list_of_changed_fields() -> None:
    payload = json.dumps([{"field": "zone|f01|f01-z01|co2", **FIGURES}, {"field": 3}, {"no": "field"}])
    assert [e["zone"] for e in update_entries(payload)] == ["f01-z01"]
    assert update_entries(b"{") == []
    assert update_entries(json.dumps({"field": "zone|f01|f01-z01|co2", **FIGURES})) == []


def test_an_event_is_one_data_line_even_with_newlines_in_ids() -> None:
    wire = sse("update", {"zone": "a\nb</script>"})
    assert wire.startswith(b"event: update\ndata: ")
    assert wire.endswith(b"\n\n")
    assert wire.count(b"\n") == 3
    assert json.loads(wire.split(b"data: ", 1)[1]) == {"zone": "a\nb</script>"}


# -- the router, served in process (no Redis: pages, sign-in, checks) ---------------------------------
def no_redis(tenant: str) -> aioredis.Redis:
    raise AssertionError("these routes must not touch Redis")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(dashboard_router(REGISTRY, TOKENS, no_redis, session_key=KEY))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        yield client


async def sign_in(client: httpx.AsyncClient, tenant: str) -> None:
    answer = await client.post("/dashboard/session", data={"token": TOKENS.token_of(tenant)})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/buildings"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/dashboard" in cookie
    assert TOKENS.token_of(tenant) not in cookie  # the browser holds a session, not the API token


async def test_pages_without_a_session_send_you_to_sign_in(client: httpx.AsyncClient) -> None:
    for path in ("/dashboard/buildings", building_url("acm-001")):
        answer = await client.get(path)
        assert (answer.status_code, answer.headers["location"]) == (303, "/dashboard")
    for path in (building_url("acm-001", "/events"), building_url("acm-001", "/history")):
        assert (await client.get(path)).status_code == 401
    client.cookies.set(SESSION_COOKIE, Sessions(b"forged" * 6).issue("acme", NOW * 2))
    assert (await client.get(building_url("acm-001", "/events"))).status_code == 401


async def test_a_wrong_token_is_refused_on_the_sign_in_page(client: httpx.AsyncClient) -> None:
    answer = await client.post("/dashboard/session", data={"token": "<b>nope</b>"})
    assert answer.status_code == 401
    assert "That token is not valid" in answer.text
    assert "<b>nope" not in answer.text
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1:8000"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
)
async def test_a_sign_in_posted_from_another_site_is_refused(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    answer = await client.post("/dashboard/session", data={"token": TOKENS.token_of("acme")}, headers=headers)
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize(
    "headers", [{"Sec-Fetch-Site": "same-origin", "Origin": "null"}, {"Origin": "http://127.0.0.1:8000"}, {}]
)
async def test_a_sign_in_from_the_page_itself_is_taken(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    answer = await client.post("/dashboard/session", data={"token": TOKENS.token_of("acme")}, headers=headers)
    assert answer.status_code == 303


async def test_a_tenant_sees_its_buildings_only(client: httpx.AsyncClient) -> None:
    await sign_in(client, "acme")
    listed = await client.get("/dashboard/buildings")
    assert set(re.findall(r'data-building="([^"]+)"', listed.text)) == {"acm-001", "acm-002"}
    assert (await client.get(building_url("acm-001"))).status_code == 200
    for path in (building_url("glx-001"), building_url("nope")):
        assert (await client.get(path)).status_code == 404
    for suffix in ("/events", "/history"):
        assert (await client.get(building_url("glx-001", suffix))).status_code == 404
        assert (await client.get(building_url("nope", suffix))).status_code == 404


async def test_the_operator_sees_every_building(client: httpx.AsyncClient) -> None:
    await sign_in(client, OPERATOR)
    listed = await client.get("/dashboard/buildings")
    assert set(re.findall(r'data-building="([^"]+)"', listed.text)) == {"acm-001", "acm-002", "glx-001"}
    assert (await client.get(building_url("glx-001"))).status_code == 200


async def test_pages_are_escaped_and_forbid_inline_script(client: httpx.AsyncClient) -> None:
    await sign_in(client, "acme")
    hostile = '"><img src=x onerror=alert(1)>'
    answer = await client.get(building_url(hostile))
    assert answer.status_code == 404
    assert "<img" not in answer.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in answer.text
    page = await client.get(building_url("acm-001"))
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP
    assert "unsafe-inline" not in CSP
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/dashboard/static/dashboard.js" defer>']
    assert "</script>" in page.text
    assert not re.search(r"<script[^>]*>[^<]+</script>", page.text)


async def test_static_files_are_served_and_nothing_else(client: httpx.AsyncClient) -> None:
    js = await client.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text  # the page is built with textContent and attributes only
    assert (await client.get("/dashboard/static/dashboard.css")).status_code == 200
    assert (await client.get("/dashboard/static/base.html")).status_code == 404


async def test_sign_out_clears_the_cookie(client: httpx.AsyncClient) -> None:
    await sign_in(client, "acme")
    answer = await client.post("/dashboard/signout")
    assert answer.status_code == 303
    assert SESSION_COOKIE in answer.headers["set-cookie"]
    assert "Max-Age=0" in answer.headers["set-cookie"]


def test_the_page_files_ship_with_the_package() -> None:
    """An installed (not editable) package, as in the Docker image, has only the files package-data names."""
    root = Path(__file__).resolve().parents[3]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"].get("katas.sensors", [])
    web = root / "katas" / "sensors" / "web"
    shipped = {p for pattern in patterns for p in (root / "katas" / "sensors").glob(pattern)}
    assert set(web.iterdir()) <= shipped, "add the dashboard's files to [tool.setuptools.package-data]"
