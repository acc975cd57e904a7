"""Raw readings: the hot table in each tenant's ClickHouse store, and the cold tier of Parquet files.

**Hot.** `<tenant db>.raw` holds every reading the recorder took from the readings topic, one row per
reading, in its stored unit. Readings are delivered at least once (MQTT QoS 1, the log), so the table is a
ReplacingMergeTree ordered by (building, ts, sensor_id): a redelivered reading has the same key and
collapses into one row (readers use `FINAL`). Time before sensor, because every reader wants a building's
rows in time order (the archive, the readings API, a replay), which ClickHouse then streams from the
table's order instead of sorting: measured on a full-density building day (8.64 M rows) in chDB, writing
the day's Parquet file sorted by time took 60 s from a table ordered by sensor and 7 s from this one, and
the first 100,000 readings of a day 4 s against 0.2 s. It costs about 45 % more disk (values of one
sensor are no longer adjacent), 3 bytes a reading instead of 2. It is partitioned by day, and a day's partition is dropped
whole once the day is older than the hot retention: the TTL keeps today and the `raw_hot_days` complete
days before it (`ttl_only_drop_parts`, so expiry drops parts instead of rewriting them). Rows already
past the retention when they arrive are dropped on insert by ClickHouse itself.

**Cold.** Every complete day (before today, UTC) of every building is written once as one Parquet file,
`s3://<bucket>/tenant=<t>/building=<b>/day=<YYYY-MM-DD>/readings.parquet`, rows sorted by time, by
ClickHouse itself (`INSERT INTO FUNCTION s3(...)`), so the rows never pass through Python. A day is
archived as soon as it is complete, a day before the hot tier lets go of it at the earliest (retention of
at least one complete day is enforced). The file is written again, under the same key, only if the hot day
gains readings afterwards (late ones): never with fewer, so a partition that expires part by part cannot
shrink its file. Archiving is idempotent.

What was archived is remembered in two small tables of the tenant's database: `archived`, one row per file
(building, day, readings in the file, rows the hot day had then), and `archive_scans`, per day the signature of the
hot partition (its active parts) when it was last archived. A pass looks at a day again only if its parts
changed since, so a loop over settled days costs one query on `system.parts`.

Values that reach SQL text go through `sql_string` / `sql_time` / `sql_date`, after validation upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from katas.infra.clickhouse import ClickHouse, ClickHouseError
from katas.infra.settings import infra_settings
from katas.sensors.readings import NAME, Reading

RAW: Final = "raw"
ARCHIVED: Final = "archived"
ARCHIVE_SCANS: Final = "archive_scans"
COLD_FILE: Final = "readings.parquet"
RAW_COLUMNS: Final = ("tenant", "building", "floor", "zone", "sensor_id", "type", "value", "unit", "ts")
RAW_STRUCTURE: Final = (
    "tenant String, building String, floor String, zone String, sensor_id String, type String, "
    "value Float64, unit String, ts DateTime64(3, 'UTC')"
)
"""The columns of a cold file, given to `s3()` explicitly so ClickHouse does not have to infer them."""


class RawSettings(BaseSettings):
    """The raw tiers' settings (SENSORS_* variables; `katas.sensors.settings` holds the others)."""

    model_config = SettingsConfigDict(env_prefix="SENSORS_", extra="ignore", frozen=True)

    raw_hot_days: int = Field(default=2, ge=1, le=3650)
    """Complete days the hot table keeps besides today. At least one, so a day is always archived (the
    recorder archives a day once it is complete) before its partition expires."""
    cold_bucket: str = "sensors-cold"
    cold_query_endpoint: str = ""
    """The object store's URL as ClickHouse reaches it, when that differs from KATAS_S3_ENDPOINT (Compose)."""


