"""The stack's OAuth 2.0 authorization server: the client-credentials grant (RFC 6749 section 4.4), tokens
as JWTs (katas.api_gateway.tokens), and the public keys the gateway nodes verify them with.

    POST /oauth/token                grant_type=client_credentials, client authenticated by HTTP Basic
                                     (or client_id and client_secret in the form): {"access_token", ...}
    GET  /.well-known/jwks.json      the published public keys
    POST /admin/rotate               a new signing key (Authorization: Bearer <admin token>)

Clients are the gateway's clients in the configuration store (katas.api_gateway.adapters.pg_config), with
the SHA-256 of their secret (random, 32 bytes, so no salt or slow hash is needed). A token names its
client (`sub`) and tier; a node applies the client's limits from the configuration it holds, so a limit
change reaches token clients as fast as key clients. Errors are RFC 6749 section 5.2's JSON.

The signing keys live in this process: a restart starts a new key, and tokens signed before it stop
verifying (clients fetch a new one, as they do at expiry).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Sequence

from aiohttp import web

from katas.api_gateway.adapters.pg_config import ConfigStoreUnavailableError, PostgresConfigStore
from katas.api_gateway.config import key_hash
from katas.api_gateway.defaults import OAUTH_DEMO_CLIENT, derived_secret
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Tier
from katas.api_gateway.settings import gateway_settings
from katas.api_gateway.tokens import TokenIssuer
from katas.infra.service import Worker, aiohttp_reserved_routes, own_url, publish_endpoints, run_service
from katas.infra.settings import infra_settings


async def register_client(
    store: PostgresConfigStore, client_id: str, tier: Tier, limit: Limit, secret: str | None = None
) -> str:
    """Register (or re-key) a client for the client-credentials grant; its secret is returned once, here."""
    secret = secret or secrets.token_urlsafe(32)
    await store.put_client(client_id, tier, limit)
    await store.set_oauth_secret(client_id, secret)
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
    def __init__(self, store: PostgresConfigStore, issuer: TokenIssuer, admin_token: str) -> None:
        self.store = store
        self.issuer = issuer
        self.admin_token = admin_token

    def app(self) -> web.Application:
        application = web.Application(client_max_size=64 * 1024)
        application.add_routes(aiohttp_reserved_routes())
        application.router.add_post("/oauth/token", self.token)
        application.router.add_get("/.well-known/jwks.json", self.jwks)
        application.router.add_post("/admin/rotate", self.rotate)
        return application

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
        try:
            found = await self.store.oauth_client(client_id)
        except ConfigStoreUnavailableError:
            return _oauth_error(503, "temporarily_unavailable", "the client store is unavailable")
        if found is None or not hmac.compare_digest(found[1], key_hash(secret)):
            return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
        token, expires_in = self.issuer.issue(client_id, {"tier": found[0].tier.value})
        body = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def build() -> tuple[web.Application, Sequence[Worker]]:
    """The stack's auth server, with the demo OAuth client registered (once: lab changes are kept)."""
    settings = gateway_settings()
    store = await PostgresConfigStore(infra_settings().require("postgres_dsn")).open()
    demo = OAUTH_DEMO_CLIENT
    secret = derived_secret(settings.demo_secret.get_secret_value(), "oauth-secret", demo.name)
    if await store.client(demo.name) is None:
        await register_client(store, demo.name, demo.tier, demo.limit, secret)
    else:
        await store.set_oauth_secret(demo.name, secret)
    issuer = TokenIssuer(settings.token_issuer, settings.token_audience)
    app = AuthorizationServer(store, issuer, settings.admin_token.get_secret_value()).app()

    async def close(_: web.Application) -> None:
        await store.close()

    app.on_cleanup.append(close)
    publish_endpoints(
        token_url=f"{own_url()}/oauth/token",
        demo_oauth_client={"client_id": demo.name, "client_secret": secret},
    )
    return app, []


if __name__ == "__main__":
    run_service(build)
