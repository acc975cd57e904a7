"""The developer portal on real servers: PostgreSQL (accounts, sessions, keys), the backends' OpenAPI
documents, and a real headless browser (Debian's /usr/bin/chromium driven by Playwright).

The browser tests walk what a developer does: sign in (a wrong password refused), create a key (shown
once, stored only as a digest of their client), revoke it, read the docs, open the usage page. The other
tests take the attacker's side with a plain HTTP client: POSTs without or with someone else's CSRF token,
revoking another client's key, pages without a session, a cookie kept after sign-out, repeated wrong
passwords, and hostile strings from every source the portal shows (key labels, a backend's OpenAPI
document, the usage API's route names, the sign-in form's own email field).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect
from yarl import URL

from katas.api_gateway.adapters.pg_config import PostgresConfigStore
from katas.api_gateway.adapters.pg_developers import PostgresDeveloperStore
from katas.api_gateway.adapters.usage_store import UsageStore
from katas.api_gateway.analytics import UsageEvent, minute_of, minute_text
from katas.api_gateway.config import key_hash
from katas.api_gateway.defaults import derived_secret
from katas.api_gateway.portal.docs import OpenApiCatalog
from katas.api_gateway.portal.security import LoginThrottle
from katas.api_gateway.portal.usage import HttpUsageSource, NoUsageSource, UsageSource
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Tier
from katas.api_gateway.services.admin import seed
from katas.api_gateway.services.portal import Portal, seed_developers
from katas.infra.clickhouse import ClickHouse
from katas.infra.ports import LOOPBACK, free_port
from katas.infra.servers import ChdbStore, PostgresServer, ServiceProcess
from tests.integration.api_gateway.conftest import Serve, start_backend

DEMO_SECRET = "demo-secret-for-the-portal-tests"
ADMIN = "admin-token-for-the-portal-tests"
PORTAL_SECRET = "portal-secret-for-the-portal-tests"
PORTAL_MODULE = "katas.api_gateway.services.portal"
USAGE_MODULE = "katas.api_gateway.services.usage_api"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def password_of(client: str) -> str:
    return derived_secret(DEMO_SECRET, "portal-password", client)


def email_of(client: str) -> str:
    return f"dev@{client}.example"


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture
async def seeded(config_store: PostgresConfigStore) -> PostgresConfigStore:
    """The store as the admin service leaves it: routes, limits, the demo clients and their keys."""
    await seed(config_store, DEMO_SECRET)
    return config_store


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's jar ignores IP hosts unless unsafe)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


StartPortal = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_portal(seeded: PostgresConfigStore, serve: Serve) -> AsyncIterator[StartPortal]:
    """`url = await start_portal(backends=..., usage=...)`: the portal application served in this process
    over the test's PostgreSQL, with the demo developers seeded as its service seeds them."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(
        backends: dict[str, str] | None = None,
        usage_url: str = "",
        throttle: LoginThrottle | None = None,
    ) -> str:
        session = aiohttp.ClientSession()
        sessions.append(session)
        developers = await PostgresDeveloperStore(seeded).open()
        await seed_developers(seeded, developers, DEMO_SECRET)
        usage: UsageSource = HttpUsageSource(usage_url, ADMIN, session) if usage_url else NoUsageSource()
        portal = Portal(
            seeded,
            developers,
            usage,
            OpenApiCatalog(backends or {}, session),
            secret=PORTAL_SECRET.encode(),
            throttle=throttle,
        )
        return await serve(portal.app())

    yield start
    for session in sessions:
        await session.close()


async def csrf_of(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url, allow_redirects=False) as answer:
        assert answer.status == 200, f"{url}: {answer.status}"
        found = CSRF.search(await answer.text())
    assert found, f"no CSRF token on {url}"
    return found.group(1)


async def sign_in(http: aiohttp.ClientSession, portal: str, client: str, password: str | None = None) -> int:
    """Sign in through the form as the demo developer of `client`; the answer's status (303 on success)."""
    token = await csrf_of(http, f"{portal}/signin")
    form = {"csrf": token, "email": email_of(client), "password": password or password_of(client)}
    async with http.post(f"{portal}/signin", data=form, allow_redirects=False) as answer:
        return answer.status


