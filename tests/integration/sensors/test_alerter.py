"""The alerter on real servers: readings over MQTT -> bridge -> log -> alerter -> webhook receiver.

A CO2 breach of two minutes pages once when raised and once when cleared, though its readings arrive
twice; a restarted alerter keeps a pending breach and an open episode (its state is in Redis), so it
neither forgets the one nor raises the other again; retroactive rules run over the log without touching
the webhook or the live state; bad replay requests get 400 with the reason; a record on the log that is
not a reading is counted and skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis import Redis

from katas.infra.stack import Stack
from katas.sensors.fleet import Fleet, Sensor
from katas.sensors.readings import Reading, format_timestamp
from katas.sensors.rules import load_rules, replay
from katas.sensors.services.alerter import GROUP, STATE_KEY
from katas.sensors.topics import READINGS, TOPIC_PARTITIONS
from tests.conftest import service_metric, wait_for, webhook_alerts
from tests.integration.sensors.conftest import building_readings, publish, read_log, stack_fleet

pytestmark = pytest.mark.integration

BREACH_PPM = 1500.0
NORMAL_PPM = 600.0
"""Well under the clear level of co2-high (1,000 ppm - 100 ppm hysteresis) and the strict rule's 800."""
STRICT_RULE = {
    "id": "co2-strict",
    "type": "co2",
    "condition": "above",
    "threshold": 800,
    "for_s": 30,
    "severity": "critical",
}


# ----------------------------------------------------------------------------------------------- helpers


def alerts_for(
    endpoints: dict[str, Any], sensor: Sensor, kind: str, rule: str = "co2-high"
) -> list[dict[str, Any]]:
    place = sensor.place
    return [
        a
        for a in webhook_alerts(endpoints, "sensors")
        if (a["kind"], a["rule"], a["tenant"], a["building"], a["zone"])
        == (kind, rule, place.tenant, place.building, place.zone)
    ]


def co2_sensor(fleet: Fleet, building: str, zone: str) -> Sensor:
    (sensor,) = [s for s in fleet.sensors_of(building) if s.place.zone == zone and s.type == "co2"]
    return sensor


def between(fleet: Fleet, building: str, start: datetime, end: datetime) -> list[tuple[str, bytes]]:
    return building_readings(fleet, building, start, end)


def readings_of(messages: list[tuple[str, bytes]], sensor: Sensor) -> list[Reading]:
    return [Reading.from_mqtt(t, p) for t, p in messages if t == sensor.topic]


def first_breach(messages: list[tuple[str, bytes]], sensor: Sensor) -> datetime:
    return next(r.ts for r in readings_of(messages, sensor) if r.value == BREACH_PPM)


def engine_state(endpoints: dict[str, Any]) -> dict[str, Any] | None:
    raw = Redis.from_url(f"redis://{endpoints['redis']}").get(STATE_KEY)
    return None if raw is None else dict(json.loads(raw))


def state_of(endpoints: dict[str, Any], sensor: Sensor, rule: str = "co2-high") -> dict[str, Any] | None:
    """The stored engine state of one rule and sensor, if the alerter holds any."""
    snapshot = engine_state(endpoints) or {"states": []}
    place = sensor.place
    wanted = [place.tenant, place.building, place.floor, place.zone, place.sensor_id]
    for state in snapshot["states"]:
        if state["rule"] == rule and state["place"] == wanted:
            return dict(state)
    return None


def exact(ts: datetime) -> str:
    """How the snapshot writes a timestamp (rules._exact)."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def committed_up_to_the_end(bootstrap: str) -> bool:
    """Whether the alerter's group has committed every record of the readings topic. Read by a consumer
    of the group that only assigns partitions: it fetches the group's offsets without joining it. The log
    ends are the high watermarks of a fetch: tansu's ListOffsets answer falls short of them, and tansu's
    answer to the admin client's offset listing does not decode in aiokafka."""

    async def go() -> bool:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(READINGS, p) for p in range(TOPIC_PARTITIONS[READINGS])]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + 10
            while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=300)
            ends = {tp: consumer.highwater(tp) for tp in tps}
            committed = {tp: await consumer.committed(tp) for tp in tps}
        finally:
            await consumer.stop()
        return all(end is not None and (committed[tp] or 0) >= end for tp, end in ends.items())

    return asyncio.run(go())


