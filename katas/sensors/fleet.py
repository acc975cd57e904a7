"""A simulated fleet of building sensors, for the load generator and the tests: what it publishes, where and
when, with values that look like real buildings. Pure: no MQTT, no network, no clock.

`Fleet.build(seed)` lays out 50 buildings of 1,000 sensors (temperature, humidity, CO2, occupancy, light)
owned by a handful of property companies (tenants). Every building sits in a city around the world: the
city gives it a UTC offset (its daily curves run in local time), one of the two MQTT regions ("eu" or "us")
and a WAN latency of 20-200 ms to that region's broker (the chaos proxy injects it per building). A
building has floors of zones (open office, meeting room, break room, lobby) of ten sensors each: four
temperature, two humidity, one CO2, one occupancy and two light sensors.

`Fleet.readings(start, end)` yields `(topic, payload)` for every reading due in `[start, end)`, in time
order: each sensor reports every 10 s at its own fixed phase, to `sensors/{tenant}/{building}/{floor}/
{zone}/{sensor_id}`, with the payload contract of `katas.sensors.readings`. `count_due(start, end)` says how
many readings that is without making them (the load generator paces by it).

Values come from daily curves in the building's local time:

- occupancy follows office hours on weekdays (arrivals, a lunch dip, departures; near zero at night and at
  weekends), meeting rooms are booked per half hour, break rooms fill at lunch, lobbies at arrival and
  departure;
- CO2 is the outdoor level (about 420 ppm) plus a rise per person that follows occupancy with a lag and
  decays as ventilation clears the air, so a full meeting room crosses 1,000 ppm now and then;
- temperature holds a 21-23 C setpoint while the HVAC runs, drifts towards a night setback (colder or
  warmer by climate) when it is off, warms with occupancy and has a slow drift, a per-sensor bias and noise;
  some devices report it in Fahrenheit;
- humidity stays within 30-60 % by climate, daily swing and occupancy;
- light is office lighting during working hours (or when someone is there) plus daylight by the window.

A value is a pure function of the fleet's seed, the sensor and the reading's time, so the same seed gives
the same readings however the calls are chunked. `Fleet.inject` makes a zone's sensors of one type report a
given value for an interval (anomalies for the alert tests); `malformed_messages` lists hostile messages
with the reason `Reading.from_mqtt` must refuse each with.

UTC offsets are fixed standard-time offsets (no daylight-saving switches) and there are no seasons or
public holidays: enough for daily curves, cheap to compute.
"""

from __future__ import annotations

import json
import math
import random
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, Literal, NamedTuple

from katas.sensors.readings import (
    MAX_CLOCK_SKEW,
    MAX_PAYLOAD_BYTES,
    NAME,
    SENSOR_TYPES,
    TOPIC_PREFIX,
    UNITS,
    Place,
    SensorType,
    format_timestamp,
)

Region = Literal["eu", "us"]
REGIONS: Final[tuple[Region, ...]] = ("eu", "us")
ZoneKind = Literal["open-office", "meeting-room", "break-room", "lobby"]

INTERVAL: Final = timedelta(seconds=10)
"""Every sensor reports once per interval, at its own fixed phase within it."""
INTERVAL_MS: Final = 10_000
ZONE_SIZE: Final = 10
ZONE_MIX: Final[tuple[tuple[SensorType, int], ...]] = (
    ("temperature", 4),
    ("humidity", 2),
    ("co2", 1),
    ("occupancy", 1),
    ("light", 2),
)
"""The sensors of one zone: several temperature and light sensors, two humidity, one CO2, one occupancy."""
LATENCY_MS: Final = (20, 200)
HUMIDITY_RANGE: Final = (30.0, 60.0)
SETPOINT_RANGE: Final = (21.0, 23.0)
MAX_TENANTS: Final = 12

_ABBREVIATION: Final[dict[SensorType, str]] = {
    "temperature": "tmp",
    "humidity": "hum",
    "co2": "co2",
    "occupancy": "occ",
    "light": "lux",
}
_DECIMALS: Final[dict[SensorType, bool]] = {
    "temperature": True,
    "humidity": True,
    "co2": False,
    "occupancy": False,
    "light": False,
}
"""Whether a type reports one decimal (True) or a whole number."""


class City(NamedTuple):
    code: str
    region: Region
    utc_offset_min: int
    latency_ms: int
    """Typical round trip to the region's broker (eu: Frankfurt, us: Virginia)."""
    setback_c: float
    """Where a building's temperature drifts with the HVAC off, relative to its setpoint."""
    humidity: float
    """Typical indoor relative humidity, %."""
    fahrenheit_share: float
    """Share of temperature devices set to Fahrenheit."""