# -- the developer's side, in a browser ---------------------------------------------------------------------
async def test_developer_signs_in_manages_keys_reads_docs_and_usage(
    launch: Callable[[Any], Any],
    run_dir: Path,
    config_server: PostgresServer,
    seeded: PostgresConfigStore,
    browser: Browser,
) -> None:
    """The portal as the stack runs it (its own process), two real backends and a dead one for the docs."""
    backends = {
        name: f"http://{start_backend(launch, run_dir, name).client_address}"
        for name in ("orders", "catalog")
    }
    backends["payments"] = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    portal_service: ServiceProcess = launch(
        ServiceProcess(
            "portal",
            run_dir,
            module=PORTAL_MODULE,
            env={
                **config_server.client_env(),
                "GW_DEMO_SECRET": DEMO_SECRET,
                "GW_ADMIN_TOKEN": ADMIN,
                "GW_PORTAL_SECRET": PORTAL_SECRET,
                "GW_BACKENDS": ",".join(f"{name}={url}" for name, url in backends.items()),
                "GW_USAGE_URL": "",
            },
        )
    )
    portal = portal_service.endpoint
    published = json.loads((portal_service.home / "endpoints.json").read_text())
    assert published["portal"] == portal
    login = next(entry for entry in published["portal_logins"] if entry["client"] == "acme")
    assert login == {"email": email_of("acme"), "password": password_of("acme"), "client": "acme"}

    page = await browser.new_page()
    page.set_default_timeout(10_000)

    # Every page needs a session: the dashboard sends a stranger to the sign-in form.
    await page.goto(f"{portal}/")
    await expect(page).to_have_url(f"{portal}/signin")

    # A wrong password is refused with a message that does not say which part was wrong.
    await page.fill("input[name=email]", login["email"])
    await page.fill("input[name=password]", "not-the-password")
    await page.click("button[type=submit]")
    await expect(page.locator("#signin-error")).to_have_text("The email or the password is wrong.")
    await expect(page).to_have_url(f"{portal}/signin")

    await page.fill("input[name=email]", login["email"])
    await page.fill("input[name=password]", login["password"])
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{portal}/")
    await expect(page.locator("#who")).to_contain_text("client acme")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "portal_session")
    assert cookie["httpOnly"], cookie
    assert cookie["sameSite"] == "Strict", cookie
    assert cookie["expires"] > 0, cookie

    # Create a key: shown once, stored as a digest of acme's, active on the gateway's configuration.
    await page.click("#create-key")
    api_key = (await page.locator("#new-key").inner_text()).strip()
    assert api_key.startswith("gwk_"), api_key
    assert len(api_key) > 40, api_key
    digest = key_hash(api_key)
    assert (await seeded.snapshot()).key_owners.get(digest) == "acme"
    assert any(key["id"] == digest and key["revoked_at"] is None for key in await seeded.keys_of("acme"))
    await page.goto(f"{portal}/")
    assert await page.locator("#new-key").count() == 0
    assert api_key not in await page.content(), "the key must be shown only once"
    row = page.locator(f'tr[data-key-id="{digest}"]')
    await expect(row).to_have_class("active")
    await expect(row.locator("td.label")).to_contain_text(api_key[:10])

    # Revoke it: the store shows it revoked and the gateway's configuration no longer holds it.
    await row.get_by_role("button", name="Revoke").click()
    await expect(page.locator("#notice")).to_have_text("Key revoked.")
    await expect(row).to_have_class("revoked")
    await expect(row.locator("td.revoked-at")).to_contain_text("UTC")
    assert next(k for k in await seeded.keys_of("acme") if k["id"] == digest)["revoked_at"] is not None
    assert digest not in (await seeded.snapshot()).key_owners

    # Docs: the operations of both running backends, the dead one marked unavailable.
    await page.click("text=Docs")
    await expect(page).to_have_url(f"{portal}/docs")
    for name in ("orders", "catalog"):
        section = page.locator(f'section[data-backend="{name}"]')
        await expect(section.locator("table.operations")).to_be_visible()
        methods_paths = {
            (
                (await op.locator("td.method").inner_text()).strip(),
                (await op.locator("td.path").inner_text()).strip(),
            )
            for op in await section.locator("table.operations tbody tr").all()
        }
        assert {
            ("GET", f"/{name}/items"),
            ("POST", f"/{name}/items"),
            ("DELETE", f"/{name}/items/{{item_id}}"),
        } <= methods_paths, methods_paths
        await expect(section).to_contain_text(f"/{name}")  # the gateway route that reaches it
    await expect(page.locator('section[data-backend="payments"] .unavailable')).to_contain_text("unavailable")

    # Usage: no usage API configured for this portal, and the page says so instead of failing.
    await page.click("text=Usage")
    await expect(page.locator("#usage-unavailable")).to_contain_text("not configured")

    # Sign out: the session is gone, the dashboard asks for a sign-in again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{portal}/signin")
    await page.goto(f"{portal}/")
    await expect(page).to_have_url(f"{portal}/signin")


