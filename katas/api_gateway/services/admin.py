"""The gateway's admin API, for operators and the developer portal (Authorization: Bearer <admin token>):

    POST   /clients/{name}/keys     a new API key for a client: {"api_key"} (201); a new client needs
                                    {"tier", "limit_per_second", "burst"} in the body
    DELETE /keys/{api_key}          revoke a key (204; 404 if unknown): refused everywhere within the
                                    nodes' cache TTL
    PUT    /clients/{name}/limits   {"limit_per_second", "burst"}: every node applies it within its cache TTL
    GET    /clients/{name}          the client as stored

Writes go to the key store (katas.api_gateway.adapters.redis_keys); nodes pick changes up as their
caches expire, without a restart.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from katas.api_gateway.adapters.redis_keys import RedisKeyDirectory
from katas.api_gateway.node import Client
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Tier

MAX_BODY_BYTES = 16 * 1024


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
    def __init__(self, keys: RedisKeyDirectory, admin_token: str) -> None:
        if len(admin_token) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        self.keys = keys
        self.admin_token = admin_token

    def app(self) -> web.Application:
        application = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._authorized])
        application.router.add_post("/clients/{name}/keys", self.new_key)
        application.router.add_delete("/keys/{api_key}", self.revoke)
        application.router.add_put("/clients/{name}/limits", self.set_limits)
        application.router.add_get("/clients/{name}", self.get_client)
        return application

    @web.middleware
    async def _authorized(self, request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.admin_token.encode()):
            response = _error(401, "the admin token is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        result: web.StreamResponse = await handler(request)
        return result

    @staticmethod
    async def _body(request: web.Request, model: type[LimitsBody]) -> LimitsBody | web.Response:
        try:
            return model.model_validate(json.loads(await request.read() or b"{}"))
        except (ValueError, ValidationError) as exc:
            return _error(400, f"bad body: {exc}".splitlines()[0][:300])

    async def new_key(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        existing = await self.keys.stored_client(name)
        if existing is None:
            body = await self._body(request, NewClientBody)
            if isinstance(body, web.Response):
                return body
            assert isinstance(body, NewClientBody)
            api_key = await self.keys.issue(name, body.tier, Limit(body.limit_per_second, body.burst))
        else:
            api_key = await self.keys.issue(name)
        return web.json_response({"api_key": api_key, "client": name}, status=201)

    async def revoke(self, request: web.Request) -> web.Response:
        if not await self.keys.revoke(request.match_info["api_key"]):
            return _error(404, "no such key")
        return web.Response(status=204)

    async def set_limits(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        client = await self.keys.stored_client(name)
        if client is None:
            return _error(404, f"no client {name!r}")
        body = await self._body(request, LimitsBody)
        if isinstance(body, web.Response):
            return body
        await self.keys.register(name, client.tier, Limit(body.limit_per_second, body.burst))
        updated = await self.keys.stored_client(name)
        assert updated is not None
        return web.json_response(_client_json(updated))

    async def get_client(self, request: web.Request) -> web.Response:
        client = await self.keys.stored_client(request.match_info["name"])
        return web.json_response(_client_json(client)) if client else _error(404, "no such client")