CITIES: Final[tuple[City, ...]] = (
    City("lon", "eu", 0, 26, -3.5, 46.0, 0.02),
    City("ams", "eu", 60, 23, -4.0, 48.0, 0.02),
    City("fra", "eu", 60, 20, -4.0, 42.0, 0.02),
    City("par", "eu", 60, 25, -3.5, 45.0, 0.02),
    City("mad", "eu", 60, 42, -1.5, 36.0, 0.02),
    City("sto", "eu", 60, 38, -5.0, 35.0, 0.02),
    City("waw", "eu", 60, 34, -5.0, 40.0, 0.02),
    City("dxb", "eu", 240, 112, 4.0, 36.0, 0.05),
    City("bom", "eu", 330, 138, 3.0, 54.0, 0.02),
    City("sin", "eu", 480, 168, 3.0, 55.0, 0.02),
    City("nyc", "us", -300, 22, -3.0, 42.0, 0.65),
    City("bos", "us", -300, 27, -4.0, 38.0, 0.65),
    City("tor", "us", -300, 30, -5.0, 36.0, 0.10),
    City("chi", "us", -360, 36, -5.0, 38.0, 0.65),
    City("dfw", "us", -360, 44, 2.5, 40.0, 0.65),
    City("mex", "us", -360, 68, 0.0, 44.0, 0.05),
    City("den", "us", -420, 55, -3.0, 32.0, 0.65),
    City("sfo", "us", -480, 74, -1.5, 48.0, 0.65),
    City("sea", "us", -480, 78, -2.5, 50.0, 0.65),
    City("gru", "us", -180, 128, 1.0, 54.0, 0.02),
    City("tyo", "us", 540, 158, -2.0, 45.0, 0.02),
    City("syd", "us", 600, 184, 2.0, 52.0, 0.02),
)
"""Where buildings are: two MQTT regions, "eu" (Europe, the Gulf, India, Singapore) and "us" (the Americas
and the Pacific). Fixed standard-time offsets."""

_TENANT_PREFIXES: Final = (
    "Northgate",
    "Harbourline",
    "Meridian",
    "Summit",
    "Lakeshore",
    "Brightwater",
    "Crescent",
    "Oakfield",
    "Ironbridge",
    "Silverline",
    "Kingsway",
    "Redwood",
)
_TENANT_SUFFIXES: Final = (
    "Properties",
    "REIT",
    "Estates",
    "Commercial",
    "Realty",
    "Holdings",
    "Office Trust",
)

_SLOT_MS: Final = 600_000
"""Occupancy is constant over a 10-minute slot (a meeting room's over a 30-minute booking)."""
_MEETING_SLOTS: Final = 3
_HISTORY_SLOTS: Final = 15
"""How far back (2.5 h) a zone's air remembers who was there."""
_DAY_S: Final = 86_400
_TAU_ON_S: Final = 45 * 60.0
"""How fast the HVAC brings a zone to its setpoint after starting."""
_TAU_OFF_S: Final = 3 * 3600.0
"""How fast a zone drifts to its setback with the HVAC off."""
_DAY_FACTOR: Final = (0.85, 1.0, 1.0, 0.95, 0.7, 0.0, 0.0)
"""How busy each weekday is, Monday first (hybrid work empties Fridays)."""
_NOISE_SIZE: Final = 1 << 14
_NOISE_MASK: Final = _NOISE_SIZE - 1
_NOISE_STRIDE: Final = 40_503
_M64: Final = (1 << 64) - 1


def _unit(key: int) -> float:
    """A uniform number in [0, 1) from an integer key (splitmix64): per-slot randomness that is a pure
    function of its key, so values do not depend on the order they are asked for."""
    z = (key * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) / 18446744073709551616.0


def _bump(hour: float, center: float, width: float) -> float:
    x = (hour - center) / width
    return math.exp(-0.5 * x * x)


