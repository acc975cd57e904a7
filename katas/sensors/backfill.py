"""History for the historical-query NFR: a month of rollups and a day of raw readings of one building, at
full density, generated inside ClickHouse.

The kata's historical query is "one month, one building, under 10 s", and a miniature run lasts minutes,
so the check writes the month first. Streaming 259 M readings through the pipeline would take the whole
machine for hours; the rollups they would produce are what the query reads, so those are generated
directly: `backfill_rollups` writes, for every minute of the month, one 1-minute row per zone and sensor
type (what a zone of the fleet's layout reports in a minute: 6 readings of each of its sensors of the
type), the floor and building rows summed from them, and the 1-hour rows rolled up from the minutes,
exactly as the aggregator's `rollup_hours` does. `backfill_raw_day` writes a day of raw readings of the
same building (1,000 sensors every 10 s: 8.64 M rows) into the hot table, which the recorder then
archives like any other day.

Values follow simple daily curves (office hours on weekdays, HVAC setback at night, daylight) with
deterministic noise (a hash of the row), so they look like a building and are the same on every run. Rows
are made by `INSERT ... SELECT ... FROM numbers(...)`, a day (rollups) or an hour (raw) per statement:
nothing passes through Python, and other queries of the store run between the statements (the chDB store
owner runs one query at a time).

Both are idempotent: the tables collapse rows with the same key, and the floor, building and hour rows
are computed from the deduplicated (FINAL) rows below them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from katas.infra.clickhouse import ClickHouse
from katas.sensors.fleet import Fleet
from katas.sensors.raw import RAW, day_start, sql_name, sql_string, sql_time
from katas.sensors.readings import SENSOR_TYPES, UNITS, SensorType
from katas.sensors.storage import WINDOWS

MINUTES_PER_DAY: Final = 1440


@dataclass(frozen=True)
class SensorSlot:
    floor: str
    zone: str
    sensor_id: str
    type: SensorType


@dataclass(frozen=True)
class Layout:
    """A building's sensors: where each is and what it measures (the fleet's layout, or a small one)."""

    sensors: tuple[SensorSlot, ...]

    @classmethod
    def of(cls, fleet: Fleet, building: str) -> Layout:
        """The layout of one of the fleet's buildings (`Fleet.build(seed, 1, 1000)` for full density)."""
        return cls(
            tuple(
                SensorSlot(s.place.floor, s.place.zone, s.place.sensor_id, s.type)
                for s in fleet.sensors_of(building)
            )
        )

    @property
    def zones(self) -> list[tuple[str, str]]:
        """(floor, zone) of every zone, in the order they first appear."""
        return list(dict.fromkeys((s.floor, s.zone) for s in self.sensors))

    def sensors_per(self, zone: tuple[str, str], kind: SensorType) -> int:
        return sum(1 for s in self.sensors if (s.floor, s.zone) == zone and s.type == kind)


@dataclass(frozen=True)
class BackfillResult:
    rows: int
    seconds: float
    statements: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def _array(values: Sequence[str]) -> str:
    return "[" + ",".join(sql_string(v) for v in values) + "]"


def _names(values: Sequence[str]) -> str:
    return "[" + ",".join(sql_name(v) for v in values) + "]"


def _noise(*parts: str) -> str:
    """A deterministic uniform number in [0, 1) from the hash of `parts` (SQL expressions)."""
    return f"(cityHash64({', '.join(parts)}) % 1000000) / 1000000.0"


