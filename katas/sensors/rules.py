"""Threshold alert rules over sensor readings: what a rule says, how a sensor moves through an episode, and
the same evaluation run live or over the past.

Pure domain code: no broker, no Redis, no webhook. The alerting service feeds `RuleEngine.evaluate` with
readings from the readings topic, sends the `AlertEvent`s it returns to the webhook, and keeps
`RuleEngine.snapshot()` in Redis; the API validates rules with `load_rules` and re-runs them over the past
with `replay`.

A rule is a band around what is normal: `above` a threshold, `below` one, or `outside` a low..high band
(limits are strict: CO2 > 1000 ppm breaches, 1000 ppm does not). Per rule and sensor (the key is the rule
id and the reading's `Place`) an episode goes

    ok -> pending -> raised -> cleared

- ok -> pending at the first breaching reading; its timestamp is the episode's `started_at`;
- pending -> raised at a breaching reading with ts - started_at >= for_s (event time, so the verdict does
  not depend on when the worker saw it; for_s = 0 raises at the first breaching reading);
- pending -> ok at any reading that does not breach: the condition did not hold for for_s;
- raised -> cleared at a reading back inside the limit by at least `hysteresis`; a value between the limit
  and limit - hysteresis keeps the episode raised, so a value wobbling around the threshold alerts once;
- cleared -> pending at the next breaching reading: a new episode.

Each episode yields one "raised" and one "cleared" event, whatever the number of readings. Readings not
newer than the last one seen for a key (out of order, or redelivered) drive no transition and are counted.

Bounded state: a key that never breached holds nothing, so memory grows with the sensors that breach, not
with the sensors. A key whose episode ended (cleared, or a pending breach that recovered, phase
"recovered") behaves as ok but remembers its last reading's timestamp for `memory_s` of event time (15
min by default), then is forgotten. Within that window a redelivered batch (a worker that died before
committing its offsets) changes nothing: every reading of it is stale for its key, or does not breach.
Beyond it the `fingerprint` (a hash of rule id, place and started_at) of a re-run episode is the one
already sent, and the webhook sender deduplicates on (fingerprint, kind). What the engine cannot tell is
a reading late by more than `memory_s` (or for a key that never breached) from a fresh one; readings are
partitioned by sensor, so a sensor's readings arrive in order.

Replay: `replay` is a fresh engine over readings in timestamp order, calling the same `evaluate` as live
processing; it shares nothing mutable with a live engine (rules are frozen), so it can run beside one.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from katas.sensors.readings import (
    NAME,
    PLAUSIBLE,
    SENSOR_TYPES,
    UNITS,
    Place,
    Reading,
    SensorType,
    format_timestamp,
)

Condition = Literal["above", "below", "outside"]
Severity = Literal["info", "warning", "critical"]
EventKind = Literal["raised", "cleared"]
Phase = Literal["pending", "raised", "cleared", "recovered"]
PHASES: Final[tuple[Phase, ...]] = get_args(Phase)
_ENDED: Final = frozenset({"cleared", "recovered"})
"""Phases that behave as ok but remember the last reading's timestamp for memory_s."""

MAX_FOR_S: Final = 86_400.0
"""A condition that must hold longer than a day is a report, not an alert."""
DEFAULT_MEMORY_S: Final = 900.0
"""How long (event time) an ended episode is remembered, so that readings redelivered within it are stale."""
SNAPSHOT_VERSION: Final = 1
_NAME_PATTERN: Final = f"^{NAME.pattern}$"