def on_log(bootstrap: str, tenant: str, building: str) -> int:
    """How many records of the readings topic are a building's (its readings, repeats included)."""
    marker = f'"tenant":"{tenant}","building":"{building}"'.encode()  # Reading.to_json's compact form
    return sum(marker in value for value in read_log(bootstrap, READINGS))


def produce(bootstrap: str, values: list[bytes]) -> None:
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait(READINGS, value, key=b"garbage")
        finally:
            await producer.stop()

    asyncio.run(go())


# ------------------------------------------------------------------------------------ the first episode
@dataclass(frozen=True)
class Episode:
    sensor: Sensor
    start: datetime
    end: datetime
    messages: list[tuple[str, bytes]]
    """Every reading of the building in [start, end), once (some were published twice)."""
    breach_started: datetime
    """The timestamp of the first breaching CO2 reading."""


@pytest.fixture(scope="module")
def episode(stack: Stack) -> Episode:
    """One zone's CO2 at 1,500 ppm for 120 s, then back to 600 ppm, ending about now; the breaching
    readings are published three times (with the breach, again with it, again after the raise)."""
    endpoints = stack.endpoints()
    fleet = stack_fleet()
    building = fleet.building("waw-002")
    sensor = co2_sensor(fleet, building.id, building.zones[0])
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(seconds=200)
    breach_from, breach_to, end = start + timedelta(seconds=20), start + timedelta(seconds=140), now
    fleet.inject(building.id, sensor.place.zone, "co2", NORMAL_PPM, start, breach_from)
    fleet.inject(building.id, sensor.place.zone, "co2", BREACH_PPM, breach_from, breach_to)
    fleet.inject(building.id, sensor.place.zone, "co2", NORMAL_PPM, breach_to, end)
    during = between(fleet, building.id, start, breach_to)
    after = between(fleet, building.id, breach_to, end)
    breaching = [(t, p) for t, p in during if t == sensor.topic and Reading.from_mqtt(t, p).value > 1000]
    assert len(breaching) == 12  # one CO2 sensor per zone, every 10 s for 120 s

    publish(endpoints["mqtt"][0], during + breaching)
    wait_for(lambda: alerts_for(endpoints, sensor, "raised"), 120, "the raised alert")
    publish(endpoints["mqtt"][0], breaching + after)  # a redelivery after the page went out
    wait_for(lambda: alerts_for(endpoints, sensor, "cleared"), 120, "the cleared alert")

    messages = during + after
    wait_for(  # every reading of the episode is on the log (the replay test reads it back)
        lambda: (
            on_log(endpoints["kafka"], building.tenant, building.id) >= len(messages) + 2 * len(breaching)
        ),
        60,
        "every reading of the episode on the log",
    )
    time.sleep(3)  # a duplicate page would be on its way by now
    return Episode(sensor, start, end, messages, first_breach(during, sensor))


