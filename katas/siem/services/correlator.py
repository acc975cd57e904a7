"""Correlator: Sigma detections and correlations over `siem.events`, alerts onto `siem.alerts`.

Each fetched batch is matched against the detection rules (pySigma, compiled to SQL over the batch) and
the matches go through the correlation engine, whose window state lives in Redis: bounded, shared by
every correlator worker, and still there after a restart. Offsets are committed after the batch's alerts
are on `siem.alerts`; a redelivered batch adds nothing, since windows deduplicate by event id and a
window fires once.

With the `unbounded-correlation-state` mistake the windows live in this process instead, unbounded: the
memory grows with the event rate, and a restart forgets every window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from fastapi import FastAPI
from prometheus_client import Counter

from katas.infra import kafka
from katas.infra.service import Worker, http_app, mistakes, run_service
from katas.infra.settings import infra_settings
from katas.siem.adapters.redis_windows import RedisWindowStore
from katas.siem.correlation import CorrelationEngine, InMemoryWindowStore, WindowStore
from katas.siem.detection import Detector, load_rules
from katas.siem.services.events import read_events
from katas.siem.topics import ALERTS, EVENTS, TOPIC_PARTITIONS

EVENTS_SEEN = Counter("correlate_events", "normalized events evaluated")
MATCHES = Counter("correlate_matches", "detection rule matches")
ALERTS_RAISED = Counter("correlate_alerts", "alerts sent to siem.alerts")


class Correlator:
    def __init__(self, detector: Detector, engine: CorrelationEngine) -> None:
        self.detector = detector
        self.engine = engine
        self.producer = kafka.producer(linger_ms=0)  # an alert waits for nothing

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        events = read_events(records)
        EVENTS_SEEN.inc(len(events))
        matches = self.detector.match(events)  # its SQLite connection belongs to this thread
        MATCHES.inc(len(matches))
        alerts = await self.engine.process(matches)
        deliveries = [
            await self.producer.send(ALERTS, alert.model_dump_json().encode(), key=alert.fingerprint.encode())
            for alert in alerts
        ]
        await asyncio.gather(*deliveries)
        ALERTS_RAISED.inc(len(alerts))


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    rules = load_rules()
    store: WindowStore
    if "unbounded-correlation-state" in mistakes():
        store = InMemoryWindowStore(bounded=False)
    else:
        store = RedisWindowStore(aioredis.Redis.from_url(infra_settings().require("redis_url")))
    correlator = Correlator(Detector.from_rules(rules), CorrelationEngine.from_rules(rules, store))
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    await correlator.producer.start()

    async def correlate_stream(stop: asyncio.Event) -> None:
        try:
            await kafka.consume_batches(kafka.consumer(EVENTS, group="correlator"), correlator.handle, stop)
        finally:
            await correlator.producer.stop()
            correlator.detector.close()

    return http_app("SIEM correlator"), [correlate_stream]


if __name__ == "__main__":
    run_service(build)
