"""Threshold rules: validation, the ok -> pending -> raised -> cleared episode per rule and sensor, in event
time, with hysteresis, deduplication, snapshots and replay (no servers)."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katas.sensors.readings import Place, Reading, SensorType
from katas.sensors.rules import (
    DEFAULT_MEMORY_S,
    DEFAULT_RULES,
    AlertEvent,
    InvalidRuleError,
    Rule,
    RuleEngine,
    fingerprint,
    load_rules,
    replay,
    replay_order,
)

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
PLACE = Place("acme", "hq", "3", "east", "co2-001")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def reading(value: float, t: float, *, kind: SensorType = "co2", place: Place = PLACE) -> Reading:
    return Reading(place, kind, float(value), at(t))


def rule(**fields: Any) -> Rule:
    base: dict[str, Any] = {"id": "r", "type": "co2", "condition": "above", "threshold": 1000}
    return Rule.model_validate(base | fields)


def series(values: Sequence[float], *, step: float = 10.0, start: float = 0.0, **kw: Any) -> list[Reading]:
    return [reading(v, start + i * step, **kw) for i, v in enumerate(values)]


def kinds(events: Sequence[AlertEvent]) -> list[str]:
    return [e.kind for e in events]


def run(rules: Sequence[Rule], readings: Sequence[Reading], **kw: Any) -> tuple[RuleEngine, list[AlertEvent]]:
    engine = RuleEngine(rules, **kw)
    return engine, engine.evaluate_many(readings)


# -------------------------------------------------------------------------------------------- rules
def test_default_rules_are_the_katas_examples() -> None:
    by_id = {r.id: r for r in DEFAULT_RULES}
    assert by_id["co2-high"].describe() == "co2 above 1000 ppm for 60 s (clears at 900 ppm)"
    assert (
        by_id["temperature-band"].describe()
        == "temperature outside 18..26 C for 120 s (clears within 18.5..25.5 C)"
    )
    assert by_id["humidity-band"].describe() == "humidity outside 25..65 % for 300 s (clears within 27..63 %)"


def test_rules_round_trip_through_json() -> None:
    data = json.loads(json.dumps([r.model_dump(mode="json", exclude_none=True) for r in DEFAULT_RULES]))
    assert load_rules(data) == DEFAULT_RULES


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"condition": "outside", "threshold": None, "low": 26, "high": 18}, "low 26 must be below high 18"),
        ({"condition": "outside", "threshold": None, "low": 20, "high": 20}, "low 20 must be below high 20"),
        ({"for_s": -1}, "for_s: Input should be greater than or equal to 0"),
        ({"for_s": 90_000}, "for_s: Input should be less than or equal to 86400"),
        ({"hysteresis": -0.5}, "hysteresis: Input should be greater than or equal to 0"),
        ({"threshold": None}, "condition 'above' takes threshold, not low and high"),
        ({"condition": "below", "low": 1}, "condition 'below' takes threshold, not low and high"),
        ({"condition": "outside"}, "condition 'outside' takes low and high, not threshold"),
        (
            {
                "condition": "outside",
                "threshold": None,
                "low": 18,
                "high": 26,
                "type": "temperature",
                "hysteresis": 4,
            },
            "under half its width",
        ),
        ({"hysteresis": 1001}, "never clears"),
        ({"condition": "below", "threshold": 49_990, "hysteresis": 20}, "never clears"),
        ({"threshold": 60_000}, "threshold 60000 is outside what a co2 sensor reports (0..50000 ppm)"),
        ({"condition": "sideways"}, "condition: Input should be 'above', 'below' or 'outside'"),
        ({"type": "pressure"}, "type: Input should be"),
        ({"severity": "page-me"}, "severity: Input should be 'info', 'warning' or 'critical'"),
        ({"id": "has space"}, "id: String should match pattern"),
        ({"building": "hq"}, "a building scope needs its tenant"),
        ({"threshold": "NaN"}, "threshold: Input should be a finite number"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_rule_validation_errors_say_what_is_wrong(fields: dict[str, Any], message: str) -> None:
    base = {"id": "bad", "type": "co2", "condition": "above", "threshold": 1000}
    with pytest.raises(InvalidRuleError) as caught:
        load_rules([base | fields])
    assert any(p.startswith("rules[0] (") and message in p for p in caught.value.problems), (
        caught.value.problems
    )


def test_load_rules_reports_every_problem_at_once() -> None:
    good = {"id": "ok", "type": "co2", "condition": "above", "threshold": 1000}
    with pytest.raises(InvalidRuleError) as caught:
        load_rules([good, {"id": "x", "type": "co2"}, good, "not a rule"])  # type: ignore[list-item]
    problems = caught.value.problems
    assert any(p.startswith("rules[1] (x): condition: Field required") for p in problems)
    assert any(p.startswith("rules[3]: Input should be a valid dictionary") for p in problems)
    assert "rule id 'ok' is used more than once" in problems
    assert isinstance(caught.value, ValueError)


def test_rules_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        DEFAULT_RULES[0].threshold = 5  # type: ignore[misc]


# ------------------------------------------------------------------------------------- conditions
def test_above_breaches_strictly_over_the_threshold() -> None:
    _, events = run([rule()], series([1000, 999, 1000.5]))
    assert kinds(events) == ["raised"]
    assert events[0].value == 1000.5
    assert events[0].ts == events[0].started_at == at(20)


def test_below_breaches_strictly_under_the_threshold() -> None:
    r = rule(type="temperature", condition="below", threshold=16, hysteresis=1)
    _, events = run([r], series([16, 15.9, 16.5, 17, 15], kind="temperature"))
    assert [(e.kind, e.value) for e in events] == [("raised", 15.9), ("cleared", 17), ("raised", 15)]


def test_outside_breaches_on_either_side_of_the_band() -> None:
    r = rule(type="temperature", condition="outside", threshold=None, low=18, high=26, hysteresis=0.5)
    values = [18, 26, 17.9, 18.2, 18.5, 26.1, 25.9, 25.5]
    _, events = run([r], series(values, kind="temperature"))
    assert [(e.kind, e.value) for e in events] == [
        ("raised", 17.9),
        ("cleared", 18.5),
        ("raised", 26.1),
        ("cleared", 25.5),
    ]


def test_a_reading_meets_only_the_rules_of_its_type_and_scope() -> None:
    rules = [
        *DEFAULT_RULES,
        rule(id="acme-only", tenant="acme"),
        rule(id="other-hq", tenant="other", building="hq"),
        rule(id="acme-annex", tenant="acme", building="annex"),
    ]
    engine, events = run(rules, [reading(5000, 0), reading(50, 0, kind="humidity")])
    assert {e.rule_id for e in events} == {"acme-only"}
    # co2: co2-high (pending) and acme-only; humidity: humidity-band; the other scopes are skipped
    assert engine.stats.evaluations == 3
    assert engine.stats.readings == 2


# -------------------------------------------------------------------------------------- event time
def test_for_s_raises_at_exactly_for_s_of_event_time_not_before() -> None:
    engine = RuleEngine([rule(for_s=60)])
    assert engine.evaluate_many(series([1200] * 6)) == []  # t = 0..50
    assert engine.evaluate_many([reading(1200, 59.999999)]) == []
    [event] = engine.evaluate(reading(1200, 60))
    assert (event.kind, event.started_at, event.ts) == ("raised", at(0), at(60))


def test_for_s_ignores_processing_time_and_raises_on_a_late_gap() -> None:
    # readings 90 s apart: the breach held for 90 s by the second one
    _, events = run([rule(for_s=60)], [reading(1200, 0), reading(1200, 90)])
    assert [(e.kind, e.started_at, e.ts) for e in events] == [("raised", at(0), at(90))]


def test_a_reading_inside_the_limit_while_pending_starts_the_wait_again() -> None:
    values = [1200, 1200, 1200, 1000, 1200, 1200, 1200, 1200, 1200, 1200, 1200]
    engine, events = run([rule(for_s=60)], series(values))
    assert [(e.kind, e.started_at, e.ts) for e in events] == [("raised", at(40), at(100))]
    assert len(engine) == 1


def test_for_s_zero_raises_at_the_first_breaching_reading() -> None:
    _, events = run([rule(for_s=0)], series([900, 1001]))
    assert [(e.kind, e.ts) for e in events] == [("raised", at(10))]


# -------------------------------------------------------------------------------------- hysteresis
def test_hysteresis_keeps_it_raised_between_the_limit_and_the_clear_level() -> None:
    engine = RuleEngine([rule(hysteresis=100)])
    assert kinds(engine.evaluate(reading(1100, 0))) == ["raised"]
    for i, value in enumerate([1000, 950, 901, 1050, 900.5]):
        assert engine.evaluate(reading(value, 10 + i)) == []
    [cleared] = engine.evaluate(reading(900, 20))
    assert (cleared.kind, cleared.started_at, cleared.value) == ("cleared", at(0), 900)
    # cleared: back between the clear level and the limit does nothing, crossing the limit is a new episode
    assert engine.evaluate(reading(1000, 30)) == []
    [again] = engine.evaluate(reading(1000.1, 40))
    assert (again.kind, again.started_at) == ("raised", at(40))
    assert again.fingerprint != cleared.fingerprint


def test_a_value_oscillating_around_the_threshold_alerts_once() -> None:
    values = [1200] * 7 + [990, 1010, 960, 1040, 905, 1100, 999, 1001] * 20
    _, events = run(DEFAULT_RULES, series(values))
    assert kinds(events) == ["raised"]


def test_without_hysteresis_the_limit_itself_clears() -> None:
    _, events = run([rule(hysteresis=0)], series([1001, 1000, 1001]))
    assert kinds(events) == ["raised", "cleared", "raised"]


@st.composite
def sensor_streams(draw: st.DrawFn) -> list[Reading]:
    """Interleaved CO2 readings of a few sensors, each in timestamp order, wandering around 1000 ppm."""
    readings: list[Reading] = []
    for sensor in range(draw(st.integers(1, 3))):
        place = Place("acme", "hq", "1", "z", f"s{sensor}")
        t = 0.0
        steps = draw(st.lists(st.tuples(st.floats(0.5, 40), st.floats(850, 1150)), max_size=60))
        for gap, value in steps:
            t += gap
            readings.append(reading(round(value), round(t, 3), place=place))
    return draw(st.permutations(readings)) if draw(st.booleans()) else sorted(readings, key=lambda r: r.ts)


PROPERTY_RULES = (
    rule(id="co2-60", for_s=60, hysteresis=100),
    rule(id="co2-now", for_s=0, hysteresis=30),
    rule(id="co2-flat", for_s=20, hysteresis=0),
    rule(id="co2-low", condition="below", threshold=900, for_s=15, hysteresis=50),
    rule(id="co2-band", condition="outside", threshold=None, low=920, high=1080, for_s=30, hysteresis=20),
)


@settings(max_examples=150, deadline=None)
@given(sensor_streams())
def test_raised_and_cleared_alternate_per_key(readings: list[Reading]) -> None:
    engine, events = run(PROPERTY_RULES, readings)
    by_key: dict[tuple[str, Place], list[AlertEvent]] = defaultdict(list)
    for event in events:
        by_key[(event.rule_id, event.place)].append(event)
    rules = {r.id: r for r in PROPERTY_RULES}
    for (rule_id, _), episode_events in by_key.items():
        limits = rules[rule_id].limits
        kinds_ = kinds(episode_events)
        assert kinds_.count("raised") <= kinds_.count("cleared") + 1
        assert kinds_ == ["raised", "cleared"] * (len(kinds_) // 2) + ["raised"] * (len(kinds_) % 2)
        for raised, cleared in zip(episode_events[::2], episode_events[1::2], strict=False):
            assert raised.fingerprint == cleared.fingerprint
            assert raised.started_at == cleared.started_at
        for event in episode_events:
            if event.kind == "raised":
                assert limits.breaches(event.value)
                assert event.ts - event.started_at >= timedelta(seconds=rules[rule_id].for_s)
            else:
                assert limits.clears(event.value)
        assert len({e.fingerprint for e in episode_events if e.kind == "raised"}) == kinds_.count("raised")
    # ok keys hold nothing: what is left is pending, raised or cleared
    assert len(engine) <= len(PROPERTY_RULES) * 3


@settings(max_examples=100, deadline=None)
@given(sensor_streams(), st.randoms(use_true_random=False))
def test_replay_of_any_order_equals_live_evaluation_of_the_ordered_readings(
    readings: list[Reading], shuffle: random.Random
) -> None:
    ordered = sorted(readings, key=replay_order)
    _, live = run(PROPERTY_RULES, ordered)
    shuffled = list(readings)
    shuffle.shuffle(shuffled)
    assert replay(PROPERTY_RULES, shuffled) == live
    assert replay(PROPERTY_RULES, iter(ordered), ordered=True) == live


def redelivered(readings: list[Reading], data: st.DataObject) -> list[Reading]:
    """At least once delivery: some readings twice in a row, then a batch from the start again."""
    twice: list[Reading] = []
    for r in readings:
        twice.append(r)
        if data.draw(st.booleans()):
            twice.append(r)
    return twice + readings[: data.draw(st.integers(0, len(readings)))]


@settings(max_examples=100, deadline=None)
@given(sensor_streams(), st.data())
def test_readings_redelivered_within_memory_change_nothing(
    readings: list[Reading], data: st.DataObject
) -> None:
    readings.sort(key=lambda r: r.ts)
    span = (readings[-1].ts - readings[0].ts).total_seconds() if readings else 0.0
    _, once = run(PROPERTY_RULES, readings)
    _, events = run(PROPERTY_RULES, redelivered(readings, data), memory_s=span + 1)
    assert events == once


@settings(max_examples=100, deadline=None)
@given(sensor_streams(), st.data(), st.sampled_from([0.0, 30.0, DEFAULT_MEMORY_S]))
def test_readings_redelivered_beyond_memory_repeat_only_known_fingerprints(
    readings: list[Reading], data: st.DataObject, memory_s: float
) -> None:
    readings.sort(key=lambda r: r.ts)
    _, once = run(PROPERTY_RULES, readings, memory_s=memory_s)
    _, events = run(PROPERTY_RULES, redelivered(readings, data), memory_s=memory_s)
    assert events[: len(once)] == once
    assert {(e.fingerprint, e.kind) for e in events} == {(e.fingerprint, e.kind) for e in once}


# ------------------------------------------------------------------------------- order and redelivery
def test_out_of_order_readings_drive_no_transition_and_are_counted() -> None:
    engine = RuleEngine([rule(for_s=30)])
    assert engine.evaluate_many([reading(1200, 100), reading(1200, 110)]) == []
    # late readings: an old breach would make the episode 30 s long, an old recovery would reset it
    assert engine.evaluate_many([reading(1200, 50), reading(800, 105), reading(1200, 110)]) == []
    assert (engine.stats.out_of_order, engine.stats.duplicates) == (2, 1)
    [event] = engine.evaluate(reading(1200, 130))
    assert (event.kind, event.started_at) == ("raised", at(100))


def test_redelivering_an_episode_raises_nothing_new() -> None:
    readings = series([1200] * 7 + [850, 850])
    engine, first = run(DEFAULT_RULES, readings)
    assert kinds(first) == ["raised", "cleared"]
    assert engine.evaluate_many(readings) == []
    assert engine.stats.out_of_order + engine.stats.duplicates == len(readings)


def test_a_redelivered_episode_beyond_memory_has_the_same_fingerprints() -> None:
    readings = series([1200] * 7 + [850])
    engine, first = run(DEFAULT_RULES, readings)
    # another sensor moves event time past the memory: the cleared episode is forgotten
    other = Place("acme", "hq", "3", "east", "co2-002")
    engine.evaluate(reading(500, 70 + DEFAULT_MEMORY_S, place=other))
    assert len(engine) == 0
    assert engine.stats.forgotten == 1
    again = engine.evaluate_many(readings)
    assert again == first  # the webhook sender drops them by (fingerprint, kind)


def test_fingerprint_is_rule_place_and_breach_start() -> None:
    base = fingerprint("co2-high", PLACE, at(0))
    assert base == fingerprint("co2-high", PLACE, at(0).astimezone(UTC))
    assert len({base, fingerprint("co2-hi", PLACE, at(0)), fingerprint("co2-high", PLACE, at(0.001))}) == 3
    assert base != fingerprint("co2-high", Place("acme", "hq", "3", "east", "co2-002"), at(0))


def test_event_to_dict_is_the_webhook_body() -> None:
    _, [event] = run([rule(severity="critical")], [reading(1234.5, 1.5)])
    body = json.loads(json.dumps(event.to_dict()))
    assert body == {
        "kind": "raised",
        "fingerprint": event.fingerprint,
        "rule": "r",
        "severity": "critical",
        "tenant": "acme",
        "building": "hq",
        "floor": "3",
        "zone": "east",
        "sensor_id": "co2-001",
        "type": "co2",
        "value": 1234.5,
        "unit": "ppm",
        "started_at": "2025-03-01T10:00:01.500Z",
        "ts": "2025-03-01T10:00:01.500Z",
    }


# ------------------------------------------------------------------------------------ bounded state
def test_ok_keys_hold_nothing() -> None:
    engine = RuleEngine(DEFAULT_RULES)
    for sensor in range(500):
        place = Place("acme", "hq", "1", "z", f"s{sensor}")
        engine.evaluate(reading(600, sensor * 0.01, place=place))
        engine.evaluate(reading(50, sensor * 0.01, kind="humidity", place=place))
    assert len(engine) == 0
    assert engine.snapshot()["states"] == []


def test_ended_episodes_are_remembered_for_memory_s_then_forgotten() -> None:
    engine = RuleEngine(DEFAULT_RULES, memory_s=60)
    engine.evaluate_many(series([1200, 1200, 800]))  # pending, then recovered at t = 20
    assert [s["phase"] for s in engine.snapshot()["states"]] == ["recovered"]
    engine.evaluate(reading(800, 80))
    assert len(engine) == 0
    assert engine.stats.forgotten == 1
    engine.evaluate_many(series([1200] * 7 + [800], start=100))  # raised at 160, cleared at 170
    assert [s["phase"] for s in engine.snapshot()["states"]] == ["cleared"]
    engine.evaluate(reading(800, 170 + 59))
    assert len(engine) == 1
    engine.evaluate(reading(800, 170 + 60))
    assert len(engine) == 0
    assert engine.stats.forgotten == 2


# -------------------------------------------------------------------------------- snapshot / restore
def test_a_restarted_engine_resumes_without_raising_open_episodes_again() -> None:
    temperature = Place("acme", "hq", "3", "east", "t-001")
    readings = sorted(
        series([1200] * 9 + [950] * 3 + [850, 1200, 1200])
        + series([27] * 14 + [25], kind="temperature", place=temperature, step=15),
        key=lambda r: r.ts,
    )
    whole, unbroken = run(DEFAULT_RULES, readings)
    assert [(e.kind, e.rule_id, e.ts) for e in unbroken] == [
        ("raised", "co2-high", at(60)),
        ("cleared", "co2-high", at(120)),
        ("raised", "temperature-band", at(120)),
        ("cleared", "temperature-band", at(210)),
    ]
    for cut in range(len(readings) + 1):
        first, before = run(DEFAULT_RULES, readings[:cut])
        stored = json.dumps(first.snapshot())  # what goes to Redis
        second = RuleEngine(DEFAULT_RULES)
        second.restore(json.loads(stored))
        # the worker dies after saving the state, before committing: the last 3 readings come again
        after = second.evaluate_many(readings[max(cut - 3, 0) :])
        assert before + after == unbroken, cut
        assert second.snapshot() == whole.snapshot(), cut


def test_snapshot_is_exact_and_restore_replaces_state() -> None:
    engine, _ = run(DEFAULT_RULES, [reading(1200, 0.000123), reading(1200, 60.000123)])
    snapshot = engine.snapshot()
    assert snapshot == {
        "version": 1,
        "watermark": "2025-03-01T10:01:00.000123+00:00",
        "states": [
            {
                "rule": "co2-high",
                "place": ["acme", "hq", "3", "east", "co2-001"],
                "phase": "raised",
                "started_at": "2025-03-01T10:00:00.000123+00:00",
                "changed_at": "2025-03-01T10:01:00.000123+00:00",
                "last_ts": "2025-03-01T10:01:00.000123+00:00",
            }
        ],
    }
    other, _ = run(DEFAULT_RULES, series([30], kind="humidity"))
    other.restore(snapshot)
    assert other.snapshot() == snapshot
    assert [(r.id, p, s) for r, p, s in other.open_episodes()] == [("co2-high", PLACE, at(0.000123))]


def test_restore_drops_states_of_rules_that_are_gone() -> None:
    engine, _ = run([*DEFAULT_RULES, rule(id="extra")], [reading(1200, 0)])
    assert len(engine) == 2
    fewer = RuleEngine(DEFAULT_RULES)
    fewer.restore(engine.snapshot())
    assert [s["rule"] for s in fewer.snapshot()["states"]] == ["co2-high"]
    assert fewer.stats.forgotten == 1


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"version": 2, "watermark": None, "states": []},
        {"version": 1, "watermark": "yesterday", "states": []},
        {"version": 1, "watermark": None, "states": [{"rule": "co2-high"}]},
        {
            "version": 1,
            "watermark": None,
            "states": [
                {
                    "rule": "co2-high",
                    "place": ["a", "b", "c", "d", "e"],
                    "phase": "snoozed",
                    "started_at": "2025-03-01T10:00:00+00:00",
                    "changed_at": "2025-03-01T10:00:00+00:00",
                    "last_ts": "2025-03-01T10:00:00+00:00",
                }
            ],
        },
        {
            "version": 1,
            "watermark": None,
            "states": [
                {
                    "rule": "co2-high",
                    "place": ["a", "b", "c", "d", "e"],
                    "phase": "raised",
                    "started_at": "2025-03-01T10:00:00",
                    "changed_at": "2025-03-01T10:00:00+00:00",
                    "last_ts": "2025-03-01T10:00:00+00:00",
                }
            ],
        },
    ],
)
def test_restore_refuses_what_is_not_a_snapshot(broken: dict[str, Any]) -> None:
    engine, _ = run(DEFAULT_RULES, [reading(1200, 0)])
    before = engine.snapshot()
    with pytest.raises(ValueError, match="not a rule engine snapshot"):
        engine.restore(broken)
    assert engine.snapshot() == before


# ------------------------------------------------------------------------------------------- replay
def test_replay_leaves_a_live_engine_alone() -> None:
    readings = series([1200] * 7 + [850] + [1200] * 8)
    live = RuleEngine(DEFAULT_RULES)
    live.evaluate_many(readings[:10])
    before, stats = live.snapshot(), (live.stats.readings, live.stats.raised, live.stats.cleared)
    changed = [rule(id="co2-high", for_s=0, hysteresis=0, severity="critical")]  # same id, new limits
    past = replay(changed, reversed(readings))
    assert kinds(past) == ["raised", "cleared", "raised"]
    assert {e.severity for e in past} == {"critical"}
    assert live.snapshot() == before
    assert (live.stats.readings, live.stats.raised, live.stats.cleared) == stats
    assert kinds(live.evaluate_many(readings[10:])) == ["raised"]


def test_replay_reports_an_episode_open_at_the_end_as_raised_only() -> None:
    assert kinds(replay(DEFAULT_RULES, series([1200] * 10))) == ["raised"]