# ------------------------------------------------------------------------------------------------- tests
def test_a_breach_pages_once_when_raised_and_once_when_cleared(stack: Stack, episode: Episode) -> None:
    endpoints = stack.endpoints()
    raised = alerts_for(endpoints, episode.sensor, "raised")
    cleared = alerts_for(endpoints, episode.sensor, "cleared")
    assert len(raised) == 1, raised  # the breaching readings arrived three times
    assert len(cleared) == 1, cleared
    (up,), (down,) = raised, cleared
    place = episode.sensor.place
    assert (up["tenant"], up["floor"], up["sensor_id"]) == (place.tenant, place.floor, place.sensor_id)
    assert (up["type"], up["unit"], up["severity"]) == ("co2", "ppm", "warning")
    assert up["started_at"] == format_timestamp(episode.breach_started)
    assert up["value"] == BREACH_PPM
    raised_at = datetime.fromisoformat(up["ts"].replace("Z", "+00:00"))
    assert timedelta(seconds=60) <= raised_at - episode.breach_started < timedelta(seconds=70)
    assert down["fingerprint"] == up["fingerprint"]
    assert down["value"] == NORMAL_PPM
    assert down["started_at"] == up["started_at"]

    alerter = endpoints["alerter"]
    assert service_metric(alerter, "alerter_detection_latency_seconds_count") >= 1
    assert service_metric(alerter, "alerter_detection_latency_seconds_sum") > 0
    # The episode is over: the stored state keeps the sensor only as recently ended.
    state = state_of(endpoints, episode.sensor)
    assert state is not None
    assert state["phase"] == "cleared"


def test_a_restarted_alerter_keeps_pending_and_open_episodes(stack: Stack) -> None:
    """Zone A is pending (breaching 30 s of the 60 s) and zone B raised when the alerter is killed. After
    the restart zone A's breach goes on for 55 s more, zone B's for 75 s more: without the stored state
    zone A would never raise (55 s < 60 s) and zone B would raise a second time (75 s >= 60 s)."""
    endpoints = stack.endpoints()
    fleet = stack_fleet()
    building = fleet.building("tyo-003")
    pending = co2_sensor(fleet, building.id, building.zones[0])
    open_ = co2_sensor(fleet, building.id, building.zones[1])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=170)

    def at(seconds: int) -> datetime:
        return start + timedelta(seconds=seconds)

    fleet.inject(building.id, pending.place.zone, "co2", NORMAL_PPM, at(0), at(40))
    fleet.inject(building.id, pending.place.zone, "co2", BREACH_PPM, at(40), at(130))
    fleet.inject(building.id, pending.place.zone, "co2", NORMAL_PPM, at(130), at(165))
    fleet.inject(building.id, open_.place.zone, "co2", BREACH_PPM, at(0), at(150))
    fleet.inject(building.id, open_.place.zone, "co2", NORMAL_PPM, at(150), at(165))
    before, after = between(fleet, building.id, at(0), at(75)), between(fleet, building.id, at(75), at(165))

    publish(endpoints["mqtt"][0], before)
    wait_for(lambda: alerts_for(endpoints, open_, "raised"), 120, "zone B raised before the kill")
    last_pending = readings_of(before, pending)[-1].ts
    wait_for(
        lambda: (
            (s := state_of(endpoints, pending))
            and s["phase"] == "pending"
            and s["last_ts"] == exact(last_pending)
        ),
        60,
        "zone A pending in the stored state",
    )
    # Committed too: the killed alerter's readings are not redelivered, only its state can carry zone A.
    wait_for(lambda: committed_up_to_the_end(endpoints["kafka"]), 60, "the alerter's offsets committed")
    stored = state_of(endpoints, pending)
    assert stored is not None
    assert stored["started_at"] == exact(first_breach(before, pending))
    assert (state_of(endpoints, open_) or {}).get("phase") == "raised"

    stack["alerter"].kill()
    stack["alerter"].start()
    publish(endpoints["mqtt"][0], after)

    wait_for(
        lambda: alerts_for(endpoints, pending, "cleared"), 150, "zone A raised and cleared after restart"
    )
    wait_for(lambda: alerts_for(endpoints, open_, "cleared"), 60, "zone B cleared after restart")
    time.sleep(3)
    a_raised, b_raised = alerts_for(endpoints, pending, "raised"), alerts_for(endpoints, open_, "raised")
    assert len(a_raised) == 1, a_raised
    assert a_raised[0]["started_at"] == format_timestamp(
        first_breach(before, pending)
    )  # from before the kill
    assert len(b_raised) == 1, b_raised  # not raised again by the new process
    (b_cleared,) = alerts_for(endpoints, open_, "cleared")
    assert b_cleared["fingerprint"] == b_raised[0]["fingerprint"]
    assert len(alerts_for(endpoints, pending, "cleared")) == 1