async def test_usage_page_charts_the_developers_own_usage_from_the_usage_api(
    launch: Callable[[Any], Any], run_dir: Path, start_portal: StartPortal, browser: Browser
) -> None:
    """The usage API as the stack runs it (its own process, over the chDB store owner), with requests of two
    clients stored: the portal asks with the admin token, only for the signed-in developer's client, and
    charts the answer."""
    chdb: ChdbStore = launch(ChdbStore("chdb", run_dir))
    usage_api: ServiceProcess = launch(
        ServiceProcess(
            "usage", run_dir, module=USAGE_MODULE, env={**chdb.client_env(), "GW_ADMIN_TOKEN": ADMIN}
        )
    )
    this_minute = minute_of(time.time())
    events = [
        UsageEvent(f"globex-{i}", this_minute - 60 * (1 + i % 5) + 10 + (i % 40), "gw1", "globex",
                   ("orders", "catalog")[i % 2], "GET", 429 if i % 10 == 0 else 200, float(1 + i % 30))
        for i in range(100)
    ] + [
        UsageEvent(f"acme-{i}", this_minute - 120 + 5, "gw1", "acme", "orders", "GET", 200, 3.0)
        for i in range(7)
    ]  # fmt: skip
    async with ClickHouse(chdb.endpoint) as ch:
        assert (await UsageStore(ch).insert(events)).stored == len(events)
    portal = await start_portal(usage_url=usage_api.endpoint)

    page = await browser.new_page()
    page.set_default_timeout(10_000)
    await sign_in_page(page, portal, "globex")
    await page.goto(f"{portal}/usage?window=15")
    await expect(page.locator("#usage-total")).to_have_text("100 requests in this window.")  # no acme
    requests_line = page.locator('svg[data-chart="requests"] polyline[data-series="requests"]')
    await expect(requests_line).to_have_count(1)
    box = await requests_line.bounding_box()
    assert box is not None
    assert box["width"] > 100, box  # drawn across the chart, not a dot
    await expect(page.locator('svg[data-chart="requests"] polyline[data-series="refused"]')).to_have_count(1)
    for route in ("orders", "catalog"):
        await expect(page.locator(f'svg[data-chart="p99"] polyline[data-series="{route}"]')).to_have_count(1)
    rows = page.locator("#routes tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.filter(has_text="orders")).to_contain_text("50")
    assert ADMIN not in await page.content(), "the admin token stays on the server"


async def sign_in_page(page: Page, portal: str, client: str) -> None:
    await page.goto(f"{portal}/signin")
    await page.fill("input[name=email]", email_of(client))
    await page.fill("input[name=password]", password_of(client))
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{portal}/")


# -- the attacker's side, over plain HTTP ---------------------------------------------------------------------
async def test_pages_need_a_live_session(start_portal: StartPortal, http: aiohttp.ClientSession) -> None:
    portal = await start_portal()
    for path in ("/", "/usage", "/docs"):
        async with http.get(f"{portal}{path}", allow_redirects=False) as answer:
            assert answer.status == 303, (path, answer.status)
            assert answer.headers["Location"] == "/signin"
    async with http.post(f"{portal}/keys", data={"csrf": "x"}, allow_redirects=False) as answer:
        assert answer.status == 303
        assert answer.headers["Location"] == "/signin"

    # A forged cookie (not signed by the portal) is no session.
    forged = {"portal_session": "made-up-session-id.c2lnbmF0dXJl"}
    async with http.get(f"{portal}/", cookies=forged, allow_redirects=False) as answer:
        assert answer.status == 303

    assert await sign_in(http, portal, "acme") == 303
    cookie = http.cookie_jar.filter_cookies(URL(portal))["portal_session"].value
    async with http.get(f"{portal}/", allow_redirects=False) as answer:
        assert answer.status == 200
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["Cache-Control"] == "no-store"
        token = CSRF.search(await answer.text())
    assert token
    async with http.post(f"{portal}/signout", data={"csrf": token.group(1)}, allow_redirects=False) as answer:
        assert answer.status == 303

    # The cookie copied before sign-out is dead: the session row is gone, not only the browser's cookie.
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as thief,
        thief.get(f"{portal}/", cookies={"portal_session": cookie}, allow_redirects=False) as answer,
    ):
        assert answer.status == 303


