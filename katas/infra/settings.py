"""Endpoints of the infrastructure, read once from the environment.

Every service reads its endpoints from here and nowhere else, so the same code runs natively (where
`katas up` exports these variables for the servers it started) and under Docker Compose (where the compose
file sets them to the production-grade servers). Defaults are empty: a service that needs a server which
was not configured fails at start-up with the variable's name, not later with a connection error.
"""

from __future__ import annotations

from functools import cache

from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "KATAS_"


class InfraSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kafka_bootstrap: str = ""
    """host:port of the Kafka-protocol broker (tansu natively, Redpanda in compose)."""
    s3_endpoint: str = ""
    """http URL of the S3 API (s3rver natively, MinIO in compose)."""
    s3_access_key: str = "S3RVER"
    s3_secret_key: str = "S3RVER"  # noqa: S105 - s3rver's fixed local credentials
    s3_region: str = "us-east-1"
    redis_url: str = ""
    """redis:// URL of the primary; with Sentinels, prefer redis_sentinels."""
    redis_sentinels: str = ""
    """comma-separated host:port of the Sentinels."""
    redis_master_name: str = "katas"
    mqtt_brokers: str = ""
    """comma-separated host:port, one per broker (region)."""
    postgres_dsn: str = ""
    postgres_standby_dsn: str = ""
    chdb_path: str = ""
    """data directory of the chDB store (native mode)."""
    clickhouse_url: str = ""
    """http URL of a ClickHouse server (compose mode); used instead of chdb_path when set."""
    etcd_endpoints: str = ""
    """comma-separated http URLs of etcd, for katas that need watches."""
    service_bind_host: str = "127.0.0.1"
    """where a kata service listens: loopback natively; 0.0.0.0 inside a container, so peers reach it."""
    kata_run_dir: str = ""
    """the kata's run directory, for files a service must share with the launcher."""

    def require(self, field: str) -> str:
        value = getattr(self, field)
        if not value:
            raise RuntimeError(f"{ENV_PREFIX}{field.upper()} is not set: start the stack with `katas up`")
        return str(value)

    @staticmethod
    def split(value: str) -> list[str]:
        return [part.strip() for part in value.split(",") if part.strip()]


@cache
def infra_settings() -> InfraSettings:
    return InfraSettings()


ENDPOINT_VARIABLES: frozenset[str] = frozenset(
    f"{ENV_PREFIX}{name.upper()}" for name in InfraSettings.model_fields
)
"""Every variable a service may read; the compose validation test checks each is defined."""
