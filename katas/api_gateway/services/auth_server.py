"""The stack's OAuth 2.0 authorization server: the client-credentials grant (RFC 6749 section 4.4), tokens
as JWTs (katas.api_gateway.tokens), and the public keys the gateway nodes verify them with.

    POST /oauth/token                grant_type=client_credentials, client authenticated by HTTP Basic
                                     (or client_id and client_secret in the form): {"access_token", ...}
    GET  /.well-known/jwks.json      the published public keys
    POST /admin/rotate               a new signing key (Authorization: Bearer <admin token>)

Clients are registered in Redis, `gw:oauth:<client id>`, with the SHA-256 of their secret (random, 32
bytes, so no salt or slow hash is needed), their tier and their limit; the token carries tier and limit
so a node needs nothing else to apply them. Errors are RFC 6749 section 5.2's JSON.

The signing keys live in this process: a restart starts a new key, and tokens signed before it stop
verifying (clients fetch a new one, as they do at expiry).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Tier
from katas.api_gateway.tokens import TokenIssuer

CLIENT_PREFIX = "gw:oauth"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def register_client(redis: Redis, client_id: str, tier: Tier, limit: Limit) -> str:
    """Register (or re-key) a client; its secret is returned once, here."""
    secret = secrets.token_urlsafe(32)
    record = {"secret_sha256": _digest(secret), "tier": tier.value, "rate": limit.rate, "burst": limit.burst}
    await redis.set(f"{CLIENT_PREFIX}:{client_id}", json.dumps(record))
    return secret


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="katas"'
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=headers
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        client_id, sep, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (client_id, secret) if sep else None


class AuthorizationServer:
    def __init__(self, redis: Redis, issuer: TokenIssuer, admin_token: str) -> None:
        self.redis = redis
        self.issuer = issuer
        self.admin_token = admin_token

    def app(self) -> web.Application:
        application = web.Application(client_max_size=64 * 1024)
        application.router.add_post("/oauth/token", self.token)
        application.router.add_get("/.well-known/jwks.json", self.jwks)
        application.router.add_post("/admin/rotate", self.rotate)
        application.router.add_get("/healthz", self.healthz)
        return application

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def jwks(self, _: web.Request) -> web.Response:
        return web.json_response(self.issuer.jwks(), headers={"Cache-Control": "max-age=60"})

    async def rotate(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not self.admin_token or not hmac.compare_digest(given, self.admin_token):
            return web.json_response({"error": "admin token required"}, status=401)
        return web.json_response({"kid": self.issuer.rotate()})

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials is None and isinstance(form.get("client_id"), str):
            credentials = (str(form["client_id"]), str(form.get("client_secret", "")))
        if credentials is None:
            return _oauth_error(401, "invalid_client", "client authentication is required")
        client_id, secret = credentials
        raw = await self.redis.get(f"{CLIENT_PREFIX}:{client_id}")
        record: dict[str, Any] = json.loads(raw) if raw else {}
        if not record or not hmac.compare_digest(record["secret_sha256"], _digest(secret)):
            return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
        token, expires_in = self.issuer.issue(
            client_id, {"tier": record["tier"], "rate": record["rate"], "burst": record["burst"]}
        )
        body = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
