"""`katas load sensors`: drive the running sensors stack with the readings of the simulated fleet.

    katas load sensors                                     # 500 readings/s for 60 s, all 50 buildings
    katas load sensors --rate 2000 --duration 30 --malformed 0.01 --output /tmp/load.json
    katas load sensors --buildings mex-010,syd-011 --rate 20 --acknowledged /tmp/acked.jsonl

Buildings publish their sensors' JSON readings (`Fleet.readings`) over MQTT at QoS 1 to the broker of
their region (endpoints.json `mqtt`: mqtt-eu, then mqtt-us; a building's region comes from its city),
one connection per building, each through a chaos proxy of its own that adds the building's WAN round trip
(20-200 ms, `Building.latency_ms`). See `loadgen.sensors` for the connections.

How the rate is reached: not by compressing time, but by choosing how many sensors report. Every sensor
keeps the production interval (one reading every 10 s, at its own phase within the interval) and stamps
the reading with the moment it is due, which is the moment it is sent: the 10 s and 1 min windows then
hold what they would in production, and freshness and alert latency are measured against the real clock.
`rate x 10 s` sensors report, spread evenly over the buildings (all of the fleet's, or those of
`--buildings`), each building's first sensors in zone order, so the zones that report are whole (ten
sensors of five types). The card's 1/100 rate, 500 readings/s, is 50 buildings x 100 sensors (10 zones
each); the issue's 5,000/s is the whole fleet, 50 x 1,000. Spreading over every building rather than
filling a few keeps every region, tenant and WAN latency in play at any rate. A rate above what the
buildings' sensors give at 10 s (fleet size / 10) is refused rather than compressed.

Open loop (`loadgen.run_load`): each reading is published when it is due, whether or not earlier ones were
acknowledged; the engine's latency runs from the due time to the PUBACK, so a stalled broker shows in
every reading due during the stall. Publish -> PUBACK latency is also kept per region and per building
(HDR histograms), to compare with the injected round trip.

`--malformed F` replaces each reading, with probability F (seeded by `--seed`), by one of the fleet's
hostile messages for the same sensor (`malformed_messages`), picked among those on a topic the bridge's
subscription matches: a message on another topic is acknowledged by the broker and reaches no one, so it
could be neither stored nor dead-lettered, and "acknowledged == stored + dead-lettered" could not hold.

What is counted: published, acknowledged (PUBACK received) and failed (published, never acknowledged), per
region; and the identity of every acknowledged reading, (sensor_id, ts in ms), and every acknowledged
malformed message, so a test can compare them with what the log and the stores hold
(`--acknowledged FILE` writes them as JSON lines).

Loopback only: every broker address must be local, and the proxies listen on 127.0.0.1. Bounded: at most
`MAX_DURATION_S` of load, then the engine's grace period for acknowledgements in flight; every proxy and
client it started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, cast

from rich.console import Console
from rich.table import Table

from katas.sensors.fleet import INTERVAL_MS, Building, Fleet, Malformed, Sensor, malformed_messages
from katas.sensors.readings import TOPIC_PREFIX, Reading
from loadgen import DEFAULT_GRACE_S, LoadResult, run_load, stack
from loadgen.sensors import SensorsPublisher, Tally, region_brokers
from loadgen.stack import EXIT_NOT_RUNNING, EXIT_USAGE, StackNotRunningError

KATA = "sensors"
DEFAULT_RATE = 500.0
"""Readings per second: the card's 1/100 compute scale (50 buildings x 100 sensors every 10 s)."""
DEFAULT_DURATION_S = 60.0
DEFAULT_MALFORMED = 0.001
DEFAULT_SEED = 0
MAX_DURATION_S = 3600.0
MAX_IN_FLIGHT = 50_000
"""Readings awaiting their PUBACK before the engine holds back new ones: at 500 readings/s, 100 s of a
broker that acknowledges nothing (the chaos tests' outages are shorter), a few KiB each."""
CHUNK_MS = 100
"""Readings are made 100 ms at a time, as the schedule reaches them: many short pauses of the event loop
(a fraction of a millisecond at 500 readings/s) rather than a long one that would delay acknowledgements."""
INTERVAL_S = INTERVAL_MS / 1000

