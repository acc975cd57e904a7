"""The sensors kata under chaos: every worker and every stateful server is stopped under load and started
again, one after the other, while the test fleet keeps publishing.

One stack for the module (the card's, serving the integration tests' small fleet), and one load for the
whole module: all 240 sensors of the 12 buildings report every 10 s (24 readings/s) over MQTT QoS 1 through
their WAN proxies, one message in 50 replaced by a hostile one the bridge must dead-letter. The faults
take turns on that load, each in a segment of its own:

    steady load (LEAD_S) -> fault -> down DOWN_FOR_S -> START -> recovered -> settle (SETTLE_S) -> next

A fault is SIGKILL (a crash: no flush) of the bridge, aggregator, recorder, alerter and API (the workers),
of tansu (the log), of chdb-1 (the store owner of the first tenant), of Redis and of each Mosquitto broker;
the brokers are also stopped with SIGTERM (a planned restart, when Mosquitto saves its database). The
load goes on in short chunks until the last fault has recovered and the minutes it touched are final, so
the module takes what the faults need and no more. Afterwards, once the pipeline has drained, the tests
prove, fault by fault (the acknowledged readings due within the fault's segment) and for the whole run:

- nothing acknowledged is lost: every reading a broker acknowledged (PUBACK) is in its tenant's raw hot
  table (`<tenant db>.raw` in the tenant's own store), and every acknowledged malformed message is in
  `sensors.deadletter`: count in == count stored + count dead-lettered. The one exception is stated, and
  measured by what the load saw acknowledged just before the kill: a SIGKILLed Mosquitto may lose what it
  acknowledged since its last save and had not passed on yet (MQTT_KILL_LOSS_WINDOW_S); a SIGTERM nothing;
- duplicates are handled: redelivery (MQTT and the log are at least once) puts readings on the log twice,
  but the raw table holds each (sensor, timestamp) once (`FINAL`), and the aggregator's 1-minute windows
  count each reading once (per building and minute, the sum of the window counts == the distinct readings);
- the system recovers by itself within RECOVERY_LIMIT_S of START: every building's newest reading in the
  raw table and in the live view (Redis), and through the HVAC API, is one due after START;
- no other component goes down with the victim. When one does, the test starts it again (an
  orchestrator's restart policy) so the durability proof still runs; the crash fails its own test. When
  the API stays broken after its dependency is back, the test restarts it for the same reason, and the
  fault's recovery fails.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from katas.catalog import get_card
from katas.infra import chaos, kafka
from katas.infra.chaos import ChaosAction
from katas.infra.servers import RedisServer, Server, ServerError
from katas.infra.stack import Stack
from katas.sensors.aggregation import DEFAULT_ALLOWED_LATENESS
from katas.sensors.load import Letter, LoadRun, ReadingId, SensorsLoad, brokers_of, reading_id
from katas.sensors.raw import RAW
from katas.sensors.readings import InvalidReadingError, Reading, parse_timestamp
from katas.sensors.storage import WINDOWS, live_key
from katas.sensors.stores import TenantWarehouses
from katas.sensors.tenancy import Registry
from katas.sensors.topics import DEADLETTER, READINGS
from tests.conftest import reachable_run_dir
from tests.integration.sensors.conftest import TEST_FLEET, fleet_env, stack_fleet

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]

RATE = 24.0
"""Readings per second: every sensor of the test fleet (12 buildings x 20) once per 10 s."""
MALFORMED = 0.02
"""One message in 50 is hostile (about one every 2 s), so the dead-letter path runs through the faults."""
SEED = 11
WARMUP_S = 6.0
"""Load before the first fault: every building connected, every consumer past its first fetch."""
LEAD_S = 3.0
"""Steady load before each fault. Longer than what a broker's kill can lose (MQTT_KILL_LOSS_WINDOW_S),
so a reading lost to a fault is due within that fault's own segment."""
DOWN_FOR_S = 2.0
SETTLE_S = 0.5
"""Steady load after a recovery, before the next segment begins."""
CHUNK_S = 5.0
"""The load runs in chunks this long until the last fault has recovered."""
CHUNK_GRACE_S = 0.5
"""Between chunks, how long the engine waits for PUBACKs in flight. Those still missing (a broker is down)
are acknowledged later all the same (the connection resends them) and counted."""
FINAL_GRACE_S = 20.0
TAIL_S = 5.0
POLL_S = 0.5
RECOVERY_LIMIT_S = 20.0
"""From START to every building current again in the raw table, the live view and the HVAC API.
A restarted consumer (aggregator, recorder, alerter) gets its partitions back only once tansu hands
over the killed member's, after its session times out (6 s, katas.infra.kafka.consumer), and a Python
service boots in 1-2 s on two cores: 5-8 s measured for the consumers, 2-5 s for the rest. The rest is
margin for a shared CI machine."""
RECOVERY_WAIT_S = RECOVERY_LIMIT_S + 5.0
"""How long a segment waits for its recovery before the next fault, so a slow one is measured."""
MQTT_KILL_LOSS_WINDOW_S = 2.5
"""What a SIGKILLed Mosquitto may lose: readings it acknowledged after its last save of the database and
had not passed on yet (to the bridge service, or over the region bridge). Mosquitto writes the PUBACK
while it handles the PUBLISH, before any save, and no setting makes the PUBACK wait for one; it saves
its whole database every `autosave_interval` (1 s, katas.infra.servers), compared in whole seconds
(`last_save + 1 < now`), so the last save may be up to 2 s old, and half a second more for the save
itself. A reading lost to a kill must have been acknowledged within this window before it. Measured at
the card's 500 readings/s with `max_inflight_messages 100`: mqtt-eu lost nothing in 7 of 11 kills and 21,
29, 34 and 150 readings in the others, acknowledged 0.02-0.4 s before the kill (queued for the bridge
service, not yet sent to it); mqtt-us nothing in 5 kills. With `max_inflight_messages 1000` the queue
stays empty while the bridge keeps up: nothing lost in 10 kills of mqtt-eu and 2 of mqtt-us. What a kill
can still lose is a queue that built up (the bridge or the log down) since the last save. At this
module's 24 readings/s, nothing in any kill so far. A graceful stop (SIGTERM) saves the database and must
lose nothing (0 lost in 4 stops at 500 readings/s)."""
PUBACK_IN_FLIGHT_S = 0.5
"""A PUBACK a broker sent before it was killed still crosses the building's WAN proxy (up to 100 ms each
way): readings acknowledged this soon after the kill count as acknowledged before it."""
DRAIN_TIMEOUT_S = 60.0
DRAIN_STALL_S = 10.0
ALLOWED_LATENESS_S = DEFAULT_ALLOWED_LATENESS.total_seconds()
"""A minute's windows are final once the aggregator's watermark (the newest reading less this) passed it."""


