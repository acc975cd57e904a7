"""The dashboard: a page per building with its floors and zones, live over server-sent events, and
history charts from the rollups. The API service mounts it (`dashboard_router`):

    GET  /dashboard                              sign in: paste your API token
    POST /dashboard/session                      form `token` -> a session cookie, 303 to the buildings
    POST /dashboard/signout                      clears the cookie
    GET  /dashboard/buildings                    the caller's buildings (the operator's: all of them)
    GET  /dashboard/buildings/{b}                the building page: building, floor and zone views
    GET  /dashboard/buildings/{b}/events         SSE: `snapshot` (the live hash), then `update`s
    GET  /dashboard/buildings/{b}/history?...    the API's `/buildings/{b}/history`, for the page's script
    GET  /dashboard/static/{dashboard.js,dashboard.css}

The browser holds a session cookie, never the token: signed, expiring, HttpOnly (a script injected into
the page could not read it) and SameSite=Strict (another site cannot make the browser use it). Without a
valid one pages redirect to the sign-in and data routes answer 401; another tenant's building is a 404
everywhere, as in the API, so the dashboard does not reveal which buildings exist.

Live updates: the aggregator writes the live view (`sensors:{tenant}:{building}:live`) and publishes the
fields it changed on the channel of the same name. The event stream subscribes *before* reading the hash,
so nothing written between the two is missed (the page keeps the newer of two versions of a field), and
it reads and subscribes through the tenant's own Redis user, whose ACL allows only that tenant's keys and
channels. Each event carries the server's clock, so the page's freshness figure (now minus the newest
`as_of` shown) does not depend on the browser's clock being right.

The stream's events (what a freshness probe can read too): `event: snapshot` then `event: update`, each
`data: {"now": RFC 3339 server time, "entries": [{"level", "floor", "zone", "type", "start", "size_s",
"mean", "min", "max", "last", "count", "as_of"}]}` (floor and zone "" above their level), and a comment
line every `HEARTBEAT_S`.

Pages are Jinja2 templates with autoescaping; the script builds the page from the stream with
`textContent` and attributes only, and the Content-Security-Policy allows no inline script and nothing
from another origin, so a hostile floor or zone id is shown, never run.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, Final
from urllib.parse import parse_qs, quote, urlsplit

import anyio
import httpx
import jinja2
import redis.asyncio as aioredis
from fastapi import APIRouter, Cookie, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from prometheus_client import Counter, Gauge

from katas.infra.service import log
from katas.sensors.readings import SENSOR_TYPES, format_timestamp
from katas.sensors.storage import live_key
from katas.sensors.tenancy import OPERATOR, Registry, Tokens

PREFIX: Final = "/dashboard"
SESSION_COOKIE: Final = "sensors_dashboard"
SESSION_TTL_S: Final = 8 * 3600
HEARTBEAT_S: Final = 15.0
"""A comment line this often keeps proxies from closing an idle stream and finds departed clients."""
RETRY_MS: Final = 2000
"""How soon the browser reconnects after the stream broke (a restart of the API, of Redis)."""
MAX_STREAMS: Final = 256
"""Open event streams per process: each holds a Redis connection, so their number is bounded."""
MAX_FORM_BYTES: Final = 4096
MAX_NAME_CHARS: Final = 256
LEVELS: Final = frozenset({"building", "floor", "zone"})
FIGURES: Final = ("mean", "min", "max", "last", "count", "size_s")
HISTORY_PARAMS: Final = ("type", "level", "from", "to", "step")
"""The history query's parameters the proxy passes on; anything else is dropped."""
STATIC: Final = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not "no-referrer": that makes a browser's Origin "null"
}

SIGNINS = Counter("dashboard_signins", "Dashboard sign-ins, by outcome", ["outcome"])
STREAMS = Gauge("dashboard_streams", "Open dashboard event streams")
EVENTS = Counter("dashboard_events", "Events sent to dashboards, by kind", ["kind"])

SessionCookie = Annotated[str | None, Cookie(alias=SESSION_COOKIE)]