def _curves(kind: str, t: str, place: str, u: str, utc_offset_min: int) -> tuple[str, str]:
    """SQL for a plausible mean of sensor type `kind` at time `t` in zone `place` (a number that varies
    per zone), with noise `u` in [0, 1); and the spread of the values around it within a minute."""
    local = f"({t} + toIntervalMinute({int(utc_offset_min)}))"
    hour = f"(toHour({local}) + toMinute({local}) / 60.0)"
    workday = f"(toDayOfWeek({local}) <= 5)"
    occupied = f"if({workday} AND {hour} >= 8 AND {hour} < 18, sin(pi() * ({hour} - 8) / 10), 0)"
    busy = f"(0.4 + ({place} % 60) / 100.0)"
    hvac = f"({workday} AND {hour} >= 6 AND {hour} < 20)"
    daylight = f"greatest(0, sin(pi() * ({hour} - 6.5) / 12))"
    bias = f"((({place} % 140) / 100.0) - 0.7)"
    mean = f"""multiIf(
        {kind} = 'temperature', 21.8 + {bias} + if({hvac}, 0, -2.5) + 1.2 * {occupied} * {busy} + 0.3 * ({u} - 0.5),
        {kind} = 'humidity', 42 + 3 * {bias} + 3 * sin(2 * pi() * ({hour} - 9) / 24) + 4 * {occupied} + ({u} - 0.5),
        {kind} = 'co2', 425 + 650 * {occupied} * {busy} + 20 * ({u} - 0.5),
        {kind} = 'occupancy', round((8 + {place} % 22) * {occupied} * {busy} + 2 * ({u} - 0.5) * {occupied}),
        if({hvac} AND {workday}, 420, 3) + 700 * {daylight} * ({place} % 3 = 0) + 30 * ({u} - 0.5))"""
    spread = f"""multiIf({kind} = 'temperature', 0.5, {kind} = 'humidity', 2.0,
        {kind} = 'co2', 25 + 120 * {occupied}, {kind} = 'occupancy', 1.0 * ({occupied} > 0), 60.0)"""
    return mean, spread


async def backfill_rollups(
    ch: ClickHouse,
    database: str,
    tenant: str,
    building: str,
    layout: Layout,
    end: datetime,
    days: int = 30,
    *,
    types: Sequence[SensorType] = SENSOR_TYPES,
    interval_s: int = 10,
    utc_offset_min: int = 0,
) -> BackfillResult:
    """Write `days` days of 1-minute rollups of `building` ending at `end` (rounded down to the hour):
    zone rows for every zone and type of `layout`, floor and building rows summed from them, and the
    1-hour rows. One day per round of statements. Returns the rows written and how long it took."""
    if days < 1:
        raise ValueError("days must be at least 1")
    zones = layout.zones
    if not zones:
        raise ValueError("the layout has no sensors")
    stop = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    first = stop - timedelta(days=days)
    t_count, z_count = len(types), len(zones)
    readings_per_minute = 60 // interval_s
    counts = [layout.sensors_per(z, k) * readings_per_minute for z in zones for k in types]
    table = f"{database}.{WINDOWS}"
    scope = f"tenant = {sql_name(tenant)} AND building = {sql_name(building)} AND size_s = 60"
    started, rows, statements = time.monotonic(), 0, 0
    for n in range(days):
        chunk = first + timedelta(days=n)
        chunk_end, c0 = chunk + timedelta(days=1), sql_time(chunk)
        span = f"start >= {c0} AND start < {sql_time(chunk_end)}"
        mean, spread = _curves("kind", "t", "zi * 7919", _noise("number", f"{n}"), utc_offset_min)
        # Zones: number -> (zone, type, minute), in the table's sort order. Zones without sensors of a
        # type (count 0) get no row, as the aggregator would write none.
        zone_rows = f"""INSERT INTO {table}
        WITH {_names([z[0] for z in zones])} AS floors, {_names([z[1] for z in zones])} AS zone_ids,
             {_array(list(types))} AS kinds, {counts} AS counts
        SELECT {sql_name(tenant)}, {sql_name(building)}, 'zone', floors[zi], zone_ids[zi], kind, 60, t, cnt,
               lo, hi, m * cnt, lo + (hi - lo) * {_noise("number", "'last'")},
               t + toIntervalMillisecond(50000 + number % 9990)
        FROM (
            SELECT number, intDiv(number, {t_count * MINUTES_PER_DAY}) + 1 AS zi,
                   intDiv(number, {MINUTES_PER_DAY}) % {t_count} + 1 AS ti, kinds[ti] AS kind,
                   {c0} + toIntervalMinute(number % {MINUTES_PER_DAY}) AS t,
                   counts[(zi - 1) * {t_count} + ti] AS cnt,
                   if(kind = 'temperature', {mean}, greatest(0, {mean})) AS m,
                   if(kind = 'temperature', m - ({spread}) * {_noise("number", "'lo'")},
                      greatest(0, m - ({spread}) * {_noise("number", "'lo'")})) AS lo,
                   m + ({spread}) * {_noise("number", "'hi'")} AS hi
            FROM numbers({z_count * t_count * MINUTES_PER_DAY})
        ) WHERE cnt > 0"""  # noqa: S608 - validated names, numbers and times
        await ch.execute(zone_rows)
        for level, group in (("floor", "floor"), ("building", "")):
            floor_col = "floor" if group else "''"
            by = "tenant, building, floor, type, start" if group else "tenant, building, type, start"
            await ch.execute(
                f"""INSERT INTO {table}
                SELECT tenant, building, '{level}', {floor_col}, '', type, 60, start, sum(count), min(min),
                       max(max), sum(sum), argMax(last, last_ts), max(last_ts)
                FROM {table} FINAL WHERE {scope} AND level = 'zone' AND {span}
                GROUP BY {by}"""  # noqa: S608
            )
        await ch.execute(
            f"""INSERT INTO {table}
            SELECT tenant, building, level, floor, zone, type, 3600, toStartOfHour(start), sum(count),
                   min(min), max(max), sum(sum), argMax(last, last_ts), max(last_ts)
            FROM {table} FINAL WHERE {scope} AND {span}
            GROUP BY tenant, building, level, floor, zone, type, toStartOfHour(start)"""  # noqa: S608
        )
        statements += 4
    present = [(z, k) for z in zones for k in types if layout.sensors_per(z, k)]
    floor_types = {(z[0], k) for z, k in present}
    scopes_per_minute = len(present) + len(floor_types) + len({k for _, k in present})
    rows = scopes_per_minute * MINUTES_PER_DAY * days
    rows += scopes_per_minute * 24 * days
    return BackfillResult(rows, time.monotonic() - started, statements)


