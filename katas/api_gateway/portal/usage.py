"""The portal's view of the usage API (katas.api_gateway.services.usage_api) and what its usage page shows.

The portal asks the usage API on the server side, with the admin token, and only for the signed-in
developer's own client: the token never reaches a browser, and a developer cannot ask about anyone else.
`UsageSource` is the seam: `HttpUsageSource` calls the API, `NoUsageSource` stands for an API that is not
configured; both raise `UsageUnavailableError` with a reason the page shows instead of failing.

Contract (GET {usage_url}/usage?client=<name>&from=<RFC3339>&to=<RFC3339>, Bearer admin token):
`{"client": name, "minutes": [{"minute", "route", "requests", "refused", "errors", "p50_ms", "p95_ms",
"p99_ms"}, ...]}`, one row per minute and route.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class UsageMinute(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    minute: datetime
    route: str = Field(max_length=200)
    requests: int = Field(ge=0)
    refused: int = Field(ge=0, default=0)
    errors: int = Field(ge=0, default=0)
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


class UsageReport(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    client: str
    minutes: list[UsageMinute]


class UsageUnavailableError(Exception):
    """The usage API cannot answer now; the message says why, in words a developer can read."""


class UsageSource(Protocol):
    async def usage(self, client: str, start: datetime, end: datetime) -> UsageReport: ...


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NoUsageSource:
    """What the portal uses when GW_USAGE_URL is not set."""

    async def usage(self, client: str, start: datetime, end: datetime) -> UsageReport:
        raise UsageUnavailableError("the usage API is not configured for this portal (GW_USAGE_URL)")


class HttpUsageSource:
    def __init__(
        self, base_url: str, admin_token: str, session: aiohttp.ClientSession, *, timeout_s: float = 3.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def usage(self, client: str, start: datetime, end: datetime) -> UsageReport:
        params = {"client": client, "from": rfc3339(start), "to": rfc3339(end)}
        try:
            async with self.session.get(
                f"{self.base_url}/usage",
                params=params,
                headers={"Authorization": f"Bearer {self.admin_token}"},
                timeout=self.timeout,
            ) as response:
                if response.status != 200:
                    raise UsageUnavailableError(f"the usage API answered HTTP {response.status}")
                body = await response.content.read(MAX_RESPONSE_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise UsageUnavailableError(
                f"the usage API cannot be reached ({type(error).__name__})"
            ) from error
        if len(body) > MAX_RESPONSE_BYTES:
            raise UsageUnavailableError("the usage API answered more than the portal reads")
        try:
            report = UsageReport.model_validate_json(body)
        except ValidationError as error:
            raise UsageUnavailableError("the usage API answered something the portal cannot read") from error
        if report.client != client:
            raise UsageUnavailableError("the usage API answered for another client")
        return report


@dataclass(frozen=True)
class RouteTotals:
    route: str
    requests: int
    refused: int
    errors: int
    worst_p99_ms: float | None


@dataclass(frozen=True)
class UsageView:
    """A report laid out per minute of the window: totals over routes, P99 per route, totals per route."""

    minutes: list[datetime]
    requests: list[int]
    refused: list[int]
    errors: list[int]
    p99_by_route: dict[str, list[float | None]]
    routes: list[RouteTotals]

    @property
    def total_requests(self) -> int:
        return sum(self.requests)


def minute_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def usage_view(report: UsageReport, start: datetime, end: datetime) -> UsageView:
    """Every minute from `start` up to `end` (missing minutes count zero requests and have no latency).
    Percentiles cannot be added up across routes, so latency stays per route."""
    first, last = minute_floor(start), minute_floor(end)
    minutes: list[datetime] = []
    moment = first
    while moment < last:
        minutes.append(moment)
        moment += timedelta(minutes=1)
    index = {m: i for i, m in enumerate(minutes)}
    requests, refused, errors = [0] * len(minutes), [0] * len(minutes), [0] * len(minutes)
    p99: dict[str, list[float | None]] = {}
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    worst: dict[str, float | None] = {}
    for row in report.minutes:
        i = index.get(minute_floor(row.minute))
        if i is None:
            continue
        requests[i] += row.requests
        refused[i] += row.refused
        errors[i] += row.errors
        totals[row.route][0] += row.requests
        totals[row.route][1] += row.refused
        totals[row.route][2] += row.errors
        worst.setdefault(row.route, None)
        if row.p99_ms is not None:
            p99.setdefault(row.route, [None] * len(minutes))[i] = row.p99_ms
            previous = worst[row.route]
            worst[row.route] = row.p99_ms if previous is None else max(previous, row.p99_ms)
    routes = [
        RouteTotals(route, totals[route][0], totals[route][1], totals[route][2], worst.get(route))
        for route in sorted(totals)
    ]
    return UsageView(minutes, requests, refused, errors, dict(sorted(p99.items())), routes)
