"""`katas check sensors [--short]`: start a sensors stack of its own, drive it, measure the card's NFRs,
write the scorecard.

    katas check sensors --short   # CI's check, about 4 minutes: the card's rate for 80 s, 3 history queries
    katas check sensors           # the documented one, about 8 minutes: the card's rate for 300 s, 20 queries

(`python -m katas.sensors.check [--short]` runs the same.) Of either, the month's backfill takes 40-90 s
on two cores, the rest is stack start, load and queries.

The check starts its own stack from the card in a fresh run directory under `.katas/sensors-check/` (so it
never touches a stack of `katas up sensors`) serving the full fleet of the settings (`SensorsSettings`: 50
buildings of 1,000 sensors), and stops it at the end, also on error, Ctrl-C or SIGTERM. Before the stack
starts it runs two rows of `katas bench infra` on servers of their own, `mqtt.qos1` (Mosquitto from a paho
client) and `kafka.produce` (tansu from an aiokafka producer), so the pipeline's throughput can be read as a
fraction of what the raw broker and log take on this machine (`ingest_vs_mqtt_ratio`,
`ingest_vs_broker_ratio`: informational rows, without a target).

**Load.** The load generator (`katas.sensors.load`) publishes the fleet's readings over MQTT QoS 1, one
connection per building through a WAN proxy of its own (20-200 ms), at `HEADROOM` above the card's rate:
the card's 500 readings/s is 5,000 sensors every 10 s, and the check lets 5,500 report (110 of each
building's sensors), so a pipeline that keeps up with the target passes and a counter's jitter cannot fail
it. The first `warm_up_s` of the run are warm-up (connections, consumer groups, the first windows); the
rest is the steady window most figures are taken over. A share of 0.1 % of the messages is malformed,
so the loss check covers the dead-letter path too. The dashboards and the HVAC API are observed from a
process of its own (`Observer`), as browsers and HVAC controllers are clients of their own: in the load
generator's process its stalls (paho, the 50 proxies' threads) would count against them.

What is measured, and how:

* `ingest_readings_per_s`: the services' counters, read from their /metrics every `SAMPLE_EVERY_S`,
  over the steady window: readings the bridge wrote to the log (`bridge_readings_total`), the recorder
  stored in the raw tables (`recorder_readings_total`) and the aggregator added to its windows
  (`aggregator_readings_total`). The row is the lowest of the three: every stage must keep up. A stage that
  falls behind counts at the rate it drains, not at the rate offered. The detail adds the readings stored
  with a timestamp inside the window, counted in the raw tables after the run.
* `distinct_sensors`: distinct sensor ids in the raw tables of every tenant's store with a timestamp
  inside the run.
* The loss check (`acknowledged_readings_lost`, an extra row that fails the check when it is not 0):
  every reading the broker acknowledged (its sensor id and timestamp, `LoadRun.acknowledged`) must be in
  its tenant's raw table, and every acknowledged malformed message on `sensors.deadletter` with the reason
  the fleet made it for; `acknowledged == stored + dead-lettered`.
* `alert_detection_p99_s`: CO2 breaches are injected into zones whose CO2 stays well under the rule
  through the run (`Fleet.inject`, one zone per building, spread over the run). The rule (`co2-high`, above
  1,000 ppm for 60 s) raises on the reading that completes its 60 s; the latency is the webhook receiver's
  arrival time of that `raised` alert minus the raising reading's timestamp (the alert's `ts`), as the
  card words it. An injection never alerted counts with the time waited since its reading was due (a
  lower bound that fails the row). The alerter's own histogram (`alerter_detection_latency_seconds`, every
  raised alert) is reported beside it as a cross-check.
* `dashboard_freshness_p99_s`: an SSE client signs in to the dashboard as the building's owner and follows
  the live stream of a few buildings (the nearest and the farthest away); at each event in the steady
  window, the time it arrived minus the newest `as_of` it carries (the newest reading behind what the page
  shows), as the card's row words it ("when the dashboard reads it"). Beside it,
  `dashboard_shown_behind_p99_s` looks at each page twice a second: now minus the newest `as_of` received
  so far, the figure the page itself shows, which also counts a stream on which nothing arrives.
* `hvac_api_latency_p99_ms`: `GET /buildings/{b}/zones` with the owner's token, open loop at
  `api_rate_per_s` over the steady window (an HDR histogram from intended send time, `loadgen.run_load`);
  every request must answer 200 with zones.
* `building_month_query_p95_s`: after the load, one building gets a month of 1-minute and 1-hour rollups at
  full density (`katas.sensors.backfill`, 1,000 sensors every 10 s, generated inside its tenant's store)
  and a day of raw readings (yesterday, 8.64 M rows); then the month's history at zone level (hourly, one
  series per zone, a sensor type per query in turn) is asked through the API `history_queries` times,
  one after another; P95 of the request time. An answer that misses points fails it.
* Retention (the card's row has no metric; a pass/fail detail, `retention_tiers_query_s`): the recorder
  archives yesterday (`POST /archive/run`), the hot tier then lets the day go as its TTL would in a few
  days (the day's partition is dropped now), and one sensor's readings from yesterday's start to now are
  asked through the API: yesterday must come whole from the Parquet file, today from the hot table.

Besides scorecard.json and scorecard.html, the report folder holds `fleet_load.json` (the load generator's
report: per region and building, published, acknowledged, PUBACK latency) and `timeline.json` (the
counters and every dashboard event's freshness over time, to see when something happened).

A measurement that cannot be taken is recorded as NaN with the reason ("not measured" on the scorecard).
The exit code is 0 only if every measured row passed, every row with a metric was measured, nothing
acknowledged was lost and the retention query answered from both tiers.
"""

# ruff: noqa: S608 - SQL here is built from katas.sensors.raw's validated names and formatted times.

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import multiprocessing
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import httpx
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families
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
from katas.infra.clickhouse import ClickHouseError
from katas.infra.stack import Stack
from katas.scorecard import REPORTS_ROOT, Measurement, Scorecard
from katas.sensors.backfill import Layout, backfill_raw_day, backfill_rollups
from katas.sensors.fleet import INTERVAL_MS, Building, Fleet, Sensor
from katas.sensors.load import Letter, LoadRun, ReadingId, SensorsLoad, brokers_of
from katas.sensors.load import plan as load_plan
from katas.sensors.raw import RAW, day_start, sql_name, sql_time
from katas.sensors.readings import SENSOR_TYPES, format_timestamp, parse_timestamp
from katas.sensors.rules import DEFAULT_RULES, Rule
from katas.sensors.settings import SensorsSettings
from katas.sensors.stores import TenantWarehouses
from katas.sensors.topics import DEADLETTER
from loadgen import ConstantRate, LoadResult, run_load

KATA = "sensors"
CHECK_RUN_NAME = "sensors-check"
HEADROOM = 1.1
"""Sensors offered / sensors the card's rate needs. The rate is read from counters over a window, which
jitter by a batch either way; offering 10 % more lets a pipeline that keeps up with the target pass, and
one that cannot still fails (it stores what it can take). Latencies are measured at the offered rate."""
INTERVAL_S = INTERVAL_MS / 1000
SAMPLE_EVERY_S = 0.5
OBSERVER_LEAD_S = 3.0
"""The observer process is started this long before the load, to import and sign in to the dashboards."""
PAGE_LOOK_S = 0.5
"""How often the observer looks at what each dashboard page shows."""
CATCH_UP_S = 60.0
"""How long after the load every acknowledged reading may take to be in the raw tables."""
ALERT_GRACE_S = 5.0
"""Waited beyond the detection target for the last injection's alert."""
MALFORMED = 0.001
API_RATE_PER_S = 20.0
"""HVAC requests per second: the 50 buildings' controllers each polling their zones every 2.5 s."""
API_TIMEOUT_S = 10.0
HISTORY_TIMEOUT_S = 120.0
MONTH = timedelta(days=30)
FULL_DENSITY = 1000
"""Sensors per building at production density (the card's historical-query row)."""
ARCHIVE_TIMEOUT_S = 600.0
BACKFILL_TIMEOUT_S = 600.0
FIRST_INJECTION_S = 2.0
INJECTION_SLACK_S = 5.0
"""An injection starts early enough that its alert is due this long before the load ends."""
CO2_RULE: Rule = next(r for r in DEFAULT_RULES if r.type == "co2" and r.condition == "above")
"""The rule the injected breaches trip (co2-high: above 1,000 ppm for 60 s)."""
INJECTED_PPM = (CO2_RULE.threshold or 1000.0) + 500.0
QUIET_PPM = (CO2_RULE.threshold or 1000.0) - 2 * CO2_RULE.hysteresis
"""A zone is chosen for an injection only if its own CO2 stays under this through the run: its alert then
comes from the injection, never from the building itself."""
STAGES = {"bridge": "bridge_readings_total", "recorder": "recorder_readings_total",
          "aggregator": "aggregator_readings_total"}  # fmt: skip
