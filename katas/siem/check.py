"""`katas check siem [--short]`: start a SIEM of its own, drive it, measure the card's NFRs, write the scorecard.

    katas check siem --short   # under 2 minutes: CI's check, the card's rates over shorter runs
    katas check siem           # the card's targets: 500 events/s for 60 s, a 2,000 events/s burst for 10 s,
                               # and a store of 10M events for the full-retention query (about 10 minutes)

The check starts its own stack in a fresh run directory under `.katas/siem-check/` (so it never touches a
stack of `katas up siem`), and stops it at the end, also on error, Ctrl-C or SIGTERM. Before the stack starts
it runs the `kafka.produce` row of `katas.infra.bench` on servers of its own, so the pipeline's throughput can
be read as a fraction of what the broker takes from a Python producer on this machine
(`pipeline_to_broker_ratio`).

What is measured, and how (rates in events per second; a load operation is a batch of 20 events of one
source, see `katas.siem.load`; the pipeline's counters are read from the services' /metrics 4 times a second):

* `ingest_events_per_s`: `HEADROOM` above the target is offered for the run; the events the broker
  acknowledged at ingest (`ingest_events_total`) divided by the time from the start of the run to the last
  acknowledgement, times the share of them in the hot store (or on the dead-letter topic) within
  `CATCH_UP_S` after the load: "accepted and stored". UDP datagrams lost before ingest are not
  acknowledged, so they lower the figure; the detail says how many.
* `burst_ingest_events_per_s`: a base-peak-base profile; what ingest acknowledged over the burst's length,
  read `BURST_LAG_S` after it starts, times the share of the HTTP and TCP events acknowledged at all (the
  burst must not lose them); normalization may catch up afterwards, within `BURST_CATCH_UP_S`.
* `searchable_latency_p99_s`: during the sustained run a marker event with unique text leaves every
  `marker_every_s` (alternately syslog over TCP and JSON over HTTP); the query API is polled for all of them
  twice a second; P99 of found - sent.
* `alert_latency_p99_s`: during the sustained run an attack scenario with values of its own is injected
  every `alert_every_s` (scenarios the fleet sends over UDP go over TCP, so a lost datagram cannot pass for
  a slow alert): its first events, a second's pause, then the completing event. As the kata text words it
  ("within 2 seconds of correlation match"), latency runs from the match (the alert's record timestamp on
  the alerts topic, stamped when the correlator emits it) to `delivered_at` of the alert's line in the
  webhook log, found by the injection's value in the alert's group (as the pseudonym the query API gives for
  it where the pipeline pseudonymizes it). `alert_source_to_notification_p99_s` (extra) times the whole
  path from sending the completing event; the source-to-searchable row already holds that path's budget.
* `query_24h_p95_s`: after the load, realistic last-24-hour searches (free text, field filters, both) one
  after another through the query API; P95 of the request time. The full check runs them again after the
  backfill below, and that figure counts.
* `query_full_retention_p95_s` (full check only): the store is filled to `FULL_RETENTION_EVENTS` by copying
  the run's own normalized events with fresh ids and timestamps: 90 % as Parquet objects over `COLD_DAYS`
  days before today (written and verified by `katas.siem.cold`, one object per day, source and chunk), 10 %
  into the hot table over the last minutes (its columns from `katas.siem.storage`; the store's lifecycle
  then moves them to cold as they age, like any event). Then a search over the whole range, repeated; P95.
* Extras: `pipeline_to_broker_ratio` and `broker_produce_msgs_per_s`, `store_catch_up_s`,
  `burst_catch_up_s`, and the largest backlog behind the normalizer and the store during the sustained run.

A measurement that cannot be taken is recorded as NaN with the reason, which the scorecard shows as
"not measured"; a probe that never completes (a marker never found, an alert never delivered, a query that
failed) counts with the time waited, a lower bound, so it fails the row instead of vanishing from it.
"""

# ruff: noqa: S608 - the backfill's SQL is built from katas.siem.storage's constants and values quoted by
# katas.siem.storage.sql_string; the chDB store owner's HTTP interface has no query parameters.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pyarrow.ipc as ipc
from aiokafka import AIOKafkaConsumer
from rich.console import Console
from rich.markup import escape

from katas.catalog import KataCard, get_card
from katas.checking import (
    WebhookTail,
    card_target,
    new_run_dir,
    not_measured,
    percentile,
    print_report,
    sigterm_as_interrupt,
)
from katas.infra import bench, kafka
from katas.infra.clickhouse import ClickHouse, ClickHouseError
from katas.infra.stack import Stack
from katas.scorecard import REPORTS_ROOT, Measurement, Scorecard
from katas.siem import cold as cold_tier
from katas.siem import lifecycle, storage
from katas.siem.load import (
    DEFAULT_BATCH,
    UNIQUELY_TAGGED,
    Attack,
    SiemTraffic,
    marker_event,
)
from katas.siem.search import SearchQuery, search
from katas.siem.storage import EVENTS_TABLE, STORED_COLUMNS, sql_string
from katas.siem.topics import ALERTS
from loadgen import Burst, ConstantRate, LoadResult, run_load
from loadgen.siem import SiemSender

KATA = "siem"
CHECK_RUN_NAME = "siem-check"
HEADROOM = 1.2
"""Offered rate / target rate. The sustained rate is read from the start of the run to the last
acknowledgement, so the last batches' latency (a second or so here) counts against it; offering 20 % more
than the target lets a pipeline that can sustain the target pass, and one that cannot still fails (what it
acknowledges is what it can take). Latencies are therefore measured at the offered rate, above the target."""
SAMPLE_EVERY_S = 0.25
POLL_EVERY_S = 0.5
CATCH_UP_S = 30.0
"""How long after a load phase the hot store may take to hold what ingest acknowledged (the card's
searchable-latency target: an event that takes longer is not "stored" in time)."""
BURST_CATCH_UP_S = 120.0
"""After the burst normalization may still be behind; this is how long it may take to catch up."""
BURST_LAG_S = 1.0
"""The burst's rate is read over its length, this much after it starts (acknowledgements trail sends)."""
MARKER_WAIT_S = 45.0
ALERT_WAIT_S = 30.0
ALERT_PAUSE_S = 1.0
"""Between a scenario's first events and its completing event."""
WARM_UP_S = 120.0
QUERY_TIMEOUT_S = 120.0
DIRECT_SEARCH_TIMEOUT_S = 900.0
FULL_RETENTION_EVENTS = 10_000_000
"""The card's store volume (row `query_full_retention`: at least 10M events across hot and cold)."""
COLD_DAYS = 30
HOT_SHARE = 0.1
HOT_SPAN = timedelta(minutes=8)
BACKFILL_TEMPLATES = 10_000
BACKFILL_CHUNK_ROWS = 100_000
BACKFILL_BYTES_PER_EVENT = 600
"""A generous estimate of the disk a backfilled event takes (Parquet on s3rver, or the hot table)."""
MARKER = re.compile(r"katasmarker-[0-9a-z]+-\d+")

