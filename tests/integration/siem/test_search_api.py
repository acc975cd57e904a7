"""The SIEM investigation API on real servers: search across hot and cold, auth, audit, bad input.

The app is built with `create_app` and driven in-process through httpx's ASGI transport; the hot store
(chDB store owner) and the cold tier (s3rver) are real servers started by the lab's launchers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from katas.infra.clickhouse import ClickHouse
from katas.infra.servers import ChdbStore, S3rverServer
from katas.siem.cold import ColdStore
from katas.siem.lifecycle import LifecyclePolicy, run_lifecycle
from katas.siem.pseudonymize import Pseudonymizer
from katas.siem.search import MAX_QUERY_LENGTH
from katas.siem.services.query_api import Principal, create_app
from katas.siem.storage import (
    AUDIT_TABLE,
    FILTER_FIELDS,
    Alert,
    ensure_schema,
    insert_events,
    list_audit,
    rfc3339,
    upsert_alert,
)

pytestmark = pytest.mark.integration

BUCKET = "siem-cold"
ANALYST, AUDITOR = "analyst-token-0123456789", "auditor-token-0123456789"
AS_ANALYST = {"Authorization": f"Bearer {ANALYST}"}
AS_AUDITOR = {"Authorization": f"Bearer {AUDITOR}"}
PSEUDONYMIZER = Pseudonymizer(b"0123456789abcdef-test-key", pseudonymize_ips=True)
ALICE = PSEUDONYMIZER.pseudonym("user", "alice")
NOW = datetime.now(UTC).replace(microsecond=0)


def make_event(n: int, at: datetime, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event.id": f"evt-{n:06d}",
        "@timestamp": rfc3339(at),
        "event.kind": "event",
        "event.category": ["network"],
        "event.action": "deny",
        "event.outcome": "failure",
        "event.dataset": "firewall",
        "destination.port": 22 if n % 2 else 443,
        "labels.source": "fw-1" if n % 3 else "vpn-eu",
        "message": f"deny tcp to port {22 if n % 2 else 443} (event {n})",
    }
    event.update(fields)
    return event


def corpus() -> list[dict[str, Any]]:
    """240 events, one every 20 minutes back from a minute ago (~3.3 days); a few concern alice."""
    events = []
    for n in range(240):
        at = NOW - timedelta(minutes=20 * n + 1)
        extra: dict[str, Any] = {}
        if n % 40 == 0:
            extra = {
                "event.category": ["authentication"],
                "user.name": ALICE,
                "message": f"Failed password for {ALICE} from psn:00000000000000ff port 22 ssh2",
            }
        events.append(make_event(n, at, **extra))
    return events


@dataclass
class Lab:
    ch: ClickHouse
    cold: ColdStore
    client: httpx.AsyncClient
    events: list[dict[str, Any]]
    app: FastAPI

    async def search(self, **params: Any) -> httpx.Response:
        return await self.client.get("/search", params=params, headers=AS_ANALYST)


@asynccontextmanager
async def open_lab(launch: Callable[[Any], Any], run_dir: Path, *, seeded: bool) -> AsyncIterator[Lab]:
    chdb = launch(ChdbStore("chdb", run_dir))
    s3 = launch(S3rverServer("s3", run_dir, buckets=[BUCKET]))
    cold = ColdStore(s3.endpoint, BUCKET)
    events = corpus() if seeded else []
    async with ClickHouse(chdb.endpoint) as ch:
        await ensure_schema(ch)
        if seeded:
            await insert_events(ch, events)
            # Everything older than 2 h moves to cold; then a redelivery of some moved events lands in hot.
            policy = LifecyclePolicy(timedelta(hours=2), insert_grace=timedelta(0))
            assert (await run_lifecycle(ch, cold, policy)).rows_moved == 240 - 6
            await insert_events(ch, events[100:110])
        app = create_app(
            ch,
            principals={ANALYST: Principal("ana", "analyst"), AUDITOR: Principal("otto", "auditor")},
            cold=cold,
            pseudonymizer=PSEUDONYMIZER,
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://siem") as client:
            yield Lab(ch, cold, client, events, app)


@pytest.fixture
async def lab(launch: Callable[[Any], Any], run_dir: Path) -> AsyncIterator[Lab]:
    """Servers, 240 events across both tiers (with redelivered copies), and the app."""
    async with open_lab(launch, run_dir, seeded=True) as opened:
        yield opened


@pytest.fixture
async def empty_lab(launch: Callable[[Any], Any], run_dir: Path) -> AsyncIterator[Lab]:
    """Servers and the app, nothing stored: for what must be refused before any data is read."""
    async with open_lab(launch, run_dir, seeded=False) as opened:
        yield opened


def ids(reply: httpx.Response) -> list[str]:
    assert reply.status_code == 200, reply.text
    found = [event["event.id"] for event in reply.json()["events"]]
    assert len(found) == len(set(found))
    return found


def expected(
    events: list[dict[str, Any]], start: datetime, end: datetime, keep: Callable[[dict[str, Any]], bool]
) -> list[str]:
    chosen = [e for e in events if start <= datetime.fromisoformat(e["@timestamp"]) < end and keep(e)]
    chosen.sort(key=lambda e: (e["@timestamp"], e["event.id"]), reverse=True)
    return [e["event.id"] for e in chosen]


# ---------------------------------------------------------------------------------------------- search
async def test_search_spans_both_tiers_with_time_range_filters_and_free_text(lab: Lab) -> None:
    everything = await lab.search(
        **{"from": rfc3339(NOW - timedelta(days=5)), "to": rfc3339(NOW), "limit": 1000}
    )
    assert everything.json()["total"] == 240
    newest_first = expected(lab.events, NOW - timedelta(days=5), NOW, lambda e: True)
    assert ids(everything) == newest_first  # redelivered events in both tiers appear once

    page = await lab.search(**{"from": rfc3339(NOW - timedelta(days=5)), "to": rfc3339(NOW), "limit": 7})
    assert page.json()["total"] == 240
    assert ids(page) == newest_first[:7]

    # A window inside the cold tier only, across a day boundary or two.
    start, end = NOW - timedelta(days=3), NOW - timedelta(days=1)
    window = await lab.search(**{"from": rfc3339(start), "to": rfc3339(end), "limit": 1000})
    assert ids(window) == expected(lab.events, start, end, lambda e: True)
    assert window.json()["total"] == len(ids(window))

    # Free text, case-insensitive, in the message and in any field value; never in key names.
    start = NOW - timedelta(days=5)
    alice = await lab.search(**{"q": ALICE.upper(), "from": rfc3339(start), "to": rfc3339(NOW)})
    assert ids(alice) == expected(lab.events, start, NOW, lambda e: e.get("user.name") == ALICE)
    assert len(ids(alice)) == 6
    assert (await lab.search(q="labels.source", **{"from": rfc3339(start)})).json()["total"] == 0
    vpn = await lab.search(q="VPN-EU", **{"from": rfc3339(start), "to": rfc3339(NOW), "limit": 1000})
    assert ids(vpn) == expected(lab.events, start, NOW, lambda e: e["labels.source"] == "vpn-eu")

    # Field filters: AND across fields, OR across values of one field, arrays by membership.
    filtered = await lab.client.get(
        "/search",
        params=[
            ("from", rfc3339(start)),
            ("to", rfc3339(NOW)),
            ("event.category", "authentication"),
            ("destination.port", "443"),
            ("labels.source", "vpn-eu"),
            ("labels.source", "fw-1"),
            ("limit", "1000"),
        ],
        headers=AS_ANALYST,
    )
    assert ids(filtered) == expected(
        lab.events,
        start,
        NOW,
        lambda e: "authentication" in e["event.category"] and e["destination.port"] == 443,
    )
    assert len(ids(filtered)) == 6

    # The stored event comes back as it was normalized.
    (first,) = (await lab.search(q="(event 1)", **{"from": rfc3339(start)})).json()["events"]
    assert first == lab.events[1]

    # Defaults: the last 24 hours up to now.
    default = await lab.search(limit=1000)
    assert ids(default) == expected(lab.events, NOW - timedelta(hours=24), NOW, lambda e: True)


async def test_alerts_list_and_ack(lab: Lab) -> None:
    t0 = NOW - timedelta(minutes=10)
    for n, severity in enumerate(["high", "low"]):
        await upsert_alert(
            lab.ch,
            Alert(f"fp-{n}", "brute-force", "Brute force", severity, t0, t0 + timedelta(minutes=n), 3 + n),
        )
    listed = await lab.client.get("/alerts", headers=AS_ANALYST)
    assert listed.status_code == 200
    assert [(a["rule"], a["severity"], a["count"]) for a in listed.json()] == [
        ("brute-force", "low", 4),
        ("brute-force", "high", 3),
    ]
    assert set(listed.json()[0]) >= {"rule", "severity", "first_seen", "last_seen", "count", "fingerprint"}
    acked = await lab.client.post("/alerts/fp-0/ack", headers=AS_ANALYST)
    assert acked.status_code == 200
    assert acked.json()["acknowledged_by"] == "ana"
    assert (await lab.client.post("/alerts/nope/ack", headers=AS_ANALYST)).status_code == 404
    open_only = await lab.client.get("/alerts", params={"status": "open"}, headers=AS_ANALYST)
    assert [a["fingerprint"] for a in open_only.json()] == ["fp-1"]


async def test_pseudonym_lookup_is_audited_without_the_clear_value(lab: Lab) -> None:
    reply = await lab.client.get("/pseudonym", params={"kind": "user", "value": "alice"}, headers=AS_ANALYST)
    assert reply.json() == {"kind": "user", "pseudonym": ALICE, "stored_pseudonymized": True}
    assert (
        await lab.search(q=reply.json()["pseudonym"], **{"from": rfc3339(NOW - timedelta(days=5))})
    ).json()["total"] == 6
    bad = await lab.client.get("/pseudonym", params={"kind": "passport", "value": "x"}, headers=AS_ANALYST)
    assert bad.status_code == 400
    (entry,) = [e for e in await list_audit(lab.ch, action="pseudonym") if e.outcome == "ok"]
    assert entry.parameters == {"kind": "user", "pseudonym": ALICE}
    assert "alice" not in entry.query + str(entry.parameters)


# ------------------------------------------------------------------------------------------- audit
async def test_every_data_access_is_audited(lab: Lab) -> None:
    await lab.search(q="port 22", **{"from": rfc3339(NOW - timedelta(hours=3)), "limit": 5})
    await lab.search(**{"from": "yesterday"})
    await lab.client.get("/alerts", headers=AS_ANALYST)
    await lab.client.get("/audit", headers=AS_ANALYST)  # forbidden for analysts
    await lab.client.get("/search", headers=AS_AUDITOR)  # and searching for auditors
    await lab.client.get("/search", headers={"Authorization": "Bearer wrong"})  # not a principal: not audited

    reply = await lab.client.get("/audit", headers=AS_AUDITOR)
    assert reply.status_code == 200
    rows = reply.json()
    seen = [(r["principal"], r["action"], r["outcome"], r["rows_returned"]) for r in reversed(rows)]
    assert seen == [
        ("ana", "search", "ok", 5),
        ("ana", "search", "rejected", 0),
        ("ana", "alerts", "ok", 0),
        ("ana", "audit", "forbidden", 0),
        ("otto", "search", "forbidden", 0),
    ]
    search_row = rows[-1]
    assert search_row["query"] == "port 22"
    assert search_row["parameters"]["limit"] == 5
    assert search_row["parameters"]["total"] >= 5
    assert "yesterday" in rows[-2]["parameters"]["raw"]
    assert all(r["at"].endswith("Z") for r in rows)

    # Reading the audit log is itself an access, recorded with what it returned.
    again = (await lab.client.get("/audit", params={"principal": "otto"}, headers=AS_AUDITOR)).json()
    assert [(r["action"], r["rows_returned"]) for r in again][:2] == [("audit", 5), ("search", 0)]


async def test_no_route_alters_the_audit_log(empty_lab: Lab) -> None:
    writes = {
        (route.path, method)
        for route in empty_lab.app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
        if method not in ("GET", "HEAD")
    }
    assert writes == {("/alerts/{fingerprint}/ack", "POST")}
    before = await empty_lab.ch.scalar(f"SELECT count() FROM {AUDIT_TABLE}")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        reply = await empty_lab.client.request(method, "/audit", headers=AS_AUDITOR)
        assert reply.status_code == 405
    assert await empty_lab.ch.scalar(f"SELECT count() FROM {AUDIT_TABLE}") == before


# ---------------------------------------------------------------------------------------- auth, 400s
BAD_TOKENS = [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {ANALYST}"},
    {"Authorization": f"Bearer {ANALYST}x"},
    {"Authorization": ANALYST},
]
ROUTES = [("GET", "/search"), ("GET", "/alerts"), ("POST", "/alerts/fp/ack"), ("GET", "/audit"),
          ("GET", "/pseudonym?kind=user&value=x")]  # fmt: skip


async def test_requests_without_a_valid_token_get_401_and_write_nothing(empty_lab: Lab) -> None:
    for headers in BAD_TOKENS:
        for method, path in ROUTES:
            reply = await empty_lab.client.request(method, path, headers=headers)
            assert reply.status_code == 401, (headers, method, path)
            assert reply.headers["www-authenticate"] == "Bearer"
            assert "error" in reply.json()
    assert await empty_lab.ch.scalar(f"SELECT count() FROM {AUDIT_TABLE}") == 0
    assert (await empty_lab.client.get("/healthz")).status_code == 200


BAD_SEARCHES: list[tuple[Any, str]] = [
    ({"from": "2024-13-01T00:00:00Z"}, "from is not a valid date-time"),
    ({"from": "2024-01-01"}, "RFC 3339"),
    ({"to": "2024-01-01T00:00:00"}, "RFC 3339"),
    ({"to": "2024-01-01T00:00:00 01:00"}, "%2B"),
    ({"to": "2024-01-01T00:00:60Z"}, "not a valid date-time"),
    ({"from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"}, "from is after to"),
    ({"from": "2024-01-01T01:00:00-02:00", "to": "2024-01-01T02:00:00+00:00"}, "from is after to"),
    ({"user.nam": "x"}, "unknown filter field 'user.nam'"),
    ({"message": "x"}, "unknown filter field 'message'"),
    ({"q": "x" * (MAX_QUERY_LENGTH + 1)}, "longer than"),
    ({"limit": "0"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"destination.port": "ssh"}, "whole numbers"),
    ([("q", "a"), ("q", "b")], "more than once"),
]


async def test_bad_searches_get_400_with_a_clear_message(empty_lab: Lab) -> None:
    for params, message in BAD_SEARCHES:
        reply = await empty_lab.client.get("/search", params=params, headers=AS_ANALYST)
        assert reply.status_code == 400, params
        assert message in reply.json()["error"], (params, reply.json())
    assert (
        await empty_lab.client.get("/alerts", params={"status": "closed"}, headers=AS_ANALYST)
    ).status_code == 400
    assert (
        await empty_lab.client.get("/audit", params={"bogus": "1"}, headers=AS_AUDITOR)
    ).status_code == 400
    # Refused requests of a known principal are audited too, with what was asked.
    audited = await list_audit(empty_lab.ch, limit=1000)
    assert [e.outcome for e in audited] == ["rejected"] * (len(BAD_SEARCHES) + 2)
    assert all(e.rows_returned == 0 and e.parameters.get("raw") is not None for e in audited)


def _times() -> st.SearchStrategy[str]:
    instants = st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ).map(lambda t: t.isoformat().replace("+00:00", "Z"))
    offsets = st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)\Z")
    return instants | offsets | st.text(max_size=40)


_PARAM_NAMES = st.sampled_from(["q", "from", "to", "limit", *sorted(FILTER_FIELDS)]) | st.text(max_size=20)
_PARAM_VALUES = _times() | st.text(max_size=300) | st.integers(-(2**40), 2**40).map(str)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.lists(st.tuples(_PARAM_NAMES, _PARAM_VALUES), max_size=6))
async def test_arbitrary_search_parameters_never_cause_a_server_error(
    lab: Lab, params: list[tuple[str, str]]
) -> None:
    reply = await lab.client.get("/search", params=tuple(params), headers=AS_ANALYST)
    assert reply.status_code in (200, 400), reply.text
    event(f"HTTP {reply.status_code}")
    body = reply.json()
    if reply.status_code == 400:
        assert body["error"]
    else:
        assert set(body) == {"total", "events"}
        assert len(body["events"]) <= body["total"]
