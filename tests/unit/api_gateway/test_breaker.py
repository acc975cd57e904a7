"""The circuit breaker's states on a fake clock: it opens on a share of failures, refuses while open,
lets a bounded number of probes through half-open, and closes or reopens on their outcome."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katas.api_gateway.breaker import BreakerState, CircuitBreaker, CircuitOpenError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **options: float) -> tuple[CircuitBreaker, list[BreakerState]]:
    changes: list[BreakerState] = []
    settings = {"window": 10, "min_calls": 4, "failure_ratio": 0.5, "open_for_s": 5.0} | options
    return (
        CircuitBreaker(
            "orders",
            window=int(settings["window"]),
            min_calls=int(settings["min_calls"]),
            failure_ratio=settings["failure_ratio"],
            open_for_s=settings["open_for_s"],
            probes=int(settings.get("probes", 1)),
            clock=clock,
            on_change=lambda name, state: changes.append(state),
        ),
        changes,
    )


def call(b: CircuitBreaker, ok: bool) -> None:
    probe = not b.acquire()
    b.record(ok, probe=probe)


def test_it_opens_once_half_the_recent_calls_failed_and_refuses_at_once() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    for ok in (True, False, True):
        call(b, ok)
    assert b.state is BreakerState.CLOSED, "too few calls to judge"
    call(b, False)  # 2 of 4 failed
    assert b.state is BreakerState.OPEN
    clock.now += 2
    with pytest.raises(CircuitOpenError) as refused:
        b.acquire()
    assert refused.value.retry_after_s == pytest.approx(3.0)
    assert changes == [BreakerState.OPEN]


def test_old_failures_leave_the_window() -> None:
    b, _ = breaker(Clock(), window=4, min_calls=4)
    for ok in (False, True, True, True, True, True, False, True):
        call(b, ok)
    assert b.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through_and_closes_on_its_success() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    for _ in range(4):
        call(b, False)
    clock.now += 5
    probe = not b.acquire()
    assert probe
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError):
        b.acquire()  # a second call while the probe is out is refused
    b.record(True, probe=True)
    assert b.state is BreakerState.CLOSED
    assert b.acquire() is True
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failed_probe_opens_it_for_another_period() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    for _ in range(4):
        call(b, False)
    clock.now += 5
    call(b, False)
    assert b.state is BreakerState.OPEN
    clock.now += 4.9
    with pytest.raises(CircuitOpenError):
        b.acquire()


def test_guard_records_exceptions_and_frees_a_cancelled_probe() -> None:
    clock = Clock()
    b, _ = breaker(clock)

    async def failing() -> None:
        async with b.guard():
            raise TimeoutError("backend too slow")

    for _ in range(4):
        with pytest.raises(TimeoutError):
            asyncio.run(failing())
    assert b.state is BreakerState.OPEN
    clock.now += 5

    async def cancelled_probe() -> None:
        async with b.guard():
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled_probe())
    assert b.acquire() is False, "the cancelled probe's slot is free again"


@given(st.lists(st.tuples(st.sampled_from(["call", "ok", "fail", "wait"]), st.floats(0, 3)), max_size=200))
def test_never_more_probes_in_flight_than_allowed(steps: list[tuple[str, float]]) -> None:
    clock = Clock()
    b, _ = breaker(clock, probes=2)
    in_flight: list[bool] = []  # probe flags of calls not finished yet
    for action, seconds in steps:
        if action == "call":
            with contextlib.suppress(CircuitOpenError):
                in_flight.append(not b.acquire())
        elif action in ("ok", "fail") and in_flight:
            b.record(action == "ok", probe=in_flight.pop(0))
        elif action == "wait":
            clock.now += seconds
        if b.state is BreakerState.HALF_OPEN:
            assert b._probes_in_flight <= 2
        assert b.state is not BreakerState.OPEN or not b._outcomes


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="failure_ratio"):
        CircuitBreaker("x", failure_ratio=0)
    with pytest.raises(ValueError, match="min_calls"):
        CircuitBreaker("x", window=5, min_calls=6)
