"""The simulated sensor fleet: layout, payload contract, cadence, daily curves, anomalies and hostile input."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from katas.sensors.fleet import (
    INTERVAL,
    INTERVAL_MS,
    LATENCY_MS,
    REGIONS,
    ZONE_MIX,
    Fleet,
    Sensor,
    malformed_messages,
)
from katas.sensors.readings import (
    MAX_PAYLOAD_BYTES,
    NAME,
    PLAUSIBLE,
    SENSOR_TYPES,
    InvalidReadingError,
    Place,
    Reading,
)

pytestmark = pytest.mark.unit

TUESDAY = datetime(2025, 3, 11, 14, 0, tzinfo=UTC)
"""A weekday afternoon in Europe, morning in the Americas, night in Asia-Pacific."""


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.build(1)


@pytest.fixture(scope="module")
def medium() -> Fleet:
    """Enough zones for the curves to be more than noise, small enough to sample a day of it."""
    return Fleet.build(5, buildings=6, sensors_per_building=300)


def small(seed: int = 7) -> Fleet:
    return Fleet.build(seed, buildings=2, sensors_per_building=20)


def parse_all(messages: list[tuple[str, bytes]], now: datetime) -> list[Reading]:
    return [Reading.from_mqtt(topic, payload, now=now) for topic, payload in messages]


def in_celsius(sensor: Sensor, value: float) -> float:
    return (value - 32.0) * 5.0 / 9.0 if sensor.unit == "F" else value


# ---------------------------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_fleet_and_readings() -> None:
    first, again, other = small(7), small(7), small(8)
    assert first.tenants == again.tenants
    assert first.buildings == again.buildings
    assert first.sensors == again.sensors
    window = (TUESDAY, TUESDAY + timedelta(minutes=2))
    assert list(first.readings(*window)) == list(again.readings(*window))
    assert list(first.readings(*window)) != list(other.readings(*window))
    assert first.buildings != other.buildings


def test_readings_do_not_depend_on_how_the_calls_are_chunked() -> None:
    whole = list(small().readings(TUESDAY, TUESDAY + timedelta(minutes=30)))
    chunked_fleet = small()
    chunks = [TUESDAY + timedelta(milliseconds=700 * n) for n in range(0, 30 * 60 * 1000 // 700 + 2)]
    chunked = [m for a, b in itertools.pairwise(chunks) for m in chunked_fleet.readings(a, b)]
    assert chunked[: len(whole)] == whole
    # Asked out of order (a later hour first), the values are still the same.
    shuffled = small()
    list(shuffled.readings(TUESDAY + timedelta(hours=5), TUESDAY + timedelta(hours=5, seconds=10)))
    assert list(shuffled.readings(TUESDAY, TUESDAY + timedelta(minutes=30))) == whole
    # Started late (every zone's history computed afresh rather than moved on slot by slot): the same.
    late = TUESDAY + timedelta(minutes=15)
    tail = list(small().readings(late, TUESDAY + timedelta(minutes=30)))
    assert tail == whole[-len(tail) :]


# ---------------------------------------------------------------------------------- layout


def test_the_default_fleet_is_50_buildings_of_1000_sensors(fleet: Fleet) -> None:
    assert len(fleet.buildings) == 50
    assert len(fleet.sensors) == len(fleet) == 50_000
    assert len({s.id for s in fleet.sensors}) == 50_000
    assert len({b.id for b in fleet.buildings}) == 50
    for building in fleet.buildings:
        sensors = fleet.sensors_of(building.id)
        assert len(sensors) == 1000
        assert len(building.zones) == 100
        assert len(building.floors) * (len(building.zones) // len(building.floors)) == 100
        assert {s.place.zone for s in sensors} == set(building.zones)
        assert {s.place.floor for s in sensors} == set(building.floors)
    assert len({len(b.floors) for b in fleet.buildings}) > 1, "towers and low-rise buildings"


def test_every_zone_has_the_sensor_mix(fleet: Fleet) -> None:
    mixes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for sensor in fleet.sensors:
        mixes[(sensor.place.building, sensor.place.zone)][sensor.type] += 1
    assert len(mixes) == 5000
    assert all(mix == dict(ZONE_MIX) for mix in mixes.values())
    kinds = Counter(zone.kind for zone in fleet.zones)
    assert set(kinds) == {"open-office", "meeting-room", "break-room", "lobby"}
    assert kinds["open-office"] > kinds["meeting-room"] > kinds["break-room"] >= kinds["lobby"] > 0


def test_tenants_own_disjoint_uneven_sets_of_buildings(fleet: Fleet) -> None:
    assert 5 <= len(fleet.tenants) <= 8
    owned = [b for tenant in fleet.tenants for b in tenant.buildings]
    assert len(owned) == len(set(owned)) == 50
    assert set(owned) == {b.id for b in fleet.buildings}
    for tenant in fleet.tenants:
        assert NAME.fullmatch(tenant.id)
        assert tenant.id == tenant.name.lower().replace(" ", "-")
        assert all(fleet.building(b).tenant == tenant.id for b in tenant.buildings)
        assert fleet.tenant(tenant.id) is tenant
    sizes = sorted(len(t.buildings) for t in fleet.tenants)
    assert sizes[-1] >= 2 * sizes[0]
    assert len({t.name for t in fleet.tenants}) == len(fleet.tenants)


def test_buildings_are_spread_over_regions_time_zones_and_latencies(fleet: Fleet) -> None:
    assert {b.region for b in fleet.buildings} == set(REGIONS)
    assert all(LATENCY_MS[0] <= b.latency_ms <= LATENCY_MS[1] for b in fleet.buildings)
    latencies = [b.latency_ms for b in fleet.buildings]
    assert max(latencies) - min(latencies) > 100
    offsets = {b.utc_offset_min for b in fleet.buildings}
    assert len(offsets) >= 6
    assert min(offsets) < 0 < max(offsets)


def test_every_name_is_a_valid_topic_segment(fleet: Fleet) -> None:
    for sensor, place in fleet.iter_sensors():
        assert place is sensor.place
        assert all(NAME.fullmatch(part) for part in (place.tenant, place.building, place.floor, place.zone))
        assert NAME.fullmatch(place.sensor_id)
        assert Place.from_topic(sensor.topic) == place
        assert place.sensor_id.startswith(f"{place.building}-{place.zone}-")
        assert fleet.building(place.building).tenant == place.tenant


def test_a_mixed_fleet_reports_temperature_in_both_units(fleet: Fleet) -> None:
    units = Counter(s.unit for s in fleet.sensors if s.type == "temperature")
    assert set(units) == {"C", "F"}
    assert units["C"] > units["F"] > 0
    assert {s.unit for s in fleet.sensors if s.type != "temperature"} == {"%", "ppm", "people", "lux"}


def test_the_small_fleet() -> None:
    fleet = small()
    assert len(fleet.buildings) == 2
    assert len(fleet) == 40
    assert all(len(fleet.sensors_of(b.id)) == 20 for b in fleet.buildings)
    assert 1 <= len(fleet.tenants) <= 2
    assert sum(1 for _ in fleet.iter_sensors(fleet.buildings[0].id)) == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"buildings": 0}, "at least one building"),
        ({"sensors_per_building": 25}, "multiple of 10"),
        ({"buildings": 3, "tenants": 4}, "tenants must be"),
        ({"tenants": 0}, "tenants must be"),
    ],
)
def test_impossible_layouts_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fleet.build(1, **kwargs)


# ---------------------------------------------------------------------------------- the payload contract


def test_every_message_of_the_fleet_is_a_valid_plausible_reading(fleet: Fleet) -> None:
    end = TUESDAY + INTERVAL
    messages = list(fleet.readings(TUESDAY, end))
    assert len(messages) == 50_000
    readings = parse_all(messages, now=end)
    assert {r.place.sensor_id for r in readings} == {s.id for s in fleet.sensors}
    for (topic, payload), reading in zip(messages, readings, strict=True):
        assert topic == reading.place.topic
        assert TUESDAY <= reading.ts < end
        low, high = PLAUSIBLE[reading.type]
        assert low <= reading.value <= high
        assert len(payload) <= MAX_PAYLOAD_BYTES
        assert set(json.loads(payload)) == {"sensor_id", "type", "value", "unit", "ts"}
    sizes = [len(topic) + len(payload) for topic, payload in messages]
    assert 150 <= statistics.mean(sizes) <= 220, "about 200 bytes a reading, topic included"


def test_values_stay_in_realistic_ranges_around_the_clock(medium: Fleet) -> None:
    seen: dict[str, list[float]] = defaultdict(list)
    for hour in range(0, 24 * 7, 5):  # every fifth hour of a week, so every local hour and weekday
        start = TUESDAY + timedelta(hours=hour)
        for reading in parse_all(list(medium.readings(start, start + INTERVAL)), now=start + INTERVAL):
            seen[reading.type].append(reading.value)
    assert set(seen) == set(SENSOR_TYPES)
    assert min(seen["temperature"]) >= 14.0
    assert max(seen["temperature"]) <= 29.0
    assert min(seen["humidity"]) >= 30.0
    assert max(seen["humidity"]) <= 60.0
    assert min(seen["co2"]) >= 380.0
    assert max(seen["co2"]) <= 2500.0
    assert min(seen["occupancy"]) == 0.0
    assert max(seen["occupancy"]) <= 60.0
    assert min(seen["light"]) >= 0.0
    assert max(seen["light"]) <= 5000.0
    assert all(v == int(v) for t in ("co2", "occupancy", "light") for v in seen[t])


def test_fahrenheit_devices_read_like_their_celsius_neighbours(fleet: Fleet) -> None:
    end = TUESDAY + INTERVAL
    by_zone: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    units = {s.id: s.unit for s in fleet.sensors}
    for topic, payload in fleet.readings(TUESDAY, end):
        body = json.loads(payload)
        if body["type"] != "temperature":
            continue
        assert body["unit"] == units[body["sensor_id"]]
        reading = Reading.from_mqtt(topic, payload, now=end)
        by_zone[(reading.place.building, reading.place.zone)][body["unit"]].append(reading.value)
    mixed = [zone for zone in by_zone.values() if zone["C"] and zone["F"]]
    assert mixed
    for zone in mixed:
        assert abs(statistics.mean(zone["C"]) - statistics.mean(zone["F"])) < 2.5


# ---------------------------------------------------------------------------------- cadence


def test_each_sensor_reports_once_per_interval_at_its_phase() -> None:
    fleet = small()
    start = TUESDAY + timedelta(milliseconds=4321)
    end = start + timedelta(seconds=60)
    readings = parse_all(list(fleet.readings(start, end)), now=end)
    assert len(readings) == 6 * 40 == fleet.count_due(start, end)
    stamps = [r.ts for r in readings]
    assert stamps == sorted(stamps), "in time order"
    assert all(start <= ts < end for ts in stamps)
    by_sensor: dict[str, list[datetime]] = defaultdict(list)
    for reading in readings:
        by_sensor[reading.place.sensor_id].append(reading.ts)
    phases = {s.id: s.phase_ms for s in fleet.sensors}
    for sensor_id, times in by_sensor.items():
        assert len(times) == 6
        assert all(b - a == INTERVAL for a, b in itertools.pairwise(times))
        assert {int(ts.timestamp() * 1000) % INTERVAL_MS for ts in times} == {phases[sensor_id]}
    windows = Counter(
        (r.place.sensor_id, (r.ts - start) // INTERVAL) for r in readings
    )  # every 10 s window from start
    assert set(windows.values()) == {1}


def test_window_edges_are_half_open() -> None:
    fleet = small()
    sensor = fleet.sensors[0]
    at = datetime(2025, 3, 11, 14, 0, 0, tzinfo=UTC) + timedelta(milliseconds=sensor.phase_ms)

    def ids(a: datetime, b: datetime) -> list[str]:
        return [json.loads(p)["sensor_id"] for _, p in fleet.readings(a, b)]

    assert sensor.id in ids(at, at + timedelta(milliseconds=1))
    assert sensor.id not in ids(at - timedelta(milliseconds=1), at)
    assert sensor.id not in ids(at + timedelta(microseconds=1), at + timedelta(milliseconds=1))
    assert list(fleet.readings(at, at)) == []
    assert fleet.count_due(at, at - timedelta(seconds=1)) == 0


def test_count_due_matches_the_readings_and_paces_the_full_fleet(fleet: Fleet) -> None:
    small_fleet = small()
    for start_ms, length_ms in ((0, 1000), (333, 10_000), (9_999, 2), (12_345, 61_000)):
        start = TUESDAY + timedelta(milliseconds=start_ms)
        end = start + timedelta(milliseconds=length_ms)
        assert small_fleet.count_due(start, end) == sum(1 for _ in small_fleet.readings(start, end))
    per_second = [
        fleet.count_due(TUESDAY + timedelta(seconds=n), TUESDAY + timedelta(seconds=n + 1)) for n in range(10)
    ]
    assert sum(per_second) == 50_000
    assert all(4_500 <= count <= 5_500 for count in per_second), per_second
    one = TUESDAY + timedelta(seconds=3)
    assert fleet.count_due(one, one + timedelta(seconds=1)) == sum(
        1 for _ in fleet.readings(one, one + timedelta(seconds=1))
    )
    assert fleet.count_due(TUESDAY, TUESDAY + timedelta(days=1)) == 50_000 * 8640


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        list(small().readings(datetime(2025, 3, 11, 14, 0), datetime(2025, 3, 11, 14, 1)))


# ---------------------------------------------------------------------------------- daily curves


def sample(fleet: Fleet, kind: str, day: int, hour: int, minute: int = 0) -> dict[str, float]:
    """Each sensor of a kind at a wall-clock time of its own building, in March 2025 (the 10th is a
    Monday), in Celsius for temperature."""
    values = {}
    for sensor in fleet.sensors:
        if sensor.type == kind:
            at = sensor.building.at_local(2025, 3, day, hour, minute)
            values[sensor.id] = in_celsius(sensor, fleet.value(sensor, at))
    return values


def test_occupancy_follows_office_hours_and_weekdays(medium: Fleet) -> None:
    night = statistics.mean(sample(medium, "occupancy", 11, 3).values())
    morning = statistics.mean(sample(medium, "occupancy", 11, 11).values())
    saturday = statistics.mean(sample(medium, "occupancy", 15, 11).values())
    evening = statistics.mean(sample(medium, "occupancy", 11, 22).values())
    assert night < 0.1
    assert evening < 0.3
    assert morning > 3.0
    assert saturday < morning / 5


def test_open_offices_empty_a_little_at_lunch(medium: Fleet) -> None:
    open_office = {s.id for s in medium.sensors if s.zone.kind == "open-office"}

    def mean_at(hour: int, minute: int) -> float:
        return statistics.mean(
            v
            for d in (11, 12, 13)
            for k, v in sample(medium, "occupancy", d, hour, minute).items()
            if k in open_office
        )

    assert mean_at(12, 45) < 0.85 * mean_at(11, 0)
    assert mean_at(12, 45) < 0.85 * mean_at(15, 0)


def test_co2_rises_with_occupancy_and_decays_after(medium: Fleet) -> None:
    pairs: list[tuple[float, float]] = []
    for hour in range(0, 24, 2):
        occupancy: dict[int, float] = {}
        for sensor in medium.sensors:
            if sensor.type == "occupancy":
                occupancy[sensor.zone.index] = medium.value(
                    sensor, sensor.building.at_local(2025, 3, 12, hour)
                )
        for sensor in medium.sensors:
            if sensor.type == "co2":
                co2 = medium.value(sensor, sensor.building.at_local(2025, 3, 12, hour))
                pairs.append((occupancy[sensor.zone.index], co2))
    people = [p for p, _ in pairs]
    levels = [c for _, c in pairs]
    assert statistics.correlation(people, levels) > 0.6
    night = [c for p, c in pairs if p == 0]
    assert statistics.mean(night) < 470, "empty zones sit near outdoor air"
    # An hour after everyone has gone, the air still remembers them; by 3 am it does not.
    office = next(s for s in medium.sensors if s.type == "co2" and s.zone.kind == "open-office")
    leave = office.building.leave_h
    after = office.building.at_local(2025, 3, 12, int(leave) + 1, 30)
    at_night = office.building.at_local(2025, 3, 13, 3)
    midday = office.building.at_local(2025, 3, 12, 11)
    assert medium.value(office, midday) > medium.value(office, after) > medium.value(office, at_night) - 30


def test_busy_meeting_rooms_cross_1000_ppm_now_and_then(fleet: Fleet) -> None:
    rooms = [s for s in fleet.sensors if s.type == "co2" and s.zone.kind == "meeting-room"][:300]
    others = [s for s in fleet.sensors if s.type == "co2" and s.zone.kind != "meeting-room"][:300]
    over = Counter[str]()
    samples = 0
    for hour, minute in itertools.product(range(8, 19), (0, 20, 40)):
        samples += 1
        for sensor in rooms:
            if fleet.value(sensor, sensor.building.at_local(2025, 3, 12, hour, minute)) > 1000:
                over[sensor.id] += 1
    share = sum(over.values()) / (samples * len(rooms))
    assert 0.005 < share < 0.12, share
    assert len(over) >= 10, "more than one unlucky room"
    night = [fleet.value(s, s.building.at_local(2025, 3, 12, 3)) for s in rooms + others]
    assert max(night) < 600


def test_temperature_holds_the_setpoint_by_day_and_sets_back_at_night(medium: Fleet) -> None:
    day = sample(medium, "temperature", 12, 14)
    assert 21.0 <= statistics.mean(day.values()) <= 24.0
    by_building: dict[str, list[float]] = defaultdict(list)
    for sensor in medium.sensors:
        if sensor.type == "temperature":
            at = sensor.building.at_local(2025, 3, 16, 5)  # Sunday before dawn: HVAC off for a day and a half
            by_building[sensor.place.building].append(
                in_celsius(sensor, medium.value(sensor, at)) - sensor.zone.setpoint
            )
    for building_id, offsets in by_building.items():
        setback = medium.building(building_id).setback_c
        assert statistics.mean(offsets) == pytest.approx(setback, abs=1.0)
    readings = list(day.values())
    assert statistics.stdev(readings) > 0.2, "sensors differ (bias, drift, noise)"


def test_humidity_stays_between_30_and_60_percent(medium: Fleet) -> None:
    for day, hour in itertools.product((12, 15), range(0, 24, 3)):
        values = sample(medium, "humidity", day, hour).values()
        assert all(30.0 <= v <= 60.0 for v in values)
        assert statistics.mean(values) > 33.0


def test_light_follows_daylight_and_office_lighting(medium: Fleet) -> None:
    night = sample(medium, "light", 12, 2)
    midday = sample(medium, "light", 12, 12)
    sunday_noon = sample(medium, "light", 16, 12)
    assert statistics.mean(night.values()) < 20
    assert statistics.mean(midday.values()) > 400
    interior = [
        v for k, v in sunday_noon.items() if next(s for s in medium.sensors if s.id == k).window < 0.1
    ]
    window = [v for k, v in sunday_noon.items() if next(s for s in medium.sensors if s.id == k).window > 0.5]
    assert statistics.mean(window) > 3 * statistics.mean(interior)


# ---------------------------------------------------------------------------------- anomalies


def test_inject_makes_a_zone_report_a_value_for_an_interval() -> None:
    fleet = small()
    zone = next(z for z in fleet.zones if z.kind == "meeting-room")
    start = TUESDAY + timedelta(seconds=20)
    override = fleet.inject(zone.building, zone.id, "co2", 1500.0, start, start + timedelta(seconds=90))
    end = TUESDAY + timedelta(minutes=3)
    readings = parse_all(list(fleet.readings(TUESDAY, end)), now=end)
    in_zone = [r for r in readings if (r.place.building, r.place.zone) == (zone.building, zone.id)]
    forced = [r for r in in_zone if r.type == "co2" and start <= r.ts < start + timedelta(seconds=90)]
    assert len(forced) == 9
    assert all(r.value == 1500.0 for r in forced)
    assert all(r.value != 1500.0 for r in readings if r not in forced)
    untouched = [r for r in in_zone if r.type == "co2" and r not in forced]
    assert untouched
    assert all(r.value < 1000 for r in untouched)
    co2 = next(s for s in fleet.sensors if s.zone == zone and s.type == "co2")
    assert fleet.value(co2, start + timedelta(seconds=30)) == 1500.0
    fleet.remove(override)
    assert fleet.overrides == []
    assert all(Reading.from_mqtt(t, p, now=end).value != 1500.0 for t, p in fleet.readings(TUESDAY, end))


def test_an_injected_temperature_reaches_fahrenheit_devices_converted() -> None:
    fleet = next(f for f in map(small, range(50)) if any(s.unit == "F" for s in f.sensors))
    sensor = next(s for s in fleet.sensors if s.unit == "F")
    fleet.inject(sensor.place.building, sensor.place.zone, "temperature", 30.0, TUESDAY, TUESDAY + INTERVAL)
    readings = parse_all(list(fleet.readings(TUESDAY, TUESDAY + INTERVAL)), now=TUESDAY + INTERVAL)
    zone = [
        r
        for r in readings
        if (r.place.building, r.place.zone) == (sensor.place.building, sensor.place.zone)
        and r.type == "temperature"
    ]
    assert len(zone) == 4
    assert all(r.value == pytest.approx(30.0) for r in zone)
    payloads = [json.loads(p) for _, p in fleet.readings(TUESDAY, TUESDAY + INTERVAL)]
    assert {"unit": "F", "value": 86.0}.items() <= next(
        p for p in payloads if p["sensor_id"] == sensor.id
    ).items()
    fleet.clear_overrides()
    assert fleet.overrides == []


def test_bad_overrides_are_refused() -> None:
    fleet = small()
    zone = fleet.zones[0]
    with pytest.raises(KeyError):
        fleet.inject("nowhere", zone.id, "co2", 1500.0, TUESDAY, TUESDAY + INTERVAL)
    with pytest.raises(KeyError):
        fleet.inject(zone.building, "f99-z99", "co2", 1500.0, TUESDAY, TUESDAY + INTERVAL)
    with pytest.raises(ValueError, match="end after"):
        fleet.inject(zone.building, zone.id, "co2", 1500.0, TUESDAY, TUESDAY)
    with pytest.raises(ValueError, match="finite"):
        fleet.inject(zone.building, zone.id, "co2", math.nan, TUESDAY, TUESDAY + INTERVAL)
    assert fleet.overrides == []


# ---------------------------------------------------------------------------------- hostile input


def test_each_malformed_message_is_refused_with_its_reason() -> None:
    now = TUESDAY
    messages = malformed_messages(now)
    assert len(messages) >= 30
    for message in messages:
        with pytest.raises(InvalidReadingError) as refused:
            Reading.from_mqtt(message.topic, message.payload, now=now)
        assert refused.value.reason == message.reason, message.what
    reasons = {m.reason for m in messages}
    assert reasons == {
        "topic",
        "oversized",
        "json",
        "sensor_id",
        "type",
        "value",
        "unit",
        "range",
        "ts",
        "future",
    }


def test_malformed_messages_break_one_rule_at_a_place_of_the_fleet() -> None:
    fleet = small()
    place = fleet.sensors[3].place
    messages = malformed_messages(TUESDAY, place)
    assert sum(m.topic == place.topic for m in messages) >= 25
    for message in messages:
        with pytest.raises(InvalidReadingError) as refused:
            Reading.from_mqtt(message.topic, message.payload, now=TUESDAY)
        assert refused.value.reason == message.reason, message.what
    # The well-formed template they are cut from is a valid reading.
    good = next(m for m in messages if m.reason == "oversized").payload.rstrip()
    assert Reading.from_mqtt(place.topic, good, now=TUESDAY).value == 21.5
