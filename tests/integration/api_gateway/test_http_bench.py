"""The HTTP-stack benchmark behind the gateway's choice of aiohttp runs end to end on loopback: each
candidate proxies every request without error and is measured on both paths (the figures themselves go
to docs/decisions.md, not into asserts)."""

from __future__ import annotations

from katas.api_gateway.http_bench import CANDIDATES, compare


def test_every_candidate_stack_is_measured_through_a_real_proxy() -> None:
    results = compare(requests=400, concurrency=4)
    assert [r.candidate for r in results] == list(CANDIDATES)
    for result in results:
        assert result.errors == 0, result
        assert result.proxied_requests_per_s > 0
        assert 0 < result.direct_p50_ms <= result.direct_p99_ms
        assert 0 < result.proxied_p50_ms <= result.proxied_p99_ms
