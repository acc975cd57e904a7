"""The cold tier: Parquet files on the object store, one folder per day and source.

Layout: `s3://<bucket>/events/date=YYYY-MM-DD/source=<source>/part-<name>.parquet`, with the same columns
as the hot table (`katas.siem.storage.STORED_COLUMNS`), rows sorted by @timestamp so the row-group
statistics let a reader skip what a time range excludes. Files are written in batches (one per day and
source per lifecycle run, or per call of `write_events`), never per event.

Searches read these files from ClickHouse itself with the `s3()` table function (`cold_table_function`),
so hot and cold are one SQL query; writes and object housekeeping go through the lab's S3 client
(`katas.infra.s3`), off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from katas.infra.s3 import S3_ACCESS_KEY, S3_SECRET_KEY, s3_client
from katas.infra.settings import infra_settings
from katas.siem.storage import EVENT_COLUMNS, PAYLOAD_COLUMNS, cold_structure, event_row, sql_string

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

EVENTS_PREFIX = "events"
MAX_DAYS_IN_GLOB = 400
"""A search over more days than this reads every date folder instead of listing the days."""
ROW_GROUP_ROWS = 128 * 1024


def _arrow_type(ch_type: str) -> pa.DataType:
    if ch_type.startswith("DateTime64"):
        return pa.timestamp("ms", tz="UTC")
    if ch_type.startswith("Array("):
        return pa.list_(pa.string())
    if "Int32" in ch_type:
        return pa.int32()
    return pa.string()


ARROW_SCHEMA = pa.schema(
    [pa.field(c.column, _arrow_type(c.ch_type), nullable=c.kind == "int") for c in EVENT_COLUMNS]
    + [pa.field(name, pa.string(), nullable=False) for name, _ in PAYLOAD_COLUMNS]
)
"""The schema of every cold file; a file is cast to it before writing, whoever produced the rows."""


@dataclass(frozen=True)
class ColdStore:
    """Where the cold tier lives, as seen by this process (boto3) and by ClickHouse (`query_endpoint`).

    Natively both are the same s3rver URL. Under Compose the ClickHouse server may reach the object store
    by another name than the services do; set `query_endpoint` to that.
    """

    endpoint: str
    bucket: str
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    query_endpoint: str = ""
    use_settings: bool = field(default=False, compare=False)
    """Build the client from `katas.infra.settings` (endpoint and credentials) rather than from `endpoint`."""

    @classmethod
    def from_settings(cls, bucket: str, *, query_endpoint: str = "") -> ColdStore:
        settings = infra_settings()
        return cls(
            endpoint=settings.require("s3_endpoint"),
            bucket=bucket,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            query_endpoint=query_endpoint,
            use_settings=True,
        )

    @cached_property
    def client(self) -> S3Client:
        return s3_client() if self.use_settings else s3_client(self.endpoint)


# ------------------------------------------------------------------------------------------- layout
def source_folder(source: str) -> str:
    """A source id as a path segment: percent-encoded, so '/' or '=' in an id cannot break the layout."""
    return quote(source, safe="") or "%00"


def partition_prefix(day: date, source: str | None = None) -> str:
    prefix = f"{EVENTS_PREFIX}/date={day.isoformat()}/"
    return prefix if source is None else f"{prefix}source={source_folder(source)}/"


def object_key(day: date, source: str, name: str) -> str:
    return f"{partition_prefix(day, source)}part-{name}.parquet"


def parse_key(key: str) -> tuple[date, str] | None:
    """(day, source) of an object key in the layout, or None for anything else."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != EVENTS_PREFIX:
        return None
    if not parts[1].startswith("date=") or not parts[2].startswith("source="):
        return None
    try:
        day = date.fromisoformat(parts[1].removeprefix("date="))
    except ValueError:
        return None
    folder = parts[2].removeprefix("source=")
    return day, ("" if folder == "%00" else unquote(folder))


def days_between(start: datetime, end: datetime) -> list[date]:
    first, last = start.date(), end.date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def cold_table_function(cold: ColdStore, start: datetime, end: datetime) -> str:
    """ClickHouse's `s3(...)` over the cold files of the days from `start` to `end` (UTC dates).

    Only the date folders of the range are listed; a search over more than MAX_DAYS_IN_GLOB days reads
    every folder. The column list is given explicitly, so a range with no files reads as empty.
    """
    if (end.date() - start.date()).days >= MAX_DAYS_IN_GLOB:
        pattern = "*"
    else:
        days = days_between(start, end) or [start.date()]
        pattern = "{" + ",".join(d.isoformat() for d in days) + "}"
    base = (cold.query_endpoint or cold.endpoint).rstrip("/")
    url = f"{base}/{cold.bucket}/{EVENTS_PREFIX}/date={pattern}/*/*.parquet"
    return (
        f"s3({sql_string(url)}, {sql_string(cold.access_key)}, {sql_string(cold.secret_key)}, "
        f"'Parquet', {sql_string(cold_structure())})"
    )