QUERIES_24H: tuple[dict[str, str], ...] = (
    {"q": "Failed password"},
    {"event.outcome": "failure", "event.category": "authentication"},
    {"q": "deny", "labels.transport": "syslog-udp"},
)
"""Last-24-hour investigations (the API's default window): free text, field filters, both."""
FULL_RETENTION_QUERY = {"q": "Accepted password"}
RELIABLE = ("syslog-tcp", "http-json", "http-winxml")
"""Transports that must not lose an event (UDP has no way to push back, see the ingest service)."""


# ------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Plan:
    """What a check run does; rates are in events per second (a load operation is a batch of `batch`)."""

    name: Literal["short", "full"]
    sustained_target: float
    sustained_s: float
    burst_target: float
    burst_base: float
    burst_s: float
    burst_start_s: float
    burst_length_s: float
    batch: int = DEFAULT_BATCH
    marker_every_s: float = 0.5
    alert_every_s: float = 1.0
    queries_24h: int = 15
    bench_seconds: float = 3.0
    backfill_events: int = 0
    full_retention_queries: int = 3

    @property
    def sustained_rate(self) -> float:
        return self.sustained_target * HEADROOM

    @property
    def burst_peak(self) -> float:
        return self.burst_target * HEADROOM

    def sustained_profile(self) -> ConstantRate:
        return ConstantRate(self.sustained_rate / self.batch, self.sustained_s)

    def burst_profile(self) -> Burst:
        return Burst(
            self.burst_base / self.batch,
            self.burst_peak / self.batch,
            self.burst_s,
            self.burst_start_s,
            self.burst_length_s,
        )


def plan_for(card: KataCard, *, short: bool) -> Plan:
    """The card's rates. The full check runs them for the card's durations (60 s sustained, a 10 s burst)
    over the full store volume; the short one (CI's) for 15 s and 8 s, and leaves the full-retention row to
    the full check."""
    sustained = card_target(card, "ingest_events_per_s")
    burst = card_target(card, "burst_ingest_events_per_s")
    if short:
        return Plan("short", sustained, 15, burst, sustained, burst_s=12, burst_start_s=2, burst_length_s=8)
    return Plan(
        "full", sustained, 60, burst, sustained, burst_s=30, burst_start_s=10, burst_length_s=10,
        queries_24h=30, bench_seconds=10, backfill_events=FULL_RETENTION_EVENTS,
    )  # fmt: skip


# -------------------------------------------------------------------------------------- statistics
# ---------------------------------------------------------------------------------------- pipeline
def _metric_values(text: str) -> dict[str, float]:
    """Prometheus text as `name{labels}` -> value."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[key] = float(value)
    return values


def _sum(values: Mapping[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


_TRANSPORT = re.compile(r'transport="([^"]+)"')


@dataclass(frozen=True)
class Counters:
    """The pipeline's counters at one moment (`t`: time.monotonic() when ingest answered)."""

    t: float
    acked: Mapping[str, float]
    """Events the broker acknowledged at ingest, by transport."""
    udp_dropped: float
    udp_kernel_drops: float
    rejected: float
    normalized: float
    dead_lettered: float
    stored: float

    @property
    def acked_total(self) -> float:
        return sum(self.acked.values())

    @property
    def landed(self) -> float:
        """Events that reached the hot store or the dead-letter topic."""
        return self.stored + self.dead_lettered


