"""The sensors load generator without servers: which sensors report for a rate, when each reading is due,
malformed substitutions, the region -> broker mapping, and the refusals before anything is sent."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katas.sensors.fleet import INTERVAL_MS, ZONE_SIZE, Fleet
from katas.sensors.load import (
    FleetSchedule,
    Letter,
    LoadRun,
    allocate,
    at_ms,
    count_due,
    deliverable,
    due_messages,
    main,
    plan,
    read_acknowledged,
    read_endpoints,
    reading_id,
)
from katas.sensors.readings import InvalidReadingError, Reading
from loadgen import ConstantRate, LoadResult, new_histogram
from loadgen.sensors import Tally, broker_for, region_brokers
from loadgen.stack import EXIT_NOT_RUNNING, EXIT_USAGE, StackNotRunningError

pytestmark = pytest.mark.unit

START_MS = (
    datetime(2025, 3, 11, 14, 0, 0, 37_000, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
) // timedelta(milliseconds=1)
"""A fixed start, off the second, so no test depends on the clock or on round boundaries."""


@pytest.fixture(scope="module")
def card_fleet() -> Fleet:
    """The fleet `katas up sensors` serves (SensorsSettings' defaults: seed 1, 50 x 1,000, 6 tenants)."""
    return Fleet.build(1, 50, 1000, 6)


def small(seed: int = 7, buildings: int = 4, sensors: int = 50) -> Fleet:
    return Fleet.build(seed, buildings=buildings, sensors_per_building=sensors)


# ------------------------------------------------------------------------------------------ rate maths
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.data())
def test_allocation_is_as_even_as_the_capacities_allow(capacities: list[int], data: st.DataObject) -> None:
    total = data.draw(st.integers(0, sum(capacities)))
    shares = allocate(total, capacities)
    assert sum(shares) == total
    assert all(0 <= share <= cap for share, cap in zip(shares, capacities, strict=True))
    uncapped = [share for share, cap in zip(shares, capacities, strict=True) if share < cap]
    if uncapped:  # a slot left below its capacity got at least as much as any other, bar one
        assert max(shares) - min(uncapped) <= 1


def test_allocation_gives_the_remainder_to_the_first_and_refuses_what_does_not_fit() -> None:
    assert allocate(7, [10, 10, 10]) == [3, 2, 2]
    assert allocate(12, [2, 10, 10]) == [2, 5, 5]
    assert allocate(6, [1, 3, 1, 2]) == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="does not fit"):
        allocate(31, [10, 10, 10])


@given(st.integers(0, INTERVAL_MS - 1), st.integers(-(10**7), 10**7), st.integers(0, 60_000))
def test_count_due_counts_each_report_in_the_window(phase: int, start: int, length: int) -> None:
    first = start + (phase - start) % INTERVAL_MS
    expected = len(range(first, start + length, INTERVAL_MS))
    assert count_due(phase, start, start + length) == expected


def test_the_cards_rate_is_every_building_with_ten_whole_zones(card_fleet: Fleet) -> None:
    which = plan(card_fleet, 500)
    assert which.sensor_count == 5000
    assert which.rate == 500
    assert len(which.buildings) == 50
    for building in card_fleet.buildings:
        sensors = which.sensors[building.id]
        assert len(sensors) == 100
        zones = Counter(s.place.zone for s in sensors)
        assert len(zones) == 10
        assert set(zones.values()) == {ZONE_SIZE}
        assert list(sensors) == card_fleet.sensors_of(building.id)[:100]
    assert plan(card_fleet, 5000).sensor_count == len(card_fleet)


def test_a_rate_is_spread_evenly_and_only_over_the_chosen_buildings() -> None:
    fleet = small()
    chosen = [fleet.buildings[2].id, fleet.buildings[0].id]
    which = plan(fleet, 7.3, chosen)
    assert which.sensor_count == 73
    assert [b.id for b in which.buildings] == [fleet.buildings[0].id, fleet.buildings[2].id]  # fleet order
    assert sorted(len(s) for s in which.sensors.values()) == [36, 37]
    assert {s.place.building for s in which.by_topic.values()} == set(chosen)
    few = plan(fleet, 0.2)  # two sensors: two buildings report, the others get no connection
    assert len(few.buildings) == 2


def test_rates_the_buildings_cannot_give_are_refused_with_the_ceiling() -> None:
    fleet = small()
    with pytest.raises(ValueError, match=r"at most 10 readings/s"):
        plan(fleet, 10.5, [fleet.buildings[0].id, fleet.buildings[1].id])
    with pytest.raises(ValueError, match="below one sensor"):
        plan(fleet, 0.01)
    with pytest.raises(ValueError, match="no building nowhere-999"):
        plan(fleet, 1, ["nowhere-999"])


