"""The usage store: usage events and their per-minute aggregates in ClickHouse (the chDB store owner natively).

Three tables and a materialized view:

* `usage_events`, the raw events, one row per request, kept `raw_ttl` (2 days) after their insert: for
  looking into a minute after the fact, and as the memory of which event ids were stored (see below).
  ReplacingMergeTree ordered by (client, minute, event id), partitioned by the day of the insert so the
  TTL drops whole parts. The TTL runs on the insert time, not on the request's time: an event replayed
  from the broker days later must still be remembered, or its next redelivery would be counted again.
* `usage_minutes`, an AggregatingMergeTree per (client, minute, route): request counts by status class as
  SimpleAggregateFunction(sum) and the latency as a `quantilesTDigest` state. States merge exactly across
  INSERTs, aggregator batches and gateway nodes (a P99 of per-batch P99s would not be a P99), and the
  t-digest keeps the state small (a few KiB at most per minute and route) with an error of about 1 % of
  rank. Kept `minutes_ttl` (400 days): billing periods and a year of capacity planning.
* `usage_minutes_mv` feeds `usage_minutes` from every INSERT into `usage_events`, in the same query.
* `usage_dead_letters`, records of the usage topic that were not usage events, with the reason.

Duplicates. The broker delivers at least once: the recorder may send an event again after a timeout that
did in fact store it, and the aggregator re-reads what it handled since its last commit after a crash. A
ReplacingMergeTree alone would not do, because the materialized view aggregates every INSERTed row,
duplicates included, before any merge. So `insert` removes duplicates before the INSERT: first within the
batch, then against the event ids already in `usage_events` (looked up by client and time range, which the
primary key serves). Every copy of an event carries its client as the partition key, so all copies land on
one partition, which one aggregator consumes at a time: the look-up and the INSERT do not race. The one
window left is a consumer-group rebalance in which a stalled old owner and the new owner of a partition
insert the same batch at once; ReplacingMergeTree then folds the raw rows, and `reconcile` shows the
difference between raw and aggregated counts should it ever happen.

The chDB store owner's HTTP interface has no query parameters, so every value in SQL goes through
`sql_string` or is a number formatted here; identifiers are only this module's constants.
"""

# ruff: noqa: S608 - SQL is built from this module's constants and values quoted by sql_string.

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from katas.api_gateway.analytics import UsageEvent, UsageWindow
from katas.infra.clickhouse import ClickHouse

RAW_TABLE = "usage_events"
MINUTES_TABLE = "usage_minutes"
MINUTES_VIEW = "usage_minutes_mv"
DEAD_LETTER_TABLE = "usage_dead_letters"

QUANTILES = (0.5, 0.95, 0.99)
_LEVELS = ", ".join(str(q) for q in QUANTILES)
DEFAULT_RAW_TTL = timedelta(days=2)
DEFAULT_MINUTES_TTL = timedelta(days=400)
DEAD_LETTER_TTL = timedelta(days=30)
LOOKUP_CHUNK = 1000
"""Event ids per duplicate look-up: keeps the query far below ClickHouse's 256 KiB query size limit."""
MAX_DEAD_PAYLOAD_CHARS = 8192


def sql_string(value: str) -> str:
    """`value` as a ClickHouse string literal: backslash, quote and NUL escaped, nothing else needed."""
    value.encode("utf-8")  # lone surrogates cannot be sent: UnicodeEncodeError
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0") + "'"


def _seconds(ttl: timedelta) -> int:
    seconds = int(ttl.total_seconds())
    if seconds <= 0:
        raise ValueError(f"a TTL must be positive, got {ttl}")
    return seconds


@dataclass(frozen=True, slots=True)
class MinuteUsage:
    """One client's use of one route in one minute."""

    minute: int
    """Start of the minute, epoch seconds UTC."""
    route: str
    requests: int
    refused: int
    """Answered 429 (rate limited)."""
    errors: int
    """Answered 5xx."""
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class ClientUsage:
    client: str
    requests: int
    refused: int
    errors: int


@dataclass(frozen=True, slots=True)
class Inserted:
    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    reason: str
    payload: bytes