class Pipeline:
    """Handles on a running SIEM stack: its metrics, the query API, the webhook log."""

    def __init__(self, endpoints: Mapping[str, Any]) -> None:
        self.endpoints = endpoints
        self.http = httpx.AsyncClient(timeout=10.0)
        self.api = httpx.AsyncClient(
            base_url=str(endpoints["query"]),
            headers={"Authorization": f"Bearer {endpoints['analyst_token']}"},
            timeout=QUERY_TIMEOUT_S,
        )
        self.webhook = WebhookTail(Path(str(endpoints["webhook_log"])))
        self._pseudonyms: dict[tuple[str, str], str] = {}

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.api.aclose()

    async def _metrics(self, service: str) -> dict[str, float]:
        response = await self.http.get(f"{self.endpoints[service]}/metrics")
        response.raise_for_status()
        return _metric_values(response.text)

    async def counters(self) -> Counters:
        ingest, normalizer, store = await asyncio.gather(
            self._metrics("ingest"), self._metrics("normalizer"), self._metrics("store")
        )
        acked: dict[str, float] = {}
        for key, value in ingest.items():
            if key.startswith("ingest_events_total{") and (m := _TRANSPORT.search(key)):
                acked[m.group(1)] = acked.get(m.group(1), 0.0) + value
        return Counters(
            t=time.monotonic(),
            acked=acked,
            udp_dropped=_sum(ingest, "ingest_udp_dropped_total"),
            udp_kernel_drops=_sum(ingest, "ingest_udp_kernel_drops"),
            rejected=_sum(ingest, "ingest_rejected_total"),
            normalized=_sum(normalizer, "normalize_events_total"),
            dead_lettered=_sum(normalizer, "normalize_deadletters_total"),
            stored=_sum(store, "store_events_total"),
        )

    async def search(self, params: Mapping[str, str]) -> dict[str, Any]:
        response = await self.api.get("/search", params=dict(params))
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    async def pseudonym(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._pseudonyms:
            response = await self.api.get("/pseudonym", params={"kind": kind, "value": value})
            response.raise_for_status()
            self._pseudonyms[key] = str(response.json()["pseudonym"])
        return self._pseudonyms[key]

    async def alert_records(self) -> list[tuple[float, dict[str, Any]]]:
        """Every record of the alerts topic with its timestamp (epoch s): the correlator's producer stamps
        it when it sends the alert, the moment a rule matched."""
        consumer = AIOKafkaConsumer(bootstrap_servers=str(self.endpoints["kafka"]), enable_auto_commit=False)
        await consumer.start()
        records: list[tuple[float, dict[str, Any]]] = []
        try:
            async for batch in kafka.read_from_start(consumer, await kafka.partitions_of(consumer, ALERTS)):
                for record in batch:
                    with contextlib.suppress(ValueError, TypeError):
                        records.append((record.timestamp / 1000, json.loads(record.value or b"")))
        finally:
            await consumer.stop()
        return records

    def new_webhook_lines(self) -> list[dict[str, Any]]:
        """Webhook lines appended since the last call (whole lines only)."""
        return self.webhook.new_lines()


class Sampler:
    """Samples the pipeline's counters every `SAMPLE_EVERY_S` while it runs."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.samples: list[Counters] = []

    async def run(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                self.samples.append(await self.pipe.counters())
            await asyncio.sleep(SAMPLE_EVERY_S)

    def throughput(self, phase: PhaseLoad, value: Callable[[Counters], float]) -> tuple[float, float]:
        """(events per second, seconds) of `value`'s increase over a load phase, from the first sample that
        saw it rise to the one at which it reached its final count: a pipeline that keeps up with a steady
        delay measures at the offered rate, one that falls behind at the rate it drains."""
        start, final = value(phase.before), value(phase.after)
        during = [c for c in self.samples if phase.start <= c.t < phase.after.t] + [phase.after]
        first = next((c for c in during if value(c) > start), None)
        last = next((c for c in during if value(c) >= final), None)
        if first is None or last is None or last.t <= first.t:
            return 0.0, 0.0
        return (final - value(first)) / (last.t - first.t), last.t - first.t

    def rate(self, start: float, end: float, value: Callable[[Counters], float]) -> tuple[float, float]:
        """(per-second rate of `value`, seconds it spans) between the first sample at or after `start` and
        the last at or before `end` (monotonic times)."""
        inside = [c for c in self.samples if start <= c.t <= end]
        if len(inside) < 2:
            raise RuntimeError(f"fewer than two metric samples between {start:.1f} and {end:.1f}")
        first, last = inside[0], inside[-1]
        return (value(last) - value(first)) / (last.t - first.t), last.t - first.t


# ------------------------------------------------------------------------------------------ probes
class MarkerProbe:
    """Marker events with unique text, and the time each became searchable."""

    def __init__(self, pipe: Pipeline, traffic: SiemTraffic) -> None:
        self.pipe = pipe
        self.traffic = traffic
        self.prefix = f"katasmarker-{traffic.run}"
        self.sent: dict[str, float] = {}
        self.found: dict[str, float] = {}
        self.since = datetime.now(UTC) - timedelta(minutes=5)
        self.sending = True
        self.errors: Counter[str] = Counter()
        self._serial = itertools.count(1)

    async def send_one(self) -> None:
        token = f"{self.prefix}-{next(self._serial)}"
        transport: Literal["syslog-tcp", "http-json"] = "syslog-tcp" if len(self.sent) % 2 else "http-json"
        moment = time.time()
        self.sent[token] = moment
        await self.traffic.send([marker_event(token, transport, moment)])

    async def send_every(self, every_s: float, until: float) -> None:
        """A marker every `every_s` until `until`, each sent without waiting for the one before."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while time.monotonic() < until:
                task = asyncio.create_task(self.send_one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(every_s)
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    self.errors[type(outcome).__name__] += 1
        finally:
            for task in tasks:
                task.cancel()
            self.sending = False

    async def poll(self, wait_after_s: float) -> None:
        """Search for the markers until every one was found, or `wait_after_s` after the last was sent."""
        since = self.since.strftime("%Y-%m-%dT%H:%M:%SZ")
        while True:
            try:
                result = await self.pipe.search({"q": self.prefix, "from": since, "limit": "1000"})
            except httpx.HTTPError as exc:
                self.errors[type(exc).__name__] += 1
            else:
                now = time.time()
                for event in result.get("events", []):
                    for token in MARKER.findall(str(event.get("message", ""))):
                        if token in self.sent and token not in self.found:
                            self.found[token] = now
            if not self.sending:
                if len(self.found) >= len(self.sent):
                    return
                if time.time() > max(self.sent.values(), default=0.0) + wait_after_s:
                    return
            await asyncio.sleep(POLL_EVERY_S)

    def latencies(self) -> tuple[list[float], int]:
        """(latency of every marker, found or not: a missing one counts with the time waited), missing."""
        now = time.time()
        values = [self.found.get(token, now) - sent for token, sent in self.sent.items()]
        return values, len(self.sent) - len(self.found)


@dataclass
class AlertInjection:
    attack: Attack
    expected: str
    """The value the alert's group must hold (the tag, or its pseudonym)."""
    sent_at: float = 0.0
    matched_at: float | None = None
    """When the correlator sent the alert (its record's timestamp on the alerts topic)."""
    delivered_at: float | None = None


class AlertProbe:
    """Attack scenarios with values of their own, and the delivery time of each one's alert."""

    def __init__(self, pipe: Pipeline, traffic: SiemTraffic) -> None:
        self.pipe = pipe
        self.traffic = traffic
        self.injections: list[AlertInjection] = []
        self.errors: Counter[str] = Counter()
        self.deliveries: Counter[str] = Counter()
        """Webhook deliveries seen while waiting, by kind (new, escalated), the fleet's own included."""
        self._scenarios = itertools.cycle(UNIQUELY_TAGGED)
        self._tasks: set[asyncio.Task[None]] = set()

    async def inject(self, scenario: str | None = None) -> AlertInjection:
        attack = self.traffic.attack(scenario or next(self._scenarios), reliable=True)
        lookup = (
            self.pipe.pseudonym(attack.tag_kind, attack.tag)
            if attack.tag_kind is not None
            else _value(attack.tag)
        )
        expected, _ = await asyncio.gather(lookup, self.traffic.send(attack.before))
        injection = AlertInjection(attack, expected)
        await asyncio.sleep(ALERT_PAUSE_S)
        injection.sent_at = time.time()
        self.injections.append(injection)
        await self.traffic.send([attack.completing_event])
        if attack.after:
            await self.traffic.send(attack.after)
        return injection

    async def _inject_counted(self) -> None:
        try:
            await self.inject()
        except (httpx.HTTPError, OSError) as exc:
            self.errors[type(exc).__name__] += 1

    async def inject_every(self, every_s: float, until: float) -> None:
        try:
            while time.monotonic() < until:
                task = asyncio.create_task(self._inject_counted())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(every_s)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def match(self, lines: Sequence[Mapping[str, Any]]) -> None:
        for line in lines:
            payload = line.get("payload")
            if not isinstance(payload, dict):
                continue
            self.deliveries[str(payload.get("kind", "?")).split(" ")[0]] += 1
            if payload.get("kind") != "new":
                continue
            values = {str(v) for v in (payload.get("group") or {}).values()}
            for injection in self.injections:
                if injection.delivered_at is None and injection.expected in values:
                    injection.delivered_at = _epoch(payload.get("delivered_at"), line.get("received_at"))

    async def wait(self, wait_after_s: float) -> None:
        deadline = time.time() + wait_after_s
        while True:
            self.match(self.pipe.new_webhook_lines())
            if all(i.delivered_at is not None for i in self.injections) or time.time() > deadline:
                return
            await asyncio.sleep(0.25)

    def latencies(self) -> tuple[list[float], int]:
        now = time.time()
        values = [(i.delivered_at or now) - i.sent_at for i in self.injections]
        return values, sum(i.delivered_at is None for i in self.injections)

    async def find_matches(self) -> None:
        """When each injection's rule matched, from the alerts topic."""
        for stamp, alert in sorted(await self.pipe.alert_records(), key=lambda r: r[0]):
            values = (
                {str(v) for v in (alert.get("group") or {}).values()} if isinstance(alert, dict) else set()
            )
            for injection in self.injections:
                if injection.matched_at is None and injection.expected in values:
                    injection.matched_at = stamp

    def match_to_notification(self) -> list[float]:
        """Per injection, from the correlation match to the webhook's delivery. One never delivered counts
        with the time waited since its completing event was sent (a lower bound that fails the row), as
        does one whose alert never reached the alerts topic."""
        now = time.time()
        return [
            (i.delivered_at if i.delivered_at is not None else now)
            - (i.matched_at if i.matched_at is not None else i.sent_at)
            for i in self.injections
        ]

    def missed(self) -> str:
        missing = Counter(i.attack.scenario for i in self.injections if i.delivered_at is None)
        return ", ".join(f"{name} x{n}" for name, n in sorted(missing.items()))


async def _value(value: str) -> str:
    return value


def _epoch(delivered_at: Any, received_at: Any) -> float:
    if isinstance(delivered_at, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(delivered_at).timestamp()
    return float(received_at)


# --------------------------------------------------------------------------------------- the check
@dataclass
class PhaseLoad:
    result: LoadResult
    start: float
    sent: Counter[str]
    before: Counters
    after: Counters
    catch_up_s: float
    caught_up: bool


@dataclass
class CheckRun:
    """One check's measurements on a running stack."""

    plan: Plan
    pipe: Pipeline
    traffic: SiemTraffic
    sampler: Sampler
    console: Console
    progress: bool
    measured: dict[str, Measurement] = field(default_factory=dict)
    results: list[LoadResult] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def put(self, m: Measurement) -> None:
        self.measured[m.metric] = m
        value = "not measured" if math.isnan(m.value) else f"{m.value:,.3g} {m.unit}".rstrip()
        detail = f"  [dim]({escape(m.detail)})[/]" if m.detail else ""
        self.console.print(f"  {escape(m.metric)}: {value}{detail}", highlight=False)

    # -- warm-up ----------------------------------------------------------------------------------------
    async def warm_up(self) -> None:
        """Wait until every stage consumes: a marker is searchable and an attack raised its alert."""
        self.say("warm-up: waiting for a marker to be searchable and an alert to be delivered")
        started = time.monotonic()
        markers, alerts = MarkerProbe(self.pipe, self.traffic), AlertProbe(self.pipe, self.traffic)
        markers.sending = False
        await asyncio.gather(markers.send_one(), alerts.inject("ssh-bruteforce"))
        await asyncio.gather(markers.poll(WARM_UP_S), alerts.wait(WARM_UP_S))
        missing = []
        if not markers.found:
            missing.append("the marker was never found by a search")
        if alerts.latencies()[1]:
            missing.append("the attack's alert never reached the webhook")
        if missing:
            raise CheckError(f"the pipeline did not come up within {WARM_UP_S:.0f} s: {', '.join(missing)}")
        self.say(f"  pipeline up after {time.monotonic() - started:.1f} s")

    # -- load phases ------------------------------------------------------------------------------------
    async def _settle(
        self, sent0: Counter[str], before: Counters, timeout_s: float
    ) -> tuple[float, bool, Counters]:
        started = time.monotonic()
        while True:
            now = await self.pipe.counters()
            sent = self.traffic.sent.events - sent0
            reliable_sent = sum(sent[t] for t in RELIABLE)
            reliable_acked = sum(now.acked.get(t, 0.0) - before.acked.get(t, 0.0) for t in RELIABLE)
            acked = now.acked_total - before.acked_total
            landed = now.landed - before.landed
            if reliable_acked >= reliable_sent and landed >= acked:
                return now.t - started, True, now
            if time.monotonic() - started > timeout_s:
                return now.t - started, False, now
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def _load(self, label: str, profile: ConstantRate | Burst, catch_up_s: float) -> PhaseLoad:
        sent0 = Counter(self.traffic.sent.events)
        before = await self.pipe.counters()
        start = time.monotonic()
        result = await run_load(profile, self.traffic.operation, label=label, progress=self.progress)
        self.results.append(result)
        self.say(f"  {result.summary_line()}")
        catch_up, caught_up, after = await self._settle(sent0, before, catch_up_s)
        return PhaseLoad(result, start, self.traffic.sent.events - sent0, before, after, catch_up, caught_up)

    def _backlog(self, metric: str, phase: PhaseLoad, done: Callable[[Counters], float]) -> Measurement:
        """The most events acknowledged at ingest and not yet through a stage, during and after the load."""
        during = [c for c in self.sampler.samples if phase.start <= c.t <= phase.after.t]
        most = max(
            ((c.acked_total - phase.before.acked_total) - (done(c) - done(phase.before)) for c in during),
            default=math.nan,
        )
        return Measurement(
            metric, most, "events", "sustained run: acknowledged at ingest, not yet through it"
        )

    def _shares(self, phase: PhaseLoad) -> tuple[float, float, str]:
        """(share of acknowledged events that landed, share of reliable events acknowledged, detail)."""
        acked = phase.after.acked_total - phase.before.acked_total
        landed = phase.after.landed - phase.before.landed
        reliable_sent = sum(phase.sent[t] for t in RELIABLE)
        reliable_acked = sum(phase.after.acked.get(t, 0.0) - phase.before.acked.get(t, 0.0) for t in RELIABLE)
        udp_sent = phase.sent["syslog-udp"]
        udp_acked = phase.after.acked.get("syslog-udp", 0.0) - phase.before.acked.get("syslog-udp", 0.0)
        dropped = phase.after.udp_dropped - phase.before.udp_dropped
        kernel = phase.after.udp_kernel_drops - phase.before.udp_kernel_drops
        refused = phase.after.rejected - phase.before.rejected
        landed_share = min(1.0, landed / acked) if acked else 0.0
        reliable_share = min(1.0, reliable_acked / reliable_sent) if reliable_sent else 1.0
        caught = (
            f"stored or dead-lettered within {phase.catch_up_s:.1f} s after the load"
            if phase.caught_up
            else f"only {landed:,.0f} stored or dead-lettered {phase.catch_up_s:.0f} s after the load"
        )
        detail = (
            f"{acked:,.0f} acknowledged of {phase.sent.total():,} sent; HTTP and TCP {reliable_acked:,.0f} of "
            f"{reliable_sent:,}; UDP {udp_acked:,.0f} of {udp_sent:,} ({dropped:,.0f} dropped by ingest, "
            f"{kernel:,.0f} by the kernel's full receive buffer); ingest refused {refused:,.0f} requests (busy, too large); {caught}"
        )
        return landed_share, reliable_share, detail

    async def sustained(self) -> None:
        plan = self.plan
        self.say(
            f"sustained: {plan.sustained_rate:,.0f} events/s offered for {plan.sustained_s:g} s "
            f"(target {plan.sustained_target:,.0f}), markers every {plan.marker_every_s:g} s, "
            f"an attack every {plan.alert_every_s:g} s"
        )
        markers, alerts = MarkerProbe(self.pipe, self.traffic), AlertProbe(self.pipe, self.traffic)
        until = time.monotonic() + plan.sustained_s
        side = [
            asyncio.create_task(markers.send_every(plan.marker_every_s, until)),
            asyncio.create_task(markers.poll(MARKER_WAIT_S)),
            # the last injection's completing event still leaves within the run
            asyncio.create_task(alerts.inject_every(plan.alert_every_s, until - ALERT_PAUSE_S - 0.5)),
        ]
        try:
            phase = await self._load(
                f"sustained {plan.sustained_rate:,.0f} events/s", plan.sustained_profile(), CATCH_UP_S
            )
            await asyncio.gather(*side)
            await alerts.wait(ALERT_WAIT_S)
            await alerts.find_matches()
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)

        acked_rate, acked_span = self.sampler.throughput(phase, lambda c: c.acked_total)
        stored_rate, stored_span = self.sampler.throughput(phase, lambda c: c.landed)
        _, _, detail = self._shares(phase)
        self.put(
            Measurement(
                "ingest_events_per_s",
                min(acked_rate, stored_rate),
                "events/s",
                f"the lower of: acknowledged at ingest {acked_rate:,.0f}/s (first to last acknowledgement, "
                f"{acked_span:.1f} s) and stored {stored_rate:,.0f}/s (first to last insert, {stored_span:.1f} s), "
                f"in a {plan.sustained_s:g} s run at {plan.sustained_rate:,.0f} events/s offered (batches of "
                f"{plan.batch}); {detail}",
            )
        )
        self.put(
            Measurement(
                "store_catch_up_s",
                phase.catch_up_s,
                "s",
                "sustained run: until all acknowledged events were stored",
            )
        )
        self.put(
            self._backlog("normalizer_backlog_max_events", phase, lambda c: c.normalized + c.dead_lettered)
        )
        self.put(self._backlog("store_backlog_max_events", phase, lambda c: c.landed))

        latencies, missing = markers.latencies()
        if latencies:
            self.put(
                Measurement(
                    "searchable_latency_p99_s",
                    percentile(latencies, 99),
                    "s",
                    f"{len(latencies)} markers (syslog TCP and HTTP JSON), P50 {percentile(latencies, 50):.2f} s, "
                    f"max {max(latencies):.2f} s; {missing} never found within {MARKER_WAIT_S:.0f} s"
                    + (f"; search errors {dict(markers.errors)}" if markers.errors else ""),
                )
            )
        else:
            self.put(not_measured("searchable_latency_p99_s", "s", "no marker could be sent"))

        latencies, missing = alerts.latencies()
        matched = alerts.match_to_notification()
        scenarios = len({i.attack.scenario for i in alerts.injections})
        if matched:
            self.put(
                Measurement(
                    "alert_latency_p99_s",
                    percentile(matched, 99),
                    "s",
                    f"from the correlation match (the correlator emitting the alert: its record's timestamp on "
                    f"{ALERTS}) to the webhook's delivery; {len(matched)} injections of {scenarios} scenarios, "
                    f"P50 {percentile(matched, 50):.2f} s, max {max(matched):.2f} s; {missing} not delivered "
                    f"within {ALERT_WAIT_S:.0f} s"
                    + (f" ({alerts.missed()})" if missing else "")
                    + f"; webhook deliveries meanwhile, the fleet's own alerts included: {dict(alerts.deliveries)}"
                    + (f"; injection errors {dict(alerts.errors)}" if alerts.errors else ""),
                )
            )
            self.put(
                Measurement(
                    "alert_source_to_notification_p99_s",
                    percentile(latencies, 99),
                    "s",
                    f"the whole path: from sending the completing event through ingest, normalizer, correlator "
                    f"and alerter to the webhook's delivery; P50 {percentile(latencies, 50):.2f} s, "
                    f"max {max(latencies):.2f} s",
                )
            )
        else:
            self.put(not_measured("alert_latency_p99_s", "s", "no attack could be injected"))

    async def burst(self) -> None:
        plan = self.plan
        profile = plan.burst_profile()
        self.say(
            f"burst: {plan.burst_peak:,.0f} events/s offered for {plan.burst_length_s:g} s "
            f"(target {plan.burst_target:,.0f}) within {plan.burst_base:,.0f} events/s for {plan.burst_s:g} s"
        )
        self.traffic.pregenerate(profile.intended_count())
        phase = await self._load(f"burst {plan.burst_peak:,.0f} events/s", profile, BURST_CATCH_UP_S)
        # acknowledgements trail the sends: the window is the burst's, a second later
        window_start = phase.start + plan.burst_start_s + BURST_LAG_S
        window_end = window_start + plan.burst_length_s
        rate, spanned = self.sampler.rate(window_start, window_end, lambda c: c.acked_total)
        landed_share, reliable_share, detail = self._shares(phase)
        self.put(
            Measurement(
                "burst_ingest_events_per_s",
                rate * reliable_share,
                "events/s",
                f"acknowledged at {rate:,.0f}/s over {spanned:.1f} s from {BURST_LAG_S:g} s into the burst; "
                f"{detail}; normalization caught up: {'yes' if phase.caught_up else 'no'} "
                f"({landed_share:.1%} landed)",
            )
        )
        self.put(
            Measurement("burst_catch_up_s", phase.catch_up_s, "s", "until the burst's events were all stored")
        )

    # -- queries ----------------------------------------------------------------------------------------
    async def _timed_queries(
        self, queries: Sequence[Mapping[str, str]], count: int
    ) -> tuple[list[float], Counter[str], int]:
        times: list[float] = []
        errors: Counter[str] = Counter()
        rows = 0
        for params in itertools.islice(itertools.cycle(queries), count):
            started = time.perf_counter()
            try:
                found = await self.pipe.search({**params, "limit": "100"})
                rows = max(rows, int(found.get("total", 0)))
            except httpx.HTTPStatusError as exc:
                errors[f"HTTP {exc.response.status_code}"] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
            times.append(time.perf_counter() - started)
        return times, errors, rows

    async def query_24h(self) -> None:
        self.say(f"query: {self.plan.queries_24h} last-24-hour searches")
        times, errors, rows = await self._timed_queries(QUERIES_24H, self.plan.queries_24h)
        hot = await self._hot_events()
        self.put(
            Measurement(
                "query_24h_p95_s",
                percentile(times, 95),
                "s",
                f"{len(times)} searches one after another ({len(QUERIES_24H)} kinds: free text, field filters, "
                f"both) through the query API over {hot:,} hot events, up to {rows:,} matches; P50 "
                f"{percentile(times, 50):.3f} s, max {max(times):.3f} s"
                + (f"; failed (counted with their time): {dict(errors)}" if errors else ""),
            )
        )

    async def _hot_events(self) -> int:
        async with ClickHouse(str(self.pipe.endpoints["chdb"])) as ch:
            return await storage.count_events(ch, distinct=False)

    async def full_retention(self, card: KataCard) -> None:
        plan = self.plan
        metric = "query_full_retention_p95_s"
        if plan.backfill_events <= 0:
            self.put(
                not_measured(
                    metric,
                    "s",
                    f"the short check stores about a minute of events, not the {FULL_RETENTION_EVENTS:,} "
                    "the card asks for; `katas check siem` fills the store and measures it",
                )
            )
            return
        try:
            filled = await backfill(
                self.pipe.endpoints, plan.backfill_events, cold_bucket(card), say=self.say
            )
        except BackfillError as exc:
            self.put(not_measured(metric, "s", str(exc)))
            return
        await self.query_24h()  # again, over the filled store: this figure replaces the first
        self.say(
            f"query: {plan.full_retention_queries} searches over the whole retention ({filled.describe()})"
        )
        await self.direct_search(filled, cold_bucket(card))
        params = {**FULL_RETENTION_QUERY, "from": filled.earliest.strftime("%Y-%m-%dT%H:%M:%SZ")}
        times, errors, rows = await self._timed_queries([params], plan.full_retention_queries)
        self.put(
            Measurement(
                metric,
                percentile(times, 95),
                "s",
                f"{len(times)} searches for {FULL_RETENTION_QUERY['q']!r} from {params['from']} to now over "
                f"{filled.describe()}; {rows:,} matches; times {', '.join(f'{t:.1f}' for t in times)} s"
                + (f"; failed (counted with their time): {dict(errors)}" if errors else ""),
            )
        )

    async def direct_search(self, filled: Backfilled, bucket: str) -> None:
        """The same search straight through `katas.siem.search` against the store, without the query API
        and its store client's timeout: how long the query itself takes (an extra, not the NFR row)."""
        endpoints = self.pipe.endpoints
        query = SearchQuery(
            start=filled.earliest, end=datetime.now(UTC), q=FULL_RETENTION_QUERY["q"], limit=100
        )
        store = cold_tier.ColdStore(str(endpoints["s3"]), bucket)
        started = time.perf_counter()
        try:
            async with ClickHouse(str(endpoints["chdb"]), timeout_s=DIRECT_SEARCH_TIMEOUT_S) as ch:
                result = await search(ch, store, query)
        except (ClickHouseError, httpx.HTTPError) as exc:
            self.put(
                not_measured(
                    "full_retention_search_in_store_s", "s", f"{type(exc).__name__}: {str(exc)[:300]}"
                )
            )
            return
        self.put(
            Measurement(
                "full_retention_search_in_store_s",
                time.perf_counter() - started,
                "s",
                f"one search for {query.q!r} over {filled.describe()} through katas.siem.search straight "
                f"against the store (no API): {result.total:,} matches",
            )
        )


class CheckError(RuntimeError):
    """The check could not run (the pipeline never came up, a phase could not be measured)."""


# --------------------------------------------------------------------------------------- backfill
class BackfillError(RuntimeError):
    """The store could not be filled to the card's volume; the reason becomes the row's note."""


@dataclass(frozen=True)
class Backfilled:
    hot: int
    cold: int
    objects: int
    earliest: datetime
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.hot + self.cold:,} events: {self.hot:,} hot, {self.cold:,} cold in {self.objects:,} "
            f"Parquet objects from {self.earliest:%Y-%m-%d}, filled in {self.seconds:.0f} s"
        )