class InvalidRuleError(ValueError):
    """Rules that cannot be loaded; `problems` lists each one as `rules[i] (id): field: what is wrong`."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("invalid rules: " + "; ".join(problems))
        self.problems = tuple(problems)


# ------------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True, slots=True)
class Limits:
    """Every condition as one band: a value breaches outside [low, high] and clears inside
    [clear_low, clear_high] (the band narrowed by the hysteresis). `above` has low = -inf, `below` high =
    +inf, so evaluation has no branch per condition."""

    low: float
    high: float
    clear_low: float
    clear_high: float

    def breaches(self, value: float) -> bool:
        return value < self.low or value > self.high

    def clears(self, value: float) -> bool:
        return self.clear_low <= value <= self.clear_high


class Rule(BaseModel):
    """One threshold rule, as the API accepts it (JSON) and the configuration stores it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: str = Field(pattern=_NAME_PATTERN)
    """Letters, digits, _ . - (64 at most): it is part of state keys and fingerprints."""
    type: SensorType
    condition: Condition
    threshold: float | None = None
    """The limit of `above` and `below`, in the type's stored unit (readings.UNITS)."""
    low: float | None = None
    high: float | None = None
    """The normal band of `outside`: a value below low or above high breaches."""
    for_s: float = Field(default=0.0, ge=0.0, le=MAX_FOR_S)
    """How long (event time) the condition must hold before the alert is raised; 0 raises at once."""
    hysteresis: float = Field(default=0.0, ge=0.0)
    """How far back inside the limit a value must come to clear the alert, in the type's unit."""
    severity: Severity = "warning"
    tenant: str | None = Field(default=None, pattern=_NAME_PATTERN)
    """Only this tenant's sensors; None for every tenant."""
    building: str | None = Field(default=None, pattern=_NAME_PATTERN)
    """Only this building of `tenant` (building names are unique within a tenant only)."""

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.condition == "outside":
            if self.low is None or self.high is None or self.threshold is not None:
                raise ValueError("condition 'outside' takes low and high, not threshold")
            if self.low >= self.high:
                raise ValueError(f"low {self.low:g} must be below high {self.high:g}")
            if 2 * self.hysteresis >= self.high - self.low:
                raise ValueError(
                    f"hysteresis {self.hysteresis:g} leaves nothing of the band {self.low:g}..{self.high:g} "
                    "to clear in (it must be under half its width)"
                )
        elif self.threshold is None or self.low is not None or self.high is not None:
            raise ValueError(f"condition {self.condition!r} takes threshold, not low and high")
        floor, ceiling = PLAUSIBLE[self.type]
        for name, limit in (("threshold", self.threshold), ("low", self.low), ("high", self.high)):
            if limit is not None and not floor <= limit <= ceiling:
                raise ValueError(
                    f"{name} {limit:g} is outside what a {self.type} sensor reports "
                    f"({floor:g}..{ceiling:g} {UNITS[self.type]})"
                )
        limits = self.limits
        if self.condition == "above" and limits.clear_high < floor:
            raise ValueError(
                f"hysteresis {self.hysteresis:g} puts the clear level below {floor:g}: it never clears"
            )
        if self.condition == "below" and limits.clear_low > ceiling:
            raise ValueError(
                f"hysteresis {self.hysteresis:g} puts the clear level above {ceiling:g}: it never clears"
            )
        if self.building is not None and self.tenant is None:
            raise ValueError("a building scope needs its tenant (building names are unique per tenant)")
        return self

    @property
    def limits(self) -> Limits:
        h = self.hysteresis
        if self.condition == "above":
            assert self.threshold is not None
            return Limits(-math.inf, self.threshold, -math.inf, self.threshold - h)
        if self.condition == "below":
            assert self.threshold is not None
            return Limits(self.threshold, math.inf, self.threshold + h, math.inf)
        assert self.low is not None
        assert self.high is not None
        return Limits(self.low, self.high, self.low + h, self.high - h)

    def applies_to(self, place: Place) -> bool:
        return (self.tenant is None or self.tenant == place.tenant) and (
            self.building is None or self.building == place.building
        )

    def describe(self) -> str:
        """One line for people: `co2 above 1000 ppm for 60 s (clears at 900 ppm)`."""
        unit = UNITS[self.type]
        if self.condition == "outside":
            what = f"outside {self.low:g}..{self.high:g} {unit}"
        else:
            what = f"{self.condition} {self.threshold:g} {unit}"
        limits = self.limits
        if self.condition == "above":
            clears = f"at {limits.clear_high:g} {unit}"
        elif self.condition == "below":
            clears = f"at {limits.clear_low:g} {unit}"
        else:
            clears = f"within {limits.clear_low:g}..{limits.clear_high:g} {unit}"
        held = f" for {self.for_s:g} s" if self.for_s else ""
        return f"{self.type} {what}{held} (clears {clears})"


