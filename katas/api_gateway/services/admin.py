"""The gateway's admin API, for operators and the developer portal (Authorization: Bearer <admin token>):

    POST   /clients/{name}/keys     a new API key for a client: {"api_key"} (201); a new client needs
                                    {"tier", "limit_per_second", "burst"} in the body
    DELETE /keys/{api_key}          revoke a key (204; 404 if unknown or already revoked)
    PUT    /clients/{name}/limits   {"limit_per_second", "burst"}
    GET    /clients/{name}          the client as stored, with its keys (labels and digests, never a key)
    GET    /routes                  every route
    PUT    /routes/{name}           create or replace a route (katas.api_gateway.routing.Route as JSON)
    DELETE /routes/{name}           remove a route
    PUT    /limits/{scope}          {"limit_per_second", "burst"} for "global" or a route name (per client)

Every write goes to the configuration store (katas.api_gateway.adapters.pg_config) in one transaction that
notifies the nodes; they apply it without a restart, measured in tests/integration/api_gateway/test_admin.py.
While the store is down, writes answer 503 and the nodes keep serving what they hold.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from katas.api_gateway import defaults
from katas.api_gateway.adapters.pg_config import (
    GLOBAL_SCOPE,
    ConfigStoreUnavailableError,
    PostgresConfigStore,
)
from katas.api_gateway.config import Client
from katas.api_gateway.pki import ensure_ca, issue
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Route, Tier
from katas.api_gateway.settings import gateway_settings
from katas.infra.service import Worker, aiohttp_reserved_routes, publish_endpoints, run_service
from katas.infra.settings import infra_settings

MAX_BODY_BYTES = 16 * 1024
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit_per_second: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000)


class NewClientBody(LimitsBody):
    tier: Tier


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _client_json(client: Client) -> dict[str, Any]:
    return {
        "name": client.name,
        "tier": client.tier.value,
        "limit_per_second": client.limit.rate,
        "burst": client.limit.burst,
    }


class AdminApi:
    def __init__(self, store: PostgresConfigStore, admin_token: str) -> None:
        if len(admin_token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        self.store = store
        self.admin_token = admin_token
        self.public_paths: frozenset[str] = frozenset()

    def app(self, public: Sequence[web.RouteDef] = ()) -> web.Application:
        """The admin application; `public` routes (a service's /healthz, /metrics) need no token."""
        self.public_paths = frozenset(route.path for route in public if isinstance(route, web.RouteDef))
        application = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._authorized, self._store_errors]
        )
        application.add_routes(public)
        application.router.add_post("/clients/{name}/keys", self.new_key)
        application.router.add_delete("/keys/{api_key}", self.revoke)
        application.router.add_put("/clients/{name}/limits", self.set_limits)
        application.router.add_get("/clients/{name}", self.get_client)
        application.router.add_get("/routes", self.get_routes)
        application.router.add_put("/routes/{name}", self.put_route)
        application.router.add_delete("/routes/{name}", self.delete_route)
        application.router.add_put("/limits/{scope}", self.put_limit)
        return application

    @web.middleware
    async def _authorized(self, request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if request.path not in self.public_paths and not hmac.compare_digest(
            given.encode(), self.admin_token.encode()
        ):
            response = _error(401, "the admin token is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        result: web.StreamResponse = await handler(request)
        return result

    @web.middleware
    async def _store_errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            result: web.StreamResponse = await handler(request)
        except ConfigStoreUnavailableError:
            return web.json_response(
                {"error": "the configuration store is unavailable; nothing was changed"},
                status=503,
                headers={"Retry-After": "2"},
            )
        return result

    @staticmethod
    async def _body(request: web.Request, model: type[BaseModel]) -> Any:
        try:
            return model.model_validate(json.loads(await request.read() or b"{}"))
        except (ValueError, ValidationError) as exc:
            return _error(400, f"bad body: {exc}".splitlines()[0][:300])

    async def new_key(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if await self.store.client(name) is None:
            body = await self._body(request, NewClientBody)
            if isinstance(body, web.Response):
                return body
            if not NAME.fullmatch(name):
                return _error(400, "a client name is 1 to 64 letters, digits, '_', '.' or '-'")
            await self.store.put_client(name, body.tier, Limit(body.limit_per_second, body.burst))
        api_key = await self.store.issue_key(name)
        return web.json_response({"api_key": api_key, "client": name}, status=201)

    async def revoke(self, request: web.Request) -> web.Response:
        if not await self.store.revoke_key(request.match_info["api_key"]):
            return _error(404, "no such key")
        return web.Response(status=204)

    async def set_limits(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        client = await self.store.client(name)
        if client is None:
            return _error(404, f"no client {name!r}")
        body = await self._body(request, LimitsBody)
        if isinstance(body, web.Response):
            return body
        await self.store.put_client(name, client.tier, Limit(body.limit_per_second, body.burst))
        return web.json_response(
            _client_json(Client(name, client.tier, Limit(body.limit_per_second, body.burst)))
        )

    async def get_client(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        client = await self.store.client(name)
        if client is None:
            return _error(404, "no such client")
        return web.json_response(_client_json(client) | {"keys": await self.store.keys_of(name)})

    async def get_routes(self, _: web.Request) -> web.Response:
        config = await self.store.snapshot()
        return web.json_response(
            {
                "version": config.version,
                "routes": [json.loads(r.model_dump_json()) for r in config.routes.routes],
            }
        )

    async def put_route(self, request: web.Request) -> web.Response:
        body = await self._body(request, Route)
        if isinstance(body, web.Response):
            return body
        if body.name != request.match_info["name"]:
            return _error(400, "the route's name must match the path")
        version = await self.store.put_routes([body])
        return web.json_response({"version": version, "route": json.loads(body.model_dump_json())})

    async def delete_route(self, request: web.Request) -> web.Response:
        await self.store.delete_route(request.match_info["name"])
        return web.Response(status=204)

    async def put_limit(self, request: web.Request) -> web.Response:
        body = await self._body(request, LimitsBody)
        if isinstance(body, web.Response):
            return body
        version = await self.store.put_limit(
            request.match_info["scope"], Limit(body.limit_per_second, body.burst)
        )
        return web.json_response({"version": version})


async def seed(store: PostgresConfigStore, stack_secret: str) -> list[dict[str, Any]]:
    """The stack's routes, limits and demo clients, where the store has none yet; the demo clients as
    `endpoints.json` lists them."""
    current = await store.snapshot()
    if not current.routes.routes:
        await store.put_routes(defaults.ROUTES)
        for route, limit in defaults.ROUTE_LIMITS.items():
            await store.put_limit(route, limit)
        await store.put_limit(GLOBAL_SCOPE, defaults.GLOBAL_LIMIT)
    listed = []
    for demo in defaults.DEMO_CLIENTS:
        client = current.clients.get(demo.name)
        if client is None:
            await store.put_client(demo.name, demo.tier, demo.limit)
            client = Client(demo.name, demo.tier, demo.limit)
        api_key = defaults.demo_key(stack_secret, demo.name)
        await store.add_key(demo.name, api_key)
        listed.append(
            {"name": demo.name, "tier": client.tier.value, "api_key": api_key,
             "limit_per_second": client.limit.rate, "burst": client.limit.burst}
        )  # fmt: skip
    return listed


async def build() -> tuple[web.Application, Sequence[Worker]]:
    settings = gateway_settings()
    store = await PostgresConfigStore(infra_settings().require("postgres_dsn")).open()
    demo_clients = await seed(store, settings.demo_secret.get_secret_value())
    # The stack's CA for mutual TLS, made here because the admin service starts before the nodes, and a
    # client certificate for the enterprise demo client.
    pki = ensure_ca(Path(infra_settings().require("kata_run_dir")) / "pki")
    enterprise = next(c for c in defaults.DEMO_CLIENTS if c.tier is Tier.ENTERPRISE)
    cert, key = issue(pki, enterprise.name)
    app = AdminApi(store, settings.admin_token.get_secret_value()).app(aiohttp_reserved_routes())

    async def close(_: web.Application) -> None:
        await store.close()

    app.on_cleanup.append(close)
    publish_endpoints(
        demo_clients=demo_clients,
        ca_cert=str(pki.ca_cert),
        demo_client_certificate={"client": enterprise.name, "cert": str(cert), "key": str(key)},
    )
    return app, []


if __name__ == "__main__":
    run_service(build)
