"""Alerter: `sensors.readings` -> threshold rules -> the webhook; and retroactive rules over the log.

Live: the alerter reads the readings topic in its own consumer group and feeds every reading to one
`RuleEngine(DEFAULT_RULES)` (katas.sensors.rules). Each batch goes

    evaluate every reading -> deliver every event to the webhook -> store the engine's state in Redis
    -> (at most every second) commit the batch's offsets

so nothing between the log and the pager is only in memory:

- an alert is never lost: the webhook call is retried until it answers 2xx, and the offsets of a batch
  are committed only after every event of the batch was delivered and the state stored. If anything
  fails (Redis, or the service is stopped while the webhook is down) the engine goes back to the state
  last stored and the batch is handled again, which makes the same events again;
- an alert is not paged twice: every delivered (fingerprint, kind) is marked in Redis (a key with a
  TTL, so the set is bounded by time) and in the process (the last 10,000) right after the webhook
  answered, and an event already marked is not sent again. Readings redelivered after a crash are
  mostly stale for the restored engine anyway (see rules.py); the marks cover the rest. What remains is
  at least once: a crash between the webhook's answer and the Redis mark sends that one event again,
  with the same fingerprint (the receiver can tell);
- a restarted alerter carries on where it stopped: the engine's snapshot (open episodes, pending
  breaches with their start, what ended recently) is stored under one Redis key after every batch and
  restored before the first record is read. It is stored before the offsets are committed, so the state
  is never older than the committed position.

Detection latency, the kata's "< 30 s" NFR, is observed per delivered raised event: wall clock when the
webhook answered minus the timestamp of the reading that raised it (`alerter_detection_latency_seconds`).

Retroactive rules: `POST /rules/replay` with `{"rules": [...], "from": RFC 3339, "to": RFC 3339}` runs
`rules.replay` over the readings with `from <= ts < to`, read from the readings topic by a consumer of its
own (no group, so it moves no committed offset; up to each partition's end when it starts). It builds a
fresh engine: the live engine, its state in Redis and the webhook are not touched, and its events are
returned, not delivered. Reading the whole log is the miniature's stand-in; the raw hot store is the
natural source once it exists (it can stream a range in timestamp order, `replay(..., ordered=True)`).

One alerter instance: the engine's watermark and its single state key span every partition. Readings
are keyed by building, so a sensor's readings arrive in order, which is all the engine needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge, Histogram

from katas.infra import kafka
from katas.infra.service import Worker, http_app, log, mistakes, run_service, until_done
from katas.infra.settings import infra_settings
from katas.sensors.readings import InvalidReadingError, Reading, parse_timestamp
from katas.sensors.rules import (
    DEFAULT_RULES,
    AlertEvent,
    InvalidRuleError,
    Rule,
    RuleEngine,
    load_rules,
    replay,
)
from katas.sensors.settings import SensorsSettings
from katas.sensors.topics import READINGS, TOPIC_PARTITIONS

GROUP: Final = "alerter"
STATE_KEY: Final = "sensors:alerter:state"
"""The engine's snapshot (JSON), rewritten after every batch that changed it."""
DELIVERED_PREFIX: Final = "sensors:alerter:delivered:"
"""`{prefix}{fingerprint}:{kind}` marks an event the webhook has acknowledged."""
DELIVERED_TTL_S: Final = 86_400
"""How long a delivery is remembered. A redelivered batch comes back within seconds of a crash, and the
engine itself makes readings redelivered within 15 minutes stale; a day bounds the marks to a day of
alerts and still covers a consumer group reset to yesterday's offsets."""
RECENT_DELIVERIES: Final = 10_000
"""Deliveries also remembered in the process, newest last: if Redis fails after the webhook answered, the
retried batch finds the event here instead of paging again."""
MAX_BACKOFF_S: Final = 5.0
WEBHOOK_TIMEOUT_S: Final = 5.0
MAX_REPLAY_READINGS: Final = 1_000_000
"""Readings a replay holds in memory (those of the rules' types and scopes): about half a GB. A wider range
is refused (413) rather than risk the process that does the live alerting."""
REPLAY_STALL_S: Final = 30.0
"""A replay whose log read makes no progress for this long gives up (503)."""