def load_rules(items: Iterable[Mapping[str, Any]]) -> tuple[Rule, ...]:
    """Rules from JSON-shaped dicts. Every problem is reported at once, with the rule's index and id."""
    rules: list[Rule] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        label = f"rules[{index}]"
        if isinstance(item, Mapping) and isinstance(item.get("id"), str):
            label += f" ({item['id']})"
        try:
            rules.append(Rule.model_validate(item))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                where = ".".join(str(part) for part in error["loc"])
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(f"{label}: {where}: {message}" if where else f"{label}: {message}")
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            problems.append(f"rule id {rule.id!r} is used more than once")
        seen.add(rule.id)
    if problems:
        raise InvalidRuleError(problems)
    return tuple(rules)


DEFAULT_RULES: Final[tuple[Rule, ...]] = load_rules(
    [
        {
            "id": "co2-high",
            "type": "co2",
            "condition": "above",
            "threshold": 1000,
            "for_s": 60,
            "hysteresis": 100,
            "severity": "warning",
        },
        {
            "id": "temperature-band",
            "type": "temperature",
            "condition": "outside",
            "low": 18,
            "high": 26,
            "for_s": 120,
            "hysteresis": 0.5,
            "severity": "warning",
        },
        {
            "id": "humidity-band",
            "type": "humidity",
            "condition": "outside",
            "low": 25,
            "high": 65,
            "for_s": 300,
            "hysteresis": 2,
            "severity": "info",
        },
    ]
)
"""The kata's examples: CO2 above 1000 ppm for a minute, temperature out of 18-26 C for two, humidity out
of 25-65 % for five."""


# ----------------------------------------------------------------------------------------------- events
def _exact(ts: datetime) -> str:
    """A timestamp to the microsecond (state and fingerprints must not round)."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def fingerprint(rule_id: str, place: Place, started_at: datetime) -> str:
    """Stable identity of an episode: the same rule, sensor and breach start give the same fingerprint,
    whichever worker or replay computes it."""
    text = "\n".join((rule_id, place.topic, _exact(started_at)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An episode raised or cleared. `ts` and `value` are those of the reading that caused it; raised and
    cleared of one episode share `fingerprint` (deduplicate on fingerprint and kind)."""

    kind: EventKind
    rule_id: str
    severity: Severity
    tenant: str
    building: str
    floor: str
    zone: str
    sensor_id: str
    type: SensorType
    value: float
    started_at: datetime
    ts: datetime
    fingerprint: str

    @property
    def place(self) -> Place:
        return Place(self.tenant, self.building, self.floor, self.zone, self.sensor_id)

    def to_dict(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "rule": self.rule_id,
            "severity": self.severity,
            "tenant": self.tenant,
            "building": self.building,
            "floor": self.floor,
            "zone": self.zone,
            "sensor_id": self.sensor_id,
            "type": self.type,
            "value": self.value,
            "unit": UNITS[self.type],
            "started_at": format_timestamp(self.started_at),
            "ts": format_timestamp(self.ts),
        }


# ----------------------------------------------------------------------------------------------- engine
_Key = tuple[str, Place]


@dataclass(slots=True)
class _State:
    """A key that is not ok, or ended an episode less than memory_s ago: its phase, when the breach
    started, when it last changed phase, and the timestamp of the newest reading seen (older are stale)."""

    phase: Phase
    started_at: datetime
    changed_at: datetime
    last_ts: datetime


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    limits: Limits
    for_td: timedelta
    scoped: bool


@dataclass(slots=True)
class EngineStats:
    """Counters for metrics (not part of the snapshot: a process's counters start at zero)."""

    readings: int = 0
    evaluations: int = 0
    """Reading x rule pairs evaluated (a reading meets only the rules of its type and scope)."""
    out_of_order: int = 0
    """Readings older than the last one seen for their key: no transition."""
    duplicates: int = 0
    """Readings with the same timestamp as the last one seen for their key: no transition."""
    raised: int = 0
    cleared: int = 0
    forgotten: int = 0
    """Ended episodes dropped from memory (memory_s behind the event time), or of unknown rules on restore."""