@dataclass(frozen=True)
class Fault:
    component: str
    graceful: bool = False
    """SIGTERM (a clean stop) instead of SIGKILL."""

    @property
    def id(self) -> str:
        return f"{self.component}-{'sigterm' if self.graceful else 'sigkill'}"

    @property
    def action(self) -> ChaosAction:
        return ChaosAction.TERMINATE if self.graceful else ChaosAction.KILL


FAULTS = (
    Fault("bridge"),
    Fault("aggregator"),
    Fault("recorder"),
    Fault("kafka"),
    Fault("chdb-1"),  # the store owner of the registry's first tenant
    Fault("redis"),
    Fault("mqtt-us", graceful=True),
    Fault("mqtt-eu", graceful=True),
    Fault("mqtt-us"),
    Fault("mqtt-eu"),
    Fault("alerter"),
    Fault("api"),
)
AGGREGATION_BLIND = frozenset({"alerter", "api"})
"""Faults that cannot change what the aggregator counts (the alerter reads in its own consumer group, the
API only reads). They run last, while the minutes of the others become final for the window check."""


# ------------------------------------------------------------------------------------------ what is seen
@dataclass
class Snapshot:
    """One look at the pipeline's outputs: per building, the due time (ms) of its newest reading."""

    at: float
    raw: dict[str, int]
    live: dict[str, int]
    api: dict[str, int]
    """Per probed building (one of each tenant), the newest `as_of` the HVAC API answers with."""
    api_status: dict[str, str]
    """Per probed building, the API's status code (or the error) when it did not answer 200."""
    alerter_readings: float | None
    """`alerter_readings_total` of the running alerter (None: no answer)."""

    def current(self, since_ms: int, buildings: Sequence[str], probes: Sequence[str]) -> bool:
        return (
            all(self.raw.get(b, 0) >= since_ms for b in buildings)
            and all(self.live.get(b, 0) >= since_ms for b in buildings)
            and all(self.api.get(b, 0) >= since_ms for b in probes)
        )