ReadingId = tuple[str, int]
"""A reading's identity: (sensor_id, timestamp in ms since the epoch). Redelivery repeats it."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def reading_id(reading: Reading) -> ReadingId:
    """The identity of a reading read back from the log or a store, comparable with `LoadRun.acknowledged`."""
    return reading.place.sensor_id, (reading.ts - _EPOCH) // _MS


def at_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def now_ms() -> int:
    return (datetime.now(UTC) - _EPOCH) // _MS


class Letter(NamedTuple):
    """A malformed message as it was published, and the reason the bridge must give for it."""

    topic: str
    payload: bytes
    reason: str


# ---------------------------------------------------------------------------------- which sensors report
def allocate(total: int, capacities: Sequence[int]) -> list[int]:
    """Split `total` over slots of the given capacities as evenly as they allow (earlier slots take the
    remainder); ValueError if they cannot hold it."""
    if total < 0:
        raise ValueError(f"cannot allocate a negative count ({total})")
    if total > sum(capacities):
        raise ValueError(f"{total} does not fit in a capacity of {sum(capacities)}")
    # Water-filling: the highest level every slot can be filled to (or to its capacity) within the total,
    # then one more each for the first slots with room, until the remainder is gone.
    low, high = 0, max(capacities, default=0)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(capacity, mid) for capacity in capacities) <= total:
            low = mid
        else:
            high = mid - 1
    shares = [min(capacity, low) for capacity in capacities]
    remaining = total - sum(shares)
    for i, capacity in enumerate(capacities):
        if not remaining:
            break
        if capacity > low:
            shares[i] += 1
            remaining -= 1
    return shares


def count_due(phase_ms: int, start_ms: int, end_ms: int) -> int:
    """How many times a sensor of `phase_ms` reports in [start_ms, end_ms): the k with
    start <= k x interval + phase < end."""
    if end_ms <= start_ms:
        return 0
    return (phase_ms - start_ms) // INTERVAL_MS - (phase_ms - end_ms) // INTERVAL_MS


@dataclass(frozen=True)
class Plan:
    """Which sensors report, building by building (each building's first sensors, in zone order)."""

    buildings: tuple[Building, ...]
    """Buildings with at least one reporting sensor, in fleet order."""
    sensors: Mapping[str, tuple[Sensor, ...]]
    """Building id -> its reporting sensors."""
    by_topic: Mapping[str, Sensor] = field(repr=False)
    source: Fleet = field(repr=False)
    """A fleet of the reporting sensors only (`restricted`): makes their readings and nothing else."""

    @property
    def sensor_count(self) -> int:
        return len(self.by_topic)

    @property
    def rate(self) -> float:
        """Readings per second: every sensor once per 10 s."""
        return self.sensor_count / INTERVAL_S

    def count_due(self, start_ms: int, end_ms: int) -> int:
        """Readings due in [start_ms, end_ms): what `due_messages` yields for the window."""
        return sum(count_due(s.phase_ms, start_ms, end_ms) for s in self.by_topic.values())


def plan(fleet: Fleet, rate: float, buildings: Sequence[str] | None = None) -> Plan:
    """The sensors that give `rate` readings per second at the 10 s interval, spread evenly over
    `buildings` (default: the whole fleet). ValueError for an unknown building or a rate the buildings'
    sensors cannot reach."""
    if buildings:
        known = {b.id for b in fleet.buildings}
        if unknown := [b for b in buildings if b not in known]:
            raise ValueError(
                f"the fleet has no building {', '.join(unknown)} (it has {len(known)}: "
                f"{', '.join(sorted(known)[:6])}, ...)"
            )
        chosen = [b for b in fleet.buildings if b.id in set(buildings)]
    else:
        chosen = list(fleet.buildings)
    total = round(rate * INTERVAL_S)
    if total < 1:
        raise ValueError(f"rate {rate:g}/s is below one sensor every {INTERVAL_S:g} s (0.1 readings/s)")
    available = [fleet.sensors_of(b.id) for b in chosen]
    capacity = sum(len(s) for s in available)
    if total > capacity:
        raise ValueError(
            f"rate {rate:g}/s needs {total:,} sensors reporting every {INTERVAL_S:g} s; "
            f"{len(chosen)} building(s) have {capacity:,}, so at most {capacity / INTERVAL_S:g} readings/s"
        )
    shares = allocate(total, [len(s) for s in available])
    sensors = {
        b.id: tuple(own[:share]) for b, own, share in zip(chosen, available, shares, strict=True) if share
    }
    by_topic = {s.topic: s for own in sensors.values() for s in own}
    source = restricted(fleet, [s for own in sensors.values() for s in own])
    return Plan(tuple(b for b in chosen if b.id in sensors), sensors, by_topic, source)


def restricted(fleet: Fleet, sensors: Sequence[Sensor]) -> Fleet:
    """A fleet that makes the readings of `sensors` only, exactly as `fleet` makes them: a value is a
    pure function of the seed, the sensor (which carries its zone and building) and the time, and the
    noise table and zones are shared. It shares the overrides list too, so `fleet.inject` reaches it.

    Why: `Fleet.readings` makes every sensor's reading, and at 500 readings/s nine in ten of the card
    fleet's would be thrown away, about a tenth of a core on a machine the stack shares. (Fleet has no
    public way to restrict it; a `Fleet.restricted` there would be the better home.)"""
    sub = Fleet(fleet.seed, fleet.tenants, fleet.buildings, fleet.zones, tuple(sensors), fleet._noise)
    sub.overrides = fleet.overrides
    return sub


# ------------------------------------------------------------------------------------------ the schedule
def deliverable(messages: Sequence[Malformed]) -> list[Malformed]:
    """The malformed messages that reach the bridge: on a topic its subscription (sensors/+/+/+/+/+)
    matches, whatever the segments hold."""
    return [m for m in messages if (parts := m.topic.split("/"))[0] == TOPIC_PREFIX and len(parts) == 6]


class Due(NamedTuple):
    """One message of the schedule: where and what to publish, and when it is due."""

    building: str
    topic: str
    payload: bytes
    due_ms: int
    reading: ReadingId | None
    """The reading's identity; None for a malformed message."""
    reason: str | None
    """The dead-letter reason of a malformed message; None for a reading."""


def due_messages(
    which: Plan,
    start_ms: int,
    end_ms: int,
    *,
    malformed: float = 0.0,
    rng: random.Random | None = None,
    chunk_ms: int = CHUNK_MS,
) -> Iterator[Due]:
    """The plan's readings due in [start_ms, end_ms), in time order, stamped with their due time; each
    replaced, with probability `malformed`, by a deliverable malformed message of the same sensor."""
    if not 0 < chunk_ms <= INTERVAL_MS:
        raise ValueError(f"chunk_ms must be 1..{INTERVAL_MS}")
    if not 0.0 <= malformed <= 1.0:
        raise ValueError(f"malformed must be a fraction 0..1, got {malformed!r}")
    draw = rng or random.Random(DEFAULT_SEED)
    by_topic = which.by_topic
    start = start_ms
    while start < end_ms:
        end = min(start + chunk_ms, end_ms)
        for topic, payload in which.source.readings(at_ms(start), at_ms(end)):
            sensor = by_topic.get(topic)
            if sensor is None:
                continue
            due = start + (sensor.phase_ms - start) % INTERVAL_MS  # the one report in [start, end)
            building = sensor.place.building
            if malformed and draw.random() < malformed:
                bad = draw.choice(deliverable(malformed_messages(at_ms(due), sensor.place)))
                yield Due(building, bad.topic, bad.payload, due, None, bad.reason)
            else:
                yield Due(building, topic, payload, due, (sensor.id, due), None)
        start = end


class FleetSchedule:
    """The engine's profile for a plan: operation i is the i-th due message, at its due time relative to
    `start_ms` (wall clock, ms). `take(i)` hands the operation its message."""

    def __init__(
        self,
        which: Plan,
        start_ms: int,
        duration_s: float,
        *,
        malformed: float = 0.0,
        seed: int = DEFAULT_SEED,
    ) -> None:
        if not 0 < duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration must be 0..{MAX_DURATION_S:g} s, got {duration_s!r}")
        self.plan = which
        self.start_ms = start_ms
        self.end_ms = start_ms + round(duration_s * 1000)
        self.malformed = malformed
        self.seed = seed
        self._due: dict[int, Due] = {}

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000

    def intended_count(self) -> int:
        return self.plan.count_due(self.start_ms, self.end_ms)

    def intended_offsets(self) -> Iterator[float]:
        messages = due_messages(
            self.plan,
            self.start_ms,
            self.end_ms,
            malformed=self.malformed,
            rng=random.Random(self.seed),
        )
        for i, due in enumerate(messages):
            self._due[i] = due
            yield (due.due_ms - self.start_ms) / 1000

    def take(self, i: int) -> Due:
        return self._due.pop(i)

    def describe(self) -> str:
        return (
            f"fleet:{self.plan.rate:g}/s:{self.duration_s:g}s "
            f"({self.plan.sensor_count} sensors in {len(self.plan.buildings)} buildings every {INTERVAL_S:g} s)"
        )


# ---------------------------------------------------------------------------------------------- running
@dataclass
class LoadRun:
    """What a run sent and what the brokers acknowledged."""

    result: LoadResult
    """The engine's view: one operation per message, latency from its due time to its PUBACK."""
    rate: float
    sensors: int
    regions: dict[str, Tally]
    """Per region: published, acknowledged, failed; publish -> PUBACK latency."""
    buildings: dict[str, tuple[str, int, Tally]]
    """Per building: (region, injected round trip in ms, its tally)."""
    malformed: Counter[str]
    """Malformed messages published, per region."""
    acknowledged: set[ReadingId]
    """Every reading whose PUBACK came back (also after the engine stopped waiting for it)."""
    acknowledged_letters: list[Letter]
    """Every malformed message whose PUBACK came back."""
    reconnects: int

    @property
    def published(self) -> int:
        return sum(t.published for t in self.regions.values())

    @property
    def acknowledged_count(self) -> int:
        return sum(t.acknowledged for t in self.regions.values())

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.regions.values())

    def details(self) -> dict[str, Any]:
        """The sensors-specific part of the JSON report."""

        def ms(tally: Tally, percentile: float) -> float | None:
            h = tally.latency
            return h.get_value_at_percentile(percentile) / 1000 if h.get_total_count() else None

        return {
            "rate": self.rate,
            "sensors": self.sensors,
            "published": self.published,
            "acknowledged": self.acknowledged_count,
            "failed": self.failed,
            "reconnects": self.reconnects,
            "regions": {
                region: {
                    "published": t.published,
                    "acknowledged": t.acknowledged,
                    "failed": t.failed,
                    "malformed": self.malformed[region],
                    "publish_ack_p50_ms": ms(t, 50),
                    "publish_ack_p99_ms": ms(t, 99),
                    "publish_ack_max_ms": ms(t, 100),
                }
                for region, t in sorted(self.regions.items())
            },
            "buildings": {
                building: {
                    "region": region,
                    "wan_rtt_ms": rtt,
                    "published": t.published,
                    "acknowledged": t.acknowledged,
                    "publish_ack_min_ms": t.latency.get_min_value() / 1000 if t.acknowledged else None,
                    "publish_ack_p50_ms": ms(t, 50),
                }
                for building, (region, rtt, t) in self.buildings.items()
            },
        }

    def write_json(self, path: Path) -> Path:
        """The engine's LoadResult (readable with `LoadResult.from_dict`) plus a `sensors` section."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {**self.result.to_dict(), "sensors": self.details()}
        path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        return path

    def write_acknowledged(self, path: Path) -> Path:
        """One JSON line per acknowledged message: {"sensor_id", "ts_ms"} for a reading, {"mqtt_topic",
        "payload_b64", "reason"} for a malformed one (the dead letter's fields)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for sensor_id, ts_ms in sorted(self.acknowledged):
                out.write(json.dumps({"sensor_id": sensor_id, "ts_ms": ts_ms}) + "\n")
            for letter in self.acknowledged_letters:
                payload = base64.b64encode(letter.payload).decode("ascii")
                out.write(
                    json.dumps({"mqtt_topic": letter.topic, "payload_b64": payload, "reason": letter.reason})
                    + "\n"
                )
        return path


def read_acknowledged(path: Path) -> tuple[set[ReadingId], list[Letter]]:
    """What `LoadRun.write_acknowledged` wrote."""
    readings: set[ReadingId] = set()
    letters: list[Letter] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if "sensor_id" in entry:
            readings.add((str(entry["sensor_id"]), int(entry["ts_ms"])))
        else:
            payload = base64.b64decode(entry["payload_b64"])
            letters.append(Letter(str(entry["mqtt_topic"]), payload, str(entry["reason"])))
    return readings, letters


class SensorsLoad:
    """A load run's connections and schedule: open it (proxies and MQTT connections come up), `run` it,
    close it. Tests that break things under load reach the connections through `publisher`.

        async with SensorsLoad(endpoints["mqtt"], fleet, rate=20, buildings=["mex-001"]) as load:
            run = await load.run(10)
    """

    def __init__(
        self,
        brokers: Sequence[str],
        fleet: Fleet,
        *,
        rate: float = DEFAULT_RATE,
        buildings: Sequence[str] | None = None,
        malformed: float = DEFAULT_MALFORMED,
        seed: int = DEFAULT_SEED,
    ) -> None:
        if not 0.0 <= malformed <= 1.0:
            raise ValueError(f"malformed must be a fraction 0..1, got {malformed!r}")
        self.fleet = fleet
        self.plan = plan(fleet, rate, buildings)
        self.malformed = malformed
        self.seed = seed
        self.publisher = SensorsPublisher(brokers, self.plan.buildings)
        self._malformed_sent: Counter[str] = Counter()

    async def __aenter__(self) -> SensorsLoad:
        # Make one interval of readings first: the fleet builds each zone's state (hours of occupancy
        # history) on first use, which would otherwise stall the first seconds of the run.
        end = now_ms()
        for _ in self.plan.source.readings(at_ms(end - INTERVAL_MS), at_ms(end)):
            pass
        await self.publisher.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.publisher.close()

    async def run(
        self,
        duration_s: float,
        *,
        progress: bool = False,
        label: str = "sensors fleet",
        grace_s: float = DEFAULT_GRACE_S,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> LoadRun:
        """Publish the plan's readings for `duration_s` (from now), open loop, and count what came back."""
        schedule = FleetSchedule(self.plan, now_ms(), duration_s, malformed=self.malformed, seed=self.seed)
        publisher = self.publisher
        region = {b.id: b.region for b in self.plan.buildings}

        async def operation(i: int) -> None:
            due = schedule.take(i)
            if due.reading is not None:
                await publisher.publish(due.building, due.topic, due.payload, due.reading)
            else:
                self._malformed_sent[region[due.building]] += 1
                letter = Letter(due.topic, due.payload, due.reason or "")
                await publisher.publish(due.building, due.topic, due.payload, letter)

        result = await run_load(
            schedule, operation, max_in_flight=max_in_flight, progress=progress, label=label, grace_s=grace_s
        )
        return self.summary(result)

    def summary(self, result: LoadResult) -> LoadRun:
        tags = self.publisher.acknowledged()
        links = self.publisher.links
        return LoadRun(
            result=result,
            rate=self.plan.rate,
            sensors=self.plan.sensor_count,
            regions=self.publisher.region_tallies(),
            buildings={b: (link.region, link.building.latency_ms, link.tally) for b, link in links.items()},
            malformed=Counter(self._malformed_sent),
            acknowledged={cast(ReadingId, tag) for tag in tags if not isinstance(tag, Letter)},
            acknowledged_letters=[tag for tag in tags if isinstance(tag, Letter)],
            reconnects=sum(max(0, link.connects - 1) for link in links.values()),
        )


def brokers_of(endpoints: Mapping[str, Any]) -> list[str]:
    """endpoints.json's `mqtt`: a list of host:port (a comma-separated string is accepted too)."""
    value = endpoints["mqtt"]
    return [a for a in value.split(",") if a] if isinstance(value, str) else [str(a) for a in value]


async def drive(
    endpoints: Mapping[str, Any],
    duration_s: float = DEFAULT_DURATION_S,
    *,
    fleet: Fleet | None = None,
    rate: float = DEFAULT_RATE,
    buildings: Sequence[str] | None = None,
    malformed: float = DEFAULT_MALFORMED,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
    grace_s: float = DEFAULT_GRACE_S,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> LoadRun:
    """Open the connections, publish for `duration_s`, close everything: one bounded run against the
    stack at `endpoints`. `fleet` defaults to the stack's own (`SensorsSettings().fleet()`)."""
    if fleet is None:
        from katas.sensors.settings import SensorsSettings

        fleet = SensorsSettings().fleet()
    load = SensorsLoad(
        brokers_of(endpoints), fleet, rate=rate, buildings=buildings, malformed=malformed, seed=seed
    )
    async with load:
        return await load.run(duration_s, progress=progress, grace_s=grace_s, max_in_flight=max_in_flight)


# ------------------------------------------------------------------------------------------------ CLI
def default_endpoints_path() -> Path:
    return stack.default_endpoints_path(KATA)


def read_endpoints(path: Path) -> dict[str, Any]:
    """The running stack's endpoints; StackNotRunningError if there is none or it has no `mqtt`,
    ValueError if a broker is not on loopback or there is not one per region."""
    endpoints = stack.read_endpoints(KATA, path, ())
    if "mqtt" not in endpoints:
        raise StackNotRunningError(
            f"{path} has no mqtt: the stack is not fully up (see `katas status {KATA}`)"
        )
    region_brokers(brokers_of(endpoints))
    return endpoints


def summary_table(run: LoadRun, brokers: Mapping[str, str] | None = None) -> Table:
    table = Table(
        title=f"sensors load: {run.sensors:,} sensors, {run.rate:g} readings/s", title_justify="left"
    )
    for column in ("region", "broker", "buildings", "RTT ms", "published", "acked", "failed", "malformed"):
        table.add_column(column, justify="left" if column in ("region", "broker") else "right")
    table.add_column("PUBACK ms p50/p99/max", justify="right")
    for region, tally in sorted(run.regions.items()):
        rtts = [rtt for r, rtt, _ in run.buildings.values() if r == region]
        h = tally.latency
        latency = (
            "/".join(f"{h.get_value_at_percentile(p) / 1000:.0f}" for p in (50, 99, 100))
            if h.get_total_count()
            else "-"
        )
        table.add_row(
            region,
            (brokers or {}).get(region, "-"),
            str(len(rtts)),
            f"{min(rtts)}-{max(rtts)}" if rtts else "-",
            f"{tally.published:,}",
            f"{tally.acknowledged:,}",
            f"[red]{tally.failed:,}[/]" if tally.failed else "0",
            f"{run.malformed[region]:,}",
            latency,
        )
    return table


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction 0..1, got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of readings per second > 0, got {text}")
    return value


def _duration(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be seconds in (0, {MAX_DURATION_S:g}], got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be seconds in [0, {MAX_DURATION_S:g}], got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"katas load {KATA}",
        description="Publish the simulated fleet's readings to the running sensors stack over MQTT QoS 1, "
        "one connection per building through its own WAN delay (open loop).",
    )
    p.add_argument(
        "--rate",
        type=_rate,
        default=DEFAULT_RATE,
        help="readings per second: rate x 10 sensors report, each every 10 s (default %(default)g)",
    )
    p.add_argument("--duration", type=_duration, default=DEFAULT_DURATION_S, help="seconds of load")
    p.add_argument(
        "--malformed",
        type=_fraction,
        default=DEFAULT_MALFORMED,
        metavar="FRACTION",
        help="share of readings replaced by hostile messages (default %(default)g)",
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the malformed draws")
    p.add_argument(
        "--buildings",
        default="",
        metavar="ID,ID,...",
        help="publish for these buildings only (default: every building of the fleet)",
    )
    p.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULT_GRACE_S,
        help="seconds to wait for acknowledgements after the load (default %(default)g)",
    )
    p.add_argument(
        "--acknowledged", type=Path, default=None, metavar="FILE", help="write acknowledged ids (JSON lines)"
    )
    stack.add_run_options(p, KATA)
    return p


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    try:
        endpoints = read_endpoints(options.endpoints or default_endpoints_path())
    except StackNotRunningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from katas.sensors.settings import SensorsSettings

    fleet = SensorsSettings().fleet()
    buildings = [b.strip() for b in options.buildings.split(",") if b.strip()] or None
    try:
        which = plan(fleet, options.rate, buildings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    brokers = region_brokers(brokers_of(endpoints))
    print(
        f"sensors load: {which.rate:g} readings/s ({which.sensor_count:,} sensors in "
        f"{len(which.buildings)} buildings, every {INTERVAL_S:g} s) for {options.duration:g} s, "
        f"malformed {options.malformed:g}; brokers "
        + ", ".join(f"{region} {address}" for region, address in brokers.items())
    )
    try:
        run = asyncio.run(
            drive(
                endpoints,
                options.duration,
                fleet=fleet,
                rate=options.rate,
                buildings=buildings,
                malformed=options.malformed,
                seed=options.seed,
                progress=not options.no_progress,
                grace_s=options.grace,
            )
        )
    except (OSError, TimeoutError) as exc:
        print(
            f"error: cannot reach the brokers ({exc}); is the stack still up? `katas status {KATA}`",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    console = Console()
    if not console.is_terminal:
        console.width = 140  # a log file: the table's columns, not rich's 80-column default
    console.print(summary_table(run, brokers))
    print(run.result.summary_line())
    print(
        f"published {run.published:,}, acknowledged {run.acknowledged_count:,}, failed {run.failed:,} "
        f"(malformed {sum(run.malformed.values()):,}); reconnects {run.reconnects}"
    )
    output = options.output or stack.default_output(KATA)
    run.write_json(output)
    print(f"load result written to {output}")
    if options.acknowledged is not None:
        run.write_acknowledged(options.acknowledged)
        print(f"acknowledged ids written to {options.acknowledged}")
    return 0 if run.failed == 0 and not run.result.error_count and not run.result.timed_out else 1