def test_a_batch_redelivered_after_its_state_was_lost_is_not_paged_again(stack: Stack) -> None:
    """The crash the delivery marks are for: the alerter paged an episode and died before it stored the
    state after that batch. Its successor restores the state from before the episode, the readings come
    again, and the engine makes the same events (same fingerprint): the marks in Redis keep them off the
    pager. The crash is staged by putting back the state stored before the episode."""
    endpoints = stack.endpoints()
    redis = Redis.from_url(f"redis://{endpoints['redis']}")
    fleet = stack_fleet()
    building = fleet.building("nyc-012")
    sensor = co2_sensor(fleet, building.id, building.zones[0])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=180)
    fleet.inject(building.id, sensor.place.zone, "co2", BREACH_PPM, start, start + timedelta(seconds=90))
    fleet.inject(
        building.id,
        sensor.place.zone,
        "co2",
        NORMAL_PPM,
        start + timedelta(seconds=90),
        start + timedelta(seconds=120),
    )
    episode = [
        (t, p)
        for t, p in between(fleet, building.id, start, start + timedelta(seconds=120))
        if t == sensor.topic
    ]
    before = redis.get(STATE_KEY)

    publish(endpoints["mqtt"][0], episode)
    wait_for(lambda: alerts_for(endpoints, sensor, "cleared"), 120, "the episode paged")
    # the state is stored after the batch's events were delivered, so it may trail the webhook a little
    wait_for(
        lambda: (state_of(endpoints, sensor) or {}).get("phase") == "cleared", 10, "the cleared state stored"
    )

    stack["alerter"].kill()
    if before is None:
        redis.delete(STATE_KEY)
    else:
        redis.set(STATE_KEY, before)
    stack["alerter"].start()
    assert state_of(endpoints, sensor) is None  # the successor knows nothing of the episode
    publish(endpoints["mqtt"][0], episode)  # what the dead alerter had not committed comes again

    wait_for(
        lambda: (state_of(endpoints, sensor) or {}).get("phase") == "cleared",
        120,
        "the episode evaluated again",
    )
    wait_for(
        lambda: service_metric(endpoints["alerter"], "alerter_deduplicated_total") >= 2,
        30,
        "the raised and cleared events recognised as delivered",
    )
    assert len(alerts_for(endpoints, sensor, "raised")) == 1
    assert len(alerts_for(endpoints, sensor, "cleared")) == 1


def test_replay_runs_a_stricter_rule_over_the_past_without_paging(stack: Stack, episode: Episode) -> None:
    endpoints = stack.endpoints()
    state_before = engine_state(endpoints)
    body = {
        "rules": [STRICT_RULE],
        "from": format_timestamp(episode.start),
        "to": format_timestamp(episode.end),
    }
    response = httpx.post(f"{endpoints['alerter']}/rules/replay", json=body, timeout=120)
    assert response.status_code == 200, response.text
    result = response.json()

    place = episode.sensor.place
    ours = [a for a in result["alerts"] if (a["tenant"], a["building"]) == (place.tenant, place.building)]
    expected = replay(load_rules([STRICT_RULE]), [Reading.from_mqtt(t, p) for t, p in episode.messages])
    assert ours == [event.to_dict() for event in expected]
    zone = [a for a in ours if a["zone"] == place.zone]
    assert [a["kind"] for a in zone] == ["raised", "cleared"]
    assert zone[0]["rule"] == "co2-strict"
    assert zone[0]["severity"] == "critical"
    assert zone[0]["started_at"] == format_timestamp(episode.breach_started)
    raised_at = datetime.fromisoformat(zone[0]["ts"].replace("Z", "+00:00"))
    assert timedelta(seconds=30) <= raised_at - episode.breach_started < timedelta(seconds=40)
    assert result["readings"] >= len(episode.messages)

    time.sleep(3)
    assert [
        a for a in webhook_alerts(endpoints, "sensors") if a["rule"] == "co2-strict"
    ] == []  # nothing paged
    assert engine_state(endpoints) == state_before  # the live engine's stored state is untouched


