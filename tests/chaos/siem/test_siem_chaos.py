"""The SIEM under chaos: each worker and each stateful server is killed under load and started again.

One stack for the module. For each victim (the normalizer, the store, the correlator, the chDB store owner,
the broker, the object store) an open-loop load of JSON events goes to the HTTP ingest, each event with a
unique marker in its message (`chaosmark-<run>-<n>`) and one in ten malformed on purpose (an unreadable
timestamp, so the normalizer must dead-letter it). A 202 means the broker stored the whole batch, so the
test knows exactly which events were acknowledged. Mid-run the victim is killed (SIGKILL, no flush) and
started again. Afterwards, once the pipeline has drained, the test proves:

- nothing acknowledged is lost: every acknowledged event is in the hot store under exactly one event id,
  or in `siem.deadletter`, never both (count in == stored + dead-lettered);
- duplicates are handled: re-deliveries may write a row twice, but the search API counts each event id
  once (its total equals the distinct ids stored);
- the pipeline recovers within RECOVERY_LIMIT_S: the first event sent after START is stored that soon
  after START (for the correlator: its first event evaluated and the alert of an attack sent across the
  kill arrive that soon);
- no other component went down because of the fault. When one did (it exited on a transient error of the
  victim), it is started again by the test, the way an orchestrator's restart policy would, so the
  durability proof still runs; the crash itself fails its own test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from katas.catalog import get_card
from katas.infra import chaos, kafka
from katas.infra.chaos import ChaosAction
from katas.infra.clickhouse import ClickHouse
from katas.infra.servers import Server, ServerError
from katas.infra.stack import Stack
from katas.siem.samples import SourceFleet, json_batch, winxml_batch
from katas.siem.storage import EVENTS_TABLE
from katas.siem.topics import DEADLETTER
from loadgen import ConstantRate, run_load

pytestmark = pytest.mark.chaos

BATCHES_PER_S = 15
BATCH_SIZE = 10  # 150 events/s
BAD_EVERY = 10  # one event in ten cannot be normalized and must reach the dead-letter topic
DURATION_S = 12
KILL_AT_S = 3
DOWN_FOR_S = 3
RECOVERY_LIMIT_S = 20
"""A killed consumer's partitions are handed over only after its session times out (6 s, see
katas.infra.kafka.consumer), and a Python service needs ~2 s to boot on two cores: 4-9 s measured."""
DRAIN_TIMEOUT_S = 60
VICTIMS = ["normalizer", "store", "correlator", "chdb", "kafka", "s3"]
MARKER = re.compile(rb"chaosmark-[0-9a-f]+-\d{6}")


@dataclass
class Outcome:
    victim: str
    acked_good: set[str] = field(default_factory=set)
    acked_bad: set[str] = field(default_factory=set)
    failed_batches: int = 0
    stored: dict[str, tuple[int, int]] = field(default_factory=dict)
    """marker -> (distinct event ids, rows) in the hot store."""
    first_stored: dict[str, float] = field(default_factory=dict)
    """marker -> when its first row was inserted (epoch s, the store's clock on this machine)."""
    dead_lettered: dict[str, int] = field(default_factory=dict)
    """marker -> dead letters carrying it."""
    search_total: int = -1
    recovery_s: float = float("inf")
    correlator_recovery_s: float | None = None
    alert_after_start_s: float | None = None
    crashed: dict[str, str] = field(default_factory=dict)
    """Components other than the victim that went down, with the last line of their log."""
    summary: str = ""


@dataclass
class Siem:
    stack: Stack
    endpoints: dict[str, Any]
    outcomes: dict[str, Outcome] = field(default_factory=dict)


@pytest.fixture(scope="module")
def siem() -> Iterator[Siem]:
    run = Path(tempfile.mkdtemp(prefix="katas-siem-chaos-"))
    run.chmod(0o755)
    try:
        with Stack.for_card(get_card("siem"), run_dir=run / "siem") as stack:
            yield Siem(stack, stack.endpoints())
    finally:
        shutil.rmtree(run, ignore_errors=True)


def outcome_of(siem: Siem, victim: str) -> Outcome:
    """The chaos run of one victim, run once and shared by the tests that judge it."""
    if victim not in siem.outcomes:
        for component in siem.stack:  # a previous run may have left something down
            if not component.is_running():
                component.start()
        siem.stack.write_files()
        siem.outcomes[victim] = asyncio.run(_chaos_run(siem, victim))
    return siem.outcomes[victim]


# ------------------------------------------------------------------------------------------- the run
def _event(marker: str, bad: bool) -> bytes:
    stamp = "yesterday" if bad else datetime.now(UTC).isoformat(timespec="milliseconds")
    return json.dumps(
        {
            "timestamp": stamp,
            "service": "chaos",
            "event": "heartbeat",
            "outcome": "success",
            "message": marker,
        }
    ).encode()


async def _metric(client: httpx.AsyncClient, url: str, name: str) -> float | None:
    try:
        text = (await client.get(f"{url}/metrics", timeout=1)).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def _last_words(component: Server) -> str:
    lines = [line for line in component.log_tail(40).splitlines() if line.strip()]
    crashed = [line for line in lines if "worker_crashed" in line]
    return (crashed or lines or ["(empty log)"])[-1][:300]


async def _chaos_run(siem: Siem, victim: str) -> Outcome:
    stack, endpoints = siem.stack, siem.endpoints
    run = uuid.uuid4().hex[:10]
    outcome = Outcome(victim)
    sent_at: dict[str, float] = {}
    begun = time.time()
    fleet = SourceFleet(n_sources=5, seed=7)
    attacker_ip = f"198.51.100.{int(run[:2], 16) % 250 + 2}"
    attacker_host = f"DC-{run[:6].upper()}.corp.example.com"
    victim_back = asyncio.Event()  # set once START has brought the victim back

    async with httpx.AsyncClient(base_url=endpoints["http_ingest"], timeout=30) as http:

        async def send(i: int) -> None:
            markers = [f"chaosmark-{run}-{i * BATCH_SIZE + k:06d}" for k in range(BATCH_SIZE)]
            bad = {m for k, m in enumerate(markers) if (i * BATCH_SIZE + k) % BAD_EVERY == BAD_EVERY - 1}
            now = time.time()
            sent_at.update(dict.fromkeys(markers, now))
            body = json_batch([_event(m, m in bad) for m in markers])
            response = await http.post(
                "/ingest/json",
                content=body,
                headers={"X-Source": f"chaos-{run}", "Content-Type": "application/json"},
            )
            if response.status_code != 202:  # not acknowledged: may or may not be stored, never counted
                outcome.failed_batches += 1
                raise RuntimeError(f"HTTP {response.status_code}")
            outcome.acked_good.update(set(markers) - bad)
            outcome.acked_bad.update(bad)

        async def post_winxml(events: list[bytes]) -> None:
            for _ in range(30):
                response = await http.post(
                    "/ingest/winxml",
                    content=winxml_batch(events),
                    headers={"X-Source": f"win-{run}", "Content-Type": "application/xml"},
                )
                if response.status_code == 202:
                    return
                await asyncio.sleep(0.5)
            pytest.fail(f"the attack was not acknowledged: HTTP {response.status_code}")

        async def fault() -> float:
            await asyncio.sleep(KILL_AT_S)
            if victim == "correlator":
                # The first stage of an attack: failed logons, evaluated (and committed) before the kill.
                attempts = fleet.brute_force_then_success(
                    "mallory", attacker_ip, "windows", attempts=7, host=attacker_host
                )
                await post_winxml([e.payload for e in attempts[:-1]])
                async with httpx.AsyncClient() as scrape:
                    deadline = time.monotonic() + 15
                    while time.monotonic() < deadline:
                        matches = await _metric(scrape, endpoints["correlator"], "correlate_matches_total")
                        if (matches or 0) >= 7:
                            break
                        await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # the batch's offsets are committed right after it is handled
            await asyncio.to_thread(chaos.apply, stack, ChaosAction.KILL, victim)
            await asyncio.sleep(DOWN_FOR_S)
            started_at = time.time()
            await asyncio.to_thread(chaos.apply, stack, ChaosAction.START, victim)
            victim_back.set()
            if victim == "correlator":  # the attack's last stage, after the restart
                success = fleet.brute_force_then_success(
                    "mallory", attacker_ip, "windows", attempts=1, host=attacker_host
                )
                await post_winxml([success[-1].payload])
                # The new process's counters start at zero: its first evaluated event is its recovery.
                async with httpx.AsyncClient() as scrape:
                    deadline = time.monotonic() + RECOVERY_LIMIT_S + 15
                    while time.monotonic() < deadline:
                        seen = await _metric(scrape, endpoints["correlator"], "correlate_events_total")
                        if seen:
                            outcome.correlator_recovery_s = time.time() - started_at
                            break
                        await asyncio.sleep(0.2)
            return started_at

        async def watch(stop: asyncio.Event) -> None:
            """Note any component that goes down besides the victim; once the victim runs again, start it
            again (an orchestrator's restart policy), so the durability proof can go on."""
            while not stop.is_set():
                for component in list(stack):
                    if component.is_running():
                        continue
                    if component.name == victim and not victim_back.is_set():
                        continue
                    outcome.crashed.setdefault(component.name, _last_words(component))
                    if victim_back.is_set():
                        try:
                            await asyncio.to_thread(component.start)
                            stack.write_files()
                        except ServerError:
                            pass  # what it needs may still be starting: try again on the next round
                await asyncio.sleep(0.25)

        stop_watch = asyncio.Event()
        watcher = asyncio.create_task(watch(stop_watch))
        try:
            faulting = asyncio.create_task(fault())
            result = await run_load(
                ConstantRate(BATCHES_PER_S, DURATION_S), send, max_in_flight=300, progress=False, grace_s=30
            )
            started_at = await faulting
            await _drain(endpoints, run, outcome)
            outcome.recovery_s = _recovery(outcome, sent_at, started_at)
            if victim == "correlator":
                await _alert_arrival(endpoints, outcome, attacker_ip, started_at)
            outcome.search_total = await _search_total(endpoints, run, begun)
        finally:
            stop_watch.set()
            await watcher

    outcome.summary = (
        f"{victim}: in (acknowledged) {len(outcome.acked_good) + len(outcome.acked_bad)} = stored "
        f"{len(outcome.acked_good & outcome.stored.keys())} + dead-lettered "
        f"{len(outcome.acked_bad & outcome.dead_lettered.keys())}; rows {sum(r for _, r in outcome.stored.values())} "
        f"for {sum(i for i, _ in outcome.stored.values())} event ids, search total {outcome.search_total}; "
        f"{outcome.failed_batches} batches refused; recovery {outcome.recovery_s:.1f} s"
        + (
            f"; correlator evaluating again {outcome.correlator_recovery_s:.1f} s and the attack's alert "
            f"{outcome.alert_after_start_s:.1f} s after START"
            if outcome.correlator_recovery_s is not None and outcome.alert_after_start_s is not None
            else ""
        )
        + (f"; went down too: {', '.join(outcome.crashed)}" if outcome.crashed else "")
    )
    print(result.summary_line())
    print(outcome.summary)
    for name, words in outcome.crashed.items():
        print(f"  {name}: {words}")
    return outcome


async def _drain(endpoints: dict[str, Any], run: str, outcome: Outcome) -> None:
    """Wait until every acknowledged event is stored or dead-lettered (or the drain times out)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    async with ClickHouse(endpoints["chdb"]) as ch:
        while True:
            try:
                rows = await ch.rows(
                    f"SELECT message, uniqExact(event_id) AS ids, count() AS n, "
                    f"toUnixTimestamp64Milli(min(inserted_at)) AS first_ms FROM {EVENTS_TABLE} "
                    f"WHERE startsWith(message, 'chaosmark-{run}-') GROUP BY message"
                )
                outcome.stored = {r["message"]: (int(r["ids"]), int(r["n"])) for r in rows}
                outcome.first_stored = {r["message"]: int(r["first_ms"]) / 1000 for r in rows}
            except httpx.HTTPError:
                pass  # the store owner itself may still be starting
            if outcome.acked_good <= outcome.stored.keys():
                outcome.dead_lettered = await _dead_letters(endpoints["kafka"], run)
                if outcome.acked_bad <= outcome.dead_lettered.keys():
                    return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(1.0)


async def _dead_letters(bootstrap: str, run: str) -> dict[str, int]:
    """Markers of this run found in the dead-letter topic, with how many letters carry each."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, int] = {}
    try:
        async for records in kafka.read_from_start(consumer, [TopicPartition(DEADLETTER, 0)], stall_s=20):
            for record in records:
                letter = json.loads(record.value or b"{}")
                payload = base64.b64decode(letter.get("payload_b64") or "")
                for marker in MARKER.findall(payload):
                    text = marker.decode()
                    if text.startswith(f"chaosmark-{run}-"):
                        found[text] = found.get(text, 0) + 1
    finally:
        await consumer.stop()
    return found


def _recovery(outcome: Outcome, sent_at: dict[str, float], started_at: float) -> float:
    """From START to the moment the first event sent after START was stored."""
    stored_after = [at for marker, at in outcome.first_stored.items() if sent_at.get(marker, 0) >= started_at]
    return (min(stored_after) - started_at) if stored_after else float("inf")


async def _alert_arrival(
    endpoints: dict[str, Any], outcome: Outcome, attacker_ip: str, started_at: float
) -> None:
    """When the alert of the attack sent across the kill reached the webhook."""
    headers = {"Authorization": f"Bearer {endpoints['analyst_token']}"}
    async with httpx.AsyncClient(base_url=endpoints["query"], headers=headers, timeout=10) as api:
        pseudonym = (await api.get("/pseudonym", params={"kind": "ip", "value": attacker_ip})).json()[
            "pseudonym"
        ]
    deadline = time.monotonic() + RECOVERY_LIMIT_S + 15
    while time.monotonic() < deadline and outcome.alert_after_start_s is None:
        log = await asyncio.to_thread(Path(endpoints["webhook_log"]).read_text)
        for line in log.splitlines():
            delivery = json.loads(line)
            if pseudonym in json.dumps(delivery["payload"].get("group", {})):
                outcome.alert_after_start_s = delivery["received_at"] - started_at
        await asyncio.sleep(0.5)


async def _search_total(endpoints: dict[str, Any], run: str, begun: float) -> int:
    headers = {"Authorization": f"Bearer {endpoints['analyst_token']}"}
    since = datetime.fromtimestamp(begun - 60, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    async with httpx.AsyncClient(base_url=endpoints["query"], headers=headers, timeout=30) as api:
        response = await api.get("/search", params={"q": f"chaosmark-{run}-", "from": since, "limit": 1})
        response.raise_for_status()
        return int(response.json()["total"])


# ----------------------------------------------------------------------------------------- the proofs
@pytest.mark.parametrize("victim", VICTIMS)
def test_nothing_acknowledged_is_lost_or_doubled_and_the_pipeline_recovers(siem: Siem, victim: str) -> None:
    outcome = outcome_of(siem, victim)
    acked = len(outcome.acked_good) + len(outcome.acked_bad)
    assert acked > BATCHES_PER_S * BATCH_SIZE * KILL_AT_S, (
        "too few events were acknowledged to prove anything"
    )

    missing = outcome.acked_good - outcome.stored.keys()
    not_dead_lettered = outcome.acked_bad - outcome.dead_lettered.keys()
    assert not missing, f"{len(missing)} acknowledged events are not stored, e.g. {sorted(missing)[:3]}"
    assert not not_dead_lettered, (
        f"{len(not_dead_lettered)} acknowledged malformed events are not dead-lettered"
    )
    both = outcome.stored.keys() & outcome.dead_lettered.keys()
    assert not both, f"stored and dead-lettered at once: {sorted(both)[:3]}"
    stored = len(outcome.acked_good & outcome.stored.keys())
    dead = len(outcome.acked_bad & outcome.dead_lettered.keys())
    assert acked == stored + dead

    split = {m: ids for m, (ids, _) in outcome.stored.items() if ids != 1}
    assert not split, f"events stored under more than one event id: {sorted(split.items())[:3]}"
    distinct_ids = sum(ids for ids, _ in outcome.stored.values())
    assert outcome.search_total == distinct_ids == len(outcome.stored), (
        f"search counts {outcome.search_total}, the store holds {distinct_ids} distinct ids "
        f"({sum(n for _, n in outcome.stored.values())} rows)"
    )

    assert outcome.recovery_s <= RECOVERY_LIMIT_S, (
        f"the first event sent after START was stored {outcome.recovery_s:.1f} s after it "
        f"(limit {RECOVERY_LIMIT_S} s)"
    )
    if victim == "correlator":
        assert outcome.correlator_recovery_s is not None, "the restarted correlator evaluated nothing"
        assert outcome.correlator_recovery_s <= RECOVERY_LIMIT_S
        assert outcome.alert_after_start_s is not None, "the attack sent across the kill raised no alert"
        assert outcome.alert_after_start_s <= RECOVERY_LIMIT_S, (
            f"the attack's alert came {outcome.alert_after_start_s:.1f} s after START"
        )


@pytest.mark.parametrize("victim", VICTIMS)
def test_no_other_component_goes_down_with_the_victim(siem: Siem, victim: str) -> None:
    outcome = outcome_of(siem, victim)
    assert not outcome.crashed, (
        f"killing {victim} for {DOWN_FOR_S} s took down "
        + "; ".join(f"{name} ({words})" for name, words in outcome.crashed.items())
        + ", and nothing in the stack starts them again"
    )
