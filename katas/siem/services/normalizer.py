"""Normalizer: `siem.raw` -> ECS events on `siem.events`, failures with their reason on `siem.deadletter`.

Pseudonymization happens here, before any store sees an event. A batch's offsets are committed only once
every event of it is on `siem.events` or `siem.deadletter`, so a crash re-delivers rather than loses;
downstream stages remove the duplicates by event id.

`POST /deadletters/replay` sends every dead letter back through `siem.raw` with its original id, for after
a parser fix; events that now parse are stored once, whatever was stored before under that id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import ConsumerRecord
from fastapi import FastAPI
from prometheus_client import Counter

from katas.infra import kafka
from katas.infra.service import Worker, http_app, log, mistakes, run_service
from katas.siem.normalize import DeadLetter, RawEnvelope, normalize
from katas.siem.pseudonymize import Pseudonymizer
from katas.siem.settings import SiemSettings
from katas.siem.topics import DEADLETTER, EVENTS, RAW, TOPIC_PARTITIONS

NORMALIZED = Counter("normalize_events", "events normalized onto siem.events")
DEAD_LETTERED = Counter("normalize_deadletters", "messages sent to siem.deadletter")
DROPPED = Counter("normalize_dropped", "failures dropped (only with the no-dead-letter mistake)")
REPLAYED = Counter("normalize_replayed", "dead letters sent back through siem.raw")


def envelope_of(record: ConsumerRecord[bytes, bytes]) -> RawEnvelope | DeadLetter:
    """The envelope of a raw record; a record that is not one is itself dead-lettered, bytes and all."""
    try:
        return RawEnvelope.from_json(record.value or b"")
    except ValueError as exc:
        source = (record.key or b"unknown").decode(errors="replace")
        stand_in = RawEnvelope.new(source, "http-json", record.value or b"")
        return DeadLetter.of(stand_in, f"envelope: {exc}")


class Normalizer:
    def __init__(self, pseudonymizer: Pseudonymizer | None, dead_letters: bool) -> None:
        self.pseudonymizer = pseudonymizer
        self.dead_letters = dead_letters
        self.producer = kafka.producer()

    async def handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        deliveries = []
        for record in records:
            envelope = envelope_of(record)
            result = envelope if isinstance(envelope, DeadLetter) else normalize(envelope, self.pseudonymizer)
            key = record.key or b"unknown"
            if isinstance(result, DeadLetter):
                if not self.dead_letters:
                    DROPPED.inc()
                    log("dropped", id=result.id, reason=result.reason)
                    continue
                deliveries.append(await self.producer.send(DEADLETTER, result.to_json(), key=key))
                DEAD_LETTERED.inc()
            else:
                deliveries.append(await self.producer.send(EVENTS, result.to_json(), key=key))
                NORMALIZED.inc()
        await asyncio.gather(*deliveries)  # all stored downstream before the offsets are committed

    async def replay_dead_letters(self) -> int:
        """Every dead letter of `siem.deadletter`, back onto `siem.raw` with its original id."""
        reader = kafka.consumer(group=None)
        await reader.start()
        try:
            replayed, deliveries = 0, []
            async for records in kafka.read_from_start(reader, await kafka.partitions_of(reader, DEADLETTER)):
                for record in records:
                    letter = DeadLetter.from_json(record.value or b"")
                    deliveries.append(
                        await self.producer.send(RAW, letter.replay().to_json(), key=letter.source.encode())
                    )
                    replayed += 1
            await asyncio.gather(*deliveries)
        finally:
            await reader.stop()
        REPLAYED.inc(replayed)
        return replayed


def create_app(normalizer: Normalizer) -> FastAPI:
    app = http_app("SIEM normalizer")

    @app.post("/deadletters/replay")
    async def replay() -> dict[str, int]:
        return {"replayed": await normalizer.replay_dead_letters()}

    return app


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    settings = SiemSettings()
    switched_on = mistakes()
    pseudonymizer = None if "store-raw-pii" in switched_on else settings.pseudonymizer()
    normalizer = Normalizer(pseudonymizer, dead_letters="no-dead-letter" not in switched_on)
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    await normalizer.producer.start()

    async def normalize_stream(stop: asyncio.Event) -> None:
        try:
            await kafka.consume_batches(kafka.consumer(RAW, group="normalizer"), normalizer.handle, stop)
        finally:
            await normalizer.producer.stop()

    return create_app(normalizer), [normalize_stream]


if __name__ == "__main__":
    run_service(build)