async def test_session_cookie_attributes(start_portal: StartPortal, http: aiohttp.ClientSession) -> None:
    portal = await start_portal()
    token = await csrf_of(http, f"{portal}/signin")
    form = {"csrf": token, "email": email_of("acme"), "password": password_of("acme")}
    async with http.post(f"{portal}/signin", data=form, allow_redirects=False) as answer:
        assert answer.status == 303
        set_cookie = next(v for v in answer.headers.getall("Set-Cookie") if v.startswith("portal_session="))
    assert "HttpOnly" in set_cookie, set_cookie
    assert "SameSite=Strict" in set_cookie, set_cookie
    assert re.search(r"Max-Age=\d+", set_cookie), set_cookie


async def test_posts_without_the_sessions_csrf_token_are_refused(
    start_portal: StartPortal, seeded: PostgresConfigStore
) -> None:
    portal = await start_portal()
    jar = aiohttp.CookieJar(unsafe=True)
    other_jar = aiohttp.CookieJar(unsafe=True)
    async with (
        aiohttp.ClientSession(cookie_jar=jar) as acme,
        aiohttp.ClientSession(cookie_jar=other_jar) as globex,
    ):
        assert await sign_in(acme, portal, "acme") == 303
        assert await sign_in(globex, portal, "globex") == 303
        globex_token = await csrf_of(globex, f"{portal}/")
        before = len(await seeded.keys_of("acme"))
        for form in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": globex_token}):
            async with acme.post(f"{portal}/keys", data=form, allow_redirects=False) as answer:
                assert answer.status == 403, (form, answer.status)
        assert len(await seeded.keys_of("acme")) == before, "a refused POST must not create a key"

        # The sign-in form has its own token, bound to a pre-session cookie (no login CSRF either).
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as stranger:
            form = {"email": email_of("acme"), "password": password_of("acme"), "csrf": globex_token}
            async with stranger.post(f"{portal}/signin", data=form, allow_redirects=False) as answer:
                assert answer.status == 403

        acme_token = await csrf_of(acme, f"{portal}/")
        async with acme.post(f"{portal}/keys", data={"csrf": acme_token}, allow_redirects=False) as answer:
            assert answer.status == 201
        assert len(await seeded.keys_of("acme")) == before + 1


async def test_another_clients_key_cannot_be_revoked(
    start_portal: StartPortal, seeded: PostgresConfigStore, http: aiohttp.ClientSession
) -> None:
    portal = await start_portal()
    victim_key = await seeded.issue_key("globex")
    victim = key_hash(victim_key)
    assert await sign_in(http, portal, "acme") == 303
    token = await csrf_of(http, f"{portal}/")
    for target in (victim, "not-a-digest", "0" * 64, "../" + victim):
        async with http.post(
            f"{portal}/keys/{target}/revoke", data={"csrf": token}, allow_redirects=False
        ) as answer:
            assert answer.status == 404, (target, answer.status)
    assert (await seeded.snapshot()).key_owners.get(victim) == "globex", "globex's key must stay active"
    async with http.get(f"{portal}/") as answer:
        assert victim not in await answer.text(), "another client's keys are not listed"


