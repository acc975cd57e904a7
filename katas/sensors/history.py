"""Historical queries: a building's rollups over a range, and its raw readings across the hot and cold tiers.

What a caller may ask is checked here (`parse_history`, `parse_readings`: a `BadQueryError` says exactly
what is wrong), then turned into SQL with every value validated and formatted (`katas.sensors.raw.sql_*`),
run on ONE tenant's store and database, and shaped into the answer. No HTTP here:
`services/history_routes.py` is the thin adapter.

**Rollups** (`building_history`): the 1-minute or 1-hour rows of `<db>.windows` (FINAL, so each window's
most complete row) of one building, one sensor type and one level (building, floor or zone), as one series
per floor/zone. The step defaults to 60 s for ranges up to a day and 3600 s beyond. Hours whose 1-hour row
does not exist yet (the hour under way; the aggregator rolls an hour up once its last minute is final) are
summed from their minutes, so an hourly series reaches up to now.

**At query time** (`building_history(..., at_query_time=True)`, the `no-pre-aggregation` mistake): the
same series computed from the raw readings themselves, `<db>.raw` FINAL grouped per floor/zone and
window, as a dashboard without a stream processor would. Same shape and same figures (the aggregator's
windows are the readings' count, sum, min and max per window); only what the store reads differs.

Every answer says where it came from and what that cost the store: `source` is "rollups" or "raw
readings", and `rows_read` the stored rows aggregated for it (rollup rows used, or raw readings summed),
taken from the query's own result.

**Readings** (`building_readings`): raw rows from the hot table and, for days the hot table no longer holds
in full, from the day's Parquet file through ClickHouse's `s3()`; rows of a day read from both tiers are
deduplicated by (sensor, timestamp). The answer is capped (`READINGS_CAP` rows, oldest first) and says
whether it was cut.

The answers (times RFC 3339 UTC with milliseconds, `...T08:00:00.000Z`; a point's `t` is its window's start):

    history:  {"building", "type", "level", "step_s", "from", "to",
               "source": "rollups" | "raw readings", "rows_read": int,
               "series": [{"floor": str | null, "zone": str | null,
                           "points": [{"t", "mean", "min", "max", "count"}]}]}
    readings: {"building", "from", "to", "sensor": str | null, "limit", "truncated", "count",
               "tiers": {"hot_days": ["YYYY-MM-DD"], "cold_days": ["YYYY-MM-DD"]},
               "readings": [{"ts", "sensor_id", "floor", "zone", "type", "value", "unit"}]}

Series are ordered by floor and zone (one with floor and zone null at the building level, zone null at the
floor level), points by time; a window without readings has no point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from katas.infra.clickhouse import ClickHouse, ClickHouseError
from katas.sensors.raw import (
    RAW,
    ColdTier,
    archived_days,
    day_start,
    rfc3339,
    sql_name,
    sql_string,
    sql_time,
)
from katas.sensors.readings import NAME, SensorType
from katas.sensors.storage import WINDOWS

Level = Literal["building", "floor", "zone"]
Step = Literal[60, 3600]
Source = Literal["rollups", "raw readings"]
ROLLUPS: Final[Source] = "rollups"
RAW_READINGS: Final[Source] = "raw readings"
MAX_RANGE: Final = timedelta(days=400)
"""The longest history range: a year and a month, hourly (9,600 points per series)."""
MAX_READINGS_RANGE: Final = timedelta(days=31)
"""The longest raw range; a full-density building reads the row cap in about 17 minutes anyway."""
MAX_POINTS_PER_SERIES: Final = 10_080
"""A week of minutes: a longer range must use the hourly step."""
MAX_POINTS: Final = 250_000
"""Points in one answer (about 20 MB of JSON): a week of minutes of 25 zones, or 400 days of 26."""
READINGS_CAP: Final = 100_000
DAY_STEP_LIMIT: Final = timedelta(days=1)
"""Ranges up to this default to 1-minute points, longer ones to 1-hour points."""
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
"""Times outside these are refused: ClickHouse's DateTime64 covers 1900-2299, the data 1970 onwards."""


class BadQueryError(ValueError):
    """A query the API refuses (400); the message says why, field by field."""


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp")
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp") from None
    if ts.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (add Z or an offset)")
    ts = ts.astimezone(UTC)
    if not EARLIEST <= ts < LATEST:
        raise ValueError(f"{value!r} is outside {EARLIEST.year}..{LATEST.year - 1}")
    return ts


