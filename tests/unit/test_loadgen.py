"""The open-loop load engine and its profiles, against in-process async operations (no servers).

Timing bounds here are deliberately loose: they check what the engine measures (e.g. that a stall shows up in
the latency of the operations that were due during it), never how fast this machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen import (
    Burst,
    ConstantRate,
    LoadResult,
    ProfileError,
    Step,
    parse_profile,
    run_load,
)

pytestmark = pytest.mark.unit


# --- profiles ---------------------------------------------------------------------------------------------


def _check_schedule(offsets: list[float], duration_s: float) -> None:
    assert all(a <= b for a, b in itertools.pairwise(offsets)), "offsets must be monotone"
    assert all(0.0 <= t < duration_s for t in offsets), "offsets must lie within the profile"


@settings(max_examples=60, deadline=None)
@given(rate=st.integers(1, 2000), duration=st.integers(1, 5))
def test_constant_rate_whole_integral_gives_exact_count(rate: int, duration: int) -> None:
    profile = ConstantRate(rate, duration)
    offsets = list(profile.intended_offsets())
    assert len(offsets) == rate * duration == profile.intended_count()
    assert offsets[0] == 0.0
    _check_schedule(offsets, profile.duration_s)
    # Evenly spaced at 1/rate.
    assert offsets[-1] == pytest.approx((rate * duration - 1) / rate)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.05, 2000, allow_nan=False, allow_infinity=False),
    duration=st.floats(0.05, 5, allow_nan=False, allow_infinity=False),
)
def test_constant_rate_count_is_integral_rounded_up(rate: float, duration: float) -> None:
    profile = ConstantRate(rate, duration)
    offsets = list(profile.intended_offsets())
    integral = rate * duration
    assert len(offsets) == profile.intended_count()
    assert integral - 1e-6 <= len(offsets) < integral + 1 + 1e-6
    _check_schedule(offsets, duration)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 4)), min_size=1, max_size=4))
def test_step_counts_per_step_and_total(steps: list[tuple[int, int]]) -> None:
    profile = Step(tuple((float(r), float(d)) for r, d in steps))
    offsets = list(profile.intended_offsets())
    assert profile.duration_s == sum(d for _, d in steps)
    assert len(offsets) == sum(r * d for r, d in steps) == profile.intended_count()
    _check_schedule(offsets, profile.duration_s)
    start = 0.0
    for rate, duration in steps:
        in_step = [t for t in offsets if start <= t < start + duration]
        assert len(in_step) == rate * duration
        start += duration


def test_decimal_rates_are_taken_as_written() -> None:
    assert ConstantRate(0.1, 30).intended_count() == 3
    assert list(ConstantRate(0.1, 30).intended_offsets()) == pytest.approx([0.0, 10.0, 20.0])
    assert ConstantRate(2.5, 1).intended_count() == 3  # the integral 2.5, rounded up: ops at 0, 0.4, 0.8


def test_burst_schedule() -> None:
    profile = Burst(
        base_rate_per_s=10, burst_rate_per_s=100, duration_s=6, burst_start_s=2, burst_duration_s=3
    )
    offsets = list(profile.intended_offsets())
    assert len(offsets) == profile.intended_count() == 10 * 3 + 100 * 3
    _check_schedule(offsets, 6)
    assert sum(1 for t in offsets if 2 <= t < 5) == 300
    assert sum(1 for t in offsets if t < 2) == 20


def test_parse_profile_forms_round_trip() -> None:
    assert parse_profile("constant:500:30") == ConstantRate(500, 30)
    assert parse_profile("step:100x10,500x10") == Step(((100, 10), (500, 10)))
    assert parse_profile(" Burst:500:5000:60:20:10 ") == Burst(500, 5000, 60, 20, 10)
    for text in ("constant:500:30", "step:100x10,500x10,0x5", "burst:500:5000:60:20:10", "constant:0.5:2.5"):
        assert parse_profile(text).describe() == text
    assert parse_profile("step:100x10,500x10").intended_count() == 6000
    assert parse_profile("burst:500:5000:60:20:10").intended_count() == 500 * 50 + 5000 * 10


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected one of"),
        ("constant", "2 fields"),
        ("constant:500", "2 fields"),
        ("constant:500:30:1", "2 fields"),
        ("constant:fast:30", "RATE must be a number"),
        ("constant:0:30", "> 0"),
        ("constant:-5:30", "> 0"),
        ("constant:nan:30", "finite"),
        ("constant:500:0", "seconds > 0"),
        ("step:", "RATExSECONDS"),
        ("step:100", "RATExSECONDS"),
        ("step:100x10,", "RATExSECONDS"),
        ("step:100x-1", "seconds > 0"),
        ("burst:500:5000:60:20", "5 fields"),
        ("burst:500:5000:60:55:10", "must end within"),
        ("ramp:1:2", "unknown kind 'ramp'"),
    ],
)
def test_parse_profile_errors(text: str, fragment: str) -> None:
    with pytest.raises(ProfileError, match="bad profile") as info:
        parse_profile(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


# --- engine -----------------------------------------------------------------------------------------------


async def test_all_operations_run_once_in_order_of_schedule() -> None:
    seen: list[int] = []

    async def op(i: int) -> None:
        seen.append(i)
        await asyncio.sleep(0.001)

    result = await run_load(ConstantRate(200, 0.5), op, progress=False, label="fast")
    assert seen == list(range(100))
    assert (result.intended, result.started, result.ok, result.timed_out) == (100, 100, 100, 0)
    assert result.errors == {}
    assert result.delayed_starts == 0
    assert result.label == "fast"
    assert result.profile == "constant:200:0.5"
    assert result.histogram.get_total_count() == 100
    assert sum(result.throughput) == 100
    assert result.duration_s >= 0.5
    assert result.p50_ms is not None
    assert result.max_ms is not None
    assert 1.0 <= result.p50_ms <= result.max_ms  # each op sleeps at least 1 ms
    assert result.percentile_curve[0][0] == 0.0
    assert result.percentile_curve[-1][0] == 100.0


async def test_stall_is_charged_to_operations_due_during_it() -> None:
    """Coordinated omission: a stall that blocks the whole process must show in later ops' latency.

    The first call blocks the event loop for 300 ms, so the generator itself cannot send anything during the
    stall. A closed-loop tool would then report every op as fast; measured from the intended send time, the
    ~60 ops that were due during the stall carry up to 300 ms each.
    """
    stall_s = 0.3

    async def op(i: int) -> None:
        if i == 0:
            time.sleep(stall_s)  # noqa: ASYNC251 - the point: stall the whole loop, generator included
        await asyncio.sleep(0)

    result = await run_load(ConstantRate(200, 1.0), op, progress=False)
    assert result.ok == 200
    assert result.p99_ms is not None
    assert result.p90_ms is not None
    assert result.p50_ms is not None
    assert result.p99_ms >= 0.8 * stall_s * 1000, result.summary_line()
    assert result.p90_ms >= 0.5 * stall_s * 1000, result.summary_line()  # ~30% of ops were due in the stall
    assert result.p50_ms < 0.5 * stall_s * 1000, result.summary_line()  # most were due after it


async def test_errors_are_counted_not_raised() -> None:
    class BoomError(RuntimeError):
        pass

    async def op(i: int) -> None:
        if i % 4 == 0:
            raise BoomError(f"op {i} failed")
        if i % 4 == 1:
            raise KeyError(i)

    result = await run_load(ConstantRate(100, 0.4), op, progress=False)
    assert result.intended == 40
    assert result.errors == {"test_errors_are_counted_not_raised.<locals>.BoomError": 10, "KeyError": 10}
    assert result.error_count == 20
    assert result.ok == 20
    assert result.timed_out == 0
    assert 0 < len(result.error_samples) <= 5
    assert any("failed" in s for s in result.error_samples)
    assert result.histogram.get_total_count() == 20  # latency of successful operations only


async def test_max_in_flight_delays_starts_and_latency_keeps_counting() -> None:
    running = 0
    peak = 0

    async def op(i: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.1)
        finally:
            running -= 1

    # 30 ops due over 0.3 s, each taking 100 ms, but only 3 may run at once: 30 ops/s of capacity.
    result = await run_load(ConstantRate(100, 0.3), op, max_in_flight=3, progress=False)
    assert peak == 3
    assert result.ok == 30
    assert result.timed_out == 0
    assert result.delayed_starts > 0
    # The last op is due at ~0.29 s but cannot start before ~0.9 s: its wait is part of its latency.
    assert result.max_ms is not None
    assert result.max_ms >= 400, result.summary_line()


async def test_stragglers_are_cancelled_after_grace_and_counted() -> None:
    cancelled = 0

    async def op(i: int) -> None:
        nonlocal cancelled
        if i % 2:
            return
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    result = await run_load(ConstantRate(50, 0.2), op, progress=False, grace_s=0.2)
    assert result.intended == 10
    assert result.ok == 5
    assert result.timed_out == 5
    assert cancelled == 5
    assert result.error_count == 0
    assert result.ok + result.error_count + result.timed_out == result.intended


async def test_progress_bar_does_not_disturb_the_run() -> None:
    async def op(i: int) -> None:
        await asyncio.sleep(0)

    result = await run_load(Step(((100, 0.2), (0, 0.1))), op, progress=True, label="with bar")
    assert result.ok == 20
    assert result.duration_s >= 0.3  # the trailing pause is part of the profile


async def test_invalid_engine_arguments() -> None:
    async def op(i: int) -> None:
        return None

    with pytest.raises(ValueError, match="max_in_flight"):
        await run_load(ConstantRate(1, 1), op, max_in_flight=0, progress=False)


async def test_result_round_trips_through_json(tmp_path: Path) -> None:
    async def op(i: int) -> None:
        if i == 3:
            raise ValueError("bad")
        await asyncio.sleep(0.002)

    result = await run_load(ConstantRate(100, 0.3), op, progress=False, label="rt")
    data = json.loads(json.dumps(result.to_dict()))
    assert isinstance(data["histogram"], str)
    back = LoadResult.from_dict(data)
    assert back == result  # every field but the histogram object itself
    assert back.histogram.get_total_count() == result.histogram.get_total_count() == 29
    for p in (50.0, 99.0, 99.9):
        assert back.histogram.get_value_at_percentile(p) == result.histogram.get_value_at_percentile(p)

    path = result.write_json(tmp_path / "sub" / "result.json")
    assert LoadResult.from_dict(json.loads(path.read_text())) == result


def test_empty_result_round_trips() -> None:
    from loadgen import new_histogram

    empty = LoadResult.from_histogram(
        new_histogram(),
        label="",
        profile="constant:1:1",
        intended=1,
        started=1,
        errors={"OSError": 1},
        error_samples=["OSError: nope"],
        timed_out=0,
        delayed_starts=0,
        duration_s=1.0,
        throughput=[],
    )
    assert empty.ok == 0
    assert empty.p99_ms is None
    assert empty.percentile_curve == []
    back = LoadResult.from_dict(json.loads(json.dumps(empty.to_dict())))
    assert back == empty
    assert not math.isnan(back.achieved_rate)
