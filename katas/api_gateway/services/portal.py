"""The developer portal: `python -m katas.api_gateway.services.portal`.

A developer signs in with an email and a password (katas.api_gateway.adapters.pg_developers) and manages
the one client their account belongs to:

    GET  /signin, POST /signin     sign in (a generic message on failure; repeated failures throttled)
    POST /signout                  end the session (its row is deleted, so a copied cookie dies too)
    GET  /                         the client's keys: label, created, revoked; "create key", "revoke"
    POST /keys                     a new key, shown on the answer once (only its digest is kept)
    POST /keys/{digest}/revoke     revoke one of this client's keys (404 for anyone else's)
    GET  /usage?window=<minutes>   requests per minute and P99 latency per route, from the usage API
    GET  /docs                     every backend's operations, from its /openapi.json
    GET  /static/portal.css, /healthz, /metrics

Keys are issued and revoked through the configuration store, whose writes reach every gateway node
within about 0.1 s. The browser only ever holds a session cookie (signed, HttpOnly, SameSite=Strict,
expiring); every POST form carries a CSRF token bound to it. The admin token that reads usage stays here.
Pages are rendered by Jinja2 with autoescaping, charts are SVG drawn on the server, and the
Content-Security-Policy allows no script and nothing from another origin.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jinja2
from aiohttp import web
from prometheus_client import Counter

from katas.api_gateway import defaults
from katas.api_gateway.adapters.pg_config import ConfigStoreUnavailableError, PostgresConfigStore
from katas.api_gateway.adapters.pg_developers import (
    MAX_PASSWORD_CHARS,
    Developer,
    PostgresDeveloperStore,
    normalize_email,
)
from katas.api_gateway.config import key_label
from katas.api_gateway.portal.charts import Series, line_chart
from katas.api_gateway.portal.docs import OpenApiCatalog
from katas.api_gateway.portal.security import LoginThrottle, Signer
from katas.api_gateway.portal.usage import (
    HttpUsageSource,
    NoUsageSource,
    UsageSource,
    UsageUnavailableError,
    minute_floor,
    usage_view,
)
from katas.api_gateway.settings import gateway_settings
from katas.infra.service import Worker, aiohttp_reserved_routes, log, own_url, publish_endpoints, run_service
from katas.infra.settings import infra_settings

PORTAL_DIR = Path(__file__).resolve().parent.parent / "portal"
SESSION_COOKIE = "portal_session"
LOGIN_COOKIE = "portal_login"
"""A pre-session cookie: the sign-in form's CSRF token is bound to it (login CSRF)."""
MAX_BODY_BYTES = 8 * 1024
DIGEST = re.compile(r"[0-9a-f]{64}")
WINDOWS = ((15, "15 min"), (60, "hour"), (360, "6 hours"), (1440, "day"))
DEFAULT_WINDOW = 60
PUBLIC_PATHS = frozenset({"/signin", "/static/portal.css"})
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

SIGNINS = Counter("portal_signins", "Sign-in attempts, by outcome", ["outcome"])
KEYS = Counter("portal_keys", "Keys issued and revoked through the portal", ["action"])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEVELOPER = web.RequestKey("developer", Developer)
SESSION_ID = web.RequestKey("session_id", str)


def _when(value: str | None) -> str:
    if not value:
        return ""
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _field(form: Any, name: str, limit: int) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


