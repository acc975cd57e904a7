"""Routes: which backend a request goes to, by path, method, header and the client's tier, and how the
gateway rewrites it on the way.

A route matches a path prefix (longest wins), a set of methods, optional header values (a route with
header conditions beats one without on the same prefix, e.g. `X-API-Version: 2` to a new backend), and
optionally only some client tiers. The answer says why nothing matched, so the gateway can tell 404 (no
such path), 405 (path, not that method) and 403 (not for this client's tier) apart.

Routes are data (the configuration store holds them as JSON and every node reloads them on a change);
this module knows nothing of HTTP servers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Tier(StrEnum):
    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class Conversion(StrEnum):
    NONE = "none"
    XML_TO_JSON = "xml-to-json"
    """A legacy backend answers XML; clients get JSON (katas.api_gateway.transform.xml_to_json)."""


class Route(BaseModel):
    """One routing rule, as stored in the configuration store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    prefix: str
    """Path prefix the route serves, `/orders` serves `/orders` and `/orders/...`, not `/orderstatus`."""
    backend: str
    """Backend service name (its address comes from the stack)."""
    upstream_prefix: str = ""
    """What `prefix` becomes towards the backend; empty keeps the path as it is."""
    methods: frozenset[str] = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
    headers: Mapping[str, str] = Field(default_factory=dict)
    """Header values the request must carry (names case-insensitive)."""
    tiers: frozenset[Tier] = frozenset()
    """Client tiers allowed; empty allows every tier."""
    timeout_s: float = 2.0
    add_request_headers: Mapping[str, str] = Field(default_factory=dict)
    add_response_headers: Mapping[str, str] = Field(default_factory=dict)
    strip_fields: frozenset[str] = frozenset()
    """JSON keys removed from the backend's answer at any depth (internal fields)."""
    conversion: Conversion = Conversion.NONE

    @field_validator("prefix", "upstream_prefix")
    @classmethod
    def _path(cls, value: str) -> str:
        if value and (not value.startswith("/") or (len(value) > 1 and value.endswith("/"))):
            raise ValueError(f"a path prefix starts with / and does not end with one: {value!r}")
        return value

    @field_validator("methods")
    @classmethod
    def _upper(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(m.upper() for m in value)

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0 < value <= 60:
            raise ValueError(f"timeout_s must be in (0, 60], got {value}")
        return value

    def serves(self, path: str) -> bool:
        return self.prefix == "/" or path == self.prefix or path.startswith(self.prefix + "/")

    def upstream_path(self, path: str) -> str:
        if not self.upstream_prefix:
            return path
        rest = path[len(self.prefix) :] if self.prefix != "/" else path
        return (self.upstream_prefix.rstrip("/") + rest) or "/"


class Refusal(StrEnum):
    NO_ROUTE = "no route for this path"
    METHOD = "method not allowed on this path"
    TIER = "not available for this client's tier"

    @property
    def status(self) -> int:
        return {Refusal.NO_ROUTE: 404, Refusal.METHOD: 405, Refusal.TIER: 403}[self]


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    upstream_path: str


class RouteTable:
    """Routes ordered by specificity: longer prefix first, then routes with header conditions."""

    def __init__(self, routes: Sequence[Route]) -> None:
        names = [r.name for r in routes]
        if len(names) != len(set(names)):
            raise ValueError(f"route names must be unique: {sorted(n for n in names if names.count(n) > 1)}")
        self.routes = sorted(routes, key=lambda r: (-len(r.prefix), -len(r.headers), r.name))

    def match(self, method: str, path: str, headers: Mapping[str, str], tier: Tier) -> RouteMatch | Refusal:
        lowered = {k.lower(): v for k, v in headers.items()}
        refusal = Refusal.NO_ROUTE
        for route in self.routes:
            if not route.serves(path):
                continue
            if any(lowered.get(name.lower()) != value for name, value in route.headers.items()):
                continue
            if method.upper() not in route.methods:
                refusal = Refusal.METHOD if refusal is Refusal.NO_ROUTE else refusal
                continue
            if route.tiers and tier not in route.tiers:
                refusal = Refusal.TIER
                continue
            return RouteMatch(route, route.upstream_path(path))
        return refusal