READINGS_EVALUATED = Counter("alerter_readings", "readings evaluated against the live rules")
UNREADABLE = Counter("alerter_unreadable", "records on the readings topic that are not readings")
DELIVERED = Counter("alerter_delivered", "alert events delivered to the webhook", ["kind"])
DEDUPLICATED = Counter(
    "alerter_deduplicated", "alert events not sent again: that (fingerprint, kind) was already delivered"
)
DELIVERY_FAILURES = Counter("alerter_delivery_failures", "webhook calls that failed and were retried")
ROLLBACKS = Counter("alerter_rollbacks", "batches whose handling failed: engine back to the stored state")
ENGINE_KEYS = Gauge("alerter_engine_keys", "rule x sensor keys held: pending, raised or recently ended")
OPEN_EPISODES = Gauge("alerter_open_episodes", "episodes raised and not cleared yet")
DETECTION_LATENCY = Histogram(
    "alerter_detection_latency_seconds",
    "raised events: webhook acknowledged at (wall clock) minus the raising reading's timestamp",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 15, 20, 25, 30, 45, 60, 120, 300, 600),
)
REPLAYS = Counter("alerter_replays", "retroactive rule runs", ["outcome"])


class DeliveryAbortedError(RuntimeError):
    """The service is stopping while the webhook does not answer: the batch must not be committed."""


