"""A circuit breaker per backend: stop sending to a backend that keeps failing, probe it now and then, and
let traffic back once a probe succeeds.

Without one (the `no-circuit-breaker` mistake), requests to a slow or dead backend each hold a pooled
connection until their timeout, the pool drains, and requests to healthy backends wait behind them. With
one, the gateway answers 503 at once while the backend is out, and the pool stays free.

States:
- closed: calls pass; each outcome goes into a window of the last `window` calls. When at least
  `min_calls` are in it and the share of failures reaches `failure_ratio`, the breaker opens.
- open: calls are refused at once (`CircuitOpenError`, with the time left) for `open_for_s`.
- half-open: up to `probes` calls go through as probes, the rest are refused. All probes succeeding
  closes the breaker with an empty window; any probe failing opens it again for another `open_for_s`.

A timeout counts as a failure (the caller records it): slowness is what drains pools.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitOpenError(RuntimeError):
    """The backend is considered down; `retry_after_s` says when the next probe may go."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit of {name} is open; next probe in {retry_after_s:.1f} s")
        self.name = name
        self.retry_after_s = retry_after_s


@dataclass
class CircuitBreaker:
    name: str
    window: int = 20
    min_calls: int = 10
    failure_ratio: float = 0.5
    open_for_s: float = 5.0
    probes: int = 1
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[str, BreakerState], None] = lambda name, state: None
    state: BreakerState = BreakerState.CLOSED
    _outcomes: deque[bool] = field(default_factory=deque)
    _opened_at: float = 0.0
    _probes_in_flight: int = 0
    _probes_passed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio}")
        if not 1 <= self.min_calls <= self.window:
            raise ValueError(f"min_calls must be between 1 and window ({self.window}), got {self.min_calls}")
        if self.probes < 1:
            raise ValueError(f"probes must be at least 1, got {self.probes}")

    def acquire(self) -> bool:
        """Take permission for one call; False means it goes as a half-open probe. Raises when refused."""
        if self.state is BreakerState.OPEN:
            left = self._opened_at + self.open_for_s - self.clock()
            if left > 0:
                raise CircuitOpenError(self.name, left)
            self._move(BreakerState.HALF_OPEN)
            self._probes_in_flight = self._probes_passed = 0
        if self.state is BreakerState.HALF_OPEN:
            if self._probes_in_flight + self._probes_passed >= self.probes:
                raise CircuitOpenError(self.name, 0.0)
            self._probes_in_flight += 1
            return False
        return True

    def record(self, ok: bool, *, probe: bool) -> None:
        """The outcome of a call `acquire` allowed (`probe`: what acquire returned was False)."""
        if probe:
            if self.state is not BreakerState.HALF_OPEN:
                return  # a late probe of an earlier round: the breaker has moved on
            self._probes_in_flight -= 1
            if not ok:
                self._open()
            else:
                self._probes_passed += 1
                if self._probes_passed >= self.probes:
                    self._outcomes.clear()
                    self._move(BreakerState.CLOSED)
            return
        if self.state is not BreakerState.CLOSED:
            return  # a call that started before the breaker opened says nothing about now
        self._outcomes.append(ok)
        if len(self._outcomes) > self.window:
            self._outcomes.popleft()
        failures = self._outcomes.count(False)
        if len(self._outcomes) >= self.min_calls and failures >= self.failure_ratio * len(self._outcomes):
            self._open()

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """`async with breaker.guard(): ...`: refused at once when open; an exception records a failure."""
        probe = not self.acquire()
        try:
            yield
        except Exception:
            self.record(False, probe=probe)
            raise
        except BaseException:  # cancelled (the client went away): no outcome, but free the probe's slot
            self.release(probe=probe)
            raise
        self.record(True, probe=probe)

    def release(self, *, probe: bool) -> None:
        """A call `acquire` allowed ended without an outcome."""
        if probe and self.state is BreakerState.HALF_OPEN:
            self._probes_in_flight -= 1

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._outcomes.clear()
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            self.on_change(self.name, state)
