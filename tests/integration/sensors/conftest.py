"""The sensors kata's stack for the integration tests (one for the whole session), and how tests talk
to it.

The stack serves a small fleet (`TEST_FLEET`: 12 buildings of 20 sensors, 6 tenants) instead of the
card's 50 x 1,000, so a test builds the same fleet in a millisecond and publishes to buildings the
stack's registry knows. Tests share the stack, so each uses buildings no other test uses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from katas.catalog import get_card
from katas.infra import kafka
from katas.infra.stack import Stack
from katas.sensors.fleet import Fleet
from katas.sensors.readings import InvalidReadingError, Reading
from katas.sensors.settings import SensorsSettings
from katas.sensors.stores import TenantWarehouses
from katas.sensors.tenancy import Registry
from katas.sensors.topics import READINGS
from tests.conftest import reachable_run_dir

TEST_FLEET = SensorsSettings(fleet_seed=1, fleet_buildings=12, fleet_sensors_per_building=20, fleet_tenants=6)
"""The fleet the tests' stack serves."""


def stack_fleet() -> Fleet:
    """The test stack's fleet: tenants, buildings and sensors exactly as its services know them."""
    return TEST_FLEET.fleet()


def building_readings(
    fleet: Fleet, buildings: str | tuple[str, ...], start: datetime, end: datetime
) -> list[tuple[str, bytes]]:
    """The fleet's readings in [start, end) of some buildings only (topic segment 2 is the building)."""
    wanted = {buildings} if isinstance(buildings, str) else set(buildings)
    return [(t, p) for t, p in fleet.readings(start, end) if t.split("/", 3)[2] in wanted]


def fleet_env(settings: SensorsSettings) -> dict[str, str]:
    """The SENSORS_FLEET_* variables that make a stack's services serve `settings`' fleet."""
    return {
        "SENSORS_FLEET_SEED": str(settings.fleet_seed),
        "SENSORS_FLEET_BUILDINGS": str(settings.fleet_buildings),
        "SENSORS_FLEET_SENSORS_PER_BUILDING": str(settings.fleet_sensors_per_building),
        "SENSORS_FLEET_TENANTS": str(settings.fleet_tenants),
    }


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The kata's stack as `katas up sensors` starts it, serving `TEST_FLEET`, in a run folder of its own."""
    card = get_card("sensors")
    spec = card.stack.model_copy(update={"env": {**card.stack.env, **fleet_env(TEST_FLEET)}})
    with reachable_run_dir("katas-sensors-") as run, Stack(card.id, spec, run / "sensors") as s:
        yield s


T = TypeVar("T")


def in_stores(stack: Stack, query: Callable[[TenantWarehouses], Coroutine[Any, Any, T]]) -> T:
    """`query(stores)` run to its end with the stack's tenant stores, which are closed afterwards."""

    async def go() -> T:
        stores = warehouses(stack)
        try:
            return await query(stores)
        finally:
            await stores.close()

    return asyncio.run(go())


def warehouses(stack: Stack) -> TenantWarehouses:
    """The stack's ClickHouse store of every tenant (close it after use)."""
    urls = [c.endpoint for name, c in stack.components.items() if name.startswith("chdb-")]
    return TenantWarehouses.assign(list(Registry.of(stack_fleet()).tenants), urls)


def publish(address: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and return once the broker acknowledged every message (what a sensor relies on)."""
    host, port = address.rsplit(":", 1)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sensors-{time.monotonic_ns()}")
    client.max_inflight_messages_set(200)
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def read_log(bootstrap: str, topic: str) -> list[bytes]:
    """Every record of `topic`, up to its end now."""

    async def go() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = await kafka.partitions_of(consumer, topic)
            return [
                r.value or b""
                async for records in kafka.read_from_start(consumer, partitions)
                for r in records
            ]
        finally:
            await consumer.stop()

    return asyncio.run(go())


def logged_readings(bootstrap: str) -> list[Reading]:
    """The readings on the readings topic, up to its end now. Records that are not readings are skipped:
    the alerter's test puts some there on purpose, and every consumer must survive them."""
    readings = []
    for value in read_log(bootstrap, READINGS):
        try:
            readings.append(Reading.from_json(value))
        except (InvalidReadingError, ValueError):
            continue
    return readings