@dataclass
class Segment:
    fault: Fault
    start: float
    """Epoch seconds: readings due from here to `end` are this fault's to account for."""
    fault_at: float = 0.0
    back_at: float = 0.0
    """When START was called."""
    recovered_at: float | None = None
    end: float = 0.0
    crashed: dict[str, str] = field(default_factory=dict)
    """Other components that went down during the segment, with the last line of their log."""
    acknowledged_before_fault: set[ReadingId] = field(default_factory=set)
    """Readings acknowledged within MQTT_KILL_LOSS_WINDOW_S before the fault (or by PUBACKs the victim
    sent before it died): what a SIGKILLed broker may lose."""
    stale: str = ""
    """What was still not current when the segment gave up waiting for its recovery."""
    healed: list[str] = field(default_factory=list)
    """Components the test restarted because they stayed broken after the victim was back."""

    @property
    def recovery_s(self) -> float:
        return (self.recovered_at - self.back_at) if self.recovered_at else float("inf")

    @property
    def outage_s(self) -> float:
        return (self.recovered_at - self.fault_at) if self.recovered_at else float("inf")

    def holds(self, due_ms: int) -> bool:
        return self.start * 1000 <= due_ms < self.end * 1000


@dataclass
class Outcome:
    run: LoadRun
    segments: dict[str, Segment]
    started: float
    ended: float
    stored: dict[ReadingId, int]
    """Every reading of the run in the raw tables -> rows written for it (before FINAL collapses them)."""
    final_rows: int
    """Rows the raw tables return with FINAL for the run."""
    log_records: Counter[ReadingId]
    """Records of each reading on the readings log (more than one: redelivered)."""
    dead_letters: set[tuple[str, bytes]]
    windows: dict[tuple[str, int], int]
    """(building, minute start in s) -> the sum of its building-level 1-minute window counts."""
    raw_minutes: dict[tuple[str, int], int]
    """(building, minute start in s) -> distinct readings in the raw tables."""
    minutes_checked: tuple[int, int]
    load_errors: Counter[str]


# ------------------------------------------------------------------------------------------ the stack
@dataclass
class Chaos:
    stack: Stack
    endpoints: dict[str, Any]
    outcome: Outcome | None = None
    failure: str | None = None
    """Why the run itself failed, so that the other tests report it instead of running it again."""


@pytest.fixture(scope="module")
def sensors() -> Iterator[Chaos]:
    card = get_card("sensors")
    spec = card.stack.model_copy(update={"env": {**card.stack.env, **fleet_env(TEST_FLEET)}})
    with reachable_run_dir("katas-sensors-chaos-") as run, Stack(card.id, spec, run / "sensors") as stack:
        yield Chaos(stack, stack.endpoints())


def outcome_of(sensors: Chaos) -> Outcome:
    """The module's one chaos run, made on first use and judged by every test."""
    if sensors.failure is not None:
        pytest.fail(f"the chaos run failed: {sensors.failure}")
    if sensors.outcome is None:
        try:
            sensors.outcome = asyncio.run(_chaos_run(sensors.stack, sensors.endpoints))
        except Exception as exc:
            sensors.failure = repr(exc)[:500]
            raise
    return sensors.outcome


def _stores(stack: Stack, registry: Registry, timeout_s: float) -> TenantWarehouses:
    urls = [c.endpoint for name, c in stack.components.items() if name.startswith("chdb-")]
    return TenantWarehouses.assign(list(registry.tenants), urls, timeout_s=timeout_s)


def _ms(text: str) -> int:
    return int(parse_timestamp(text).timestamp() * 1000)


def _since(ms: int) -> str:
    return f"fromUnixTimestamp64Milli(toInt64({int(ms)}), 'UTC')"


