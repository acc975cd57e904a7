"""Window pre-aggregation: alignment, scopes, stats against a brute-force recomputation, event time and
lateness, idle advance, emission, bounded state, and the merge laws that make partial aggregates combine.

Values in the property tests are multiples of 0.25: their sums are exact in floating point whatever the
order of addition, so results computed in different orders can be compared with ==.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katas.sensors.aggregation import (
    ADDED,
    DEFAULT_ALLOWED_LATENESS,
    DEFAULT_SIZES_S,
    LATE_REASON,
    Added,
    Scope,
    Stats,
    TooLate,
    WindowAggregator,
    WindowKey,
    WindowResult,
    aggregate,
    rollup,
)
from katas.sensors.readings import Place, Reading, SensorType

pytestmark = pytest.mark.unit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
"""A minute boundary, so offsets from it read as offsets within windows."""
DAY = timedelta(days=1)

PLACES = (
    Place("t1", "b1", "f1", "z1", "s1"),
    Place("t1", "b1", "f1", "z1", "s2"),
    Place("t1", "b1", "f1", "z2", "s3"),
    Place("t1", "b1", "f2", "z1", "s4"),
    Place("t1", "b2", "f1", "z1", "s5"),
    Place("t2", "b1", "f1", "z1", "s6"),
)
SENSOR = PLACES[0]


def reading(
    seconds: float, value: float = 20.0, place: Place = SENSOR, type_: SensorType = "temperature"
) -> Reading:
    return Reading(place, type_, value, T0 + timedelta(seconds=seconds))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def brute_force(readings: Iterable[Reading], sizes: Sequence[int]) -> dict[WindowKey, Stats]:
    """Every window's stats recomputed from scratch: group, then count, min, max, sum, and the value at
    the latest ts (the last of those in arrival order)."""
    groups: dict[WindowKey, list[Reading]] = defaultdict(list)
    for r in readings:
        for scope in Scope.all_of(r.place):
            for size in sizes:
                start = r.ts - (r.ts - EPOCH) % timedelta(seconds=size)
                groups[scope, r.type, size, start].append(r)
    out = {}
    for key, rs in groups.items():
        values = [r.value for r in rs]
        latest = max(r.ts for r in rs)
        last = [r.value for r in rs if r.ts == latest][-1]
        out[key] = Stats(len(rs), min(values), max(values), sum(values), last, latest)
    return out


def by_key(results: Iterable[WindowResult]) -> dict[WindowKey, Stats]:
    results = list(results)
    table = {r.key: r.stats for r in results}
    assert len(table) == len(results), "a window was emitted twice"
    return table


quarters = st.integers(-240, 40_000).map(lambda q: q / 4)
offsets_us = st.integers(0, 180_000_000)
"""Three minutes of event time, in µs: a few 60 s windows and many 10 s ones."""
types: st.SearchStrategy[SensorType] = st.sampled_from(("temperature", "co2"))


@st.composite
def readings_st(draw: st.DrawFn, *, unique_ts: bool = False, max_size: int = 60) -> list[Reading]:
    offsets = draw(st.lists(offsets_us, max_size=max_size, unique=unique_ts))
    return [
        Reading(draw(st.sampled_from(PLACES)), draw(types), draw(quarters), T0 + timedelta(microseconds=us))
        for us in offsets
    ]


# -------------------------------------------------------------------------------------- windows, scopes
def test_windows_are_tumbling_and_aligned_to_the_epoch() -> None:
    agg = WindowAggregator()
    assert agg.add(reading(7.5)) is ADDED
    assert agg.add(reading(10.0)) is ADDED  # a window's end belongs to the next window
    results = {(r.scope.level, r.size_s, r.start): r for r in agg.finish()}
    assert {
        (size, start, r.end, r.count) for (level, size, start), r in results.items() if level == "zone"
    } == {
        (10, at(0), at(10), 1),
        (10, at(10), at(20), 1),
        (60, at(0), at(60), 2),
    }
    assert all(r.start.timestamp() % r.size_s == 0 for r in results.values())


def test_windows_are_aligned_even_when_the_first_reading_is_not() -> None:
    (result,) = [r for r in aggregate([reading(67.25)], sizes=(10,)) if r.scope.level == "zone"]
    assert (result.start, result.end) == (at(60), at(70))


def test_every_reading_counts_in_its_zone_floor_and_building() -> None:
    a, b = Place("t1", "b1", "f1", "z1", "s1"), Place("t1", "b1", "f1", "z2", "s2")
    results = aggregate([reading(1, 20.0, a), reading(2, 24.0, b)], sizes=(60,))
    counts = {r.scope: (r.count, r.mean) for r in results}
    assert counts == {
        Scope("zone", "t1", "b1", "f1", "z1"): (1, 20.0),
        Scope("zone", "t1", "b1", "f1", "z2"): (1, 24.0),
        Scope("floor", "t1", "b1", "f1"): (2, 22.0),
        Scope("building", "t1", "b1"): (2, 22.0),
    }


def test_scopes_of_a_place() -> None:
    zone, floor, building = Scope.all_of(SENSOR)
    assert zone == Scope.of(SENSOR, "zone") == Scope("zone", "t1", "b1", "f1", "z1")
    assert floor == Scope.of(SENSOR, "floor") == Scope("floor", "t1", "b1", "f1", None)
    assert building == Scope.of(SENSOR, "building") == Scope("building", "t1", "b1")


@pytest.mark.parametrize(
    ("level", "floor", "zone"),
    [("zone", "f1", None), ("floor", None, None), ("floor", "f1", "z1"), ("building", "f1", None)],
)
def test_a_scope_has_exactly_the_fields_of_its_level(level: str, floor: str | None, zone: str | None) -> None:
    with pytest.raises(ValueError, match="scope"):
        Scope(level, "t1", "b1", floor, zone)  # type: ignore[arg-type]


def test_sensor_types_are_aggregated_apart() -> None:
    results = aggregate([reading(1, 21.0), reading(2, 800.0, type_="co2")], sizes=(60,))
    assert {(r.scope.level, r.type): r.max for r in results} == {
        ("zone", "temperature"): 21.0,
        ("floor", "temperature"): 21.0,
        ("building", "temperature"): 21.0,
        ("zone", "co2"): 800.0,
        ("floor", "co2"): 800.0,
        ("building", "co2"): 800.0,
    }


# ------------------------------------------------------------------------------------------------ stats
def test_stats_of_one_window() -> None:
    results = aggregate(
        [reading(3, 21.0), reading(1, 19.0), reading(5, 23.0), reading(5, 22.0), reading(2, 30.0)],
        sizes=(10,),
    )
    zone = next(r for r in results if r.scope.level == "zone")
    assert (zone.count, zone.min, zone.max, zone.sum, zone.mean) == (5, 19.0, 30.0, 115.0, 23.0)
    # the latest ts is 5 s, reached twice: the reading added later wins
    assert (zone.last, zone.last_ts, zone.final) == (22.0, at(5), True)


@settings(max_examples=150, deadline=None)
@given(readings_st())
def test_stats_match_a_brute_force_recomputation(readings: list[Reading]) -> None:
    results = aggregate(readings, sizes=(10, 60), allowed_lateness=DAY)
    assert all(r.final for r in results)
    assert by_key(results) == brute_force(readings, (10, 60))


@settings(max_examples=150, deadline=None)
@given(readings_st(), st.integers(0, 60))
def test_with_lateness_the_result_is_that_of_the_readings_added(readings: list[Reading], late_s: int) -> None:
    agg = WindowAggregator((10, 60), timedelta(seconds=late_s))
    outcomes = [agg.add(r) for r in readings]
    added = [r for r, outcome in zip(readings, outcomes, strict=True) if outcome is ADDED]
    assert agg.late_count == len(readings) - len(added)
    assert all(isinstance(o, TooLate) and o.window_end <= o.watermark for o in outcomes if o is not ADDED)
    assert by_key(agg.finish()) == brute_force(added, (10, 60))


@settings(max_examples=150, deadline=None)
@given(readings_st(unique_ts=True), st.data())
def test_out_of_order_within_the_lateness_gives_the_in_order_result(
    readings: list[Reading], data: st.DataObject
) -> None:
    """Each reading is delayed (WAN, redelivery) by less than the allowed lateness: none is refused,
    and the final windows are those of the readings in event-time order."""
    lateness = timedelta(seconds=20)
    delays = data.draw(
        st.lists(st.integers(0, 20_000_000 - 1), min_size=len(readings), max_size=len(readings))
    )
    arrival = sorted(range(len(readings)), key=lambda i: readings[i].ts + timedelta(microseconds=delays[i]))
    agg = WindowAggregator((10, 60), lateness)
    assert all(agg.add(readings[i]) is ADDED for i in arrival)
    assert agg.late_count == 0
    in_order = aggregate(sorted(readings, key=lambda r: r.ts), (10, 60), lateness)
    assert by_key(agg.finish()) == by_key(in_order) == brute_force(readings, (10, 60))


# ------------------------------------------------------------------------------------ lateness, advance
def test_a_reading_for_a_final_window_is_refused_with_a_reason_and_counted() -> None:
    agg = WindowAggregator((10, 60), timedelta(seconds=30))
    assert agg.add(reading(60)) is ADDED
    assert agg.watermark == at(30)
    late = agg.add(reading(15, 99.0))
    assert isinstance(late, TooLate)
    assert (late.reason, late.window_end, late.watermark) == (LATE_REASON, at(20), at(30))
    assert "watermark" in late.message
    # a window ending exactly at the watermark is final too
    assert isinstance(agg.add(reading(25, 99.0)), TooLate)
    # its 60 s window is still open, but the reading is refused as a whole: 60 s stays the sum of 10 s
    assert agg.add(reading(30, 21.0)) is ADDED
    assert agg.late_count == 2
    results = agg.finish()
    assert 99.0 not in {r.max for r in results}
    assert {(r.size_s, r.start, r.count) for r in results if r.scope.level == "zone"} == {
        (10, at(30), 1),
        (10, at(60), 1),
        (60, at(0), 1),
        (60, at(60), 1),
    }


def test_readings_after_finish_are_late() -> None:
    agg = WindowAggregator()
    agg.add(reading(1))
    agg.finish()
    assert isinstance(agg.add(reading(2)), TooLate)
    assert agg.late_count == 1


def test_the_watermark_follows_the_latest_reading_and_never_goes_back() -> None:
    agg = WindowAggregator(allowed_lateness=timedelta(seconds=30))
    assert agg.watermark is None
    agg.add(reading(100))
    agg.add(reading(80))
    assert agg.watermark == at(70)
    agg.advance(at(0))
    assert agg.watermark == at(70)


def test_advance_closes_idle_windows_by_processing_time() -> None:
    agg = WindowAggregator((10, 60), timedelta(seconds=30), idle_grace=timedelta(seconds=10))
    agg.add(reading(5))
    assert {r.final for r in agg.flush()} == {False}
    # the 10 s window [0, 10) closes at 10 + lateness 30 + grace 10 = 50 s of processing time
    agg.advance(at(50) - timedelta(microseconds=1))
    assert agg.flush() == []
    agg.advance(at(50))
    assert agg.watermark == at(10)
    finals = agg.flush()
    assert {(r.scope.level, r.size_s, r.final) for r in finals} == {
        ("zone", 10, True),
        ("floor", 10, True),
        ("building", 10, True),
    }
    assert isinstance(agg.add(reading(7)), TooLate)
    assert agg.add(reading(12)) is ADDED
    assert agg.open_windows == 6  # three 60 s windows and three new 10 s ones


# ----------------------------------------------------------------------------------------------- flush
def test_flush_emits_each_change_once_and_each_final_once() -> None:
    agg = WindowAggregator((10, 60), timedelta(seconds=30))
    agg.add(reading(1, 20.0))
    first = agg.flush()
    assert len(first) == 6
    assert not any(r.final for r in first)
    assert agg.flush() == []
    agg.add(reading(2, 22.0))
    agg.add(reading(3, 24.0))  # two changes to the same windows, one emission each
    second = agg.flush()
    assert len(second) == 6
    assert {(r.count, r.last) for r in second} == {(3, 24.0)}
    agg.add(reading(45, 30.0))  # watermark 15 s: the 10 s windows [0, 10) are final
    third = agg.flush()
    assert {(r.size_s, r.start, r.final) for r in third} == {
        (10, at(0), True),
        (10, at(40), False),
        (60, at(0), False),
    }
    assert len(third) == 9
    assert agg.flush() == []
    fourth = agg.finish()
    assert {(r.size_s, r.start, r.final) for r in fourth} == {(10, at(40), True), (60, at(0), True)}
    assert agg.flush() == []
    assert agg.open_windows == 0


def test_a_window_that_changed_and_closed_is_emitted_once_as_final() -> None:
    agg = WindowAggregator((10,), timedelta(seconds=0))
    agg.add(reading(1))
    agg.add(reading(11))  # closes [0, 10) before any flush
    results = agg.flush()
    assert [(r.start, r.final) for r in results if r.scope.level == "zone"] == [
        (at(0), True),
        (at(10), False),
    ]


def test_state_is_bounded_by_open_windows_not_by_readings() -> None:
    """Two hours of one sensor every 2 s (3,600 readings), flushed every 10 s: in memory at most the
    windows the lateness keeps open, per scope four 10 s and two 60 s ones."""
    agg = WindowAggregator((10, 60), timedelta(seconds=30))
    finals: list[WindowResult] = []
    most = 0
    for i in range(3600):
        assert agg.add(reading(2 * i)) is ADDED
        if i % 5 == 4:
            finals.extend(r for r in agg.flush() if r.final)
            most = max(most, agg.open_windows)
    assert 0 < most <= 3 * (4 + 2)
    finals.extend(agg.finish())
    assert agg.open_windows == 0
    assert len(by_key(finals)) == 3 * (720 + 120)
    assert {r.count for r in finals if r.size_s == 10} == {5}


def test_aggregate_returns_final_windows_once_in_order_of_end() -> None:
    results = aggregate(reading(s) for s in range(0, 300, 3))
    assert all(r.final for r in results)
    assert [r.end for r in results] == sorted(r.end for r in results)
    assert len(by_key(results)) == 3 * (30 + 5)
    assert sorted({r.size_s for r in results}) == list(DEFAULT_SIZES_S)


# -------------------------------------------------------------------------------------- merge, rollup
stats_st = st.builds(
    Stats,
    count=st.integers(1, 1000),
    min=quarters,
    max=quarters,
    sum=quarters,
    last=quarters,
    last_ts=st.integers(0, 3).map(lambda s: at(s)),  # few timestamps, so ties happen
)


@given(stats_st, stats_st, stats_st)
def test_merge_is_associative(a: Stats, b: Stats, c: Stats) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(stats_st, stats_st)
def test_merge_is_commutative_but_for_last_on_a_tie(a: Stats, b: Stats) -> None:
    if a.last_ts != b.last_ts or a.last == b.last:
        assert a.merge(b) == b.merge(a)
    else:
        assert (a.merge(b).last, b.merge(a).last) == (b.last, a.last)  # the later-added wins
        assert a.merge(b).count == b.merge(a).count


@given(st.lists(st.tuples(quarters, st.integers(0, 5)), min_size=2), st.data())
def test_merging_the_stats_of_parts_gives_the_stats_of_the_whole(
    values: list[tuple[float, int]], data: st.DataObject
) -> None:
    def stats(part: list[tuple[float, int]]) -> Stats:
        values = [v for v, _ in part]
        latest = max(s for _, s in part)
        last = [v for v, s in part if s == latest][-1]
        return Stats(len(part), min(values), max(values), sum(values), last, at(latest))

    cut = data.draw(st.integers(1, len(values) - 1))
    whole = functools.reduce(Stats.merge, (Stats.of(v, at(s)) for v, s in values))
    assert stats(values[:cut]).merge(stats(values[cut:])) == whole == stats(values)


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_merge_of_arbitrary_floats_is_associative_up_to_rounding(x: float, y: float, z: float) -> None:
    a, b, c = Stats.of(x, at(1)), Stats.of(y, at(2)), Stats.of(z, at(0))
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    assert (left.count, left.min, left.max, left.last, left.last_ts) == (
        right.count,
        right.min,
        right.max,
        right.last,
        right.last_ts,
    )
    assert left.sum == pytest.approx(right.sum, rel=1e-12, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(readings_st())
def test_ten_second_windows_roll_up_into_the_sixty_second_ones(readings: list[Reading]) -> None:
    results = aggregate(readings, (10, 60), DAY)
    tens = [r for r in results if r.size_s == 10]
    sixties = [r for r in results if r.size_s == 60]
    rolled = rollup(tens, 60)
    assert all(r.final and r.size_s == 60 for r in rolled)
    assert by_key(rolled) == by_key(sixties)


@settings(max_examples=100, deadline=None)
@given(readings_st(unique_ts=True), st.data())
def test_partial_windows_of_several_workers_merge_into_the_whole(
    readings: list[Reading], data: st.DataObject
) -> None:
    workers = data.draw(st.lists(st.integers(0, 2), min_size=len(readings), max_size=len(readings)))
    partials = [
        r
        for w in range(3)
        for r in aggregate([x for x, wx in zip(readings, workers, strict=True) if wx == w], (10,), DAY)
    ]
    assert by_key(rollup(partials, 10)) == by_key(aggregate(readings, (10,), DAY))


def test_rollup_refuses_windows_that_do_not_fit() -> None:
    results = aggregate([reading(1)], (60,))
    with pytest.raises(ValueError, match="does not fit"):
        rollup(results, 90)
    with pytest.raises(ValueError, match="whole seconds"):
        rollup(results, 0)


def test_a_result_rebuilds_from_its_stats() -> None:
    (result, *_) = aggregate([reading(1, 20.0), reading(2, 21.0)], (60,))
    rebuilt = WindowResult.of(
        result.scope, result.type, result.size_s, result.start, result.stats, final=True
    )
    assert rebuilt == result


# -------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("sizes", [(), (0,), (-10,), (10, 10), (1.5,), (True,)])
def test_window_sizes_must_be_distinct_positive_whole_seconds(sizes: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="size"):
        WindowAggregator(sizes)


def test_lateness_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        WindowAggregator(allowed_lateness=-DEFAULT_ALLOWED_LATENESS)


def test_added_is_one_object() -> None:
    assert isinstance(ADDED, Added)
    agg = WindowAggregator()
    assert agg.add(reading(1)) is agg.add(reading(2)) is ADDED
    assert agg.sizes == DEFAULT_SIZES_S
