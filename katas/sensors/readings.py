"""A sensor reading as the platform accepts it: where it comes from (the MQTT topic), what it says (the
JSON payload), and why one is refused.

The topic carries the reading's place, `sensors/{tenant}/{building}/{floor}/{zone}/{sensor_id}`, and the
payload its measurement, `{"sensor_id", "type", "value", "unit", "ts"}`. Both are checked here, once, at the
edge of the pipeline: everything downstream (aggregation, rules, stores) takes a `Reading` as valid. A
message that is not a reading raises `InvalidReadingError` with a reason, which the bridge writes to the
dead-letter topic beside the original bytes, so nothing is dropped silently.

Temperatures sent in Fahrenheit are converted to Celsius here, so every aggregate of a type has one unit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

SensorType = Literal["temperature", "humidity", "co2", "occupancy", "light"]
SENSOR_TYPES: Final[tuple[SensorType, ...]] = get_args(SensorType)

UNITS: Final[dict[SensorType, str]] = {
    "temperature": "C",
    "humidity": "%",
    "co2": "ppm",
    "occupancy": "people",
    "light": "lux",
}
"""The unit every stored value of a type is in."""

UNIT_ALIASES: Final[dict[SensorType, dict[str, str]]] = {
    "temperature": {"c": "C", "°c": "C", "degc": "C", "celsius": "C", "f": "F", "°f": "F", "degf": "F"},
    "humidity": {"%": "%", "%rh": "%", "rh": "%"},
    "co2": {"ppm": "ppm"},
    "occupancy": {"people": "people", "persons": "people", "count": "people"},
    "light": {"lux": "lux", "lx": "lux"},
}
"""Spellings devices use, by type (compared case-insensitively), and the unit each means."""

PLAUSIBLE: Final[dict[SensorType, tuple[float, float]]] = {
    "temperature": (-60.0, 100.0),
    "humidity": (0.0, 100.0),
    "co2": (0.0, 50_000.0),
    "occupancy": (0.0, 10_000.0),
    "light": (0.0, 200_000.0),
}
"""Values outside these bounds (in the stored unit) are a broken sensor, not a reading."""

TOPIC_PREFIX: Final = "sensors"
SUBSCRIPTION: Final = f"{TOPIC_PREFIX}/+/+/+/+/+"
"""The MQTT filter that matches every reading topic, and nothing else."""
NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
"""A tenant, building, floor, zone or sensor id: what a path segment and a database name can both hold."""
MAX_PAYLOAD_BYTES: Final = 4096
"""Readings are about 200 bytes; anything far bigger is not one."""
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
"""A reading stamped further in the future than this comes from a clock that is wrong."""


REASONS: Final = frozenset(
    {"topic", "oversized", "json", "sensor_id", "type", "value", "unit", "range", "ts", "future"}
)
"""Every `InvalidReadingError.reason`: the labels of the dead-letter topic and the refusal metric."""


class InvalidReadingError(ValueError):
    """A message that is not a valid reading; `reason` is a short, stable label for metrics and the
    dead-letter topic, the message says what exactly is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Place:
    """Where a sensor is, as its topic says."""

    tenant: str
    building: str
    floor: str
    zone: str
    sensor_id: str

    @classmethod
    def from_topic(cls, topic: str) -> Place:
        parts = topic.split("/")
        if len(parts) != 6 or parts[0] != TOPIC_PREFIX:
            raise InvalidReadingError(
                "topic", f"expected {TOPIC_PREFIX}/tenant/building/floor/zone/sensor_id, got {topic!r}"
            )
        for label, part in zip(("tenant", "building", "floor", "zone", "sensor id"), parts[1:], strict=True):
            if not NAME.fullmatch(part):
                raise InvalidReadingError(
                    "topic", f"{label} {part!r} is not a name (letters, digits, _ . -; 64 at most)"
                )
        return cls(*parts[1:])

    @property
    def topic(self) -> str:
        return "/".join((TOPIC_PREFIX, self.tenant, self.building, self.floor, self.zone, self.sensor_id))


