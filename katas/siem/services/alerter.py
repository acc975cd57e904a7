"""Alerter: alerts from `siem.alerts`, deduplicated by fingerprint, stored, delivered and escalated.

A fingerprint seen for the first time is stored and delivered to the webhook at once. The same
fingerprint again is merged into the stored alert (count, last_seen, event ids); while nobody has
acknowledged it, a repeat escalates it one level and pages again, and so does every `escalate_after_s`
it stays unacknowledged. (The correlator fires a rule at most once per group and window, so a repeat
means the attack went on into another window.) The webhook call is retried until it succeeds before the alert's
offset is committed, so an alert is never lost between the topic and the pager.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import httpx
from aiokafka import ConsumerRecord
from fastapi import FastAPI
from prometheus_client import Counter

from katas.infra import kafka
from katas.infra.clickhouse import ClickHouse
from katas.infra.service import Worker, http_app, log, run_service
from katas.infra.settings import infra_settings
from katas.siem import storage
from katas.siem.settings import SiemSettings
from katas.siem.topics import ALERTS, TOPIC_PARTITIONS

DELIVERED = Counter("alerter_delivered", "webhook deliveries", ["kind"])
MERGED = Counter("alerter_deduplicated", "alerts merged into an existing fingerprint")
DELIVERY_FAILURES = Counter("alerter_delivery_failures", "webhook calls that failed and were retried")


class Alerter:
    def __init__(self, ch: ClickHouse, webhook_url: str, settings: SiemSettings) -> None:
        self.ch = ch
        self.webhook_url = webhook_url
        self.settings = settings
        self.http = httpx.AsyncClient(timeout=5.0)

    async def deliver(self, alert: storage.Alert, kind: str) -> None:
        body = {"kind": kind, "delivered_at": datetime.now(UTC).isoformat(), **alert.to_json()}
        delay = 0.2
        while True:
            try:
                response = await self.http.post(self.webhook_url, json=body)
                response.raise_for_status()
                DELIVERED.labels(kind).inc()
                return
            except httpx.HTTPError as exc:
                DELIVERY_FAILURES.inc()
                log("delivery_failed", fingerprint=alert.fingerprint, error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Each fingerprint's alerts in order; different fingerprints side by side, so that an attack
        raising ten alerts at once does not page the tenth after nine store round trips and deliveries."""
        by_fingerprint: dict[str, list[storage.Alert]] = {}
        for record in records:
            try:
                incoming = storage.Alert.from_message(json.loads(record.value or b""))
            except (ValueError, KeyError, TypeError) as exc:
                log("unreadable_alert", offset=record.offset, error=str(exc))
                continue
            by_fingerprint.setdefault(incoming.fingerprint, []).append(incoming)
        await asyncio.gather(*(self.handle_fingerprint(alerts) for alerts in by_fingerprint.values()))

    async def handle_fingerprint(self, alerts: Sequence[storage.Alert]) -> None:
        for incoming in alerts:
            known = await storage.get_alert(self.ch, incoming.fingerprint)
            merged = await storage.upsert_alert(self.ch, incoming)
            if known is None:
                await self.deliver(merged, "new")
                continue
            MERGED.inc()
            if merged.status == "open":  # it fired again and nobody has acknowledged it yet
                await self.escalate(merged, merged.escalation_level + 1, "repeated")

    async def escalate(self, alert: storage.Alert, level: int, why: str) -> None:
        escalated = await storage.escalate_alert(self.ch, alert.fingerprint, level)
        if escalated is not None:
            log("escalated", fingerprint=alert.fingerprint, level=level, why=why)
            await self.deliver(escalated, f"escalated ({why})")

    async def escalate_unacknowledged(self, stop: asyncio.Event) -> None:
        """Every few seconds: alerts open longer than the limit go up one level per elapsed limit."""
        limit = timedelta(seconds=self.settings.escalate_after_s)
        while not stop.is_set():
            now = datetime.now(UTC)
            try:
                for alert in await storage.list_alerts(self.ch, status="open", limit=1000):
                    due = int((now - alert.first_seen) / limit)
                    if due > alert.escalation_level:
                        await self.escalate(alert, due, "unacknowledged")
            except Exception as exc:  # the store is down: try again on the next round, never exit
                log("escalation_round_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(5.0, limit.total_seconds()))


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    settings = SiemSettings()
    ch = ClickHouse(infra_settings().require("clickhouse_url"))
    await storage.ensure_schema(ch, hot_ttl=timedelta(seconds=settings.hot_ttl_s))
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    alerter = Alerter(ch, settings.webhook_url, settings)

    async def alert_stream(stop: asyncio.Event) -> None:
        await kafka.consume_batches(kafka.consumer(ALERTS, group="alerter"), alerter.handle, stop)

    return http_app("SIEM alerter"), [alert_stream, alerter.escalate_unacknowledged]


if __name__ == "__main__":
    run_service(build)