def cold_bucket(card: KataCard) -> str:
    for server in card.stack.servers:
        if server.kind == "s3rver" and server.options.get("buckets"):
            return str(server.options["buckets"]).split(",")[0]
    raise LookupError(f"the {card.id} stack has no s3rver bucket")


def _ts_text(column: str) -> str:
    """SQL for a DateTime64(3) column as the normalized events write @timestamp (RFC 3339, ms, Z)."""
    return (
        f"concat(formatDateTime({column}, '%Y-%m-%dT%H:%i:%S'), '.', "
        f"leftPad(toString(toUnixTimestamp64Milli({column}) % 1000), 3, '0'), 'Z')"
    )


TEMPLATE_TABLE = "katas_check_backfill_templates"
"""The events the backfill copies, kept apart from the hot table while it runs (the lifecycle moves the
originals on as they age), dropped afterwards."""


def copies_sql(rows: int, templates: int, first_ms: int, step_ms: float) -> str:
    """SELECT of `rows` copies of the template rows (each template in turn), the i-th with a fresh event id
    and the timestamp `first_ms + i * step_ms`, its JSON and free text rewritten to match. Columns in
    `STORED_COLUMNS` order."""
    inner = ", ".join(f"t.{c} AS src_{c}" for c in STORED_COLUMNS)
    outer = []
    for c in STORED_COLUMNS:
        if c == "timestamp":
            outer.append(
                f"fromUnixTimestamp64Milli(toInt64({first_ms} + i * {step_ms!r}), 'UTC') AS timestamp"
            )
        elif c == "event_id":
            outer.append("toString(generateUUIDv7(i)) AS event_id")
        elif c in ("event_json", "search_text"):
            outer.append(
                f"replaceOne(replaceOne(src_{c}, src_event_id, event_id), {_ts_text('src_timestamp')}, "
                f"{_ts_text('timestamp')}) AS {c}"
            )
        else:
            outer.append(f"src_{c} AS {c}")
    copies = math.ceil(rows / templates)
    return (
        f"SELECT {', '.join(outer)} FROM ("
        f"SELECT {inner}, n.number * {templates} + t.r AS i "
        f"FROM (SELECT *, rowNumberInAllBlocks() AS r FROM {TEMPLATE_TABLE}) AS t "
        f"CROSS JOIN numbers({copies}) AS n) WHERE i < {rows}"
    )


