"""The investigation API: search across hot and cold storage, alerts, the audit log, pseudonym look-up.

Every route but /healthz and /metrics needs `Authorization: Bearer <token>`; a token names a principal
with one role. Analysts search, list and acknowledge alerts and look up pseudonyms; auditors read the
audit log and nothing else. A request without a valid token gets 401 and is only counted and logged
(an unauthenticated caller cannot make the API write to the store); a wrong role gets 403.

GDPR: every request of an authenticated principal appends one row to the audit log (who, when, route,
query, parameters, rows returned, outcome) *before* the answer is sent; if the row cannot be written the
data is not returned (503). The API only ever INSERTs into the audit log: no route updates or deletes it.
A pseudonym look-up is recorded with the pseudonym it returned, never the clear value asked for, so the
audit log does not itself become a store of personal data; an auditor who knows a person's value can
still find every look-up of that person by computing the pseudonym.

Routes:
- `GET /search?q=&from=<RFC 3339>&to=<RFC 3339>&limit=&<ecs.field>=<value>...` -> `{"total", "events"}`
  (`to` defaults to now and `from` to 24 h before `to`; any other parameter is a field filter).
- `GET /alerts?status=open|acknowledged&limit=` -> a list of alerts
- `POST /alerts/{fingerprint}/ack` -> the acknowledged alert
- `GET /audit?from=&to=&principal=&action=&limit=` -> a list of audit rows (auditors only)
- `GET /pseudonym?kind=user|email|ip&value=` -> `{"kind", "pseudonym", "stored_pseudonymized"}`

The app is built by `create_app(ch, ...)` for tests and for the service module that wires it.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.datastructures import QueryParams

from katas.infra.clickhouse import ClickHouse, ClickHouseError
from katas.infra.service import Worker, http_app, log, run_service
from katas.infra.settings import infra_settings
from katas.siem.cold import ColdStore
from katas.siem.pseudonymize import Pseudonymizer, PseudonymKind
from katas.siem.search import DEFAULT_LIMIT, MAX_LIMIT, SearchError, SearchQuery, search
from katas.siem.settings import SiemSettings
from katas.siem.storage import (
    AlertStatus,
    AuditEntry,
    acknowledge_alert,
    append_audit,
    ensure_schema,
    list_alerts,
    list_audit,
    rfc3339,
)

Role = Literal["analyst", "auditor"]

REQUESTS = Counter("siem_query_requests", "investigation API requests", ["route", "outcome"])
LATENCY = Histogram(
    "siem_query_seconds",
    "investigation API request time",
    ["route"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

MAX_PARAMS = 64
MAX_VALUE_LENGTH = 256
DEFAULT_WINDOW = timedelta(hours=24)
RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
SEARCH_PARAMS = frozenset({"q", "from", "to", "limit"})


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


class QueryApiSettings(BaseSettings):
    """Tokens of the investigation API, from SIEM_QUERY_* variables."""

    model_config = SettingsConfigDict(env_prefix="SIEM_QUERY_", extra="ignore", frozen=True)

    analyst_token: SecretStr = SecretStr("")
    analyst_name: str = "analyst"
    auditor_token: SecretStr = SecretStr("")
    auditor_name: str = "auditor"

    def principals(self) -> dict[str, Principal]:
        tokens = {
            self.analyst_token.get_secret_value(): Principal(self.analyst_name, "analyst"),
            self.auditor_token.get_secret_value(): Principal(self.auditor_name, "auditor"),
        }
        return {token: principal for token, principal in tokens.items() if token}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


# --------------------------------------------------------------------------------------- parameters
def parse_rfc3339(name: str, text: str) -> datetime:
    """A strict RFC 3339 date-time (offset required) as an aware UTC datetime; ApiError(400) otherwise."""
    match = RFC3339.fullmatch(text)
    if match is None:
        hint = " (a '+' in a URL must be sent as %2B)" if " " in text.strip() else ""
        raise ApiError(400, f"{name} is not an RFC 3339 date-time like 2024-05-01T12:00:00Z{hint}")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    micros = int((match.group(7) or "0")[:6].ljust(6, "0"))
    if match.group(8):
        offset = timedelta(0)
    else:
        off_h, off_m = int(match.group(10)), int(match.group(11))
        if off_h > 23 or off_m > 59:
            raise ApiError(400, f"{name} has an invalid UTC offset")
        offset = timedelta(hours=off_h, minutes=off_m) * (-1 if match.group(9) == "-" else 1)
    try:
        local = datetime(year, month, day, hour, minute, second, micros, UTC)
        return local - offset
    except (ValueError, OverflowError):
        raise ApiError(400, f"{name} is not a valid date-time: {text[:40]!r}") from None


def _single(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise ApiError(400, f"{name} is given more than once")
    if values and len(values[0]) > MAX_VALUE_LENGTH:
        raise ApiError(400, f"{name} is longer than {MAX_VALUE_LENGTH} characters")
    return values[0] if values else None


def _limit(params: QueryParams, default: int = DEFAULT_LIMIT) -> int:
    text = _single(params, "limit")
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _time_range(params: QueryParams, now: datetime) -> tuple[datetime, datetime]:
    start_text, end_text = _single(params, "from"), _single(params, "to")
    end = parse_rfc3339("to", end_text) if end_text is not None else now
    start = parse_rfc3339("from", start_text) if start_text is not None else end - DEFAULT_WINDOW
    if start > end:
        raise ApiError(400, "from is after to")
    return start, end


def _only(params: QueryParams, allowed: frozenset[str]) -> None:
    if len(params.multi_items()) > MAX_PARAMS:
        raise ApiError(400, f"more than {MAX_PARAMS} query parameters")
    unknown = sorted(set(params.keys()) - allowed)
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0][:60]!r}; allowed: {', '.join(sorted(allowed))}")


def parse_search(params: QueryParams, now: datetime) -> SearchQuery:
    """A SearchQuery from /search's query string; ApiError(400) for anything it cannot take."""
    if len(params.multi_items()) > MAX_PARAMS:
        raise ApiError(400, f"more than {MAX_PARAMS} query parameters")
    start, end = _time_range(params, now)
    filters: dict[str, list[str]] = {}
    for name, value in params.multi_items():
        if name not in SEARCH_PARAMS:
            filters.setdefault(name, []).append(value)
    try:
        return SearchQuery(
            start=start, end=end, q=_single(params, "q") or "", filters=filters, limit=_limit(params)
        )
    except SearchError as exc:
        raise ApiError(400, str(exc)) from None


