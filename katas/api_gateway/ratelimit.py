"""Rate limits as the gateway applies them: GCRA (a token bucket without a refill timer), the decision and
its response headers, and what a node does when the shared limiter cannot be reached.

GCRA keeps one number per limited key, the theoretical arrival time (TAT) of the next request: each request
pushes it `interval = 1 / rate` further; a request is allowed while TAT stays within `burst` intervals of
now. That is a token bucket of `burst` tokens refilled at `rate` per second, but one value to store and no
timer, so one atomic script over shared state can check and update it for every node at once (see
`katas.api_gateway.adapters.redis_limiter`). Over any span of `t` seconds a key allows at most
`burst + rate * t` requests.

This module knows nothing of Redis: the math is shared by the Redis script (which repeats it in Lua, with
Redis' clock) and by `LocalLimiter`, the per-node approximation used when the shared limiter is down (and,
on purpose, by the `local-rate-counters` mistake).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Scope(StrEnum):
    """What one limit counts: one client on one endpoint, one client overall, or every client together."""

    CLIENT_ENDPOINT = "client-endpoint"
    CLIENT = "client"
    GLOBAL = "global"


@dataclass(frozen=True, slots=True)
class Limit:
    """`rate` requests per second on average, up to `burst` at once."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"a rate limit needs a positive rate, got {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"a rate limit needs a burst of at least 1, got {self.burst!r}")

    @property
    def interval_s(self) -> float:
        return 1.0 / self.rate

    @property
    def tolerance_s(self) -> float:
        """How far TAT may run ahead of now: `burst` intervals."""
        return self.burst * self.interval_s


@dataclass(frozen=True, slots=True)
class LimitedKey:
    """One counter of shared state: a scope, and the names it counts for."""

    scope: Scope
    limit: Limit
    client: str = ""
    endpoint: str = ""

    @property
    def name(self) -> str:
        match self.scope:
            case Scope.CLIENT_ENDPOINT:
                return f"{self.client}|{self.endpoint}"
            case Scope.CLIENT:
                return self.client
            case Scope.GLOBAL:
                return "*"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request, checked against every limit that applies to it at once."""

    allowed: bool
    limit: Limit
    """The limit that decided: the one that refused, or the one with the least room left."""
    remaining: int
    """Requests that may follow at once before `limit` refuses."""
    reset_after_s: float
    """Until `limit` has its whole burst back."""
    retry_after_s: float = 0.0
    """Refused: until a retry can succeed."""
    scope: Scope = Scope.CLIENT
    degraded: bool = False
    """Decided by the node alone because the shared limiter was unreachable."""

    def headers(self) -> dict[str, str]:
        """The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers), and Retry-After on a 429."""
        window = max(1, math.ceil(self.limit.tolerance_s))
        headers = {
            "RateLimit-Limit": str(self.limit.burst),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_after_s)),
            "RateLimit-Policy": f'{self.limit.burst};w={window};burst={self.limit.burst};scope="{self.scope}"',
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


@dataclass(frozen=True, slots=True)
class Verdict:
    """GCRA for one key: allowed or not, the TAT to store if the request is let through, and the room left."""

    allowed: bool
    new_tat: float
    remaining: int
    reset_after_s: float
    retry_after_s: float


def gcra(tat: float | None, now: float, limit: Limit, cost: int = 1) -> Verdict:
    """The GCRA step: `tat` is the stored theoretical arrival time (None for a key never seen)."""
    start = now if tat is None else max(tat, now)
    new_tat = start + cost * limit.interval_s
    ahead = new_tat - now
    if ahead <= limit.tolerance_s + 1e-9:
        remaining = int((limit.tolerance_s - ahead) / limit.interval_s + 1e-9)
        return Verdict(True, new_tat, remaining, ahead, 0.0)
    behind = start - now  # the stored TAT, unchanged: the refused request is not counted
    return Verdict(False, start, 0, behind, ahead - limit.tolerance_s)


def decide(keys: Sequence[LimitedKey], verdicts: Sequence[Verdict], *, degraded: bool = False) -> Decision:
    """One decision from each key's verdict: refused if any key refused (none is then charged)."""
    pairs = list(zip(keys, verdicts, strict=True))
    refused = [(k, v) for k, v in pairs if not v.allowed]
    if refused:
        key, verdict = max(refused, key=lambda kv: kv[1].retry_after_s)
        return Decision(
            False, key.limit, 0, verdict.reset_after_s, verdict.retry_after_s, key.scope, degraded
        )
    key, verdict = min(pairs, key=lambda kv: kv[1].remaining)
    return Decision(True, key.limit, verdict.remaining, verdict.reset_after_s, 0.0, key.scope, degraded)