def _quantile(values: Sequence[Any], index: int) -> float | None:
    value = float(values[index]) if index < len(values) else math.nan
    return round(value, 3) if math.isfinite(value) else None


class UsageStore:
    def __init__(self, ch: ClickHouse) -> None:
        self.ch = ch

    async def ensure_schema(
        self, *, raw_ttl: timedelta = DEFAULT_RAW_TTL, minutes_ttl: timedelta = DEFAULT_MINUTES_TTL
    ) -> None:
        """Create what is missing (TTLs apply to tables created here; existing tables keep theirs)."""
        await self.ch.execute(f"""
            CREATE TABLE IF NOT EXISTS {RAW_TABLE} (
              event_id String,
              at DateTime64(3, 'UTC'),
              node LowCardinality(String),
              client String,
              route LowCardinality(String),
              method LowCardinality(String),
              status UInt16,
              latency_ms Float64,
              inserted_at DateTime('UTC') DEFAULT now()
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toDate(inserted_at)
            ORDER BY (client, toStartOfMinute(at), event_id)
            TTL inserted_at + INTERVAL {_seconds(raw_ttl)} SECOND
            SETTINGS ttl_only_drop_parts = 1""")
        await self.ch.execute(f"""
            CREATE TABLE IF NOT EXISTS {MINUTES_TABLE} (
              client String,
              minute DateTime('UTC'),
              route LowCardinality(String),
              requests SimpleAggregateFunction(sum, UInt64),
              ok SimpleAggregateFunction(sum, UInt64),
              client_errors SimpleAggregateFunction(sum, UInt64),
              refused SimpleAggregateFunction(sum, UInt64),
              errors SimpleAggregateFunction(sum, UInt64),
              latency AggregateFunction(quantilesTDigest({_LEVELS}), Float64)
            ) ENGINE = AggregatingMergeTree
            PARTITION BY toYYYYMM(minute)
            ORDER BY (client, minute, route)
            TTL minute + INTERVAL {_seconds(minutes_ttl)} SECOND""")
        await self.ch.execute(f"""
            CREATE MATERIALIZED VIEW IF NOT EXISTS {MINUTES_VIEW} TO {MINUTES_TABLE} AS
            SELECT
              client,
              toStartOfMinute(at) AS minute,
              route,
              count() AS requests,
              countIf(status < 400) AS ok,
              countIf(status >= 400 AND status < 500 AND status != 429) AS client_errors,
              countIf(status = 429) AS refused,
              countIf(status >= 500) AS errors,
              quantilesTDigestState({_LEVELS})(latency_ms) AS latency
            FROM {RAW_TABLE}
            GROUP BY client, minute, route""")
        await self.ch.execute(f"""
            CREATE TABLE IF NOT EXISTS {DEAD_LETTER_TABLE} (
              topic LowCardinality(String),
              partition UInt32,
              offset UInt64,
              reason String,
              payload String,
              payload_bytes UInt32,
              received_at DateTime('UTC') DEFAULT now()
            ) ENGINE = ReplacingMergeTree
            ORDER BY (topic, partition, offset)
            TTL received_at + INTERVAL {_seconds(DEAD_LETTER_TTL)} SECOND""")

    # ------------------------------------------------------------------------------------------- writes
    async def insert(self, events: Sequence[UsageEvent]) -> Inserted:
        """Store the events not stored before (see the module's note on duplicates)."""
        unique: dict[str, UsageEvent] = {}
        for event in events:
            unique.setdefault(event.id, event)
        stored = await self._stored_ids(list(unique.values()))
        fresh = [event for event in unique.values() if event.id not in stored]
        await self.ch.insert(RAW_TABLE, (_raw_row(event) for event in fresh))
        return Inserted(len(fresh), len(events) - len(fresh))

    async def _stored_ids(self, events: Sequence[UsageEvent]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(events), LOOKUP_CHUNK):
            chunk = events[start : start + LOOKUP_CHUNK]
            clients = ", ".join(sql_string(c) for c in sorted({e.client for e in chunk}))
            ids = ", ".join(sql_string(e.id) for e in chunk)
            earliest = min(e.at for e in chunk) - 1
            latest = max(e.at for e in chunk) + 1
            rows = await self.ch.rows(f"""
                SELECT DISTINCT event_id FROM {RAW_TABLE}
                WHERE client IN ({clients})
                  AND at BETWEEN toDateTime64({earliest:.3f}, 3, 'UTC') AND toDateTime64({latest:.3f}, 3, 'UTC')
                  AND event_id IN ({ids})""")
            found.update(str(row["event_id"]) for row in rows)
        return found

    async def dead_letter(self, letters: Iterable[DeadLetter]) -> int:
        return await self.ch.insert(
            DEAD_LETTER_TABLE,
            (
                {
                    "topic": letter.topic,
                    "partition": letter.partition,
                    "offset": letter.offset,
                    "reason": letter.reason[:1000],
                    "payload": letter.payload.decode("utf-8", "backslashreplace")[:MAX_DEAD_PAYLOAD_CHARS],
                    "payload_bytes": len(letter.payload),
                }
                for letter in letters
            ),
        )

    # -------------------------------------------------------------------------------------------- reads
    async def minutes(self, client: str, window: UsageWindow) -> list[MinuteUsage]:
        """One row per minute and route of `client` in `window`, by minute then route."""
        rows = await self.ch.rows(f"""
            SELECT
              toUnixTimestamp(minute) AS minute_s,
              route,
              sum(requests) AS requests,
              sum(refused) AS refused,
              sum(errors) AS errors,
              quantilesTDigestMerge({_LEVELS})(latency) AS latency
            FROM {MINUTES_TABLE}
            WHERE client = {sql_string(client)} AND {_in_window(window)}
            GROUP BY minute, route
            ORDER BY minute, route""")
        return [
            MinuteUsage(
                minute=int(row["minute_s"]),
                route=str(row["route"]),
                requests=int(row["requests"]),
                refused=int(row["refused"]),
                errors=int(row["errors"]),
                p50_ms=_quantile(row["latency"], 0),
                p95_ms=_quantile(row["latency"], 1),
                p99_ms=_quantile(row["latency"], 2),
            )
            for row in rows
        ]

    async def summary(self, window: UsageWindow) -> list[ClientUsage]:
        """Totals per client in `window` (the unidentified requests under client ""), by client."""
        rows = await self.ch.rows(f"""
            SELECT client, sum(requests) AS requests, sum(refused) AS refused, sum(errors) AS errors
            FROM {MINUTES_TABLE}
            WHERE {_in_window(window)}
            GROUP BY client
            ORDER BY client""")
        return [
            ClientUsage(str(row["client"]), int(row["requests"]), int(row["refused"]), int(row["errors"]))
            for row in rows
        ]

    async def reconcile(self, window: UsageWindow) -> dict[str, int]:
        """Raw rows, distinct event ids and aggregated requests in `window`: equal unless a duplicate slipped
        into the aggregates (only while the raw events are still kept)."""
        raw = await self.ch.rows(f"""
            SELECT count() AS rows, uniqExact(event_id) AS events FROM {RAW_TABLE}
            WHERE {_in_window(window, "toStartOfMinute(at)")}""")
        aggregated = await self.ch.scalar(
            f"SELECT sum(requests) FROM {MINUTES_TABLE} WHERE {_in_window(window)}"
        )
        return {
            "raw_rows": int(raw[0]["rows"]) if raw else 0,
            "raw_events": int(raw[0]["events"]) if raw else 0,
            "aggregated": int(aggregated or 0),
        }


def _in_window(window: UsageWindow, column: str = "minute") -> str:
    # Minutes starting in [start, end): a whole-second minute is < end exactly when it is < ceil(end).
    return (
        f"{column} >= toDateTime({window.start}, 'UTC') "
        f"AND {column} < toDateTime({math.ceil(window.end)}, 'UTC')"
    )


def _raw_row(event: UsageEvent) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "at": round(event.at, 3),
        "node": event.node,
        "client": event.client,
        "route": event.route,
        "method": event.method,
        "status": event.status,
        "latency_ms": event.latency_ms,
    }
