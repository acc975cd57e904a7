"""The hot store of the SIEM: events, alerts and the audit log in ClickHouse (the chDB store owner natively).

Everything goes through `katas.infra.clickhouse.ClickHouse` over the HTTP interface. That interface, as the
chDB store owner serves it, has no query parameters (`param_x=` is not read), so every value that reaches
SQL goes through `sql_literal` / `sql_string`, the one quoting function, and identifiers only ever come from
the constants of this module.

`events`: one row per normalized ECS event (see contracts.md), typed columns for the fields searches filter
on, `search_text` (every value of the event, for free-text search without matching key names) and
`event_json` (the event as it arrived, returned by searches).

* ReplacingMergeTree ordered by (hour of @timestamp, labels.source, event.id): a redelivered event has the
  same id, timestamp and source, so merges keep one copy. Merges happen in the background, so duplicates
  are also removed at query time (search counts `uniqExact(event_id)` and dedupes the page by id), which is
  cheaper than FINAL and also covers duplicates across the hot and cold tiers.
* PARTITION BY day of @timestamp: a day is the unit the lifecycle and retention reason about, and the
  partition's min/max index prunes time ranges before any granule is read.
* `inserted_at` (server time of the insert) fences the lifecycle: it moves and deletes only rows inserted
  before its fence, so a late event inserted meanwhile is never deleted without having been copied.
* TTL on `inserted_at`, not on @timestamp: an event replayed from long ago must not expire before the
  lifecycle has had a chance to copy it to cold storage. The TTL is a safety net above the lifecycle's
  hot retention, not the mechanism that moves data.

`alerts`: ReplacingMergeTree(version) by fingerprint; the latest version of an alert wins.
`audit_log`: a plain MergeTree that this module only ever INSERTs into.
"""

# ruff: noqa: S608 - SQL here is built from this package's constants and values quoted by
# katas.siem.storage.sql_literal; the chDB store owner's HTTP interface has no query parameters.

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from katas.infra.clickhouse import ClickHouse

EVENTS_TABLE = "events"
ALERTS_TABLE = "alerts"
AUDIT_TABLE = "audit_log"

DEFAULT_HOT_TTL = timedelta(days=90)

FieldKind = Literal["time", "str", "int", "list"]


@dataclass(frozen=True)
class EventColumn:
    """One typed column of `events`, filled from one ECS field of the normalized event."""

    field: str
    column: str
    ch_type: str
    kind: FieldKind
    filterable: bool = True


EVENT_COLUMNS: tuple[EventColumn, ...] = (
    EventColumn("@timestamp", "timestamp", "DateTime64(3, 'UTC')", "time", filterable=False),
    EventColumn("event.id", "event_id", "String", "str"),
    EventColumn("event.dataset", "event_dataset", "LowCardinality(String)", "str"),
    EventColumn("event.module", "event_module", "LowCardinality(String)", "str"),
    EventColumn("event.category", "event_category", "Array(LowCardinality(String))", "list"),
    EventColumn("event.type", "event_type", "Array(LowCardinality(String))", "list"),
    EventColumn("event.action", "event_action", "LowCardinality(String)", "str"),
    EventColumn("event.outcome", "event_outcome", "LowCardinality(String)", "str"),
    EventColumn("event.code", "event_code", "LowCardinality(String)", "str"),
    EventColumn("event.severity", "event_severity", "Nullable(Int32)", "int"),
    EventColumn("source.ip", "source_ip", "String", "str"),
    EventColumn("source.port", "source_port", "Nullable(Int32)", "int"),
    EventColumn("destination.ip", "destination_ip", "String", "str"),
    EventColumn("destination.port", "destination_port", "Nullable(Int32)", "int"),
    EventColumn("network.transport", "network_transport", "LowCardinality(String)", "str"),
    EventColumn("user.name", "user_name", "String", "str"),
    EventColumn("user.email", "user_email", "String", "str"),
    EventColumn("user.target.name", "user_target_name", "String", "str"),
    EventColumn("group.name", "group_name", "String", "str"),
    EventColumn("host.name", "host_name", "LowCardinality(String)", "str"),
    EventColumn("process.name", "process_name", "LowCardinality(String)", "str"),
    EventColumn("cloud.provider", "cloud_provider", "LowCardinality(String)", "str"),
    EventColumn("cloud.account.id", "cloud_account_id", "LowCardinality(String)", "str"),
    EventColumn("cloud.region", "cloud_region", "LowCardinality(String)", "str"),
    EventColumn("observer.vendor", "observer_vendor", "LowCardinality(String)", "str"),
    EventColumn("observer.product", "observer_product", "LowCardinality(String)", "str"),
    EventColumn("related.user", "related_user", "Array(String)", "list"),
    EventColumn("related.ip", "related_ip", "Array(String)", "list"),
    EventColumn("labels.source", "labels_source", "LowCardinality(String)", "str"),
    EventColumn("labels.transport", "labels_transport", "LowCardinality(String)", "str"),
    EventColumn("labels.format", "labels_format", "LowCardinality(String)", "str"),
    EventColumn("message", "message", "String", "str", filterable=False),
)
"""Typed columns, in table order. The same list defines the Parquet files of the cold tier."""

