"""The consume-process-commit loop on a real broker: a failed batch is handled again, and offsets are
committed only after the handler succeeded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord

from katas.catalog import StackSpec
from katas.infra import kafka
from katas.infra.settings import infra_settings
from katas.infra.stack import Stack

SPEC = StackSpec.model_validate(
    {
        "servers": [
            {"name": "s3", "kind": "s3rver"},
            {"name": "kafka", "kind": "tansu", "options": {"object_store": "s3"}},
        ]
    }
)


@pytest.fixture
def broker(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with Stack("kafka", SPEC, run_dir / "kafka") as stack:
        monkeypatch.setenv("KATAS_KAFKA_BOOTSTRAP", stack["kafka"].client_address)
        infra_settings.cache_clear()
        yield stack["kafka"].client_address
    infra_settings.cache_clear()


async def _drain(group: str, fail_first: bool) -> list[bytes]:
    seen: list[bytes] = []
    stop = asyncio.Event()
    calls = 0

    async def handle(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        nonlocal calls
        calls += 1
        if fail_first and calls == 1:
            raise RuntimeError("handler failed")
        seen.extend(r.value for r in records if r.value is not None)
        if len(seen) >= 50:
            stop.set()

    async def stop_when_idle() -> None:
        await asyncio.sleep(60)
        stop.set()

    idle = asyncio.create_task(stop_when_idle())
    try:
        await kafka.consume_batches(kafka.consumer("events", group=group), handle, stop)
    finally:
        idle.cancel()
    return seen


async def _scenario() -> None:
    await kafka.ensure_topics({"events": 3})
    await kafka.ensure_topics({"events": 3})  # idempotent
    producer = kafka.producer()
    await producer.start()
    try:
        for i in range(50):
            await producer.send("events", f"e{i}".encode(), key=str(i % 5).encode())
        await producer.flush()
    finally:
        await producer.stop()

    first = await _drain("stage", fail_first=True)
    assert sorted(first) == sorted(f"e{i}".encode() for i in range(50)), (
        "a failed batch must be handled again"
    )
    again = await asyncio.wait_for(_drain_nothing("stage"), 30)
    assert again == [], "a handled batch must be committed"


async def _drain_nothing(group: str) -> list[bytes]:
    seen: list[bytes] = []
    stop = asyncio.Event()

    async def handle(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        seen.extend(r.value for r in records if r.value is not None)

    async def stop_soon() -> None:
        await asyncio.sleep(8)
        stop.set()

    timer = asyncio.create_task(stop_soon())
    await kafka.consume_batches(kafka.consumer("events", group=group), handle, stop)
    await timer
    return seen


def test_offsets_are_committed_only_after_the_handler(broker: str) -> None:
    asyncio.run(_scenario())
