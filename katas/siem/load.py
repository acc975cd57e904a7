"""`katas load siem`: drive a running SIEM with the traffic of a simulated fleet of 200 sources.

    katas load siem                                  # constant:30:60: 30 batches of 20 = 600 events/s, 60 s
    katas load siem --profile step:20x10,60x20 --batch 50 --attacks 0 --output /tmp/load.json

Each operation of the open-loop profile is one batch of `--batch` events from one source of the fleet, the
way a source's shipper flushes its buffer: syslog sources' lines go out as datagrams (UDP) or octet-counted
frames (TCP), Windows hosts and cloud/application sources post their batch as one HTTP request. A batch's
latency runs from its intended send time to: HTTP, the 202 (the broker stored every event of it); TCP and
UDP, the moment its bytes were written (those transports have no application acknowledgement).

Why one source per batch and not `batch` events of random sources: the HTTP endpoints carry the source in a
header, so a batch mixing 20 sources of a 200-source fleet becomes seven or eight requests, and at a few
hundred events per second the client's connection pool (100 connections) queues requests faster than they
complete; httpx's pool then spends its time rescanning the queue and the generator stalls. Real shippers
batch per source, and so does this one: events wait in a per-source buffer until `batch` of them are there.
Concurrent HTTP requests are also capped below the pool size (`HTTP_CONCURRENCY`).

With `--attacks N` (default 10) every attack scenario of the fleet (brute force, port scan, new admin,
access key misuse, password spray, audit tampering) is injected every N seconds with fresh user names,
addresses and key ids, so each injection raises a new alert; `--attacks 0` sends background traffic only.

Loopback only: the endpoints must be on this machine, and the run ends with the profile (plus the engine's
grace period for batches still in flight). The LoadResult goes to `--output` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from katas.siem.pseudonymize import PseudonymKind
from katas.siem.samples import RawEvent, SourceFleet, syslog_5424
from loadgen import PROFILE_FORMS, LoadProfile, LoadResult, run_load, stack
from loadgen.siem import SiemSender
from loadgen.stack import EXIT_NOT_RUNNING

KATA = "siem"
DEFAULT_PROFILE = "constant:30:60"
"""600 events/s for a minute: what the stack sustains on a 2-core machine (see katas.siem.check.SHORT)."""
DEFAULT_BATCH = 20
DEFAULT_ATTACK_EVERY_S = 10.0
DEFAULT_SEED = 0
FLEET_SOURCES = 200
HTTP_CONCURRENCY = 64
"""At most this many HTTP batches in flight: below httpx's pool of 100 connections, so requests never queue
inside the pool (whose scheduling degrades badly with a long queue)."""
REQUIRED_ENDPOINTS = ("syslog_udp", "syslog_tcp", "http_ingest")

Transport = Literal["syslog-udp", "syslog-tcp", "http-json", "http-winxml"]


def default_endpoints_path() -> Path:
    return stack.default_endpoints_path(KATA)


def read_endpoints(path: Path) -> dict[str, Any]:
    """The running stack's endpoints; StackNotRunningError if there is no stack, ValueError if not local."""
    return stack.read_endpoints(KATA, path, REQUIRED_ENDPOINTS)


# ------------------------------------------------------------------------------------------ traffic
@dataclass(frozen=True)
class Attack:
    """One injection of an attack scenario: its events, in order, and the value unique to this injection
    that the alert's `group` carries (as a pseudonym of `tag_kind`, or in clear if None)."""

    scenario: str
    events: list[RawEvent]
    tag: str
    tag_kind: PseudonymKind | None
    completing: int = -1
    """Index of the event that completes the scenario: the rule matches once it is in (the last event,
    except for a new admin, which matches at the account's creation; the events after it match again)."""

    @property
    def before(self) -> list[RawEvent]:
        return self.events[: self.completing % len(self.events)]

    @property
    def completing_event(self) -> RawEvent:
        return self.events[self.completing]

    @property
    def after(self) -> list[RawEvent]:
        return self.events[self.completing % len(self.events) + 1 :]