async def backfill_raw_day(
    ch: ClickHouse,
    database: str,
    tenant: str,
    building: str,
    layout: Layout,
    day: date,
    *,
    interval_s: int = 10,
    hours: int = 24,
    utc_offset_min: int = 0,
) -> BackfillResult:
    """Write the raw readings of every sensor of `layout` every `interval_s` (each at its own phase) for
    the first `hours` hours of `day` into the hot table; one hour per statement. The day must be within
    the hot retention (ClickHouse drops rows already past the table's TTL on insert)."""
    if not 1 <= hours <= 24:
        raise ValueError("hours must be 1..24")
    if interval_s < 1 or 3600 % interval_s:
        raise ValueError("interval_s must divide an hour")
    sensors = layout.sensors
    if not sensors:
        raise ValueError("the layout has no sensors")
    zone_index = {z: i for i, z in enumerate(layout.zones)}
    ticks = 3600 // interval_s
    units = {k: UNITS[k] for k in SENSOR_TYPES}
    mean, _ = _curves("kind", "ts", "zi * 7919", _noise("number", "h"), utc_offset_min)
    started = time.monotonic()
    for hour in range(hours):
        start = day_start(day) + timedelta(hours=hour)
        await ch.execute(
            f"""INSERT INTO {database}.{RAW}
            WITH {_names([s.floor for s in sensors])} AS floors, {_names([s.zone for s in sensors])} AS zones,
                 {_names([s.sensor_id for s in sensors])} AS ids, {_array([s.type for s in sensors])} AS kinds,
                 {[zone_index[(s.floor, s.zone)] + 1 for s in sensors]} AS zone_numbers,
                 {_array(list(units))} AS unit_types, {_array(list(units.values()))} AS unit_names,
                 {hour} AS h
            SELECT {sql_name(tenant)}, {sql_name(building)}, floors[si], zones[si], ids[si], kind,
                   round(if(kind = 'temperature', {mean}, greatest(0, {mean})),
                         if(kind IN ('temperature', 'humidity'), 1, 0)),
                   unit_names[indexOf(unit_types, kind)], ts
            FROM (
                SELECT number, intDiv(number, {ticks}) + 1 AS si, kinds[si] AS kind, zone_numbers[si] AS zi,
                       {sql_time(start)} + toIntervalMillisecond(
                           (number % {ticks}) * {interval_s * 1000} + cityHash64(ids[si]) % {interval_s * 1000}
                       ) AS ts
                FROM numbers({len(sensors) * ticks})
            )"""  # noqa: S608 - validated names, numbers and times
        )
    return BackfillResult(len(sensors) * ticks * hours, time.monotonic() - started, hours)