# ------------------------------------------------------------------------------------------ the schedule
def test_each_planned_sensor_reports_once_per_interval_stamped_with_its_due_time() -> None:
    fleet = small()
    which = plan(fleet, 9)
    messages = list(due_messages(which, START_MS, START_MS + 3 * INTERVAL_MS, chunk_ms=700))
    assert len(messages) == which.count_due(START_MS, START_MS + 3 * INTERVAL_MS) == 3 * 90
    assert [m.due_ms for m in messages] == sorted(m.due_ms for m in messages)
    assert all(START_MS <= m.due_ms < START_MS + 3 * INTERVAL_MS for m in messages)
    per_sensor = Counter(m.reading[0] for m in messages if m.reading)
    assert set(per_sensor.values()) == {3}
    assert len(per_sensor) == 90
    for m in messages:
        reading = Reading.from_mqtt(m.topic, m.payload, now=at_ms(m.due_ms))
        assert reading_id(reading) == m.reading == (reading.place.sensor_id, m.due_ms)
        assert reading.place.building == m.building
        assert which.by_topic[m.topic].phase_ms == m.due_ms % INTERVAL_MS


def test_the_planned_sensors_report_exactly_what_the_whole_fleet_says_overrides_included() -> None:
    fleet = small()
    which = plan(fleet, 7)
    zone = next(iter(which.by_topic.values())).place
    start, end = at_ms(START_MS), at_ms(START_MS + 2 * INTERVAL_MS)
    fleet.inject(zone.building, zone.zone, "co2", 1800, start, end)  # after planning: still reaches it
    expected = [(t, p) for t, p in fleet.readings(start, end) if t in which.by_topic]
    assert list(which.source.readings(start, end)) == expected
    assert any(b'"value":1800' in p for _, p in expected)


@settings(deadline=None)  # a long schedule takes a while on a busy machine; speed is not what it tests
@given(st.integers(0, 25_000), st.integers(1, 25_000), st.sampled_from([1, 100, 999, INTERVAL_MS]))
def test_the_count_the_engine_is_told_is_what_the_schedule_yields(
    offset: int, length: int, chunk: int
) -> None:
    fleet = _tiny
    which = plan(fleet, 3)
    start = START_MS + offset
    yielded = sum(1 for _ in due_messages(which, start, start + length, chunk_ms=chunk))
    assert yielded == which.count_due(start, start + length)


_tiny = small(seed=3, buildings=3, sensors=20)


def test_the_schedule_is_the_engines_profile() -> None:
    fleet = small()
    schedule = FleetSchedule(plan(fleet, 20), START_MS, 12.5)
    offsets = list(schedule.intended_offsets())
    assert len(offsets) == schedule.intended_count()
    assert 200 <= len(offsets) <= 400, "200 sensors, each reporting once or twice in 12.5 s"
    assert offsets == sorted(offsets)
    assert offsets[0] >= 0
    assert offsets[-1] < schedule.duration_s == 12.5
    first = schedule.take(0)
    assert first.due_ms == START_MS + round(offsets[0] * 1000)
    assert "20/s" in schedule.describe()
    with pytest.raises(ValueError, match="duration"):
        FleetSchedule(plan(fleet, 20), START_MS, 0)


def test_malformed_messages_replace_readings_at_the_fraction_and_say_their_reason() -> None:
    fleet = small()
    which = plan(fleet, 20)
    window = (START_MS, START_MS + 5 * INTERVAL_MS)

    def draw(fraction: float, seed: int) -> list[Any]:
        return list(due_messages(which, *window, malformed=fraction, rng=random.Random(seed)))

    assert all(m.reason is None for m in draw(0.0, 1))
    mixed = draw(0.25, 1)
    assert mixed == draw(0.25, 1), "the same seed draws the same messages"
    bad = [m for m in mixed if m.reason is not None]
    assert 0.15 < len(bad) / len(mixed) < 0.35
    assert len({m.reason for m in bad}) > 4
    for m in draw(1.0, 2):
        assert m.reading is None
        parts = m.topic.split("/")
        assert parts[0] == "sensors", "only what the bridge's subscription matches"
        assert len(parts) == 6
        assert m.building.encode() in m.topic.encode() + m.payload, "about the sensor it replaces"
        with pytest.raises(InvalidReadingError) as refused:
            Reading.from_mqtt(m.topic, m.payload, now=at_ms(m.due_ms))
        assert refused.value.reason == m.reason