ATTACK_SCENARIOS = (
    "ssh-bruteforce",
    "windows-bruteforce",
    "port-scan-cef",
    "port-scan-iptables",
    "new-admin-windows",
    "new-admin-linux",
    "access-key-elsewhere",
    "password-spray-linux",
    "password-spray-windows",
    "audit-tampering",
)
UNIQUELY_TAGGED = ATTACK_SCENARIOS[:-1]
"""Scenarios whose alert is grouped by values the injection chooses. Audit tampering is grouped by the cloud
account, one of the fleet's few, so a repeat merges into the account's open alert instead of raising one."""


def _address(serial: int) -> str:
    """A distinct address per serial (100.64.0.0/10, shared address space, never one of the fleet's)."""
    return f"100.{64 + (serial >> 16) % 64}.{(serial >> 8) % 256}.{serial % 256}"


def build_attack(fleet: SourceFleet, scenario: str, serial: int, run: str) -> Attack:
    """The events of one attack `scenario`, with user names, addresses and key ids unique to `serial`."""
    ip, other = _address(2 * serial), _address(2 * serial + 1)
    user = f"atk{run}{serial}"
    match scenario:
        case "ssh-bruteforce":
            events = fleet.brute_force_then_success(user, ip, "linux", attempts=6)
            return Attack(scenario, events, user, "user")
        case "windows-bruteforce":
            events = fleet.brute_force_then_success(user, ip, "windows", attempts=6)
            return Attack(scenario, events, ip, "ip")
        case "port-scan-cef":
            return Attack(scenario, fleet.port_scan_then_connect(ip, other, fmt="cef"), ip, "ip")
        case "port-scan-iptables":
            return Attack(scenario, fleet.port_scan_then_connect(ip, other, fmt="iptables"), ip, "ip")
        case "new-admin-windows":
            host = f"WS-{run.upper()}{serial}.corp.example.com"
            events = fleet.new_admin_after_logon(user, host, "windows", new_user=f"tmp{serial}", src_ip=ip)
            return Attack(scenario, events, host, None, completing=1)  # logon, account created, added
        case "new-admin-linux":
            host = f"atk-{run}-{serial}"
            events = fleet.new_admin_after_logon(user, host, "linux", new_user=f"tmp{serial}", src_ip=ip)
            return Attack(scenario, events, host, None, completing=1)  # logon, then `sudo useradd`
        case "access-key-elsewhere":
            key = f"AKIA{run.upper()}{serial:08d}"[:20]
            return Attack(
                scenario, fleet.api_key_created_then_used_from_new_ip(user, key, ip, other), key, None
            )
        case "password-spray-linux":
            users = [f"{user}x{n}" for n in range(6)]
            return Attack(scenario, fleet.password_spray_then_success(users, ip, "linux"), ip, "ip")
        case "password-spray-windows":
            users = [f"{user}x{n}" for n in range(6)]
            return Attack(scenario, fleet.password_spray_then_success(users, ip, "windows"), ip, "ip")
        case "audit-tampering":
            key = f"AKIT{run.upper()}{serial:08d}"[:20]
            return Attack(scenario, fleet.audit_tampering_then_new_key(user, key, ip), key, None)
    raise ValueError(f"unknown attack scenario {scenario!r}; known: {', '.join(ATTACK_SCENARIOS)}")


def marker_event(token: str, transport: Literal["syslog-tcp", "http-json"], moment: float) -> RawEvent:
    """An event whose message carries `token` (free-text searchable), as a syslog line or an app's JSON."""
    message = f"searchable marker {token}"
    if transport == "syslog-tcp":
        return RawEvent(
            transport, "probe-marker", syslog_5424(moment, "probe-host", "katas-probe", None, message)
        )
    stamp = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    body = {
        "@timestamp": stamp,
        "event": {"action": "probe", "outcome": "success", "dataset": "katas.probe"},
        "host": {"name": "probe-host"},
        "message": message,
    }
    return RawEvent(transport, "probe-marker", json.dumps(body).encode())


