"""Load profiles: the intended send schedule of an open-loop run.

A profile is a piecewise-constant rate over time. Operation k (k = 0, 1, ...) is intended to be sent at the
moment the integral of the rate since the start reaches k, so operation 0 goes at t = 0 and the schedule is
exact and deterministic: the same profile always yields the same offsets, and the total count is the integral
of the rate (rounded up when it is not whole). Rates and durations are taken as the decimals they print as
(0.1 means one tenth), so `constant:0.1:30` sends exactly 3 operations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, runtime_checkable

PROFILE_FORMS = (
    "constant:RATE:SECONDS (e.g. constant:500:30), "
    "step:RATExSECONDS,RATExSECONDS,... (e.g. step:100x10,500x10), "
    "burst:BASE_RATE:BURST_RATE:SECONDS:BURST_START:BURST_SECONDS (e.g. burst:500:5000:60:20:10)"
)


class ProfileError(ValueError):
    """A profile is invalid or its text cannot be parsed."""


def _exact(x: float) -> Fraction:
    """The decimal a float prints as, exactly (0.1 -> 1/10, not the nearest binary fraction)."""
    return Fraction(repr(float(x)))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _check_rate(name: str, value: float, *, allow_zero: bool) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        need = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ProfileError(f"{name} must be {need} (operations per second), got {value!r}")


def _check_duration(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ProfileError(f"{name} must be a finite number of seconds > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class _Segment:
    rate: Fraction
    duration: Fraction


def _count(segments: tuple[_Segment, ...]) -> int:
    return math.ceil(sum((s.rate * s.duration for s in segments), Fraction(0)))


def _offsets(segments: tuple[_Segment, ...]) -> Iterator[float]:
    """Offsets of operations k = 0, 1, ... where the rate's integral reaches k, segment by segment.

    Segment boundaries and per-segment counts use exact fractions; the offsets inside a segment are float
    arithmetic on a small exact start, so long runs do not accumulate drift.
    """
    done = Fraction(0)  # integral of the rate up to the start of this segment
    start = Fraction(0)
    last = 0.0
    for seg in segments:
        end = done + seg.rate * seg.duration
        first_k, stop_k = math.ceil(done), math.ceil(end)
        if stop_k > first_k:
            rate = float(seg.rate)
            base = float(start)
            lead = float(first_k - done)  # integral still to go before the segment's first operation
            limit = float(start + seg.duration)
            for j in range(stop_k - first_k):
                t = base + (lead + j) / rate
                # Float rounding must neither reorder operations nor push one past the segment's end.
                t = min(max(t, last), math.nextafter(limit, -math.inf))
                last = t
                yield t
        done, start = end, start + seg.duration


@dataclass(frozen=True)
class ConstantRate:
    """`rate_per_s` operations per second for `duration_s` seconds."""

    rate_per_s: float
    duration_s: float

    def __post_init__(self) -> None:
        _check_rate("rate_per_s", self.rate_per_s, allow_zero=False)
        _check_duration("duration_s", self.duration_s)

    def _segments(self) -> tuple[_Segment, ...]:
        return (_Segment(_exact(self.rate_per_s), _exact(self.duration_s)),)

    def intended_count(self) -> int:
        return _count(self._segments())

    def intended_offsets(self) -> Iterator[float]:
        """Intended send time of each operation, in seconds from the start of the run."""
        return _offsets(self._segments())

    def describe(self) -> str:
        """The profile as `parse_profile` text."""
        return f"constant:{_num(self.rate_per_s)}:{_num(self.duration_s)}"


@dataclass(frozen=True)
class Step:
    """A sequence of constant rates: `steps` is ((rate_per_s, duration_s), ...). A rate of 0 is a pause."""

    steps: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ProfileError("a step profile needs at least one (rate, duration) step")
        for n, step in enumerate(self.steps, start=1):
            if len(step) != 2:
                raise ProfileError(f"step {n} must be a (rate_per_s, duration_s) pair, got {step!r}")
        # Accept lists too, but store tuples so the profile stays hashable.
        object.__setattr__(self, "steps", tuple((r, d) for r, d in self.steps))
        for n, step in enumerate(self.steps, start=1):
            _check_rate(f"step {n} rate", step[0], allow_zero=True)
            _check_duration(f"step {n} duration", step[1])

    @property
    def duration_s(self) -> float:
        return float(sum((_exact(d) for _, d in self.steps), Fraction(0)))

    def _segments(self) -> tuple[_Segment, ...]:
        return tuple(_Segment(_exact(r), _exact(d)) for r, d in self.steps)

    def intended_count(self) -> int:
        return _count(self._segments())

    def intended_offsets(self) -> Iterator[float]:
        """Intended send time of each operation, in seconds from the start of the run."""
        return _offsets(self._segments())

    def describe(self) -> str:
        return "step:" + ",".join(f"{_num(r)}x{_num(d)}" for r, d in self.steps)


@dataclass(frozen=True)
class Burst:
    """`base_rate_per_s` throughout, except `burst_rate_per_s` from `burst_start_s` for `burst_duration_s`."""

    base_rate_per_s: float
    burst_rate_per_s: float
    duration_s: float
    burst_start_s: float
    burst_duration_s: float

    def __post_init__(self) -> None:
        _check_rate("base_rate_per_s", self.base_rate_per_s, allow_zero=True)
        _check_rate("burst_rate_per_s", self.burst_rate_per_s, allow_zero=True)
        _check_duration("duration_s", self.duration_s)
        _check_duration("burst_duration_s", self.burst_duration_s)
        if not math.isfinite(self.burst_start_s) or self.burst_start_s < 0:
            raise ProfileError(f"burst_start_s must be a finite number >= 0, got {self.burst_start_s!r}")
        if _exact(self.burst_start_s) + _exact(self.burst_duration_s) > _exact(self.duration_s):
            raise ProfileError(
                f"the burst ({_num(self.burst_start_s)} s + {_num(self.burst_duration_s)} s) must end "
                f"within the profile's {_num(self.duration_s)} s"
            )

    def _segments(self) -> tuple[_Segment, ...]:
        base, burst = _exact(self.base_rate_per_s), _exact(self.burst_rate_per_s)
        start, length, total = (
            _exact(self.burst_start_s),
            _exact(self.burst_duration_s),
            _exact(self.duration_s),
        )
        parts = (
            _Segment(base, start),
            _Segment(burst, length),
            _Segment(base, total - start - length),
        )
        return tuple(p for p in parts if p.duration > 0)

    def intended_count(self) -> int:
        return _count(self._segments())

    def intended_offsets(self) -> Iterator[float]:
        """Intended send time of each operation, in seconds from the start of the run."""
        return _offsets(self._segments())

    def describe(self) -> str:
        fields = (
            self.base_rate_per_s,
            self.burst_rate_per_s,
            self.duration_s,
            self.burst_start_s,
            self.burst_duration_s,
        )
        return "burst:" + ":".join(_num(f) for f in fields)


Profile = ConstantRate | Step | Burst


@runtime_checkable
class LoadProfile(Protocol):
    """What the engine needs of a profile; the three profiles here have it, and so may a custom one."""

    @property
    def duration_s(self) -> float: ...

    def intended_count(self) -> int: ...

    def intended_offsets(self) -> Iterator[float]: ...

    def describe(self) -> str: ...


def _number(text: str, what: str, source: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ProfileError(f"bad profile {source!r}: {what} must be a number, got {text!r}") from None
    return value


def parse_profile(text: str) -> Profile:
    """Parse CLI text: `constant:500:30`, `step:100x10,500x10` or `burst:500:5000:60:20:10`.

    Rates are operations per second and times are seconds. Raises ProfileError with the accepted forms.
    """
    source = text
    kind, sep, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    if not kind:
        raise ProfileError(f"bad profile {source!r}: expected one of {PROFILE_FORMS}")
    fields = [f.strip() for f in rest.split(":")] if sep else []
    try:
        if kind == "constant":
            if len(fields) != 2:
                raise ProfileError(
                    f"bad profile {source!r}: constant takes 2 fields RATE:SECONDS, got {len(fields)}"
                )
            return ConstantRate(_number(fields[0], "RATE", source), _number(fields[1], "SECONDS", source))
        if kind == "step":
            if not rest.strip():
                raise ProfileError(f"bad profile {source!r}: step needs RATExSECONDS items, e.g. step:100x10")
            steps: list[tuple[float, float]] = []
            for item in rest.split(","):
                rate, x, secs = item.strip().lower().partition("x")
                if not x or not rate or not secs:
                    raise ProfileError(
                        f"bad profile {source!r}: step item {item.strip()!r} must look like RATExSECONDS"
                    )
                steps.append((_number(rate, "a step RATE", source), _number(secs, "a step SECONDS", source)))
            return Step(tuple(steps))
        if kind == "burst":
            if len(fields) != 5:
                raise ProfileError(
                    f"bad profile {source!r}: burst takes 5 fields "
                    f"BASE_RATE:BURST_RATE:SECONDS:BURST_START:BURST_SECONDS, got {len(fields)}"
                )
            names = ("BASE_RATE", "BURST_RATE", "SECONDS", "BURST_START", "BURST_SECONDS")
            b, r, d, s, bd = (_number(f, n, source) for f, n in zip(fields, names, strict=True))
            return Burst(b, r, d, s, bd)
    except ProfileError as exc:
        if str(exc).startswith("bad profile"):
            raise
        raise ProfileError(f"bad profile {source!r}: {exc}") from None
    raise ProfileError(f"bad profile {source!r}: unknown kind {kind!r}; expected one of {PROFILE_FORMS}")