async def _make_templates(ch: ClickHouse, limit: int) -> int:
    """Copy up to `limit` of the run's own normalized events into `TEMPLATE_TABLE`, from a few sources of
    each kind (so the cold tier gets a handful of objects per day, not one per source of the fleet);
    returns how many."""
    rows = await ch.rows(
        f"SELECT labels_source AS source, count() AS n FROM {EVENTS_TABLE} "
        "WHERE labels_source != 'probe-marker' GROUP BY source ORDER BY n DESC"
    )
    per_kind: dict[str, list[str]] = {}
    for row in rows:
        kind = str(row["source"]).split("-")[0]
        if len(per_kind.setdefault(kind, [])) < 2:
            per_kind[kind].append(str(row["source"]))
    sources = [s for chosen in per_kind.values() for s in chosen][:12]
    if not sources:
        raise BackfillError("the hot store holds no events to copy")
    columns = ", ".join(STORED_COLUMNS)
    await ch.execute(f"DROP TABLE IF EXISTS {TEMPLATE_TABLE}")
    await ch.execute(
        f"CREATE TABLE {TEMPLATE_TABLE} ENGINE = Memory AS SELECT {columns} FROM {EVENTS_TABLE} "
        f"WHERE labels_source IN ({', '.join(sql_string(s) for s in sources)}) ORDER BY event_id LIMIT {limit}"
    )
    return int(await ch.scalar(f"SELECT count() FROM {TEMPLATE_TABLE}") or 0)