@dataclass
class Sent:
    """What one traffic object has sent: events per transport, batches, HTTP retries on 503."""

    events: Counter[str] = field(default_factory=Counter)
    """Every event handed to the sender, by transport (attack and marker events included); counted when
    it leaves, so a batch whose operation timed out while ingest was still taking it counts as sent."""
    batches: int = 0
    attacks: int = 0
    attack_events: int = 0

    @property
    def total(self) -> int:
        return sum(self.events.values())


class SiemTraffic:
    """Fleet traffic through one SiemSender: per-source batches, attack injections and marker events."""

    def __init__(
        self,
        sender: SiemSender,
        *,
        batch: int = DEFAULT_BATCH,
        seed: int = DEFAULT_SEED,
        sources: int = FLEET_SOURCES,
        http_concurrency: int = HTTP_CONCURRENCY,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1 event")
        self.sender = sender
        self.batch = batch
        self.fleet = SourceFleet(n_sources=sources, seed=seed)
        self.sent = Sent()
        self.run = f"{(seed * 86_400 + int(time.time())) % 16**6:06x}"
        """A short id of this run, in the values attack injections make unique."""
        self._http = asyncio.Semaphore(http_concurrency)
        self._buffers: dict[str, list[RawEvent]] = defaultdict(list)
        self._ready: deque[list[RawEvent]] = deque()
        self._serial = itertools.count(1)
        for _ in range(sources * batch // 2):  # start with half-full buffers, as a fleet that already runs
            if (full := self._draw()) is not None:
                self._ready.append(full)

    def _draw(self) -> list[RawEvent] | None:
        event = self.fleet.next_event()
        buffer = self._buffers[event.source_id]
        buffer.append(event)
        if len(buffer) < self.batch:
            return None
        del self._buffers[event.source_id]
        return buffer

    def next_batch(self) -> list[RawEvent]:
        """The next full batch of one source (pre-generated ones first)."""
        if self._ready:
            return self._ready.popleft()
        while (full := self._draw()) is None:
            pass
        return full

    def pregenerate(self, batches: int) -> None:
        """Draw `batches` batches now, so a high-rate phase does not spend its CPU generating events (their
        timestamps are then as old as the wait before they are sent, as with a shipper's backlog)."""
        while len(self._ready) < batches:
            while (full := self._draw()) is None:
                pass
            self._ready.append(full)

    async def send(self, events: Sequence[RawEvent]) -> None:
        """Send events; returns once HTTP batches are acknowledged and syslog bytes are written."""
        if any(e.transport.startswith("http") for e in events):
            async with self._http:
                self.sent.events.update(e.transport for e in events)
                await self.sender.send(events)
        else:
            self.sent.events.update(e.transport for e in events)
            await self.sender.send(events)

    async def operation(self, i: int) -> None:
        """One load operation: a batch of one source's events."""
        await self.send(self.next_batch())
        self.sent.batches += 1

    def attack(self, scenario: str, *, reliable: bool = False) -> Attack:
        """An injection of `scenario`; `reliable` sends what the fleet would send over UDP over TCP instead
        (the same syslog lines, framed), so that no datagram of it can be lost on the way to ingest."""
        attack = build_attack(self.fleet, scenario, next(self._serial), self.run)
        if not reliable:
            return attack
        events = [
            e._replace(transport="syslog-tcp") if e.transport == "syslog-udp" else e for e in attack.events
        ]
        return replace(attack, events=events)

    async def inject_attacks(self) -> list[Attack]:
        """Every attack scenario once, each with fresh values, its events in order."""
        attacks = [self.attack(scenario) for scenario in ATTACK_SCENARIOS]
        await asyncio.gather(*(self.send(a.events) for a in attacks))
        self.sent.attacks += len(attacks)
        self.sent.attack_events += sum(len(a.events) for a in attacks)
        return attacks


async def attack_loop(traffic: SiemTraffic, every_s: float, until: float) -> None:
    """Inject every scenario each `every_s` seconds (first after `every_s`) until loop time `until`."""
    loop = asyncio.get_running_loop()
    while (wake := loop.time() + every_s) < until:
        await asyncio.sleep(wake - loop.time())
        await traffic.inject_attacks()


# ------------------------------------------------------------------------------------------- driving
@dataclass
class LoadRun:
    result: LoadResult
    sent: Sent
    busy_retries: int


async def drive(
    endpoints: Mapping[str, Any],
    profile: LoadProfile,
    *,
    batch: int = DEFAULT_BATCH,
    attack_every_s: float = DEFAULT_ATTACK_EVERY_S,
    seed: int = DEFAULT_SEED,
    label: str = "siem fleet",
    progress: bool = True,
) -> LoadRun:
    """Run `profile` against the stack at `endpoints`: one per-source batch per operation, attacks beside."""
    async with SiemSender(endpoints) as sender:
        traffic = SiemTraffic(sender, batch=batch, seed=seed)
        loop = asyncio.get_running_loop()
        attacks: asyncio.Task[None] | None = None
        if attack_every_s > 0:
            attacks = asyncio.create_task(
                attack_loop(traffic, attack_every_s, loop.time() + profile.duration_s)
            )
        try:
            result = await run_load(profile, traffic.operation, label=label, progress=progress)
            if attacks is not None:
                await attacks
        finally:
            if attacks is not None and not attacks.done():
                attacks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attacks
        return LoadRun(result, traffic.sent, sender.busy_retries)


def default_output() -> Path:
    return stack.default_output(KATA)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"katas load {KATA}",
        description="Drive the running SIEM with a simulated fleet of 200 sources (open loop).",
    )
    p.add_argument(
        "--profile", default=DEFAULT_PROFILE, help=f"operations (batches) per second: {PROFILE_FORMS}"
    )
    p.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH, help="events per operation")
    p.add_argument(
        "--attacks",
        type=_seconds,
        default=DEFAULT_ATTACK_EVERY_S,
        metavar="SECONDS",
        help="inject every attack scenario each SECONDS seconds; 0 turns it off",
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the simulated fleet")
    stack.add_run_options(p, KATA)
    return p


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    try:
        profile, endpoints = stack.open_run(KATA, options.profile, options.endpoints, REQUIRED_ENDPOINTS)
    except stack.LoadSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    events = profile.intended_count() * options.batch
    print(
        f"siem load: {profile.describe()} x {options.batch} events = {events:,} events over "
        f"{profile.duration_s:g} s to {endpoints['http_ingest']} (+ syslog {endpoints['syslog_udp']} udp, "
        f"{endpoints['syslog_tcp']} tcp)"
        + (f"; attacks every {options.attacks:g} s" if options.attacks > 0 else "; no attacks")
    )
    try:
        run = asyncio.run(
            drive(
                endpoints,
                profile,
                batch=options.batch,
                attack_every_s=options.attacks,
                seed=options.seed,
                progress=not options.no_progress,
            )
        )
    except OSError as exc:
        print(
            f"error: cannot reach the SIEM ({exc}); is the stack still up? `katas status {KATA}`",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    print(run.result.summary_line())
    by_transport = ", ".join(f"{t} {n:,}" for t, n in sorted(run.sent.events.items()))
    print(
        f"events sent {run.sent.total:,} ({by_transport}); attack scenarios injected {run.sent.attacks} "
        f"({run.sent.attack_events} events); "
        f"HTTP batches retried after 503 {run.busy_retries}"
    )
    output = options.output or default_output()
    run.result.write_json(output)
    print(f"load result written to {output}")
    return 0 if run.result.ok and not run.result.error_count and not run.result.timed_out else 1