# ------------------------------------------------------------------------------------------ the poller
class Poller:
    """Looks at the raw tables, the live view, the HVAC API and the alerter every POLL_S."""

    def __init__(self, stack: Stack, endpoints: Mapping[str, Any], registry: Registry) -> None:
        self.registry = registry
        self.stores = _stores(stack, registry, timeout_s=2.0)
        self.redis = aioredis.Redis.from_url(_as_redis(stack["redis"]).url, socket_timeout=2.0)
        self.api = str(endpoints["api"])
        self.alerter = str(endpoints["alerter"])
        self.tokens = {t["tenant"]: t["token"] for t in endpoints["tenants"]}
        self.buildings = [b for t in registry.tenants for b in registry.buildings[t]]
        self.probes = [registry.buildings[t][0] for t in registry.tenants]
        self.snapshots: list[Snapshot] = []
        self._http = httpx.AsyncClient(timeout=2.0)

    async def close(self) -> None:
        await self._http.aclose()
        await self.redis.aclose()
        await self.stores.close()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            raw, live, (api, api_status), alerter = await asyncio.gather(
                self._raw(), self._live(), self._api(), self._alerter()
            )
            self.snapshots.append(Snapshot(time.time(), raw, live, api, api_status, alerter))
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - began)))

    async def _raw(self) -> dict[str, int]:
        async def newest(tenant: str) -> list[dict[str, Any]]:
            try:
                return await self.stores.of(tenant).rows(
                    f"SELECT building, toUnixTimestamp64Milli(max(ts)) AS ms "
                    f"FROM {self.stores.table(tenant, RAW)} "
                    f"WHERE ts > now64(3) - INTERVAL 2 MINUTE GROUP BY building"
                )
            except (httpx.HTTPError, RuntimeError):
                return []  # the store owner may be down

        found = await asyncio.gather(*(newest(t) for t in self.registry.tenants))
        return {str(r["building"]): int(r["ms"]) for rows in found for r in rows}

    async def _live(self) -> dict[str, int]:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for building in self.buildings:
                    pipe.hvals(live_key(self.registry.owner(building) or "", building))
                answers = await pipe.execute()
        except (aioredis.RedisError, OSError):
            return {}
        return {
            building: max((_ms(json.loads(v)["as_of"]) for v in values), default=0)
            for building, values in zip(self.buildings, answers, strict=True)
        }

    async def _api(self) -> tuple[dict[str, int], dict[str, str]]:
        newest: dict[str, int] = {}
        failed: dict[str, str] = {}

        async def probe(building: str) -> None:
            token = self.tokens[self.registry.owner(building) or ""]
            try:
                response = await self._http.get(
                    f"{self.api}/buildings/{building}/zones", headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.HTTPError as exc:
                failed[building] = repr(exc)[:100]
                return
            if response.status_code != 200:
                failed[building] = f"HTTP {response.status_code}"
                return
            stamps = [
                _ms(figures["as_of"])
                for zone in response.json()
                for figures in zone.values()
                if isinstance(figures, dict) and "as_of" in figures
            ]
            newest[building] = max(stamps, default=0)

        await asyncio.gather(*(probe(b) for b in self.probes))
        return newest, failed

    async def _alerter(self) -> float | None:
        try:
            text = (await self._http.get(f"{self.alerter}/metrics")).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("alerter_readings_total "):
                return float(line.split()[1])
        return None

    def stale(self, since_ms: int) -> str:
        """What the last look found not current since `since_ms`."""
        if not self.snapshots:
            return "nothing looked at yet"
        last = self.snapshots[-1]
        parts = []
        for name, newest, wanted in (
            ("raw", last.raw, self.buildings),
            ("live", last.live, self.buildings),
            ("api", last.api, self.probes),
        ):
            behind = [b for b in wanted if newest.get(b, 0) < since_ms]
            if behind:
                parts.append(f"{name}: {len(behind)} of {len(wanted)} buildings behind")
        if last.api_status:
            parts.append("api answers " + ", ".join(sorted(set(last.api_status.values()))))
        return "; ".join(parts) or "current"

    async def recovered(self, fault: Fault, back_at: float, timeout_s: float) -> float | None:
        """When every building was current again (a reading due after `back_at` everywhere); None if
        that did not happen within `timeout_s`."""
        since_ms, seen = int(back_at * 1000), 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for snapshot in self.snapshots[seen:]:
                if snapshot.at < back_at:
                    continue
                alerter_ok = fault.component != "alerter" or (snapshot.alerter_readings or 0) > 0
                if alerter_ok and snapshot.current(since_ms, self.buildings, self.probes):
                    return snapshot.at
            seen = len(self.snapshots)
            await asyncio.sleep(POLL_S / 2)
        return None


def _as_redis(server: Server) -> RedisServer:
    assert isinstance(server, RedisServer)
    return server


# ------------------------------------------------------------------------------------------ the watcher
def _last_words(component: Server) -> str:
    lines = [line for line in component.log_tail(40).splitlines() if line.strip()]
    crashed = [line for line in lines if "worker_crashed" in line]
    return (crashed or lines or ["(empty log)"])[-1][:300]


class Watcher:
    """Notes any component that goes down besides the victim; once the victim runs again, starts it again
    (an orchestrator's restart policy), so that the durability proof can go on."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.segment: Segment | None = None
        self.victim_back = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            segment = self.segment
            for component in list(self.stack):
                if component.is_running():
                    continue
                victim_down = segment is not None and component.name == segment.fault.component
                if victim_down and not self.victim_back.is_set():
                    continue
                if segment is not None:
                    segment.crashed.setdefault(component.name, _last_words(component))
                if segment is None or self.victim_back.is_set():
                    try:
                        await asyncio.to_thread(component.start)
                        self.stack.write_files()
                    except ServerError:
                        pass  # what it needs may still be starting: try again on the next round
            await asyncio.sleep(0.25)


# ------------------------------------------------------------------------------------------ the run
def _acknowledged_so_far(load: SensorsLoad) -> dict[str, int]:
    """Per building, how many PUBACKs its connection has had (its `acknowledged` list, in PUBACK order)."""
    return {building: len(link.acknowledged) for building, link in load.publisher.links.items()}


def _acknowledged_between(
    load: SensorsLoad, before: Mapping[str, int], after: Mapping[str, int]
) -> set[ReadingId]:
    """The readings acknowledged between two `_acknowledged_so_far` counts (malformed messages left out)."""
    return {
        cast(ReadingId, tag)
        for building, link in load.publisher.links.items()
        for tag in link.acknowledged[before[building] : after[building]]
        if not isinstance(tag, Letter)
    }


@dataclass
class Schedule:
    """What the fault sequence tells the load: how long it must go on."""

    segments: dict[str, Segment] = field(default_factory=dict)
    counted_until: float = 0.0
    """The end of the last segment whose fault can change what the aggregator counts."""

    @property
    def minutes_until(self) -> int:
        """The end (s) of the minutes the window check covers: every one touched by a counted segment."""
        return int(-(-self.counted_until // 60) * 60)

    @property
    def load_until(self) -> float:
        """When those minutes are final: the aggregator's watermark trails the newest reading by the
        allowed lateness, so the load goes on that long past them (and a little more for the flush)."""
        return self.minutes_until + ALLOWED_LATENESS_S + 3.0


async def _faults(
    stack: Stack, load: SensorsLoad, poller: Poller, watcher: Watcher, schedule: Schedule, started: float
) -> None:
    await asyncio.sleep(WARMUP_S - LEAD_S)
    begin = started
    for fault in FAULTS:
        segment = schedule.segments[fault.id] = Segment(fault, begin)
        watcher.victim_back.clear()
        watcher.segment = segment
        await asyncio.sleep(LEAD_S - MQTT_KILL_LOSS_WINDOW_S)
        window_opens = _acknowledged_so_far(load)
        await asyncio.sleep(MQTT_KILL_LOSS_WINDOW_S)
        segment.fault_at = time.time()
        await asyncio.to_thread(chaos.apply, stack, fault.action, fault.component)
        await asyncio.sleep(
            PUBACK_IN_FLIGHT_S
        )  # PUBACKs the victim sent before it died, still crossing the WAN
        segment.acknowledged_before_fault = _acknowledged_between(
            load, window_opens, _acknowledged_so_far(load)
        )
        await asyncio.sleep(DOWN_FOR_S - PUBACK_IN_FLIGHT_S)
        segment.back_at = time.time()
        await asyncio.to_thread(chaos.apply, stack, ChaosAction.START, fault.component)
        watcher.victim_back.set()
        segment.recovered_at = await poller.recovered(fault, segment.back_at, RECOVERY_WAIT_S)
        if segment.recovered_at is None:
            segment.stale = poller.stale(int(segment.back_at * 1000))
            if poller.snapshots and poller.snapshots[-1].api_status and fault.component != "api":
                # The API stayed broken after the victim came back: restart it, as a liveness probe
                # would, so that the faults after this one are judged on their own.
                segment.healed.append("api")
                healed_at = time.time()
                await asyncio.to_thread(chaos.apply, stack, ChaosAction.RESTART, "api")
                await poller.recovered(fault, healed_at, RECOVERY_WAIT_S)
        await asyncio.sleep(SETTLE_S)
        segment.end = begin = time.time()
        if fault.component not in AGGREGATION_BLIND:
            schedule.counted_until = segment.end
        print(
            f"{fault.id}: recovered {segment.recovery_s:.1f} s after START "
            f"({segment.outage_s:.1f} s after the fault)"
            + (f"; went down too: {', '.join(segment.crashed)}" if segment.crashed else "")
            + (f"; not recovered: {segment.stale}" if segment.stale else "")
            + (f"; restarted by the test: {', '.join(segment.healed)}" if segment.healed else ""),
            flush=True,
        )
    watcher.segment = None


async def _chaos_run(stack: Stack, endpoints: dict[str, Any]) -> Outcome:
    fleet = stack_fleet()
    registry = Registry.of(fleet)
    poller = Poller(stack, endpoints, registry)
    watcher = Watcher(stack)
    stop = asyncio.Event()
    background = [asyncio.create_task(poller.run(stop)), asyncio.create_task(watcher.run(stop))]
    load = SensorsLoad(brokers_of(endpoints), fleet, rate=RATE, malformed=MALFORMED, seed=SEED)
    schedule = Schedule()
    errors: Counter[str] = Counter()
    try:
        async with load:
            started = time.time()
            faults = asyncio.create_task(_faults(stack, load, poller, watcher, schedule, started))
            # Chunks until the last fault has recovered and the minutes of the counted ones are final.
            while not faults.done() or time.time() < schedule.load_until - TAIL_S:
                chunk_s = (
                    CHUNK_S if not faults.done() else min(CHUNK_S, schedule.load_until - TAIL_S - time.time())
                )
                chunk = await load.run(max(chunk_s, 0.5), grace_s=CHUNK_GRACE_S)
                errors.update(chunk.result.errors)
            run = await load.run(TAIL_S, grace_s=FINAL_GRACE_S)
            errors.update(run.result.errors)
            ended = time.time()
            await faults
        print(
            f"load: published {run.published}, acknowledged {run.acknowledged_count} "
            f"({len(run.acknowledged)} readings, {len(run.acknowledged_letters)} malformed), "
            f"failed {run.failed}, reconnects {run.reconnects}, in {ended - started:.0f} s",
            flush=True,
        )
        return await _judge(stack, endpoints, registry, run, schedule, started, ended, errors)
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        await poller.close()


async def _judge(
    stack: Stack,
    endpoints: Mapping[str, Any],
    registry: Registry,
    run: LoadRun,
    schedule: Schedule,
    started: float,
    ended: float,
    errors: Counter[str],
) -> Outcome:
    since_ms = int(started * 1000) - 1000
    judging = time.monotonic()
    stores = _stores(stack, registry, timeout_s=30.0)
    try:
        stored = await _drain(stores, run.acknowledged, since_ms)
        final_rows = 0
        for tenant, ch in stores:
            final_rows += int(
                await ch.scalar(
                    f"SELECT count() FROM {stores.table(tenant, RAW)} FINAL WHERE ts >= {_since(since_ms)}"
                )
                or 0
            )
        first_minute, last_minute = int(started // 60 * 60), schedule.minutes_until
        windows, raw_minutes = await _minutes(stores, first_minute, last_minute)
    finally:
        await stores.close()
    log_records = await _log_readings(str(endpoints["kafka"]), since_ms)
    dead_letters = await _dead_letters(str(endpoints["kafka"]))
    print(f"judged in {time.monotonic() - judging:.1f} s", flush=True)
    return Outcome(
        run=run,
        segments=schedule.segments,
        started=started,
        ended=ended,
        stored=stored,
        final_rows=final_rows,
        log_records=log_records,
        dead_letters=dead_letters,
        windows=windows,
        raw_minutes=raw_minutes,
        minutes_checked=(first_minute, last_minute),
        load_errors=errors,
    )


async def _stored(stores: TenantWarehouses, since_ms: int) -> dict[ReadingId, int]:
    found: dict[ReadingId, int] = {}
    for tenant, ch in stores:
        rows = await ch.rows(
            f"SELECT sensor_id, toUnixTimestamp64Milli(ts) AS ms, count() AS n "
            f"FROM {stores.table(tenant, RAW)} WHERE ts >= {_since(since_ms)} GROUP BY sensor_id, ms"
        )
        found.update({(str(r["sensor_id"]), int(r["ms"])): int(r["n"]) for r in rows})
    return found


async def _drain(
    stores: TenantWarehouses, acknowledged: set[ReadingId], since_ms: int
) -> dict[ReadingId, int]:
    """The stored readings once every acknowledged one is stored, or once the missing stopped shrinking."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    missing, progress_at = len(acknowledged) + 1, time.monotonic()
    while True:
        stored = await _stored(stores, since_ms)
        now_missing = len(acknowledged - stored.keys())
        if now_missing < missing:
            missing, progress_at = now_missing, time.monotonic()
        if not now_missing or time.monotonic() > deadline or time.monotonic() - progress_at > DRAIN_STALL_S:
            return stored
        await asyncio.sleep(1.0)


async def _minutes(
    stores: TenantWarehouses, first: int, last: int
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """Per (building, minute) in [first, last): the building-level window counts and the raw readings.
    The aggregator writes a minute once it is final; it is given a few seconds to have done so."""
    deadline = time.monotonic() + 15
    while True:
        windows: dict[tuple[str, int], int] = {}
        raw: dict[tuple[str, int], int] = {}
        for tenant, ch in stores:
            for row in await ch.rows(
                f"SELECT building, toUnixTimestamp(start) AS m, sum(count) AS n "
                f"FROM {stores.table(tenant, WINDOWS)} FINAL "
                f"WHERE size_s = 60 AND level = 'building' AND start >= {_since(first * 1000)} "
                f"AND start < {_since(last * 1000)} GROUP BY building, m"
            ):
                windows[(str(row["building"]), int(row["m"]))] = int(row["n"])
            for row in await ch.rows(
                f"SELECT building, toUnixTimestamp(toStartOfMinute(ts)) AS m, count() AS n "
                f"FROM {stores.table(tenant, RAW)} FINAL "
                f"WHERE ts >= {_since(first * 1000)} AND ts < {_since(last * 1000)} GROUP BY building, m"
            ):
                raw[(str(row["building"]), int(row["m"]))] = int(row["n"])
        if windows == raw or time.monotonic() > deadline:
            return windows, raw
        await asyncio.sleep(1.0)


async def _log_readings(bootstrap: str, since_ms: int) -> Counter[ReadingId]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: Counter[ReadingId] = Counter()
    try:
        partitions = await kafka.partitions_of(consumer, READINGS)
        async for records in kafka.read_from_start(consumer, partitions):
            for record in records:
                try:
                    rid = reading_id(Reading.from_json(record.value or b""))
                except (InvalidReadingError, ValueError):
                    continue
                if rid[1] >= since_ms:
                    found[rid] += 1
    finally:
        await consumer.stop()
    return found


async def _dead_letters(bootstrap: str) -> set[tuple[str, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: set[tuple[str, bytes]] = set()
    try:
        partitions = await kafka.partitions_of(consumer, DEADLETTER)
        async for records in kafka.read_from_start(consumer, partitions):
            for record in records:
                letter = json.loads(record.value or b"{}")
                found.add((letter["mqtt_topic"], base64.b64decode(letter["payload_b64"])))
    finally:
        await consumer.stop()
    return found


def _at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3]


# ----------------------------------------------------------------------------------------- the proofs
@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_nothing_acknowledged_is_lost_and_the_pipeline_recovers(sensors: Chaos, fault: Fault) -> None:
    outcome = outcome_of(sensors)
    segment = outcome.segments[fault.id]
    acked = {rid for rid in outcome.run.acknowledged if segment.holds(rid[1])}
    lost = sorted(acked - outcome.stored.keys(), key=lambda rid: rid[1])
    fault_ms = int(segment.fault_at * 1000)
    print(
        f"{fault.id}: {len(acked)} readings acknowledged in the segment, {len(lost)} not stored"
        + (
            f" (due {(lost[0][1] - fault_ms) / 1000:+.2f}..{(lost[-1][1] - fault_ms) / 1000:+.2f} s from "
            f"the fault; buildings {sorted(Counter('-'.join(rid[0].split('-')[:2]) for rid in lost).items())})"
            if lost
            else ""
        )
        + f"; recovered {segment.recovery_s:.1f} s after START, {segment.outage_s:.1f} s after the fault"
    )
    assert len(acked) > RATE * (LEAD_S + DOWN_FOR_S) * 0.8, (
        "too few readings were acknowledged to prove anything"
    )
    if fault.component.startswith("mqtt-") and not fault.graceful:
        outside = [rid for rid in lost if rid not in segment.acknowledged_before_fault]
        assert not outside, (
            f"{len(outside)} lost readings were acknowledged earlier than {MQTT_KILL_LOSS_WINDOW_S} s before "
            f"the kill (the last save must hold them), e.g. {outside[:3]}"
        )
    else:
        assert not lost, f"{len(lost)} acknowledged readings are not stored, e.g. {lost[:3]}"

    assert segment.recovered_at is not None, (
        f"not every building was current again within {RECOVERY_WAIT_S} s of START: {segment.stale}"
        + (f" (the test restarted {', '.join(segment.healed)} to go on)" if segment.healed else "")
    )
    assert segment.recovery_s <= RECOVERY_LIMIT_S, (
        f"every building was current again {segment.recovery_s:.1f} s after START (limit {RECOVERY_LIMIT_S} s)"
    )


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_no_other_component_goes_down_with_the_victim(sensors: Chaos, fault: Fault) -> None:
    segment = outcome_of(sensors).segments[fault.id]
    assert not segment.crashed, (
        f"{fault.id} took down "
        + "; ".join(f"{name} ({words})" for name, words in segment.crashed.items())
        + ", and nothing in the stack starts them again"
    )


def test_count_in_equals_count_stored_plus_count_dead_lettered(sensors: Chaos) -> None:
    """Over the whole run, warm-up and tail included: every acknowledged message is accounted for, but
    for what a SIGKILLed broker lost within its stated window."""
    outcome = outcome_of(sensors)
    run = outcome.run
    stored = run.acknowledged & outcome.stored.keys()
    letters = [
        letter
        for letter in run.acknowledged_letters
        if (letter.topic, letter.payload) in outcome.dead_letters
    ]
    windows = set().union(
        *(
            s.acknowledged_before_fault
            for s in outcome.segments.values()
            if s.fault.component.startswith("mqtt-") and not s.fault.graceful
        )
    )
    lost = run.acknowledged - outcome.stored.keys()
    print(
        f"in {run.acknowledged_count} (acknowledged) = stored {len(stored)} + dead-lettered {len(letters)} "
        f"+ lost to broker kills {len(lost & windows)}; unaccounted {len(lost - windows)}; "
        f"published {run.published}, never acknowledged {run.failed}; load errors {dict(outcome.load_errors)}"
    )
    assert run.acknowledged_count == len(run.acknowledged) + len(run.acknowledged_letters), (
        "a PUBACK came back twice for one message"
    )
    assert not lost - windows, (
        f"{len(lost - windows)} acknowledged readings are not stored: {sorted(lost - windows)[:3]}"
    )
    assert run.acknowledged_count == len(stored) + len(letters) + len(lost & windows)


def test_acknowledged_malformed_messages_are_dead_lettered(sensors: Chaos) -> None:
    outcome = outcome_of(sensors)
    letters = outcome.run.acknowledged_letters
    assert len(letters) >= 10, "too few malformed messages were acknowledged to prove anything"
    missing = [letter for letter in letters if (letter.topic, letter.payload) not in outcome.dead_letters]
    print(f"{len(letters)} malformed messages acknowledged, {len(missing)} not dead-lettered")
    assert not missing, f"{len(missing)} acknowledged malformed messages are not dead-lettered: {missing[:2]}"


def test_duplicates_are_stored_once_and_counted_once(sensors: Chaos) -> None:
    outcome = outcome_of(sensors)
    repeated_on_log = sum(n - 1 for n in outcome.log_records.values() if n > 1)
    rows = sum(outcome.stored.values())
    print(
        f"log: {sum(outcome.log_records.values())} records of {len(outcome.log_records)} readings "
        f"({repeated_on_log} redelivered); raw: {rows} rows written for {len(outcome.stored)} readings, "
        f"{outcome.final_rows} with FINAL; minutes checked "
        f"{_at(outcome.minutes_checked[0] * 1000)}..{_at(outcome.minutes_checked[1] * 1000)}: "
        f"{len(outcome.windows)} building-minutes"
    )
    assert outcome.final_rows == len(outcome.stored), "the raw table returns a reading more than once"
    assert len(outcome.raw_minutes) >= 12 * 2, "too few final minutes to prove anything"
    differ = {
        key: (outcome.windows.get(key), outcome.raw_minutes.get(key))
        for key in outcome.raw_minutes.keys() | outcome.windows.keys()
        if outcome.windows.get(key) != outcome.raw_minutes.get(key)
    }
    assert not differ, (
        "building-minutes whose window count is not the number of distinct readings stored "
        f"(window, raw): {sorted(differ.items())[:5]}"
    )
