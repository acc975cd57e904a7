"""The sensors load generator against the real stack: two buildings publish through WAN proxies of their
own to their region's broker; every reading the broker acknowledged reaches `sensors.readings`, every
acknowledged malformed message reaches `sensors.deadletter` with its reason, and no PUBACK comes back
sooner than the building's injected round trip.

Uses buildings mex-001 and syd-008 of the test fleet (both in the "us" region, 66 and 193 ms away)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from katas.infra.stack import Stack
from katas.sensors.load import drive, reading_id
from katas.sensors.topics import DEADLETTER
from tests.conftest import wait_for
from tests.integration.sensors.conftest import logged_readings, read_log, stack_fleet

pytestmark = pytest.mark.integration

BUILDINGS = ("mex-001", "syd-008")
RATE = 4.0
"""Readings per second: the 40 sensors of the two buildings (20 each), each every 10 s."""
SECONDS = 10.0
PROXY_SLACK_MS = 1
"""The proxy may release a chunk up to 0.5 ms before its time (its timer resolution), each way."""


def test_acknowledged_readings_reach_the_log_through_each_buildings_wan(stack: Stack) -> None:
    endpoints = stack.endpoints()
    fleet = stack_fleet()
    us_before = stack.proxies["mqtt-us"].stats().bytes_to_server

    run = asyncio.run(
        drive(endpoints, SECONDS, fleet=fleet, rate=RATE, buildings=BUILDINGS, malformed=0.2, seed=5)
    )

    assert run.published == run.result.intended == RATE * SECONDS, "every sensor once in 10 s"
    assert run.failed == 0
    assert run.result.timed_out == 0
    assert not run.result.errors
    assert set(run.regions) == {"us"}, "both buildings are in the us region"
    assert stack.proxies["mqtt-us"].stats().bytes_to_server - us_before > 40 * 150, "sent to mqtt-us"
    assert run.acknowledged, "seed 5 draws readings"
    assert run.acknowledged_letters, "and malformed messages"
    assert len(run.acknowledged) + len(run.acknowledged_letters) == run.acknowledged_count

    for building in BUILDINGS:
        _, rtt_ms, tally = run.buildings[building]
        assert rtt_ms == fleet.building(building).latency_ms
        assert 20 <= rtt_ms <= 200
        assert tally.acknowledged == RATE * SECONDS / len(BUILDINGS)
        fastest_ms = tally.latency.get_min_value() / 1000
        assert fastest_ms >= rtt_ms - PROXY_SLACK_MS, f"{building}: a PUBACK in {fastest_ms} ms"

    first, last = min(ts for _, ts in run.acknowledged), max(ts for _, ts in run.acknowledged)

    def stored() -> set[tuple[str, int]]:
        """The log's readings of these buildings during the run."""
        return {
            rid
            for reading in logged_readings(endpoints["kafka"])
            if reading.place.building in BUILDINGS and first <= (rid := reading_id(reading))[1] <= last
        }

    on_log = wait_for(lambda: run.acknowledged <= (ids := stored()) and ids, 60, "the acknowledged readings")
    assert on_log == run.acknowledged, "nothing on the log of these buildings that was not acknowledged"

    def refused() -> dict[tuple[str, bytes], str]:
        letters = [json.loads(v) for v in read_log(endpoints["kafka"], DEADLETTER)]
        return {
            (letter["mqtt_topic"], base64.b64decode(letter["payload_b64"])): letter["reason"]
            for letter in letters
        }

    wanted = {(letter.topic, letter.payload) for letter in run.acknowledged_letters}
    letters = wait_for(lambda: wanted <= (found := refused()).keys() and found, 60, "the dead letters")
    for letter in run.acknowledged_letters:
        assert letters[(letter.topic, letter.payload)] == letter.reason
