"""The gateway's configuration as every node holds it: routes, clients with their tier and limit, the
hashes of their API keys, per-route and global limits, and the version they were read at.

A node answers every request from one `GatewayConfig` held in memory and swaps in a new one when the
configuration store says something changed (katas.api_gateway.adapters.pg_config). Nothing on the
request path waits for a store: that is what keeps key checks out of the added latency (the
`auth-db-every-request` mistake puts the store back on it), and what lets nodes keep serving with the last
configuration they read while the store is down.

API keys are kept as SHA-256 digests, never as themselves: a copy of the store or of a node's memory does
not let anyone call the API. SHA-256 without a salt is enough here, unlike for passwords: keys are 32
random bytes, too many to guess or tabulate.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from katas.api_gateway.ratelimit import Limit
from katas.api_gateway.routing import Route, RouteTable, Tier

KEY_PREFIX = "gwk_"


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_label(api_key: str) -> str:
    """What may be shown of a key once it is issued (a portal lists keys by it)."""
    return api_key[: len(KEY_PREFIX) + 6] + "…"


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    tier: Tier
    limit: Limit


class KeyDirectory(Protocol):
    """Who is calling, by API key or by name (a client certificate's common name)."""

    async def client_for(self, api_key: str) -> Client | None: ...

    async def client_named(self, name: str) -> Client | None: ...


class KeyDirectoryUnavailableError(ConnectionError):
    """The key store cannot be reached and nothing usable is held: the node cannot tell who calls."""


@dataclass(frozen=True)
class GatewayConfig:
    version: int
    routes: RouteTable
    clients: Mapping[str, Client] = field(default_factory=dict)
    key_owners: Mapping[str, str] = field(default_factory=dict)
    """SHA-256 of an API key -> the name of the client it belongs to."""
    endpoint_limits: Mapping[str, Limit] = field(default_factory=dict)
    """Route name -> limit per client on that route."""
    global_limit: Limit | None = None

    @classmethod
    def of(
        cls,
        routes: Iterable[Route],
        clients: Iterable[Client] = (),
        keys: Mapping[str, str] | None = None,
        *,
        version: int = 0,
        endpoint_limits: Mapping[str, Limit] | None = None,
        global_limit: Limit | None = None,
    ) -> GatewayConfig:
        """A configuration from plain values; `keys` maps API keys (not digests) to client names."""
        return cls(
            version,
            RouteTable(list(routes)),
            {c.name: c for c in clients},
            {key_hash(key): owner for key, owner in (keys or {}).items()},
            dict(endpoint_limits or {}),
            global_limit,
        )

    def client_for_key(self, api_key: str) -> Client | None:
        owner = self.key_owners.get(key_hash(api_key))
        return self.clients.get(owner) if owner else None


class HeldKeys:
    """A `KeyDirectory` over the configuration a node holds: no I/O on the request path."""

    def __init__(self, holder: ConfigHolder) -> None:
        self.holder = holder

    async def client_for(self, api_key: str) -> Client | None:
        return self.holder.current.client_for_key(api_key)

    async def client_named(self, name: str) -> Client | None:
        return self.holder.current.clients.get(name)


class ConfigHolder:
    """The configuration a node serves with, replaced whole when a newer version arrives (an older one,
    from a slow reload racing a fast one, is ignored)."""

    def __init__(self, initial: GatewayConfig) -> None:
        self.current = initial

    def apply(self, config: GatewayConfig) -> bool:
        if config.version < self.current.version:
            return False
        self.current = config
        return True
