"""The sensors check without servers: its plans from the card, the rate over a window of counter samples,
the injected breaches and the alerts they are matched with, the dashboard's events, the loss check, the
history and tier verdicts, the ratio rows and what fails the check."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from katas.catalog import get_card
from katas.checking import card_target, not_measured
from katas.infra.bench import BenchResult
from katas.scorecard import Measurement, Scorecard
from katas.sensors.check import (
    CO2_RULE,
    HEADROOM,
    INTERVAL_S,
    QUIET_PPM,
    Injection,
    ObserverResult,
    Sample,
    SseReader,
    backfilled_hours,
    bucket_quantile,
    choose_zones,
    dashboard_picks,
    first_due,
    histogram_buckets,
    history_points,
    loss_of,
    match_alerts,
    metric_sums,
    newest_as_of,
    plan_for,
    problems_of,
    ratio_measurement,
    tiers_verdict,
    window_rate,
)
from katas.sensors.fleet import INTERVAL_MS, Fleet
from katas.sensors.load import Letter
from katas.sensors.load import plan as load_plan

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet.build(1, 6, 20, 3)


# --------------------------------------------------------------------------------------------- plans
def test_both_plans_run_the_cards_rate_and_sensor_count_with_headroom() -> None:
    card = get_card("sensors")
    rate, sensors = card_target(card, "ingest_readings_per_s"), card_target(card, "distinct_sensors")
    for is_short in (True, False):
        plan = plan_for(card, short=is_short)
        assert (plan.ingest_target, plan.sensors_target) == (rate, sensors)
        assert plan.rate >= rate * HEADROOM
        assert plan.sensors >= sensors * HEADROOM
        assert plan.rate == plan.sensors / INTERVAL_S
        assert 0 < plan.warm_up_s < plan.sustained_s
    short, full = plan_for(card, short=True), plan_for(card, short=False)
    assert short.sustained_s < full.sustained_s
    assert short.history_queries < full.history_queries
    assert short.backfill_days == full.backfill_days == 30, "a month of history in both"


def test_the_plans_sensors_fit_the_fleet_the_stack_serves() -> None:
    plan = plan_for(get_card("sensors"), short=True)
    assert plan.sensors <= 50 * 1000


@pytest.mark.parametrize("short", [True, False])
def test_every_injected_breach_alerts_before_the_load_ends(short: bool) -> None:
    plan = plan_for(get_card("sensors"), short=short)
    offsets = plan.injection_offsets(CO2_RULE.for_s)
    assert len(offsets) == plan.injections
    assert offsets == sorted(offsets)
    for offset in offsets:
        assert offset + CO2_RULE.for_s + INTERVAL_S < plan.sustained_s


def test_a_run_too_short_for_the_rule_injects_nothing() -> None:
    plan = plan_for(get_card("sensors"), short=True)
    assert plan.injection_offsets(plan.sustained_s) == []


# ---------------------------------------------------------------------------------------- statistics
def test_a_window_rate_spans_the_first_and_last_sample_inside_it() -> None:
    samples = [Sample(t, {"recorder": 100.0 * t}) for t in (0.0, 1.0, 2.0, 3.0, 4.0)]
    samples[3] = Sample(3.0, {"recorder": 1000.0})  # outside the window: ignored
    assert window_rate(samples, 0.5, 2.5, "recorder") == (100.0, 1.0)
    assert window_rate(samples, 0.0, 4.0, "recorder") == (100.0, 4.0)
    assert window_rate(samples, 0.5, 1.5, "recorder") is None, "one sample cannot make a rate"
    assert window_rate(samples, 0.0, 4.0, "bridge") is None


METRICS = """\
# HELP recorder_readings_total readings written
# TYPE recorder_readings_total counter
recorder_readings_total 1234.0
# HELP alerter_detection_latency_seconds detection latency
# TYPE alerter_detection_latency_seconds histogram
alerter_detection_latency_seconds_bucket{le="1.0"} 50.0
alerter_detection_latency_seconds_bucket{le="5.0"} 99.0
alerter_detection_latency_seconds_bucket{le="30.0"} 100.0
alerter_detection_latency_seconds_bucket{le="+Inf"} 100.0
alerter_detection_latency_seconds_count 100.0
alerter_detection_latency_seconds_sum 150.0
"""


def test_counters_and_a_histograms_buckets_are_read_from_metrics_text() -> None:
    assert metric_sums(METRICS)["recorder_readings_total"] == 1234.0
    buckets = histogram_buckets(METRICS, "alerter_detection_latency_seconds")
    assert buckets[0] == (1.0, 50.0)
    assert buckets[-1] == (math.inf, 100.0)
    assert bucket_quantile(buckets, 0.5) == (1.0, 100)
    assert bucket_quantile(buckets, 0.99) == (5.0, 100)
    assert bucket_quantile(buckets, 1.0) == (30.0, 100)
    assert bucket_quantile([], 0.99) is None
    assert bucket_quantile([(1.0, 0.0), (math.inf, 0.0)], 0.99) is None


# ------------------------------------------------------------------------------------------- alerts
def test_a_sensor_reports_first_at_its_phase_at_or_after_a_moment() -> None:
    assert first_due(2500, T0) == T0 + timedelta(milliseconds=2500)
    assert first_due(0, T0) == T0
    assert first_due(2500, T0 + timedelta(seconds=3)) == T0 + timedelta(milliseconds=12_500)


def test_an_injection_is_due_the_rules_duration_after_its_first_breaching_reading(fleet: Fleet) -> None:
    sensor = next(s for s in fleet.sensors if s.type == "co2")
    injection = Injection(sensor, T0, T0 + timedelta(minutes=5), 60.0)
    first = first_due(sensor.phase_ms, T0)
    assert injection.due == first + timedelta(seconds=60)
    waited = injection.due.timestamp() + 40
    assert injection.latency(waited) == pytest.approx(40), "not raised: the time waited since it was due"
    injection.raised_ts, injection.arrived_at = injection.due, injection.due.timestamp() + 1.5
    assert injection.latency(waited) == pytest.approx(1.5)


def _alert(
    sensor_id: str, ts: datetime, received_at: float, kind: str = "raised", rule: str = "co2-high"
) -> dict[str, object]:
    return {
        "channel": "sensors",
        "received_at": received_at,
        "payload": {
            "kind": kind,
            "rule": rule,
            "sensor_id": sensor_id,
            "ts": ts.isoformat().replace("+00:00", "Z"),
        },
    }


def test_alerts_are_matched_to_their_injection_and_the_rest_counted(fleet: Fleet) -> None:
    co2 = [s for s in fleet.sensors if s.type == "co2"]
    a, b = (
        Injection(co2[0], T0, T0 + timedelta(minutes=3), 60),
        Injection(co2[1], T0, T0 + timedelta(minutes=3), 60),
    )
    raised = T0 + timedelta(seconds=65)
    lines = [
        _alert(co2[0].id, T0 - timedelta(minutes=1), 1.0),  # before the injection: the building's own
        _alert(co2[0].id, raised, raised.timestamp() + 2),
        _alert(co2[0].id, raised + timedelta(seconds=10), 5.0),  # a second one for the same sensor
        _alert(co2[1].id, raised, 7.0, kind="cleared"),
        _alert(co2[2].id, raised, 8.0, rule="temperature-band"),
        {"channel": "sensors", "received_at": 9.0, "payload": "not an alert"},
    ]
    others = match_alerts(lines, [a, b], "co2-high")
    assert (a.raised_ts, a.arrived_at) == (raised, raised.timestamp() + 2)
    assert a.latency(0) == pytest.approx(2)
    assert b.arrived_at is None
    assert others == {"raised co2-high": 2, "cleared co2-high": 1, "raised temperature-band": 1}


def test_breaches_go_to_quiet_zones_one_per_building_alternating_regions(fleet: Fleet) -> None:
    reporting = load_plan(fleet, 12.0).sensors  # every sensor of the 6 buildings
    start = T0.replace(hour=3)  # night everywhere but the Americas' evening: most zones are quiet
    chosen = choose_zones(fleet, reporting, 4, start, start + timedelta(minutes=3))
    assert len(chosen) == 4
    assert all(s.type == "co2" for s in chosen)
    assert len({s.place.building for s in chosen}) == 4, "one zone per building"
    assert [s.building.region for s in chosen[:2]] in (["eu", "us"], ["us", "eu"])
    for sensor in chosen:
        for minute in range(4):
            assert fleet.value(sensor, start + timedelta(minutes=minute)) < QUIET_PPM


def test_a_zone_whose_co2_is_already_high_is_not_chosen(fleet: Fleet) -> None:
    reporting = load_plan(fleet, 12.0).sensors
    start = T0.replace(hour=3)
    first = choose_zones(fleet, reporting, 6, start, start + timedelta(minutes=3))[0]
    override = fleet.inject(
        first.place.building, first.place.zone, "co2", 1200.0, start, start + timedelta(hours=1)
    )
    try:
        again = choose_zones(fleet, reporting, 6, start, start + timedelta(minutes=3))
    finally:
        fleet.remove(override)
    assert first not in again


# ----------------------------------------------------------------------------------------- dashboard
def test_server_sent_events_are_read_line_by_line() -> None:
    reader = SseReader()
    lines = [
        "retry: 2000",
        "event: snapshot",
        'data: {"a":',
        "data: 1}",
        "",
        ": heartbeat",
        "",
        "data: x",
        "",
    ]
    events = [e for line in lines if (e := reader.feed(line)) is not None]
    assert events == [("snapshot", '{"a":\n1}'), ("message", "x")]


def test_an_events_freshness_is_its_newest_as_of() -> None:
    data = json.dumps(
        {
            "now": "2026-03-04T12:00:05.000Z",
            "entries": [{"as_of": "2026-03-04T12:00:01.000Z"}, {"as_of": "2026-03-04T12:00:03.500Z"}, {}],
        }
    )
    assert newest_as_of(data) == T0 + timedelta(seconds=3.5)
    assert newest_as_of(json.dumps({"entries": []})) is None
    assert newest_as_of("not json") is None


def test_freshness_samples_are_taken_inside_the_window_only() -> None:
    observed = ObserverResult([("a", 10.0, 1.0), ("b", 20.0, 2.0), ("a", 30.0, 9.0)], {}, {}, None, {})
    assert observed.lags_within(15.0, 30.0) == [2.0, 9.0]


def test_a_look_at_the_pages_counts_the_time_since_their_newest_reading() -> None:
    observed = ObserverResult([], {}, {}, None, {})
    observed.look(100.0)
    assert observed.shown == [], "no page has shown anything yet"
    observed.newest.update({"a": 98.5, "b": 90.0})
    observed.look(100.0)
    observed.look(110.0)
    assert observed.shown_within(99.0, 101.0) == [1.5, 10.0]
    assert observed.shown_within(105.0, 115.0) == [11.5, 20.0], "a stream that went quiet keeps ageing"


def test_dashboards_follow_the_farthest_and_the_nearest_buildings(fleet: Fleet) -> None:
    picked = dashboard_picks(fleet.buildings, 4)
    by_latency = sorted(fleet.buildings, key=lambda b: b.latency_ms)
    assert len(picked) == len(set(picked)) == 4
    assert by_latency[-1] in picked
    assert by_latency[-2] in picked
    assert by_latency[0] in picked
    assert by_latency[1] in picked


# ---------------------------------------------------------------------------------------------- loss
def test_nothing_lost_when_every_acknowledged_message_is_stored_or_dead_lettered() -> None:
    acked = {("s1", 1), ("s1", 2), ("s2", 1)}
    letters = [Letter("sensors/t/b/f/z/s3", b"{", "json")]
    loss = loss_of(acked, acked | {("s9", 9)}, letters, {("sensors/t/b/f/z/s3", b"{"): "json"})
    assert loss.lost == 0
    assert (loss.acknowledged, loss.stored, loss.letters, loss.dead_lettered, loss.extra) == (3, 3, 1, 1, 1)
    assert "not a loss" in loss.describe()


def test_an_acknowledged_reading_or_letter_missing_is_a_loss() -> None:
    acked = {("s1", 1), ("s1", 2)}
    letters = [Letter("t1", b"a", "json"), Letter("t2", b"b", "type")]
    loss = loss_of(acked, {("s1", 1)}, letters, {("t1", b"a"): "value"})
    assert loss.lost == 2
    assert loss.missing == (("s1", 2),)
    assert [letter.topic for letter in loss.missing_letters] == ["t2"]
    assert loss.wrong_reason == 1
    assert "missing" in loss.describe()


# ------------------------------------------------------------------------------------------ history
def test_a_history_answers_series_and_points_are_counted() -> None:
    answer = {"series": [{"points": [{}, {}]}, {"points": [{}]}, {"points": []}]}
    assert history_points(answer) == (3, 3)
    assert history_points({}) == (0, 0)


def test_a_month_query_covers_the_backfilled_hours_from_its_own_start() -> None:
    end = T0 + timedelta(minutes=58)  # the backfill ends at 12:00
    month = timedelta(days=30)
    assert backfilled_hours(end, 30, end - month, end) == 720, "asked in the hour it was written"
    later = T0 + timedelta(hours=1, minutes=1)
    assert backfilled_hours(end, 30, later - month, later) == 719, "an hour later: the first hour is left out"
    assert backfilled_hours(end, 30, end - timedelta(hours=5), end) == 5
    assert backfilled_hours(end, 30, end + timedelta(days=40) - month, end + timedelta(days=40)) == 0


DAY = datetime(2026, 3, 3, tzinfo=UTC)


def _readings(day_rows: int, later_rows: int) -> list[dict[str, str]]:
    rows = [
        {"ts": (DAY + timedelta(seconds=10 * i)).isoformat().replace("+00:00", "Z")} for i in range(day_rows)
    ]
    rows += [
        {"ts": (DAY + timedelta(days=1, seconds=10 * i)).isoformat().replace("+00:00", "Z")}
        for i in range(later_rows)
    ]
    return rows


def test_a_readings_answer_spanning_both_tiers_passes() -> None:
    answer = {"tiers": {"hot_days": ["2026-03-04"], "cold_days": ["2026-03-03"]}, "truncated": False,
              "readings": _readings(8640, 8)}  # fmt: skip
    ok, text = tiers_verdict(answer, DAY, 8640, 8)
    assert ok, text


@pytest.mark.parametrize(
    ("cold_days", "day_rows", "later_rows", "truncated", "hot", "why"),
    [
        ([], 8640, 8, False, 8, "cold days []"),
        (["2026-03-03"], 8000, 8, False, 8, "8,000 readings of 2026-03-03"),
        (["2026-03-03"], 8640, 7, False, 8, "the hot table holds 8"),
        (["2026-03-03"], 8640, 8, True, 8, "truncated"),
        (["2026-03-03"], 8640, 0, False, 0, "no hot readings"),
    ],
)
def test_a_readings_answer_missing_a_tier_or_rows_fails(
    cold_days: list[str], day_rows: int, later_rows: int, truncated: bool, hot: int, why: str
) -> None:
    answer = {
        "tiers": {"cold_days": cold_days},
        "truncated": truncated,
        "readings": _readings(day_rows, later_rows),
    }
    ok, text = tiers_verdict(answer, DAY, 8640, hot)
    assert not ok
    assert why in text


# ------------------------------------------------------------------------------------- ratios, verdict
def test_the_ingest_rate_is_read_as_a_share_of_a_ceiling() -> None:
    ingest = Measurement("ingest_readings_per_s", 550.0, "readings/s")
    ceiling = BenchResult("mqtt.qos1", 11_000.0, "msgs/s", "paho")
    ratio = ratio_measurement("ingest_vs_mqtt_ratio", ingest, ceiling)
    assert ratio.value == pytest.approx(0.05)
    failed = BenchResult("mqtt.qos1", 0.0, "msgs/s", "", error="no SUBACK")
    assert math.isnan(ratio_measurement("r", ingest, failed).value)
    assert "no SUBACK" in (ratio_measurement("r", ingest, failed).detail or "")
    assert math.isnan(ratio_measurement("r", None, ceiling).value)


def test_a_failed_or_missing_row_and_an_extra_problem_fail_the_check() -> None:
    card = get_card("sensors")
    good = {
        "distinct_sensors": 5500.0,
        "ingest_readings_per_s": 550.0,
        "dashboard_freshness_p99_s": 1.0,
        "alert_detection_p99_s": 2.0,
        "hvac_api_latency_p99_ms": 50.0,
        "building_month_query_p95_s": 3.0,
    }
    assert problems_of(Scorecard(card, good)) == []
    slow = Scorecard(card, {**good, "hvac_api_latency_p99_ms": 250.0})
    assert problems_of(slow) == ["hvac_api_latency_p99_ms: 250 misses its target"]
    missing = {k: v for k, v in good.items() if k != "building_month_query_p95_s"}
    assert problems_of(Scorecard(card, missing)) == [
        "building_month_query_p95_s was not measured: no figure recorded"
    ]
    unmeasured = Scorecard(card, {**good, "dashboard_freshness_p99_s": not_measured("d", "s", "no event")})
    assert problems_of(unmeasured) == ["dashboard_freshness_p99_s was not measured: not measured: no event"]
    assert problems_of(Scorecard(card, good), ["lost 3"]) == ["lost 3"]


def test_interval_constants_agree() -> None:
    assert INTERVAL_S * 1000 == INTERVAL_MS
