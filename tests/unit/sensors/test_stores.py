"""Where each tenant's rows go, without servers: a store per tenant, or refused when stores are short;
and the bridge's refusal of a reading from a building its tenant does not own."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from katas.sensors.fleet import Fleet
from katas.sensors.services.bridge import UNKNOWN_BUILDING, route
from katas.sensors.stores import POOLED_DATABASE, TenantWarehouses, TooFewStoresError, tenant_database
from katas.sensors.tenancy import Registry
from katas.sensors.topics import DEADLETTER, READINGS

pytestmark = pytest.mark.unit

URLS = [f"http://127.0.0.1:{port}" for port in (9101, 9102, 9103)]


def test_every_tenant_gets_a_store_and_a_database_of_its_own() -> None:
    stores = TenantWarehouses.assign(["acme", "globex-holdings"], URLS)
    assert stores.urls == {"acme": URLS[0], "globex-holdings": URLS[1]}
    assert stores.database("globex-holdings") == "sensors_globex_holdings"
    assert stores.table("acme", "windows") == "sensors_acme.windows"
    assert stores.of("acme") is not stores.of("globex-holdings")
    with pytest.raises(KeyError):
        stores.of("initech")  # nobody registered it: no store to fall back on


def test_fewer_stores_than_tenants_is_refused_rather_than_shared() -> None:
    with pytest.raises(TooFewStoresError, match="4 tenants but the stack has 3"):
        TenantWarehouses.assign(["a", "b", "c", "d"], URLS)
    with pytest.raises(TooFewStoresError):
        TenantWarehouses.assign(["a"], [])


def test_the_pooled_mistake_puts_every_tenant_in_one_database() -> None:
    stores = TenantWarehouses.assign(["a", "b", "c", "d"], URLS, pooled=True)
    assert set(stores.urls.values()) == {URLS[0]}
    assert {stores.database(t) for t in stores.tenants} == {POOLED_DATABASE}


def test_tenant_databases_are_identifiers_whatever_the_tenant_id() -> None:
    for tenant in ("acme", "a-b", "x;DROP TABLE y", "ünï"):
        name = tenant_database(tenant)
        assert name.startswith("sensors_")
        assert all(c.isalnum() or c == "_" for c in name)


def test_a_reading_from_a_building_its_tenant_does_not_own_is_a_dead_letter() -> None:
    fleet = Fleet.build(seed=5, buildings=4, sensors_per_building=20, tenants=2)
    registry = Registry.of(fleet)
    start = datetime(2026, 11, 2, 10, tzinfo=UTC)
    topic, payload = next(fleet.readings(start, start + timedelta(seconds=10)))
    assert route(topic, payload, 0.0, registry).topic == READINGS

    owner = topic.split("/")[1]
    other = next(t for t in registry.tenants if t != owner)
    forged = topic.replace(f"sensors/{owner}/", f"sensors/{other}/", 1)  # another tenant's name on it
    letter = route(forged, payload, 0.0, registry)
    assert letter.topic == DEADLETTER
    assert json.loads(letter.value)["reason"] == UNKNOWN_BUILDING
    unknown = topic.replace(f"/{topic.split('/')[2]}/", "/nowhere-999/", 1)
    assert json.loads(route(unknown, payload, 0.0, registry).value)["reason"] == UNKNOWN_BUILDING