"""Per service, the counter of readings it has taken: to the log, into the raw tables, into windows."""
DETECTION_HISTOGRAM = "alerter_detection_latency_seconds"
LAG = "stage_consumer_lag"
"""A consuming service's gauge of the records on its partitions not fetched yet."""


# ------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Plan:
    """What a check run does; rates are readings per second."""

    name: Literal["short", "full"]
    ingest_target: float
    sensors_target: float
    sustained_s: float
    warm_up_s: float
    injections: int
    dashboard_buildings: int
    history_queries: int
    bench_seconds: float
    api_rate_per_s: float = API_RATE_PER_S
    malformed: float = MALFORMED
    backfill_days: int = MONTH.days
    raw_hours: int = 24

    @property
    def sensors(self) -> int:
        """Sensors that report (each every 10 s): enough for the rate and the sensor count, with headroom."""
        return math.ceil(max(self.ingest_target * INTERVAL_S, self.sensors_target) * HEADROOM)

    @property
    def rate(self) -> float:
        return self.sensors / INTERVAL_S

    @property
    def steady_s(self) -> float:
        return self.sustained_s - self.warm_up_s

    def injection_offsets(self, for_s: float) -> list[float]:
        """Seconds into the run at which each CO2 breach starts: spread from `FIRST_INJECTION_S` to the
        latest start whose alert (after `for_s`, and up to one reporting interval for the sensor's phase)
        is still due `INJECTION_SLACK_S` before the load ends. Empty if the run is too short for any."""
        latest = self.sustained_s - for_s - INTERVAL_S - INJECTION_SLACK_S
        if self.injections < 1 or latest < FIRST_INJECTION_S:
            return []
        if self.injections == 1:
            return [FIRST_INJECTION_S]
        step = (latest - FIRST_INJECTION_S) / (self.injections - 1)
        return [round(FIRST_INJECTION_S + i * step, 3) for i in range(self.injections)]


def plan_for(card: KataCard, *, short: bool) -> Plan:
    """The card's rate and sensor count. The full check holds them for 300 s and asks the month's history
    20 times; the short one (CI's) for 80 s, which is as short as it gets: an injected breach needs the
    rule's 60 s before it alerts."""
    ingest = card_target(card, "ingest_readings_per_s")
    sensors = card_target(card, "distinct_sensors")
    if short:
        return Plan("short", ingest, sensors, sustained_s=80, warm_up_s=20, injections=4,
                    dashboard_buildings=4, history_queries=3, bench_seconds=3)  # fmt: skip
    return Plan("full", ingest, sensors, sustained_s=300, warm_up_s=30, injections=10,
                dashboard_buildings=6, history_queries=20, bench_seconds=10)  # fmt: skip


# ------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Sample:
    """The services' reading counters at one moment (`t`: time.monotonic() when they were read)."""

    t: float
    values: Mapping[str, float]


def window_rate(samples: Sequence[Sample], start: float, end: float, key: str) -> tuple[float, float] | None:
    """(per-second increase of `key`, seconds it spans) between the first and the last sample inside
    [start, end]; None with fewer than two samples there."""
    inside = [s for s in samples if start <= s.t <= end and key in s.values]
    if len(inside) < 2 or inside[-1].t <= inside[0].t:
        return None
    first, last = inside[0], inside[-1]
    return (last.values[key] - first.values[key]) / (last.t - first.t), last.t - first.t


def metric_sums(text: str) -> dict[str, float]:
    """Prometheus text -> sample name -> value summed over its labels."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    return sums


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """A Prometheus histogram's (upper bound, cumulative count) pairs, in order; [] if it is absent."""
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket" and "le" in sample.labels:
                buckets.append((float(sample.labels["le"]), float(sample.value)))
    return sorted(buckets)


def bucket_quantile(buckets: Sequence[tuple[float, float]], q: float) -> tuple[float, int] | None:
    """(upper bound of the bucket holding quantile q in 0..1, observations): what a histogram can say of a
    percentile. None when it holds nothing."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= q * total:
            return bound, int(total)
    return buckets[-1][0], int(total)


# ------------------------------------------------------------------------------------------- alerts
def first_due(phase_ms: int, at: datetime) -> datetime:
    """The first moment at or after `at` when a sensor of `phase_ms` reports (every 10 s at its phase)."""
    at_ms = math.ceil(at.timestamp() * 1000)
    due = at_ms + (phase_ms - at_ms) % INTERVAL_MS
    return datetime.fromtimestamp(due / 1000, UTC)


@dataclass
class Injection:
    """A CO2 breach injected into one zone, and the alert it raised."""

    sensor: Sensor
    """The zone's CO2 sensor (a zone has one)."""
    start: datetime
    end: datetime
    for_s: float

    raised_ts: datetime | None = None
    """The raising reading's timestamp (the alert's `ts`)."""
    arrived_at: float | None = None
    """When the webhook receiver stored the alert (epoch s)."""

    @property
    def building(self) -> str:
        return self.sensor.place.building

    @property
    def zone(self) -> str:
        return self.sensor.place.zone

    @property
    def due(self) -> datetime:
        """When the raising reading is due: the first breaching reading plus the rule's duration."""
        return first_due(self.sensor.phase_ms, self.start) + timedelta(seconds=self.for_s)

    def latency(self, now: float) -> float:
        """Arrival minus the raising reading's timestamp; one not raised counts with the time waited since
        the reading was due."""
        if self.arrived_at is not None and self.raised_ts is not None:
            return self.arrived_at - self.raised_ts.timestamp()
        return now - self.due.timestamp()


def match_alerts(
    lines: Iterable[Mapping[str, Any]], injections: Sequence[Injection], rule_id: str
) -> Counter[str]:
    """Give each injection the first `raised` alert of its sensor and rule at or after its start (from the
    webhook log's lines); returns the other deliveries seen, by kind (the fleet's own alerts)."""
    others: Counter[str] = Counter()
    for line in lines:
        payload = line.get("payload")
        if not isinstance(payload, Mapping):
            continue
        kind = str(payload.get("kind", "?"))
        mine = None
        if kind == "raised" and payload.get("rule") == rule_id:
            for injection in injections:
                if injection.arrived_at is None and payload.get("sensor_id") == injection.sensor.id:
                    mine = injection
                    break
        ts = _timestamp(payload.get("ts"))
        if mine is None or ts is None or ts < mine.start:
            others[f"{kind} {payload.get('rule', '?')}"] += 1
            continue
        mine.raised_ts, mine.arrived_at = ts, float(line.get("received_at", time.time()))
    return others


def _timestamp(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value)
    except ValueError:
        return None


def choose_zones(
    fleet: Fleet, reporting: Mapping[str, Sequence[Sensor]], count: int, start: datetime, end: datetime
) -> list[Sensor]:
    """CO2 sensors of `count` zones to inject breaches into: among the sensors that report, one zone per
    building, whose own CO2 stays under `QUIET_PPM` from `start` to `end` (checked each minute), the
    buildings taken alternately from each region."""
    by_region: dict[str, list[Sensor]] = {}
    moments = _minutes(start, end)
    for sensors in reporting.values():
        for sensor in sensors:
            if sensor.type == "co2" and all(fleet.value(sensor, at) < QUIET_PPM for at in moments):
                by_region.setdefault(sensor.building.region, []).append(sensor)
                break
    chosen: list[Sensor] = []
    for group in itertools.zip_longest(*by_region.values()):
        chosen.extend(s for s in group if s is not None)
    return chosen[:count]


