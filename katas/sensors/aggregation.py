"""Stream pre-aggregation of sensor readings: tumbling event-time windows per zone, floor and building.

Dashboards and alerts must not scan raw readings (50,000/s in production), so the stream is reduced as it
arrives: every reading counts in three scopes (its zone, its floor and its building), per sensor type, in
tumbling windows of each configured size (10 s and 60 s by default), aligned to the Unix epoch so that every
worker, and every recomputation, cuts the same windows. A window keeps count, min, max, sum and the latest
value: enough for the mean and for threshold alerts, and mergeable, so partial aggregates from several
workers, or six 10 s windows rolled up into a 60 s one, combine into exactly what one pass would give.

Pure domain code: no broker, no store. The service feeds readings to `WindowAggregator.add`, calls
`flush` about once a second, and writes what it returns (the live view and the final rows).

Event time: windows are cut by the reading's own timestamp, not by when it arrives, so a reading delayed
by the WAN or redelivered by MQTT lands in the window it belongs to. The aggregator keeps a watermark, the
latest timestamp seen minus `allowed_lateness`; a window is final once the watermark reaches its end.
A reading for a final window is refused (`TooLate`, counted in `late_count`) for the service to send to a
late topic: the final row was already written, and changing it silently would make the live view, the
stored rows and alerts disagree. A reading is judged as a whole: if any of its windows (the earliest to
close is the shortest) is final, it is added to none, so a 60 s window is always the merge of its 10 s
ones. Readings out of order but within the lateness are simply added.

Idle input: the watermark moves with the data, so if no data arrives, windows never close. `advance(now)`
lets the service move it by processing time instead, to now - allowed_lateness - idle_grace: a window
then closes `idle_grace` later than it would have with data flowing, and only when the whole input is
quiet (one busy building moves the watermark for all). Call it when the input is idle (a poll returned
nothing, consumer lag is zero), never while catching up on a backlog: there event time trails the clock
by the backlog, and advancing by the clock would refuse the whole backlog as late.

Emission: `flush` returns each window that changed since the last flush once (final=False: the live
dashboard's rows, fresh to within the flush interval), and each window that became final once
(final=True), after which the window is forgotten. Memory is thus the number of open windows (scopes x
types x sizes x the few windows of each size that the lateness keeps open), not the number of readings.

Cost: `add` is the hot path (thousands of readings per second in one process). Times are integer
microseconds internally; scopes are looked up once per zone and cached; a window is a small mutable
`__slots__` object updated in place; per reading the only allocations are one tuple for the zone and
one window key per size.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from katas.sensors.readings import Place, Reading, SensorType

ScopeLevel = Literal["zone", "floor", "building"]
SCOPE_LEVELS: Final[tuple[ScopeLevel, ...]] = ("zone", "floor", "building")

DEFAULT_SIZES_S: Final[tuple[int, ...]] = (10, 60)
"""Window sizes (seconds). 10 s is the sensors' reporting interval: each sensor adds about one reading per
window, the finest view worth drawing. 60 s is what the dashboards' longer ranges and the history read,
six times fewer rows."""
DEFAULT_ALLOWED_LATENESS: Final = timedelta(seconds=30)
"""How far behind the latest reading (event time) a reading may be and still count. The WAN adds 20-200 ms
and the 10 s reporting interval jitters, which needs well under a second; the rest is for MQTT QoS 1
redelivery: after a broker or bridge restart, unacknowledged readings are sent again once the session
resumes, tens of seconds late. Later than this, the reading goes to the late topic instead. The cost is
that final rows are written this long after their window ends (alerts and the live view use open
windows, so they do not wait)."""
DEFAULT_IDLE_GRACE: Final = timedelta(seconds=10)
"""Extra wait before `advance` closes windows by processing time: slack for sensor clocks behind this
host's clock and for the delay between a reading's arrival and the service's poll."""
LATE_REASON: Final = "late"
"""The stable label of a refused reading, beside `InvalidReadingError.reason` on the dead-letter side."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
_US_PER_S: Final = 1_000_000
_NO_WATERMARK: Final = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _US
_END_OF_TIME: Final = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _US
_FLUSH_EVERY: Final = 10_000
"""`aggregate` flushes this often (in readings), so a long batch keeps only its open windows in memory."""


def _micros(ts: datetime) -> int:
    return (ts - _EPOCH) // _US


def _datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


# ------------------------------------------------------------------------------------------------ values
@dataclass(frozen=True, slots=True, order=True)
class Scope:
    """What a window aggregates over: a zone, a floor or a whole building of one tenant. The finer
    fields are None above their level, so a scope is also a row key for the stores."""

    level: ScopeLevel
    tenant: str
    building: str
    floor: str | None = None
    zone: str | None = None

    def __post_init__(self) -> None:
        has_floor, has_zone = self.floor is not None, self.zone is not None
        expected = {"zone": (True, True), "floor": (True, False), "building": (False, False)}[self.level]
        if (has_floor, has_zone) != expected:
            raise ValueError(f"a {self.level} scope has floor and zone {expected}, got {self}")

    @classmethod
    def of(cls, place: Place, level: ScopeLevel) -> Scope:
        """The scope of `level` that contains `place`."""
        if level == "zone":
            return cls("zone", place.tenant, place.building, place.floor, place.zone)
        if level == "floor":
            return cls("floor", place.tenant, place.building, place.floor)
        return cls("building", place.tenant, place.building)

    @classmethod
    def all_of(cls, place: Place) -> tuple[Scope, Scope, Scope]:
        """The three scopes a reading from `place` counts in: its zone, floor and building."""
        return cls.of(place, "zone"), cls.of(place, "floor"), cls.of(place, "building")


@dataclass(frozen=True, slots=True)
class Stats:
    """What a window knows of its readings. `merge` is associative, and commutative but for `last`,
    which is the value at the latest `last_ts` (on a tie, the right operand's, i.e. the later-added
    reading's). Sums are floats, so merging in another order may differ in the last bits."""

    count: int
    min: float
    max: float
    sum: float
    last: float
    last_ts: datetime

    @classmethod
    def of(cls, value: float, ts: datetime) -> Stats:
        """The stats of a single reading."""
        return cls(1, value, value, value, value, ts)

    @property
    def mean(self) -> float:
        return self.sum / self.count

    def merge(self, other: Stats) -> Stats:
        """The stats of both windows' readings together (`other`'s added after `self`'s)."""
        latest = other if other.last_ts >= self.last_ts else self
        return Stats(
            self.count + other.count,
            min(self.min, other.min),
            max(self.max, other.max),
            self.sum + other.sum,
            latest.last,
            latest.last_ts,
        )


WindowKey = tuple[Scope, SensorType, int, datetime]
"""(scope, type, size in seconds, start): one window, the same in every worker and every recomputation."""


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A window as `flush` emits it: the row the stores upsert (by `key`) and the dashboard draws.
    `final` windows will not change again; open ones are the live view and may."""

    scope: Scope
    type: SensorType
    size_s: int
    start: datetime
    end: datetime
    count: int
    min: float
    max: float
    sum: float
    last: float
    last_ts: datetime
    final: bool

    @classmethod
    def of(
        cls, scope: Scope, type_: SensorType, size_s: int, start: datetime, stats: Stats, *, final: bool
    ) -> WindowResult:
        return cls(
            scope,
            type_,
            size_s,
            start,
            start + timedelta(seconds=size_s),
            stats.count,
            stats.min,
            stats.max,
            stats.sum,
            stats.last,
            stats.last_ts,
            final,
        )

    @property
    def key(self) -> WindowKey:
        return self.scope, self.type, self.size_s, self.start

    @property
    def mean(self) -> float:
        return self.sum / self.count

    @property
    def stats(self) -> Stats:
        return Stats(self.count, self.min, self.max, self.sum, self.last, self.last_ts)


@dataclass(frozen=True, slots=True)
class Added:
    """The reading was added to all its windows."""


ADDED: Final = Added()
"""The one `Added` that `add` returns (no object per reading)."""


@dataclass(frozen=True, slots=True)
class TooLate:
    """The reading was refused: `window_end` (the end of the earliest-closing of its windows) is at or
    before the `watermark`, so that window is final. `reason` is the stable label for the late topic."""

    window_end: datetime
    watermark: datetime
    reason: str = LATE_REASON

    @property
    def message(self) -> str:
        return (
            f"its window ended at {self.window_end.isoformat()}, "
            f"at or before the watermark {self.watermark.isoformat()}"
        )


AddResult = Added | TooLate


# ---------------------------------------------------------------------------------------------- engine
class _ScopeState:
    """One scope's open windows, keyed by (type, size in µs, start in µs)."""

    __slots__ = ("scope", "windows")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.windows: dict[tuple[SensorType, int, int], _Window] = {}


class _Window:
    """A window's accumulator, updated in place (times in µs since the epoch)."""

    __slots__ = ("count", "dirty", "key", "last", "last_us", "max", "min", "state", "sum")

    def __init__(self, state: _ScopeState, key: tuple[SensorType, int, int], value: float, us: int) -> None:
        self.state = state
        self.key = key
        self.count = 1
        self.min = value
        self.max = value
        self.sum = value
        self.last = value
        self.last_us = us
        self.dirty = False

    def result(self, *, final: bool) -> WindowResult:
        type_, size, start = self.key
        return WindowResult(
            self.state.scope,
            type_,
            size // _US_PER_S,
            _datetime(start),
            _datetime(start + size),
            self.count,
            self.min,
            self.max,
            self.sum,
            self.last,
            _datetime(self.last_us),
            final,
        )


class WindowAggregator:
    """Tumbling event-time windows per scope, type and size, with a watermark (see the module's doc).
    Not thread-safe: one aggregator per consumer (per partition set)."""

    __slots__ = (
        "_buildings",
        "_closing",
        "_dirty",
        "_ends",
        "_floors",
        "_grace_us",
        "_lateness_us",
        "_max_us",
        "_sizes_us",
        "_wm",
        "_zones",
        "late_count",
    )

    def __init__(
        self,
        sizes: Sequence[int] = DEFAULT_SIZES_S,
        allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
        idle_grace: timedelta = DEFAULT_IDLE_GRACE,
    ) -> None:
        if not sizes:
            raise ValueError("at least one window size")
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"window sizes are whole seconds > 0, got {size!r}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"window sizes repeat: {sizes}")
        if allowed_lateness < timedelta(0) or idle_grace < timedelta(0):
            raise ValueError("allowed_lateness and idle_grace cannot be negative")
        self._sizes_us = tuple(sorted(size * _US_PER_S for size in sizes))
        self._lateness_us = allowed_lateness // _US
        self._grace_us = idle_grace // _US
        self._zones: dict[tuple[str, str, str, str], tuple[_ScopeState, _ScopeState, _ScopeState]] = {}
        self._floors: dict[tuple[str, str, str], _ScopeState] = {}
        self._buildings: dict[tuple[str, str], _ScopeState] = {}
        self._closing: dict[int, list[_Window]] = {}
        """Windows by end (µs); `_ends` is a heap of these ends, so `flush` finds the final ones fast."""
        self._ends: list[int] = []
        self._dirty: list[_Window] = []
        self._max_us = _NO_WATERMARK
        self._wm = _NO_WATERMARK
        self.late_count = 0
        """Readings refused as too late since the aggregator started."""

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(size // _US_PER_S for size in self._sizes_us)

    @property
    def watermark(self) -> datetime | None:
        """Windows ending at or before this are final; None before the first reading or `advance`."""
        if self._wm == _NO_WATERMARK:
            return None
        return _datetime(self._wm)

    @property
    def open_windows(self) -> int:
        """Windows in memory: open ones, and final ones not flushed yet."""
        return sum(len(windows) for windows in self._closing.values())

    def add(self, reading: Reading) -> AddResult:
        """Count `reading` in its windows, or refuse it as too late (and count it in `late_count`)."""
        us = _micros(reading.ts)
        wm = self._wm
        sizes = self._sizes_us
        for size in sizes:
            end = us - us % size + size
            if end <= wm:
                self.late_count += 1
                return TooLate(_datetime(end), _datetime(wm))
        place = reading.place
        zone = (place.tenant, place.building, place.floor, place.zone)
        states = self._zones.get(zone)
        if states is None:
            states = self._scope_states(place, zone)
        type_, value = reading.type, reading.value
        dirty = self._dirty
        for size in sizes:
            key = (type_, size, us - us % size)
            for state in states:
                window = state.windows.get(key)
                if window is None:
                    window = state.windows[key] = _Window(state, key, value, us)
                    self._closing_at(key[2] + size).append(window)
                else:
                    window.count += 1
                    window.sum += value
                    if value < window.min:
                        window.min = value
                    if value > window.max:
                        window.max = value
                    if us >= window.last_us:
                        window.last_us = us
                        window.last = value
                if not window.dirty:
                    window.dirty = True
                    dirty.append(window)
        if us > self._max_us:
            self._max_us = us
            if us - self._lateness_us > wm:
                self._wm = us - self._lateness_us
        return ADDED

    def advance(self, now: datetime) -> None:
        """Move the watermark by processing time, to `now` - allowed_lateness - idle_grace if that is
        later, so windows close while no data arrives. Only when the input is idle (see the module's
        doc)."""
        self._wm = max(self._wm, _micros(now) - self._lateness_us - self._grace_us)

    def finish(self) -> list[WindowResult]:
        """End of input: every window is final, and this flushes them. Later readings are all late."""
        self._wm = _END_OF_TIME
        return self.flush()

    def flush(self) -> list[WindowResult]:
        """Windows that became final (final=True, by end), then open windows that changed since the
        last flush (final=False, in order of first change); each once. Final windows are forgotten."""
        out: list[WindowResult] = []
        ends, wm = self._ends, self._wm
        while ends and ends[0] <= wm:
            for window in self._closing.pop(heapq.heappop(ends)):
                del window.state.windows[window.key]
                window.dirty = False
                out.append(window.result(final=True))
        for window in self._dirty:
            if window.dirty:
                window.dirty = False
                out.append(window.result(final=False))
        self._dirty = []
        return out

    def _closing_at(self, end: int) -> list[_Window]:
        windows = self._closing.get(end)
        if windows is None:
            windows = self._closing[end] = []
            heapq.heappush(self._ends, end)
        return windows

    def _scope_states(
        self, place: Place, zone: tuple[str, str, str, str]
    ) -> tuple[_ScopeState, _ScopeState, _ScopeState]:
        """The states of `place`'s zone, floor and building, created on first sight (then cached by
        zone: their number is that of zones, floors and buildings, not of readings)."""
        floor_key = zone[:3]
        floor = self._floors.get(floor_key)
        if floor is None:
            floor = self._floors[floor_key] = _ScopeState(Scope.of(place, "floor"))
        building_key = (place.tenant, place.building)
        building = self._buildings.get(building_key)
        if building is None:
            building = self._buildings[building_key] = _ScopeState(Scope.of(place, "building"))
        states = self._zones[zone] = (_ScopeState(Scope.of(place, "zone")), floor, building)
        return states


# --------------------------------------------------------------------------------------------- helpers
def aggregate(
    readings: Iterable[Reading],
    sizes: Sequence[int] = DEFAULT_SIZES_S,
    allowed_lateness: timedelta = DEFAULT_ALLOWED_LATENESS,
) -> list[WindowResult]:
    """The final windows of a batch replayed in the order given, as the stream would have seen it
    (readings too late for that order are dropped, as the stream would have refused them). To recompute
    history from the cold store in full, pass it sorted by ts. Results come in order of window end."""
    aggregator = WindowAggregator(sizes, allowed_lateness)
    finals: list[WindowResult] = []
    for i, reading in enumerate(readings, 1):
        aggregator.add(reading)
        if i % _FLUSH_EVERY == 0:
            finals.extend(r for r in aggregator.flush() if r.final)
    finals.extend(aggregator.finish())
    return finals


def rollup(results: Iterable[WindowResult], size_s: int) -> list[WindowResult]:
    """Merge windows into windows of `size_s` per scope and type: 10 s windows into 60 s ones, or the
    partial windows of several workers into one (same size). Each input's size must divide `size_s`.
    A merged window is final if all its parts are; whether parts are missing only the caller knows."""
    if isinstance(size_s, bool) or not isinstance(size_s, int) or size_s <= 0:
        raise ValueError(f"window sizes are whole seconds > 0, got {size_s!r}")
    merged: dict[tuple[Scope, SensorType, int], tuple[Stats, bool]] = {}
    size_us = size_s * _US_PER_S
    for result in results:
        if size_s % result.size_s:
            raise ValueError(f"a {result.size_s} s window does not fit a {size_s} s window")
        start_us = _micros(result.start)
        key = (result.scope, result.type, start_us - start_us % size_us)
        seen = merged.get(key)
        stats = result.stats
        merged[key] = (
            (stats, result.final) if seen is None else (seen[0].merge(stats), seen[1] and result.final)
        )
    return [
        WindowResult.of(scope, type_, size_s, _datetime(start), stats, final=final)
        for (scope, type_, start), (stats, final) in merged.items()
    ]
