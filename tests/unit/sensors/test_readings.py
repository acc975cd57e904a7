"""The reading contract at the pipeline's edge: valid messages become `Reading`s, anything else is refused
with a reason (which the bridge dead-letters), and no input makes the parser fail any other way."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katas.sensors.readings import (
    MAX_PAYLOAD_BYTES,
    PLAUSIBLE,
    REASONS,
    SENSOR_TYPES,
    UNITS,
    InvalidReadingError,
    Place,
    Reading,
    RecentReadings,
    format_timestamp,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TOPIC = "sensors/acme/b01/f03/z07/s-0042"


def payload(**fields: Any) -> bytes:
    body = {"sensor_id": "s-0042", "type": "co2", "value": 612, "unit": "ppm", "ts": "2026-11-29T11:59:58Z"}
    body.update(fields)
    return json.dumps(body).encode()


def refused(topic: str, data: bytes) -> str:
    with pytest.raises(InvalidReadingError) as caught:
        Reading.from_mqtt(topic, data, now=NOW)
    return caught.value.reason


def outcome(topic: str, data: bytes) -> Reading | str:
    """The reading, or the reason it was refused."""
    try:
        return Reading.from_mqtt(topic, data, now=NOW)
    except InvalidReadingError as exc:
        return exc.reason


def test_a_valid_reading_keeps_its_place_value_and_time() -> None:
    reading = Reading.from_mqtt(TOPIC, payload(), now=NOW)
    assert reading.place == Place("acme", "b01", "f03", "z07", "s-0042")
    assert (reading.type, reading.value, reading.unit) == ("co2", 612.0, "ppm")
    assert reading.ts == datetime(2026, 11, 29, 11, 59, 58, tzinfo=UTC)
    assert reading.place.topic == TOPIC


def test_fahrenheit_is_stored_as_celsius() -> None:
    reading = Reading.from_mqtt(TOPIC, payload(type="temperature", value=71.6, unit="°F"), now=NOW)
    assert reading.unit == "C"
    assert reading.value == pytest.approx(22.0)


def test_offsets_are_converted_to_utc() -> None:
    reading = Reading.from_mqtt(TOPIC, payload(ts="2026-11-29T12:59:58+01:00"), now=NOW)
    assert reading.ts == datetime(2026, 11, 29, 11, 59, 58, tzinfo=UTC)


def test_the_log_form_reads_back_to_the_same_reading() -> None:
    reading = Reading.from_mqtt(TOPIC, payload(type="temperature", value=70, unit="F"), now=NOW)
    assert Reading.from_json(reading.to_json()) == reading
    assert json.loads(reading.to_json())["ts"] == format_timestamp(reading.ts)


@pytest.mark.parametrize(
    ("topic", "data", "reason"),
    [
        ("sensors/acme/b01/f03/z07", payload(), "topic"),
        ("other/acme/b01/f03/z07/s-0042", payload(), "topic"),
        ("sensors/acme/b01/f03/z07/s-0042/extra", payload(), "topic"),
        ("sensors/ac me/b01/f03/z07/s-0042", payload(), "topic"),
        ("sensors/acme/../f03/z07/s-0042", payload(), "topic"),
        ("sensors//b01/f03/z07/s-0042", payload(), "topic"),
        ("sensors/acme/b01/f03/z07/" + "s" * 65, payload(), "topic"),
        (TOPIC, b"x" * (MAX_PAYLOAD_BYTES + 1), "oversized"),
        (TOPIC, b"{not json", "json"),
        (TOPIC, b"\xff\xfe", "json"),
        (TOPIC, b"[1, 2]", "json"),
        (TOPIC, payload(sensor_id="s-0043"), "sensor_id"),
        (TOPIC, payload(type="pressure"), "type"),
        (TOPIC, payload(value="612"), "value"),
        (TOPIC, payload(value=True), "value"),
        (TOPIC, payload(value=None), "value"),
        (
            TOPIC,
            b'{"sensor_id": "s-0042", "type": "co2", "value": NaN, "unit": "ppm", "ts": "2026-11-29T11:59:58Z"}',
            "value",
        ),
        (TOPIC, payload(unit="C"), "unit"),
        (TOPIC, payload(unit=5), "unit"),
        (TOPIC, payload(value=-5), "range"),
        (TOPIC, payload(type="humidity", value=140, unit="%"), "range"),
        (TOPIC, payload(ts="2026-11-29T11:59:58"), "ts"),
        (TOPIC, payload(ts="yesterday"), "ts"),
        (TOPIC, payload(ts=1764417598), "ts"),
        (TOPIC, payload(ts="2026-11-29T13:00:00Z"), "future"),
    ],
)
def test_a_bad_message_is_refused_with_its_reason(topic: str, data: bytes, reason: str) -> None:
    assert reason in REASONS
    assert refused(topic, data) == reason


@given(topic=st.text(max_size=80), data=st.binary(max_size=MAX_PAYLOAD_BYTES + 64))
def test_arbitrary_bytes_are_a_reading_or_a_reason(topic: str, data: bytes) -> None:
    result = outcome(topic, data)
    assert isinstance(result, Reading) or result in REASONS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(
    fields=st.dictionaries(
        st.sampled_from(["sensor_id", "type", "value", "unit", "ts", "extra"]), json_values, max_size=6
    )
)
def test_wrongly_typed_fields_are_a_reading_or_a_reason(fields: dict[str, Any]) -> None:
    result = outcome(TOPIC, json.dumps(fields).encode())
    assert result.type in SENSOR_TYPES if isinstance(result, Reading) else result in REASONS


@given(
    kind=st.sampled_from(SENSOR_TYPES),
    fraction=st.floats(min_value=0, max_value=1),
    age_s=st.floats(min_value=0, max_value=7 * 86400),
)
def test_every_plausible_value_of_every_type_is_accepted(kind: str, fraction: float, age_s: float) -> None:
    low, high = PLAUSIBLE[kind]  # type: ignore[index]
    value = low + (high - low) * fraction
    ts = format_timestamp(NOW - timedelta(seconds=age_s))
    reading = Reading.from_mqtt(TOPIC, payload(type=kind, value=value, unit=UNITS[kind], ts=ts), now=NOW)  # type: ignore[index]
    assert math.isclose(reading.value, value)
    assert abs((NOW - reading.ts).total_seconds() - age_s) < 0.002


def test_a_repeated_reading_is_recognised_and_memory_stays_per_sensor() -> None:
    seen = RecentReadings(depth=4)
    first = Reading.from_mqtt(TOPIC, payload(), now=NOW)
    assert seen.first_time(first)
    assert not seen.first_time(Reading.from_mqtt(TOPIC, payload(), now=NOW))
    later = [
        Reading.from_mqtt(TOPIC, payload(ts=format_timestamp(NOW - timedelta(seconds=60 - 10 * i))), now=NOW)
        for i in range(6)
    ]
    assert all(seen.first_time(r) for r in later)
    assert not seen.first_time(later[-1])
    assert len(seen) == 1
    other = Reading.from_mqtt(TOPIC.replace("s-0042", "s-0043"), payload(sensor_id="s-0043"), now=NOW)
    assert seen.first_time(other)
    assert len(seen) == 2