HistorySource = Callable[[Request, str, str, Mapping[str, str]], Awaitable[Response]]
"""(request, tenant, building, query parameters) -> the history answer, for a caller already allowed."""


# ------------------------------------------------------------------------------------------- sessions
def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


@dataclass(frozen=True)
class Sessions:
    """Session cookies: `base64(tenant).expires.hmac`. Stateless, so nothing is stored per browser; the
    key never leaves the process (a new key, after a restart, signs everyone out)."""

    key: bytes
    ttl_s: int = SESSION_TTL_S

    def _mac(self, body: str) -> str:
        return hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, tenant: str, now: float) -> str:
        body = f"{_b64(tenant)}.{int(now) + self.ttl_s}"
        return f"{body}.{self._mac(body)}"

    def tenant_of(self, value: str | None, now: float) -> str | None:
        """The tenant a cookie was issued to, or None if it is forged, altered or expired."""
        if not value or len(value) > 512:
            return None
        body, _, mac = value.rpartition(".")
        if not body or not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        encoded, _, expires = body.partition(".")
        if not expires.isdigit() or int(expires) <= now:
            return None
        try:
            return _unb64(encoded)
        except (binascii.Error, UnicodeDecodeError):
            return None


def form_field(body: bytes, name: str) -> str:
    """One field of an `application/x-www-form-urlencoded` body ('' when absent or unreadable)."""
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return ""
    values = fields.get(name) or [""]
    return values[0].strip()


def same_origin(request: Request) -> bool:
    """A POST from the dashboard's own page, not a form another site made the browser send (login CSRF).

    Browsers say where a request comes from in `Sec-Fetch-Site`; older ones only in `Origin`. A client
    that sends neither (curl) is no browser another site could drive."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


# ----------------------------------------------------------------------------------- live view -> events
def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _timestamp(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 40:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def live_entry(field: str, figures: Any) -> dict[str, Any] | None:
    """A live-view field (`level|floor|zone|type` -> figures) as the page's entry; None if it is not one.

    Only known levels and types, finite numbers and real timestamps pass: the page never has to guess."""
    parts = field.split("|")
    if len(parts) != 4 or not isinstance(figures, Mapping):
        return None
    level, floor, zone, kind = parts
    if (
        level not in LEVELS
        or kind not in SENSOR_TYPES
        or len(floor) > MAX_NAME_CHARS
        or len(zone) > MAX_NAME_CHARS
    ):
        return None
    if not all(_finite(figures.get(k)) for k in FIGURES) or not all(
        _timestamp(figures.get(k)) for k in ("start", "as_of")
    ):
        return None
    entry: dict[str, Any] = {"level": level, "floor": floor, "zone": zone, "type": kind}
    entry.update({k: figures[k] for k in (*FIGURES, "start", "as_of")})
    return entry


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def snapshot_entries(raw: Mapping[bytes | str, bytes | str]) -> list[dict[str, Any]]:
    """The live hash (HGETALL) as entries, in a stable order; unreadable fields are left out."""
    entries = []
    for field, value in raw.items():
        try:
            figures = json.loads(value)
        except (ValueError, TypeError):
            continue
        entry = live_entry(_text(field), figures)
        if entry is not None:
            entries.append(entry)
    return sorted(entries, key=lambda e: (e["level"], e["floor"], e["zone"], e["type"]))


def update_entries(payload: bytes | str) -> list[dict[str, Any]]:
    """A message of the live channel (a JSON list of `{"field", ...figures}`) as entries."""
    try:
        changed = json.loads(payload)
    except (ValueError, TypeError):
        return []
    if not isinstance(changed, list):
        return []
    entries = []
    for item in changed:
        if isinstance(item, Mapping) and isinstance(item.get("field"), str):
            entry = live_entry(item["field"], item)
            if entry is not None:
                entries.append(entry)
    return entries


def sse(event: str, data: Any) -> bytes:
    """One server-sent event; JSON has no raw newlines, so `data` is one line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n".encode()


HEARTBEAT: Final = b": heartbeat\n\n"


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


