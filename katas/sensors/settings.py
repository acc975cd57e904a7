"""Settings of the sensors kata's services, from `SENSORS_*` environment variables.

Endpoints are not here: services read them through `katas.infra.settings.infra_settings()`.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from katas.infra.settings import infra_settings
from katas.sensors.fleet import Fleet
from katas.sensors.stores import TenantWarehouses
from katas.sensors.tenancy import Registry

ENV_PREFIX = "SENSORS_"


class SensorsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Bridge (katas.sensors.services.bridge)
    bridge_client_id: str = "sensors-bridge"
    """The bridge's MQTT client id. Fixed, because the broker keeps a persistent session (subscription and
    queued QoS 1 messages) under it while the bridge is down: a new id would start a new, empty session."""
    mqtt_keepalive_s: int = 15
    """MQTT keep-alive: how soon the broker notices a bridge that died without disconnecting."""

    # Alerter (katas.sensors.services.alerter)
    webhook_url: str = ""
    """Where alerts are delivered (the stack points it at its webhook receiver)."""

    # The fleet the stack serves (katas.sensors.fleet): the API's registry of tenants and buildings, and
    # the load generator's buildings, come from the same seed.
    fleet_seed: int = 1
    fleet_buildings: int = 50
    fleet_sensors_per_building: int = 1000
    fleet_tenants: int = 6
    """Property companies owning the buildings; the card starts a ClickHouse store for each."""

    # API (katas.sensors.services.api)
    tenancy_secret: SecretStr = Field(default=SecretStr(""), repr=False)
    """The stack secret the tenants' API tokens and Redis passwords are derived from
    (SENSORS_TENANCY_SECRET); the API refuses to start without it."""

    def fleet(self) -> Fleet:
        return Fleet.build(
            self.fleet_seed, self.fleet_buildings, self.fleet_sensors_per_building, self.fleet_tenants
        )

    def registry(self) -> Registry:
        return Registry.of(self.fleet())

    def warehouses(self, *, pooled: bool = False) -> TenantWarehouses:
        """Every tenant's ClickHouse store: tenant i of the registry gets store i of KATAS_CLICKHOUSE_URL."""
        urls = [u for u in infra_settings().require("clickhouse_url").split(",") if u]
        return TenantWarehouses.assign(list(self.registry().tenants), urls, pooled=pooled)