def _logistic(x: float) -> float:
    if x < -30.0:
        return 0.0
    if x > 30.0:
        return 1.0
    return 1.0 / (1.0 + math.exp(-x))


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _millis(moment: datetime) -> int:
    """Milliseconds since the epoch, rounded up (the first whole millisecond at or after the moment)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone")
    delta = moment - _EPOCH
    micros = (delta.days * _DAY_S + delta.seconds) * 1_000_000 + delta.microseconds
    return -(-micros // 1000)


def _ts_prefix(second: int) -> str:
    return (_EPOCH + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.")


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    """A slug (readings.NAME), the topic's first segment."""
    name: str
    buildings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Building:
    id: str
    tenant: str
    city: str
    region: Region
    latency_ms: int
    """WAN round trip to the region's broker, 20-200 ms."""
    utc_offset_min: int
    floors: tuple[str, ...]
    zones: tuple[str, ...]
    # Model constants, local hours.
    arrive_h: float
    leave_h: float
    hvac_on_h: float
    hvac_off_h: float
    lights_on_h: float
    lights_off_h: float
    busy: float
    """Share of desks used on a full day (hybrid work)."""
    outdoor_co2: float
    setback_c: float
    humidity: float
    salt: int

    @property
    def tz(self) -> timezone:
        return timezone(timedelta(minutes=self.utc_offset_min))

    def local_time(self, moment: datetime) -> datetime:
        return moment.astimezone(self.tz)

    def at_local(self, year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
        """An aware datetime at a wall-clock time of the building."""
        return datetime(year, month, day, hour, minute, tzinfo=self.tz)


@dataclass(frozen=True, slots=True)
class Zone:
    building: str
    floor: str
    id: str
    """Unique within the building (the floor is part of it)."""
    kind: ZoneKind
    capacity: int
    index: int
    """Position in `Fleet.zones`."""
    ppm_per_person: float
    """Steady-state CO2 rise per occupant (room volume and ventilation)."""
    tau_ms: float
    """Air exchange time constant."""
    setpoint: float
    humidity: float
    salt: int


@dataclass(frozen=True, slots=True)
class Sensor:
    place: Place
    type: SensorType
    unit: str
    """What the device reports in: the type's stored unit, or "F" for some temperature devices."""
    phase_ms: int
    """When in every 10 s interval it reports."""
    building: Building = field(repr=False, compare=False)
    zone: Zone = field(repr=False, compare=False)
    # Model constants.
    bias: float = 0.0
    drift_amp: float = 0.0
    drift_ms_per_radian: float = 1.0
    """The slow drift's period (3-9 h) over 2 pi."""
    drift_phase: float = 0.0
    window: float = 0.0
    """Daylight share (light sensors by a window are near 1, interior ones near 0)."""
    lit_lux: float = 0.0
    salt: int = 0

    @property
    def id(self) -> str:
        return self.place.sensor_id

    @property
    def topic(self) -> str:
        return self.place.topic


@dataclass(frozen=True, slots=True)
class Override:
    """A zone's sensors of one type report `value` (in the type's stored unit) in `[start, end)`."""

    building: str
    zone: str
    type: SensorType
    value: float
    start: datetime
    end: datetime


class Malformed(NamedTuple):
    topic: str
    payload: bytes
    reason: str
    """The `InvalidReadingError.reason` it must be refused with."""
    what: str


ValueModel = Callable[[Sensor, int], float]


class Fleet:
    """The buildings, zones and sensors of a seed, and what they report when. Build with `Fleet.build`."""

    def __init__(
        self,
        seed: int,
        tenants: tuple[Tenant, ...],
        buildings: tuple[Building, ...],
        zones: tuple[Zone, ...],
        sensors: tuple[Sensor, ...],
        noise: list[float],
    ) -> None:
        self.seed = seed
        self.tenants = tenants
        self.buildings = buildings
        self.zones = zones
        self.sensors = sensors
        self.overrides: list[Override] = []
        self._noise = noise
        self._buildings = {b.id: b for b in buildings}
        self._zones = {(z.building, z.id): z for z in zones}
        self._by_building: dict[str, list[Sensor]] = {b.id: [] for b in buildings}
        self._by_zone_type: dict[tuple[str, str, SensorType], list[int]] = {}
        for index, sensor in enumerate(sensors):
            self._by_building[sensor.place.building].append(sensor)
            key = (sensor.place.building, sensor.place.zone, sensor.type)
            self._by_zone_type.setdefault(key, []).append(index)
        models: dict[SensorType, ValueModel] = {
            "temperature": self._temperature,
            "humidity": self._humidity,
            "co2": self._co2,
            "occupancy": self._occupancy,
            "light": self._light,
        }
        self._models = [models[s.type] for s in sensors]
        self._order = sorted(range(len(sensors)), key=lambda i: (sensors[i].phase_ms, i))
        self._phases = [sensors[i].phase_ms for i in self._order]
        self._rows = [self._row(i) for i in self._order]
        # Per-zone memo of (slot, people in the slot, lagged people at the slot's start, people in the slots
        # it remembers): a pure function of the zone and slot, cached because every sensor of a zone asks
        # for it every 10 s, and moved on by one slot at a time as the clock advances.
        self._zone_slot = [-1] * len(zones)
        self._zone_people = [0] * len(zones)
        self._zone_start = [0.0] * len(zones)
        self._zone_history: list[list[int]] = [[] for _ in zones]

    def _row(self, index: int) -> tuple[int, str, str, str, ValueModel, Sensor, bool, int]:
        s = self.sensors[index]
        head = f'{{"sensor_id":"{s.id}","type":"{s.type}","value":'
        tail = f',"unit":"{s.unit}","ts":"'
        return (s.phase_ms, s.topic, head, tail, self._models[index], s, _DECIMALS[s.type], index)

    # ------------------------------------------------------------------------------ layout

    @classmethod
    def build(
        cls,
        seed: int,
        buildings: int = 50,
        sensors_per_building: int = 1000,
        tenants: int | None = None,
    ) -> Fleet:
        """The fleet of a seed: `tenants` property companies (5-8 by default, never more than buildings)
        owning `buildings` buildings of `sensors_per_building` sensors (a multiple of 10, one zone per 10)."""
        if buildings < 1:
            raise ValueError("a fleet needs at least one building")
        if sensors_per_building < ZONE_SIZE or sensors_per_building % ZONE_SIZE:
            raise ValueError(f"sensors per building must be a positive multiple of {ZONE_SIZE}")
        rng = random.Random(seed)
        n_tenants = tenants if tenants is not None else min(rng.randint(5, 8), buildings)
        if not 1 <= n_tenants <= min(buildings, MAX_TENANTS):
            raise ValueError(f"tenants must be 1..{min(buildings, MAX_TENANTS)}, got {n_tenants}")

        suffixes = rng.sample(_TENANT_SUFFIXES, len(_TENANT_SUFFIXES))
        names = [
            f"{prefix} {suffixes[i % len(suffixes)]}"
            for i, prefix in enumerate(rng.sample(_TENANT_PREFIXES, n_tenants))
        ]
        homes: list[Region] = [rng.choice(REGIONS) for _ in names]
        sizes = _uneven_sizes(buildings, n_tenants, rng)
        owners = [t for t, size in enumerate(sizes) for _ in range(size)]
        rng.shuffle(owners)

        zones: list[Zone] = []
        sensors: list[Sensor] = []
        building_list: list[Building] = []
        for number, owner in enumerate(owners, start=1):
            city = _pick_city(homes[owner], rng)
            building, building_zones = _make_building(
                number, _slug(names[owner]), city, sensors_per_building // ZONE_SIZE, len(zones), rng
            )
            building_list.append(building)
            zones.extend(building_zones)
            for zone in building_zones:
                sensors.extend(_make_sensors(building, zone, city, rng))
        owned: dict[int, list[str]] = {t: [] for t in range(n_tenants)}
        for owner, building in zip(owners, building_list, strict=True):
            owned[owner].append(building.id)
        tenant_list = tuple(
            Tenant(_slug(name), name, tuple(owned[t])) for t, name in enumerate(names) if owned[t]
        )
        noise = [max(-3.0, min(3.0, rng.gauss(0.0, 1.0))) for _ in range(_NOISE_SIZE)]
        return cls(seed, tenant_list, tuple(building_list), tuple(zones), tuple(sensors), noise)

    def building(self, building_id: str) -> Building:
        return self._buildings[building_id]

    def zone(self, building_id: str, zone_id: str) -> Zone:
        return self._zones[(building_id, zone_id)]

    def tenant(self, tenant_id: str) -> Tenant:
        for tenant in self.tenants:
            if tenant.id == tenant_id:
                return tenant
        raise KeyError(tenant_id)

    def sensors_of(self, building_id: str) -> list[Sensor]:
        return list(self._by_building[building_id])

    def iter_sensors(self, building_id: str | None = None) -> Iterator[tuple[Sensor, Place]]:
        """Every sensor (of one building, if given) with its place."""
        for sensor in self.sensors if building_id is None else self._by_building[building_id]:
            yield sensor, sensor.place

    def __len__(self) -> int:
        return len(self.sensors)

    # ------------------------------------------------------------------------------ readings

    def count_due(self, start: datetime, end: datetime) -> int:
        """How many readings `readings(start, end)` yields, without making them."""
        return max(0, self._count_before(_millis(end)) - self._count_before(_millis(start)))

    def _count_before(self, t_ms: int) -> int:
        window, into = divmod(t_ms, INTERVAL_MS)
        return window * len(self._phases) + bisect_left(self._phases, into)

    def readings(self, start: datetime, end: datetime) -> Iterator[tuple[str, bytes]]:
        """`(topic, payload)` of every reading due in `[start, end)`, in time order."""
        s_ms, e_ms = _millis(start), _millis(end)
        active = self._active_overrides(s_ms, e_ms)
        phases, rows, count = self._phases, self._rows, len(self._rows)
        base = s_ms - s_ms % INTERVAL_MS
        second, prefix = -1, ""
        while base < e_ms:
            lo = bisect_left(phases, s_ms - base) if base < s_ms else 0
            hi = bisect_left(phases, e_ms - base) if base + INTERVAL_MS > e_ms else count
            for j in range(lo, hi):
                _, topic, head, tail, model, sensor, decimals, index = rows[j]
                t_ms = base + phases[j]
                if t_ms // 1000 != second:
                    second = t_ms // 1000
                    prefix = _ts_prefix(second)
                value = model(sensor, t_ms)
                if active and index in active:
                    value = _overridden(sensor, value, t_ms, active[index])
                text = f"{value:.1f}" if decimals else str(int(value + 0.5))
                yield topic, f'{head}{text}{tail}{prefix}{t_ms % 1000:03d}Z"}}'.encode()
            base += INTERVAL_MS

    def value(self, sensor: Sensor, at: datetime) -> float:
        """What the sensor reports at a moment (in its own unit, rounded as in its payload), overrides
        included. For tests and checks; a sensor only reports at its phase."""
        t_ms = _millis(at)
        value = self._models[self._index(sensor)](sensor, t_ms)
        overrides = self._active_overrides(t_ms, t_ms + 1).get(self._index(sensor))
        if overrides:
            value = _overridden(sensor, value, t_ms, overrides)
        return round(value, 1) if _DECIMALS[sensor.type] else float(int(value + 0.5))

    def _index(self, sensor: Sensor) -> int:
        for index in self._by_zone_type[(sensor.place.building, sensor.place.zone, sensor.type)]:
            if self.sensors[index].id == sensor.id:
                return index
        raise KeyError(sensor.id)

    # ------------------------------------------------------------------------------ anomalies

    def inject(
        self, building: str, zone: str, sensor_type: SensorType, value: float, start: datetime, end: datetime
    ) -> Override:
        """Make the zone's sensors of `sensor_type` report `value` (in the type's stored unit; Fahrenheit devices
        send it converted) in `[start, end)`; returns the override, which `remove` takes back."""
        override = Override(building, zone, sensor_type, value, start, end)
        self.add(override)
        return override

    def add(self, override: Override) -> None:
        if (override.building, override.zone) not in self._zones:
            raise KeyError(f"no zone {override.zone!r} in building {override.building!r}")
        if override.type not in SENSOR_TYPES:
            raise ValueError(f"unknown sensor type {override.type!r}")
        if not math.isfinite(override.value):
            raise ValueError(f"override value {override.value!r} is not finite")
        if _millis(override.end) <= _millis(override.start):
            raise ValueError("an override must end after it starts")
        self.overrides.append(override)

    def remove(self, override: Override) -> None:
        self.overrides.remove(override)

    def clear_overrides(self) -> None:
        self.overrides.clear()

    def _active_overrides(self, s_ms: int, e_ms: int) -> dict[int, list[tuple[int, int, float]]]:
        active: dict[int, list[tuple[int, int, float]]] = {}
        for o in self.overrides:
            o_start, o_end = _millis(o.start), _millis(o.end)
            if o_start < e_ms and s_ms < o_end:
                for index in self._by_zone_type.get((o.building, o.zone, o.type), ()):
                    active.setdefault(index, []).append((o_start, o_end, o.value))
        return active

    # ------------------------------------------------------------------------------ value models

    def _noise_at(self, sensor: Sensor, t_ms: int) -> float:
        return self._noise[(sensor.salt + (t_ms // INTERVAL_MS) * _NOISE_STRIDE) & _NOISE_MASK]

    def _drift(self, sensor: Sensor, t_ms: int) -> float:
        return sensor.drift_amp * math.sin(t_ms / sensor.drift_ms_per_radian + sensor.drift_phase)

    def _people(self, zone: Zone, building: Building, slot: int) -> int:
        """People in a zone during a slot, from the building's office hours in local time."""
        meeting = zone.kind == "meeting-room"
        if meeting:
            key = slot // _MEETING_SLOTS
            middle_ms = (key * _MEETING_SLOTS + _MEETING_SLOTS / 2) * _SLOT_MS
        else:
            key = slot
            middle_ms = (slot + 0.5) * _SLOT_MS
        local_s = middle_ms / 1000 + building.utc_offset_min * 60
        day, second = divmod(local_s, _DAY_S)
        hour = second / 3600
        weekday = (int(day) + 3) % 7  # 1970-01-01 was a Thursday
        workday = weekday < 5
        if workday:
            level = (
                _logistic((hour - building.arrive_h) / 0.45)
                * (1.0 - _logistic((hour - building.leave_h) / 0.55))
                * _DAY_FACTOR[weekday]
            )
        else:
            level = 0.04 * _bump(hour, 13.0, 2.5)
        u1 = _unit((zone.salt << 32) + 2 * key)
        u2 = _unit((zone.salt << 32) + 2 * key + 1)
        if meeting:
            if u1 >= 0.8 * level:
                return 0
            return max(1, round(zone.capacity * (0.25 + 0.8 * u2)))
        if zone.kind == "open-office":
            shape = level * (1.0 - 0.35 * _bump(hour, 12.75, 0.6))
            if workday and 19.5 <= hour < 21.5 and u2 < 0.25:
                return 1  # the cleaners
        elif zone.kind == "break-room":
            shape = 0.15 * level
            if workday:
                shape += _DAY_FACTOR[weekday] * (
                    0.85 * _bump(hour, 12.6, 0.45) + 0.3 * (_bump(hour, 10.25, 0.3) + _bump(hour, 15.25, 0.3))
                )
        else:
            shape = 0.1 * level
            if workday:
                shape += _DAY_FACTOR[weekday] * (
                    0.7 * _bump(hour, building.arrive_h, 0.45) + 0.6 * _bump(hour, building.leave_h, 0.5)
                )
        expected = zone.capacity * building.busy * shape * (0.8 + 0.4 * u1)
        return int(expected + u2)

    def _zone_state(self, sensor: Sensor, t_ms: int) -> tuple[int, float]:
        """People in the sensor's zone now, and the lagged head count the air reflects (first-order
        response to the slots' head counts, with the zone's air exchange time constant)."""
        zone, building = sensor.zone, sensor.building
        slot = t_ms // _SLOT_MS
        i = zone.index
        if self._zone_slot[i] != slot:
            # People in slots slot-16 .. slot; one more slot when time moved on by one, else all of them.
            history = self._zone_history[i]
            if self._zone_slot[i] == slot - 1:
                history = [*history[1:], self._people(zone, building, slot)]
            else:
                history = [
                    self._people(zone, building, k) for k in range(slot - _HISTORY_SLOTS - 1, slot + 1)
                ]
            decay = math.exp(-_SLOT_MS / zone.tau_ms)
            lagged = float(history[0])
            for people in history[1:-1]:
                lagged = people + (lagged - people) * decay
            self._zone_history[i] = history
            self._zone_slot[i] = slot
            self._zone_people[i] = history[-1]
            self._zone_start[i] = lagged
        people = self._zone_people[i]
        lag = people + (self._zone_start[i] - people) * math.exp(-(t_ms - slot * _SLOT_MS) / zone.tau_ms)
        return people, lag

    def _occupancy(self, sensor: Sensor, t_ms: int) -> float:
        people, _ = self._zone_state(sensor, t_ms)
        noise = self._noise_at(sensor, t_ms)
        miscount = 1 if noise > 1.8 else (-1 if noise < -1.8 and people > 0 else 0)
        return float(people + miscount)

    def _co2(self, sensor: Sensor, t_ms: int) -> float:
        _, lag = self._zone_state(sensor, t_ms)
        value = sensor.building.outdoor_co2 + sensor.bias + sensor.zone.ppm_per_person * lag
        return max(380.0, value + 10.0 * self._noise_at(sensor, t_ms))

    def _temperature(self, sensor: Sensor, t_ms: int) -> float:
        building, zone = sensor.building, sensor.zone
        day, second = divmod(t_ms / 1000 + building.utc_offset_min * 60, _DAY_S)
        day_number = int(day)
        on_s, off_s = building.hvac_on_h * 3600, building.hvac_off_h * 3600
        setpoint = zone.setpoint
        setback = setpoint + building.setback_c
        if (day_number + 3) % 7 < 5 and on_s <= second < off_s:
            back = _days_since_workday(day_number)
            since_off = back * _DAY_S + on_s - off_s
            at_start = setback + (setpoint - setback) * math.exp(-since_off / _TAU_OFF_S)
            value = setpoint + (at_start - setpoint) * math.exp(-(second - on_s) / _TAU_ON_S)
        else:
            if (day_number + 3) % 7 < 5 and second >= off_s:
                since_off = second - off_s
            else:
                since_off = _days_since_workday(day_number) * _DAY_S + second - off_s
            value = setback + (setpoint - setback) * math.exp(-since_off / _TAU_OFF_S)
        _, lag = self._zone_state(sensor, t_ms)
        value += 1.2 * lag / zone.capacity + sensor.bias + self._drift(sensor, t_ms)
        value += 0.06 * self._noise_at(sensor, t_ms)
        return value * 1.8 + 32.0 if sensor.unit == "F" else value

    def _humidity(self, sensor: Sensor, t_ms: int) -> float:
        zone = sensor.zone
        local_s = t_ms / 1000 + sensor.building.utc_offset_min * 60
        daily = 1.5 * math.sin(2 * math.pi * (local_s % _DAY_S / _DAY_S - 0.375))
        _, lag = self._zone_state(sensor, t_ms)
        value = zone.humidity + daily + 4.0 * lag / zone.capacity + sensor.bias + self._drift(sensor, t_ms)
        value += 0.4 * self._noise_at(sensor, t_ms)
        return min(HUMIDITY_RANGE[1], max(HUMIDITY_RANGE[0], value))

    def _light(self, sensor: Sensor, t_ms: int) -> float:
        building = sensor.building
        day, second = divmod(t_ms / 1000 + building.utc_offset_min * 60, _DAY_S)
        hour = second / 3600
        people, _ = self._zone_state(sensor, t_ms)
        working = (int(day) + 3) % 7 < 5 and building.lights_on_h <= hour < building.lights_off_h
        value = sensor.lit_lux if working or people > 0 else 3.0  # emergency lighting
        if 6.5 < hour < 18.5 and sensor.window > 0.0:
            clouds = 0.25 + 0.75 * _unit((building.salt << 32) + int(day))
            value += sensor.window * 2500.0 * math.sin(math.pi * (hour - 6.5) / 12.0) * clouds
        return max(0.0, value * (1.0 + 0.03 * self._noise_at(sensor, t_ms)))


def _overridden(sensor: Sensor, value: float, t_ms: int, overrides: list[tuple[int, int, float]]) -> float:
    for start, end, forced in overrides:
        if start <= t_ms < end:
            return forced * 1.8 + 32.0 if sensor.unit == "F" else forced
    return value


def _days_since_workday(day_number: int) -> int:
    """Days back to the previous workday (1 on Tuesday to Saturday, 2 on Sunday, 3 on Monday)."""
    back = 1
    while (day_number - back + 3) % 7 >= 5:
        back += 1
    return back


# ---------------------------------------------------------------------------------- building the layout


def _slug(name: str) -> str:
    slug = "-".join(name.lower().split())
    assert NAME.fullmatch(slug), slug
    return slug


def _uneven_sizes(total: int, parts: int, rng: random.Random) -> list[int]:
    """Split `total` into `parts` sizes of at least one, unevenly (a few large owners, several small)."""
    weights = [rng.lognormvariate(0.0, 0.8) for _ in range(parts)]
    spare = total - parts
    shares = [spare * w / sum(weights) for w in weights]
    sizes = [1 + int(share) for share in shares]
    by_remainder = sorted(range(parts), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    for i in by_remainder[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes


def _pick_city(home: Region, rng: random.Random) -> City:
    if rng.random() < 0.75:
        return rng.choice([c for c in CITIES if c.region == home])
    return rng.choice(CITIES)


def _floor_count(zones: int, rng: random.Random) -> int:
    divisors = [f for f in range(1, zones + 1) if zones % f == 0]
    fitting = [f for f in divisors if 4 <= zones // f <= 25 and f <= 40]
    return rng.choice(fitting or [f for f in divisors if zones // f <= 25] or [zones])


def _zone_kinds(count: int, ground: bool, rng: random.Random) -> list[ZoneKind]:
    kinds: list[ZoneKind] = []
    if ground and count >= 4:
        kinds.append("lobby")
    if count >= 6:
        kinds.append("break-room")
    if count >= 2:
        kinds.extend(["meeting-room"] * max(1, round(count * 0.25)))
    kinds.extend(["open-office"] * (count - len(kinds)))
    rng.shuffle(kinds)
    return kinds


_CAPACITY: Final[dict[ZoneKind, tuple[int, int]]] = {
    "open-office": (8, 30),
    "meeting-room": (4, 14),
    "break-room": (6, 20),
    "lobby": (10, 40),
}
_PPM_PER_PERSON: Final[dict[ZoneKind, tuple[float, float]]] = {
    "open-office": (16.0, 28.0),
    "meeting-room": (45.0, 75.0),
    "break-room": (22.0, 40.0),
    "lobby": (6.0, 12.0),
}
_TAU_MINUTES: Final[dict[ZoneKind, tuple[float, float]]] = {
    "open-office": (30.0, 50.0),
    "meeting-room": (12.0, 25.0),
    "break-room": (15.0, 30.0),
    "lobby": (15.0, 25.0),
}


def _make_building(
    number: int, tenant: str, city: City, n_zones: int, first_zone: int, rng: random.Random
) -> tuple[Building, list[Zone]]:
    building_id = f"{city.code}-{number:03d}"
    n_floors = _floor_count(n_zones, rng)
    per_floor = n_zones // n_floors
    floors = tuple(f"f{n:02d}" for n in range(1, n_floors + 1))
    arrive = rng.uniform(7.9, 9.1)
    leave = rng.uniform(16.9, 18.4)
    latency = city.latency_ms + rng.uniform(-6.0, 16.0)
    base_setpoint = rng.uniform(21.3, 22.7)
    humidity = city.humidity + rng.uniform(-2.0, 2.0)
    building = Building(
        id=building_id,
        tenant=tenant,
        city=city.code,
        region=city.region,
        latency_ms=round(min(LATENCY_MS[1], max(LATENCY_MS[0], latency))),
        utc_offset_min=city.utc_offset_min,
        floors=floors,
        zones=tuple(f"{floor}-z{n:02d}" for floor in floors for n in range(1, per_floor + 1)),
        arrive_h=arrive,
        leave_h=leave,
        hvac_on_h=arrive - rng.uniform(1.5, 2.5),
        hvac_off_h=leave + rng.uniform(0.5, 1.5),
        lights_on_h=arrive - rng.uniform(0.5, 1.2),
        lights_off_h=leave + rng.uniform(1.0, 2.5),
        busy=rng.uniform(0.55, 0.95),
        outdoor_co2=415.0 + rng.uniform(0.0, 30.0),
        setback_c=city.setback_c + rng.uniform(-1.0, 1.0),
        humidity=humidity,
        salt=rng.getrandbits(31),
    )
    zones: list[Zone] = []
    for floor in floors:
        for n, kind in enumerate(_zone_kinds(per_floor, floor == floors[0], rng), start=1):
            low, high = _CAPACITY[kind]
            ppm_low, ppm_high = _PPM_PER_PERSON[kind]
            tau_low, tau_high = _TAU_MINUTES[kind]
            zones.append(
                Zone(
                    building=building_id,
                    floor=floor,
                    id=f"{floor}-z{n:02d}",
                    kind=kind,
                    capacity=rng.randint(low, high),
                    index=first_zone + len(zones),
                    ppm_per_person=rng.uniform(ppm_low, ppm_high),
                    tau_ms=rng.uniform(tau_low, tau_high) * 60_000,
                    setpoint=min(
                        SETPOINT_RANGE[1], max(SETPOINT_RANGE[0], base_setpoint + rng.uniform(-0.4, 0.4))
                    ),
                    humidity=min(51.0, max(36.0, humidity + rng.uniform(-2.0, 2.0))),
                    salt=rng.getrandbits(31),
                )
            )
    return building, zones


def _make_sensors(building: Building, zone: Zone, city: City, rng: random.Random) -> list[Sensor]:
    sensors: list[Sensor] = []
    for kind, count in ZONE_MIX:
        for n in range(1, count + 1):
            sensor_id = f"{zone.building}-{zone.id}-{_ABBREVIATION[kind]}{n}"
            place = Place(building.tenant, building.id, zone.floor, zone.id, sensor_id)
            unit = "F" if kind == "temperature" and rng.random() < city.fahrenheit_share else UNITS[kind]
            bias = {"temperature": 0.25, "humidity": 1.0, "co2": 12.0}.get(kind, 0.0)
            perimeter = rng.random() < 0.6
            sensors.append(
                Sensor(
                    place=place,
                    type=kind,
                    unit=unit,
                    phase_ms=rng.randrange(INTERVAL_MS),
                    building=building,
                    zone=zone,
                    bias=max(-3 * bias, min(3 * bias, rng.gauss(0.0, bias))) if bias else 0.0,
                    drift_amp={"temperature": rng.uniform(0.15, 0.4), "humidity": rng.uniform(0.5, 1.5)}.get(
                        kind, 0.0
                    ),
                    drift_ms_per_radian=rng.uniform(3.0, 9.0) * 3_600_000 / (2 * math.pi),
                    drift_phase=rng.uniform(0.0, 2 * math.pi),
                    window=(rng.uniform(0.2, 1.0) if perimeter else rng.uniform(0.0, 0.05))
                    if kind == "light"
                    else 0.0,
                    lit_lux=rng.uniform(300.0, 500.0) if kind == "light" else 0.0,
                    salt=rng.randrange(_NOISE_SIZE),
                )
            )
    return sensors


# ---------------------------------------------------------------------------------- hostile input


_DEFAULT_PLACE: Final = Place("northgate-properties", "lon-001", "f01", "f01-z01", "lon-001-f01-z01-tmp1")


def malformed_messages(now: datetime, place: Place | None = None) -> list[Malformed]:
    """Messages that are not readings, each with the reason `Reading.from_mqtt(topic, payload, now=now)`
    must refuse it with. Each breaks one rule and keeps every earlier check passing, so the reason is
    exactly the one stated. `place` is where the well-formed parts claim to be (a real sensor of a fleet,
    for tests through a broker whose ACLs check the tenant)."""
    p = place or _DEFAULT_PLACE
    topic = p.topic
    stamp = format_timestamp(now)

    def body(**changes: object) -> dict[str, object]:
        fields: dict[str, object] = {
            "sensor_id": p.sensor_id,
            "type": "temperature",
            "value": 21.5,
            "unit": "C",
            "ts": stamp,
        }
        for key, value in changes.items():
            if value is _DROP:
                del fields[key]
            else:
                fields[key] = value
        return fields

    def payload(**changes: object) -> bytes:
        return json.dumps(body(**changes), separators=(",", ":")).encode()

    good = payload()
    segments = (p.tenant, p.building, p.floor, p.zone, p.sensor_id)

    def with_segment(index: int, value: str) -> str:
        parts = list(segments)
        parts[index] = value
        return "/".join((TOPIC_PREFIX, *parts))

    messages = [
        Malformed(topic.replace(TOPIC_PREFIX, "telemetry", 1), good, "topic", "wrong topic prefix"),
        Malformed("/".join((TOPIC_PREFIX, *segments[:4])), good, "topic", "no sensor id segment"),
        Malformed(f"{topic}/extra", good, "topic", "one segment too many"),
        Malformed(with_segment(2, ""), good, "topic", "empty floor segment"),
        Malformed(with_segment(1, ".."), good, "topic", "path traversal as building"),
        Malformed(with_segment(0, "acme;DROP TABLE readings"), good, "topic", "SQL in the tenant segment"),
        Malformed(with_segment(3, "z" * 65), good, "topic", "zone name longer than 64"),
        Malformed(with_segment(3, "zöne"), good, "topic", "non-ASCII zone name"),
        Malformed(with_segment(0, "-tenant"), good, "topic", "name starting with a dash"),
        Malformed(topic, good + b" " * (MAX_PAYLOAD_BYTES + 1 - len(good)), "oversized", "padded past 4 KiB"),
        Malformed(
            topic,
            json.dumps({**body(), "firmware_log": "x" * 8000}).encode(),
            "oversized",
            "valid reading with a huge extra field",
        ),
        Malformed(topic, b"temperature=21.5", "json", "not JSON"),
        Malformed(topic, b"", "json", "empty payload"),
        Malformed(topic, good[:-7], "json", "truncated JSON"),
        Malformed(topic, b"\xff\xfe" + good, "json", "not UTF-8"),
        Malformed(topic, b"[" + good + b"]", "json", "JSON array of a reading"),
        Malformed(topic, b'"21.5"', "json", "JSON string"),
        Malformed(topic, b"null", "json", "JSON null"),
        Malformed(topic, payload(sensor_id="lon-001-f01-z01-tmp9"), "sensor_id", "sensor id not the topic's"),
        Malformed(topic, payload(sensor_id=_DROP), "sensor_id", "no sensor id"),
        Malformed(topic, payload(sensor_id=7), "sensor_id", "numeric sensor id"),
        Malformed(topic, payload(type="pressure"), "type", "unknown type"),
        Malformed(topic, payload(type="CO2"), "type", "type in the wrong case"),
        Malformed(topic, payload(type=_DROP), "type", "no type"),
        Malformed(topic, good.replace(b"21.5", b"NaN"), "value", "NaN"),
        Malformed(topic, good.replace(b"21.5", b"-Infinity"), "value", "-Infinity"),
        Malformed(topic, good.replace(b"21.5", b"1e999"), "value", "overflowing number"),
        Malformed(topic, payload(value="21.5"), "value", "number as a string"),
        Malformed(topic, payload(value=True), "value", "boolean"),
        Malformed(topic, payload(value=None), "value", "null"),
        Malformed(topic, payload(value=[21.5]), "value", "array"),
        Malformed(topic, payload(value=_DROP), "value", "no value"),
        Malformed(topic, payload(unit="K"), "unit", "kelvin"),
        Malformed(topic, payload(type="humidity", value=45, unit="ppm"), "unit", "unit of another type"),
        Malformed(topic, payload(unit=_DROP), "unit", "no unit"),
        Malformed(topic, payload(unit=1), "unit", "numeric unit"),
        Malformed(topic, payload(value=150.0), "range", "150 C"),
        Malformed(topic, payload(value=300.0, unit="F"), "range", "300 F (149 C)"),
        Malformed(topic, payload(type="humidity", value=120, unit="%"), "range", "120 % humidity"),
        Malformed(topic, payload(type="co2", value=-5, unit="ppm"), "range", "negative CO2"),
        Malformed(topic, payload(type="occupancy", value=-1, unit="people"), "range", "negative head count"),
        Malformed(topic, payload(ts=stamp.removesuffix("Z")), "ts", "no time zone"),
        Malformed(topic, payload(ts=int(now.timestamp())), "ts", "epoch seconds"),
        Malformed(topic, payload(ts="yesterday"), "ts", "not a timestamp"),
        Malformed(topic, payload(ts="2025-02-30T10:00:00Z"), "ts", "no such day"),
        Malformed(topic, payload(ts=_DROP), "ts", "no timestamp"),
        Malformed(
            topic,
            payload(ts=format_timestamp(now + MAX_CLOCK_SKEW + timedelta(minutes=1))),
            "future",
            "six minutes ahead",
        ),
        Malformed(topic, payload(ts="2099-01-01T00:00:00Z"), "future", "far future"),
    ]
    return messages


class _Drop:
    """Marks a field to leave out of a malformed payload."""


_DROP: Final = _Drop()
