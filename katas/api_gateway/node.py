"""One gateway node: authenticate, route, rate-limit, forward through a circuit breaker, transform.

The request path, in order, each step answering on its own when it refuses:

1. the client, from its API key (`X-API-Key`) in the configuration the node holds, from an OAuth 2.0 bearer token
   (`Authorization: Bearer`) verified locally (`katas.api_gateway.tokens`), or from its TLS client
   certificate's common name (`katas.api_gateway.pki`): 401 without any of them;
2. the route (`katas.api_gateway.routing`): 404, 405 or 403 with the reason;
3. the rate limits of the client on this route, the client and everyone (`katas.api_gateway.ratelimit`):
   429 with Retry-After and RateLimit headers, which every answer carries;
4. the backend through its circuit breaker (`katas.api_gateway.breaker`) and a bounded connection pool,
   with the route's timeout: 503 while the breaker is open, 504 on a timeout, 502 when the backend
   cannot be reached or answers with what the route cannot transform;
5. the answer, transformed per route (internal fields stripped, XML to JSON) with headers added.

The node is an aiohttp application (chosen by measured overhead, see katas.api_gateway.http_bench); its
collaborators are passed in, so the same node runs in the stack and in tests, against real servers. Routes,
clients, key digests and limits are read from a `ConfigHolder` per request, which the configuration watcher
replaces whole on a change (katas.api_gateway.adapters.pg_config).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from katas.api_gateway.breaker import CircuitBreaker, CircuitOpenError
from katas.api_gateway.config import (
    Client,
    ConfigHolder,
    HeldKeys,
    KeyDirectory,
    KeyDirectoryUnavailableError,
)
from katas.api_gateway.pki import common_name
from katas.api_gateway.ratelimit import Decision, LimiterUnavailableError, SharedLimiter, limits_for
from katas.api_gateway.routing import Conversion, Refusal, RouteMatch
from katas.api_gateway.tokens import TokenError, TokenVerifier
from katas.api_gateway.transform import TransformError, strip_fields, xml_to_json

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length",
     "proxy-authorization", "proxy-connection"}
)  # fmt: skip
CLIENT_ONLY = frozenset({"x-api-key", "authorization"})
"""Credentials stop at the gateway: backends get the client's name instead."""
MAX_BODY_BYTES = 1 << 20
CLIENT_KEY = web.RequestKey("client", str)


@dataclass(frozen=True, slots=True)
class Served:
    """What a node did with one request: for its metrics and for the usage events billing is made of."""

    at: float
    """Wall-clock time the request arrived (epoch seconds)."""
    node: str
    client: str
    """The client's name; empty when the request was refused before the client was known."""
    route: str
    """The route's name, or why none was taken (`unauthenticated`, `no_route`, `method`, `tier`)."""
    method: str
    status: int
    seconds: float
    """Time from arrival to the answer, the backend's time included."""


@dataclass
class NodeConfig:
    """What a node is given at start: the backends' addresses, its pools and its name. Routes, clients and
    limits come from the configuration store and change while it runs (katas.api_gateway.config)."""

    backends: Mapping[str, str]
    """Backend name -> base URL."""
    pool_per_backend: int = 50
    node_name: str = "gateway"
    circuit_breakers: bool = True
    """False is the `no-circuit-breaker` mistake: no breakers, and one pool shared by every backend, so a
    slow backend holds the connections the others need."""


@dataclass
class Collaborators:
    limiter: SharedLimiter
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    observe: Callable[[Served], None] = lambda served: None
    """Called once per request, after its answer is ready (metrics, usage events)."""
    tokens: TokenVerifier | None = None
    """Bearer tokens are accepted only with a verifier."""
    keys: KeyDirectory | None = None
    """Where API keys are looked up; by default the configuration the node holds (no I/O per request)."""


