"""The consume-process-commit loop on a real broker: a failed batch is handled again, offsets are
committed only after the handler succeeded, and commits held back between intervals are made on a stop
and re-delivered after a crash."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

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
    again = await asyncio.wait_for(_drain_nothing_from("stage", "events"), 30)
    assert again == [], "a handled batch must be committed"


def test_offsets_are_committed_only_after_the_handler(broker: str) -> None:
    asyncio.run(_scenario())


async def _handle_all_then(group: str, topic: str, expected: int, *, crash: bool) -> list[bytes]:
    """Handle every record with commits held back for an hour; then crash (cancel) or stop gracefully."""
    seen: list[bytes] = []
    stop = asyncio.Event()
    all_handled = asyncio.Event()

    async def handle(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        seen.extend(r.value for r in records if r.value is not None)
        if len(seen) >= expected:
            all_handled.set()

    source = kafka.consumer(topic, group=group)
    worker = asyncio.create_task(kafka.consume_batches(source, handle, stop, commit_every_s=3600))
    await asyncio.wait_for(all_handled.wait(), 60)
    if crash:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    else:
        stop.set()
        await worker
    return seen


async def _throttled_scenario() -> None:
    await kafka.ensure_topics({"throttled": 2})
    producer = kafka.producer()
    await producer.start()
    try:
        for i in range(20):
            await producer.send("throttled", f"t{i}".encode(), key=str(i % 4).encode())
        await producer.flush()
    finally:
        await producer.stop()

    crashed = await _handle_all_then("throttle", "throttled", 20, crash=True)
    redelivered = await _handle_all_then("throttle", "throttled", 20, crash=False)
    left = await asyncio.wait_for(_drain_nothing_from("throttle", "throttled"), 30)

    assert len(crashed) == 20
    assert sorted(redelivered) == sorted(crashed), "what a crash left uncommitted must be handled again"
    assert left == [], "a graceful stop must commit what was handled"


async def _drain_nothing_from(group: str, topic: str) -> list[bytes]:
    seen: list[bytes] = []
    stop = asyncio.Event()

    async def handle(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        seen.extend(r.value for r in records if r.value is not None)

    asyncio.get_running_loop().call_later(8, stop.set)
    await kafka.consume_batches(kafka.consumer(topic, group=group), handle, stop)
    return seen


def test_held_back_commits_redeliver_after_a_crash_and_are_made_on_a_stop(broker: str) -> None:
    asyncio.run(_throttled_scenario())


async def _lag_scenario() -> list[float]:
    await kafka.ensure_topics({"lagging": 1})
    producer = kafka.producer()
    await producer.start()
    try:
        for i in range(50):
            await producer.send("lagging", f"l{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    seen_lag: list[float] = []
    handled = 0
    stop = asyncio.Event()

    async def handle(records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        nonlocal handled
        seen_lag.append(REGISTRY.get_sample_value("stage_consumer_lag") or 0.0)
        handled += len(records)
        if handled >= 50:
            stop.set()

    source = kafka.consumer("lagging", group="lag", max_poll_records=10)
    await asyncio.wait_for(kafka.consume_batches(source, handle, stop), 60)
    return seen_lag


def test_a_stage_reports_how_far_behind_it_is(broker: str) -> None:
    seen_lag = asyncio.run(_lag_scenario())
    assert seen_lag[0] == 40, "after the first 10 of 50 records, 40 are still to come"
    assert seen_lag[-1] == 0
    assert seen_lag == sorted(seen_lag, reverse=True)


def test_read_from_start_reads_every_record_up_to_the_end_though_tansu_reports_it_short(broker: str) -> None:
    """tansu 0.6 answers ListOffsets (end_offsets) short of the log end; read_from_start does not use it."""

    async def go() -> tuple[int, list[int]]:
        await kafka.ensure_topics({"history": 3})
        producer = kafka.producer(linger_ms=0)
        await producer.start()
        try:
            for batch in range(6):  # six produce requests: six batches on partition 0, one on partition 1
                await asyncio.gather(
                    *[await producer.send("history", b"%d-%d" % (batch, i), partition=0) for i in range(5)]
                )
            await (await producer.send("history", b"other", partition=1))
        finally:
            await producer.stop()
        reader = kafka.consumer(group=None)
        await reader.start()
        try:
            partitions = await kafka.partitions_of(reader, "history")
            read = [r async for records in kafka.read_from_start(reader, partitions) for r in records]
        finally:
            await reader.stop()
        return len(read), sorted({r.partition for r in read})

    count, partitions = asyncio.run(go())
    assert count == 31  # every record of partitions 0 and 1, none missing, and it stopped (partition 2 empty)
    assert partitions == [0, 1]