async def backfill(
    endpoints: Mapping[str, Any], total: int, bucket: str, *, say: Callable[[str], None] = print
) -> Backfilled:
    """Fill the store to `total` events: `1 - HOT_SHARE` of them as Parquet over `COLD_DAYS` days before
    today, the rest in the hot table over the last `HOT_SPAN`. Raises BackfillError when it cannot."""
    need = total * BACKFILL_BYTES_PER_EVENT
    free = shutil.disk_usage(Path(str(endpoints["webhook_log"])).parent).free
    if free < need * 2:
        raise BackfillError(
            f"{free / 2**30:.1f} GiB free on disk, {need * 2 / 2**30:.1f} GiB needed for {total:,} events"
        )
    started = time.monotonic()
    store = cold_tier.ColdStore(str(endpoints["s3"]), bucket)
    async with ClickHouse(str(endpoints["chdb"]), timeout_s=600) as ch:
        templates = await _make_templates(ch, BACKFILL_TEMPLATES)
        try:
            if templates < 100:
                raise BackfillError(f"only {templates} events in the hot store to copy from")
            hot_total = int(total * HOT_SHARE)
            cold_total = total - hot_total
            per_day = math.ceil(cold_total / COLD_DAYS)
            first_day = datetime.now(UTC).date() - timedelta(days=COLD_DAYS)
            say(
                f"backfill: {total:,} events copied from {templates:,} of the run's own: {cold_total:,} cold "
                f"over {COLD_DAYS} days from {first_day}, {hot_total:,} hot"
            )
            cold_rows = objects = 0
            step = 86_400_000 / per_day
            for n in range(COLD_DAYS):
                day = first_day + timedelta(days=n)
                day_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
                for chunk, done in enumerate(range(0, per_day, BACKFILL_CHUNK_ROWS)):
                    rows = min(BACKFILL_CHUNK_ROWS, per_day - done)
                    sql = copies_sql(rows, templates, int(day_ms + done * step), step)
                    body = await ch.execute(f"{sql} ORDER BY labels_source, timestamp FORMAT ArrowStream")
                    for source, part in lifecycle.split_by_source(ipc.open_stream(body).read_all()):
                        key = cold_tier.object_key(day, source, f"backfill-{day:%Y%m%d}-{chunk:03d}")
                        cold_rows += (await cold_tier.put_parquet(store, key, part)).rows
                        objects += 1
                say(f"  {day}: {cold_rows:,} events cold so far ({time.monotonic() - started:.0f} s)")
            span_ms = HOT_SPAN.total_seconds() * 1000
            first_ms = int(time.time() * 1000 - span_ms)
            step = span_ms / max(hot_total, 1)
            columns = ", ".join(STORED_COLUMNS)
            for done in range(0, hot_total, BACKFILL_CHUNK_ROWS * 5):
                rows = min(BACKFILL_CHUNK_ROWS * 5, hot_total - done)
                sql = copies_sql(rows, templates, int(first_ms + done * step), step)
                await ch.execute(f"INSERT INTO {EVENTS_TABLE} ({columns}) {sql}")
            hot = await storage.count_events(ch, distinct=False)
            say(f"  hot: {hot:,} events in the hot table")
        finally:
            await ch.execute(f"DROP TABLE IF EXISTS {TEMPLATE_TABLE}")
    earliest = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    if hot + cold_rows < total:
        raise BackfillError(
            f"the store holds {hot + cold_rows:,} events after the backfill, fewer than {total:,}"
        )
    return Backfilled(hot, cold_rows, objects, earliest, time.monotonic() - started)