async def test_repeated_wrong_passwords_are_throttled_per_email(
    start_portal: StartPortal, http: aiohttp.ClientSession
) -> None:
    portal = await start_portal(throttle=LoginThrottle(max_failures=3, window_s=60))
    for _ in range(3):
        assert await sign_in(http, portal, "acme", password="wrong-password") == 401
    assert await sign_in(http, portal, "acme") == 429, "the right password waits out the lock too"
    assert await sign_in(http, portal, "globex") == 303, "other addresses are not locked"
    # An address without an account is throttled alike: the answer does not tell which accounts exist.
    token = await csrf_of(http, f"{portal}/signin")
    statuses = []
    for _ in range(4):
        form = {"csrf": token, "email": "nobody@nowhere.example", "password": "whatever-it-is"}
        async with http.post(f"{portal}/signin", data=form, allow_redirects=False) as answer:
            statuses.append(answer.status)
            assert "The email or the password is wrong." in await answer.text() or answer.status == 429
    assert statuses == [401, 401, 401, 429]


async def test_usage_page_says_plainly_when_the_usage_api_is_unreachable(
    start_portal: StartPortal, http: aiohttp.ClientSession
) -> None:
    portal = await start_portal(usage_url=f"http://{LOOPBACK}:{free_port()}")  # nothing listens there
    assert await sign_in(http, portal, "acme") == 303
    async with http.get(f"{portal}/usage") as answer:
        assert answer.status == 200
        page = await answer.text()
    assert 'id="usage-unavailable"' in page
    assert "the usage API cannot be reached" in page
    assert "<svg" not in page


async def test_hostile_strings_are_escaped_everywhere_they_are_shown(
    start_portal: StartPortal, seeded: PostgresConfigStore, serve: Serve, http: aiohttp.ClientSession
) -> None:
    script = "<script>alert(1)</script>"
    # A client name cannot carry markup at all: the store refuses it.
    with pytest.raises(psycopg.errors.CheckViolation):
        await seeded.put_client(script, Tier.FREE, Limit(1, 1))
    # A key label can (a key added by an operator is labelled by its first characters).
    await seeded.add_key("acme", script)

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "openapi": "3.1.0",
                "info": {"title": script, "version": '"><img src=x onerror=alert(2)>'},
                "paths": {"/evil/<b>bold</b>": {"get": {"summary": "<img src=x onerror=alert(3)>"}}},
            }
        )

    async def usage(request: web.Request) -> web.Response:
        minute = minute_text(minute_of(time.time()) - 60)  # the last complete minute
        row = {"minute": minute, "route": '<svg onload="alert(4)">', "requests": 3, "refused": 0, "errors": 0,
               "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}  # fmt: skip
        return web.json_response({"client": request.query["client"], "minutes": [row]})

    hostile = web.Application()
    hostile.router.add_get("/openapi.json", openapi)
    hostile.router.add_get("/usage", usage)
    hostile_url = await serve(hostile)
    portal = await start_portal(backends={"evil": hostile_url}, usage_url=hostile_url)

    # The sign-in form echoes the typed address back on failure.
    token = await csrf_of(http, f"{portal}/signin")
    form = {"csrf": token, "email": f'"{script}', "password": "whatever-it-is"}
    async with http.post(f"{portal}/signin", data=form, allow_redirects=False) as answer:
        page = await answer.text()
    assert answer.status == 401
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    assert await sign_in(http, portal, "acme") == 303
    pages = {}
    for path in ("/", "/docs", "/usage?window=15"):
        async with http.get(f"{portal}{path}") as answer:
            assert answer.status == 200, path
            pages[path] = await answer.text()
    assert "&lt;script&gt;" in pages["/"]
    assert "<script>" not in pages["/"]
    assert "<img" not in pages["/docs"]
    assert "<b>bold" not in pages["/docs"]
    assert "&lt;img src=x onerror=alert(3)&gt;" in pages["/docs"]
    assert "/evil/&lt;b&gt;bold&lt;/b&gt;" in pages["/docs"]
    assert "<svg onload" not in pages["/usage?window=15"]
    assert "&lt;svg onload=&#34;alert(4)&#34;&gt;" in pages["/usage?window=15"]
