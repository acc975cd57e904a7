"""Correlation engine: Sigma correlation rules over 5-minute sliding windows, with its state in a store.

Pure domain code: no broker, no Redis. The engine consumes detection matches (`detection.Match`), ordered
by event time within a batch, and evaluates the Sigma correlation rules that refer to the matched rules:

- `event_count`: at least N events of the referenced rules per group within the timespan;
- `value_count`: at least N distinct values of a field per group within the timespan;
- `temporal`: every referenced rule matched (any order) per group within the timespan;
- `temporal_ordered`: the referenced rules matched in the listed order per group within the timespan.

A correlation rule may refer to another correlation rule (pySigma resolves the references): when the inner
rule's condition holds, that is an occurrence of the inner rule, fed to the outer one with the inner rule's
group values as its fields. "Brute force, then success" is `temporal_ordered` over an `event_count` rule
and a detection rule.

Windows slide: on every arrival the engine asks whether some window of the rule's timespan that contains
the new entry satisfies the condition. In order, that is the window ending at the new event; entries that
arrive late (another partition running behind) are judged by event time all the same, so the verdict does
not depend on which worker saw which event first, within the store's allowed lateness (60 s). "Followed
by" (temporal_ordered) means strictly later in event time.

Batches: `process` sends a batch to the store in waves, one round trip each (the matches, then the
occurrences of the correlations they completed, then those of correlations over correlations), slice by
slice of 30 s of event time so that no wave runs later than the lateness allows.

State: everything lives in a `WindowStore` (async), keyed per rule and group: one sorted set of entries per
stage of the rule, scored by event time. The engine keeps nothing between calls but the compiled rules,
so a restarted engine, or another worker, continues where the last one stopped. The store bounds each
stage to `max_entries` (default 64) entries, evicting by time (older than timespan + allowed lateness) and
then oldest first, and forgets a window that saw nothing for longer than that. Entries are deduplicated by
member (the event id, or for `value_count` the value itself), so a redelivered event is not counted twice.
An event's entry is its id and time (~50 bytes); a nested occurrence's also carries up to `MAX_EVENT_IDS`
event ids (~1.3 KB). A window is thus a few KB, at most stages x 64 entries (~100 KB for a stage full of
nested occurrences), and only windows active within the last timespan + lateness + TTL slack exist. For
temporal types the store answers with the few entries the verdict needs (the chain, or the nearest entry
either side), not whole windows.

Alerts: at most one alert per rule and group within the rule's timespan of event time (the store's
`claim`); later completions in the same window are the same incident. Each alert follows the `siem.alerts`
contract: the fingerprint is a stable hash of rule id and group values; `first_seen`/`last_seen` are the
earliest and latest event times involved (RFC 3339, ms); `event_ids` the events involved (at most
`MAX_EVENT_IDS`, the latest); `count` the rule's measure (events in the window for event_count, distinct
values for value_count, events in the chain for the temporal types).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict
from sigma.collection import SigmaCollection
from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationConditionOperator,
    SigmaCorrelationRule,
    SigmaCorrelationType,
)
from sigma.rule import SigmaRule

from katas.siem.detection import Match

CorrelationType = Literal["event_count", "value_count", "temporal", "temporal_ordered"]
ReplyKind = Literal["window", "chain", "nearest"]
GroupValue = str | int | float

DEFAULT_MAX_ENTRIES = 64
"""Entries kept per stage of a window (per rule and group)."""
MAX_EVENT_IDS = 32
"""Event ids carried by an alert or a nested occurrence (the latest ones)."""
DEFAULT_LATENESS_S = 60.0
"""How late (in event time) an entry may arrive and still be correlated with what is already stored."""
DEFAULT_SLICE_S = 30.0
"""A batch is processed in slices of event time this long (aligned on multiples of it). Within a slice,
nested occurrences reach the store after the slice's matches, so they arrive up to a slice late: the slice
must stay well under the store's lateness."""

_OPERATORS: dict[SigmaCorrelationConditionOperator, Callable[[float, float], bool]] = {
    SigmaCorrelationConditionOperator.GTE: operator.ge,
    SigmaCorrelationConditionOperator.GT: operator.gt,
    SigmaCorrelationConditionOperator.LTE: operator.le,
    SigmaCorrelationConditionOperator.LT: operator.lt,
    SigmaCorrelationConditionOperator.EQ: operator.eq,
    SigmaCorrelationConditionOperator.NEQ: operator.ne,
}