PAYLOAD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("search_text", "String CODEC(ZSTD(1))"),
    ("event_json", "String CODEC(ZSTD(1))"),
)
"""Free-text haystack (every value of the event, newline-joined) and the event itself."""

STORED_COLUMNS: tuple[str, ...] = (
    *(c.column for c in EVENT_COLUMNS),
    *(name for name, _ in PAYLOAD_COLUMNS),
)
"""What hot and cold tiers both hold, in this order (the hot table adds `inserted_at`)."""

FILTER_FIELDS: Mapping[str, EventColumn] = {c.field: c for c in EVENT_COLUMNS if c.filterable}
"""ECS field name -> column, for every field a search may filter on."""


def cold_structure() -> str:
    """The column list of the cold Parquet files, for ClickHouse's s3() table function."""
    types = {c.column: c.ch_type for c in EVENT_COLUMNS} | {
        name: ch_type.split(" CODEC")[0] for name, ch_type in PAYLOAD_COLUMNS
    }
    return ", ".join(f"{name} {types[name]}" for name in STORED_COLUMNS)


# ------------------------------------------------------------------------------------------------ SQL
def sql_string(value: str) -> str:
    """`value` as a ClickHouse string literal.

    Inside '...' ClickHouse ends the literal at an unescaped quote and gives backslash its escape meaning,
    so escaping exactly those two makes any text a literal; NUL is escaped as well so no raw control byte
    travels in the query. Strings that cannot be encoded as UTF-8 (lone surrogates) are refused.
    """
    value.encode("utf-8")  # raises UnicodeEncodeError on lone surrogates
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0") + "'"