async def live_events(
    client: aioredis.Redis, tenant: str, building: str, heartbeat_s: float
) -> AsyncGenerator[bytes, None]:
    """The building's event stream: a snapshot of the live hash, then every update, heartbeats between."""
    key = live_key(tenant, building)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(key)  # before the snapshot: an update written meanwhile is not lost
        snapshot = snapshot_entries(await client.hgetall(key))
        EVENTS.labels("snapshot").inc()
        yield f"retry: {RETRY_MS}\n".encode() + sse("snapshot", {"now": _now(), "entries": snapshot})
        loop = asyncio.get_running_loop()
        beat_at = loop.time() + heartbeat_s
        while True:
            message = await pubsub.get_message(timeout=max(0.0, beat_at - loop.time()))
            if message is None:
                if loop.time() >= beat_at:
                    yield HEARTBEAT
                    beat_at = loop.time() + heartbeat_s
                continue
            if message.get("type") != "message":
                continue
            entries = update_entries(message["data"])
            if entries:
                EVENTS.labels("update").inc()
                yield sse("update", {"now": _now(), "entries": entries})
    finally:
        with anyio.CancelScope(shield=True):  # a departed client cancels us; the connection still goes back
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


# ------------------------------------------------------------------------------------------- history
def api_history(tokens: Tokens) -> HistorySource:
    """The API's own history route, called in process with the tenant's bearer token: one implementation
    of the query, its validation and its tenant isolation, whether a script or an HTTP client asks."""

    async def query(request: Request, tenant: str, building: str, params: Mapping[str, str]) -> Response:
        transport = httpx.ASGITransport(app=request.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.internal") as client:
            answer = await client.get(
                f"/buildings/{quote(building, safe='')}/history",
                params=dict(params),
                headers={"Authorization": f"Bearer {tokens.token_of(tenant)}"},
                timeout=30,
            )
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )

    return query