# ---------------------------------------------------------------------------------------------- SQL text
def sql_string(value: str) -> str:
    """A ClickHouse string literal: backslashes and quotes escaped, control characters refused."""
    if any(ord(c) < 0x20 for c in value):
        raise ValueError(f"control characters in {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_name(value: str) -> str:
    """A tenant, building, floor, zone or sensor id (readings.NAME) as a literal; anything else is refused."""
    if not NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a name (letters, digits, _ . -; 64 at most)")
    return sql_string(value)


def _ms(ts: datetime) -> str:
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts.microsecond // 1000:03d}"


def sql_time(ts: datetime) -> str:
    """An aware datetime as a DateTime64(3, 'UTC') expression (millisecond precision)."""
    if ts.tzinfo is None:
        raise ValueError(f"{ts!r} has no time zone")
    return f"toDateTime64('{_ms(ts)}', 3, 'UTC')"


def sql_date(day: date) -> str:
    return f"toDate('{day.isoformat()}')"


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_ch_time(text: str) -> datetime:
    """'YYYY-MM-DD hh:mm:ss[.fff]' as ClickHouse prints a UTC DateTime64, as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rfc3339(text: str) -> str:
    """'YYYY-MM-DD hh:mm:ss.fff' (ClickHouse, UTC) as RFC 3339, the API's format: a string operation,
    because shaping 100,000 rows through datetime objects costs more than the query."""
    return text.replace(" ", "T", 1) + "Z"


# ---------------------------------------------------------------------------------------------- schema
def raw_schema(database: str, hot_days: int) -> tuple[str, ...]:
    """The statements that create the raw tiers' tables in a tenant's database (idempotent). The TTL is
    set again on every start (metadata only), so a changed retention applies to the existing table."""
    ttl = f"toDate(ts) + toIntervalDay({int(hot_days) + 1})"
    return (
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"""CREATE TABLE IF NOT EXISTS {database}.{RAW} (
        tenant LowCardinality(String),
        building LowCardinality(String),
        floor LowCardinality(String),
        zone LowCardinality(String),
        sensor_id LowCardinality(String),
        type LowCardinality(String),
        value Float64,
        unit LowCardinality(String),
        ts DateTime64(3, 'UTC') CODEC(Delta, LZ4)
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toDate(ts)
    ORDER BY (building, ts, sensor_id)
    TTL {ttl}
    SETTINGS ttl_only_drop_parts = 1""",
        f"ALTER TABLE {database}.{RAW} MODIFY TTL {ttl} SETTINGS materialize_ttl_after_modify = 0",
        f"""CREATE TABLE IF NOT EXISTS {database}.{ARCHIVED} (
        tenant LowCardinality(String),
        building LowCardinality(String),
        day Date,
        key String,
        rows UInt64,
        source_rows UInt64,
        archived_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(archived_at)
    ORDER BY (tenant, building, day)""",
        f"""CREATE TABLE IF NOT EXISTS {database}.{ARCHIVE_SCANS} (
        tenant LowCardinality(String),
        day Date,
        parts String,
        scanned_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(scanned_at)
    ORDER BY (tenant, day)""",
    )


async def ensure_raw_schema(ch: ClickHouse, database: str, hot_days: int) -> None:
    for statement in raw_schema(database, hot_days):
        await ch.execute(statement)


# ---------------------------------------------------------------------------------------------- hot
def raw_row(reading: Reading) -> dict[str, Any]:
    p = reading.place
    return {
        "tenant": p.tenant,
        "building": p.building,
        "floor": p.floor,
        "zone": p.zone,
        "sensor_id": p.sensor_id,
        "type": reading.type,
        "value": reading.value,
        "unit": reading.unit,
        "ts": _ms(reading.ts),
    }


async def store_readings(ch: ClickHouse, database: str, readings: Iterable[Reading]) -> int:
    """Insert readings into the tenant's hot table; the number of rows sent."""
    return await ch.insert(f"{database}.{RAW}", (raw_row(r) for r in readings))


# ---------------------------------------------------------------------------------------------- cold
@dataclass(frozen=True)
class ColdTier:
    """Where the Parquet files are, as ClickHouse reaches them (it reads and writes them itself)."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    @classmethod
    def from_settings(cls, raw: RawSettings | None = None) -> ColdTier:
        raw = raw or RawSettings()
        infra = infra_settings()
        return cls(
            endpoint=raw.cold_query_endpoint or infra.require("s3_endpoint"),
            bucket=raw.cold_bucket,
            access_key=infra.s3_access_key,
            secret_key=infra.s3_secret_key,
        )

    def key(self, tenant: str, building: str, day: date) -> str:
        """The object key of a building's day."""
        return _key(tenant, building, day.isoformat())

    def url(self, key: str) -> str:
        return f"{self.endpoint.rstrip('/')}/{self.bucket}/{key}"

    def table_function(self, urls: str, structure: str = RAW_STRUCTURE) -> str:
        """ClickHouse's `s3(...)` over `urls` (one URL, or one with a {a,b} list), as Parquet."""
        args = (urls, self.access_key, self.secret_key, "Parquet", structure)
        return "s3(" + ", ".join(sql_string(a) for a in args) + ")"

    def days_function(self, tenant: str, building: str, days: Sequence[date]) -> str:
        """`s3(...)` over a building's files of `days` (read with `s3_ignore_file_doesnt_exist = 1`)."""
        if not days:
            raise ValueError("no days")
        listed = [d.isoformat() for d in sorted(set(days))]
        pattern = listed[0] if len(listed) == 1 else "{" + ",".join(listed) + "}"
        return self.table_function(self.url(_key(tenant, building, pattern)))

    def scrub(self, text: str) -> str:
        """`text` (an error, with the query in it) without the object store's secret."""
        return text.replace(self.secret_key, "***") if self.secret_key else text


def _key(tenant: str, building: str, day: str) -> str:
    """Tenant and building are names (letters, digits, _ . -), so they are path segments as they are;
    anything else is refused."""
    for part in (tenant, building):
        if not NAME.fullmatch(part):
            raise ValueError(f"{part!r} is not a name")
    return f"tenant={tenant}/building={building}/day={day}/{COLD_FILE}"


# ---------------------------------------------------------------------------------------------- archiving
@dataclass(frozen=True)
class ArchivedFile:
    tenant: str
    building: str
    day: date
    key: str
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "building": self.building,
            "day": self.day.isoformat(),
            "key": self.key,
            "rows": self.rows,
        }


@dataclass(frozen=True)
class DayPartition:
    day: date
    rows: int
    parts: str
    """A signature of the partition's active parts: any insert or merge changes it."""


async def hot_days(ch: ClickHouse, database: str) -> list[DayPartition]:
    """The days the hot table holds, with the signature of each day's parts (from `system.parts`)."""
    rows = await ch.rows(
        f"""SELECT partition, sum(rows) AS rows, hex(cityHash64(arraySort(groupArray(name)))) AS parts
        FROM system.parts WHERE database = {sql_string(database)} AND table = '{RAW}' AND active
        GROUP BY partition ORDER BY partition"""  # noqa: S608 - a validated database name
    )
    found = []
    for row in rows:
        try:
            day = date.fromisoformat(str(row["partition"]))
        except ValueError:
            continue  # not a day partition (someone else's table layout)
        if int(row["rows"]) > 0:
            found.append(DayPartition(day, int(row["rows"]), str(row["parts"])))
    return found


def days_to_scan(
    partitions: Sequence[DayPartition], scanned: Mapping[date, str], today: date, only: date | None = None
) -> list[DayPartition]:
    """The complete days (before `today`) whose parts changed since they were last archived (or never
    were); `only` narrows it to one day."""
    return [
        p
        for p in partitions
        if p.day < today and (only is None or p.day == only) and scanned.get(p.day) != p.parts
    ]


@dataclass(frozen=True)
class FileRecord:
    rows: int
    """Readings in the file."""
    source_rows: int
    """Rows the hot day had (duplicates not yet collapsed included) when the file was last checked."""


def buildings_to_write(
    counts: Mapping[str, int], archived: Mapping[str, FileRecord]
) -> tuple[list[str], list[str]]:
    """(buildings of the day without a file, buildings whose hot rows grew since their file was
    written). A day that shrank (its partition expiring part by part, duplicates collapsing) is never
    written again: the file must not lose what the hot table lets go of."""
    new = sorted(b for b in counts if b not in archived)
    grown = sorted(b for b, n in counts.items() if b in archived and n > archived[b].source_rows)
    return new, grown


async def write_day(
    ch: ClickHouse, database: str, cold: ColdTier, tenant: str, building: str, day: date
) -> ArchivedFile:
    """Write one building's day as one Parquet file (ClickHouse writes it, replacing the object), and read
    back how many rows the stored file holds."""
    key = cold.key(tenant, building, day)
    start, end = day_start(day), day_start(day + timedelta(days=1))
    columns = ", ".join(RAW_COLUMNS)
    url = cold.url(key)
    try:
        await ch.execute(
            f"""INSERT INTO FUNCTION {cold.table_function(url)}
            SELECT {columns} FROM {database}.{RAW} FINAL
            WHERE tenant = {sql_name(tenant)} AND building = {sql_name(building)}
              AND ts >= {sql_time(start)} AND ts < {sql_time(end)}
            ORDER BY ts, sensor_id
            SETTINGS s3_truncate_on_insert = 1, output_format_parquet_compression_method = 'zstd'"""  # noqa: S608 - validated values
        )
        stored = await ch.scalar(f"SELECT count() FROM {cold.table_function(url)}")  # noqa: S608
    except ClickHouseError as exc:
        raise ClickHouseError(cold.scrub(str(exc))) from None
    return ArchivedFile(tenant, building, day, key, int(stored or 0))


async def archive_tenant(
    ch: ClickHouse,
    database: str,
    tenant: str,
    cold: ColdTier,
    *,
    today: date,
    only: date | None = None,
) -> list[ArchivedFile]:
    """One archive pass over a tenant's hot table: every complete day whose parts changed since it was
    last looked at, and in it every building without a file yet or with more readings than its file,
    written to the cold tier. Returns the files written. Safe to run again at any time; a pass over
    settled days writes nothing."""
    t = sql_name(tenant)
    scanned = {
        date.fromisoformat(str(r["day"])): str(r["parts"])
        for r in await ch.rows(
            f"SELECT day, parts FROM {database}.{ARCHIVE_SCANS} FINAL WHERE tenant = {t}"  # noqa: S608
        )
    }
    written: list[ArchivedFile] = []
    for partition in days_to_scan(await hot_days(ch, database), scanned, today, only):
        day = partition.day
        counts = {
            str(r["building"]): int(r["rows"])
            for r in await ch.rows(
                f"""SELECT building, count() AS rows FROM {database}.{RAW}
                WHERE tenant = {t} AND toDate(ts) = {sql_date(day)} GROUP BY building"""  # noqa: S608
            )
        }
        archived = {
            str(r["building"]): FileRecord(int(r["rows"]), int(r["source_rows"]))
            for r in await ch.rows(
                f"""SELECT building, rows, source_rows FROM {database}.{ARCHIVED} FINAL
                WHERE tenant = {t} AND day = {sql_date(day)}"""  # noqa: S608
            )
        }
        new, grown = buildings_to_write(counts, archived)
        for building in grown:
            # More rows may only be repeats that collapse: write again only if the day holds more
            # distinct readings than the file; otherwise remember the count and leave the file.
            distinct = int(
                await ch.scalar(
                    f"""SELECT count() FROM {database}.{RAW} FINAL
                    WHERE tenant = {t} AND building = {sql_name(building)}
                      AND toDate(ts) = {sql_date(day)}"""  # noqa: S608
                )
                or 0
            )
            if distinct > archived[building].rows:
                new.append(building)
            else:
                await _record(ch, database, tenant, building, day, cold.key(tenant, building, day),
                              archived[building].rows, counts[building])  # fmt: skip
        for building in new:
            file = await write_day(ch, database, cold, tenant, building, day)
            await _record(ch, database, tenant, building, day, file.key, file.rows, counts[building])
            written.append(file)
        await ch.insert(
            f"{database}.{ARCHIVE_SCANS}",
            [
                {
                    "tenant": tenant,
                    "day": day.isoformat(),
                    "parts": partition.parts,
                    "scanned_at": _ms(datetime.now(UTC)),
                }
            ],
        )
    return written


async def _record(
    ch: ClickHouse, database: str, tenant: str, building: str, day: date, key: str, rows: int, source: int
) -> None:
    row = {
        "tenant": tenant,
        "building": building,
        "day": day.isoformat(),
        "key": key,
        "rows": rows,
        "source_rows": source,
        "archived_at": _ms(datetime.now(UTC)),
    }
    await ch.insert(f"{database}.{ARCHIVED}", [row])


async def archived_days(
    ch: ClickHouse, database: str, tenant: str, building: str, first: date, last: date
) -> dict[date, int]:
    """The building's days from `first` to `last` that have a cold file, with the readings in each file."""
    rows = await ch.rows(
        f"""SELECT day, rows FROM {database}.{ARCHIVED} FINAL
        WHERE tenant = {sql_name(tenant)} AND building = {sql_name(building)}
          AND day >= {sql_date(first)} AND day <= {sql_date(last)}"""  # noqa: S608 - validated values
    )
    return {date.fromisoformat(str(r["day"])): int(r["rows"]) for r in rows}
