"""Detection: Sigma rules, compiled by pySigma's SQLite backend, evaluated on micro-batches of ECS events.

The rules in `rules/` are written against the flat, dotted ECS field names of contracts.md, so no field
mapping pipeline sits between a rule and an event. Every detection rule (correlation rules are the
correlation engine's business) is compiled once with `sigma.backends.sqlite` into a
`SELECT * FROM ecs_events WHERE ...`; pySigma owns the rule semantics (modifiers, wildcards,
case-insensitive matching, `not` over absent fields). The hand-written part is the batch table and the
result mapping:

- One in-memory SQLite table whose columns are the fields the rules use (`_row` is the event's position
  in the batch). Columns have NUMERIC affinity and NOCASE collation: `event.code` "4625" and the rule's
  4625 compare equal, `destination.port|lt: 1024` compares numbers, and strings compare without case as
  Sigma wants (the backend leaves case to the column's collation, as Zircolite's tables do).
  The price of NUMERIC affinity: a text value that reads as a number is stored as one ("007" equals 7).
- A list-valued field (`event.category`, `event.type`, `related.*`) gets one row per element (the
  cartesian product when an event has several lists, at most `MAX_ROWS_PER_EVENT` rows), so
  `event.type: denied` matches an event whose `event.type` is `["connection", "denied"]`: a list
  matches when any element does. A rule therefore must not negate a list field, because "not any" would
  read as "some element differs"; `compile_detection_rules` refuses such a rule.
- Dicts are stored as JSON text, booleans as 'true'/'false' (the backend accepts both spellings).
- Keyword (field-less) detections search `message` (the backend's `fulltext_field`).
- SQLite has no REGEXP function of its own: Python's `re.search` is registered for `|re`.
- Values SQLite cannot bind (integers beyond 64 bits, lone surrogates) are stored as text, so one odd
  event cannot stop a batch.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigma.backends.sqlite.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.conditions import ConditionFieldEqualsValueExpression, ConditionNOT
from sigma.rule import SigmaRule

RULES_DIR = Path(__file__).parent / "rules"
TABLE = "ecs_events"
ROW_COLUMN = "_row"
FULLTEXT_FIELD = "message"
LIST_FIELDS = frozenset({"event.category", "event.type", "related.user", "related.ip"})
"""ECS fields that contracts.md defines as lists."""
MAX_ROWS_PER_EVENT = 64
"""Bound on the rows one event expands into; lists beyond it are stored as JSON text instead."""

SqlValue = str | int | float | None


@dataclass(frozen=True)
class DetectionRule:
    """One Sigma detection rule, compiled to SQLite."""

    id: str
    name: str | None
    title: str
    level: str
    description: str
    queries: tuple[str, ...]
    """Finalized `SELECT * FROM ecs_events WHERE ...` queries; the rule matches if any of them does."""
    fields: tuple[str, ...]
    """The event fields the queries read."""


@dataclass(frozen=True)
class Match:
    """An event that matched a detection rule."""

    rule_id: str
    rule_name: str | None
    title: str
    level: str
    event: Mapping[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.event.get("event.id", ""))


def load_rules(path: Path | Sequence[Path] = RULES_DIR) -> SigmaCollection:
    """Every Sigma rule (detection and correlation) under `path`, with references resolved."""
    paths: list[str | Path] = [path] if isinstance(path, Path) else list(path)
    return SigmaCollection.load_ruleset(paths)


def _walk(condition: Any) -> Iterator[Any]:
    yield condition
    for arg in getattr(condition, "args", []) or []:
        yield from _walk(arg)


def _negated_list_fields(rule: SigmaRule) -> set[str]:
    found: set[str] = set()
    for condition in rule.detection.parsed_condition:
        for node in _walk(condition.parsed):
            if isinstance(node, ConditionNOT):
                found |= {
                    leaf.field
                    for leaf in _walk(node)
                    if isinstance(leaf, ConditionFieldEqualsValueExpression) and leaf.field in LIST_FIELDS
                }
    return found


def compile_detection_rules(collection: SigmaCollection) -> list[DetectionRule]:
    """Compile every detection rule of `collection` (correlation rules are skipped) with the SQLite backend."""
    # The SQLite backend ships without type hints, hence the ignores on its calls.
    backend = sqliteBackend(table=TABLE, fulltext_field=FULLTEXT_FIELD)  # type: ignore[no-untyped-call]
    # A rule that a correlation refers to is normally converted into an unfinalized predicate only; here
    # every detection rule runs on its own, so it is finalized into a full query either way.
    backend.finalize_correlation_subqueries = True
    compiled = []
    for rule in collection:
        if not isinstance(rule, SigmaRule):
            continue
        if rule.id is None:
            raise ValueError(f"Sigma rule {rule.title!r} has no id")
        negated = _negated_list_fields(rule)
        if negated:
            raise ValueError(
                f"Sigma rule {rule.title!r} negates list field(s) {sorted(negated)}: lists are matched "
                "element by element, so a negation would read as 'some element differs'"
            )
        backend.convert_rule(rule)  # type: ignore[no-untyped-call]
        queries = tuple(str(query) for query in rule.get_conversion_result())
        compiled.append(
            DetectionRule(
                id=str(rule.id),
                name=rule.name,
                title=rule.title,
                level=str(rule.level) if rule.level is not None else "informational",
                description=rule.description or "",
                queries=queries,
                fields=tuple(backend.required_fields(rule)),  # type: ignore[no-untyped-call]
            )
        )
    return compiled


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@functools.lru_cache(maxsize=1024)
def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def _regexp(pattern: str | None, value: SqlValue) -> bool:
    """SQLite calls `X REGEXP Y` as regexp(Y, X)."""
    if pattern is None or value is None:
        return False
    return _pattern(pattern).search(str(value)) is not None


_INT64 = range(-(2**63), 2**63)


def _scalar(value: Any) -> SqlValue:
    """A column value SQLite can bind, whatever the event holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode()
        except UnicodeEncodeError:  # lone surrogates, as json.loads produces from "\ud800"
            return value.encode(errors="backslashreplace").decode()
        return value
    if isinstance(value, int):
        return value if value in _INT64 else str(value)
    if value is None or isinstance(value, float):
        return value
    return _scalar(json.dumps(value, sort_keys=True, default=str))


