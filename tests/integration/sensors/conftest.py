"""The sensors kata's stack for the integration tests (one per module), and how tests talk to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from katas.catalog import get_card
from katas.infra import kafka
from katas.infra.stack import Stack
from tests.conftest import reachable_run_dir


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The kata's stack as `katas up sensors` starts it, in a run folder of its own."""
    with (
        reachable_run_dir("katas-sensors-") as run,
        Stack.for_card(get_card("sensors"), run_dir=run / "sensors") as s,
    ):
        yield s


def publish(address: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and return once the broker acknowledged every message (what a sensor relies on)."""
    host, port = address.rsplit(":", 1)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sensors-{time.monotonic_ns()}")
    client.max_inflight_messages_set(200)
    client.connect(host, int(port))
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def read_log(bootstrap: str, topic: str) -> list[bytes]:
    """Every record of `topic`, up to its end now."""

    async def go() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = await kafka.partitions_of(consumer, topic)
            return [
                r.value or b""
                async for records in kafka.read_from_start(consumer, partitions)
                for r in records
            ]
        finally:
            await consumer.stop()

    return asyncio.run(go())
