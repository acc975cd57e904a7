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

    def backend_urls(self) -> dict[str, str]:
        pairs = [part.split("=", 1) for part in self.backends.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"GW_BACKENDS must be name=url pairs, got {self.backends!r}")
        return {name.strip(): url.strip() for name, url in pairs}


@cache
def gateway_settings() -> GatewaySettings:
    return GatewaySettings()