def _minutes(start: datetime, end: datetime) -> list[datetime]:
    moments, at = [], start
    while at <= end:
        moments.append(at)
        at += timedelta(minutes=1)
    return [*moments, end]


# ---------------------------------------------------------------------------------------- dashboard
class SseReader:
    """Server-sent events from a stream's lines: `feed` each line, get (event, data) when one is complete.
    Comments (heartbeats) and `retry:` lines are skipped."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            if not self._data:
                self._event = "message"
                return None
            done = (self._event, "\n".join(self._data))
            self._event, self._data = "message", []
            return done
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def newest_as_of(data: str) -> datetime | None:
    """The newest `as_of` of a dashboard event's entries; None if it carries none."""
    try:
        entries = json.loads(data).get("entries") or []
    except (ValueError, AttributeError):
        return None
    stamps = [ts for e in entries if isinstance(e, Mapping) and (ts := _timestamp(e.get("as_of")))]
    return max(stamps, default=None)


def dashboard_picks(buildings: Sequence[Building], count: int) -> list[Building]:
    """The nearest and the farthest buildings (WAN latency), half each: freshness includes the WAN."""
    ordered = sorted(buildings, key=lambda b: (b.latency_ms, b.id))
    far = ordered[::-1][: (count + 1) // 2]
    near = [b for b in ordered if b not in far][: count - len(far)]
    return far + near


# ---------------------------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class Loss:
    """Acknowledged messages against what the stores and the dead-letter topic hold."""

    acknowledged: int
    stored: int
    """Acknowledged readings found in the raw tables."""
    letters: int
    dead_lettered: int
    """Acknowledged malformed messages found on the dead-letter topic with their reason."""
    missing: tuple[ReadingId, ...]
    missing_letters: tuple[Letter, ...]
    wrong_reason: int
    extra: int
    """Readings stored that were not acknowledged (published, PUBACK lost or still in flight): no loss."""

    @property
    def lost(self) -> int:
        return len(self.missing) + len(self.missing_letters)

    def describe(self) -> str:
        text = (
            f"acknowledged {self.acknowledged + self.letters:,} = {self.acknowledged:,} readings + {self.letters:,} "
            f"malformed; stored {self.stored:,} (raw tables) + dead-lettered {self.dead_lettered:,}"
        )
        if self.missing:
            text += f"; {len(self.missing):,} acknowledged readings missing, e.g. {list(self.missing[:3])}"
        if self.missing_letters:
            text += f"; {len(self.missing_letters):,} acknowledged malformed messages not dead-lettered"
        if self.wrong_reason:
            text += f"; {self.wrong_reason} dead-lettered with another reason than expected"
        if self.extra:
            text += f"; {self.extra:,} stored without an acknowledgement (in flight at the end: not a loss)"
        return text


def loss_of(
    acknowledged: set[ReadingId],
    stored: set[ReadingId],
    letters: Sequence[Letter],
    dead: Mapping[tuple[str, bytes], str],
) -> Loss:
    """`dead`: (MQTT topic, payload) -> reason of every record on the dead-letter topic."""
    missing = tuple(sorted(acknowledged - stored))
    missing_letters = tuple(letter for letter in letters if (letter.topic, letter.payload) not in dead)
    wrong = sum(
        1
        for letter in letters
        if (key := (letter.topic, letter.payload)) in dead and dead[key] != letter.reason
    )
    return Loss(
        acknowledged=len(acknowledged),
        stored=len(acknowledged & stored),
        letters=len(letters),
        dead_lettered=len(letters) - len(missing_letters),
        missing=missing,
        missing_letters=missing_letters,
        wrong_reason=wrong,
        extra=len(stored - acknowledged),
    )


# ------------------------------------------------------------------------------------------ history
def history_points(answer: Mapping[str, Any]) -> tuple[int, int]:
    """(series, points) of a history answer."""
    series = answer.get("series") or []
    return len(series), sum(len(s.get("points") or []) for s in series)


def backfilled_hours(backfill_end: datetime, days: int, start: datetime, end: datetime) -> int:
    """Hours of rollups `backfill_rollups(..., end=backfill_end, days=days)` wrote that an hourly history
    query from `start` to `end` covers: the backfill ends at `backfill_end`'s hour and the query starts at
    `start`'s, so a query after the hour turned misses nothing but sees one backfilled hour fewer."""
    stop = backfill_end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    first = stop - timedelta(days=days)
    lo = max(first, start.astimezone(UTC).replace(minute=0, second=0, microsecond=0))
    hi = min(stop, end)
    return max(0, math.ceil((hi - lo).total_seconds() / 3600))


def tiers_verdict(
    answer: Mapping[str, Any], day: datetime, expected_cold: int, expected_hot: int
) -> tuple[bool, str]:
    """Whether a readings answer from `day`'s start to now came from both tiers, whole: `day` read from its
    cold file with `expected_cold` readings, the rest from the hot table with `expected_hot`."""
    tiers = answer.get("tiers") or {}
    readings = answer.get("readings") or []
    next_day = day + timedelta(days=1)
    on_day = sum(1 for r in readings if (ts := _timestamp(r.get("ts"))) is not None and ts < next_day)
    after = len(readings) - on_day
    cold = list(tiers.get("cold_days") or [])
    problems = []
    if cold != [day.date().isoformat()]:
        problems.append(f"cold days {cold}, expected [{day.date()}]")
    if on_day != expected_cold:
        problems.append(f"{on_day:,} readings of {day.date()}, expected {expected_cold:,}")
    if after != expected_hot:
        problems.append(f"{after:,} readings after it, the hot table holds {expected_hot:,}")
    if answer.get("truncated"):
        problems.append("the answer was truncated")
    if expected_hot == 0:
        problems.append("no hot readings to span (the sensor reported nothing during the run)")
    text = (
        f"{on_day:,} readings of {day.date()} from the cold tier (hot days {tiers.get('hot_days')}, cold days "
        f"{cold}) and {after:,} from the hot table"
    )
    return not problems, text + (f": {'; '.join(problems)}" if problems else "")


# ------------------------------------------------------------------------------------------ ceilings
def bench_row(name: str, seconds: float) -> bench.BenchResult:
    """One row of `katas.infra.bench`, measured now on servers of its own."""
    measurement = next(m for m in bench.MEASUREMENTS if any(row == name for row, _ in m.rows))
    try:
        rows = measurement.run(seconds)
    except Exception as exc:  # the check goes on without the ratio
        return bench.BenchResult(name, 0.0, "msgs/s", "", error=f"{type(exc).__name__}: {exc}")
    return next(r for r in rows if r.name == name)


def ratio_measurement(metric: str, ingest: Measurement | None, ceiling: bench.BenchResult) -> Measurement:
    if ingest is None or math.isnan(ingest.value):
        return not_measured(metric, "", "the pipeline's ingest rate was not measured")
    if not ceiling.ok:
        return not_measured(metric, "", f"{ceiling.name} failed: {ceiling.error}")
    return Measurement(
        metric,
        ingest.value / ceiling.value,
        "",
        f"ingest_readings_per_s {ingest.value:,.0f} / {ceiling.name} {ceiling.value:,.0f} {ceiling.unit} "
        f"(katas.infra.bench in this run: {ceiling.detail})",
    )


def ceiling_measurement(metric: str, ceiling: bench.BenchResult) -> Measurement:
    if not ceiling.ok:
        return not_measured(metric, ceiling.unit, f"{ceiling.name} failed: {ceiling.error}")
    return Measurement(
        metric, ceiling.value, ceiling.unit, f"katas.infra.bench {ceiling.name}: {ceiling.detail}"
    )


# -------------------------------------------------------------------------------------------- verdict
def problems_of(scorecard: Scorecard, extra: Sequence[str] = ()) -> list[str]:
    """Why the check fails: rows that failed or were not measured, then `extra` (loss, retention...)."""
    problems = []
    for outcome in scorecard.outcomes():
        if outcome.status == "fail":
            problems.append(f"{outcome.nfr.metric}: {format(outcome.measured, ',.3g')} misses its target")
        elif outcome.status == "not measured":
            m = scorecard.measurements.get(outcome.nfr.metric or "")
            problems.append(
                f"{outcome.nfr.metric} was not measured: {m.detail if m else 'no figure recorded'}"
            )
    return [*problems, *extra]


# ----------------------------------------------------------------------------------------- the stack
class StackClient:
    """Handles on a running sensors stack: its services' metrics, the webhook log, the tenant stores, the
    API and the recorder."""

    def __init__(self, endpoints: Mapping[str, Any], registry_tenants: Sequence[str]) -> None:
        self.endpoints = endpoints
        self.http = httpx.AsyncClient(timeout=10.0)
        self.api = httpx.AsyncClient(
            base_url=str(endpoints["api"]),
            timeout=API_TIMEOUT_S,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )
        self.tokens = {str(t["tenant"]): str(t["token"]) for t in endpoints.get("tenants", [])}
        self.webhook = WebhookTail(Path(str(endpoints["webhook_log"])))
        stores = sorted(
            (int(m.group(1)), str(url))
            for name, url in endpoints.items()
            if (m := re.fullmatch(r"chdb-(\d+)", name))
        )
        self.warehouses = TenantWarehouses.assign(
            list(registry_tenants), [url for _, url in stores], timeout_s=BACKFILL_TIMEOUT_S
        )

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.api.aclose()
        await self.warehouses.close()

    async def metrics_text(self, service: str) -> str:
        response = await self.http.get(f"{self.endpoints[service]}/metrics")
        response.raise_for_status()
        return response.text

    async def sample(self) -> Sample:
        """The stages' reading counters, and the consumers' lag (`<service>_lag`, records not fetched)."""
        services = [*STAGES, "alerter"]
        texts = await asyncio.gather(*(self.metrics_text(s) for s in services))
        values = {}
        for service, text in zip(services, texts, strict=True):
            sums = metric_sums(text)
            if service in STAGES:
                values[service] = sums.get(STAGES[service], 0.0)
            if LAG in sums:
                values[f"{service}_lag"] = sums[LAG]
        return Sample(time.monotonic(), values)

    async def sensor_readings(
        self, sensor: Sensor, start: datetime, end: datetime
    ) -> list[tuple[str, float]]:
        """(ts, value) of a sensor's readings in its tenant's raw table with start <= ts < end."""
        tenant = sensor.place.tenant
        rows = await self.warehouses.of(tenant).rows(
            f"SELECT toString(ts) AS ts, value FROM {self.warehouses.table(tenant, RAW)} FINAL "
            f"WHERE sensor_id = {sql_name(sensor.id)} AND ts >= {sql_time(start)} AND ts < {sql_time(end)} "
            "ORDER BY ts"
        )
        return [(str(r["ts"]), float(r["value"])) for r in rows]

    def new_webhook_lines(self) -> list[dict[str, Any]]:
        """Webhook lines appended since the last call (whole lines only)."""
        return self.webhook.new_lines()

    async def stored_ids(self, start: datetime, end: datetime) -> set[ReadingId]:
        """(sensor id, ts ms) of every reading in the raw tables of every tenant with start <= ts <= end."""
        found: set[ReadingId] = set()
        for tenant, ch in self.warehouses:
            body = await ch.execute(
                f"SELECT sensor_id, toUnixTimestamp64Milli(ts) FROM {self.warehouses.table(tenant, RAW)} "
                f"WHERE ts >= {sql_time(start)} AND ts <= {sql_time(end)} FORMAT TabSeparated"
            )
            for line in body.decode().splitlines():
                sensor, _, ms = line.partition("\t")
                found.add((sensor, int(ms)))
        return found

    async def stored_counts(self, start: datetime, end: datetime) -> tuple[int, int]:
        """(distinct readings, distinct sensors) in every tenant's raw table with start <= ts <= end."""
        readings = sensors = 0
        for tenant, ch in self.warehouses:
            row = (
                await ch.rows(
                    f"SELECT uniqExact(sensor_id, ts) AS readings, uniqExact(sensor_id) AS sensors "
                    f"FROM {self.warehouses.table(tenant, RAW)} "
                    f"WHERE ts >= {sql_time(start)} AND ts <= {sql_time(end)}"
                )
            )[0]
            readings += int(row["readings"])
            sensors += int(row["sensors"])
        return readings, sensors

    async def dead_letters(self) -> dict[tuple[str, bytes], str]:
        """(MQTT topic, payload) -> reason of every record on the dead-letter topic."""
        consumer = AIOKafkaConsumer(bootstrap_servers=str(self.endpoints["kafka"]), enable_auto_commit=False)
        await consumer.start()
        letters: dict[tuple[str, bytes], str] = {}
        try:
            partitions = await kafka.partitions_of(consumer, DEADLETTER)
            async for batch in kafka.read_from_start(consumer, partitions):
                for record in batch:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        letter = json.loads(record.value or b"")
                        key = (str(letter["mqtt_topic"]), base64.b64decode(letter["payload_b64"]))
                        letters[key] = str(letter["reason"])
        finally:
            await consumer.stop()
        return letters


# ------------------------------------------------------------------------------------------ observers
@dataclass(frozen=True)
class ObserverSpec:
    """What the observer process does: follow some dashboards, and poll the HVAC API over a window.

    The observers run in a process of their own, as the HVAC controllers and the browsers they stand for
    are clients of their own: in the check's process the load generator (paho, 50 WAN proxies' threads)
    would hold the GIL while a response or an event waited, and its stalls would count against the API
    and the dashboards."""

    api: str
    dashboard: str
    tokens: Mapping[str, str]
    """Building -> its owner's API token."""
    watched: tuple[str, ...]
    """Buildings whose dashboard stream is followed."""
    polled: tuple[str, ...]
    """Buildings whose zones the HVAC load asks for, in turn."""
    api_rate_per_s: float
    api_start: float
    """Wall clock (epoch s) at which the HVAC load starts."""
    api_duration_s: float
    until: float
    """Wall clock at which the dashboards are left."""


@dataclass
class ObserverResult:
    freshness: list[tuple[str, float, float]]
    """(building, arrival epoch s, seconds behind) of every dashboard event that carried an `as_of`."""
    events: dict[str, int]
    stream_errors: dict[str, int]
    api: dict[str, Any] | None
    """The HVAC load's `LoadResult.to_dict()`; None if it never ran."""
    empty: dict[str, int]
    """Buildings whose zones answer held no zone, and how often."""
    shown: list[tuple[str, float, float]] = field(default_factory=list)
    """(building, epoch s, seconds behind) of what each page showed, looked at every `PAGE_LOOK_S`: now
    minus the newest `as_of` received so far. Unlike the per-event figure, it also sees a stream on which
    nothing arrives."""
    newest: dict[str, float] = field(default_factory=dict)
    """Building -> the newest `as_of` (epoch s) its stream has carried."""

    def lags_within(self, start: float, end: float) -> list[float]:
        return [lag for _, at, lag in self.freshness if start <= at <= end]

    def shown_within(self, start: float, end: float) -> list[float]:
        return [lag for _, at, lag in self.shown if start <= at <= end]

    def look(self, now: float) -> None:
        """What every page shows now (for those that received an `as_of` yet)."""
        self.shown.extend((b, now, now - newest) for b, newest in self.newest.items())


async def watch_dashboard(base: str, building: str, token: str, out: ObserverResult) -> None:
    """Sign in as the building's owner and follow its live stream until cancelled; after an error sign in
    and subscribe again a second later, as the page does. A client (a cookie jar) of its own: the session
    cookie of another tenant's sign-in must not replace this one's, as in two browsers."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(API_TIMEOUT_S, read=60.0)) as client:
        await _follow(client, base, building, token, out)


async def _follow(
    client: httpx.AsyncClient, base: str, building: str, token: str, out: ObserverResult
) -> None:
    while True:
        try:
            signed = await client.post(f"{base}/session", data={"token": token})
            if signed.status_code != 303:
                raise httpx.HTTPStatusError(
                    f"sign-in answered {signed.status_code}", request=signed.request, response=signed
                )
            async with client.stream("GET", f"{base}/buildings/{building}/events") as response:
                response.raise_for_status()
                reader = SseReader()
                async for line in response.aiter_lines():
                    if (event := reader.feed(line)) is None:
                        continue
                    received = time.time()
                    out.events[event[0]] = out.events.get(event[0], 0) + 1
                    newest = newest_as_of(event[1])
                    if newest is not None:
                        out.freshness.append((building, received, received - newest.timestamp()))
                        out.newest[building] = max(out.newest.get(building, 0.0), newest.timestamp())
        except httpx.HTTPError as exc:
            name = type(exc).__name__
            if isinstance(exc, httpx.HTTPStatusError):
                name = f"{exc.request.method} {exc.request.url.path}: HTTP {exc.response.status_code}"
            out.stream_errors[name] = out.stream_errors.get(name, 0) + 1
        await asyncio.sleep(1.0)


async def observe(spec: ObserverSpec) -> ObserverResult:
    out = ObserverResult([], {}, {}, None, {})
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=spec.api, timeout=API_TIMEOUT_S, limits=limits) as api:
        watchers = [
            asyncio.create_task(watch_dashboard(spec.dashboard, b, spec.tokens[b], out)) for b in spec.watched
        ]

        async def look() -> None:
            while True:
                await asyncio.sleep(PAGE_LOOK_S)
                out.look(time.time())

        watchers.append(asyncio.create_task(look()))

        async def get_zones(i: int) -> None:
            building = spec.polled[i % len(spec.polled)]
            response = await api.get(
                f"/buildings/{building}/zones", headers={"Authorization": f"Bearer {spec.tokens[building]}"}
            )
            response.raise_for_status()
            if not response.json():
                out.empty[building] = out.empty.get(building, 0) + 1

        try:
            await asyncio.sleep(max(0.0, spec.api_start - time.time()))
            result = await run_load(
                ConstantRate(spec.api_rate_per_s, spec.api_duration_s),
                get_zones,
                progress=False,
                label=f"HVAC API GET /buildings/{{b}}/zones, {spec.api_rate_per_s:g}/s",
            )
            out.api = result.to_dict()
            await asyncio.sleep(max(0.0, spec.until - time.time()))
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
    return out


def _observer_main(spec: ObserverSpec, conn: Connection) -> None:
    """The observer process: observe, send the result back."""
    try:
        conn.send(asyncio.run(observe(spec)))
    except BaseException as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        conn.close()


class Observer:
    """The observer process (spawned: a fresh interpreter, none of the check's threads)."""

    def __init__(self, spec: ObserverSpec) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_observer_main, args=(spec, child), name="sensors-check-observer", daemon=True
        )
        self._child = child

    def start(self) -> None:
        self.process.start()
        self._child.close()

    async def result(self, timeout_s: float) -> ObserverResult:
        """What it measured; RuntimeError if it failed or did not answer within `timeout_s`."""
        ready = await asyncio.to_thread(self._conn.poll, timeout_s)
        if not ready:
            raise RuntimeError(f"the observer process did not answer within {timeout_s:g} s")
        try:
            answer = self._conn.recv()
        except EOFError:
            raise RuntimeError(
                f"the observer process ended ({self.process.exitcode}) without a result"
            ) from None
        if not isinstance(answer, ObserverResult):
            raise RuntimeError(f"the observer process failed: {answer}")
        return answer

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)
        self._conn.close()