class Portal:
    def __init__(
        self,
        config: PostgresConfigStore,
        developers: PostgresDeveloperStore,
        usage: UsageSource,
        catalog: OpenApiCatalog,
        *,
        secret: bytes,
        session_ttl_s: int = 8 * 3600,
        secure_cookies: bool = False,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.config = config
        self.developers = developers
        self.usage = usage
        self.catalog = catalog
        self.signer = Signer(secret)
        self.session_ttl_s = session_ttl_s
        self.secure_cookies = secure_cookies
        self.throttle = throttle or LoginThrottle()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(PORTAL_DIR / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.public_paths: frozenset[str] = PUBLIC_PATHS

    def app(self, public: Sequence[web.RouteDef] = ()) -> web.Application:
        """The portal; `public` routes (a service's /healthz, /metrics) need no session."""
        self.public_paths = PUBLIC_PATHS | {r.path for r in public if isinstance(r, web.RouteDef)}
        application = web.Application(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[self._headers, self._store_errors, self._session],
        )
        application.add_routes(public)
        application.router.add_get("/static/portal.css", self.stylesheet)
        application.router.add_get("/signin", self.signin_form)
        application.router.add_post("/signin", self.signin)
        application.router.add_post("/signout", self.signout)
        application.router.add_get("/", self.keys)
        application.router.add_post("/keys", self.create_key)
        application.router.add_post("/keys/{digest}/revoke", self.revoke_key)
        application.router.add_get("/usage", self.usage_page)
        application.router.add_get("/docs", self.docs_page)
        return application

    # -- rendering ----------------------------------------------------------------------------------------
    def render(self, request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
        developer = request.get(DEVELOPER)
        session_id = request.get(SESSION_ID)
        context = {
            "developer": developer,
            "csrf": self.signer.token("csrf", session_id) if session_id else "",
            "page": "",
            "message": "",
            **values,
        }
        body = self.templates.get_template(template).render(context)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def error(self, request: web.Request, status: int, title: str, message: str) -> web.Response:
        return self.render(request, "error.html", status, title=title, message=message)

    # -- middlewares --------------------------------------------------------------------------------------
    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(SECURITY_HEADERS)
            raise
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @web.middleware
    async def _store_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ConfigStoreUnavailableError as error:
            log("portal_store_unavailable", error=str(error))
            response = self.error(
                request, 503, "Temporarily unavailable", "The portal cannot reach its store; nothing changed."
            )
            response.headers["Retry-After"] = "2"
            return response

    @web.middleware
    async def _session(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every page but the public ones needs a live session; every POST behind it needs its CSRF token."""
        if request.path in self.public_paths:
            return await handler(request)
        session_id = self.signer.unsign(request.cookies.get(SESSION_COOKIE))
        developer = await self.developers.session(session_id) if session_id else None
        if session_id is None or developer is None:
            response = web.HTTPSeeOther("/signin")
            if SESSION_COOKIE in request.cookies:
                response.del_cookie(SESSION_COOKIE, path="/")
            raise response
        request[DEVELOPER], request[SESSION_ID] = developer, session_id
        if request.method == "POST":
            form = await request.post()
            if not self.signer.check("csrf", session_id, form.get("csrf")):
                log("portal_csrf_refused", path=request.path, email=developer.email)
                return self.error(
                    request, 403, "Refused", "The form is stale or was not sent by this portal."
                )
        return await handler(request)

    # -- sign-in ------------------------------------------------------------------------------------------
    def _cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.secure_cookies,
        )

    async def stylesheet(self, _: web.Request) -> web.Response:
        response = web.Response(
            body=(PORTAL_DIR / "static" / "portal.css").read_bytes(), content_type="text/css"
        )
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    async def signin_form(
        self, request: web.Request, *, status: int = 200, message: str = "", email: str = ""
    ) -> web.Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if len(nonce) != 43:  # not one of ours (token_urlsafe(32)): a new one
            nonce = secrets.token_urlsafe(32)
        response = self.render(
            request,
            "signin.html",
            status,
            title="Sign in",
            csrf=self.signer.token("login", nonce),
            message=message,
            email=email,
        )
        self._cookie(response, LOGIN_COOKIE, nonce, 3600)
        return response

    async def signin(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        email = normalize_email(_field(form, "email", 320))
        if not self.signer.check("login", request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            SIGNINS.labels("csrf").inc()
            return await self.signin_form(
                request, status=403, message="The sign-in form expired. Please try again.", email=email
            )
        password = _field(form, "password", MAX_PASSWORD_CHARS + 1)
        wait = self.throttle.retry_after(email)
        if wait > 0:
            SIGNINS.labels("throttled").inc()
            log("portal_signin", email=email, outcome="throttled")
            response = await self.signin_form(
                request,
                status=429,
                message=f"Too many failed sign-ins for this address. Try again in {int(wait // 60) + 1} min.",
                email=email,
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        developer = await self.developers.authenticate(email, password)
        if developer is None:
            self.throttle.failed(email)
            SIGNINS.labels("refused").inc()
            log("portal_signin", email=email, outcome="refused")
            return await self.signin_form(
                request, status=401, message="The email or the password is wrong.", email=email
            )
        self.throttle.succeeded(email)
        SIGNINS.labels("ok").inc()
        log("portal_signin", email=developer.email, client=developer.client, outcome="ok")
        session_id = await self.developers.start_session(developer, self.session_ttl_s)
        response = web.HTTPSeeOther("/")
        self._cookie(response, SESSION_COOKIE, self.signer.sign(session_id), self.session_ttl_s)
        response.del_cookie(LOGIN_COOKIE, path="/")
        raise response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        await self.developers.end_session(request[SESSION_ID])
        log("portal_signout", email=request[DEVELOPER].email)
        response = web.HTTPSeeOther("/signin")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # -- keys ---------------------------------------------------------------------------------------------
    async def keys(
        self, request: web.Request, *, new_key: str = "", message: str = "", status: int = 200
    ) -> web.Response:
        developer = request[DEVELOPER]
        keys = [
            key | {"created_at": _when(key["created_at"]), "revoked_at": _when(key["revoked_at"])}
            for key in await self.config.keys_of(developer.client)
        ]
        client = await self.config.client(developer.client)
        return self.render(
            request,
            "keys.html",
            status,
            title="API keys",
            page="keys",
            client=client,
            keys=keys[::-1],  # newest first
            new_key=new_key,
            message=message or ("Key revoked." if request.query.get("revoked") else ""),
        )

    async def create_key(self, request: web.Request) -> web.Response:
        developer = request[DEVELOPER]
        api_key = await self.config.issue_key(developer.client)
        KEYS.labels("issued").inc()
        log("portal_key_issued", email=developer.email, client=developer.client, label=key_label(api_key))
        return await self.keys(request, new_key=api_key, status=201)

    async def revoke_key(self, request: web.Request) -> web.StreamResponse:
        developer = request[DEVELOPER]
        digest = request.match_info["digest"]
        if not DIGEST.fullmatch(digest) or not await self.config.revoke_digest(
            digest, client=developer.client
        ):
            log("portal_revoke_refused", email=developer.email, client=developer.client, key=digest[:64])
            return self.error(request, 404, "No such key", "Your client has no active key with that id.")
        KEYS.labels("revoked").inc()
        log("portal_key_revoked", email=developer.email, client=developer.client, key=digest)
        raise web.HTTPSeeOther("/?revoked=1")

    # -- usage and docs -----------------------------------------------------------------------------------
    async def usage_page(self, request: web.Request) -> web.Response:
        developer = request[DEVELOPER]
        try:
            window = int(request.query.get("window", DEFAULT_WINDOW))
        except ValueError:
            window = DEFAULT_WINDOW
        if window not in {minutes for minutes, _ in WINDOWS}:
            window = DEFAULT_WINDOW
        end = minute_floor(datetime.now(UTC))  # complete minutes only: a partial one would look like a drop
        start = end - timedelta(minutes=window)
        values: dict[str, Any] = {
            "title": "Usage",
            "page": "usage",
            "windows": WINDOWS,
            "window": window,
            "start": f"{start:%Y-%m-%d %H:%M}",
            "end": f"{end:%Y-%m-%d %H:%M}",
            "unavailable": "",
        }
        try:
            report = await self.usage.usage(developer.client, start, end)
        except UsageUnavailableError as error:
            log("portal_usage_unavailable", client=developer.client, reason=str(error))
            values["unavailable"] = str(error)
            return self.render(request, "usage.html", **values)
        view = usage_view(report, start, end)
        requests_chart = line_chart(
            "requests",
            "Requests per minute",
            view.minutes,
            [
                Series("requests", [float(v) for v in view.requests]),
                Series("refused", [float(v) for v in view.refused]),
                Series("errors", [float(v) for v in view.errors]),
            ],
            "req/min",
        )
        latency_chart = line_chart(
            "p99",
            "P99 latency per route",
            view.minutes,
            [Series(route, points) for route, points in view.p99_by_route.items()],
            "ms",
        )
        return self.render(
            request,
            "usage.html",
            **values,
            view=view,
            requests_chart=requests_chart,
            latency_chart=latency_chart,
        )

    async def docs_page(self, request: web.Request) -> web.Response:
        backends = await self.catalog.docs()
        routes: dict[str, list[dict[str, Any]]] = {}
        try:
            config = await self.config.snapshot()
            for route in sorted(config.routes.routes, key=lambda r: (r.prefix, r.name)):
                routes.setdefault(route.backend, []).append(
                    {
                        "prefix": route.prefix,
                        "tiers": sorted(tier.value for tier in route.tiers),
                        "headers": dict(route.headers),
                    }
                )
        except ConfigStoreUnavailableError:
            routes = {}  # the operations are still worth showing
        return self.render(request, "docs.html", title="Docs", page="docs", backends=backends, routes=routes)


async def seed_developers(
    config: PostgresConfigStore, developers: PostgresDeveloperStore, stack_secret: str
) -> list[dict[str, str]]:
    """One account per demo client (`dev@<client>.example`, its password derived from the stack secret),
    without overwriting an account that exists; the logins as endpoints.json lists them. A missing demo
    client is created as the admin service would (the two may start in either order)."""
    logins = []
    for demo in defaults.DEMO_CLIENTS:
        if await config.client(demo.name) is None:
            await config.put_client(demo.name, demo.tier, demo.limit)
        email = f"dev@{demo.name}.example"
        password = defaults.derived_secret(stack_secret, "portal-password", demo.name)
        await developers.add_developer(email, demo.name, password)
        logins.append({"email": email, "password": password, "client": demo.name})
    return logins


async def build() -> tuple[web.Application, Sequence[Worker]]:
    settings = gateway_settings()
    config = await PostgresConfigStore(infra_settings().require("postgres_dsn")).open()
    developers = await PostgresDeveloperStore(config).open()
    demo_secret = settings.demo_secret.get_secret_value()
    logins = await seed_developers(config, developers, demo_secret) if demo_secret else []
    if not demo_secret:
        log("portal_no_demo_accounts", reason="GW_DEMO_SECRET is not set")
    secret = settings.portal_secret.get_secret_value().encode()
    if not secret:
        secret = secrets.token_bytes(32)
        log("portal_random_secret", reason="GW_PORTAL_SECRET is not set: sessions end with this process")
    session = aiohttp.ClientSession()
    usage: UsageSource = (
        HttpUsageSource(settings.usage_url, settings.admin_token.get_secret_value(), session)
        if settings.usage_url
        else NoUsageSource()
    )
    portal = Portal(
        config,
        developers,
        usage,
        OpenApiCatalog(settings.backend_urls(), session),
        secret=secret,
        session_ttl_s=settings.portal_session_ttl_s,
        secure_cookies=settings.portal_secure_cookie,
    )
    app = portal.app(aiohttp_reserved_routes())

    async def close(_: web.Application) -> None:
        await session.close()
        await config.close()

    app.on_cleanup.append(close)
    publish_endpoints(portal=own_url(), portal_logins=logins)
    return app, []


if __name__ == "__main__":
    run_service(build)
