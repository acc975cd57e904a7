"""GCRA and the decisions built on it, without servers: the bound over any span, charging all limits or
none, the response headers, and the local limiter's share while the shared one is down."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katas.api_gateway.ratelimit import (
    Decision,
    FailOpenLimiter,
    Limit,
    LimitedKey,
    LimiterUnavailableError,
    LocalLimiter,
    Scope,
    gcra,
    limits_for,
)


def allowed_times(limit: Limit, arrivals: Sequence[float]) -> list[float]:
    tat: float | None = None
    allowed = []
    for now in arrivals:
        verdict = gcra(tat, now, limit)
        if verdict.allowed:
            tat = verdict.new_tat
            allowed.append(now)
    return allowed


@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300),
)
def test_no_span_of_time_allows_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: int, gaps: list[float]
) -> None:
    limit = Limit(rate, burst)
    arrivals, now = [], 0.0
    for gap in gaps:
        now += gap
        arrivals.append(now)
    allowed = allowed_times(limit, arrivals)
    for i, first in enumerate(allowed):
        for j in range(i, len(allowed)):
            span = allowed[j] - first
            assert j - i + 1 <= burst + rate * span + 1e-6


def test_a_fresh_key_allows_its_burst_at_once_then_its_rate() -> None:
    limit = Limit(rate=10, burst=5)
    assert len(allowed_times(limit, [0.0] * 20)) == 5
    steady = [i * 0.1 for i in range(1, 101)]  # exactly the rate, after the burst is spent
    assert len(allowed_times(limit, [0.0] * 5 + steady)) == 5 + 100


def test_a_refused_request_says_when_to_retry_and_is_not_charged() -> None:
    limit = Limit(rate=2, burst=1)
    first = gcra(None, 100.0, limit)
    refused = gcra(first.new_tat, 100.1, limit)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.4)
    assert refused.new_tat == first.new_tat
    assert gcra(first.new_tat, 100.5, limit).allowed


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        Limit(0, 1)
    with pytest.raises(ValueError, match="burst of at least 1"):
        Limit(1, 0)


def test_headers_of_an_allowed_and_a_refused_request() -> None:
    limit = Limit(rate=10, burst=20)
    ok = Decision(True, limit, remaining=7, reset_after_s=1.25)
    assert ok.headers() == {
        "RateLimit-Limit": "20",
        "RateLimit-Remaining": "7",
        "RateLimit-Reset": "2",
        "RateLimit-Policy": '20;w=2;burst=20;scope="client"',
    }
    refused = Decision(False, limit, remaining=0, reset_after_s=2.0, retry_after_s=0.05)
    assert refused.headers()["Retry-After"] == "1"


def test_a_request_is_charged_to_every_limit_or_to_none() -> None:
    local = LocalLimiter(clock=lambda: 0.0)
    client_a = limits_for("a", "GET /orders", per_client=Limit(100, 100), global_limit=Limit(1, 3))
    client_b = limits_for("b", "GET /orders", per_client=Limit(100, 100), global_limit=Limit(1, 3))
    results = [asyncio.run(local.check(client_a)) for _ in range(3)] + [asyncio.run(local.check(client_b))]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert results[-1].scope == Scope.GLOBAL
    assert results[-1].headers()["Retry-After"] == "1"
    own = asyncio.run(local.check([LimitedKey(Scope.CLIENT, Limit(100, 100), "b")]))
    assert own.remaining == 99, "the refused request must not have used b's own allowance"


def test_endpoint_limits_apply_only_to_their_endpoint() -> None:
    keys = limits_for("a", "POST /pay", per_client=Limit(50, 10), per_endpoint={"POST /pay": Limit(1, 1)})
    assert [k.scope for k in keys] == [Scope.CLIENT_ENDPOINT, Scope.CLIENT]
    assert [k.scope for k in limits_for("a", "GET /x", per_client=Limit(50, 10))] == [Scope.CLIENT]


class Unreachable:
    async def check(self, keys: Sequence[LimitedKey], cost: int = 1) -> Decision:
        raise LimiterUnavailableError("connection refused")


def test_when_the_shared_limiter_is_down_each_node_keeps_its_share_as_a_ceiling() -> None:
    errors: list[LimiterUnavailableError] = []
    node = FailOpenLimiter(Unreachable(), LocalLimiter(share=1 / 3, clock=lambda: 0.0), errors.append)
    keys = [LimitedKey(Scope.CLIENT, Limit(30, 30), "a")]
    decisions = [asyncio.run(node.check(keys)) for _ in range(20)]
    assert sum(d.allowed for d in decisions) == 10, "a third of the burst, not all of it, not none"
    assert all(d.degraded for d in decisions)
    assert len(errors) == 20