def sql_literal(value: object) -> str:
    """A ClickHouse literal for a str, int, float, bool, datetime (as DateTime64(3, 'UTC')) or a list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(value)
    if isinstance(value, str):
        return sql_string(value)
    if isinstance(value, datetime):
        return f"toDateTime64({sql_string(ch_time(value))}, 3, 'UTC')"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(sql_literal(item) for item in value) + "]"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


# ---------------------------------------------------------------------------------------------- times
def parse_time(value: str | float | int | datetime) -> datetime:
    """An aware UTC datetime from an RFC 3339 string, epoch seconds, or a datetime (naive means UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(float(value), UTC)
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.strip())
    else:
        raise TypeError(f"not a time: {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def ch_time(moment: datetime) -> str:
    """ClickHouse's text form of a DateTime64(3, 'UTC') value."""
    moment = parse_time(moment)
    return f"{moment.year:04d}-{moment:%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}"


def from_ch_time(text: str) -> datetime:
    """The inverse of `ch_time` (ClickHouse's output of a DateTime64 in UTC)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds, as the normalized events carry it."""
    moment = parse_time(moment)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------------------------- schema
async def ensure_schema(ch: ClickHouse, *, hot_ttl: timedelta = DEFAULT_HOT_TTL) -> None:
    """Create the three tables if missing, and set the events TTL to `hot_ttl` (after the insert time).

    `hot_ttl` must be longer than the lifecycle's hot retention plus its interval, or rows expire before
    they are copied to cold storage (`katas.siem.lifecycle` checks this).
    """
    ttl_seconds = int(hot_ttl.total_seconds())
    if ttl_seconds <= 0:
        raise ValueError("hot_ttl must be positive")
    columns = ",\n  ".join(
        [f"{c.column} {c.ch_type}" for c in EVENT_COLUMNS]
        + [f"{name} {ch_type}" for name, ch_type in PAYLOAD_COLUMNS]
        + ["inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)"]
    )
    ttl = f"toDateTime(inserted_at) + toIntervalSecond({ttl_seconds})"
    await ch.execute(
        f"CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (\n  {columns},\n"
        "  INDEX idx_event_id event_id TYPE bloom_filter GRANULARITY 4,\n"
        "  INDEX idx_user_name user_name TYPE bloom_filter GRANULARITY 4,\n"
        "  INDEX idx_source_ip source_ip TYPE bloom_filter GRANULARITY 4,\n"
        "  INDEX idx_destination_ip destination_ip TYPE bloom_filter GRANULARITY 4\n"
        ") ENGINE = ReplacingMergeTree\n"
        "PARTITION BY toDate(timestamp)\n"
        "ORDER BY (toStartOfHour(timestamp), labels_source, event_id)\n"
        f"TTL {ttl}\n"
        # TTL is checked on merges; the default waits 4 h between TTL merges, too long for a lab in minutes.
        "SETTINGS merge_with_ttl_timeout = 60"
    )
    engine = await ch.scalar(
        f"SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = '{EVENTS_TABLE}'"
    )
    if f"toIntervalSecond({ttl_seconds})" not in str(engine):
        await ch.execute(f"ALTER TABLE {EVENTS_TABLE} MODIFY TTL {ttl}")
    await ch.execute(
        f"CREATE TABLE IF NOT EXISTS {ALERTS_TABLE} (\n"
        "  fingerprint String,\n"
        "  rule LowCardinality(String),\n"
        "  title String,\n"
        "  severity LowCardinality(String),\n"
        "  first_seen DateTime64(3, 'UTC'),\n"
        "  last_seen DateTime64(3, 'UTC'),\n"
        "  count UInt64,\n"
        "  status LowCardinality(String),\n"
        "  acknowledged_by String,\n"
        "  acknowledged_at Nullable(DateTime64(3, 'UTC')),\n"
        "  escalation_level UInt8,\n"
        "  group_json String,\n"
        "  event_ids Array(String),\n"
        "  version DateTime64(6, 'UTC')\n"
        ") ENGINE = ReplacingMergeTree(version)\n"
        "ORDER BY fingerprint"
    )
    await ch.execute(
        f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (\n"
        "  at DateTime64(3, 'UTC'),\n"
        "  principal LowCardinality(String),\n"
        "  action LowCardinality(String),\n"
        "  query String,\n"
        "  parameters String,\n"
        "  rows_returned UInt64,\n"
        "  outcome LowCardinality(String)\n"
        ") ENGINE = MergeTree\n"
        "PARTITION BY toYYYYMM(at)\n"
        "ORDER BY (at, principal)"
    )


# --------------------------------------------------------------------------------------------- events
def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(item) for item in value if item is not None]
    return [str(value)]


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -(2**31) <= number < 2**31 else None


def _values(value: Any) -> Iterable[str]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _values(item)
    elif value is not None:
        yield value if isinstance(value, str) else json.dumps(value)


def search_text(event: Mapping[str, Any]) -> str:
    """Every value of the event (not the keys), newline-joined: what free text is matched against."""
    return "\n".join(text for value in event.values() for text in _values(value))


def event_row(event: Mapping[str, Any]) -> dict[str, Any]:
    """The `events` row of one normalized event; raises ValueError without event.id or @timestamp."""
    event_id, timestamp = event.get("event.id"), event.get("@timestamp")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError(f"event without event.id: {str(event)[:200]}")
    if timestamp is None:
        raise ValueError(f"event {event_id} has no @timestamp")
    row: dict[str, Any] = {}
    for col in EVENT_COLUMNS:
        value = event.get(col.field)
        if col.kind == "time":
            row[col.column] = ch_time(parse_time(timestamp))
        elif col.kind == "int":
            row[col.column] = _as_int(value)
        elif col.kind == "list":
            row[col.column] = _as_list(value)
        else:
            row[col.column] = "" if value is None else str(value)
    row["search_text"] = search_text(event)
    row["event_json"] = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return row


async def insert_events(ch: ClickHouse, events: Sequence[Mapping[str, Any]]) -> int:
    """Insert a batch of normalized events in one INSERT; returns the number of rows sent.

    A batch with the same event id twice keeps the first: redeliveries inside one batch never reach the
    store, and ReplacingMergeTree plus search-time dedupe handle those across batches.
    """
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for event in events:
        row = event_row(event)
        if row["event_id"] not in seen:
            seen.add(row["event_id"])
            rows.append(row)
    return await ch.insert(EVENTS_TABLE, rows)


async def count_events(ch: ClickHouse, *, distinct: bool = True) -> int:
    """Events in the hot table (distinct ids by default)."""
    expr = "uniqExact(event_id)" if distinct else "count()"
    return int(await ch.scalar(f"SELECT {expr} FROM {EVENTS_TABLE}") or 0)


# --------------------------------------------------------------------------------------------- alerts
AlertStatus = Literal["open", "acknowledged"]


@dataclass
class Alert:
    fingerprint: str
    rule: str
    title: str
    severity: str
    first_seen: datetime
    last_seen: datetime
    count: int
    status: AlertStatus = "open"
    acknowledged_by: str = ""
    acknowledged_at: datetime | None = None
    escalation_level: int = 0
    group: dict[str, Any] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Alert:
        """From a `siem.alerts` record (contracts.md); times may be RFC 3339 or epoch seconds."""
        return cls(
            fingerprint=str(message["fingerprint"]),
            rule=str(message["rule"]),
            title=str(message.get("title", message["rule"])),
            severity=str(message.get("severity", "")),
            first_seen=parse_time(message["first_seen"]),
            last_seen=parse_time(message["last_seen"]),
            count=int(message.get("count", 1)),
            group=dict(message.get("group") or {}),
            event_ids=[str(i) for i in message.get("event_ids") or []],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "title": self.title,
            "severity": self.severity,
            "first_seen": rfc3339(self.first_seen),
            "last_seen": rfc3339(self.last_seen),
            "count": self.count,
            "status": self.status,
            "acknowledged_by": self.acknowledged_by or None,
            "acknowledged_at": rfc3339(self.acknowledged_at) if self.acknowledged_at else None,
            "escalation_level": self.escalation_level,
            "group": self.group,
            "event_ids": self.event_ids,
        }


MAX_ALERT_EVENT_IDS = 1000
"""An alert keeps at most this many event ids (the newest), so a noisy rule cannot grow a row forever."""


def _alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "fingerprint": alert.fingerprint,
        "rule": alert.rule,
        "title": alert.title,
        "severity": alert.severity,
        "first_seen": ch_time(alert.first_seen),
        "last_seen": ch_time(alert.last_seen),
        "count": alert.count,
        "status": alert.status,
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": ch_time(alert.acknowledged_at) if alert.acknowledged_at else None,
        "escalation_level": alert.escalation_level,
        "group_json": json.dumps(alert.group, ensure_ascii=False, separators=(",", ":"), default=str),
        "event_ids": alert.event_ids[-MAX_ALERT_EVENT_IDS:],
        "version": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
    }