class SharedLimiter(Protocol):
    """Limits enforced across every gateway node (an adapter over shared state)."""

    async def check(self, keys: Sequence[LimitedKey], cost: int = 1) -> Decision: ...


class LimiterUnavailableError(ConnectionError):
    """The shared state cannot be reached; the caller decides whether to fail open."""


@dataclass
class LocalLimiter:
    """GCRA in this process only. Alone it is the `local-rate-counters` mistake (N nodes allow N times the
    limit); behind `FailOpenLimiter` it keeps a ceiling while the shared limiter is down."""

    share: float = 1.0
    """The part of each limit this node enforces: 1 / (number of nodes) approximates the shared limit."""
    clock: Callable[[], float] = time.monotonic
    max_keys: int = 100_000
    _tats: dict[tuple[Scope, str], float] = field(default_factory=dict)

    def _scaled(self, limit: Limit) -> Limit:
        if self.share >= 1.0:
            return limit
        return Limit(limit.rate * self.share, max(1, math.ceil(limit.burst * self.share)))

    async def check(self, keys: Sequence[LimitedKey], cost: int = 1) -> Decision:
        now = self.clock()
        scaled = [LimitedKey(k.scope, self._scaled(k.limit), k.client, k.endpoint) for k in keys]
        verdicts = [gcra(self._tats.get((k.scope, k.name)), now, k.limit, cost) for k in scaled]
        decision = decide(scaled, verdicts, degraded=self.share < 1.0)
        if decision.allowed:
            if len(self._tats) >= self.max_keys:
                self._forget_idle(now)
            for key, verdict in zip(scaled, verdicts, strict=True):
                self._tats[(key.scope, key.name)] = verdict.new_tat
        return decision

    def _forget_idle(self, now: float) -> None:
        """Keys whose TAT is in the past hold nothing a new key would not: drop them (bounded memory)."""
        for name in [name for name, tat in self._tats.items() if tat <= now]:
            del self._tats[name]


@dataclass
class FailOpenLimiter:
    """The shared limiter, and when it is unreachable, this node's share of each limit instead of
    refusing everyone: an outage of the limiter must not become an outage of the API."""

    shared: SharedLimiter
    local: LocalLimiter
    on_degraded: Callable[[LimiterUnavailableError], None] = lambda error: None

    async def check(self, keys: Sequence[LimitedKey], cost: int = 1) -> Decision:
        try:
            return await self.shared.check(keys, cost)
        except LimiterUnavailableError as error:
            self.on_degraded(error)
            return await self.local.check(keys, cost)


def limits_for(
    client: str,
    endpoint: str,
    *,
    per_client: Limit,
    per_endpoint: Mapping[str, Limit] | None = None,
    global_limit: Limit | None = None,
) -> list[LimitedKey]:
    """The keys one request is counted against: the client's endpoint limit if it has one, the client's
    own limit, and the global one."""
    keys = []
    endpoint_limit = (per_endpoint or {}).get(endpoint)
    if endpoint_limit is not None:
        keys.append(LimitedKey(Scope.CLIENT_ENDPOINT, endpoint_limit, client, endpoint))
    keys.append(LimitedKey(Scope.CLIENT, per_client, client))
    if global_limit is not None:
        keys.append(LimitedKey(Scope.GLOBAL, global_limit))
    return keys