def test_only_malformed_messages_the_bridge_subscribes_to_are_deliverable() -> None:
    from katas.sensors.fleet import malformed_messages

    every = malformed_messages(at_ms(START_MS))
    kept = deliverable(every)
    dropped = {m.what for m in every} - {m.what for m in kept}
    assert dropped == {"wrong topic prefix", "no sensor id segment", "one segment too many"}


# ---------------------------------------------------------------------------------------- regions
def test_each_region_publishes_to_its_broker_in_the_cards_order(card_fleet: Fleet) -> None:
    eu, us = "127.0.0.1:1883", "127.0.0.1:1884"
    assert region_brokers([eu, us]) == {"eu": eu, "us": us}
    assert region_brokers([eu]) == {"eu": eu, "us": eu}
    by_city = {b.city: broker_for(b.region, [eu, us]) for b in card_fleet.buildings}
    assert {by_city[c] for c in ("lon", "par", "dxb", "bom") if c in by_city} == {eu}
    assert {by_city[c] for c in ("nyc", "mex", "gru", "syd", "tyo") if c in by_city} == {us}
    with pytest.raises(ValueError, match="one MQTT broker per region"):
        region_brokers([eu, us, "127.0.0.1:1885"])
    with pytest.raises(ValueError, match=r"only sends to loopback; 10\.1\.2\.3:1883"):
        region_brokers([eu, "10.1.2.3:1883"])
    with pytest.raises(ValueError, match="no broker for region 'ap'"):
        broker_for("ap", [eu, us])


def _endpoints(tmp_path: Path, **values: Any) -> Path:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps(values))
    return path


def test_endpoints_must_exist_name_the_brokers_and_be_local(tmp_path: Path) -> None:
    with pytest.raises(StackNotRunningError, match="katas up sensors"):
        read_endpoints(tmp_path / "missing.json")
    with pytest.raises(StackNotRunningError, match="no mqtt"):
        read_endpoints(_endpoints(tmp_path, api="http://127.0.0.1:1"))
    with pytest.raises(ValueError, match="not local"):
        read_endpoints(_endpoints(tmp_path, mqtt=["127.0.0.1:1", "192.0.2.7:2"]))
    assert read_endpoints(_endpoints(tmp_path, mqtt="127.0.0.1:1,localhost:2"))["mqtt"]


def test_main_refuses_a_missing_stack_a_remote_broker_and_an_impossible_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--endpoints", str(tmp_path / "none.json")]) == EXIT_NOT_RUNNING
    assert "the sensors stack is not running" in capsys.readouterr().err
    remote = _endpoints(tmp_path, mqtt=["192.0.2.7:1883", "127.0.0.1:1884"])
    assert main(["--endpoints", str(remote)]) == EXIT_USAGE
    assert "192.0.2.7:1883 is not local" in capsys.readouterr().err
    local = _endpoints(tmp_path, mqtt=["127.0.0.1:1", "127.0.0.1:2"])
    assert main(["--endpoints", str(local), "--rate", "1000000"]) == EXIT_USAGE
    assert "needs 10,000,000 sensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--endpoints", str(local), "--malformed", "1.5"])


# ----------------------------------------------------------------------------------------- reporting
def test_acknowledged_ids_round_trip_through_the_file(tmp_path: Path) -> None:
    tally = Tally(published=3, acknowledged=2)
    tally.record(0.05)
    empty = ConstantRate(1, 1)
    result = LoadResult.from_histogram(
        new_histogram(),
        label="t",
        profile=empty.describe(),
        intended=1,
        started=1,
        errors={},
        error_samples=[],
        timed_out=1,
        delayed_starts=0,
        duration_s=1.0,
        throughput=[],
    )
    letter = Letter("sensors/t/b/f/z/s", b"\xff\xfenot json", "json")
    run = LoadRun(
        result=result,
        rate=0.3,
        sensors=3,
        regions={"us": tally},
        buildings={"mex-001": ("us", 66, tally)},
        malformed=Counter({"us": 1}),
        acknowledged={("mex-001-f01-z01-tmp1", START_MS)},
        acknowledged_letters=[letter],
        reconnects=0,
    )
    assert run.failed == 1
    assert read_acknowledged(run.write_acknowledged(tmp_path / "acked.jsonl")) == (
        {("mex-001-f01-z01-tmp1", START_MS)},
        [letter],
    )
    written = json.loads(run.write_json(tmp_path / "load.json").read_text())
    assert LoadResult.from_dict(written).timed_out == 1
    assert written["sensors"]["regions"]["us"]["failed"] == 1
    assert written["sensors"]["buildings"]["mex-001"]["wan_rtt_ms"] == 66