def _rows(index: int, event: Mapping[str, Any], columns: Sequence[str]) -> list[tuple[SqlValue, ...]]:
    """The rows of one event: one per combination of the elements of its list-valued columns."""
    choices: list[list[SqlValue]] = []
    for column in columns:
        value = event.get(column)
        if isinstance(value, list | tuple):
            choices.append([_scalar(item) for item in value] or [None])
        else:
            choices.append([_scalar(value)])
    # Fold the longest lists back into JSON text until the product is small enough.
    while (total := _product(len(c) for c in choices)) > MAX_ROWS_PER_EVENT and total > 1:
        longest = max(range(len(columns)), key=lambda i: len(choices[i]))
        choices[longest] = [_scalar(list(event.get(columns[longest]) or []))]
    return [(index, *combination) for combination in itertools.product(*choices)]


def _product(sizes: Iterable[int]) -> int:
    total = 1
    for size in sizes:
        total *= size
    return total


class Detector:
    """Evaluates compiled detection rules on micro-batches of normalized events.

    Holds one in-memory SQLite connection; not safe to call from two threads at once.
    """

    def __init__(self, rules: Sequence[DetectionRule]) -> None:
        self.rules = tuple(rules)
        fields = sorted({field for rule in self.rules for field in rule.fields} | {FULLTEXT_FIELD})
        self.columns: tuple[str, ...] = tuple(f for f in fields if f.lower() != ROW_COLUMN)
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.create_function("REGEXP", 2, _regexp, deterministic=True)
        definitions = ", ".join(f"{_quote(c)} NUMERIC COLLATE NOCASE" for c in self.columns)
        self._db.execute(f"CREATE TABLE {TABLE} ({ROW_COLUMN} INTEGER NOT NULL, {definitions})")
        placeholders = ", ".join("?" for _ in range(len(self.columns) + 1))
        # Table and column names are this module's constants and the rules' own field names (quoted); the
        # WHERE clauses are pySigma's output for the trusted rule files. Event values are always bound.
        self._insert = f"INSERT INTO {TABLE} VALUES ({placeholders})"  # noqa: S608
        self._selects = [self._select(rule) for rule in self.rules]

    @staticmethod
    def _select(rule: DetectionRule) -> str:
        """The batch rows matching any of the rule's queries."""
        return " UNION ".join(f"SELECT {ROW_COLUMN} FROM ({query})" for query in rule.queries)  # noqa: S608

    @classmethod
    def from_rules(cls, collection: SigmaCollection) -> Detector:
        return cls(compile_detection_rules(collection))

    @classmethod
    def from_path(cls, path: Path | Sequence[Path] = RULES_DIR) -> Detector:
        return cls.from_rules(load_rules(path))

    def match(self, events: Sequence[Mapping[str, Any]]) -> list[Match]:
        """Every (rule, event) match of the batch, in batch order, then rule order."""
        if not events:
            return []
        hits: dict[int, list[int]] = {}
        with self._db:  # one transaction; the table is emptied again before it ends
            self._db.executemany(
                self._insert, (row for i, event in enumerate(events) for row in _rows(i, event, self.columns))
            )
            try:
                for rule_index, select in enumerate(self._selects):
                    for (row,) in self._db.execute(select):
                        hits.setdefault(int(row), []).append(rule_index)
            finally:
                self._db.execute(f"DELETE FROM {TABLE}")  # noqa: S608
        matches = []
        for row in sorted(hits):
            for rule_index in sorted(set(hits[row])):
                rule = self.rules[rule_index]
                matches.append(Match(rule.id, rule.name, rule.title, rule.level, events[row]))
        return matches

    def close(self) -> None:
        self._db.close()