def test_replay_refuses_bad_rules_and_bad_ranges_with_the_reason(stack: Stack) -> None:
    url = f"{stack.endpoints()['alerter']}/rules/replay"
    now = datetime.now(UTC)
    range_ = {"from": format_timestamp(now - timedelta(minutes=5)), "to": format_timestamp(now)}
    bad_rules = [
        {"id": "co2-mixed", "type": "co2", "condition": "above", "threshold": 1200, "low": 400},
        {"id": "co2-absurd", "type": "co2", "condition": "above", "threshold": 60_000},
    ]
    response = httpx.post(url, json={"rules": bad_rules, **range_}, timeout=30)
    assert response.status_code == 400
    problems = response.json()["problems"]
    assert any(p.startswith("rules[0] (co2-mixed)") and "takes threshold" in p for p in problems), problems
    assert any(p.startswith("rules[1] (co2-absurd)") and "60000" in p for p in problems), problems

    for times, reason in (
        ({"from": "last tuesday", "to": range_["to"]}, "from: 'last tuesday' is not an RFC 3339"),
        (
            {"from": range_["from"], "to": "2026-13-01T00:00:00Z"},
            "to: '2026-13-01T00:00:00Z' is not an RFC 3339",
        ),
        ({"from": range_["from"].removesuffix("Z"), "to": range_["to"]}, "from: "),  # no time zone
        ({"from": range_["to"], "to": range_["from"]}, "from must be before to"),
        ({"from": range_["from"]}, "to: None"),
    ):
        response = httpx.post(url, json={"rules": [STRICT_RULE], **times}, timeout=30)
        assert response.status_code == 400, times
        assert any(p.startswith(reason) for p in response.json()["problems"]), (times, response.text)

    response = httpx.post(url, content=b"{not json", timeout=30)
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]
    response = httpx.post(url, json={"rules": [], **range_}, timeout=30)
    assert response.status_code == 400
    assert "rules: expected a non-empty list of rules" in response.json()["problems"]


def test_a_record_that_is_not_a_reading_is_counted_and_skipped(stack: Stack) -> None:
    endpoints = stack.endpoints()
    alerter = endpoints["alerter"]
    unreadable = service_metric(alerter, "alerter_unreadable_total")
    evaluated = service_metric(alerter, "alerter_readings_total")
    produce(endpoints["kafka"], [b"not a reading", b'{"tenant": "t", "value": 1}', b"\xff\xfe"])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    messages = between(stack_fleet(), "nyc-012", start, start + timedelta(seconds=20))
    publish(endpoints["mqtt"][0], messages)

    wait_for(  # the bad records and the readings may be on different partitions: wait for both
        lambda: (
            service_metric(alerter, "alerter_unreadable_total") >= unreadable + 3
            and service_metric(alerter, "alerter_readings_total") >= evaluated + len(messages)
        ),
        60,
        "the bad records counted and the readings evaluated",
    )
    assert service_metric(alerter, "alerter_unreadable_total") == unreadable + 3
    assert stack["alerter"].is_running()
    body = {
        "rules": [STRICT_RULE],
        "from": format_timestamp(start),
        "to": format_timestamp(datetime.now(UTC)),
    }
    response = httpx.post(f"{alerter}/rules/replay", json=body, timeout=120)  # skips them too
    assert response.status_code == 200, response.text
    assert response.json()["readings"] >= len(messages)
