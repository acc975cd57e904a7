"""Historical queries without servers: what a caller may ask (and the reason a bad query is refused), the
default step, the SQL values, the answer's shape, and which tier answers which day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katas.sensors.history import (
    MAX_POINTS,
    READINGS_CAP,
    BadQueryError,
    TooManyPointsError,
    aligned,
    history_sql,
    parse_history,
    parse_readings,
    plan_tiers,
    raw_history_sql,
    readings_sql,
    shape_history,
)
from katas.sensors.raw import ColdTier

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
COLD = ColdTier("http://127.0.0.1:9000", "sensors-cold", "KEY", "SECRET")


def query(**given: str | None) -> dict[str, str | None]:
    base: dict[str, str | None] = {
        "type": "co2",
        "from": "2026-03-02T08:00:00Z",
        "to": "2026-03-02T20:00:00Z",
    }
    return base | given


def test_a_day_or_less_defaults_to_minutes_and_longer_to_hours() -> None:
    day = parse_history(query(to="2026-03-03T08:00:00Z"))
    assert (day.step_s, day.level, day.type) == (60, "building", "co2")
    assert day.start == T0
    assert day.end == T0 + timedelta(days=1)
    assert parse_history(query(to="2026-03-03T08:00:01Z")).step_s == 3600
    assert parse_history(query(to="2026-04-01T00:00:00+02:00", step="3600", level="zone")).step_s == 3600
    assert parse_history(query(step="3600")).step_s == 3600  # asked for, on a short range
    month = parse_history(query(**{"from": "2026-02-01T00:00:00Z", "to": "2026-03-03T00:00:00Z"}))
    assert month.step_s == 3600


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": None}, "type: Field required"),
        ({"type": "pressure"}, "type: Input should be"),
        ({"level": "room"}, "level: Input should be"),
        ({"step": "15"}, "step: Input should be 60 or 3600"),
        ({"step": "sixty"}, "step: Input should be 60 or 3600"),
        ({"from": None}, "from: Field required"),
        ({"from": "2026-03-02T08:00:00"}, "has no time zone"),
        ({"from": "yesterday"}, "is not an RFC 3339 timestamp"),
        ({"from": "1900-01-01T00:00:00Z", "to": "1900-01-02T00:00:00Z"}, "is outside 1970..2199"),
        ({"to": "2026-03-02T08:00:00Z"}, "'to' must be after 'from'"),
        ({"to": "2027-04-07T08:00:00Z"}, "longer than 400 days"),
        ({"to": "2026-03-12T08:00:00Z", "step": "60"}, "points per series at step=60"),
        ({"tz": "UTC"}, "tz: Extra inputs are not permitted"),
    ],
)
def test_a_bad_history_query_is_refused_with_its_reason(change: dict[str, str | None], reason: str) -> None:
    with pytest.raises(BadQueryError, match=reason):
        parse_history(query(**change))


def test_a_readings_query_takes_a_sensor_id_and_nothing_that_could_be_sql() -> None:
    params = parse_readings(
        {"from": "2026-03-02T08:00:00Z", "to": "2026-03-02T09:00:00Z", "sensor": "b-1-tmp1"}
    )
    assert params.sensor == "b-1-tmp1"
    for hostile in ("x' OR 1=1 --", "a b", "", "-lead", "é"):
        with pytest.raises(BadQueryError, match="is not a sensor id"):
            parse_readings({"from": "2026-03-02T08:00:00Z", "to": "2026-03-02T09:00:00Z", "sensor": hostile})
    with pytest.raises(BadQueryError, match="longer than 31 days"):
        parse_readings({"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"})


@given(st.dictionaries(st.sampled_from(["type", "level", "from", "to", "step", "x"]), st.text(max_size=40)))
def test_any_history_query_parses_or_is_refused_with_a_reason(given_query: dict[str, str]) -> None:
    try:
        params = parse_history(given_query)
    except BadQueryError as exc:
        reason = str(exc)
        assert reason, "refused without a reason"
        return
    assert params.start < params.end
    history_sql("sensors_t", "t", "b-001", params)  # and every value it holds makes SQL


def test_history_sql_reads_one_tenants_database_with_every_value_quoted() -> None:
    sql = history_sql("sensors_acme", "acme", "lon-001", parse_history(query(level="zone")))
    assert "sensors_acme.windows FINAL" in sql
    assert "tenant = 'acme' AND building = 'lon-001' AND level = 'zone' AND type = 'co2'" in sql
    assert "size_s = 60" in sql
    assert f"LIMIT {MAX_POINTS + 1}" in sql
    hourly = history_sql("sensors_acme", "acme", "lon-001", parse_history(query(step="3600")))
    assert "size_s = 3600" in hourly
    assert "size_s = 60" in hourly
    with pytest.raises(ValueError, match="is not a name"):
        history_sql("sensors_acme", "acme", "lon' OR '1", parse_history(query()))


def test_windows_align_down_to_the_step() -> None:
    assert aligned(datetime(2026, 3, 2, 8, 59, 59, tzinfo=UTC), 3600) == datetime(2026, 3, 2, 8, tzinfo=UTC)
    assert aligned(datetime(2026, 3, 2, 8, 0, 30, tzinfo=UTC), 60) == datetime(2026, 3, 2, 8, tzinfo=UTC)


def row(
    floor: str, zone: str, t: str, count: int, total: float, lo: float, hi: float, rows: int = 1
) -> dict[str, Any]:
    return {
        "floor": floor,
        "zone": zone,
        "t": t,
        "count": count,
        "sum": total,
        "min": lo,
        "max": hi,
        "rows": rows,
    }


def test_rows_become_one_series_per_zone_with_the_mean_of_each_window() -> None:
    params = parse_history(query(level="zone"))
    rows = [
        row("f01", "f01-z01", "2026-03-02 08:00:00.000", 6, 2520.0, 410.0, 430.0),
        row("f01", "f01-z01", "2026-03-02 08:01:00.000", 6, 2580.0, 420.0, 440.0),
        row("f02", "f02-z01", "2026-03-02 08:00:00.000", 12, 6000.0, 480.0, 520.0),
    ]
    answer = shape_history("lon-001", params, rows)
    assert {k: v for k, v in answer.items() if k != "series"} == {
        "building": "lon-001",
        "type": "co2",
        "level": "zone",
        "step_s": 60,
        "from": "2026-03-02T08:00:00.000Z",
        "to": "2026-03-02T20:00:00.000Z",
        "source": "rollups",
        "rows_read": 3,
    }
    assert [(s["floor"], s["zone"], len(s["points"])) for s in answer["series"]] == [
        ("f01", "f01-z01", 2),
        ("f02", "f02-z01", 1),
    ]
    assert answer["series"][0]["points"][1] == {
        "t": "2026-03-02T08:01:00.000Z",
        "mean": 430.0,
        "min": 420.0,
        "max": 440.0,
        "count": 6,
    }
    building = shape_history("lon-001", params, [row("", "", "2026-03-02 08:00:00.000", 1, 1.0, 1.0, 1.0)])
    assert (building["series"][0]["floor"], building["series"][0]["zone"]) == (None, None)


def test_an_answer_from_raw_readings_says_so_and_counts_the_readings_it_summed() -> None:
    params = parse_history(query(level="zone", step="3600"))
    rows = [
        row("f01", "f01-z01", "2026-03-02 08:00:00.000", 360, 151200.0, 410.0, 430.0, rows=360),
        row("f01", "f01-z01", "2026-03-02 09:00:00.000", 358, 150360.0, 400.0, 440.0, rows=358),
    ]
    answer = shape_history("lon-001", params, rows, "raw readings")
    assert (answer["source"], answer["rows_read"]) == ("raw readings", 718)
    assert [p["mean"] for p in answer["series"][0]["points"]] == [420.0, 420.0]


def test_the_hourly_rollup_query_counts_the_minutes_it_sums_for_the_hour_under_way() -> None:
    hourly = history_sql("sensors_acme", "acme", "lon-001", parse_history(query(step="3600")))
    assert "toUInt64(1) AS used" in hourly  # a 1-hour row is one row
    assert "count() AS used" in hourly  # minutes summed into the hour under way: each is one
    assert "used AS rows" in hourly


def test_raw_history_sql_groups_one_tenants_readings_into_the_rollups_windows() -> None:
    params = parse_history(
        query(level="floor", **{"from": "2026-03-02T08:00:30Z", "to": "2026-03-02T08:10:30Z"})
    )
    sql = raw_history_sql("sensors_acme", "acme", "lon-001", params)
    assert "FROM sensors_acme.raw FINAL" in sql
    assert "tenant = 'acme' AND building = 'lon-001'" in sql
    assert "type = 'co2'" in sql
    assert "SELECT floor AS floor, '' AS zone" in sql
    assert "toIntervalSecond(60)" in sql
    # The windows that start in [08:00, 08:10:30), each whole: readings up to 08:11.
    assert "ts >= toDateTime64('2026-03-02 08:00:00.000', 3, 'UTC')" in sql
    assert "ts < toDateTime64('2026-03-02 08:11:00.000', 3, 'UTC')" in sql
    assert f"LIMIT {MAX_POINTS + 1}" in sql
    building = raw_history_sql("sensors_acme", "acme", "lon-001", parse_history(query(step="3600")))
    assert "SELECT '' AS floor, '' AS zone" in building
    assert "ts < toDateTime64('2026-03-02 20:00:00.000', 3, 'UTC')" in building  # `to` on a window start
    with pytest.raises(ValueError, match="is not a name"):
        raw_history_sql("sensors_acme", "acme' OR '1", "lon-001", params)


def test_an_answer_beyond_the_point_cap_is_refused_not_cut() -> None:
    rows = [row("f01", "z", "2026-03-02 08:00:00.000", 1, 1.0, 1.0, 1.0)] * (MAX_POINTS + 1)
    with pytest.raises(TooManyPointsError, match="more than 250,000 points"):
        shape_history("lon-001", parse_history(query()), rows)


def test_a_day_is_read_cold_only_when_the_hot_table_holds_less_than_its_file() -> None:
    d1, d2, d3, d4 = (date(2026, 3, n) for n in (1, 2, 3, 4))
    plan = plan_tiers(
        d1,
        d4,
        hot_rows={d2: 100, d3: 40, d4: 10},
        archived_rows={d1: 100, d2: 100, d3: 100},
    )
    assert plan.cold == [d1, d3]  # d1 expired, d3 expiring; d2 still whole in the hot table
    assert plan.hot == [d2, d3, d4]


def test_readings_sql_dedupes_only_when_a_cold_file_is_read() -> None:
    params = parse_readings({"from": "2026-03-01T00:00:00Z", "to": "2026-03-03T00:00:00Z", "sensor": "s-1"})
    hot_only = readings_sql("sensors_acme", COLD, "acme", "lon-001", params, [])
    assert "s3(" not in hot_only
    assert "LIMIT 1 BY" not in hot_only
    assert "sensor_id = 's-1'" in hot_only
    assert f"LIMIT {READINGS_CAP + 1}" in hot_only
    both = readings_sql("sensors_acme", COLD, "acme", "lon-001", params, [date(2026, 3, 2), date(2026, 3, 1)])
    assert "tenant=acme/building=lon-001/day={2026-03-01,2026-03-02}/readings.parquet" in both
    assert "LIMIT 1 BY ts, sensor_id" in both
    assert "s3_ignore_file_doesnt_exist = 1" in both
