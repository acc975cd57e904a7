"""A gateway node as a service of the stack: `python -m katas.api_gateway.services.gateway`.

Wires a `GatewayNode` (katas.api_gateway.node) to the real servers: the configuration store it follows,
the limiter's Redis found through the Sentinels (failing open to this node's share of each limit, with a
log line and a metric), the auth server's JWKS, the backends, and the broker that carries one usage event
per request to the analytics pipeline (katas.api_gateway.adapters.usage_events: never on the request path). `/healthz` and `/metrics` are reserved
on every node; every other path is proxied.

The kata's common mistakes are switched on here (`katas up api_gateway --mistake NAME`):

    local-rate-counters    each node counts alone: N nodes allow N times a limit
    single-redis-limiter   the limiter is the primary's address, not the Sentinels: no failover
    auth-db-every-request  every API key is looked up in the store, on the request path
    no-circuit-breaker     no breakers and one connection pool for every backend
    fail-closed-limiter    with the limiter unreachable, every request gets 503
    config-needs-restart   the configuration is read once, at start
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis

from katas.api_gateway.adapters.pg_config import ConfigWatcher, PostgresConfigStore, PostgresKeyLookup
from katas.api_gateway.adapters.redis_limiter import RedisLimiter
from katas.api_gateway.adapters.sentinel import primary_via_sentinels
from katas.api_gateway.adapters.usage_events import UsageRecorder
from katas.api_gateway.breaker import BreakerState, CircuitBreaker
from katas.api_gateway.config import ConfigHolder, GatewayConfig
from katas.api_gateway.node import Collaborators, GatewayNode, NodeConfig, Served
from katas.api_gateway.pki import ensure_ca, issue, server_context
from katas.api_gateway.ratelimit import FailOpenLimiter, LimiterUnavailableError, LocalLimiter, SharedLimiter
from katas.api_gateway.settings import gateway_settings
from katas.api_gateway.tokens import TokenVerifier
from katas.infra.ports import LOOPBACK, free_port
from katas.infra.service import (
    EXTRA_SITES,
    Worker,
    aiohttp_reserved_routes,
    log,
    mistakes,
    publish_endpoints,
    run_service,
    service_name,
)
from katas.infra.settings import infra_settings

REQUESTS = Counter(
    "gateway_requests", "Requests answered, by route (or refusal) and status", ["route", "status"]
)
LATENCY = Histogram(
    "gateway_request_seconds",
    "Time from a request's arrival to its answer, backend included",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
FAIL_OPEN = Counter(
    "gateway_limiter_fail_open", "Decisions taken by this node alone: the limiter was unreachable"
)
CONFIG_VERSION = Gauge("gateway_config_version", "Version of the configuration this node serves with")
CONFIG_ERRORS = Counter("gateway_config_errors", "Failed attempts to follow the configuration store")
BREAKER_OPEN = Gauge("gateway_breaker_open", "1 while a backend's circuit is open", ["backend"])


def observe(served: Served) -> None:
    REQUESTS.labels(served.route, str(served.status)).inc()
    LATENCY.observe(served.seconds)


class Throttled:
    """At most one log line per `every_s` for a repeating event (a limiter outage under load)."""

    def __init__(self, event: str, every_s: float = 1.0) -> None:
        self.event, self.every_s, self.last, self.suppressed = event, every_s, 0.0, 0

    def __call__(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.suppressed += 1
            return
        log(self.event, error=repr(error), suppressed_since_last=self.suppressed)
        self.last, self.suppressed = now, 0


def _limiter(redis: Redis, switches: frozenset[str], node_count: int) -> SharedLimiter:
    if "local-rate-counters" in switches:
        return LocalLimiter()
    shared = RedisLimiter(redis)
    if "fail-closed-limiter" in switches:
        return shared
    fail_open_log = Throttled("limiter_fail_open")

    def degraded(error: LimiterUnavailableError) -> None:
        FAIL_OPEN.inc()
        fail_open_log(error)

    return FailOpenLimiter(shared, LocalLimiter(share=1 / max(1, node_count)), degraded)


async def build() -> tuple[web.Application, Sequence[Worker]]:
    settings, infra, switches = gateway_settings(), infra_settings(), mistakes()
    store = await PostgresConfigStore(infra.require("postgres_dsn")).open()
    held = ConfigHolder(GatewayConfig.of([], version=-1))

    def applied(config: GatewayConfig) -> None:
        if held.apply(config):
            CONFIG_VERSION.set(config.version)
            log("config_applied", version=config.version, routes=len(config.routes.routes))

    config_errors = Throttled("config_store_unreachable", every_s=5.0)

    def config_error(error: Exception) -> None:
        CONFIG_ERRORS.inc()
        config_errors(error)

    watcher = ConfigWatcher(store, applied, poll_s=settings.config_poll_s, on_error=config_error)
    await watcher.reload()

    if "single-redis-limiter" in switches:
        redis = Redis.from_url(
            infra.require("redis_url"),
            socket_timeout=settings.limiter_timeout_s,
            socket_connect_timeout=settings.limiter_timeout_s,
        )
    else:
        sentinels = [
            (host, int(port)) for host, port in (a.rsplit(":", 1) for a in infra.split(infra.redis_sentinels))
        ]
        redis = primary_via_sentinels(
            sentinels, infra.redis_master_name, timeout_s=settings.limiter_timeout_s
        )

    http = aiohttp.ClientSession()

    async def fetch_jwks() -> dict[str, Any]:
        async with http.get(f"{settings.auth_url}/.well-known/jwks.json") as answer:
            answer.raise_for_status()
            keys: dict[str, Any] = await answer.json()
            return keys

    def breaker_moved(backend: str, state: BreakerState) -> None:
        BREAKER_OPEN.labels(backend).set(1 if state is BreakerState.OPEN else 0)
        log("breaker", backend=backend, state=state.value)

    recorder = UsageRecorder(
        service_name(),
        settings.usage_topic,
        capacity=settings.usage_buffer,
        partitions=settings.usage_partitions,
    )

    def observed(served: Served) -> None:
        observe(served)
        recorder.record(served)  # O(1), no I/O: the recorder's worker sends events to the broker

    backends = settings.backend_urls()
    node = GatewayNode(
        NodeConfig(
            backends,
            pool_per_backend=settings.pool_per_backend,
            node_name=service_name(),
            circuit_breakers="no-circuit-breaker" not in switches,
        ),
        Collaborators(
            _limiter(redis, switches, settings.node_count),
            breakers={name: CircuitBreaker(name, on_change=breaker_moved) for name in backends},
            observe=observed,
            tokens=TokenVerifier(fetch_jwks, settings.token_issuer, settings.token_audience)
            if settings.auth_url
            else None,
            keys=PostgresKeyLookup(store) if "auth-db-every-request" in switches else None,
        ),
        held,
    )
    app = node.app(aiohttp_reserved_routes())
    # Mutual TLS on a port of its own, with a server certificate from the stack's CA: a client certificate
    # from that CA names the client (API keys and tokens work there too).
    pki = ensure_ca(Path(infra.require("kata_run_dir")) / "pki")
    cert, key = issue(pki, service_name(), server_names=(LOOPBACK, "localhost"))
    tls_port = free_port()
    app[EXTRA_SITES] = [(tls_port, server_context(pki, cert, key))]
    publish_endpoints(**{f"{service_name()}_tls": f"https://{LOOPBACK}:{tls_port}"})

    async def close(_: web.Application) -> None:
        await recorder.close()  # the events of requests answered after the worker stopped
        await http.close()
        await redis.aclose()
        await store.close()

    app.on_cleanup.append(close)
    workers: list[Worker] = [recorder.run]
    if "config-needs-restart" not in switches:
        workers.append(watcher.run)
    log(
        "node_ready",
        config_version=held.current.version,
        mistakes=sorted(switches),
        backends=sorted(backends),
    )
    gc.freeze()  # what start-up made lives for good: full collections then pause the loop ~1 ms, not ~80 ms
    return app, workers


if __name__ == "__main__":
    run_service(build)
