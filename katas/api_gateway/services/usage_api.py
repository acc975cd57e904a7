"""The usage API, for billing and the developer portal's dashboard, `python -m
katas.api_gateway.services.usage_api` (Authorization: Bearer <admin token> on every route but /healthz
and /metrics):

    GET /usage?client=NAME&from=RFC3339&to=RFC3339
        {"client": NAME, "minutes": [{"minute": "2025-01-31T12:00:00Z", "route": "orders", "requests": 120,
          "refused": 3, "errors": 0, "p50_ms": 4.1, "p95_ms": 9.8, "p99_ms": 15.2}, ...]}
        by minute, then route; one entry per minute and route the client used
    GET /usage/summary?from=RFC3339&to=RFC3339
        {"clients": [{"client": NAME, "requests": ..., "refused": ..., "errors": ...}, ...]} by client;
        requests refused before the client was known are summed under "unidentified"

`refused` counts 429 answers (rate limited), `errors` 5xx answers; `requests` counts every answer. A range
covers every minute whose bucket starts in [from rounded down to its minute, to): without `to` it ends now,
without `from` it starts 60 minutes before `to`, and it may span 31 days at most
(katas.api_gateway.analytics.UsageWindow). Figures are per minute as the aggregator stored them, a few
seconds behind the requests.

Unknown or repeated parameters, bad times, an empty or over-long range and a bad client name are 400 with
the reason; a missing or wrong token is 401; a store that does not answer is 503 with Retry-After.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from aiohttp import web

from katas.api_gateway.adapters.usage_store import UsageStore
from katas.api_gateway.analytics import UsageQueryError, UsageWindow, minute_text
from katas.api_gateway.settings import gateway_settings
from katas.infra.clickhouse import ClickHouse, ClickHouseError
from katas.infra.service import Worker, aiohttp_reserved_routes, log, own_url, publish_endpoints, run_service
from katas.infra.settings import infra_settings

CLIENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What the admin API accepts as a client name (katas.api_gateway.services.admin)."""
USAGE_PARAMETERS = frozenset({"client", "from", "to"})
SUMMARY_PARAMETERS = frozenset({"from", "to"})


class UsageApi:
    def __init__(self, store: UsageStore, admin_token: str, clock: Callable[[], float] = time.time) -> None:
        if len(admin_token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        self.store = store
        self.admin_token = admin_token
        self.clock = clock
        self.public_paths: frozenset[str] = frozenset()

    def app(self, public: Sequence[web.RouteDef] = ()) -> web.Application:
        """The API; `public` routes (a service's /healthz, /metrics) need no token."""
        self.public_paths = frozenset(route.path for route in public if isinstance(route, web.RouteDef))
        application = web.Application(middlewares=[self._authorized, self._errors])
        application.add_routes(public)
        application.router.add_get("/usage", self.usage)
        application.router.add_get("/usage/summary", self.summary)
        return application

    @web.middleware
    async def _authorized(self, request: web.Request, handler: Any) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if request.path not in self.public_paths and not (
            scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), self.admin_token.encode())
        ):
            return _error(401, "the admin token is required", {"WWW-Authenticate": "Bearer"})
        result: web.StreamResponse = await handler(request)
        return result

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            result: web.StreamResponse = await handler(request)
        except UsageQueryError as exc:
            return _error(400, str(exc))
        except (ClickHouseError, httpx.HTTPError) as exc:
            log("usage_store_unavailable", path=request.path, error=f"{type(exc).__name__}: {exc}"[:500])
            return _error(503, "the usage store is unavailable", {"Retry-After": "5"})
        return result

    def _window(self, request: web.Request, allowed: frozenset[str]) -> UsageWindow:
        query = request.query
        unknown = sorted(set(query) - allowed)
        if unknown:
            raise UsageQueryError(f"unknown parameter {unknown[0]!r}; expected {', '.join(sorted(allowed))}")
        repeated = sorted(name for name in allowed if len(query.getall(name, [])) > 1)
        if repeated:
            raise UsageQueryError(f"parameter {repeated[0]!r} given more than once")
        return UsageWindow.parse(query.get("from"), query.get("to"), self.clock())

    async def usage(self, request: web.Request) -> web.Response:
        window = self._window(request, USAGE_PARAMETERS)
        client = request.query.get("client")
        if client is None:
            raise UsageQueryError("client is required")
        if not CLIENT_NAME.fullmatch(client):
            raise UsageQueryError("client: 1 to 64 letters, digits, '_', '.' or '-'")
        minutes = await self.store.minutes(client, window)
        return web.json_response(
            {
                "client": client,
                "minutes": [
                    {
                        "minute": minute_text(m.minute),
                        "route": m.route,
                        "requests": m.requests,
                        "refused": m.refused,
                        "errors": m.errors,
                        "p50_ms": m.p50_ms,
                        "p95_ms": m.p95_ms,
                        "p99_ms": m.p99_ms,
                    }
                    for m in minutes
                ],
            }
        )

    async def summary(self, request: web.Request) -> web.Response:
        window = self._window(request, SUMMARY_PARAMETERS)
        totals = await self.store.summary(window)
        identified = [t for t in totals if t.client]
        unidentified = next((t for t in totals if not t.client), None)
        return web.json_response(
            {
                "clients": [
                    {"client": t.client, "requests": t.requests, "refused": t.refused, "errors": t.errors}
                    for t in identified
                ],
                "unidentified": {
                    "requests": unidentified.requests if unidentified else 0,
                    "refused": unidentified.refused if unidentified else 0,
                    "errors": unidentified.errors if unidentified else 0,
                },
            }
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


async def build() -> tuple[web.Application, Sequence[Worker]]:
    settings = gateway_settings()
    ch = ClickHouse(infra_settings().require("clickhouse_url"), timeout_s=10.0)
    store = UsageStore(ch)
    try:
        await store.ensure_schema()  # so the API answers (empty) before the aggregator's first batch
    except (ClickHouseError, httpx.HTTPError) as exc:  # the store is down: answer 503 until it is back
        log("usage_schema_not_checked", error=f"{type(exc).__name__}: {exc}"[:500])
    app = UsageApi(store, settings.admin_token.get_secret_value()).app(aiohttp_reserved_routes())

    async def close(_: web.Application) -> None:
        await ch.close()

    app.on_cleanup.append(close)
    publish_endpoints(usage=own_url())
    return app, []


if __name__ == "__main__":
    run_service(build)