class RuleEngine:
    """Evaluates rules over readings, one sensor at a time (see the module docstring for the states).

    Not thread-safe; one engine per worker (per partition of the readings topic, keyed by sensor, so a
    sensor's readings arrive in order)."""

    def __init__(self, rules: Iterable[Rule] = DEFAULT_RULES, *, memory_s: float = DEFAULT_MEMORY_S) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        ids = [rule.id for rule in self.rules]
        if len(ids) != len(set(ids)):
            raise ValueError(f"rule ids must be unique: {sorted({i for i in ids if ids.count(i) > 1})}")
        if not memory_s >= 0:
            raise ValueError(f"memory_s must be >= 0, got {memory_s}")
        self.memory = timedelta(seconds=memory_s)
        by_type: dict[SensorType, list[_Compiled]] = {kind: [] for kind in SENSOR_TYPES}
        for rule in self.rules:
            by_type[rule.type].append(
                _Compiled(rule, rule.limits, timedelta(seconds=rule.for_s), rule.tenant is not None)
            )
        self._by_type: dict[SensorType, tuple[_Compiled, ...]] = {k: tuple(v) for k, v in by_type.items()}
        self._states: dict[_Key, _State] = {}
        self._ended: OrderedDict[_Key, None] = OrderedDict()
        """Keys in phase cleared or recovered, in the order they got there (expiry looks at the front)."""
        self.watermark: datetime | None = None
        """The newest reading timestamp seen (event time); ended episodes expire memory_s behind it."""
        self.stats = EngineStats()

    def __len__(self) -> int:
        """Keys held (pending, raised, or ended less than memory_s ago); ok keys hold nothing."""
        return len(self._states)

    # ----------------------------------------------------------------------------------- evaluation
    def evaluate(self, reading: Reading) -> list[AlertEvent]:
        """Apply one reading to every rule of its type and scope; the events it causes, if any."""
        self.stats.readings += 1
        ts = reading.ts
        if self.watermark is None or ts > self.watermark:
            self.watermark = ts
            self._expire(ts - self.memory)
        events: list[AlertEvent] = []
        for compiled in self._by_type[reading.type]:
            if compiled.scoped and not compiled.rule.applies_to(reading.place):
                continue
            self.stats.evaluations += 1
            kind, started_at = self._step(compiled, reading)
            if kind is not None:
                events.append(_event(kind, compiled.rule, reading, started_at))
        return events

    def evaluate_many(self, readings: Iterable[Reading]) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for reading in readings:
            events.extend(self.evaluate(reading))
        return events

    def _step(self, compiled: _Compiled, reading: Reading) -> tuple[EventKind | None, datetime]:
        """The transition of one key on one reading: the only place where episodes change."""
        key = (compiled.rule.id, reading.place)
        ts, value = reading.ts, reading.value
        state = self._states.get(key)
        if state is not None:
            if ts <= state.last_ts:
                if ts < state.last_ts:
                    self.stats.out_of_order += 1
                else:
                    self.stats.duplicates += 1
                return None, state.started_at
            state.last_ts = ts
        breaching = compiled.limits.breaches(value)
        if state is None or state.phase in _ENDED:
            if not breaching:
                return None, ts
            if state is not None:
                del self._ended[key]
            state = self._states[key] = _State("pending", ts, ts, ts)
        if state.phase == "pending":
            if not breaching:
                state.phase, state.changed_at = "recovered", ts
                self._ended[key] = None
                return None, state.started_at
            if ts - state.started_at < compiled.for_td:
                return None, state.started_at
            state.phase, state.changed_at = "raised", ts
            self.stats.raised += 1
            return "raised", state.started_at
        # raised: breaching, or between the limit and the clear level, keeps it so
        if not compiled.limits.clears(value):
            return None, state.started_at
        state.phase, state.changed_at = "cleared", ts
        self._ended[key] = None
        self.stats.cleared += 1
        return "cleared", state.started_at

    def _expire(self, cutoff: datetime) -> None:
        """Forget episodes that ended at or before `cutoff`: the keys are ok again."""
        ended = self._ended
        while ended:
            key = next(iter(ended))
            if self._states[key].changed_at > cutoff:
                return
            del ended[key]
            del self._states[key]
            self.stats.forgotten += 1

    # ------------------------------------------------------------------------------------- inspection
    def open_episodes(self) -> list[tuple[Rule, Place, datetime]]:
        """Raised episodes: rule, place and started_at."""
        rules = {rule.id: rule for rule in self.rules}
        return [
            (rules[rule_id], place, state.started_at)
            for (rule_id, place), state in self._states.items()
            if state.phase == "raised"
        ]

    # --------------------------------------------------------------------------------------- snapshot
    def snapshot(self) -> dict[str, Any]:
        """The engine's state as JSON-safe data (for Redis); `restore` reads it back."""
        return {
            "version": SNAPSHOT_VERSION,
            "watermark": None if self.watermark is None else _exact(self.watermark),
            "states": [
                {
                    "rule": rule_id,
                    "place": [place.tenant, place.building, place.floor, place.zone, place.sensor_id],
                    "phase": state.phase,
                    "started_at": _exact(state.started_at),
                    "changed_at": _exact(state.changed_at),
                    "last_ts": _exact(state.last_ts),
                }
                for (rule_id, place), state in self._states.items()
            ],
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the engine's state with a snapshot's. States of rules this engine does not have (a rule
        deleted since) are dropped; those of a rule changed since carry on under its new limits."""
        try:
            if snapshot["version"] != SNAPSHOT_VERSION:
                raise ValueError(f"version {snapshot['version']!r}, expected {SNAPSHOT_VERSION}")
            mark = snapshot["watermark"]
            watermark = None if mark is None else _parse_exact(mark)
            states: dict[_Key, _State] = {}
            known = {rule.id for rule in self.rules}
            dropped = 0
            for item in snapshot["states"]:
                if item["phase"] not in PHASES:
                    raise ValueError(f"phase {item['phase']!r} is not one of {', '.join(PHASES)}")
                place = Place(*(str(part) for part in item["place"]))
                state = _State(
                    item["phase"],
                    _parse_exact(item["started_at"]),
                    _parse_exact(item["changed_at"]),
                    _parse_exact(item["last_ts"]),
                )
                if item["rule"] in known:
                    states[(str(item["rule"]), place)] = state
                else:
                    dropped += 1
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a rule engine snapshot: {exc!r}") from None
        ended = sorted(
            (k for k, s in states.items() if s.phase in _ENDED), key=lambda k: states[k].changed_at
        )
        self._states = states
        self._ended = OrderedDict.fromkeys(ended)
        self.watermark = watermark
        self.stats.forgotten += dropped


def _parse_exact(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"timestamp {value!r} is not a string")
    ts = datetime.fromisoformat(value)
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone")
    return ts.astimezone(UTC)


def _event(kind: EventKind, rule: Rule, reading: Reading, started_at: datetime) -> AlertEvent:
    place = reading.place
    return AlertEvent(
        kind=kind,
        rule_id=rule.id,
        severity=rule.severity,
        tenant=place.tenant,
        building=place.building,
        floor=place.floor,
        zone=place.zone,
        sensor_id=place.sensor_id,
        type=reading.type,
        value=reading.value,
        started_at=started_at,
        ts=reading.ts,
        fingerprint=fingerprint(rule.id, place, started_at),
    )


# ----------------------------------------------------------------------------------------------- replay
def replay_order(reading: Reading) -> tuple[datetime, str, str]:
    """The order replay evaluates readings in: timestamp, then sensor, so that readings of one instant
    give the same events in the same order whatever order the store returned them in."""
    return reading.ts, reading.place.topic, reading.type


def replay(rules: Iterable[Rule], readings: Iterable[Reading], *, ordered: bool = False) -> list[AlertEvent]:
    """The events `rules` would have produced over `readings`: a fresh engine, the same `evaluate` as live
    processing, readings in `replay_order` (`ordered=True` streams readings already in timestamp order,
    e.g. from `ORDER BY ts`, without holding them all). An episode still open at the end of the readings
    has a raised event and no cleared one; one already under way at the first reading is taken to start
    there, so a caller that wants true starts feeds some history before the range and keeps the events
    whose ts falls in it."""
    engine = RuleEngine(rules)
    return engine.evaluate_many(readings if ordered else sorted(readings, key=replay_order))
