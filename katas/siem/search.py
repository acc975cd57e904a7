"""Investigation search across the hot table and the cold Parquet files, through ClickHouse.

A search is a time range [from, to), optional free text (case-insensitive substring of any value of the
normalized event, the message included; key names do not match) and field filters on the typed columns
(several values of one field match any of them; different fields must all match). Results are distinct
by event id, newest first, at most `limit`; `total` counts distinct matching event ids in both tiers.

Two queries:
1. over `hot UNION ALL cold` (one s3() source per day of the range): `uniqExact(event_id)` and the
   newest (timestamp, event id, object path) triples (`groupArraySorted`), reading only the narrow
   columns the predicates need;
2. the stored events of that page: hot ones by id within the page's time span, cold ones from exactly
   the objects query 1 found them in, so the wide JSON column is read for the page only.
Duplicates (redeliveries not yet merged, an event in both tiers while the lifecycle moves it) are removed
by event id in both steps; the page is fetched with room to spare and refetched in the rare case that
duplicates ate into it.
"""

# ruff: noqa: S608 - SQL here is built from this package's constants and values quoted by
# katas.siem.storage.sql_literal; the chDB store owner's HTTP interface has no query parameters.

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from katas.infra.clickhouse import ClickHouse
from katas.siem.cold import ColdStore, cold_table_function, cold_table_functions
from katas.siem.storage import EVENTS_TABLE, FILTER_FIELDS, sql_literal, sql_string

MAX_QUERY_LENGTH = 256
MAX_FILTER_VALUES = 50
MAX_FILTER_VALUE_LENGTH = 256
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
"""A search's times are clamped to the DateTime64 range every ClickHouse version accepts (chDB 4.4 takes
years 1 to 9999, older servers 1900 to 2299)."""


class SearchError(ValueError):
    """A search the caller got wrong (the API answers 400 with this message)."""


@dataclass(frozen=True)
class SearchQuery:
    start: datetime
    """`from`: inclusive."""
    end: datetime
    """`to`: exclusive."""
    q: str = ""
    filters: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """ECS field name -> accepted values (see `katas.siem.storage.FILTER_FIELDS`)."""
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise SearchError("from and to must carry a time zone offset")
        if self.start > self.end:
            raise SearchError("from is after to")
        if len(self.q) > MAX_QUERY_LENGTH:
            raise SearchError(f"q is longer than {MAX_QUERY_LENGTH} characters")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise SearchError(f"limit must be between 1 and {MAX_LIMIT}")
        _check_text("q", self.q)
        for name, values in self.filters.items():
            column = FILTER_FIELDS.get(name)
            if column is None:
                raise SearchError(
                    f"unknown filter field {name!r}; known fields: {', '.join(sorted(FILTER_FIELDS))}"
                )
            if not values:
                raise SearchError(f"filter {name!r} has no value")
            if len(values) > MAX_FILTER_VALUES:
                raise SearchError(f"filter {name!r} has more than {MAX_FILTER_VALUES} values")
            for value in values:
                if len(value) > MAX_FILTER_VALUE_LENGTH:
                    raise SearchError(
                        f"a value of {name!r} is longer than {MAX_FILTER_VALUE_LENGTH} characters"
                    )
                _check_text(name, value)
                if column.kind == "int" and _parse_int(value) is None:
                    raise SearchError(f"filter {name!r} takes whole numbers, not {value[:40]!r}")


def _check_text(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SearchError(f"{name} is not valid text") from None


def _parse_int(value: str) -> int | None:
    text = value.strip()
    if not text or not (text.isdigit() or (text[0] in "+-" and text[1:].isdigit())) or len(text) > 11:
        return None
    number = int(text)
    return number if -(2**31) <= number < 2**31 else None


@dataclass(frozen=True)
class SearchResult:
    total: int
    events: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "events": self.events}


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)


def where_clause(query: SearchQuery) -> str:
    """The predicate of a search over the stored columns; every value is quoted by `sql_literal`."""
    start, end = (min(max(moment, EARLIEST), LATEST) for moment in (query.start, query.end))
    parts = [f"timestamp >= {sql_literal(start)}", f"timestamp < {sql_literal(end)}"]
    if query.q:
        parts.append(f"positionCaseInsensitiveUTF8(search_text, {sql_string(query.q)}) > 0")
    for name, values in sorted(query.filters.items()):
        column = FILTER_FIELDS[name]
        if column.kind == "int":
            literals = [sql_literal(_parse_int(v)) for v in values]
        else:
            literals = [sql_string(v) for v in values]
        if column.kind == "list":
            parts.append(f"hasAny({column.column}, [{', '.join(literals)}])")
        else:
            parts.append(f"{column.column} IN ({', '.join(literals)})")
    return " AND ".join(parts)