# ------------------------------------------------------------------------------------------- the router
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("katas.sensors", "web"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _static(name: str) -> bytes:
    return resources.files("katas.sensors").joinpath("web", name).read_bytes()


def _secure(response: Response, *, cache: str = "no-store") -> Response:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = cache
    return response


def building_url(building: str, suffix: str = "") -> str:
    return f"{PREFIX}/buildings/{quote(building, safe='')}{suffix}"


def dashboard_router(
    registry: Registry,
    tokens: Tokens,
    read: Callable[[str], aioredis.Redis],
    *,
    session_key: bytes | None = None,
    session_ttl_s: int = SESSION_TTL_S,
    secure_cookies: bool = False,
    heartbeat_s: float = HEARTBEAT_S,
    max_streams: int = MAX_STREAMS,
    history: HistorySource | None = None,
) -> APIRouter:
    """The dashboard's routes. `read(tenant)` is the Redis client a request of `tenant` reads and
    subscribes with (the API's: the tenant's own Redis user). `session_key` signs the cookies; by default
    a random key of this process. `history(request, tenant, building, params)` answers the history
    proxy (default: the API's `/buildings/{b}/history` route, called in process)."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    sessions = Sessions(session_key or secrets.token_bytes(32), session_ttl_s)
    templates = _templates()
    static = {name: _static(name) for name in STATIC}
    open_streams = 0
    history_of = history or api_history(tokens)

    def page(template: str, status: int = 200, **context: Any) -> Response:
        html = templates.get_template(template).render(prefix=PREFIX, **context)
        return _secure(HTMLResponse(html, status_code=status))

    def caller(cookie: str | None) -> str | None:
        tenant = sessions.tenant_of(cookie, time.time())
        return tenant if tenant == OPERATOR or tenant in registry.buildings else None

    def visible(tenant: str, building: str) -> str | None:
        """The building's owner, if `tenant` may see it."""
        owner = registry.owner(building)
        return owner if owner is not None and registry.visible_to(tenant, building) else None

    def to_signin() -> Response:
        return _secure(RedirectResponse(PREFIX, status_code=303))

    def not_found(building: str) -> Response:
        return page("error.html", 404, title="Not found", message=f"There is no building {building!r}.")

    def unauthorized() -> Response:
        return _secure(JSONResponse({"detail": "sign in to the dashboard first"}, status_code=401))

    def missing(building: str) -> Response:
        return _secure(JSONResponse({"detail": f"no building {building!r}"}, status_code=404))

    @router.get("")
    async def signin(session: SessionCookie = None) -> Response:
        if caller(session) is not None:
            return _secure(RedirectResponse(f"{PREFIX}/buildings", status_code=303))
        return page("signin.html", error="")

    @router.post("/session")
    async def sign_in(request: Request) -> Response:
        if not same_origin(request):
            SIGNINS.labels("cross-site").inc()
            return page("error.html", 403, title="Refused", message="Sign in from the dashboard's own page.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return page("error.html", 413, title="Too large", message="The sign-in form is too large.")
        tenant = tokens.tenant_of(form_field(bytes(body), "token"))
        if tenant is None:
            SIGNINS.labels("refused").inc()
            return page("signin.html", 401, error="That token is not valid.")
        SIGNINS.labels("ok").inc()
        response = RedirectResponse(f"{PREFIX}/buildings", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.issue(tenant, time.time()),
            max_age=sessions.ttl_s,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
        )
        return _secure(response)

    @router.post("/signout")
    async def sign_out() -> Response:
        response = RedirectResponse(PREFIX, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return _secure(response)

    @router.get("/buildings")
    async def buildings(session: SessionCookie = None) -> Response:
        tenant = caller(session)
        if tenant is None:
            return to_signin()
        owned: Iterable[tuple[str, str]] = (
            (owner, b) for owner, bs in registry.buildings.items() for b in bs if tenant in (owner, OPERATOR)
        )
        listed = [{"id": b, "owner": owner, "url": building_url(b)} for owner, b in sorted(owned)]
        return page("buildings.html", tenant=tenant, operator=tenant == OPERATOR, buildings=listed)

    @router.get("/buildings/{building}")
    async def building_page(building: str, session: SessionCookie = None) -> Response:
        tenant = caller(session)
        if tenant is None:
            return to_signin()
        owner = visible(tenant, building)
        if owner is None:
            return not_found(building)
        return page(
            "building.html",
            tenant=tenant,
            building=building,
            owner=owner,
            events_url=building_url(building, "/events"),
            history_url=building_url(building, "/history"),
            types=SENSOR_TYPES,
        )

    @router.get("/buildings/{building}/events")
    async def events(building: str, session: SessionCookie = None) -> Response:
        nonlocal open_streams
        tenant = caller(session)
        if tenant is None:
            return unauthorized()
        owner = visible(tenant, building)
        if owner is None:
            return missing(building)
        if open_streams >= max_streams:
            response = JSONResponse({"detail": "too many open dashboards"}, status_code=503)
            response.headers["Retry-After"] = "5"
            return _secure(response)

        async def stream() -> AsyncIterator[bytes]:
            nonlocal open_streams
            open_streams += 1
            STREAMS.inc()
            try:
                async for chunk in live_events(read(tenant), owner, building, heartbeat_s):
                    yield chunk
            except aioredis.RedisError as exc:  # the browser reconnects after RETRY_MS
                log("dashboard_stream_failed", building=building, error=str(exc)[:200])
            finally:
                open_streams -= 1
                STREAMS.dec()

        streaming = StreamingResponse(stream(), media_type="text/event-stream")
        streaming.headers["X-Accel-Buffering"] = "no"
        return _secure(streaming, cache="no-cache")

    @router.get("/buildings/{building}/history")
    async def building_history(request: Request, building: str, session: SessionCookie = None) -> Response:
        tenant = caller(session)
        if tenant is None:
            return unauthorized()
        if visible(tenant, building) is None:
            return missing(building)
        params = {k: v[:64] for k, v in request.query_params.items() if k in HISTORY_PARAMS}
        return _secure(await history_of(request, tenant, building, params))

    @router.get("/static/{name}")
    async def static_file(name: str) -> Response:
        if name not in static:
            return _secure(JSONResponse({"detail": "not found"}, status_code=404))
        return _secure(Response(static[name], media_type=STATIC[name]), cache="no-cache")

    return router