# ------------------------------------------------------------------------------------------------- live
class Alerter:
    """The live side: one engine, its state in Redis, deliveries to the webhook."""

    def __init__(
        self,
        redis: aioredis.Redis,
        http: httpx.AsyncClient,
        webhook_url: str,
        rules: Iterable[Rule] = DEFAULT_RULES,
    ) -> None:
        self.redis = redis
        self.http = http
        self.webhook_url = webhook_url
        self.engine = RuleEngine(rules)
        self.stop = asyncio.Event()
        """Set by the worker to the service's stop event: ends webhook retries on shutdown."""
        self._stored: dict[str, Any] = self.engine.snapshot()
        """The state last stored (or restored): what a failed batch rolls the engine back to."""
        self._stored_text: str | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def restore(self) -> None:
        """Load the state the previous process stored. An unreadable one is logged and replaced by an empty
        engine: an alerter that refuses to start alerts nobody."""
        raw = await self.redis.get(STATE_KEY)
        if raw is None:
            log("state_empty", key=STATE_KEY)
            return
        try:
            snapshot = json.loads(raw)
            self.engine.restore(snapshot)
        except ValueError as exc:  # not JSON, or not a snapshot of this version
            log("state_unreadable", key=STATE_KEY, error=str(exc)[:300])
            return
        self._stored, self._stored_text = snapshot, raw.decode() if isinstance(raw, bytes) else str(raw)
        self._update_gauges()
        log(
            "state_restored",
            keys=len(self.engine),
            open_episodes=len(self.engine.open_episodes()),
            watermark=snapshot.get("watermark"),
        )

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """One batch: evaluate, deliver, store. On failure the engine is put back as it was stored, so the
        retry of this batch (kafka.consume_batches) makes the same events again."""
        try:
            events, evaluated = self.evaluate(records)
            await self.deliver_all(events)
            await self.store_state()
        except BaseException:
            ROLLBACKS.inc()
            self.engine.restore(self._stored)
            raise
        READINGS_EVALUATED.inc(evaluated)

    def evaluate(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> tuple[list[AlertEvent], int]:
        events: list[AlertEvent] = []
        evaluated = 0
        for record in records:
            try:
                reading = Reading.from_json(record.value or b"")
            except (ValueError, TypeError) as exc:  # InvalidReadingError, JSON and UTF-8 errors
                UNREADABLE.inc()
                log("unreadable", partition=record.partition, offset=record.offset, error=str(exc)[:200])
                continue
            evaluated += 1
            events.extend(self.engine.evaluate(reading))
        return events, evaluated

    async def deliver_all(self, events: Sequence[AlertEvent]) -> None:
        """Episodes side by side (an HVAC failure raises a whole floor at once), each episode's events in
        order (raised before cleared). If one fails, the others are cancelled: the batch is retried."""
        by_episode: dict[str, list[AlertEvent]] = {}
        for event in events:
            by_episode.setdefault(event.fingerprint, []).append(event)

        async def in_order(episode: list[AlertEvent]) -> None:
            for event in episode:
                await self.deliver(event)

        async with asyncio.TaskGroup() as group:
            for episode in by_episode.values():
                group.create_task(in_order(episode))

    async def deliver(self, event: AlertEvent) -> None:
        mark = f"{DELIVERED_PREFIX}{event.fingerprint}:{event.kind}"
        if mark in self._recent or await self.redis.exists(mark):
            DEDUPLICATED.inc()
            log("already_delivered", kind=event.kind, rule=event.rule_id, fingerprint=event.fingerprint)
            return
        acknowledged_at = await self.post(event.to_dict())
        self._recent[mark] = None
        if len(self._recent) > RECENT_DELIVERIES:
            self._recent.popitem(last=False)
        await self.redis.set(mark, str(acknowledged_at), ex=DELIVERED_TTL_S)
        DELIVERED.labels(event.kind).inc()
        latency = acknowledged_at - event.ts.timestamp()
        if event.kind == "raised":
            DETECTION_LATENCY.observe(max(0.0, latency))
        log(
            "delivered",
            kind=event.kind,
            rule=event.rule_id,
            building=event.building,
            zone=event.zone,
            sensor_id=event.sensor_id,
            fingerprint=event.fingerprint,
            latency_s=round(latency, 3),
        )

    async def post(self, body: Mapping[str, Any]) -> float:
        """POST until the webhook answers 2xx; the wall-clock time it did. Raises DeliveryAbortedError only
        when the service is stopping (the batch then stays uncommitted and is redelivered)."""
        delay = 0.2
        while True:
            try:
                response = await self.http.post(self.webhook_url, json=body)
                response.raise_for_status()
                return time.time()
            except httpx.HTTPError as exc:
                DELIVERY_FAILURES.inc()
                log(
                    "delivery_failed",
                    fingerprint=body.get("fingerprint"),
                    error=repr(exc)[:200],
                    retry_in_s=delay,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                raise DeliveryAbortedError(f"stopping with {body.get('fingerprint')} undelivered")
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def store_state(self) -> None:
        snapshot = self.engine.snapshot()
        text = json.dumps(snapshot, separators=(",", ":"))
        if text != self._stored_text:
            await self.redis.set(STATE_KEY, text)
        self._stored, self._stored_text = snapshot, text
        self._update_gauges()

    def _update_gauges(self) -> None:
        ENGINE_KEYS.set(len(self.engine))
        OPEN_EPISODES.set(sum(1 for state in self._stored["states"] if state["phase"] == "raised"))


# ----------------------------------------------------------------------------------------------- replay
class BadReplayRequestError(ValueError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class ReplayTooLargeError(RuntimeError):
    pass


class ReplayStalledError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    rules: tuple[Rule, ...]
    start: datetime
    end: datetime

    def wants(self, reading: Reading) -> bool:
        """In the range and met by at least one rule: only those need holding."""
        return self.start <= reading.ts < self.end and any(
            rule.type == reading.type and rule.applies_to(reading.place) for rule in self.rules
        )


def parse_replay_request(body: object) -> ReplayRequest:
    """The request's rules and range; BadReplayRequestError lists every problem at once."""
    if not isinstance(body, dict):
        raise BadReplayRequestError(['expected a JSON object {"rules": [...], "from": ..., "to": ...}'])
    problems: list[str] = []
    rules: tuple[Rule, ...] = ()
    items = body.get("rules")
    if not isinstance(items, list) or not items:
        problems.append("rules: expected a non-empty list of rules")
    else:
        try:
            rules = load_rules(items)
        except InvalidRuleError as exc:
            problems.extend(exc.problems)
    bounds: dict[str, datetime] = {}
    for field in ("from", "to"):
        value = body.get(field)
        try:
            bounds[field] = parse_timestamp(value)
        except InvalidReadingError:
            problems.append(f"{field}: {value!r} is not an RFC 3339 timestamp with a time zone")
    if len(bounds) == 2 and bounds["from"] >= bounds["to"]:
        problems.append("from must be before to")
    if problems:
        raise BadReplayRequestError(problems)
    return ReplayRequest(rules, bounds["from"], bounds["to"])


async def read_range(request: ReplayRequest) -> tuple[list[Reading], int]:
    """The readings `request` wants, from the whole readings topic up to its end when the replay starts,
    and how many readings the range held in all. A consumer without a group: it commits nothing and
    shares nothing with the live consumer."""
    consumer = kafka.consumer(group=None)
    await consumer.start()
    wanted: list[Reading] = []
    in_range = 0
    try:
        partitions = await kafka.partitions_of(consumer, READINGS)
        async for records in kafka.read_from_start(consumer, partitions, stall_s=REPLAY_STALL_S):
            for record in records:
                try:
                    reading = Reading.from_json(record.value or b"")
                except (ValueError, TypeError):
                    continue  # the live side counts and logs these
                if request.start <= reading.ts < request.end:
                    in_range += 1
                    if request.wants(reading):
                        wanted.append(reading)
            if len(wanted) > MAX_REPLAY_READINGS:
                raise ReplayTooLargeError(
                    f"the range holds more than {MAX_REPLAY_READINGS} readings for these rules: narrow it"
                )
    except kafka.ReadStalledError as exc:
        raise ReplayStalledError(str(exc)) from exc
    finally:
        await consumer.stop()
    return wanted, in_range


def add_replay_route(app: FastAPI, *, live_only: bool = False) -> None:
    """`live_only` is the `live-only-rules` mistake: rules are only ever evaluated on the stream, so a new
    or changed rule cannot be run over the past, and the route says so (501) instead of answering."""
    one_at_a_time = asyncio.Lock()
    """Replays share the process with live alerting: one at a time bounds the memory and CPU they take."""

    @app.post("/rules/replay")
    async def replay_rules(request: Request) -> JSONResponse:
        if live_only:
            REPLAYS.labels("live_only").inc()
            return JSONResponse(
                {"error": "rules are live-only (mistake live-only-rules): history cannot be re-evaluated"},
                status_code=501,
            )
        try:
            body = await request.json()
        except ValueError as exc:
            REPLAYS.labels("bad_request").inc()
            return JSONResponse({"error": f"body is not JSON: {exc}", "problems": []}, status_code=400)
        try:
            wanted = parse_replay_request(body)
        except BadReplayRequestError as exc:
            REPLAYS.labels("bad_request").inc()
            return JSONResponse({"error": str(exc), "problems": exc.problems}, status_code=400)
        started = time.monotonic()
        async with one_at_a_time:
            try:
                readings, in_range = await read_range(wanted)
            except ReplayTooLargeError as exc:
                REPLAYS.labels("too_large").inc()
                return JSONResponse({"error": str(exc)}, status_code=413)
            except ReplayStalledError as exc:
                REPLAYS.labels("stalled").inc()
                return JSONResponse({"error": str(exc)}, status_code=503)
            # Off the event loop, so live batches keep flowing while a long replay evaluates.
            events = await asyncio.to_thread(replay, wanted.rules, readings)
        REPLAYS.labels("ok").inc()
        log(
            "replayed",
            rules=[rule.id for rule in wanted.rules],
            readings=in_range,
            evaluated=len(readings),
            alerts=len(events),
            took_s=round(time.monotonic() - started, 3),
        )
        return JSONResponse(
            {
                "alerts": [event.to_dict() for event in events],
                "readings": in_range,
                "evaluated": len(readings),
            }
        )


# ------------------------------------------------------------------------------------------------ build
async def build() -> tuple[FastAPI, Sequence[Worker]]:
    settings = SensorsSettings()
    if not settings.webhook_url:
        raise RuntimeError("SENSORS_WEBHOOK_URL is not set: the alerter has nowhere to deliver alerts")
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    redis = aioredis.Redis.from_url(infra_settings().require("redis_url"))
    http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S)
    alerter = Alerter(redis, http, settings.webhook_url)

    async def alert(stop: asyncio.Event) -> None:
        alerter.stop = stop
        try:
            # the state first, retried while Redis cannot be reached: consuming before it is back would
            # raise open episodes again
            if await until_done(alerter.restore, stop, event="restore_failed", max_backoff_s=MAX_BACKOFF_S):
                await kafka.consume_batches(kafka.consumer(READINGS, group=GROUP), alerter.handle, stop)
        finally:
            await http.aclose()
            await redis.aclose()

    app = http_app("sensors alerter")
    live_only = "live-only-rules" in mistakes()
    if live_only:
        log("mistake", name="live-only-rules", replay="refused")
    add_replay_route(app, live_only=live_only)
    return app, [alert]


if __name__ == "__main__":
    run_service(build)
