"""Who may see what: tenants, their buildings, their API tokens and their storage credentials.

Each building owner (tenant) sees only their buildings; the platform operator sees all. The API checks a
token, but the stores enforce it too: every tenant has a Redis user of its own whose ACL allows reading
only the tenant's keys (`sensors:{tenant}:*`), and the API reads a tenant's data through that user. A
query that forgets the tenant (a bug) is refused by Redis (NOPERM) instead of returning another tenant's
rows. Tokens and passwords are derived from one stack secret with HMAC, so every service that holds the
secret derives the same ones and none has to be stored.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from katas.sensors.fleet import Fleet

OPERATOR: Final = "operator"
"""The platform operator: sees every tenant's buildings."""
KEY_PREFIX: Final = "sensors"


def derive(secret: str, purpose: str) -> str:
    """A token or password for `purpose`, from the stack's secret: stable, unguessable without it."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()[:40]


def redis_user(tenant: str) -> str:
    return f"{KEY_PREFIX}-{tenant}"


def redis_key_pattern(tenant: str) -> str:
    """The keys (and pub/sub channels) a tenant's Redis user may read; the operator's read every tenant."""
    return f"{KEY_PREFIX}:*" if tenant == OPERATOR else f"{KEY_PREFIX}:{tenant}:*"


READ_COMMANDS: Final = ("+hgetall", "+hget", "+ping", "+subscribe", "+unsubscribe")
"""All a tenant's Redis user may run: reads of the live view, and its updates."""


@dataclass(frozen=True)
class Registry:
    """Tenants and the buildings each owns; the one place the API learns who owns what."""

    buildings: Mapping[str, tuple[str, ...]]
    """tenant -> its buildings"""

    @classmethod
    def of(cls, fleet: Fleet) -> Registry:
        return cls({tenant.id: tuple(tenant.buildings) for tenant in fleet.tenants})

    @property
    def tenants(self) -> Iterable[str]:
        return self.buildings.keys()

    def owner(self, building: str) -> str | None:
        return next((t for t, owned in self.buildings.items() if building in owned), None)

    def visible_to(self, tenant: str, building: str) -> bool:
        owner = self.owner(building)
        return owner is not None and tenant in (owner, OPERATOR)


@dataclass(frozen=True)
class Tokens:
    """API bearer tokens of every tenant and the operator, derived from the stack's secret."""

    by_token: Mapping[str, str]

    @classmethod
    def derive(cls, secret: str, tenants: Iterable[str]) -> Tokens:
        return cls({derive(secret, f"token:{t}"): t for t in (*tenants, OPERATOR)})

    def tenant_of(self, token: str) -> str | None:
        for known, tenant in self.by_token.items():
            if hmac.compare_digest(known, token):
                return tenant
        return None

    def token_of(self, tenant: str) -> str:
        return next(token for token, t in self.by_token.items() if t == tenant)