# ------------------------------------------------------------------------------------------- contract
class Alert(BaseModel):
    """One message of the `siem.alerts` topic (key: fingerprint)."""

    model_config = ConfigDict(frozen=True)

    fingerprint: str
    rule: str
    """The correlation rule's id (UUID)."""
    title: str
    severity: str
    """The rule's Sigma level: informational, low, medium, high or critical."""
    first_seen: str
    last_seen: str
    group: dict[str, GroupValue]
    event_ids: list[str]
    count: int


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 `@timestamp`, or None when it is absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def format_timestamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def group_identity(group: Mapping[str, GroupValue]) -> str:
    """Canonical text of group values. Strings are case-folded: Sigma matches strings without case, and
    pySigma's SQL correlation groups them that way too ("Alice" and "alice" are one group)."""
    values = sorted((k, v.casefold() if isinstance(v, str) else v) for k, v in group.items())
    return json.dumps(values, separators=(",", ":"), default=str)


def fingerprint(rule_id: str, group: Mapping[str, GroupValue]) -> str:
    """Stable identity of an incident: rule id and group values (case-folded)."""
    return hashlib.sha256(f"{rule_id}\n{group_identity(group)}".encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------------------------ store
@dataclass(frozen=True)
class WindowEntry:
    """One entry of a window stage: `member` identifies it (event id, or the counted value), `ts` is its
    event time (epoch s), `data` the payload the engine reads back: empty (the member is the event id),
    a bare event id, or JSON with the event ids, first time and count of a nested occurrence."""

    member: str
    ts: float
    data: str


@dataclass(frozen=True)
class Observation:
    """One entry for one stage of one window (see `WindowStore.observe`)."""

    window: str
    stage: int
    stages: int
    entry: WindowEntry
    span_s: float
    max_entries: int
    reply: ReplyKind = "window"


@dataclass(frozen=True)
class Claim:
    """The wish to alert for `window` at event time `ts` (see `WindowStore.claim`)."""

    window: str
    ts: float
    span_s: float


class WindowStore(Protocol):
    """Where correlation windows live. Calls take a batch (one round trip); each item is atomic on its
    own, and items apply in order, so the replies are those of applying them one by one."""

    async def observe(self, observations: Sequence[Observation]) -> list[list[list[WindowEntry]]]:
        """For each observation: add the entry to its stage of its window (a member already there keeps
        its latest time and payload), drop that stage's entries older than entry.ts - span_s - the
        store's allowed lateness, keep its latest `max_entries`, and reply, per stage, with entries whose
        time t is in [entry.ts - span_s, entry.ts + span_s], oldest first (ties by member):

        - reply "window": all of them;
        - reply "chain": the entry itself at its stage; going down from its stage, the latest entry
          strictly before the one chosen for the stage above, and going up, the earliest entry strictly
          after the one chosen for the stage below, stopping at the first stage that has none;
        - reply "nearest": the entry itself at its stage; at every other stage the latest entry at or
          before entry.ts and the earliest at or after it.

        "chain" and "nearest" are what temporal_ordered and temporal need, without shipping windows."""
        ...

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        """For each claim: whether it is the first alert of its window within span_s of event time;
        recorded if so."""
        ...


class InMemoryWindowStore:
    """A WindowStore in this process, for unit tests (and for the `unbounded-correlation-state` mistake).

    Bounded like the Redis store, except that windows are forgotten by event time rather than by a TTL:
    every `sweep_every` operations, windows whose newest entry is older than the newest time seen minus
    (timespan + lateness + slack) are dropped. With `bounded=False` nothing is ever trimmed, capped or
    forgotten: every matched event stays in memory, which is the kata's "correlation engine that loads all
    events into memory" mistake. The verdicts are the same; the memory is not.
    """

    def __init__(
        self,
        *,
        bounded: bool = True,
        lateness_s: float = DEFAULT_LATENESS_S,
        slack_s: float = 120.0,
        sweep_every: int = 1024,
    ) -> None:
        self.bounded = bounded
        self.lateness_s = lateness_s
        self.slack_s = slack_s
        self.sweep_every = sweep_every
        self._windows: dict[str, list[dict[str, tuple[float, str]]]] = {}
        self._expires: dict[str, float] = {}
        self._fired: dict[str, tuple[float, float]] = {}
        self._newest = float("-inf")
        self._operations = 0

    def entry_count(self) -> int:
        return sum(len(stage) for stages in self._windows.values() for stage in stages)

    def window_count(self) -> int:
        return len(self._windows)

    def stage_sizes(self) -> list[int]:
        return [len(stage) for stages in self._windows.values() for stage in stages]

    async def observe(self, observations: Sequence[Observation]) -> list[list[list[WindowEntry]]]:
        return [self._observe(o) for o in observations]

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        return [self._claim(c.window, c.ts, c.span_s) for c in claims]

    def _observe(self, o: Observation) -> list[list[WindowEntry]]:
        entry, span_s = o.entry, o.span_s
        self._tick(entry.ts)
        slots = self._windows.setdefault(o.window, [])
        slots.extend({} for _ in range(o.stages - len(slots)))
        target = slots[o.stage]
        old = target.get(entry.member)
        if old is None or old[0] < entry.ts:
            target[entry.member] = (entry.ts, entry.data)
        if self.bounded:
            cut = entry.ts - span_s - self.lateness_s
            for member in [m for m, (ts, _) in target.items() if ts < cut]:
                del target[member]
            if len(target) > o.max_entries:
                by_age = sorted(target.items(), key=lambda item: (item[1][0], item[0]))  # as Redis ranks
                for member, _ in by_age[: len(target) - o.max_entries]:
                    del target[member]
            horizon = entry.ts + span_s + self.lateness_s + self.slack_s
            self._expires[o.window] = max(self._expires.get(o.window, horizon), horizon)
        low, high = entry.ts - span_s, entry.ts + span_s
        near = [
            sorted(
                (WindowEntry(m, ts, data) for m, (ts, data) in slot.items() if low <= ts <= high),
                key=lambda e: (e.ts, e.member),
            )
            for slot in slots
        ]
        if o.reply == "window":
            return near
        out: list[list[WindowEntry]] = [[] for _ in slots]
        out[o.stage] = [entry]
        if o.reply == "chain":
            current = entry.ts
            for i in range(o.stage - 1, -1, -1):
                earlier = [e for e in near[i] if e.ts < current]
                if not earlier:
                    break
                out[i], current = [earlier[-1]], earlier[-1].ts
            current = entry.ts
            for i in range(o.stage + 1, o.stages):
                later = [e for e in near[i] if e.ts > current]
                if not later:
                    break
                out[i], current = [later[0]], later[0].ts
            return out
        for i in range(o.stages):
            if i != o.stage:
                before = [e for e in near[i] if e.ts <= entry.ts][-1:]
                after = [e for e in near[i] if e.ts >= entry.ts][:1]
                out[i] = before + [e for e in after if e not in before]
        return out

    def _claim(self, window: str, ts: float, span_s: float) -> bool:
        self._tick(ts)
        last = self._fired.get(window)
        if last is not None and abs(ts - last[0]) < span_s:
            return False
        if last is None or ts > last[0]:
            self._fired[window] = (ts, ts + span_s + self.lateness_s + self.slack_s)
        return True

    def _tick(self, ts: float) -> None:
        self._newest = max(self._newest, ts)
        self._operations += 1
        if self.bounded and self._operations % self.sweep_every == 0:
            self.sweep()

    def sweep(self) -> None:
        """Forget windows and alert claims that expired in event time."""
        for window in [w for w, expires in self._expires.items() if expires < self._newest]:
            self._windows.pop(window, None)
            del self._expires[window]
        for window in [w for w, (_, expires) in self._fired.items() if expires < self._newest]:
            del self._fired[window]


# ------------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class CorrelationRule:
    """A Sigma correlation rule, read from pySigma's parsed form."""

    id: str
    name: str | None
    title: str
    level: str
    description: str
    type: CorrelationType
    span_s: float
    group_by: tuple[str, ...]
    stages: tuple[str, ...]
    """Ids of the referenced rules (detection or correlation), in the rule's order."""
    op: SigmaCorrelationConditionOperator
    threshold: float
    value_field: str | None
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """group-by alias -> referenced rule id -> the field that rule's events carry."""
    output: bool = True
    """Whether the rule raises alerts (False for a rule only used by another correlation)."""

    def satisfied(self, measure: float) -> bool:
        return _OPERATORS[self.op](measure, self.threshold)


_REPLY: dict[CorrelationType, ReplyKind] = {
    "event_count": "window",
    "value_count": "window",
    "temporal": "nearest",
    "temporal_ordered": "chain",
}

_SUPPORTED_TYPES: dict[SigmaCorrelationType, CorrelationType] = {
    SigmaCorrelationType.EVENT_COUNT: "event_count",
    SigmaCorrelationType.VALUE_COUNT: "value_count",
    SigmaCorrelationType.TEMPORAL: "temporal",
    SigmaCorrelationType.TEMPORAL_ORDERED: "temporal_ordered",
}


def _rule_id(rule: SigmaRule | SigmaCorrelationRule) -> str:
    if rule.id is None:
        raise ValueError(f"Sigma rule {rule.title!r} has no id; correlation needs one")
    return str(rule.id)


def correlation_rules(collection: SigmaCollection) -> list[CorrelationRule]:
    """The correlation rules of a collection whose references pySigma has resolved (`load_rules`)."""
    rules = []
    for rule in collection:
        if not isinstance(rule, SigmaCorrelationRule):
            continue
        kind = _SUPPORTED_TYPES.get(rule.type)
        if kind is None:
            raise ValueError(f"correlation rule {rule.title!r}: type {rule.type} is not supported")
        condition = rule.condition
        if not isinstance(condition, SigmaCorrelationCondition):
            raise ValueError(f"correlation rule {rule.title!r}: extended conditions are not supported")
        value_field = condition.fieldref
        if isinstance(value_field, list):
            if len(value_field) != 1:
                raise ValueError(f"correlation rule {rule.title!r}: value_count over several fields")
            value_field = value_field[0]
        # pySigma resolves a correlation's rule references but not those of its aliases.
        aliases: dict[str, dict[str, str]] = {
            alias.alias: {_rule_id(collection[ref.reference]): name for ref, name in alias.mapping.items()}
            for alias in rule.aliases
        }
        rules.append(
            CorrelationRule(
                id=_rule_id(rule),
                name=rule.name,
                title=rule.title,
                level=str(rule.level) if rule.level is not None else "medium",
                description=rule.description or "",
                type=kind,
                span_s=float(rule.timespan.seconds),
                group_by=tuple(rule.group_by or ()),
                stages=tuple(_rule_id(ref.rule) for ref in rule.referenced_rules),
                op=condition.op,
                threshold=float(condition.count),
                value_field=value_field,
                aliases=aliases,
                output=bool(rule._output),
            )
        )
    return rules


# ----------------------------------------------------------------------------------------------- engine
@dataclass(frozen=True)
class _Occurrence:
    """Something a correlation stage consumes: a detection match or a nested correlation's firing."""

    rule_id: str
    member: str
    ts: float
    first_ts: float
    event_ids: tuple[str, ...]
    count: int
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class _Payload:
    """What an entry stands for. A single event whose member is its id (the common case) is stored as
    an empty payload, one whose member is a counted value as its bare id, and a nested occurrence as
    JSON with its event ids, earliest time and count."""

    ids: tuple[str, ...]
    first: float
    count: int

    def dump(self, member: str, ts: float) -> str:
        if len(self.ids) == 1 and self.count == 1 and self.first == ts:
            if self.ids[0] == member:
                return ""
            if not self.ids[0].startswith("{"):
                return self.ids[0]
        return json.dumps(
            {"ids": list(self.ids), "first": self.first, "n": self.count}, separators=(",", ":")
        )

    @classmethod
    def load(cls, entry: WindowEntry) -> _Payload:
        text = entry.data
        if not text:
            return cls((entry.member,), entry.ts, 1)
        if not text.startswith("{"):
            return cls((text,), entry.ts, 1)
        raw = json.loads(text)
        return cls(tuple(raw.get("ids", ())), float(raw.get("first", entry.ts)), int(raw.get("n", 1)))


@dataclass
class _Staged:
    stage: int
    entry: WindowEntry

    @functools.cached_property
    def payload(self) -> _Payload:
        """Parsed only for the entries an occurrence involves: a window may hold many more."""
        return _Payload.load(self.entry)


@dataclass
class EngineStats:
    matches: int = 0
    skipped: int = 0
    """Occurrences a rule could not use: no readable @timestamp, or a group-by/value field missing."""
    occurrences: int = 0
    alerts: int = 0


class CorrelationEngine:
    """Evaluates correlation rules on detection matches; all window state is in `store`."""

    def __init__(
        self,
        rules: Sequence[CorrelationRule],
        store: WindowStore,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_event_ids: int = MAX_EVENT_IDS,
        slice_s: float = DEFAULT_SLICE_S,
    ) -> None:
        self.rules = {rule.id: rule for rule in rules}
        self.store = store
        self.max_entries = max_entries
        self.max_event_ids = max_event_ids
        self.slice_s = slice_s
        self.stats = EngineStats()
        self._consumers: dict[str, list[tuple[CorrelationRule, int]]] = {}
        for rule in rules:
            for stage, ref in enumerate(rule.stages):
                self._consumers.setdefault(ref, []).append((rule, stage))
        self._validate()

    @classmethod
    def from_rules(
        cls,
        collection: SigmaCollection,
        store: WindowStore,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_event_ids: int = MAX_EVENT_IDS,
        slice_s: float = DEFAULT_SLICE_S,
    ) -> CorrelationEngine:
        """An engine for the correlation rules of a collection loaded with `detection.load_rules`."""
        rules = correlation_rules(collection)
        return cls(rules, store, max_entries=max_entries, max_event_ids=max_event_ids, slice_s=slice_s)

    def _validate(self) -> None:
        for rule in self.rules.values():
            if rule.type in ("event_count", "value_count") and rule.op in (
                SigmaCorrelationConditionOperator.GTE,
                SigmaCorrelationConditionOperator.GT,
                SigmaCorrelationConditionOperator.EQ,
            ):
                needed = rule.threshold + (1 if rule.op is SigmaCorrelationConditionOperator.GT else 0)
                if needed > self.max_entries:
                    raise ValueError(
                        f"correlation rule {rule.title!r} needs {needed:g} entries per window; "
                        f"the store keeps {self.max_entries}"
                    )
            if rule.type == "value_count" and not rule.value_field:
                raise ValueError(f"correlation rule {rule.title!r}: value_count without a field")
            for ref in rule.stages:
                inner = self.rules.get(ref)
                if inner is None:
                    continue
                missing = [f for f in rule.group_by if self._field_for(rule, ref, f) not in inner.group_by]
                if rule.value_field and rule.value_field not in inner.group_by:
                    missing.append(rule.value_field)
                if missing:
                    raise ValueError(
                        f"correlation rule {rule.title!r} groups by {missing}, which the correlation "
                        f"{inner.title!r} it refers to does not group by"
                    )

    @staticmethod
    def _field_for(rule: CorrelationRule, ref: str, group_field: str) -> str:
        return rule.aliases.get(group_field, {}).get(ref, group_field)

    @staticmethod
    def window_id(rule: CorrelationRule, group: Mapping[str, GroupValue]) -> str:
        """Identity of a (rule, group) window: the unit of state and of partitioning in the store."""
        digest = hashlib.sha256(group_identity(group).encode()).hexdigest()[:16]
        return f"{rule.id}:{digest}"

    async def process(self, matches: Iterable[Match]) -> list[Alert]:
        """Feed a batch of detection matches and return the alerts it raised.

        The batch goes to the store in waves, one round trip each: the matches (in event-time order),
        then the occurrences of the correlations they completed, then those of correlations over
        correlations. Verdicts do not depend on arrival order (see the module docstring), so a batch in
        waves decides what the same events one by one would, as long as the waves keep within the
        store's allowed lateness: a batch spanning more event time is processed slice by slice.
        """
        occurrences: list[_Occurrence] = []
        for match in matches:
            self.stats.matches += 1
            ts = parse_timestamp(match.event.get("@timestamp"))
            if ts is None:
                self.stats.skipped += 1
                continue
            if match.rule_id in self._consumers:
                event_id = match.event_id
                occurrences.append(_Occurrence(match.rule_id, event_id, ts, ts, (event_id,), 1, match.event))
        occurrences.sort(key=lambda occurrence: occurrence.ts)
        alerts: list[Alert] = []
        for _, in_slice in itertools.groupby(occurrences, key=lambda o: o.ts // self.slice_s):
            wave = list(in_slice)
            while wave:
                wave = await self._wave(wave, alerts)
        return alerts

    async def _wave(self, occurrences: list[_Occurrence], alerts: list[Alert]) -> list[_Occurrence]:
        """Observe every occurrence in every window it feeds; return the occurrences this completed."""
        pending: list[tuple[CorrelationRule, dict[str, GroupValue], _Occurrence, Observation]] = []
        for occurrence in occurrences:
            for rule, stage in self._consumers.get(occurrence.rule_id, ()):
                planned = self._observation(rule, stage, occurrence)
                if planned is None:
                    self.stats.skipped += 1
                    continue
                pending.append((rule, *planned))
        replies = await self.store.observe([item[-1] for item in pending]) if pending else []
        nested: list[_Occurrence] = []
        claims: list[tuple[Claim, Alert]] = []
        for (rule, group, trigger, observation), stored in zip(pending, replies, strict=True):
            fired = self._evaluate(rule, observation.stage, observation.entry, stored)
            if fired is None:
                continue
            self.stats.occurrences += 1
            measure, involved, ts = fired
            event_ids, first, last = self._summary(involved)
            if rule.id in self._consumers:
                member = f"{rule.id}:{trigger.member}"
                nested.append(_Occurrence(rule.id, member, ts, first, event_ids, int(measure), group))
            if rule.output:
                alert = Alert(
                    fingerprint=fingerprint(rule.id, group),
                    rule=rule.id,
                    title=rule.title,
                    severity=rule.level,
                    first_seen=format_timestamp(first),
                    last_seen=format_timestamp(last),
                    group=group,
                    event_ids=list(event_ids),
                    count=int(measure),
                )
                claims.append((Claim(observation.window, ts, rule.span_s), alert))
        if claims:
            granted = await self.store.claim([claim for claim, _ in claims])
            for (_, alert), first_in_window in zip(claims, granted, strict=True):
                if first_in_window:
                    self.stats.alerts += 1
                    alerts.append(alert)
        nested.sort(key=lambda occurrence: occurrence.ts)
        return nested

    def _observation(
        self, rule: CorrelationRule, stage: int, occurrence: _Occurrence
    ) -> tuple[dict[str, GroupValue], _Occurrence, Observation] | None:
        group = self._group(rule, occurrence)
        if group is None:
            return None
        member = occurrence.member
        if rule.type == "value_count":
            assert rule.value_field is not None
            value = occurrence.fields.get(rule.value_field)
            if value is None or isinstance(value, list | dict):
                return None
            member = json.dumps(value)
        payload = _Payload(occurrence.event_ids, occurrence.first_ts, occurrence.count)
        entry = WindowEntry(member, occurrence.ts, payload.dump(member, occurrence.ts))
        counted = rule.type in ("event_count", "value_count")
        observation = Observation(
            window=self.window_id(rule, group),
            stage=0 if counted else stage,
            stages=1 if counted else len(rule.stages),
            entry=entry,
            span_s=rule.span_s,
            max_entries=self.max_entries,
            reply=_REPLY[rule.type],
        )
        return group, occurrence, observation

    def _group(self, rule: CorrelationRule, occurrence: _Occurrence) -> dict[str, GroupValue] | None:
        group: dict[str, GroupValue] = {}
        for name in rule.group_by:
            value = occurrence.fields.get(self._field_for(rule, occurrence.rule_id, name))
            if value is None or not isinstance(value, str | int | float):
                return None
            group[name] = value
        return group

    def _evaluate(
        self, rule: CorrelationRule, stage: int, entry: WindowEntry, stored: list[list[WindowEntry]]
    ) -> tuple[float, list[_Staged], float] | None:
        """(measure, entries involved, time of the occurrence) if a window containing `entry` satisfies
        the rule's condition, else None."""
        staged = [_Staged(i, e) for i, entries in enumerate(stored) for e in entries]
        # The new entry is judged at its own time, even if the stage kept a later time for its member
        # (value_count) or evicted it (a full stage that received a late entry).
        staged = [s for s in staged if not (s.stage == stage and s.entry.member == entry.member)]
        mine = _Staged(stage, entry)
        staged.append(mine)
        staged.sort(key=lambda s: (s.entry.ts, s.stage, s.entry.member))
        if rule.type == "temporal_ordered":
            chain = _ordered_chain(staged, mine, len(rule.stages), rule.span_s)
            if chain is None:
                return None
            return float(sum(s.payload.count for s in chain)), chain, chain[-1].entry.ts
        # event_count and value_count count distinct members (event ids, values); temporal counts stages.
        key: Callable[[_Staged], object] | None = (lambda s: s.stage) if rule.type == "temporal" else None
        best = _best_window(staged, mine, rule.span_s, key, rule.satisfied)
        if best is None:
            return None
        measure, window = best
        if rule.type == "temporal":
            latest: dict[int, _Staged] = {}
            for s in window:
                latest[s.stage] = s
            window = sorted(latest.values(), key=lambda s: s.entry.ts)
            measure = float(sum(s.payload.count for s in window))
        return measure, window, entry.ts

    def _summary(self, involved: list[_Staged]) -> tuple[tuple[str, ...], float, float]:
        """The latest event ids (JSON is parsed only for nested occurrences), first and last time."""
        latest: dict[str, None] = {}
        for staged in reversed(involved):
            for event_id in reversed(staged.payload.ids):
                latest.setdefault(event_id)
            if len(latest) >= self.max_event_ids:
                break
        event_ids = tuple(reversed(list(latest)))[-self.max_event_ids :]
        first = min(s.payload.first if s.entry.data.startswith("{") else s.entry.ts for s in involved)
        last = max(s.entry.ts for s in involved)
        return event_ids, first, last


def _best_window(
    staged: list[_Staged],
    mine: _Staged,
    span_s: float,
    key: Callable[[_Staged], object] | None,
    satisfied: Callable[[float], bool],
) -> tuple[float, list[_Staged]] | None:
    """Of the windows [start, start + span] that contain `mine` (each starting on an entry's time), the
    satisfying one with the largest measure, or None. The measure is the number of distinct keys, or
    with `key` None the number of entries (they are distinct already: one per member).

    `staged` is sorted by time and holds entries within span of `mine`; two pointers, O(n).
    """
    t = mine.entry.ts
    best: tuple[int, int, int] | None = None
    counts: Counter[object] = Counter()
    right = 0
    for left, start in enumerate(staged):
        if start.entry.ts > t:
            break
        while right < len(staged) and staged[right].entry.ts <= start.entry.ts + span_s:
            if key is not None:
                counts[key(staged[right])] += 1
            right += 1
        if start.entry.ts >= t - span_s:
            measure = len(counts) if key is not None else right - left
            if (best is None or measure > best[0]) and satisfied(measure):
                best = (measure, left, right)
        if key is not None:
            counts[key(start)] -= 1
            if counts[key(start)] == 0:
                del counts[key(start)]
    if best is None:
        return None
    measure, left, right = best
    return float(measure), staged[left:right]


def _ordered_chain(staged: list[_Staged], mine: _Staged, stages: int, span_s: float) -> list[_Staged] | None:
    """A chain stage 0 < stage 1 < ... (strictly later event times) through `mine`, spanning at most
    span_s, or None. Greedy from `mine`: backwards the latest earlier entry of each stage, forwards the
    earliest later one, which gives the shortest chain through `mine`."""
    by_stage: list[list[_Staged]] = [[] for _ in range(stages)]
    for s in staged:
        by_stage[s.stage].append(s)
    chain = [mine]
    current = mine
    for stage in range(mine.stage - 1, -1, -1):
        earlier = [s for s in by_stage[stage] if s.entry.ts < current.entry.ts]
        if not earlier:
            return None
        current = earlier[-1]
        chain.insert(0, current)
    current = mine
    for stage in range(mine.stage + 1, stages):
        later = [s for s in by_stage[stage] if s.entry.ts > current.entry.ts]
        if not later:
            return None
        current = later[0]
        chain.append(current)
    if chain[-1].entry.ts - chain[0].entry.ts > span_s:
        return None
    return chain