class _Range(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    start: Annotated[datetime, Field(alias="from")]
    end: Annotated[datetime, Field(alias="to")]

    @field_validator("start", "end", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> datetime:
        return _time(value)

    def _check_range(self, longest: timedelta) -> None:
        if self.end <= self.start:
            raise ValueError("'to' must be after 'from'")
        if self.end - self.start > longest:
            raise ValueError(f"the range is longer than {longest.days} days")


class HistoryParams(_Range):
    type: SensorType
    level: Level = "building"
    step: Step | None = None
    """Seconds per point; None: 60 for ranges up to a day, 3600 beyond."""

    @field_validator("step", mode="before")
    @classmethod
    def _step(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    @model_validator(mode="after")
    def _limits(self) -> HistoryParams:
        self._check_range(MAX_RANGE)
        points = (self.end - self.start).total_seconds() / self.step_s
        if points > MAX_POINTS_PER_SERIES:
            raise ValueError(
                f"{points:,.0f} points per series at step={self.step_s} (at most {MAX_POINTS_PER_SERIES:,}); "
                "use step=3600 or a shorter range"
            )
        return self

    @property
    def step_s(self) -> int:
        if self.step is not None:
            return self.step
        return 60 if self.end - self.start <= DAY_STEP_LIMIT else 3600


class ReadingsParams(_Range):
    sensor: str | None = None

    @field_validator("sensor")
    @classmethod
    def _sensor(cls, value: str | None) -> str | None:
        if value is not None and not NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a sensor id (letters, digits, _ . -; 64 at most)")
        return value

    @model_validator(mode="after")
    def _limits(self) -> ReadingsParams:
        self._check_range(MAX_READINGS_RANGE)
        return self


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "query"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def _given(query: Mapping[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in query.items() if v is not None}


def parse_history(query: Mapping[str, str | None]) -> HistoryParams:
    """The history query's parameters (`type`, `level`, `from`, `to`, `step`), or BadQueryError."""
    try:
        return HistoryParams.model_validate(_given(query))
    except ValidationError as exc:
        raise BadQueryError(_problems(exc)) from None


def parse_readings(query: Mapping[str, str | None]) -> ReadingsParams:
    """The readings query's parameters (`from`, `to`, `sensor`), or BadQueryError."""
    try:
        return ReadingsParams.model_validate(_given(query))
    except ValidationError as exc:
        raise BadQueryError(_problems(exc)) from None


# ---------------------------------------------------------------------------------------------- rollups
class Point(TypedDict):
    t: str
    mean: float
    min: float
    max: float
    count: int


class Series(TypedDict):
    floor: str | None
    zone: str | None
    points: list[Point]


class TooManyPointsError(BadQueryError):
    """The answer would hold more than MAX_POINTS points."""


def aligned(ts: datetime, step_s: int) -> datetime:
    """`ts` rounded down to a multiple of `step_s` (the start of the window it falls in)."""
    seconds = int(ts.timestamp())
    return datetime.fromtimestamp(seconds - seconds % step_s, UTC)


POINT_COLUMNS: Final = (
    "floor, zone, t, toUInt64(n) AS count, lo AS min, hi AS max, total AS sum, used AS rows"
)
"""A point as both history queries answer it; `rows` is how many stored rows it was aggregated from."""


def history_sql(database: str, tenant: str, building: str, params: HistoryParams) -> str:
    """The rollup rows of one building, type and level in the range, ordered by floor, zone and start,
    capped at MAX_POINTS + 1 rows (one more tells that the cap was hit)."""
    step = params.step_s
    scope = (
        f"tenant = {sql_name(tenant)} AND building = {sql_name(building)} "
        f"AND level = {sql_string(params.level)} AND type = {sql_string(params.type)}"
    )
    first, end = sql_time(aligned(params.start, step)), sql_time(params.end)
    table = f"{database}.{WINDOWS}"
    if step == 60:
        return f"""SELECT {POINT_COLUMNS} FROM (
            SELECT floor, zone, start AS t, count AS n, min AS lo, max AS hi, sum AS total,
                   toUInt64(1) AS used
            FROM {table} FINAL WHERE {scope} AND size_s = 60 AND start >= {first} AND start < {end})
        ORDER BY floor, zone, t LIMIT {MAX_POINTS + 1}"""  # noqa: S608 - validated values
    # Hourly: the 1-hour rows, and after the last of them (the hour under way) the minutes summed.
    return f"""WITH (SELECT max(start) FROM {table}
                 WHERE {scope} AND size_s = 3600 AND start >= {first} AND start < {end}) AS last_hour
        SELECT {POINT_COLUMNS} FROM (
            SELECT floor, zone, start AS t, count AS n, min AS lo, max AS hi, sum AS total,
                   toUInt64(1) AS used
            FROM {table} FINAL WHERE {scope} AND size_s = 3600 AND start >= {first} AND start < {end}
            UNION ALL
            SELECT floor, zone, toDateTime64(toStartOfHour(start), 3, 'UTC') AS t, sum(count) AS n,
                   min(min) AS lo, max(max) AS hi, sum(sum) AS total, count() AS used
            FROM {table} FINAL
            WHERE {scope} AND size_s = 60 AND start >= greatest({first}, last_hour + toIntervalHour(1))
              AND start < {end}
            GROUP BY floor, zone, t)
        ORDER BY floor, zone, t LIMIT {MAX_POINTS + 1}"""  # noqa: S608 - validated values


def raw_history_sql(database: str, tenant: str, building: str, params: HistoryParams) -> str:
    """The `no-pre-aggregation` mistake: the points of `history_sql` computed from the building's raw
    readings of the type, grouped per floor/zone (as the level asks) and window. The windows are those
    the rollups would return: every window starting in [aligned(from), to), each whole, so the readings
    read run to the end of the window `to` falls in."""
    step = params.step_s
    first = aligned(params.start, step)
    last = aligned(params.end - timedelta(milliseconds=1), step) + timedelta(seconds=step)
    floor = "''" if params.level == "building" else "floor"
    zone = "zone" if params.level == "zone" else "''"
    return f"""SELECT {POINT_COLUMNS} FROM (
        SELECT {floor} AS floor, {zone} AS zone,
               toDateTime64(toStartOfInterval(ts, toIntervalSecond({step})), 3, 'UTC') AS t,
               count() AS n, min(value) AS lo, max(value) AS hi, sum(value) AS total, count() AS used
        FROM {database}.{RAW} FINAL
        WHERE tenant = {sql_name(tenant)} AND building = {sql_name(building)}
          AND type = {sql_string(params.type)} AND ts >= {sql_time(first)} AND ts < {sql_time(last)}
        GROUP BY floor, zone, t)
    ORDER BY floor, zone, t LIMIT {MAX_POINTS + 1}"""  # noqa: S608 - validated values


def shape_history(
    building: str, params: HistoryParams, rows: list[dict[str, Any]], source: Source = ROLLUPS
) -> dict[str, Any]:
    """Rows of `history_sql` (or `raw_history_sql`, `source` then "raw readings") as the answer: one
    series per (floor, zone), points oldest first, and the stored rows they were aggregated from."""
    if len(rows) > MAX_POINTS:
        raise TooManyPointsError(
            f"the answer would hold more than {MAX_POINTS:,} points; use a shorter range, step=3600 or a "
            "coarser level"
        )
    series: list[Series] = []
    current: tuple[str, str] | None = None
    for row in rows:
        key = (str(row["floor"]), str(row["zone"]))
        if key != current:
            current = key
            series.append({"floor": key[0] or None, "zone": key[1] or None, "points": []})
        count = int(row["count"])
        series[-1]["points"].append(
            {
                "t": rfc3339(str(row["t"])),
                "mean": float(row["sum"]) / count if count else 0.0,
                "min": float(row["min"]),
                "max": float(row["max"]),
                "count": count,
            }
        )
    return {
        "building": building,
        "type": params.type,
        "level": params.level,
        "step_s": params.step_s,
        "from": _rfc(params.start),
        "to": _rfc(params.end),
        "source": source,
        "rows_read": sum(int(row["rows"]) for row in rows),
        "series": series,
    }


def _rfc(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def building_history(
    ch: ClickHouse,
    database: str,
    tenant: str,
    building: str,
    params: HistoryParams,
    *,
    at_query_time: bool = False,
) -> dict[str, Any]:
    """The history of one building, read from its tenant's store `ch` and database only: from the
    rollups, or with `at_query_time` (the `no-pre-aggregation` mistake) from the raw readings."""
    if at_query_time:
        rows = await ch.rows(raw_history_sql(database, tenant, building, params))
        return shape_history(building, params, rows, RAW_READINGS)
    return shape_history(building, params, await ch.rows(history_sql(database, tenant, building, params)))


# ---------------------------------------------------------------------------------------------- readings
@dataclass(frozen=True)
class TierPlan:
    """Which tier answers each day of a readings range."""

    hot: list[date]
    """Days read from the hot table (every day of the range is: it may hold rows of any day)."""
    cold: list[date]
    """Days also read from their Parquet file: archived days the hot table no longer holds in full."""


def plan_tiers(
    first: date, last: date, hot_rows: Mapping[date, int], archived_rows: Mapping[date, int]
) -> TierPlan:
    """A day is read from its cold file when it was archived and the hot table now holds fewer of its
    rows than the file (the hot partition expired, or part of it). The hot table is read for the whole
    range either way; rows of a day read from both are deduplicated."""
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    cold = [d for d in days if d in archived_rows and hot_rows.get(d, 0) < archived_rows[d]]
    return TierPlan(hot=[d for d in days if hot_rows.get(d, 0) > 0], cold=cold)


READING_COLUMNS: Final = "ts, sensor_id, floor, zone, type, value, unit"


def readings_sql(
    database: str,
    cold: ColdTier,
    tenant: str,
    building: str,
    params: ReadingsParams,
    cold_days: list[date],
) -> str:
    """The building's readings in the range from the hot table and the cold files of `cold_days`, oldest
    first, one row per (sensor, timestamp), capped at READINGS_CAP + 1 rows."""
    where = (
        f"building = {sql_name(building)} AND ts >= {sql_time(params.start)} AND ts < {sql_time(params.end)}"
    )
    if params.sensor is not None:
        where += f" AND sensor_id = {sql_name(params.sensor)}"
    hot = (
        f"SELECT {READING_COLUMNS} FROM {database}.{RAW} FINAL WHERE tenant = {sql_name(tenant)} AND {where}"  # noqa: S608
    )
    if not cold_days:
        return f"{hot} ORDER BY ts, sensor_id LIMIT {READINGS_CAP + 1}"
    files = cold.days_function(tenant, building, cold_days)
    return f"""SELECT * FROM ({hot}
        UNION ALL
        SELECT {READING_COLUMNS} FROM {files} WHERE {where})
        ORDER BY ts, sensor_id LIMIT 1 BY ts, sensor_id LIMIT {READINGS_CAP + 1}
        SETTINGS s3_ignore_file_doesnt_exist = 1"""  # noqa: S608 - validated values


async def building_readings(
    ch: ClickHouse,
    database: str,
    cold: ColdTier,
    tenant: str,
    building: str,
    params: ReadingsParams,
) -> dict[str, Any]:
    """The building's raw readings in the range, from its tenant's store `ch` and database only."""
    first, last = params.start.date(), (params.end - timedelta(milliseconds=1)).date()
    b, t = sql_name(building), sql_name(tenant)
    hot_rows = {
        date.fromisoformat(str(r["day"])): int(r["rows"])
        for r in await ch.rows(
            f"""SELECT toDate(ts) AS day, count() AS rows FROM {database}.{RAW}
            WHERE tenant = {t} AND building = {b}
              AND ts >= {sql_time(day_start(first))} AND ts < {sql_time(day_start(last + timedelta(days=1)))}
            GROUP BY day"""  # noqa: S608 - validated values
        )
    }
    archived_rows = await archived_days(ch, database, tenant, building, first, last)
    plan = plan_tiers(first, last, hot_rows, archived_rows)
    try:
        rows = await ch.rows(readings_sql(database, cold, tenant, building, params, plan.cold))
    except ClickHouseError as exc:
        raise ClickHouseError(cold.scrub(str(exc))) from None
    truncated = len(rows) > READINGS_CAP
    readings = [
        {
            "ts": rfc3339(str(row["ts"])),
            "sensor_id": row["sensor_id"],
            "floor": row["floor"],
            "zone": row["zone"],
            "type": row["type"],
            "value": row["value"],
            "unit": row["unit"],
        }
        for row in rows[:READINGS_CAP]
    ]
    return {
        "building": building,
        "from": _rfc(params.start),
        "to": _rfc(params.end),
        "sensor": params.sensor,
        "limit": READINGS_CAP,
        "truncated": truncated,
        "count": len(readings),
        "tiers": {
            "hot_days": [d.isoformat() for d in plan.hot],
            "cold_days": [d.isoformat() for d in plan.cold],
        },
        "readings": readings,
    }