# ------------------------------------------------------------------------------------ broker ceiling
def broker_ceiling(seconds: float) -> bench.BenchResult:
    """`katas.infra.bench`'s kafka.produce row, measured now on servers of its own."""
    measurement = next(m for m in bench.MEASUREMENTS if any(name == "kafka.produce" for name, _ in m.rows))
    try:
        rows = measurement.run(seconds)
    except Exception as exc:  # the check goes on without its ratio
        return bench.BenchResult("kafka.produce", 0.0, "msgs/s", "", error=f"{type(exc).__name__}: {exc}")
    return next(r for r in rows if r.name == "kafka.produce")


def ratio_measurement(measured: Mapping[str, Measurement], ceiling: bench.BenchResult) -> Measurement:
    pipeline = measured.get("ingest_events_per_s")
    if pipeline is None or math.isnan(pipeline.value):
        return not_measured("pipeline_to_broker_ratio", "", "the pipeline's throughput was not measured")
    if not ceiling.ok:
        return not_measured("pipeline_to_broker_ratio", "", f"kafka.produce failed: {ceiling.error}")
    return Measurement(
        "pipeline_to_broker_ratio",
        pipeline.value / ceiling.value,
        "",
        f"ingest_events_per_s {pipeline.value:,.0f} / kafka.produce {ceiling.value:,.0f} msgs/s "
        f"(katas.infra.bench in this run: {ceiling.detail})",
    )


