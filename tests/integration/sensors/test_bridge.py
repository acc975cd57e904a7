"""The sensors' ingest path on real servers: two bridged Mosquitto regions -> the bridge -> the log.

Readings published in either region reach `sensors.readings` once the bridge has them; malformed messages
reach `sensors.deadletter` with their reason and bytes; readings published while the bridge is down wait
in its persistent session and arrive after it is back. Nothing the sensors got acknowledged is missing.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from katas.infra.stack import Stack
from katas.sensors.fleet import Fleet, malformed_messages
from katas.sensors.readings import Reading
from katas.sensors.topics import DEADLETTER
from tests.conftest import wait_for
from tests.integration.sensors.conftest import (
    building_readings,
    logged_readings,
    publish,
    read_log,
    stack_fleet,
)

pytestmark = pytest.mark.integration

PAST = datetime(2025, 6, 1, 12, tzinfo=UTC)
"""When this module's readings are taken: the log keeps readings of any age, and tests that compare a
building's readings with the log (the alerter's replay) publish near now."""


def readings_between(
    fleet: Fleet, buildings: tuple[str, ...], start: datetime, seconds: float
) -> list[tuple[str, bytes]]:
    return building_readings(fleet, buildings, start, start + timedelta(seconds=seconds))


def identity(reading: Reading) -> tuple[str, datetime]:
    return reading.place.topic, reading.ts


def test_readings_from_both_regions_reach_the_log_and_bad_ones_the_dead_letters(stack: Stack) -> None:
    endpoints = stack.endpoints()
    eu, us = endpoints["mqtt"]
    fleet = stack_fleet()
    start = PAST  # the buildings are other tests' too: a time none of them publishes at
    by_region: dict[str, list[tuple[str, bytes]]] = {"eu": [], "us": []}
    for topic, payload in readings_between(fleet, ("waw-002", "nyc-012"), start, 30):
        building = fleet.building(topic.split("/")[2])
        by_region[building.region].append((topic, payload))
    bad = malformed_messages(datetime.now(UTC))
    publish(eu, by_region["eu"] + [(m.topic, m.payload) for m in bad])
    publish(us, by_region["us"])

    sent = {identity(Reading.from_mqtt(t, p)) for t, p in by_region["eu"] + by_region["us"]}
    stored = wait_for(
        lambda: sent <= (ids := {identity(r) for r in logged_readings(endpoints["kafka"])}) and ids,
        60,
        "every reading on the log",
    )
    assert sent <= stored

    # the bridge subscribes to sensors/+/+/+/+/+, so a message on another topic never reaches it
    delivered = [m for m in bad if m.topic.startswith("sensors/") and m.topic.count("/") == 5]
    letters = wait_for(
        lambda: (
            len(found := [json.loads(v) for v in read_log(endpoints["kafka"], DEADLETTER)]) >= len(delivered)
            and found
        ),
        60,
        "the dead letters",
    )
    refused = {
        (letter["mqtt_topic"], base64.b64decode(letter["payload_b64"])): letter["reason"]
        for letter in letters
    }
    for message in delivered:
        assert refused.get((message.topic, message.payload)) == message.reason, message.what


def test_readings_sent_while_the_bridge_is_down_arrive_after_it_is_back(stack: Stack) -> None:
    endpoints: dict[str, Any] = stack.endpoints()
    start = PAST + timedelta(hours=1)
    messages = readings_between(stack_fleet(), ("tyo-003",), start, 60)

    stack["bridge"].kill()  # a crash: what it received and did not acknowledge, the broker keeps
    publish(endpoints["mqtt"][0], messages)  # acknowledged by the broker, kept for the bridge's session
    stack["bridge"].start()

    expected = {identity(Reading.from_mqtt(t, p)) for t, p in messages}
    wait_for(
        lambda: expected <= {identity(r) for r in logged_readings(endpoints["kafka"])},
        60,
        "the readings published while the bridge was down, on the log",
    )