def _problem(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


class GatewayNode:
    def __init__(self, config: NodeConfig, parts: Collaborators, held: ConfigHolder) -> None:
        self.config = config
        self.parts = parts
        self.held = held
        self.keys: KeyDirectory = parts.keys or HeldKeys(held)
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    def breaker(self, backend: str) -> CircuitBreaker | contextlib.nullcontext[None]:
        if not self.config.circuit_breakers:
            return contextlib.nullcontext()
        if backend not in self.parts.breakers:
            self.parts.breakers[backend] = CircuitBreaker(backend)
        return self.parts.breakers[backend]

    def session(self, backend: str) -> aiohttp.ClientSession:
        """One bounded pool per backend, so a slow backend cannot take the connections of the others."""
        pool = backend if self.config.circuit_breakers else "shared"
        if pool not in self.sessions:
            connector = aiohttp.TCPConnector(limit=self.config.pool_per_backend)
            self.sessions[pool] = aiohttp.ClientSession(connector=connector)
        return self.sessions[pool]

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.sessions.values()))

    def app(self, reserved: Sequence[web.RouteDef] = ()) -> web.Application:
        """The node's application; `reserved` routes (a service's /healthz, /metrics) come before the
        catch-all that proxies everything else."""
        application = web.Application(client_max_size=MAX_BODY_BYTES)
        application.add_routes(reserved)
        application.router.add_route("*", "/{tail:.*}", self.handle)

        async def closing(_: web.Application) -> None:
            await self.close()

        application.on_cleanup.append(closing)
        return application

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived, started = time.time(), time.perf_counter()
        label, response = await self._answer(request)
        response.headers["X-Gateway-Node"] = self.config.node_name
        served = Served(
            arrived,
            self.config.node_name,
            request.get(CLIENT_KEY, ""),
            label,
            request.method,
            response.status,
            time.perf_counter() - started,
        )
        self.parts.observe(served)
        return response

    async def _answer(self, request: web.Request) -> tuple[str, web.Response]:
        try:
            client = await self._client(request)
        except KeyDirectoryUnavailableError:
            return "unauthenticated", _problem(503, "cannot check API keys right now", {"Retry-After": "1"})
        except TokenError as exc:
            challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            return "unauthenticated", _problem(401, f"bearer token refused: {exc}", challenge)
        if client is None:
            return "unauthenticated", _problem(401, "an X-API-Key or a bearer token is required")
        request[CLIENT_KEY] = client.name
        current = self.held.current
        match = current.routes.match(request.method, request.path, request.headers, client.tier)
        if isinstance(match, Refusal):
            return match.name.lower(), _problem(match.status, match.value)
        route = match.route
        try:
            decision = await self.parts.limiter.check(
                limits_for(
                    client.name,
                    route.name,
                    per_client=client.limit,
                    per_endpoint=current.endpoint_limits,
                    global_limit=current.global_limit,
                )
            )
        except LimiterUnavailableError:  # only without a fallback: the `fail-closed-limiter` mistake
            return route.name, _problem(503, "rate limiter unavailable", {"Retry-After": "1"})
        if not decision.allowed:
            return route.name, _problem(429, f"rate limit ({decision.scope}) exceeded", decision.headers())
        response = await self._forward(request, client, match, decision)
        return route.name, response

    async def _client(self, request: web.Request) -> Client | None:
        api_key = request.headers.get("X-API-Key", "")
        if api_key:
            return await self.keys.client_for(api_key)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token or self.parts.tokens is None:
            # Mutual TLS: a certificate from the stack's CA names its client (katas.api_gateway.pki).
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            name = common_name(peer)
            return await self.keys.client_named(name) if name else None
        claims = await self.parts.tokens.verify(token.strip())
        client = await self.keys.client_named(str(claims["sub"]))  # today's tier and limits, not the token's
        if client is None:
            raise TokenError(f"the token's client {claims['sub']!r} is not a client of this gateway")
        return client

    async def _forward(
        self, request: web.Request, client: Client, match: RouteMatch, decision: Decision
    ) -> web.Response:
        route = match.route
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | CLIENT_ONLY}
        headers |= {
            "X-Request-Id": request.headers.get("X-Request-Id") or uuid.uuid4().hex,
            "X-Client": client.name,
            "X-Client-Tier": client.tier.value,
            "X-Forwarded-For": request.remote or "",
            **route.add_request_headers,
        }
        limit_headers = decision.headers()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _problem(413, f"body larger than {MAX_BODY_BYTES} bytes", limit_headers)
        try:
            async with (
                _guarded(self.breaker(route.backend)),
                self.session(route.backend).request(
                    request.method,
                    self.config.backends[route.backend] + match.upstream_path,
                    params=request.query,
                    headers=headers,
                    data=body,
                    timeout=aiohttp.ClientTimeout(total=route.timeout_s),
                    allow_redirects=False,
                ) as answer,
            ):
                content = await answer.read()
                if answer.status >= 500:
                    raise BackendFailedError(answer.status)
                status, content_type = answer.status, answer.content_type
                relayed = {
                    k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-type"}
                }
        except CircuitOpenError as exc:
            retry = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
            return _problem(503, f"backend {route.backend} is unavailable", limit_headers | retry)
        except TimeoutError:
            return _problem(
                504, f"backend {route.backend} did not answer within {route.timeout_s:g} s", limit_headers
            )
        except BackendFailedError as exc:
            return _problem(502, f"backend {route.backend} failed ({exc.status})", limit_headers)
        except aiohttp.ClientError as exc:
            return _problem(502, f"backend {route.backend} unreachable: {type(exc).__name__}", limit_headers)
        try:
            content, content_type = _transform(content, content_type, route.conversion, route.strip_fields)
        except TransformError as exc:
            return _problem(502, str(exc), limit_headers)
        response = web.Response(status=status, body=content, content_type=content_type)
        response.headers.update(relayed | dict(route.add_response_headers) | limit_headers)
        return response


def _guarded(
    breaker: CircuitBreaker | contextlib.nullcontext[None],
) -> contextlib.AbstractAsyncContextManager[None]:
    return breaker.guard() if isinstance(breaker, CircuitBreaker) else contextlib.nullcontext()


class BackendFailedError(RuntimeError):
    """The backend answered 5xx: a failure for its circuit breaker, a 502 for the client."""

    def __init__(self, status: int) -> None:
        super().__init__(f"backend answered {status}")
        self.status = status


def _transform(
    content: bytes, content_type: str, conversion: Conversion, strip: frozenset[str]
) -> tuple[bytes, str]:
    if conversion is Conversion.XML_TO_JSON and "xml" in content_type:
        body: Any = xml_to_json(content)
    elif strip and content_type == "application/json" and content:
        try:
            body = json.loads(content)
        except ValueError as exc:
            raise TransformError(f"the backend's JSON answer is not JSON: {exc}") from exc
    else:
        return content, content_type
    return json.dumps(strip_fields(body, strip)).encode(), "application/json"
