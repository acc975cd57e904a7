"""Investigation search across the hot table and the cold Parquet files, in one ClickHouse query each.

A search is a time range [from, to), optional free text (case-insensitive substring of any value of the
normalized event, the message included; key names do not match) and field filters on the typed columns
(several values of one field match any of them; different fields must all match). Results are distinct
by event id, newest first, at most `limit`; `total` counts distinct matching event ids in both tiers.

Two queries, both over `hot UNION ALL cold`:
1. `uniqExact(event_id)` and the newest (timestamp, event id) pairs (`groupArraySorted`), reading only
   the narrow columns the predicates need;
2. the stored events of that page, restricted to the page's time span, so the wide JSON column is read
   for the page only.
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
from katas.siem.cold import ColdStore, cold_table_function
from katas.siem.storage import EVENTS_TABLE, FILTER_FIELDS, sql_literal, sql_string

MAX_QUERY_LENGTH = 256
MAX_FILTER_VALUES = 50
MAX_FILTER_VALUE_LENGTH = 256
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
"""The range of ClickHouse's DateTime64(3): a search's times are clamped to it."""


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
    hot = f"SELECT {columns} FROM {EVENTS_TABLE} WHERE {where}"
    if cold is None:
        return hot
    return f"{hot} UNION ALL SELECT {columns} FROM {cold_table_function(cold, start, end)} WHERE {where}"


_SETTINGS = " SETTINGS use_hive_partitioning = 0"


async def search(ch: ClickHouse, cold: ColdStore | None, query: SearchQuery) -> SearchResult:
    """Search hot and (when `cold` is given) cold storage; see the module's description."""
    where = where_clause(query)
    fetch = query.limit * 2 + 16
    while True:
        rows = await ch.rows(
            "SELECT uniqExact(event_id) AS total, "
            f"groupArraySorted({fetch})((-toUnixTimestamp64Milli(timestamp), event_id)) AS top "
            f"FROM ({_union('timestamp, event_id', where, cold, query.start, query.end)}){_SETTINGS}"
        )
        total = int(rows[0]["total"]) if rows else 0
        top: list[list[Any]] = rows[0]["top"] if rows else []
        page: dict[str, int] = {}
        for negative_ms, event_id in top:
            if event_id not in page:
                page[event_id] = -int(negative_ms)
            if len(page) == query.limit:
                break
        if len(page) == query.limit or len(top) < fetch:
            break
        fetch *= 4  # duplicates filled the page: look further
    if not page:
        return SearchResult(total=total, events=[])
    return SearchResult(total=total, events=await _fetch_events(ch, cold, page))


async def _fetch_events(
    ch: ClickHouse, cold: ColdStore | None, page: Mapping[str, int]
) -> list[dict[str, Any]]:
    """The stored events of a page (event id -> epoch ms), in page order."""
    first, last = _from_ms(min(page.values())), _from_ms(max(page.values()))
    ids = ", ".join(sql_string(event_id) for event_id in page)
    where = f"timestamp >= {sql_literal(first)} AND timestamp <= {sql_literal(last)} AND event_id IN ({ids})"
    rows = await ch.rows(
        "SELECT event_id, any(event_json) AS event_json "
        f"FROM ({_union('event_id, event_json', where, cold, first, last)}) GROUP BY event_id{_SETTINGS}"
    )
    stored = {row["event_id"]: row["event_json"] for row in rows}
    return [json.loads(stored[event_id]) for event_id in page if event_id in stored]
