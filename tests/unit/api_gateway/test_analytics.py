"""Usage analytics without servers: the usage event and its wire form (hostile records included), minute
buckets, the usage API's time window, the exact percentile, and the recorder's bounded buffer."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from katas.api_gateway.adapters.usage_events import UsageRecorder
from katas.api_gateway.analytics import (
    MAX_EVENT_BYTES,
    UsageEvent,
    UsageEventError,
    UsageQueryError,
    UsageWindow,
    minute_of,
    minute_text,
    parse_instant,
    percentile,
)
from katas.api_gateway.node import Served

NOW = datetime(2025, 3, 14, 15, 9, 26, 535_000, tzinfo=UTC).timestamp()
names = st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), max_size=64)
events = st.builds(
    UsageEvent,
    id=names.filter(bool),
    at=st.floats(min_value=NOW - 86_400 * 365, max_value=NOW + 86_400).map(lambda x: round(x, 3)),
    node=names,
    client=names,
    route=names.filter(bool),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    status=st.integers(100, 599),
    latency_ms=st.floats(min_value=0, max_value=600_000).map(lambda x: round(x, 3)),
)


def wire(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "v": 1, "id": "a1-1", "at": NOW, "node": "gw1", "client": "acme", "route": "orders",
        "method": "GET", "status": 200, "ms": 3.5,
    }  # fmt: skip
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


# ------------------------------------------------------------------------------------------ the event
def test_an_event_is_made_from_what_the_node_served() -> None:
    event = UsageEvent.of(Served(NOW, "gw2", "acme", "orders", "POST", 201, 0.0123456), "b00t-7")
    assert event == UsageEvent("b00t-7", NOW, "gw2", "acme", "orders", "POST", 201, 12.346)
    assert event.key() == b"acme", "the partition key is the client's name"
    assert event.minute == minute_of(NOW)
    assert len(event.encode()) < 200, "compact: one small JSON object per request"


@given(events)
def test_encoding_round_trips(event: UsageEvent) -> None:
    assert UsageEvent.decode(event.encode()) == event


@given(st.binary(max_size=MAX_EVENT_BYTES + 10))
def test_any_bytes_decode_to_an_event_or_a_reason(data: bytes) -> None:
    reason = None
    try:
        UsageEvent.decode(data)
    except UsageEventError as exc:
        reason = str(exc)
    assert reason != "", "a refusal always says why"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(
    st.sampled_from(["v", "id", "at", "node", "client", "route", "method", "status", "ms"]),
    json_values,
)
def test_any_field_of_any_json_type_is_accepted_only_if_valid(field: str, value: object) -> None:
    try:
        event = UsageEvent.decode(wire(**{field: value}))
    except UsageEventError as exc:
        reason = str(exc)
    else:
        assert UsageEvent.decode(event.encode()) == event, "what is accepted can be stored and sent again"
        return
    assert reason.startswith(field) or field == "v", reason


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"", "empty record"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 5000, "bytes, more than"),
        (b"[" * 4000, "not JSON"),  # too deep for the parser: refused, not a crash
        (wire(v=2), "unknown version"),
        (wire(v=True), "unknown version"),
        (wire(v=...), "unknown version"),
        (wire(id=""), "id: must not be empty"),
        (wire(id=7), "id: expected a string"),
        (wire(at=...), "at: expected a number"),
        (wire(at="2025-01-01T00:00:00Z"), "at: expected a number"),
        (wire(at=10**400), "at: "),
        (wire(at=-1), "outside"),
        (wire(client="x" * 201), "longer than"),
        (wire(client="ev\nil"), "control characters"),
        (wire(route=""), "route: must not be empty"),
        (wire(method="GET" * 10), "longer than"),
        (wire(status=200.0), "status"),
        (wire(status=True), "status"),
        (wire(status=99), "status"),
        (wire(status=600), "status"),
        (wire(ms=-0.5), "outside"),
        (b'{"v":1,"id":"a","at":1e400}', "outside"),
        (wire(ms=float("nan")), "outside"),
    ],
)
def test_malformed_records_are_refused_with_a_reason(record: bytes, reason: str) -> None:
    with pytest.raises(UsageEventError, match=None) as refused:
        UsageEvent.decode(record)
    assert reason in str(refused.value)


# ------------------------------------------------------------------------------------------- minutes
@given(st.floats(min_value=946_684_800, max_value=4_102_444_800))
def test_a_minute_bucket_holds_its_instant(at: float) -> None:
    minute = minute_of(at)
    assert minute % 60 == 0
    assert minute <= at < minute + 60
    moment = datetime.fromtimestamp(minute, UTC)
    assert minute_text(minute) == moment.strftime("%Y-%m-%dT%H:%M:00Z")
    assert parse_instant(minute_text(minute), "t").timestamp() == minute


# ---------------------------------------------------------------------------------------- time window
def test_instants_need_rfc3339_with_an_offset() -> None:
    assert parse_instant("2025-03-14T15:09:26Z", "from") == datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)
    assert parse_instant("2025-03-14T16:09:26.5+01:00", "from") == datetime(
        2025, 3, 14, 15, 9, 26, 500_000, tzinfo=UTC
    )
    for bad in ("2025-03-14T15:09:26", "2025-03-14", "yesterday", "", "2025-02-30T00:00:00Z", "1e9",
                "1900-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59"):  # fmt: skip
        with pytest.raises(UsageQueryError, match="from"):
            parse_instant(bad, "from")


@given(st.text(max_size=80))
def test_any_text_parses_to_an_instant_or_a_clear_400(text: str) -> None:
    try:
        moment = parse_instant(text, "to")
    except UsageQueryError as exc:
        reason = str(exc)
    else:
        assert moment.tzinfo is UTC
        return
    assert reason.startswith("to: "), reason


def test_the_window_defaults_to_the_last_hour_and_includes_the_minute_from_falls_in() -> None:
    window = UsageWindow.parse(None, None, NOW)
    assert window.end == NOW
    assert window.start == minute_of(NOW - 3600)
    given_from = UsageWindow.parse("2025-03-14T15:00:20Z", "2025-03-14T15:05:00Z", NOW)
    assert minute_text(given_from.start) == "2025-03-14T15:00:00Z"
    only_to = UsageWindow.parse(None, "2025-03-14T15:00:00Z", NOW)
    assert minute_text(only_to.start) == "2025-03-14T14:00:00Z"


def test_the_window_refuses_empty_reversed_and_over_long_ranges() -> None:
    with pytest.raises(UsageQueryError, match="before"):
        UsageWindow.parse("2025-03-14T15:00:00Z", "2025-03-14T15:00:00Z", NOW)
    with pytest.raises(UsageQueryError, match="before"):
        UsageWindow.parse("2025-03-14T16:00:00Z", None, NOW)  # from in the future, to = now
    with pytest.raises(UsageQueryError, match="31 days"):
        UsageWindow.parse("2025-01-01T00:00:00Z", "2025-02-01T00:00:01Z", NOW)
    exactly = UsageWindow.parse("2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z", NOW)
    assert exactly.end - exactly.start == timedelta(days=31).total_seconds()


# ---------------------------------------------------------------------------------------- percentiles
def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.5
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile([7.0], 0.95) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="q must be"):
        percentile(values, 1.5)


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_percentiles_lie_within_the_values_and_grow_with_q(values: list[float], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    assert min(values) <= percentile(values, low) <= percentile(values, high) <= max(values)
    assert math.isclose(percentile(values, 0), min(values))
    assert math.isclose(percentile(values, 1), max(values))


# ---------------------------------------------------------------------------- the recorder's buffer
def dropped_total() -> float:
    return REGISTRY.get_sample_value("gateway_usage_events_dropped_total", {"reason": "buffer_full"}) or 0.0


def test_recording_holds_up_to_the_bound_then_counts_every_drop() -> None:
    recorder = UsageRecorder("gw1", "gateway.usage", capacity=5)
    before = dropped_total()
    served = Served(NOW, "gw1", "acme", "orders", "GET", 200, 0.001)
    for _ in range(5):
        recorder.record(served)
    assert (recorder.held, recorder.dropped, dropped_total() - before) == (5, 0, 0)
    for _ in range(7):
        recorder.record(served)
    assert (recorder.held, recorder.dropped, dropped_total() - before) == (5, 7, 7)


def test_a_recorder_needs_room() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        UsageRecorder("gw1", "gateway.usage", capacity=0)