# ------------------------------------------------------------------------------------------ the run
class CheckError(RuntimeError):
    """The check could not run at all (the stack's endpoints lack what it needs)."""


@dataclass
class CheckRun:
    """One check's measurements on a running stack."""

    plan: Plan
    card: KataCard
    fleet: Fleet
    stack: StackClient
    console: Console
    progress: bool
    seed: int = 0
    measured: dict[str, Measurement] = field(default_factory=dict)
    results: list[LoadResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    load_run: LoadRun | None = None
    samples: list[Sample] = field(default_factory=list)
    others: Counter[str] = field(default_factory=Counter)
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds each phase took, for the report (CI's budget)."""
    observed: ObserverResult | None = None
    steady_wall: tuple[float, float] | None = None

    def timeline(self) -> dict[str, Any]:
        """The raw series behind the rows, for a reader who wants to see when something happened: the
        services' counters (epoch s) and every dashboard event's freshness."""
        offset = time.time() - time.monotonic()
        return {
            "steady_window": self.steady_wall,
            "counters": [{"t": round(s.t + offset, 3), **s.values} for s in self.samples],
            "dashboard_freshness": [
                {"building": b, "t": round(at, 3), "behind_s": round(lag, 3)}
                for b, at, lag in (self.observed.freshness if self.observed else [])
            ],
            "dashboard_shown": [
                {"building": b, "t": round(at, 3), "behind_s": round(lag, 3)}
                for b, at, lag in (self.observed.shown if self.observed else [])
            ],
        }

    """Webhook deliveries that were not an injection's alert (the fleet's own), by kind and rule."""

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = time.monotonic() - started

    def put(self, m: Measurement) -> None:
        self.measured[m.metric] = m
        value = "not measured" if math.isnan(m.value) else f"{m.value:,.4g} {m.unit}".rstrip()
        detail = f"  [dim]({escape(m.detail)})[/]" if m.detail else ""
        self.console.print(f"  {escape(m.metric)}: {value}{detail}", highlight=False)

    # -- sampling -----------------------------------------------------------------------------------------
    async def sampler(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                self.samples.append(await self.stack.sample())
            await asyncio.sleep(SAMPLE_EVERY_S)

    # -- the sustained load ------------------------------------------------------------------------------------
    async def sustained(self) -> None:
        plan = self.plan
        sensors = min(plan.sensors, len(self.fleet))
        if sensors < plan.sensors:
            self.say(f"  the fleet has {len(self.fleet):,} sensors, fewer than the {plan.sensors:,} planned")
        load = SensorsLoad(
            brokers_of(self.stack.endpoints),
            self.fleet,
            rate=sensors / INTERVAL_S,
            malformed=plan.malformed,
            seed=self.seed,
        )
        reporting = load.plan
        missing_tokens = {b.tenant for b in reporting.buildings} - set(self.stack.tokens)
        if missing_tokens:
            raise CheckError(f"endpoints.json has no API token of {', '.join(sorted(missing_tokens))}")
        self.say(
            f"sustained: {reporting.rate:,.0f} readings/s ({reporting.sensor_count:,} sensors in "
            f"{len(reporting.buildings)} buildings every {INTERVAL_S:g} s; target {plan.ingest_target:,.0f}/s) for "
            f"{plan.sustained_s:g} s, steady window from {plan.warm_up_s:g} s; HVAC API {plan.api_rate_per_s:g} "
            f"req/s; {plan.dashboard_buildings} dashboards"
        )
        watched = dashboard_picks(reporting.buildings, plan.dashboard_buildings)
        endpoints = self.stack.endpoints
        starts_at = time.time() + OBSERVER_LEAD_S
        observer = Observer(
            ObserverSpec(
                api=str(endpoints["api"]),
                dashboard=str(endpoints.get("dashboard") or f"{endpoints['api']}/dashboard"),
                tokens={b.id: self.stack.tokens[b.tenant] for b in reporting.buildings},
                watched=tuple(b.id for b in watched),
                polled=tuple(b.id for b in reporting.buildings),
                api_rate_per_s=plan.api_rate_per_s,
                api_start=starts_at + plan.warm_up_s,
                api_duration_s=plan.steady_s,
                until=starts_at + plan.sustained_s,
            )
        )
        observer.start()
        sampler = asyncio.create_task(self.sampler())
        try:
            async with load:
                now = datetime.now(UTC)
                offsets = plan.injection_offsets(CO2_RULE.for_s)
                zones = choose_zones(
                    self.fleet, reporting.sensors, len(offsets), now,
                    now + timedelta(seconds=OBSERVER_LEAD_S + plan.sustained_s + 60),
                )  # fmt: skip
                await asyncio.sleep(max(0.0, starts_at - time.time()))
                base = datetime.now(UTC)
                end = base + timedelta(seconds=plan.sustained_s + 1)
                injections = []
                for sensor, offset in zip(zones, offsets, strict=False):
                    start = base + timedelta(seconds=offset)
                    self.fleet.inject(
                        sensor.place.building, sensor.place.zone, "co2", INJECTED_PPM, start, end
                    )
                    injections.append(Injection(sensor, start, end, CO2_RULE.for_s))
                started_mono, started_wall = time.monotonic(), time.time()
                try:
                    run = await load.run(
                        plan.sustained_s,
                        progress=self.progress,
                        label=f"fleet {reporting.rate:,.0f} readings/s (due -> PUBACK)",
                    )
                finally:
                    self.fleet.clear_overrides()
            self.say(
                f"  CO2 breaches of {INJECTED_PPM:g} ppm injected in {len(injections)} zones ("
                + ", ".join(
                    f"{i.building}/{i.zone} +{o:g} s" for i, o in zip(injections, offsets, strict=False)
                )
                + ")"
            )
            self.say(f"  {run.result.summary_line()}")
            self.say(
                f"  published {run.published:,}, acknowledged {run.acknowledged_count:,}, failed {run.failed:,}, "
                f"reconnects {run.reconnects}"
            )
            self.load_run = run
            self.results.append(run.result)
            try:
                observed: ObserverResult | None = await observer.result(OBSERVER_LEAD_S + 30)
            except RuntimeError as exc:
                observed = None
                self.say(f"  {exc}")
            steady = (started_mono + plan.warm_up_s, started_mono + plan.sustained_s)
            steady_wall = (started_wall + plan.warm_up_s, started_wall + plan.sustained_s)
            await self.wait_for_alerts(injections)
            await self.settle(run)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            observer.stop()
        self.observed, self.steady_wall = observed, steady_wall
        await self.ingest_rows(run, steady, steady_wall)
        self.freshness_row(observed, steady_wall, watched)
        self.api_row(observed)
        await self.alert_row(injections)

    async def wait_for_alerts(self, injections: Sequence[Injection]) -> None:
        target = card_target(self.card, "alert_detection_p99_s")
        deadline = max((i.due.timestamp() for i in injections), default=0.0) + target + ALERT_GRACE_S
        self.others = match_alerts(self.stack.new_webhook_lines(), injections, CO2_RULE.id)
        while any(i.arrived_at is None for i in injections) and time.time() < deadline:
            await asyncio.sleep(0.5)
            self.others += match_alerts(self.stack.new_webhook_lines(), injections, CO2_RULE.id)

    async def settle(self, run: LoadRun) -> None:
        """Wait until every acknowledged reading is in the raw tables (or `CATCH_UP_S`), then the loss
        check and the sensor count."""
        if not run.acknowledged:
            self.put(not_measured("acknowledged_readings_lost", "readings", "nothing was acknowledged"))
            self.problems.append("the brokers acknowledged no reading")
            return
        first = datetime.fromtimestamp(min(ms for _, ms in run.acknowledged) / 1000, UTC)
        last = datetime.fromtimestamp(max(ms for _, ms in run.acknowledged) / 1000, UTC)
        started = time.monotonic()
        while True:
            readings, _ = await self.stack.stored_counts(first, last)
            if readings >= len(run.acknowledged):
                stored = await self.stack.stored_ids(first, last)
                if run.acknowledged <= stored or time.monotonic() - started > CATCH_UP_S:
                    break
            elif time.monotonic() - started > CATCH_UP_S:
                stored = await self.stack.stored_ids(first, last)
                break
            await asyncio.sleep(1.0)
        caught_up = time.monotonic() - started
        loss = loss_of(run.acknowledged, stored, run.acknowledged_letters, await self.stack.dead_letters())
        self.put(
            Measurement(
                "acknowledged_readings_lost",
                float(loss.lost),
                "readings",
                f"{'PASS' if not loss.lost else 'FAIL'}: {loss.describe()}; checked {caught_up:.1f} s after the "
                f"load (waiting at most {CATCH_UP_S:g} s)",
            )
        )
        self.put(Measurement("store_catch_up_s", caught_up, "s", "after the load, until every acknowledged "
                             "reading was in the raw tables"))  # fmt: skip
        if loss.lost:
            self.problems.append(f"acknowledged readings lost: {loss.describe()}")
        _, sensors = await self.stack.stored_counts(first, last)
        self.put(
            Measurement(
                "distinct_sensors",
                float(sensors),
                "sensors",
                f"distinct sensor ids in the raw tables of the {len(self.stack.warehouses.tenants)} tenant stores "
                f"with a timestamp in the run ({first:%H:%M:%S}-{last:%H:%M:%S} UTC); {run.sensors:,} sensors reported",
            )
        )

    async def ingest_rows(
        self, run: LoadRun, steady: tuple[float, float], steady_wall: tuple[float, float]
    ) -> None:
        rates = {s: window_rate(self.samples, steady[0], steady[1], s) for s in STAGES}
        measured = {s: r for s, r in rates.items() if r is not None}
        if len(measured) < len(STAGES):
            missing = ", ".join(s for s in STAGES if s not in measured)
            self.put(
                not_measured("ingest_readings_per_s", "readings/s", f"no counters of {missing} in the window")
            )
            return
        lowest = min(measured, key=lambda s: measured[s][0])
        start, end = (datetime.fromtimestamp(t, UTC) for t in steady_wall)
        by_ts, _ = await self.stack.stored_counts(start, end - timedelta(milliseconds=1))
        span = steady_wall[1] - steady_wall[0]
        self.put(
            Measurement(
                "ingest_readings_per_s",
                measured[lowest][0],
                "readings/s",
                f"the lowest stage ({lowest}) over the steady window ({self.plan.steady_s:g} s from "
                f"{self.plan.warm_up_s:g} s into the run): "
                + ", ".join(f"{s} {r:,.0f}/s over {t:.1f} s" for s, (r, t) in measured.items())
                + f" (counters {', '.join(STAGES.values())}); {run.rate:,.0f}/s offered; readings stored with a "
                f"timestamp in the window: {by_ts / span:,.0f}/s",
            )
        )

    def freshness_row(
        self, observed: ObserverResult | None, steady_wall: tuple[float, float], watched: Sequence[Building]
    ) -> None:
        metric = "dashboard_freshness_p99_s"
        if observed is None:
            self.put(not_measured(metric, "s", "the observer process gave no result"))
            return
        lags = observed.lags_within(*steady_wall)
        errors = f"; stream errors {observed.stream_errors}" if observed.stream_errors else ""
        if not lags:
            self.put(not_measured(metric, "s", f"no dashboard event in the steady window{errors}"))
            return
        self.put(
            Measurement(
                metric,
                percentile(lags, 99),
                "s",
                f"{len(lags)} SSE events of {len(watched)} buildings' dashboards ("
                + ", ".join(f"{b.id} {b.latency_ms} ms" for b in watched)
                + f" WAN round trip) in the steady window, followed by a process of its own: arrival minus "
                f"the newest as_of; P50 {percentile(lags, 50):.2f} s, max {max(lags):.2f} s; events "
                f"{observed.events}{errors}",
            )
        )
        shown = observed.shown_within(*steady_wall)
        if shown:
            self.put(
                Measurement(
                    "dashboard_shown_behind_p99_s",
                    percentile(shown, 99),
                    "s",
                    f"what the same pages showed, looked at every {PAGE_LOOK_S:g} s ({len(shown)} looks): now "
                    f"minus the newest as_of received so far, which also counts a stream on which nothing "
                    f"arrives; P50 {percentile(shown, 50):.2f} s, max {max(shown):.2f} s",
                )
            )

    def api_row(self, observed: ObserverResult | None) -> None:
        metric = "hvac_api_latency_p99_ms"
        if observed is None or observed.api is None:
            self.put(not_measured(metric, "ms", "the observer process gave no result"))
            return
        result = LoadResult.from_dict(observed.api)
        self.results.append(result)
        if not result.ok or result.p99_ms is None:
            self.put(not_measured(metric, "ms", f"no request succeeded ({result.errors})"))
            return
        failed = result.error_count + result.timed_out
        empty = sum(observed.empty.values())
        self.put(
            Measurement(
                metric,
                result.p99_ms,
                "ms",
                f"{result.ok:,} GET /buildings/{{b}}/zones (every reporting building in turn, with its owner's "
                f"token) at {self.plan.api_rate_per_s:g}/s open loop "
                f"over the steady window from a process of its own; from intended send time (HDR): P50 "
                f"{result.p50_ms:.1f} ms, P99.9 {result.p999_ms:.1f} ms, max {result.max_ms:.1f} ms; failed {failed}"
                + (f" {result.errors}" if result.errors else "")
                + (f"; answers with no zone: {empty}" if empty else ""),
            )
        )
        if failed:
            self.problems.append(f"HVAC API: {failed} of {result.intended} requests failed: {result.errors}")
        if empty:
            self.problems.append(f"HVAC API: {empty} answers held no zone ({observed.empty})")

    async def alert_row(self, injections: Sequence[Injection]) -> None:
        cross = ""
        with contextlib.suppress(httpx.HTTPError):
            quantile = bucket_quantile(
                histogram_buckets(await self.stack.metrics_text("alerter"), DETECTION_HISTOGRAM), 0.99
            )
            if quantile is not None:
                cross = f"; the alerter's {DETECTION_HISTOGRAM}: {quantile[1]} raised alerts, P99 <= {quantile[0]:g} s"
        if not injections:
            self.put(
                not_measured(
                    "alert_detection_p99_s",
                    "s",
                    f"no breach injected: the run ({self.plan.sustained_s:g} s) is too short for the rule's "
                    f"{CO2_RULE.for_s:g} s, or no zone was quiet enough{cross}",
                )
            )
            return
        now = time.time()
        latencies = [i.latency(now) for i in injections]
        missed = []
        for i in injections:
            if i.arrived_at is not None:
                continue
            try:  # what the sensor's readings were: not breaching, not stored, or not alerted on
                stored = await self.stack.sensor_readings(i.sensor, i.start, i.end)
                high = sum(1 for _, value in stored if value > (CO2_RULE.threshold or 0.0))
                seen = f"{len(stored)} readings stored during the breach, {high} above the threshold" + (
                    f", {stored[0][0]} to {stored[-1][0]}" if stored else ""
                )
            except (ClickHouseError, httpx.HTTPError) as exc:
                seen = f"its readings could not be read: {type(exc).__name__}"
            missed.append(f"{i.building}/{i.zone} ({i.sensor.id}, due {i.due:%H:%M:%S}; {seen})")
        lag = max((s.values.get("alerter_lag", 0.0) for s in self.samples), default=math.nan)
        breach = [i.arrived_at - i.start.timestamp() for i in injections if i.arrived_at is not None]
        self.put(
            Measurement(
                "alert_detection_p99_s",
                percentile(latencies, 99),
                "s",
                f"{len(injections)} injected CO2 breaches ({CO2_RULE.id}: above {CO2_RULE.threshold:g} ppm for "
                f"{CO2_RULE.for_s:g} s): webhook arrival minus the raising reading's ts; P50 "
                f"{percentile(latencies, 50):.2f} s, max {max(latencies):.2f} s"
                + (f"; from the breach's start {min(breach):.1f}-{max(breach):.1f} s" if breach else "")
                + (f"; never alerted (counted with the time waited): {'; '.join(missed)}" if missed else "")
                + f"; other deliveries meanwhile: {dict(self.others)}{cross}; the alerter's consumer lag "
                f"at most {lag:,.0f} records",
            )
        )

    # -- history --------------------------------------------------------------------------------------------
    async def history(self) -> None:
        plan = self.plan
        run = self.load_run
        if run is None:
            return
        reporting = load_plan(self.fleet, run.rate)
        building = reporting.buildings[0]
        tenant = building.tenant
        layout = Layout.of(self.fleet, building.id)
        ch, db = self.stack.warehouses.of(tenant), self.stack.warehouses.database(tenant)
        today = datetime.now(UTC).date()
        day = day_start(today) - timedelta(days=1)
        self.say(
            f"history: {plan.backfill_days} days of rollups and {plan.raw_hours} h of raw readings "
            f"({day.date()}) of {building.id} ({len(layout.sensors):,} sensors, {len(layout.zones)} zones) "
            f"into the store of {tenant}"
        )
        try:
            with self.phase("backfill"):
                backfill_end = datetime.now(UTC)
                rollups = await backfill_rollups(
                    ch, db, tenant, building.id, layout, backfill_end, days=plan.backfill_days,
                    utc_offset_min=building.utc_offset_min,
                )  # fmt: skip
                raw = await backfill_raw_day(
                    ch, db, tenant, building.id, layout, day.date(), hours=plan.raw_hours,
                    utc_offset_min=building.utc_offset_min,
                )  # fmt: skip
        except (ClickHouseError, httpx.HTTPError, ValueError) as exc:
            reason = f"the backfill failed: {type(exc).__name__}: {str(exc)[:300]}"
            self.put(not_measured("building_month_query_p95_s", "s", reason))
            self.put(not_measured("retention_tiers_query_s", "s", f"FAIL: {reason}"))
            self.problems.append(f"retention: {reason}")
            return
        self.say(
            f"  rollups: {rollups.rows:,} rows in {rollups.seconds:.1f} s; raw: {raw.rows:,} readings in "
            f"{raw.seconds:.1f} s"
        )
        with self.phase("month queries"):
            await self.month_queries(building, layout, rollups.rows, backfill_end)
        with self.phase("retention"):
            await self.retention(building, reporting.sensors[building.id][0], day, raw.rows)

    async def month_queries(
        self, building: Building, layout: Layout, rows: int, backfill_end: datetime
    ) -> None:
        plan = self.plan
        token = self.stack.tokens[building.tenant]
        times: list[float] = []
        short: list[str] = []
        errors: Counter[str] = Counter()
        points_seen = 0
        for n in range(plan.history_queries):
            kind = SENSOR_TYPES[n % len(SENSOR_TYPES)]
            now = datetime.now(UTC)
            params = {
                "type": kind,
                "level": "zone",
                "from": format_timestamp(now - MONTH),
                "to": format_timestamp(now),
            }
            zones = sum(1 for z in layout.zones if layout.sensors_per(z, kind))
            expected = zones * backfilled_hours(backfill_end, plan.backfill_days, now - MONTH, now)
            started = time.perf_counter()
            try:
                response = await self.stack.api.get(
                    f"/buildings/{building.id}/history",
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=HISTORY_TIMEOUT_S,
                )
                elapsed = time.perf_counter() - started
                response.raise_for_status()
            except httpx.HTTPStatusError as exc:
                errors[f"HTTP {exc.response.status_code}"] += 1
                times.append(time.perf_counter() - started)
                continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                times.append(time.perf_counter() - started)
                continue
            times.append(elapsed)
            series, points = history_points(response.json())
            points_seen = max(points_seen, points)
            if series < zones or points < expected:
                short.append(f"{kind}: {series} series, {points:,} points, expected {zones} and {expected:,}")
        density = f"{len(layout.sensors):,} sensors"
        if len(layout.sensors) < FULL_DENSITY:
            density += f", fewer than full density ({FULL_DENSITY:,}: SENSORS_FLEET_SENSORS_PER_BUILDING)"
            self.problems.append(
                f"the backfilled building has {len(layout.sensors)} sensors, not {FULL_DENSITY}"
            )
        self.put(
            Measurement(
                "building_month_query_p95_s",
                percentile(times, 95),
                "s",
                f"{len(times)} GET /buildings/{building.id}/history over the last {MONTH.days} days, zone level, "
                f"hourly, a sensor type each in turn, one after another; {building.id}: {density}, "
                f"{rows:,} rollup rows backfilled; up to {points_seen:,} points an answer; times "
                + ", ".join(f"{t:.2f}" for t in times)
                + " s"
                + (f"; failed (counted with their time): {dict(errors)}" if errors else "")
                + (f"; incomplete answers: {'; '.join(short)}" if short else ""),
            )
        )
        if short:
            self.problems.append(f"history answers missed points: {'; '.join(short)}")

    async def retention(self, building: Building, sensor: Sensor, day: datetime, raw_rows: int) -> None:
        """Archive `day`, let the hot tier drop it, and read one sensor across both tiers."""
        tenant = building.tenant
        ch, table = self.stack.warehouses.of(tenant), self.stack.warehouses.table(tenant, RAW)
        metric = "retention_tiers_query_s"
        try:
            response = await self.stack.http.post(
                f"{self.stack.endpoints['recorder']}/archive/run",
                params={"day": day.date().isoformat()},
                timeout=ARCHIVE_TIMEOUT_S,
            )
            response.raise_for_status()
            written = response.json()
            files = [f for f in written.get("written", []) if f.get("building") == building.id]
            archived = sum(int(f.get("rows", 0)) for f in files)
            if archived != raw_rows:
                raise ValueError(
                    f"the archive pass wrote {archived:,} readings of {building.id} on {day.date()}, "
                    f"expected {raw_rows:,} ({written.get('errors')})"
                )
            # The hot tier's TTL drops a day's partition once it is past the retention; here, now.
            await ch.execute(f"ALTER TABLE {table} DROP PARTITION '{day.date().isoformat()}'")
            next_day = day + timedelta(days=1)
            hot = int(
                await ch.scalar(
                    f"SELECT count() FROM {table} FINAL WHERE sensor_id = {sql_name(sensor.id)} "
                    f"AND ts >= {sql_time(next_day)}"
                )
                or 0
            )
            now = datetime.now(UTC)
            started = time.perf_counter()
            answer = await self.stack.api.get(
                f"/buildings/{building.id}/readings",
                params={"from": format_timestamp(day), "to": format_timestamp(now), "sensor": sensor.id},
                headers={"Authorization": f"Bearer {self.stack.tokens[tenant]}"},
                timeout=HISTORY_TIMEOUT_S,
            )
            elapsed = time.perf_counter() - started
            answer.raise_for_status()
        except (ClickHouseError, httpx.HTTPError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.put(not_measured(metric, "s", f"FAIL: {reason}"))
            self.problems.append(f"retention: {reason}")
            return
        per_day = raw_rows // max(1, len(Layout.of(self.fleet, building.id).sensors))
        ok, text = tiers_verdict(answer.json(), day, per_day, hot)
        self.put(
            Measurement(
                metric,
                elapsed,
                "s",
                f"{'PASS' if ok else 'FAIL'}: {day.date()} archived ({archived:,} readings of {building.id} to "
                f"Parquet), then dropped from the hot table; GET /buildings/{building.id}/readings?sensor="
                f"{sensor.id} from {day.date()} to now: {text}",
            )
        )
        if not ok:
            self.problems.append(f"retention: {text}")


# ---------------------------------------------------------------------------------------------- run
@dataclass
class CheckReport:
    scorecard: Scorecard
    report_dir: Path
    plan: Plan
    card: KataCard
    run_dir: Path
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


async def measure(
    endpoints: Mapping[str, Any],
    plan: Plan,
    card: KataCard,
    fleet: Fleet,
    tenants: Sequence[str],
    *,
    seed: int = 0,
    console: Console | None = None,
    progress: bool = True,
) -> CheckRun:
    """Every phase of the check against a running stack."""
    for key in ("api", "recorder", "webhook_log", "kafka", "mqtt", *STAGES, "alerter"):
        if key not in endpoints:
            raise CheckError(f"the stack's endpoints have no {key!r}")
    stack = StackClient(endpoints, tenants)
    run = CheckRun(plan, card, fleet, stack, console or Console(stderr=True), progress, seed)
    try:
        with run.phase("load, alerts, loss check"):
            await run.sustained()
        await run.history()
    finally:
        await stack.aclose()
    return run


def run_check(
    plan: Plan,
    *,
    card: KataCard | None = None,
    seed: int = 0,
    run_dir: Path | None = None,
    reports_root: Path = REPORTS_ROOT,
    keep_run_dir: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> CheckReport:
    """Measure the ceilings, start a stack of its own, measure, stop it; write the scorecard."""
    out = console or Console()
    card = card or get_card(KATA)
    settings = SensorsSettings()
    fleet = settings.fleet()
    tenants = list(settings.registry().tenants)
    folder = run_dir or new_run_dir(CHECK_RUN_NAME)
    started = time.monotonic()
    out.print(f"[bold]katas check {KATA}[/] ({plan.name}): stack in {escape(str(folder))}", highlight=False)
    out.print(
        f"ceilings: katas.infra.bench mqtt.qos1 and kafka.produce, {plan.bench_seconds:g} s each",
        highlight=False,
    )
    ceilings = {name: bench_row(name, plan.bench_seconds) for name in ("mqtt.qos1", "kafka.produce")}
    phases = {"ceilings": time.monotonic() - started}
    for c in ceilings.values():
        text = f"{c.value:,.0f} {c.unit}" if c.ok else f"failed: {c.error}"
        out.print(f"  {c.name}: {text}", highlight=False, markup=False)
    out.print("starting the stack", highlight=False)
    up = time.monotonic()
    try:
        with Stack.for_card(card, run_dir=folder / KATA) as stack:
            phases["stack start"] = time.monotonic() - up
            out.print(f"  up in {phases['stack start']:.1f} s", highlight=False)
            run = asyncio.run(
                measure(
                    stack.endpoints(), plan, card, fleet, tenants, seed=seed, console=out, progress=progress
                )
            )
            down = time.monotonic()
        phases |= run.phases
        phases["stack stop"] = time.monotonic() - down
    except BaseException:
        out.print(f"the stack is stopped; its logs are in {folder / KATA}", highlight=False, markup=False)
        raise
    measured = run.measured
    ingest = measured.get("ingest_readings_per_s")
    measured["ingest_vs_mqtt_ratio"] = ratio_measurement(
        "ingest_vs_mqtt_ratio", ingest, ceilings["mqtt.qos1"]
    )
    measured["ingest_vs_broker_ratio"] = ratio_measurement(
        "ingest_vs_broker_ratio", ingest, ceilings["kafka.produce"]
    )
    measured["mqtt_qos1_msgs_per_s"] = ceiling_measurement("mqtt_qos1_msgs_per_s", ceilings["mqtt.qos1"])
    measured["broker_produce_msgs_per_s"] = ceiling_measurement(
        "broker_produce_msgs_per_s", ceilings["kafka.produce"]
    )
    measured["check_duration_s"] = Measurement(
        "check_duration_s",
        time.monotonic() - started,
        "s",
        f"the whole {plan.name} check: " + ", ".join(f"{name} {s:.0f} s" for name, s in phases.items()),
    )
    scorecard = Scorecard(card, measured, run.results)
    report_dir = scorecard.write(reports_root)
    if run.load_run is not None:
        run.load_run.write_json(report_dir / "fleet_load.json")
    (report_dir / "timeline.json").write_text(json.dumps(run.timeline()) + "\n", encoding="utf-8")
    if not keep_run_dir and run_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
    return CheckReport(scorecard, report_dir, plan, card, folder, problems_of(scorecard, run.problems))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"katas check {KATA}", description="Measure the sensors kata's NFRs on a stack of its own."
    )
    p.add_argument(
        "--short", action="store_true", help="the short check (CI's): 80 s of load, 3 history queries"
    )
    p.add_argument(
        "--duration", type=float, default=None, help="seconds of sustained load (default: the plan's)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the malformed messages' draws")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, data) afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    card = get_card(KATA)
    plan = plan_for(card, short=options.short)
    if options.duration is not None:
        plan = replace(plan, sustained_s=max(options.duration, plan.warm_up_s + 10))
    console = Console()
    try:
        with sigterm_as_interrupt():  # stop the stack on SIGTERM as on Ctrl-C
            report = run_check(
                plan, card=card, seed=options.seed, keep_run_dir=options.keep,
                progress=not options.no_progress, console=console,
            )  # fmt: skip
    except KeyboardInterrupt:
        console.print("interrupted: the check's stack was stopped", highlight=False)
        return 130
    except CheckError as exc:
        console.print(f"[red]check failed:[/] {escape(str(exc))}", highlight=False)
        return 1
    code = print_report(console, report.scorecard, report.report_dir)
    for problem in report.problems:
        console.print(f"[red]FAIL[/] {escape(problem)}", highlight=False)
    return code if report.passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
