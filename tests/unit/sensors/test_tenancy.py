"""Who may see what, without servers: tokens, the registry of buildings, and the API's zone view."""

from __future__ import annotations

import pytest

from katas.sensors.fleet import Fleet
from katas.sensors.services.api import zones_of
from katas.sensors.tenancy import OPERATOR, Registry, Tokens, derive, redis_key_pattern

pytestmark = pytest.mark.unit


def test_tokens_name_their_tenant_and_nobody_else() -> None:
    tokens = Tokens.derive("s" * 32, ["acme", "globex"])
    assert tokens.tenant_of(tokens.token_of("acme")) == "acme"
    assert tokens.tenant_of(tokens.token_of(OPERATOR)) == OPERATOR
    assert tokens.tenant_of("guess") is None
    assert Tokens.derive("t" * 32, ["acme"]).token_of("acme") != tokens.token_of("acme")  # another secret
    assert derive("s" * 32, "redis:acme") != derive("s" * 32, "token:acme")


def test_the_registry_shows_a_building_to_its_owner_and_the_operator_only() -> None:
    registry = Registry.of(Fleet.build(seed=5, buildings=4, sensors_per_building=20))
    owner, *others = registry.tenants
    building = registry.buildings[owner][0]
    assert registry.owner(building) == owner
    assert registry.visible_to(owner, building)
    assert registry.visible_to(OPERATOR, building)
    assert not any(registry.visible_to(other, building) for other in others)
    assert not registry.visible_to(OPERATOR, "no-such-building")


def test_a_tenants_redis_keys_are_its_own_prefix() -> None:
    assert redis_key_pattern("acme") == "sensors:acme:*"
    assert redis_key_pattern(OPERATOR) == "sensors:*"


def test_zones_gather_the_types_of_each_zone_and_leave_floors_and_buildings_out() -> None:
    figures = {"mean": 1.0, "min": 1.0, "max": 1.0, "last": 1.0, "count": 1, "as_of": "t", "start": "s"}
    live = {
        "zone|f01|f01-z01|co2": figures,
        "zone|f01|f01-z01|temperature": figures,
        "zone|f02|f02-z01|co2": figures,
        "floor|f01||co2": figures,
        "building|||co2": figures,
    }
    listed = zones_of(live)
    assert [(z["floor"], z["zone"]) for z in listed] == [("f01", "f01-z01"), ("f02", "f02-z01")]
    assert set(listed[0]) == {"floor", "zone", "co2", "temperature"}
    assert "start" not in listed[0]["co2"]