# ------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class StoredObject:
    key: str
    rows: int
    size: int
    etag: str


def to_cold_table(table: pa.Table) -> pa.Table:
    """`table` with the cold schema's columns, in order, cast to its types, sorted by @timestamp."""
    table = table.select([f.name for f in ARROW_SCHEMA]).cast(ARROW_SCHEMA)
    return table.sort_by("timestamp")


def events_table(events: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Normalized events as a cold-schema Arrow table (the same row mapping as the hot store)."""
    rows = [event_row(event) for event in events]
    columns: dict[str, list[Any]] = {f.name: [] for f in ARROW_SCHEMA}
    for row in rows:
        for name, values in columns.items():
            value = row[name]
            values.append(datetime.fromisoformat(value + "+00:00") if name == "timestamp" else value)
    return to_cold_table(pa.table(columns))


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(
        to_cold_table(table), buffer, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=True
    )
    return buffer.getvalue()


async def put_parquet(cold: ColdStore, key: str, table: pa.Table) -> StoredObject:
    """Write `table` as one Parquet object and verify it: the stored size and MD5 ETag must match."""
    body = parquet_bytes(table)
    etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
    await asyncio.to_thread(cold.client.put_object, Bucket=cold.bucket, Key=key, Body=body)
    stored = StoredObject(key=key, rows=table.num_rows, size=len(body), etag=etag)
    if not await verify_object(cold, stored):
        raise RuntimeError(f"cold object {key} did not verify after writing")
    return stored


async def verify_object(cold: ColdStore, stored: StoredObject) -> bool:
    """Whether the object is there with the size and content hash it was written with."""
    try:
        head = await asyncio.to_thread(cold.client.head_object, Bucket=cold.bucket, Key=stored.key)
    except ClientError:
        return False
    return int(head["ContentLength"]) == stored.size and head["ETag"].strip('"') == stored.etag


async def write_events(cold: ColdStore, events: Iterable[Mapping[str, Any]], name: str) -> list[StoredObject]:
    """Write normalized events straight to cold storage, one object per (day, source), named `name`.

    For seeding history (the lab's 10M-event store) and for tests; the pipeline's path is the lifecycle.
    """
    table = events_table(events)
    days = [ts.date() for ts in table.column("timestamp").to_pylist()]
    sources = table.column("labels_source").to_pylist()
    indices: dict[tuple[date, str], list[int]] = defaultdict(list)
    for i, (day, source) in enumerate(zip(days, sources, strict=True)):
        indices[(day, source)].append(i)
    written = []
    for (day, source), rows in sorted(indices.items()):
        written.append(await put_parquet(cold, object_key(day, source, name), table.take(rows)))
    return written


# ----------------------------------------------------------------------------------------- listing
async def list_keys(cold: ColdStore, prefix: str) -> list[str]:
    def _list() -> list[str]:
        keys: list[str] = []
        paginator = cold.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=cold.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    return await asyncio.to_thread(_list)


async def delete_keys(cold: ColdStore, keys: Sequence[str]) -> int:
    def _delete() -> int:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            cold.client.delete_objects(
                Bucket=cold.bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}
            )
        return len(keys)

    return await asyncio.to_thread(_delete)


async def expire_cold(cold: ColdStore, before: date) -> int:
    """Delete every cold object of a day before `before` (the cold retention); returns objects deleted."""
    keys = await list_keys(cold, f"{EVENTS_PREFIX}/date=")
    expired = [key for key in keys if (parsed := parse_key(key)) is not None and parsed[0] < before]
    return await delete_keys(cold, expired)


async def read_objects(cold: ColdStore, keys: Sequence[str]) -> pa.Table:
    """Read cold objects back into one Arrow table (tests and tools; searches read through ClickHouse)."""

    def _read() -> pa.Table:
        tables = []
        for key in keys:
            body = cold.client.get_object(Bucket=cold.bucket, Key=key)["Body"].read()
            tables.append(pq.read_table(io.BytesIO(body)).cast(ARROW_SCHEMA))
        return pa.concat_tables(tables) if tables else ARROW_SCHEMA.empty_table()

    return await asyncio.to_thread(_read)