def _union(columns: str, where: str, cold: ColdStore | None, start: datetime, end: datetime) -> str:
    """`hot UNION ALL cold` of `columns` plus `path`: '' for a hot row, the object's path for a cold one."""
    branches = [f"SELECT {columns}, '' AS path FROM {EVENTS_TABLE} WHERE {where}"]
    if cold is not None:
        branches += [
            f"SELECT {columns}, _path AS path FROM {source} WHERE {where}"
            for source in cold_table_functions(cold, start, end)
        ]
    return " UNION ALL ".join(branches)


_SETTINGS = " SETTINGS use_hive_partitioning = 0"


@dataclass(frozen=True)
class _Hit:
    ms: int
    path: str


async def search(ch: ClickHouse, cold: ColdStore | None, query: SearchQuery) -> SearchResult:
    """Search hot and (when `cold` is given) cold storage; see the module's description."""
    where = where_clause(query)
    fetch = query.limit * 2 + 16
    while True:
        rows = await ch.rows(
            "SELECT uniqExact(event_id) AS total, "
            f"groupArraySorted({fetch})((-toUnixTimestamp64Milli(timestamp), event_id, path)) AS top "
            f"FROM ({_union('timestamp, event_id', where, cold, query.start, query.end)}){_SETTINGS}"
        )
        total = int(rows[0]["total"]) if rows else 0
        top: list[list[Any]] = rows[0]["top"] if rows else []
        page: dict[str, _Hit] = {}
        for negative_ms, event_id, path in top:
            if event_id not in page:  # the newest copy; at equal times the hot one ('' sorts first)
                page[event_id] = _Hit(-int(negative_ms), path)
            if len(page) == query.limit:
                break
        if len(page) == query.limit or len(top) < fetch:
            break
        fetch *= 4  # duplicates filled the page: look further
    if not page:
        return SearchResult(total=total, events=[])
    return SearchResult(total=total, events=await _fetch_events(ch, cold, page))


async def _fetch_events(
    ch: ClickHouse, cold: ColdStore | None, page: Mapping[str, _Hit]
) -> list[dict[str, Any]]:
    """The stored events of a page, in page order: hot ones by id within the page's time span, cold ones
    from exactly the objects the first query found them in (a `_path` filter skips every other file)."""
    hot = {event_id: hit for event_id, hit in page.items() if not hit.path}
    by_day: dict[str, dict[str, _Hit]] = {}
    for event_id, hit in page.items():
        if hit.path:
            by_day.setdefault(_from_ms(hit.ms).date().isoformat(), {})[event_id] = hit
    branches = []
    if hot:
        branches.append(
            f"SELECT event_id, event_json FROM {EVENTS_TABLE} WHERE {_span(hot)} AND event_id IN ({_list(hot)})"
        )
    if cold is not None:
        for day, hits in sorted(by_day.items()):
            paths = ", ".join(sql_string(path) for path in sorted({hit.path for hit in hits.values()}))
            branches.append(
                f"SELECT event_id, event_json FROM {cold_table_function(cold, day)} "
                f"WHERE _path IN ({paths}) AND event_id IN ({_list(hits)})"
            )
    if not branches:
        return []
    rows = await ch.rows(
        f"SELECT event_id, any(event_json) AS event_json FROM ({' UNION ALL '.join(branches)}) "
        f"GROUP BY event_id{_SETTINGS}"
    )
    stored = {row["event_id"]: row["event_json"] for row in rows}
    return [json.loads(stored[event_id]) for event_id in page if event_id in stored]


def _span(hits: Mapping[str, _Hit]) -> str:
    first = min(hit.ms for hit in hits.values())
    last = max(hit.ms for hit in hits.values())
    return f"timestamp >= {sql_literal(_from_ms(first))} AND timestamp <= {sql_literal(_from_ms(last))}"


def _list(hits: Mapping[str, _Hit]) -> str:
    return ", ".join(sql_string(event_id) for event_id in hits)
