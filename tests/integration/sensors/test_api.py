"""The HVAC API on the real stack, from the tenant's and from the attacker's side: a tenant reads its
buildings' live zone aggregates; another tenant's building is a 404 through the API, and Redis itself
refuses the other tenant's keys to that tenant's storage user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from katas.infra.stack import Stack
from katas.sensors.storage import live_key
from katas.sensors.tenancy import derive, redis_user
from tests.conftest import wait_for
from tests.integration.sensors.conftest import building_readings, publish, stack_fleet

pytestmark = pytest.mark.integration


def zones(endpoints: dict[str, Any], building: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{endpoints['api']}/buildings/{building}/zones", headers=headers, timeout=10)


def test_a_tenant_reads_its_buildings_and_nobody_elses(stack: Stack) -> None:
    endpoints = stack.endpoints()
    building = "nyc-012"
    owner = next(t for t in endpoints["tenants"] if building in t["buildings"])
    other = next(t for t in endpoints["tenants"] if t is not owner)
    start = datetime.now(UTC) - timedelta(seconds=20)
    messages = building_readings(stack_fleet(), building, start, start + timedelta(seconds=10))
    assert messages, f"the stack's fleet has no readings for {building}"
    publish(endpoints["mqtt"][0], messages)

    answer = wait_for(
        lambda: (r := zones(endpoints, building, owner["token"])).status_code == 200 and r.json() and r,
        60,
        "the building's live zones",
    )
    listed = answer.json()
    assert {(z["floor"], z["zone"]) for z in listed} == {
        (t.split("/")[3], t.split("/")[4]) for t, _ in messages
    }
    co2 = next(z["co2"] for z in listed if "co2" in z)
    assert set(co2) == {"mean", "min", "max", "last", "count", "as_of"}

    assert zones(endpoints, building, endpoints["operator_token"]).status_code == 200
    assert zones(endpoints, building, other["token"]).status_code == 404
    assert zones(endpoints, "no-such-building", owner["token"]).status_code == 404
    assert zones(endpoints, building, None).status_code == 401
    assert zones(endpoints, building, "not-a-token").status_code == 401


def test_redis_refuses_another_tenants_keys_to_a_tenants_user(stack: Stack) -> None:
    endpoints = stack.endpoints()
    owner, other = endpoints["tenants"][0], endpoints["tenants"][1]
    secret = stack.secrets()["SENSORS_TENANCY_SECRET"]
    host, port = endpoints["redis"].rsplit(":", 1)
    as_other = redis.Redis(
        host=host,
        port=int(port),
        username=redis_user(other["tenant"]),
        password=derive(secret, f"redis:{other['tenant']}"),
    )
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_other.hgetall(live_key(owner["tenant"], owner["buildings"][0]))
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_other.set(live_key(other["tenant"], other["buildings"][0]), "x")  # read-only, even its own keys
    assert isinstance(as_other.hgetall(live_key(other["tenant"], other["buildings"][0])), dict)