def _alert_from_row(row: Mapping[str, Any]) -> Alert:
    status: AlertStatus = "acknowledged" if row["status"] == "acknowledged" else "open"
    return Alert(
        fingerprint=row["fingerprint"],
        rule=row["rule"],
        title=row["title"],
        severity=row["severity"],
        first_seen=from_ch_time(row["first_seen"]),
        last_seen=from_ch_time(row["last_seen"]),
        count=int(row["count"]),
        status=status,
        acknowledged_by=row["acknowledged_by"],
        acknowledged_at=from_ch_time(row["acknowledged_at"]) if row["acknowledged_at"] else None,
        escalation_level=int(row["escalation_level"]),
        group=json.loads(row["group_json"] or "{}"),
        event_ids=list(row["event_ids"]),
    )


_ALERT_SELECT = (
    "SELECT fingerprint, rule, title, severity, first_seen, last_seen, count, status, acknowledged_by, "
    f"acknowledged_at, escalation_level, group_json, event_ids FROM {ALERTS_TABLE} FINAL"
)


async def get_alert(ch: ClickHouse, fingerprint: str) -> Alert | None:
    rows = await ch.rows(f"{_ALERT_SELECT} WHERE fingerprint = {sql_string(fingerprint)}")
    return _alert_from_row(rows[0]) if rows else None


