"""Settings of the SIEM kata's services, from `SIEM_*` environment variables.

Endpoints are not here: services read them through `katas.infra.settings.infra_settings()`.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from katas.siem.pseudonymize import MIN_KEY_BYTES, Pseudonymizer

ENV_PREFIX = "SIEM_"


class SiemSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    pseudonym_key: SecretStr = Field(repr=False)
    """The HMAC key for pseudonyms (SIEM_PSEUDONYM_KEY, at least 16 bytes). Required: a service without
    it refuses to start. A secret: it is never logged, and never written next to the data."""
    pseudonymize_ips: bool = True
    """Whether source/destination/related IPs are pseudonymized too (user names and e-mails always are)."""

    # Ingest (katas.siem.services.ingest)
    syslog_udp_port: int = 0
    """UDP syslog port; 0 takes a free one (the service publishes the port it got in endpoints.json)."""
    syslog_tcp_port: int = 0
    """TCP syslog port; 0 takes a free one."""
    max_batch_bytes: int = 8 * 1024 * 1024
    """Largest HTTP batch accepted; a bigger one is refused with 413."""
    max_in_flight: int = 20_000
    """Events sent to the broker and not yet acknowledged, above which ingest pushes back."""
    udp_receive_buffer_bytes: int = 8 * 1024 * 1024
    """Receive buffer of the UDP syslog socket, for bursts (beyond net.core.rmem_max where root)."""

    # Store (katas.siem.services.store)
    cold_bucket: str = "siem-cold"
    """Bucket of the cold tier (Parquet, partitioned by date and source)."""
    write_batch_max: int = 5000
    """Events per INSERT into the hot store, at most."""
    hot_retention_s: float = 15 * 60
    """Events older than this move from the hot store to Parquet (production: 90 days; the lab: minutes)."""
    lifecycle_interval_s: float = 60
    """How often the lifecycle looks for events to move."""
    hot_ttl_s: float = 24 * 3600
    """Hot rows older than this are dropped by the store itself, a safety net behind the lifecycle."""

    # Correlation and alerts (katas.siem.services.correlator, alerter)
    escalate_after_s: float = 120
    """An alert still unacknowledged this long after it was raised is escalated (and again each time)."""
    webhook_url: str = ""
    """Where alerts are delivered (the stack points it at its webhook receiver)."""

    @field_validator("pseudonym_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"SIEM_PSEUDONYM_KEY must be at least {MIN_KEY_BYTES} bytes")
        return value

    def pseudonymizer(self) -> Pseudonymizer:
        return Pseudonymizer(self.pseudonym_key.get_secret_value().encode(), self.pseudonymize_ips)
