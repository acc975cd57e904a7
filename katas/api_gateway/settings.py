"""Settings of the API gateway kata's services, from `GW_*` environment variables.

Endpoints of servers are not here: services read them through `katas.infra.settings.infra_settings()`.
"""

from __future__ import annotations

from functools import cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GW_"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    admin_token: SecretStr = Field(default=SecretStr(""), repr=False)
    """Bearer token of the admin API and the auth server's rotation (GW_ADMIN_TOKEN, a stack secret)."""
    demo_secret: SecretStr = Field(default=SecretStr(""), repr=False)
    """What the demo clients' API keys and OAuth secrets are derived from, so a restart seeds the same."""
    backends: str = ""
    """Backend name -> base URL, as `orders=http://...,payments=http://...`."""
    auth_url: str = ""
    """Base URL of the authorization server (token endpoint and JWKS)."""
    token_issuer: str = "katas-auth"  # noqa: S105 - a name, not a secret
    token_audience: str = "katas-gateway"  # noqa: S105 - a name, not a secret
    node_count: int = 3
    """Nodes in the tier: while the shared limiter is down each node enforces 1/node_count of a limit."""
    config_poll_s: float = 5.0
    """How often a node compares the store's version, in case a change notification was lost."""
    pool_per_backend: int = 50
    """Connections per backend and node (one shared pool of this size under `no-circuit-breaker`)."""
    limiter_timeout_s: float = 0.25
    """Bound on one limiter call: past it the node decides alone (fail-open)."""
    usage_topic: str = "gateway.usage"
    """Topic of the usage events every node produces and the aggregator consumes (partition key: client)."""
    usage_partitions: int = 3
    """Partitions of the usage topic, when a node or the aggregator creates it."""
    usage_buffer: int = 100_000
    """Usage events a node holds while the broker is slow or down; beyond it the oldest are dropped."""
    usage_url: str = ""
    """Base URL of the usage API; the developer portal reads it server-side with the admin token."""
    portal_secret: SecretStr = Field(default=SecretStr(""), repr=False)
    """Signs the portal's session cookies and CSRF tokens (GW_PORTAL_SECRET, a stack secret); when empty the
    portal makes a random one, and its sessions end with the process."""
    portal_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    """How long a portal sign-in lasts (the session row and the cookie expire together)."""
    portal_secure_cookie: bool = False
    """Mark the portal's cookies Secure: set it where the portal is served over HTTPS (not on loopback)."""

    def backend_urls(self) -> dict[str, str]:
        pairs = [part.split("=", 1) for part in self.backends.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"GW_BACKENDS must be name=url pairs, got {self.backends!r}")
        return {name.strip(): url.strip() for name, url in pairs}


@cache
def gateway_settings() -> GatewaySettings:
    return GatewaySettings()
