"""What a fresh `katas up api_gateway` starts with: the routes over the five backends, route and global
limits, and the demo clients whose keys `endpoints.json` lists.

The admin service writes these into the configuration store when it starts, without overwriting what is
there (a restarted stack keeps the changes made in the lab). Demo keys and OAuth secrets are derived from
a stack secret, so the same run directory always seeds the same ones.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from katas.api_gateway.config import KEY_PREFIX
from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Conversion, Route, Tier

INTERNAL_FIELDS = frozenset({"_internal", "cost_cents"})

ROUTES = (
    Route(name="orders", prefix="/orders", backend="orders", strip_fields=INTERNAL_FIELDS,
          add_response_headers={"Cache-Control": "no-store"}),
    Route(name="payments", prefix="/payments", backend="payments", strip_fields=INTERNAL_FIELDS,
          methods=frozenset({"GET", "POST"}), timeout_s=2.0),
    Route(name="catalog", prefix="/catalog", backend="catalog", strip_fields=INTERNAL_FIELDS),
    Route(name="catalog-v2", prefix="/catalog", backend="catalog", headers={"X-API-Version": "2"},
          add_request_headers={"X-Catalog-Version": "2"}, add_response_headers={"X-API-Version": "2"}),
    Route(name="users", prefix="/users", backend="users", strip_fields=INTERNAL_FIELDS,
          tiers=frozenset({Tier.PRO, Tier.ENTERPRISE})),
    Route(name="invoices", prefix="/invoices", backend="invoices", conversion=Conversion.XML_TO_JSON,
          strip_fields=frozenset({"internal", "cost_cents"})),
    Route(name="reports", prefix="/reports", backend="orders", upstream_prefix="/orders",
          tiers=frozenset({Tier.ENTERPRISE})),
)  # fmt: skip
"""Routing by path (five backends), by header (`X-API-Version: 2` on /catalog), by tier (/users for pro
and enterprise, /reports for enterprise only), with a rewrite (/reports -> /orders) and a conversion."""

ROUTE_LIMITS = {"payments": Limit(rate=20, burst=10)}
"""Per client on that route, on top of the client's own limit."""
GLOBAL_LIMIT = Limit(rate=20_000, burst=20_000)
"""Everyone together: a ceiling that protects the backends, far above any rate this lab's load offers."""


@dataclass(frozen=True)
class DemoClient:
    name: str
    tier: Tier
    limit: Limit


DEMO_CLIENTS = (
    DemoClient("acme", Tier.PRO, Limit(rate=50, burst=20)),
    DemoClient("globex", Tier.FREE, Limit(rate=5, burst=5)),
    DemoClient("initech", Tier.ENTERPRISE, Limit(rate=500, burst=200)),
)
OAUTH_DEMO_CLIENT = DemoClient("umbrella-jobs", Tier.ENTERPRISE, Limit(rate=100, burst=50))


def derived_secret(stack_secret: str, purpose: str, name: str) -> str:
    digest = hmac.new(stack_secret.encode(), f"{purpose}:{name}".encode(), hashlib.sha256).hexdigest()
    return digest[:43]


def demo_key(stack_secret: str, name: str) -> str:
    return KEY_PREFIX + derived_secret(stack_secret, "api-key", name)