# ------------------------------------------------------------------------------------------------ app
def create_app(
    ch: ClickHouse,
    *,
    principals: Mapping[str, Principal],
    cold: ColdStore | None = None,
    pseudonymizer: Pseudonymizer | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FastAPI:
    """The investigation API over the hot store `ch` and, when given, the cold tier `cold`.

    `principals` maps bearer tokens to who they are; empty tokens are ignored.
    """
    tokens = [(token.encode(), principal) for token, principal in principals.items() if token]
    app = http_app("siem investigation API")

    def authenticate(request: Request, route: str) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        found: Principal | None = None
        if scheme.lower() == "bearer" and token:
            offered = token.strip().encode()
            for known, principal in tokens:  # compare with every token, in constant time each
                if hmac.compare_digest(offered, known):
                    found = principal
        if found is None:
            REQUESTS.labels(route, "unauthenticated").inc()
            log("unauthenticated", route=route, client=request.client.host if request.client else None)
            raise ApiError(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        return found

    async def audit(
        principal: Principal, action: str, query: str, parameters: dict[str, Any], rows: int, outcome: str
    ) -> None:
        entry = AuditEntry(clock(), principal.name, action, query, parameters, rows, outcome)
        try:
            await append_audit(ch, entry)
        except (ClickHouseError, httpx.HTTPError) as exc:
            log("audit_write_failed", action=action, principal=principal.name, error=str(exc))
            raise ApiError(503, "the audit log cannot be written, so no data is returned") from None

    async def handle(
        request: Request,
        route: str,
        role: Role,
        action: Callable[[Principal, dict[str, Any]], Awaitable[tuple[Any, int, str]]],
    ) -> JSONResponse:
        """Authenticate, run `action`, audit the outcome, answer. `action` returns (body, rows, query)
        and fills the dict it is given with the parameters to audit."""
        started = time.perf_counter()
        principal = authenticate(request, route)
        parameters: dict[str, Any] = {}
        try:
            if principal.role != role:
                raise ApiError(403, f"{route} is for the {role} role")
            body, rows, query = await action(principal, parameters)
        except ApiError as exc:
            outcome = {400: "rejected", 403: "forbidden", 404: "not_found"}.get(exc.status, "error")
            await audit(principal, route, parameters.pop("_query", ""), parameters, 0, outcome)
            REQUESTS.labels(route, outcome).inc()
            raise
        except (ClickHouseError, httpx.HTTPError) as exc:
            log("store_error", route=route, error=str(exc)[:500])
            await audit(principal, route, parameters.pop("_query", ""), parameters, 0, "error")
            REQUESTS.labels(route, "error").inc()
            raise ApiError(503, "the event store is not available") from None
        parameters.pop("_query", None)
        await audit(principal, route, query, parameters, rows, "ok")
        REQUESTS.labels(route, "ok").inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)
        return JSONResponse(body)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid request"}, status_code=400)

    @app.get("/search")
    async def search_route(request: Request) -> JSONResponse:
        async def run(principal: Principal, audited: dict[str, Any]) -> tuple[Any, int, str]:
            params = request.query_params
            audited["_query"] = (params.get("q") or "")[:MAX_VALUE_LENGTH]
            audited["raw"] = str(params)[:2048]
            query = parse_search(params, clock())
            audited.clear()
            audited.update(
                {
                    "from": rfc3339(query.start),
                    "to": rfc3339(query.end),
                    "filters": {name: list(values) for name, values in query.filters.items()},
                    "limit": query.limit,
                }
            )
            result = await search(ch, cold, query)
            audited["total"] = result.total
            return result.to_json(), len(result.events), query.q

        return await handle(request, "search", "analyst", run)

    @app.get("/alerts")
    async def alerts_route(request: Request) -> JSONResponse:
        async def run(principal: Principal, audited: dict[str, Any]) -> tuple[Any, int, str]:
            params = request.query_params
            audited["raw"] = str(params)[:2048]
            _only(params, frozenset({"status", "limit"}))
            status_text = _single(params, "status")
            if status_text is not None and status_text not in get_args(AlertStatus):
                raise ApiError(400, "status must be open or acknowledged")
            status: AlertStatus | None = None
            if status_text == "open":
                status = "open"
            elif status_text == "acknowledged":
                status = "acknowledged"
            limit = _limit(params)
            audited.clear()
            audited.update({"status": status, "limit": limit})
            alerts = await list_alerts(ch, status=status, limit=limit)
            return [alert.to_json() for alert in alerts], len(alerts), ""

        return await handle(request, "alerts", "analyst", run)

    @app.post("/alerts/{fingerprint}/ack")
    async def ack_route(fingerprint: str, request: Request) -> JSONResponse:
        async def run(principal: Principal, audited: dict[str, Any]) -> tuple[Any, int, str]:
            audited["fingerprint"] = fingerprint[:MAX_VALUE_LENGTH]
            if not fingerprint or len(fingerprint) > MAX_VALUE_LENGTH:
                raise ApiError(400, f"a fingerprint has 1 to {MAX_VALUE_LENGTH} characters")
            alert = await acknowledge_alert(ch, fingerprint, principal.name, at=clock())
            if alert is None:
                raise ApiError(404, "no alert with this fingerprint")
            return alert.to_json(), 1, ""

        return await handle(request, "alerts.ack", "analyst", run)

    @app.get("/audit")
    async def audit_route(request: Request) -> JSONResponse:
        async def run(principal: Principal, audited: dict[str, Any]) -> tuple[Any, int, str]:
            params = request.query_params
            audited["raw"] = str(params)[:2048]
            _only(params, frozenset({"from", "to", "principal", "action", "limit"}))
            start, end = _time_range(params, clock())
            if _single(params, "from") is None:
                start = datetime(1970, 1, 1, tzinfo=UTC)  # the audit log is read whole unless narrowed
            who, action, limit = _single(params, "principal"), _single(params, "action"), _limit(params)
            audited.clear()
            audited.update(
                {
                    "from": rfc3339(start),
                    "to": rfc3339(end),
                    "principal": who,
                    "action": action,
                    "limit": limit,
                }
            )
            entries = await list_audit(ch, since=start, until=end, principal=who, action=action, limit=limit)
            return [entry.to_json() for entry in entries], len(entries), ""

        return await handle(request, "audit", "auditor", run)

    @app.get("/pseudonym")
    async def pseudonym_route(request: Request) -> JSONResponse:
        async def run(principal: Principal, audited: dict[str, Any]) -> tuple[Any, int, str]:
            params = request.query_params
            _only(params, frozenset({"kind", "value"}))
            kind, value = _single(params, "kind"), _single(params, "value")
            audited["kind"] = kind
            if kind not in get_args(PseudonymKind):
                raise ApiError(400, "kind must be user, email or ip")
            if not value:
                raise ApiError(400, "value is required")
            if pseudonymizer is None:
                raise ApiError(503, "pseudonym look-up is not configured")
            pseudonym = pseudonymizer.pseudonym(_kind(kind), value)
            audited["pseudonym"] = pseudonym  # never the clear value
            stored = kind != "ip" or pseudonymizer.pseudonymize_ips
            return {"kind": kind, "pseudonym": pseudonym, "stored_pseudonymized": stored}, 0, ""

        return await handle(request, "pseudonym", "analyst", run)

    return app


def _kind(kind: str | None) -> PseudonymKind:
    if kind == "email":
        return "email"
    if kind == "ip":
        return "ip"
    return "user"


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    """The investigation API as a service of the stack (`python -m katas.siem.services.query_api`)."""
    settings = QueryApiSettings()
    siem = SiemSettings()
    ch = ClickHouse(infra_settings().require("clickhouse_url"))
    await ensure_schema(ch, hot_ttl=timedelta(seconds=siem.hot_ttl_s))
    cold = ColdStore.from_settings(siem.cold_bucket)  # the store's bucket: one setting, SIEM_COLD_BUCKET
    return create_app(ch, principals=settings.principals(), cold=cold, pseudonymizer=siem.pseudonymizer()), []


if __name__ == "__main__":
    run_service(build)
