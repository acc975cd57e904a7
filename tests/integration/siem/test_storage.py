"""SIEM storage on real servers: the hot store (chDB store owner), the cold tier (s3rver) and the lifecycle
between them. Every test starts its own servers with the lab's launchers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from katas.infra.clickhouse import ClickHouse
from katas.infra.servers import ChdbStore, S3rverServer
from katas.siem import cold as cold_tier
from katas.siem.cold import ColdStore, CompactionPolicy
from katas.siem.lifecycle import (
    JOURNAL_KEY,
    LifecycleError,
    LifecyclePolicy,
    LifecycleReport,
    delete_moved,
    export_batch,
    plan_move,
    read_journal,
    run_forever,
    run_lifecycle,
)
from katas.siem.search import SearchQuery, search
from katas.siem.storage import (
    EVENTS_TABLE,
    Alert,
    AuditEntry,
    acknowledge_alert,
    append_audit,
    count_events,
    ensure_schema,
    escalate_alert,
    insert_events,
    list_alerts,
    list_audit,
    rfc3339,
    sql_string,
    upsert_alert,
)

pytestmark = pytest.mark.integration

BUCKET = "siem-cold"
YOUNG = 2
"""seed(): events 0 and 1 (1 and 16 minutes old) stay hot under POLICY; the other 298 are due for cold."""
POLICY = LifecyclePolicy(hot_retention=timedelta(minutes=30), insert_grace=timedelta(0))


def make_event(n: int, at: datetime, *, source: str = "fw-1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event.id": f"evt-{n:06d}",
        "@timestamp": rfc3339(at),
        "event.ingested": rfc3339(datetime.now(UTC)),
        "event.kind": "event",
        "event.category": ["network"],
        "event.type": ["denied"],
        "event.action": "deny",
        "event.outcome": "failure",
        "event.dataset": "firewall",
        "destination.port": 22,
        "source.ip": f"psn:{n:016x}",
        "labels.source": source,
        "message": f"deny tcp from psn:{n:016x} to port 22 (event {n})",
    }
    event.update(fields)
    return event


@pytest.fixture
def servers(launch: Callable[[Any], Any], run_dir: Path) -> tuple[ChdbStore, S3rverServer]:
    return launch(ChdbStore("chdb", run_dir)), launch(S3rverServer("s3", run_dir, buckets=[BUCKET]))


@pytest.fixture
async def ch(servers: tuple[ChdbStore, S3rverServer]) -> AsyncIterator[ClickHouse]:
    async with ClickHouse(servers[0].endpoint) as client:
        await ensure_schema(client)
        yield client


@pytest.fixture
def cold(servers: tuple[ChdbStore, S3rverServer]) -> ColdStore:
    return ColdStore(servers[1].endpoint, BUCKET)


def everything() -> SearchQuery:
    return SearchQuery(
        start=datetime(2000, 1, 1, tzinfo=UTC), end=datetime(2100, 1, 1, tzinfo=UTC), limit=1000
    )


async def searched_ids(ch: ClickHouse, cold: ColdStore, query: SearchQuery | None = None) -> list[str]:
    result = await search(ch, cold, query or everything())
    ids = [event["event.id"] for event in result.events]
    assert len(ids) == len(set(ids)), "a search returned an event twice"
    assert result.total == len(ids) or len(ids) == (query or everything()).limit
    return ids


# ------------------------------------------------------------------------------------------- schema
async def test_schema_is_idempotent_and_the_hot_ttl_follows_the_setting(ch: ClickHouse) -> None:
    await ensure_schema(ch)
    engine = await ch.scalar(f"SELECT engine_full FROM system.tables WHERE name = '{EVENTS_TABLE}'")
    assert "ReplacingMergeTree" in engine
    assert "PARTITION BY toDate(timestamp)" in engine
    assert f"toIntervalSecond({90 * 86400})" in engine
    await ensure_schema(ch, hot_ttl=timedelta(hours=2))
    engine = await ch.scalar(f"SELECT engine_full FROM system.tables WHERE name = '{EVENTS_TABLE}'")
    assert "toIntervalSecond(7200)" in engine
    with pytest.raises(ValueError, match="hot TTL"):
        POLICY.check_hot_ttl(timedelta(minutes=30), interval=timedelta(minutes=1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(max_size=80) | st.sampled_from(["'", "\\", "\\'", "'; DROP TABLE events; --", "\0", "\\0"])
)
async def test_sql_string_round_trips_any_text(ch: ClickHouse, text: str) -> None:
    rows = await ch.rows(f"SELECT {sql_string(text)} AS s, length(s) AS n")
    assert rows[0]["s"] == text
    assert int(rows[0]["n"]) == len(text.encode())


# ----------------------------------------------------------------------------------------- duplicates
async def test_duplicates_by_event_id_never_show(ch: ClickHouse, cold: ColdStore) -> None:
    now = datetime.now(UTC)
    events = [make_event(n, now - timedelta(seconds=n)) for n in range(200)]
    assert await insert_events(ch, events + events[:50]) == 200  # redelivered inside one batch
    for _ in range(3):  # and redelivered in later batches, with a new ingest time each
        await insert_events(ch, [{**e, "event.ingested": rfc3339(datetime.now(UTC))} for e in events[:100]])
    assert await count_events(ch, distinct=False) > 200  # merges have not removed them yet...
    ids = await searched_ids(ch, cold)
    assert sorted(ids) == sorted(e["event.id"] for e in events)  # ...but searches never show them
    newest_first = await search(ch, cold, SearchQuery(start=now - timedelta(hours=1), end=now, limit=10))
    assert newest_first.total == 199  # [from, to): the event at `now` itself is excluded
    assert [e["event.id"] for e in newest_first.events] == [f"evt-{n:06d}" for n in range(1, 11)]
    await ch.execute(f"OPTIMIZE TABLE {EVENTS_TABLE} FINAL")
    assert await count_events(ch, distinct=False) == 200


# ------------------------------------------------------------------------------------------ lifecycle
def seed(now: datetime) -> list[dict[str, Any]]:
    """Events from 3 days ago until a minute ago, two sources; all but YOUNG of them are older than 30 min."""
    events = []
    for n in range(300):
        at = now - timedelta(minutes=n * 15 + 1)
        events.append(make_event(n, at, source="fw-1" if n % 3 else "vpn/eu=1"))
    return events


async def test_hot_to_cold_move_keeps_every_event_searchable_exactly_once(
    ch: ClickHouse, cold: ColdStore
) -> None:
    now = datetime.now(UTC)
    events = seed(now)
    await insert_events(ch, events)
    await insert_events(ch, events[100:150])  # duplicates, some of which move to cold
    report = await run_lifecycle(ch, cold, POLICY)
    assert report.rows_moved >= 300 - YOUNG
    assert report.objects_written >= 6
    assert await count_events(ch) == YOUNG
    assert await read_journal(cold) is None
    keys = await cold_tier.list_keys(cold, "events/")
    assert keys
    assert all(cold_tier.parse_key(key) is not None for key in keys)
    assert any("/source=vpn%2Feu%3D1/" in key for key in keys)
    moved = await cold_tier.read_objects(cold, keys)
    assert moved.num_rows == 300 - YOUNG
    assert len(set(moved.column("event_id").to_pylist())) == 300 - YOUNG
    assert sorted(await searched_ids(ch, cold)) == sorted(e["event.id"] for e in events)

    # Nothing due: a run is a no-op; then everything moves once it is old enough.
    assert (await run_lifecycle(ch, cold, POLICY)).batch_id is None
    later = await run_lifecycle(ch, cold, POLICY, now=now + timedelta(hours=1))
    assert later.rows_moved == YOUNG
    assert await count_events(ch) == 0
    # Emptied day partitions are rewritten, not left holding masked rows.
    stored = await ch.scalar(f"SELECT sum(rows) FROM system.parts WHERE table = '{EVENTS_TABLE}' AND active")
    assert int(stored) == 0
    assert sorted(await searched_ids(ch, cold)) == sorted(e["event.id"] for e in events)


async def test_an_interrupted_lifecycle_loses_and_duplicates_nothing(ch: ClickHouse, cold: ColdStore) -> None:
    now = datetime.now(UTC)
    events = seed(now)
    await insert_events(ch, events)
    expected = sorted(e["event.id"] for e in events)

    # Crash after planning: the journal names the batch, nothing is written yet.
    planned = await plan_move(ch, cold, POLICY)
    assert planned is not None
    assert planned.state == "planned"
    assert (await plan_move(ch, cold, POLICY)) == planned  # a second runner resumes it, no new batch
    assert sorted(await searched_ids(ch, cold)) == expected

    # Crash after writing (a rerun of the export overwrites the same names) but before deleting.
    await export_batch(ch, cold, planned)
    await export_batch(ch, cold, await plan_move(ch, cold, POLICY) or planned)
    keys_after_export = sorted(await cold_tier.list_keys(cold, "events/"))
    assert await count_events(ch) == 300  # every moved event is now in both tiers...
    assert sorted(await searched_ids(ch, cold)) == expected  # ...and still returned once

    # A late event with an old timestamp arrives after the fence: it must stay hot, not be deleted unseen.
    late = make_event(999, now - timedelta(days=2), message="late arrival")
    await insert_events(ch, [late])

    # The next run resumes the exported batch: verify, delete, close; it does not export again.
    report = await run_lifecycle(ch, cold, POLICY)
    assert report.resumed
    assert report.batch_id == planned.batch_id
    assert report.objects_written >= 6
    assert sorted(await cold_tier.list_keys(cold, "events/")) == keys_after_export
    assert await count_events(ch) == YOUNG + 1  # the young events and the late one
    assert sorted(await searched_ids(ch, cold)) == sorted([*expected, late["event.id"]])
    assert (await run_lifecycle(ch, cold, POLICY)).rows_moved == 1
    assert sorted(await searched_ids(ch, cold)) == sorted([*expected, late["event.id"]])


async def test_a_crash_during_the_delete_is_finished_by_the_next_run(ch: ClickHouse, cold: ColdStore) -> None:
    now = datetime.now(UTC)
    events = seed(now)
    await insert_events(ch, events)
    batch = await export_batch(ch, cold, await plan_move(ch, cold, POLICY) or pytest.fail("nothing planned"))
    # Half the delete happened (one source's rows are gone) when the runner died.
    await ch.execute(f"DELETE FROM {EVENTS_TABLE} WHERE {batch.predicate()} AND labels_source = 'fw-1'")
    report = await run_lifecycle(ch, cold, POLICY)
    assert report.resumed
    assert report.batch_id == batch.batch_id
    assert await count_events(ch) == YOUNG
    assert sorted(await searched_ids(ch, cold)) == sorted(e["event.id"] for e in events)


async def test_a_missing_cold_object_stops_the_delete(ch: ClickHouse, cold: ColdStore) -> None:
    now = datetime.now(UTC)
    await insert_events(ch, seed(now))
    batch = await export_batch(ch, cold, await plan_move(ch, cold, POLICY) or pytest.fail("nothing planned"))
    await cold_tier.delete_keys(cold, [batch.objects[0].key])
    with pytest.raises(LifecycleError, match="missing"):
        await delete_moved(ch, cold, batch)
    assert await count_events(ch) == 300
    assert (await read_journal(cold)) is not None
    journal = await cold_tier.list_keys(cold, JOURNAL_KEY)
    assert journal == [JOURNAL_KEY]


async def test_the_lifecycle_worker_rides_out_an_object_store_outage(
    servers: tuple[ChdbStore, S3rverServer], ch: ClickHouse, cold: ColdStore
) -> None:
    _, s3 = servers
    events = seed(datetime.now(UTC))
    await insert_events(ch, events)
    s3.kill()
    failed, moved, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    reports: list[LifecycleReport] = []

    def on_report(report: LifecycleReport) -> None:
        reports.append(report)
        if report.rows_moved:
            moved.set()

    worker = asyncio.create_task(
        run_forever(ch, cold, POLICY, timedelta(seconds=0.2), stop, on_report, lambda _: failed.set())
    )
    await asyncio.wait_for(failed.wait(), 60)
    assert not worker.done(), "the worker ended with the object store's outage"
    assert await count_events(ch) == 300, "nothing may leave the hot store while the cold one is down"

    await asyncio.to_thread(s3.start)
    await asyncio.wait_for(moved.wait(), 60)
    stop.set()
    await worker
    assert sum(report.rows_moved for report in reports) == 300 - YOUNG
    assert sorted(await searched_ids(ch, cold)) == sorted(e["event.id"] for e in events)


async def test_cold_retention_expires_whole_old_days(ch: ClickHouse, cold: ColdStore) -> None:
    now = datetime.now(UTC)
    old = [make_event(n, now - timedelta(days=40 + n)) for n in range(3)]
    recent = [make_event(10 + n, now - timedelta(days=2 + n)) for n in range(3)]
    written = await cold_tier.write_events(cold, old + recent, "seed")
    assert len(written) == 6
    assert sum(o.rows for o in written) == 6
    assert sorted(await searched_ids(ch, cold)) == sorted(e["event.id"] for e in old + recent)
    policy = LifecyclePolicy(hot_retention=timedelta(minutes=30), cold_retention=timedelta(days=30))
    report = await run_lifecycle(ch, cold, policy)
    assert report.cold_objects_expired == 3
    assert sorted(await searched_ids(ch, cold)) == sorted(e["event.id"] for e in recent)
    assert cold_tier.parse_key("events/date=2024-01-02/source=a%2Fb/part-x.parquet") == (
        date(2024, 1, 2),
        "a/b",
    )


async def test_compaction_merges_small_objects_without_losing_or_duplicating(
    ch: ClickHouse, cold: ColdStore
) -> None:
    now = datetime.now(UTC)
    day = (now - timedelta(days=3)).replace(hour=12)
    batches = [
        [make_event(10 * b + n, day + timedelta(minutes=10 * b + n)) for n in range(10)] for b in range(9)
    ]
    for b, events in enumerate(batches):
        await cold_tier.write_events(cold, events, f"run-{b}")
    await cold_tier.write_events(cold, batches[0][:5], "redelivered")  # a copy of five events
    expected = sorted(e["event.id"] for events in batches for e in events)
    folder = cold_tier.partition_prefix(day.date(), "fw-1")
    policy = CompactionPolicy(min_objects=4, garbage_grace=timedelta(0))

    merged = await cold_tier.compact_folder(cold, day.date(), "fw-1", policy)
    assert merged == 10
    # Crash before the garbage record was acted on: inputs and the merged object coexist...
    assert len(await cold_tier.list_keys(cold, folder)) == 11
    assert sorted(await searched_ids(ch, cold)) == expected  # ...and each event is returned once
    assert (
        await cold_tier.compact_folder(cold, day.date(), "fw-1", policy) == 0
    )  # inputs are not merged twice
    assert await cold_tier.collect_garbage(cold, policy.garbage_grace) == 10
    (only,) = await cold_tier.list_keys(cold, folder)
    table = await cold_tier.read_objects(cold, [only])
    assert sorted(table.column("event_id").to_pylist()) == expected
    assert table.column("timestamp").to_pylist() == sorted(table.column("timestamp").to_pylist())
    assert sorted(await searched_ids(ch, cold)) == expected
    assert await cold_tier.list_keys(cold, cold_tier.GARBAGE_PREFIX) == []


# ---------------------------------------------------------------------------------------------- alerts
async def test_alerts_upsert_keeps_acknowledgement_and_latest_counts(ch: ClickHouse) -> None:
    t0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    message = {
        "fingerprint": "fp-1",
        "rule": "brute-force",
        "title": "Brute force against psn:1",
        "severity": "high",
        "first_seen": rfc3339(t0),
        "last_seen": rfc3339(t0 + timedelta(minutes=1)),
        "group": {"source.ip": "psn:1"},
        "event_ids": ["a", "b"],
        "count": 2,
    }
    await upsert_alert(ch, Alert.from_message(message))
    await upsert_alert(ch, Alert.from_message({**message, "fingerprint": "fp-2", "severity": "low"}))
    acked = await acknowledge_alert(ch, "fp-1", "ana", at=t0 + timedelta(minutes=2))
    assert acked is not None
    assert acked.status == "acknowledged"
    assert await acknowledge_alert(ch, "nope", "ana") is None
    later = {
        **message,
        "last_seen": (t0 + timedelta(minutes=5)).timestamp(),
        "count": 7,
        "event_ids": ["b", "c"],
    }
    merged = await upsert_alert(ch, Alert.from_message(later))
    assert merged.status == "acknowledged"
    assert merged.acknowledged_by == "ana"
    assert merged.count == 7
    assert merged.event_ids == ["a", "b", "c"]
    await escalate_alert(ch, "fp-2", 2)
    await escalate_alert(ch, "fp-2", 1)
    alerts = await list_alerts(ch)
    assert [a.fingerprint for a in alerts] == ["fp-1", "fp-2"]
    first = alerts[0].to_json()
    assert first["last_seen"] == "2025-03-01T12:05:00.000Z"
    assert first["first_seen"] == "2025-03-01T12:00:00.000Z"
    assert first["status"] == "acknowledged"
    assert first["acknowledged_at"] == "2025-03-01T12:02:00.000Z"
    assert alerts[1].escalation_level == 2
    assert [a.fingerprint for a in await list_alerts(ch, status="open")] == ["fp-2"]


async def test_audit_log_appends_and_lists(ch: ClickHouse) -> None:
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    for n, who in enumerate(["ana", "bob", "ana"]):
        await append_audit(
            ch, AuditEntry(t0 + timedelta(seconds=n), who, "search", f"q{n}", {"limit": n, "naïve": "é"}, n)
        )
    entries = await list_audit(ch)
    assert [e.query for e in entries] == ["q2", "q1", "q0"]
    assert entries[0].parameters == {"limit": 2, "naïve": "é"}
    assert entries[0].rows_returned == 2
    assert [e.query for e in await list_audit(ch, principal="ana", since=t0 + timedelta(seconds=1))] == ["q2"]
    assert json.dumps(entries[0].to_json())