@dataclass(frozen=True, slots=True)
class Reading:
    """One valid measurement, in its type's stored unit, with an aware UTC timestamp."""

    place: Place
    type: SensorType
    value: float
    ts: datetime

    @property
    def unit(self) -> str:
        return UNITS[self.type]

    @classmethod
    def from_mqtt(cls, topic: str, payload: bytes, *, now: datetime | None = None) -> Reading:
        """Check a message from the broker; InvalidReadingError says why it is not a reading."""
        place = Place.from_topic(topic)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidReadingError("oversized", f"{len(payload)} bytes, at most {MAX_PAYLOAD_BYTES}")
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidReadingError("json", f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidReadingError("json", f"expected a JSON object, got {type(body).__name__}")
        return cls.from_fields(place, body, now=now)

    @classmethod
    def from_fields(cls, place: Place, body: dict[str, Any], *, now: datetime | None = None) -> Reading:
        sensor_id = body.get("sensor_id")
        if sensor_id != place.sensor_id:
            raise InvalidReadingError(
                "sensor_id", f"payload sensor_id {sensor_id!r} is not the topic's {place.sensor_id!r}"
            )
        kind = body.get("type")
        if kind not in SENSOR_TYPES:
            raise InvalidReadingError("type", f"type {kind!r} is not one of {', '.join(SENSOR_TYPES)}")
        value = body.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidReadingError("value", f"value {value!r} is not a finite number")
        unit = body.get("unit")
        canonical = UNIT_ALIASES[kind].get(unit.strip().lower()) if isinstance(unit, str) else None
        if canonical is None:
            raise InvalidReadingError(
                "unit", f"unit {unit!r} is not a unit of {kind} (stored in {UNITS[kind]})"
            )
        stored = (float(value) - 32.0) * 5.0 / 9.0 if canonical == "F" else float(value)
        low, high = PLAUSIBLE[kind]
        if not low <= stored <= high:
            raise InvalidReadingError(
                "range", f"{kind} {stored:g} {UNITS[kind]} is outside {low:g}..{high:g}"
            )
        ts = parse_timestamp(body.get("ts"))
        if ts - (now or datetime.now(UTC)) > MAX_CLOCK_SKEW:
            raise InvalidReadingError(
                "future", f"ts {ts.isoformat()} is more than {MAX_CLOCK_SKEW} ahead of now"
            )
        return cls(place, kind, stored, ts)

    def to_json(self) -> bytes:
        """The reading as the readings topic carries it (the payload contract, in stored units)."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        p = self.place
        return {
            "tenant": p.tenant,
            "building": p.building,
            "floor": p.floor,
            "zone": p.zone,
            "sensor_id": p.sensor_id,
            "type": self.type,
            "value": self.value,
            "unit": self.unit,
            "ts": format_timestamp(self.ts),
        }

    @classmethod
    def from_json(cls, data: bytes | str) -> Reading:
        """Read a reading back from the readings topic (written by `to_json`)."""
        body = json.loads(data)
        if not isinstance(body, dict):
            raise InvalidReadingError("json", "expected a JSON object")
        try:
            place = Place(*(str(body[k]) for k in ("tenant", "building", "floor", "zone", "sensor_id")))
        except KeyError as exc:
            raise InvalidReadingError("json", f"missing {exc}") from None
        return cls.from_fields(place, body, now=datetime.max.replace(tzinfo=UTC))


def parse_timestamp(value: object) -> datetime:
    """An RFC 3339 timestamp with a time zone, as an aware UTC datetime."""
    if not isinstance(value, str):
        raise InvalidReadingError("ts", f"ts {value!r} is not an RFC 3339 string")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidReadingError("ts", f"ts {value!r} is not RFC 3339") from None
    if ts.tzinfo is None:
        raise InvalidReadingError("ts", f"ts {value!r} has no time zone")
    return ts.astimezone(UTC)


def format_timestamp(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RecentReadings:
    """Remembers the last few timestamps of every sensor, to tell a redelivered reading from a new one.

    MQTT QoS 1 and the log both deliver at least once, so the same reading (same sensor, same timestamp)
    can arrive twice; counted twice it would skew a window's count and mean. A sensor reports every 10 s,
    so its last `depth` timestamps cover the last minutes, longer than any redelivery takes to arrive.
    Memory is `depth` timestamps per sensor, whatever the rate."""

    __slots__ = ("_depth", "_seen")

    def __init__(self, depth: int = 8) -> None:
        self._depth = depth
        self._seen: dict[str, list[datetime]] = {}

    def first_time(self, reading: Reading) -> bool:
        """True the first time a (sensor, timestamp) is offered; False for a repeat."""
        key = reading.place.topic
        recent = self._seen.get(key)
        if recent is None:
            self._seen[key] = [reading.ts]
            return True
        if reading.ts in recent:
            return False
        recent.append(reading.ts)
        if len(recent) > self._depth:
            recent.remove(min(recent))
        return True

    def __len__(self) -> int:
        return len(self._seen)
