"""The platform's durability promise under load: a record the Kafka-protocol broker acknowledged survives
a crash of the broker or of the object store under it, and the pipeline recovers by itself.

Open-loop load from the lab's engine; faults from the lab's chaos module, applied mid-run. Every kata's
chaos tests build on this guarantee, so it is checked here once for the infrastructure alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from katas.catalog import StackSpec
from katas.infra import chaos
from katas.infra.chaos import ChaosAction
from katas.infra.stack import Stack
from loadgen import ConstantRate, run_load

SPEC = StackSpec.model_validate(
    {
        "servers": [
            {"name": "s3", "kind": "s3rver"},
            {"name": "kafka", "kind": "tansu", "options": {"object_store": "s3"}},
        ]
    }
)
RATE_PER_S = 200
DURATION_S = 12
FAULT_AT_S = 3
DOWN_FOR_S = 2
RECOVERY_LIMIT_S = 20


async def _consume_all(bootstrap: str, topic: str, expected: int) -> tuple[list[bytes], dict[int, int]]:
    """Every record of the topic, and each partition's high watermark (what the broker says it holds)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        deadline = time.monotonic() + 30
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and (len(got) < expected or time.monotonic() - quiet_since < 2):
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                got += [r.value for r in records]
                quiet_since = time.monotonic()
        # the high watermarks of the fetches: tansu's ListOffsets (end_offsets) answers short of the end
        ends = {tp.partition: consumer.highwater(tp) or 0 for tp in partitions}
    finally:
        await consumer.stop()
    return got, ends


async def _produce_through_a_crash(
    stack: Stack, victim: str
) -> tuple[set[bytes], list[bytes], dict[int, int], float]:
    bootstrap = stack["kafka"].client_address
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=4000)
    await producer.start()
    acked: set[bytes] = set()
    ack_times: list[float] = []

    async def send(i: int) -> None:
        value = f"event-{i}".encode()
        await producer.send_and_wait("chaos", value)
        acked.add(value)
        ack_times.append(time.monotonic())

    async def crash_and_restart() -> float:
        await asyncio.sleep(FAULT_AT_S)
        await asyncio.to_thread(chaos.apply, stack, ChaosAction.KILL, victim)
        await asyncio.sleep(DOWN_FOR_S)
        await asyncio.to_thread(chaos.apply, stack, ChaosAction.START, victim)
        return time.monotonic()

    try:
        restarted_task = asyncio.create_task(crash_and_restart())
        result = await run_load(
            ConstantRate(RATE_PER_S, DURATION_S), send, max_in_flight=500, progress=False, grace_s=15
        )
        restarted_at = await restarted_task
    finally:
        await producer.stop()
    print(result.summary_line())
    after = [t for t in ack_times if t > restarted_at]
    recovery_s = (min(after) - restarted_at) if after else float("inf")
    stored, ends = await _consume_all(bootstrap, "chaos", len(acked))
    return acked, stored, ends, recovery_s


@pytest.mark.parametrize("victim", ["kafka", "s3"])
def test_no_acknowledged_record_is_lost_when_a_component_crashes_under_load(
    run_dir: Path, victim: str
) -> None:
    with Stack("chaos", SPEC, run_dir / "chaos") as stack:
        acked, stored, ends, recovery_s = asyncio.run(_produce_through_a_crash(stack, victim))

    lost = acked - set(stored)
    duplicates = sum(n - 1 for n in Counter(stored).values() if n > 1)
    print(
        f"{victim} crash: acked {len(acked)}, stored {len(stored)} ({duplicates} duplicates), "
        f"first ack {recovery_s:.1f} s after restart"
    )
    assert len(acked) > RATE_PER_S * FAULT_AT_S * 0.5, "too few records were acknowledged to prove anything"
    assert not lost, (
        f"{len(lost)} acknowledged records were not read back, e.g. {sorted(lost)[:5]}; "
        f"the broker's log-end offsets by partition: {ends} ({sum(ends.values())} records)"
    )
    assert recovery_s <= RECOVERY_LIMIT_S, f"producing resumed {recovery_s:.1f} s after the restart"
