"""The SIEM's common mistakes, each reproduced by its switch: the same observation on a stack started with
the switch shows the failure the kata predicts, and on the stack without it shows its absence.

One stack without any switch serves every "without" observation; each test starts its own stack with its
one switch. Every stack gets the same two overrides of the card's env, so the runs differ only by the
switch: the lifecycle looks every 2 s instead of every 30 s (so a test sees a move to cold in seconds), and
ingest pushes back above 200 events in flight to the broker instead of 20,000 (so a burst a test can send
reaches the limit).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from katas.catalog import get_card
from katas.infra import chaos, kafka
from katas.infra.chaos import ChaosAction
from katas.infra.stack import Stack
from katas.siem.samples import SourceFleet, json_batch, winxml_batch
from katas.siem.topics import DEADLETTER
from tests.conftest import service_metric, wait_for, webhook_alerts

pytestmark = pytest.mark.integration

MAX_IN_FLIGHT = 200
ENV = {"SIEM_LIFECYCLE_INTERVAL_S": "2", "SIEM_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)}
"""The same overrides for every stack of this module, with or without a switch."""


@contextmanager
def siem_stack(*mistakes: str) -> Iterator[tuple[Stack, dict[str, Any]]]:
    card = get_card("siem")
    spec = card.stack.model_copy(update={"env": {**card.stack.env, **ENV}})
    run = Path(tempfile.mkdtemp(prefix="katas-siem-mistakes-"))
    run.chmod(0o755)
    try:
        stack = Stack.for_card(
            card.model_copy(update={"stack": spec}), mistakes=mistakes, run_dir=run / "siem"
        )
        with stack:
            yield stack, stack.endpoints()
    finally:
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="module")
def right() -> Iterator[tuple[Stack, dict[str, Any]]]:
    """The stack without any switch."""
    with siem_stack() as started:
        yield started


# ------------------------------------------------------------------------------------------- helpers


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def post(endpoints: dict[str, Any], path: str, body: bytes, source: str) -> httpx.Response:
    kind = "application/xml" if path.endswith("winxml") else "application/json"
    return httpx.post(
        f"{endpoints['http_ingest']}{path}",
        content=body,
        headers={"X-Source": source, "Content-Type": kind},
        timeout=30,
    )


def send_json(endpoints: dict[str, Any], events: list[dict[str, Any]], source: str = "mistakes") -> None:
    response = post(endpoints, "/ingest/json", json_batch([json.dumps(e).encode() for e in events]), source)
    assert response.status_code == 202, response.text


def search(endpoints: dict[str, Any], q: str, since: datetime | None = None) -> dict[str, Any]:
    params = {"q": q, "from": stamp(since or datetime.now(UTC) - timedelta(hours=1)), "limit": 1000}
    response = httpx.get(
        f"{endpoints['query']}/search",
        params=params,
        headers={"Authorization": f"Bearer {endpoints['analyst_token']}"},
        timeout=30,
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def pseudonym(endpoints: dict[str, Any], kind: str, value: str) -> str:
    """The pseudonym the query API gives an analyst for `value` (what a clear value became in storage)."""
    response = httpx.get(
        f"{endpoints['query']}/pseudonym",
        params={"kind": kind, "value": value},
        headers={"Authorization": f"Bearer {endpoints['analyst_token']}"},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["pseudonym"])


def hot_rows(endpoints: dict[str, Any], prefix: str) -> int:
    query = f"SELECT count() FROM events WHERE startsWith(message, '{prefix}')"
    response = httpx.post(endpoints["chdb"], content=query.encode(), timeout=30)
    response.raise_for_status()
    return int(response.text.strip() or 0)


def dead_letters(endpoints: dict[str, Any], prefix: str) -> int:
    """Dead letters whose payload carries `prefix`."""

    async def read() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=endpoints["kafka"], auto_offset_reset="earliest")
        await consumer.start()
        found = 0
        try:
            async for records in kafka.read_from_start(consumer, [TopicPartition(DEADLETTER, 0)], stall_s=15):
                for record in records:
                    letter = json.loads(record.value or b"{}")
                    found += prefix.encode() in base64.b64decode(letter.get("payload_b64") or "")
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read())


# --------------------------------------------------------------------------------- store-raw-pii
def pii_in_search_results(endpoints: dict[str, Any]) -> tuple[bool, bool]:
    """Send an application event naming a person; (clear name in the results, pseudonym in the results)."""
    run = uuid.uuid4().hex[:8]
    user, marker = f"zelda.{run}", f"piimark-{run}"
    send_json(
        endpoints,
        [
            {
                "timestamp": stamp(datetime.now(UTC)),
                "service": "hr-portal",
                "event": "login",
                "user": user,
                "email": f"{user}@example.com",
                "outcome": "success",
                "message": f"{marker} login by {user}",
            }
        ],
    )
    found = wait_for(lambda: search(endpoints, marker)["events"], 30, "the event becoming searchable")
    pseudonymized = pseudonym(endpoints, "user", user)
    text = json.dumps(found)
    return user in text, pseudonymized in text


def test_store_raw_pii_puts_clear_user_names_into_the_store(right: tuple[Stack, dict[str, Any]]) -> None:
    with siem_stack("store-raw-pii") as (_, wrong):
        clear, pseudonymized = pii_in_search_results(wrong)
    assert (clear, pseudonymized) == (True, False), "with store-raw-pii the user name is stored in clear"
    clear, pseudonymized = pii_in_search_results(right[1])
    assert (clear, pseudonymized) == (False, True), "without the switch only the pseudonym is stored"


# --------------------------------------------------------------------------------- no-dead-letter
def count_in_stored_dead_lettered(endpoints: dict[str, Any]) -> tuple[int, int, int, float]:
    """Send good and malformed events, all acknowledged; (in, stored, dead-lettered, dropped by the
    normalizer) once the good ones are all stored."""
    run = uuid.uuid4().hex[:8]
    marker = f"dlqmark-{run}"
    now = stamp(datetime.now(UTC))
    good = [
        {"timestamp": now, "service": "app", "event": "ping", "message": f"{marker}-{i}"} for i in range(20)
    ]
    bad = [{"timestamp": "yesterday", "service": "app", "message": f"{marker}-bad-{i}"} for i in range(5)]
    send_json(endpoints, good + bad)
    wait_for(lambda: search(endpoints, marker)["total"] >= len(good), 30, "the good events being stored")
    time.sleep(1.0)  # the malformed ones were in the same batches as the good ones
    stored = search(endpoints, marker)["total"]
    dropped = service_metric(endpoints["normalizer"], "normalize_dropped_total")
    return len(good) + len(bad), stored, dead_letters(endpoints, marker), dropped


def test_no_dead_letter_loses_malformed_events_silently(right: tuple[Stack, dict[str, Any]]) -> None:
    with siem_stack("no-dead-letter") as (_, wrong):
        sent, stored, dead, dropped = count_in_stored_dead_lettered(wrong)
    print(f"no-dead-letter: in {sent}, stored {stored}, dead-lettered {dead}, dropped {dropped:g}")
    assert (dead, dropped) == (0, 5)
    assert sent != stored + dead, "with no-dead-letter the malformed events must be lost"

    sent, stored, dead, dropped = count_in_stored_dead_lettered(right[1])
    print(f"with dead letters: in {sent}, stored {stored}, dead-lettered {dead}, dropped {dropped:g}")
    assert (sent, dead, dropped) == (stored + dead, 5, 0)


# -------------------------------------------------------------------- unbounded-correlation-state
def attack_across_a_correlator_restart(stack: Stack, endpoints: dict[str, Any]) -> tuple[int, bool]:
    """Failed Windows logons, a correlator restart, then the successful logon; (the correlator's keys
    in Redis before the restart, whether the attack's alert arrived)."""
    run = uuid.uuid4().hex[:8]
    fleet = SourceFleet(n_sources=5, seed=3)
    ip, host = f"203.0.113.{int(run[:2], 16) % 250 + 2}", f"DC-{run[:6].upper()}.corp.example.com"
    failures = fleet.brute_force_then_success("mallory", ip, "windows", attempts=7, host=host)[:-1]
    response = post(endpoints, "/ingest/winxml", winxml_batch([e.payload for e in failures]), f"win-{run}")
    assert response.status_code == 202, response.text
    wait_for(
        lambda: service_metric(endpoints["correlator"], "correlate_matches_total") >= len(failures),
        30,
        "the correlator matching the failed logons",
    )
    time.sleep(1.0)  # the batch's offsets are committed right after it is handled
    host_port = endpoints["redis"].rsplit(":", 1)
    with redis.Redis(host=host_port[0], port=int(host_port[1])) as client:
        windows = sum(1 for _ in client.scan_iter(match="siem:cw:*", count=1000))

    chaos.apply(stack, ChaosAction.RESTART, "correlator")  # graceful: its offsets are committed
    success = fleet.brute_force_then_success("mallory", ip, "windows", attempts=1, host=host)[-1]
    response = post(endpoints, "/ingest/winxml", winxml_batch([success.payload]), f"win-{run}")
    assert response.status_code == 202, response.text
    wait_for(
        lambda: service_metric(endpoints["correlator"], "correlate_matches_total") >= 1,
        30,
        "the restarted correlator matching the successful logon",
    )
    pseudonymized = pseudonym(endpoints, "ip", ip)
    time.sleep(1.0)  # the batch is handled: its alerts, if any, are counted right after its matches
    if service_metric(endpoints["correlator"], "correlate_alerts_total") == 0:
        return windows, False
    alerted = wait_for(
        lambda: any(pseudonymized in json.dumps(a.get("group", {})) for a in webhook_alerts(endpoints)),
        15,
        "the alert reaching the webhook",
    )
    return windows, alerted


def test_unbounded_correlation_state_forgets_an_attack_when_the_correlator_restarts(
    right: tuple[Stack, dict[str, Any]],
) -> None:
    """With the switch the windows live in the correlator's memory: nothing in Redis, and a restart in
    the middle of an attack forgets its first stage. (The memory growing with the event rate is not
    measured here: it takes far more events than a test of seconds sends.)"""
    with siem_stack("unbounded-correlation-state") as (stack, wrong):
        windows, alerted = attack_across_a_correlator_restart(stack, wrong)
    print(f"in memory: {windows} window keys in Redis, alert after the restart: {alerted}")
    assert windows == 0, "with the switch the windows must live in the correlator's memory"
    assert not alerted, "the restart must have forgotten the failed logons"

    windows, alerted = attack_across_a_correlator_restart(*right)
    print(f"in Redis: {windows} window keys, alert after the restart: {alerted}")
    assert windows > 0
    assert alerted, "with the windows in Redis the attack must be detected across the restart"


# ------------------------------------------------------------------------------------ no-lifecycle
def old_events_left_hot(endpoints: dict[str, Any], wait_s: float) -> tuple[int, int, float]:
    """Events 20 minutes old (the card keeps 10 minutes hot); after waiting for the lifecycle:
    (rows still in the hot table, events found by search across both tiers, rows the store moved)."""
    run = uuid.uuid4().hex[:8]
    marker = f"lifemark-{run}"
    then = datetime.now(UTC) - timedelta(minutes=20)
    send_json(
        endpoints,
        [
            {"timestamp": stamp(then), "service": "app", "event": "ping", "message": f"{marker}-{i}"}
            for i in range(30)
        ],
    )
    since = then - timedelta(minutes=1)
    wait_for(lambda: search(endpoints, marker, since)["total"] >= 30, 30, "the old events being stored")
    deadline = time.monotonic() + wait_s
    # The store counts a move once its run is over, which ends after the delete (it then rewrites the
    # emptied day partitions): wait for the count as well as for the rows to leave.
    while time.monotonic() < deadline and (
        hot_rows(endpoints, marker) or service_metric(endpoints["store"], "store_moved_to_cold_total") < 30
    ):
        time.sleep(0.5)
    moved = service_metric(endpoints["store"], "store_moved_to_cold_total")
    return hot_rows(endpoints, marker), search(endpoints, marker, since)["total"], moved


def test_no_lifecycle_keeps_everything_in_the_hot_store(right: tuple[Stack, dict[str, Any]]) -> None:
    """The lifecycle half of the mistake. Its other half, one store serving ingestion and queries, is how
    the miniature runs either way (one chDB store owner), so it has no switch to show."""
    started = time.monotonic()
    hot, found, moved = old_events_left_hot(right[1], wait_s=30)
    took = time.monotonic() - started
    print(f"with the lifecycle: {hot} rows left hot, {found} found, {moved:g} moved ({took:.1f} s)")
    assert (hot, found) == (0, 30)
    assert moved >= 30

    with siem_stack("no-lifecycle") as (_, wrong):
        hot, found, moved = old_events_left_hot(wrong, wait_s=took + 5)
    print(f"no-lifecycle: {hot} rows left hot, {found} found, {moved:g} moved")
    assert (hot, found, moved) == (30, 30, 0), "with no-lifecycle old events must stay hot"


# --------------------------------------------------------------------------------- no-backpressure
def burst_against_a_slow_broker(stack: Stack, endpoints: dict[str, Any]) -> tuple[int, int, set[str], float]:
    """40 batches of 50 events at once while the broker's network is slow; (202s, 503s, Retry-After
    values of the 503s, the deepest ingest queue seen: events held for the broker's acknowledgement)."""
    run = uuid.uuid4().hex[:8]
    now = stamp(datetime.now(UTC))
    body = json_batch(
        [
            json.dumps(
                {"timestamp": now, "service": "app", "event": "ping", "message": f"burst-{run}-{i}"}
            ).encode()
            for i in range(50)
        ]
    )

    async def go() -> tuple[int, int, set[str], float]:
        deepest = 0.0
        done = asyncio.Event()
        async with httpx.AsyncClient(base_url=endpoints["http_ingest"], timeout=60) as http:

            async def watch() -> None:
                nonlocal deepest
                while not done.is_set():
                    text = (await http.get("/metrics")).text
                    for line in text.splitlines():
                        if line.startswith("ingest_queue_depth "):
                            deepest = max(deepest, float(line.split()[1]))
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            headers = {"X-Source": f"burst-{run}", "Content-Type": "application/json"}
            replies = await asyncio.gather(
                *(http.post("/ingest/json", content=body, headers=headers) for _ in range(40))
            )
            done.set()
            await watcher
        accepted = sum(r.status_code == 202 for r in replies)
        busy = [r for r in replies if r.status_code == 503]
        return accepted, len(busy), {r.headers.get("retry-after", "") for r in busy}, deepest

    chaos.apply(stack, ChaosAction.DELAY, "kafka", ms=300)
    try:
        return asyncio.run(go())
    finally:
        chaos.apply(stack, ChaosAction.RESTORE, "kafka")


def test_no_backpressure_lets_a_burst_pile_up_in_ingest_memory(right: tuple[Stack, dict[str, Any]]) -> None:
    """Ingest's limit is on events waiting for the broker's acknowledgement (SIEM_MAX_IN_FLIGHT), so the
    slow downstream here is the broker (its network delayed by the chaos proxy). A slow normalizer does not
    make ingest push back with or without the switch: its backlog waits in `siem.raw`, which is the design
    (the burst NFR lets normalization fall behind and catch up)."""
    with siem_stack("no-backpressure") as (stack, wrong):
        accepted, busy, _, deepest = burst_against_a_slow_broker(stack, wrong)
    print(f"no-backpressure: {accepted} accepted, {busy} refused, deepest queue {deepest:g}")
    assert (accepted, busy) == (40, 0)
    assert deepest > 3 * MAX_IN_FLIGHT, "without backpressure the burst must pile up in ingest's memory"

    accepted, busy, retry_after, deepest = burst_against_a_slow_broker(*right)
    print(
        f"with backpressure: {accepted} accepted, {busy} refused (Retry-After {retry_after}), deepest {deepest:g}"
    )
    assert busy > 0, "ingest must refuse with 503 above the limit"
    assert retry_after == {"1"}, "every 503 must say when to retry"
    assert deepest < 3 * MAX_IN_FLIGHT
