"""Where the aggregates live: final windows in ClickHouse (chDB natively), the live view in Redis.

ClickHouse holds the 1-minute and 1-hour rollups (`windows` in each tenant's database, see
`katas.sensors.stores`), one row per scope, sensor type, size and window start. The table is a ReplacingMergeTree versioned by `count`: a window written again after an
aggregator restart (which re-reads the readings of windows that were still open) can only hold fewer
readings than the first write or the same, so the most complete row of a window is the one that stays.

Redis holds, per building, the latest window of every zone, floor and building scope and sensor type (one
hash per building, `sensors:{tenant}:{building}:live`), which the HVAC API and the dashboard read. A key
per tenant prefix lets Redis' own ACLs keep each tenant's API connection to its own keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from redis.asyncio import Redis

from katas.infra.clickhouse import ClickHouse
from katas.sensors.aggregation import WindowResult
from katas.sensors.readings import format_timestamp

WINDOWS: Final = "windows"
STORED_SIZES_S: Final = (60, 3600)
"""The rollups kept in ClickHouse: 1 minute and 1 hour. 10 s windows feed only the live view."""
LIVE_SIZE_S: Final = 10
"""The live view's window: the freshest aggregate that still averages every sensor of a zone once."""


def schema(database: str) -> tuple[str, ...]:
    """The statements that create a tenant's database and its tables (idempotent)."""
    return (
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"""CREATE TABLE IF NOT EXISTS {database}.{WINDOWS} (
        tenant LowCardinality(String),
        building LowCardinality(String),
        level LowCardinality(String),
        floor String,
        zone String,
        type LowCardinality(String),
        size_s UInt32,
        start DateTime64(3, 'UTC'),
        count UInt64,
        min Float64,
        max Float64,
        sum Float64,
        last Float64,
        last_ts DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(count)
    PARTITION BY toYYYYMM(start)
    ORDER BY (tenant, building, size_s, level, floor, zone, type, start)""",
    )


def _time(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts.microsecond // 1000:03d}"


def window_row(result: WindowResult) -> dict[str, Any]:
    scope = result.scope
    return {
        "tenant": scope.tenant,
        "building": scope.building,
        "level": scope.level,
        "floor": scope.floor or "",
        "zone": scope.zone or "",
        "type": result.type,
        "size_s": result.size_s,
        "start": _time(result.start),
        "count": result.count,
        "min": result.min,
        "max": result.max,
        "sum": result.sum,
        "last": result.last,
        "last_ts": _time(result.last_ts),
    }


async def ensure_schema(ch: ClickHouse, database: str) -> None:
    for statement in schema(database):
        await ch.execute(statement)


async def store_windows(ch: ClickHouse, database: str, results: Iterable[WindowResult]) -> int:
    """Insert the final windows of the stored sizes; the number of rows written."""
    rows = (window_row(r) for r in results if r.size_s in STORED_SIZES_S)
    return await ch.insert(f"{database}.{WINDOWS}", rows)


async def rollup_hours(ch: ClickHouse, database: str, hours: Iterable[datetime]) -> None:
    """Roll the final 1-minute rows of each hour (its start) up into one 1-hour row per scope and type.

    Run once the hour's last minute is final; running it again writes the same rows, which the table
    collapses. `FINAL` reads each minute's most complete row."""
    for hour in hours:
        start = _time(hour)
        await ch.execute(
            f"""INSERT INTO {database}.{WINDOWS}
            SELECT tenant, building, level, floor, zone, type, 3600, toStartOfHour(start), sum(count),
                   min(min), max(max), sum(sum), argMax(last, last_ts), max(last_ts)
            FROM {database}.{WINDOWS} FINAL
            WHERE size_s = 60 AND start >= toDateTime64('{start}', 3, 'UTC')
              AND start < toDateTime64('{start}', 3, 'UTC') + INTERVAL 1 HOUR
            GROUP BY tenant, building, level, floor, zone, type, toStartOfHour(start)"""  # noqa: S608 - a formatted time
        )


# ------------------------------------------------------------------------------------------- live view
def live_key(tenant: str, building: str) -> str:
    return f"sensors:{tenant}:{building}:live"


def live_field(result: WindowResult) -> str:
    scope = result.scope
    return f"{scope.level}|{scope.floor or ''}|{scope.zone or ''}|{result.type}"


def live_value(result: WindowResult) -> dict[str, Any]:
    return {
        "start": format_timestamp(result.start),
        "size_s": result.size_s,
        "mean": result.mean,
        "min": result.min,
        "max": result.max,
        "last": result.last,
        "count": result.count,
        "as_of": format_timestamp(result.last_ts),
    }


class LiveView:
    """Writes the newest live-size window of every scope and type to its building's hash, and publishes
    the fields that changed on the channel of the same name (what a dashboard's live stream relays).

    A window older than the one already shown (a late reading completing the previous window) does not
    replace it: the view shows the latest window. The newest start per field is remembered here; every
    building is aggregated by one worker (the readings topic is keyed by building), so this process is the
    only writer of its buildings' hashes."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._shown: dict[tuple[str, str], datetime] = {}

    async def write(self, results: Sequence[WindowResult]) -> int:
        newest: dict[tuple[str, str], WindowResult] = {}
        for result in results:
            if result.size_s != LIVE_SIZE_S:
                continue
            key, field = live_key(result.scope.tenant, result.scope.building), live_field(result)
            shown = self._shown.get((key, field))
            if shown is not None and result.start < shown:
                continue
            self._shown[(key, field)] = result.start
            newest[(key, field)] = result
        if not newest:
            return 0
        changed: dict[str, list[dict[str, Any]]] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for (key, field), result in newest.items():
                value = live_value(result)
                pipe.hset(key, field, json.dumps(value, separators=(",", ":")))
                changed.setdefault(key, []).append({"field": field, **value})
            for key, fields in changed.items():
                pipe.publish(key, json.dumps(fields, separators=(",", ":")))  # the dashboards' live feed
            await pipe.execute()
        return len(newest)


async def read_live(redis: Redis, tenant: str, building: str) -> dict[str, dict[str, Any]]:
    """The building's live hash: field (level|floor|zone|type) -> the window's figures."""
    raw = await redis.hgetall(live_key(tenant, building))
    return {(k.decode() if isinstance(k, bytes) else str(k)): json.loads(v) for k, v in raw.items()}
