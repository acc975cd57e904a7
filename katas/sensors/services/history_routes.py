"""The historical query routes of the API service (mounted by `services/api.py`):

- `GET /buildings/{building}/history?type=&level=building|floor|zone&from=&to=[&step=60|3600]`: the
  building's rollups as series of points (`katas.sensors.history.building_history`);
- `GET /buildings/{building}/readings?from=&to=[&sensor=]`: its raw readings from the hot and cold tiers
  (`katas.sensors.history.building_readings`).

Both take `Authorization: Bearer <token>` (401 without a valid one). A building the caller's tenant does
not own answers 404, exactly like one that does not exist (the operator sees every building); this is
checked before the parameters, so a bad query about another tenant's building reveals nothing either.
Bad parameters answer 400 with the reason. The query then runs on the building owner's store and
database only (`TenantWarehouses.of(owner)`), with the owner as the tenant filter: isolation is the
store's, not this code's. A store that does not answer is a 503.

With the `no-pre-aggregation` mistake switched on, the history route (and so the dashboard's charts,
which call it) aggregates the building's raw readings at query time instead of reading the rollups; its
answer's `source` and `rows_read` say which, and how many stored rows that took.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import Histogram

from katas.infra.clickhouse import ClickHouseError
from katas.infra.service import log, mistakes
from katas.sensors.history import (
    BadQueryError,
    building_history,
    building_readings,
    parse_history,
    parse_readings,
)
from katas.sensors.raw import ColdTier
from katas.sensors.services.auth import bearer_tenant
from katas.sensors.stores import TenantWarehouses
from katas.sensors.tenancy import Registry, Tokens

HISTORY_LATENCY = Histogram(
    "api_history_seconds",
    "time to answer GET /buildings/{building}/history",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)
READINGS_LATENCY = Histogram(
    "api_readings_seconds",
    "time to answer GET /buildings/{building}/readings",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)


def history_router(
    registry: Registry,
    tokens: Tokens,
    warehouses: TenantWarehouses,
    cold: ColdTier | None = None,
    *,
    at_query_time: bool | None = None,
) -> APIRouter:
    """The two routes over `warehouses`; `cold` defaults to the cold tier of the settings (the object
    store's endpoint and keys, SENSORS_COLD_*), looked up on the first readings query. `at_query_time`: history from the raw
    readings (the `no-pre-aggregation` mistake); None: as the stack's switches say."""
    router = APIRouter()
    tiers: list[ColdTier] = [cold] if cold is not None else []
    if at_query_time is None:
        at_query_time = "no-pre-aggregation" in mistakes()
    if at_query_time:
        log("mistake", name="no-pre-aggregation", history="raw readings aggregated at query time")

    def owner_of(building: str, authorization: str | None) -> str:
        tenant = bearer_tenant(tokens, authorization)
        owner = registry.owner(building)
        if owner is None or not registry.visible_to(tenant, building):
            raise HTTPException(404, f"no building {building!r}")
        return owner

    def failed(what: str, building: str, exc: Exception) -> HTTPException:
        log("query_failed", query=what, building=building, error=str(exc)[:300])
        return HTTPException(503, f"the store of building {building!r} did not answer; try again")

    @router.get("/buildings/{building}/history")
    async def history(
        building: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        with HISTORY_LATENCY.time():
            owner = owner_of(building, authorization)
            try:
                params = parse_history(request.query_params)
                answer = await building_history(
                    warehouses.of(owner),
                    warehouses.database(owner),
                    owner,
                    building,
                    params,
                    at_query_time=at_query_time,
                )
            except BadQueryError as exc:
                raise HTTPException(400, str(exc)) from None
            except (ClickHouseError, httpx.HTTPError) as exc:
                raise failed("history", building, exc) from None
            return JSONResponse(answer)

    @router.get("/buildings/{building}/readings")
    async def readings(
        building: str, request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        with READINGS_LATENCY.time():
            owner = owner_of(building, authorization)
            try:
                params = parse_readings(request.query_params)
            except BadQueryError as exc:
                raise HTTPException(400, str(exc)) from None
            if not tiers:
                tiers.append(ColdTier.from_settings())
            try:
                answer = await building_readings(
                    warehouses.of(owner), warehouses.database(owner), tiers[0], owner, building, params
                )
            except (ClickHouseError, httpx.HTTPError) as exc:
                raise failed("readings", building, exc) from None
            return JSONResponse(answer)

    return router