# -------------------------------------------------------------------------------------------- run
@dataclass
class CheckReport:
    scorecard: Scorecard
    report_dir: Path
    plan: Plan
    card: KataCard
    run_dir: Path


async def measure(
    endpoints: Mapping[str, Any],
    plan: Plan,
    card: KataCard,
    *,
    seed: int = 0,
    console: Console | None = None,
    progress: bool = True,
) -> tuple[dict[str, Measurement], list[LoadResult]]:
    """Every phase of the check against a running stack; returns the measurements and the load results."""
    pipe = Pipeline(endpoints)
    try:
        async with SiemSender(endpoints) as sender:
            traffic = SiemTraffic(sender, batch=plan.batch, seed=seed)
            sampler = Sampler(pipe)
            sampling = asyncio.create_task(sampler.run())
            run = CheckRun(plan, pipe, traffic, sampler, console or Console(stderr=True), progress)
            try:
                await run.warm_up()
                await run.sustained()
                await run.burst()
                await run.query_24h()
                await run.full_retention(card)
            finally:
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            return run.measured, run.results
    finally:
        await pipe.aclose()


def run_check(
    plan: Plan,
    *,
    seed: int = 0,
    run_dir: Path | None = None,
    reports_root: Path = REPORTS_ROOT,
    keep_run_dir: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> CheckReport:
    """Measure the broker ceiling, start a stack of its own, measure, stop it; write the scorecard."""
    out = console or Console()
    card = get_card(KATA)
    folder = run_dir or new_run_dir(CHECK_RUN_NAME)
    out.print(f"[bold]katas check {KATA}[/] ({plan.name}): stack in {escape(str(folder))}", highlight=False)
    out.print(
        f"broker ceiling: katas.infra.bench kafka.produce for {plan.bench_seconds:g} s", highlight=False
    )
    ceiling = broker_ceiling(plan.bench_seconds)
    out.print(
        f"  kafka.produce: {ceiling.value:,.0f} msgs/s"
        if ceiling.ok
        else f"  kafka.produce failed: {ceiling.error}",
        highlight=False,
        markup=False,
    )
    out.print("starting the stack", highlight=False)
    started = time.monotonic()
    try:
        with Stack.for_card(card, run_dir=folder / KATA) as stack:
            out.print(f"  up in {time.monotonic() - started:.1f} s", highlight=False)
            measured, results = asyncio.run(
                measure(stack.endpoints(), plan, card, seed=seed, console=out, progress=progress)
            )
    except BaseException:
        out.print(f"the stack is stopped; its logs are in {folder / KATA}", highlight=False, markup=False)
        raise
    measured["pipeline_to_broker_ratio"] = ratio_measurement(measured, ceiling)
    if ceiling.ok:
        measured["broker_produce_msgs_per_s"] = Measurement(
            "broker_produce_msgs_per_s",
            ceiling.value,
            "msgs/s",
            f"katas.infra.bench kafka.produce: {ceiling.detail}",
        )
    scorecard = Scorecard(card, measured, results)
    report_dir = scorecard.write(reports_root)
    if not keep_run_dir and run_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
    return CheckReport(scorecard, report_dir, plan, card, folder)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"katas check {KATA}", description="Measure the SIEM's NFRs on a stack of its own."
    )
    p.add_argument(
        "--short",
        action="store_true",
        help="the short check: the card's rates over shorter runs (under 2 minutes)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated fleet")
    p.add_argument(
        "--backfill-events",
        type=int,
        default=None,
        help=f"full check: events to fill the store with (default {FULL_RETENTION_EVENTS:,}, the card's volume)",
    )
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, data) afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    card = get_card(KATA)
    plan = plan_for(card, short=options.short)
    if options.backfill_events is not None:
        plan = replace(plan, backfill_events=max(0, options.backfill_events))
    console = Console()
    try:
        with sigterm_as_interrupt():  # stop the stack on SIGTERM as on Ctrl-C
            report = run_check(
                plan,
                seed=options.seed,
                keep_run_dir=options.keep,
                progress=not options.no_progress,
                console=console,
            )
    except KeyboardInterrupt:
        console.print("interrupted: the check's stack was stopped", highlight=False)
        return 130
    except CheckError as exc:
        console.print(f"[red]check failed:[/] {escape(str(exc))}", highlight=False)
        return 1
    return print_report(console, report.scorecard, report.report_dir)