async def upsert_alert(ch: ClickHouse, alert: Alert) -> Alert:
    """Record an alert from the correlator, merged with what is stored under its fingerprint.

    first_seen is the earliest, last_seen the latest, count the largest reported (the correlator reports
    running totals), event ids are unioned, and an acknowledgement and the escalation level are kept.
    Read-modify-write: two writers of one fingerprint at the same instant may lose one update (the alert
    router is the only writer besides acknowledgements).
    """
    current = await get_alert(ch, alert.fingerprint)
    merged = alert
    if current is not None:
        known = set(current.event_ids)
        merged = Alert(
            fingerprint=alert.fingerprint,
            rule=alert.rule,
            title=alert.title,
            severity=alert.severity,
            first_seen=min(current.first_seen, alert.first_seen),
            last_seen=max(current.last_seen, alert.last_seen),
            count=max(current.count, alert.count),
            status=current.status,
            acknowledged_by=current.acknowledged_by,
            acknowledged_at=current.acknowledged_at,
            escalation_level=max(current.escalation_level, alert.escalation_level),
            group=alert.group or current.group,
            event_ids=current.event_ids + [i for i in alert.event_ids if i not in known],
        )
    await ch.insert(ALERTS_TABLE, [_alert_row(merged)])
    return merged


async def acknowledge_alert(
    ch: ClickHouse, fingerprint: str, by: str, *, at: datetime | None = None
) -> Alert | None:
    """Mark an alert acknowledged by `by`; None if there is no such alert. Acknowledging twice keeps the first."""
    current = await get_alert(ch, fingerprint)
    if current is None:
        return None
    if current.status == "acknowledged":
        return current
    current.status = "acknowledged"
    current.acknowledged_by = by
    current.acknowledged_at = parse_time(at or datetime.now(UTC))
    await ch.insert(ALERTS_TABLE, [_alert_row(current)])
    return current


async def escalate_alert(ch: ClickHouse, fingerprint: str, level: int) -> Alert | None:
    """Raise an alert's escalation level (never lowers it); None if there is no such alert."""
    current = await get_alert(ch, fingerprint)
    if current is None:
        return None
    if level > current.escalation_level:
        current.escalation_level = level
        await ch.insert(ALERTS_TABLE, [_alert_row(current)])
    return current


async def list_alerts(ch: ClickHouse, *, status: AlertStatus | None = None, limit: int = 100) -> list[Alert]:
    """Alerts, most recently seen first."""
    where = f" WHERE status = {sql_string(status)}" if status else ""
    rows = await ch.rows(f"{_ALERT_SELECT}{where} ORDER BY last_seen DESC, fingerprint LIMIT {int(limit)}")
    return [_alert_from_row(row) for row in rows]


# ------------------------------------------------------------------------------------------ audit log
@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    principal: str
    action: str
    query: str
    parameters: dict[str, Any]
    rows_returned: int
    outcome: str = "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "at": rfc3339(self.at),
            "principal": self.principal,
            "action": self.action,
            "query": self.query,
            "parameters": self.parameters,
            "rows_returned": self.rows_returned,
            "outcome": self.outcome,
        }


async def append_audit(ch: ClickHouse, entry: AuditEntry) -> None:
    """Append one row to the audit log (the only write the log ever sees)."""
    await ch.insert(
        AUDIT_TABLE,
        [
            {
                "at": ch_time(entry.at),
                "principal": entry.principal,
                "action": entry.action,
                "query": entry.query,
                "parameters": json.dumps(entry.parameters, ensure_ascii=False, default=str),
                "rows_returned": entry.rows_returned,
                "outcome": entry.outcome,
            }
        ],
    )


async def list_audit(
    ch: ClickHouse,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    principal: str | None = None,
    action: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Audit rows, newest first."""
    where = ["1"]
    if since is not None:
        where.append(f"at >= {sql_literal(since)}")
    if until is not None:
        where.append(f"at <= {sql_literal(until)}")
    if principal is not None:
        where.append(f"principal = {sql_string(principal)}")
    if action is not None:
        where.append(f"action = {sql_string(action)}")
    rows = await ch.rows(
        "SELECT at, principal, action, query, parameters, rows_returned, outcome "
        f"FROM {AUDIT_TABLE} WHERE {' AND '.join(where)} ORDER BY at DESC LIMIT {int(limit)}"
    )
    return [
        AuditEntry(
            at=from_ch_time(row["at"]),
            principal=row["principal"],
            action=row["action"],
            query=row["query"],
            parameters=json.loads(row["parameters"] or "{}"),
            rows_returned=int(row["rows_returned"]),
            outcome=row["outcome"],
        )
        for row in rows
    ]
