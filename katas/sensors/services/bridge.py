"""Bridge: MQTT -> `sensors.readings` (valid readings) and `sensors.deadletter` (the rest, with the reason).

At least once from the sensor to the log. The bridge subscribes at QoS 1 in a persistent session (a fixed
client id, clean_session off), so while it is down the broker queues what arrives for it. It acknowledges
an MQTT message (PUBACK) only once the log has stored what became of it, the reading or the dead letter;
a bridge that dies in between gets the message again when its session resumes. Redelivery means
duplicates, which the log's consumers remove: a reading is identified by its sensor and timestamp.

Acknowledgements go out in the order the messages came in (MQTT 3.1.1, 4.6), and only on the connection
that received them: after a reconnect the broker resends whatever was not acknowledged, so acknowledging
an old delivery could only race that.

Backpressure comes from the broker: Mosquitto has at most `max_inflight_messages` unacknowledged QoS 1
messages out to a client, so a slow log slows the bridge's intake and the rest waits in the session's
queue at the broker, not in the bridge's memory. When the log cannot be reached the bridge retries, and
acknowledges nothing meanwhile.

The bridge subscribes at the first broker of KATAS_MQTT_BROKERS, the home region; the other regions'
brokers bridge their sensors' topics to it. It reports itself started only once the broker confirmed the
subscription: until a session exists, a broker acknowledges what sensors publish and drops it, for no
one is subscribed (the first integration run after a fresh start lost its readings that way).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Counter, Gauge

from katas.infra import kafka
from katas.infra.service import Worker, http_app, log, publish_endpoints, run_service
from katas.infra.settings import infra_settings
from katas.sensors.readings import SUBSCRIPTION, InvalidReadingError, Reading
from katas.sensors.settings import SensorsSettings
from katas.sensors.tenancy import Registry
from katas.sensors.topics import DEADLETTER, READINGS, TOPIC_PARTITIONS

FORWARDED = Counter("bridge_readings", "readings written to sensors.readings")
UNKNOWN_BUILDING = "building"
"""The dead-letter reason of a well-formed reading from a building its tenant does not own."""
REFUSED = Counter("bridge_refused", "messages written to sensors.deadletter", ["reason"])
UNACKNOWLEDGED = Gauge("bridge_unacknowledged", "MQTT messages received and not acknowledged yet")
RETRY_S = 1.0
"""Pause before writing to the log again after it failed."""
SUBSCRIBE_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class LogRecord:
    topic: str
    key: bytes
    value: bytes


def route(mqtt_topic: str, payload: bytes, received_at: float, registry: Registry) -> LogRecord:
    """What an MQTT message becomes on the log: a reading keyed by its building, or a dead letter.

    A reading must come from a building its topic's tenant owns: a sensor (or a hostile client) that
    names another tenant's building, or one nobody registered, would otherwise write into a tenant's
    data that is not its own."""
    try:
        reading = Reading.from_mqtt(mqtt_topic, payload)
        place = reading.place
        if registry.owner(place.building) != place.tenant:
            raise InvalidReadingError(
                UNKNOWN_BUILDING, f"tenant {place.tenant!r} owns no building {place.building!r}"
            )
    except InvalidReadingError as exc:
        REFUSED.labels(exc.reason).inc()
        letter = {
            "reason": exc.reason,
            "error": str(exc),
            "mqtt_topic": mqtt_topic,
            "payload_b64": base64.b64encode(payload).decode("ascii"),
            "received_at": received_at,
        }
        return LogRecord(DEADLETTER, mqtt_topic.encode(errors="replace"), json.dumps(letter).encode())
    return LogRecord(READINGS, f"{place.tenant}/{place.building}".encode(), reading.to_json())


@dataclass(slots=True)
class _Delivery:
    mid: int
    qos: int
    done: bool = False


@dataclass
class Bridge:
    """Receives on paho's network thread, writes to the log on the event loop, acknowledges in order."""

    producer: AIOKafkaProducer[bytes, bytes]
    loop: asyncio.AbstractEventLoop
    registry: Registry
    client: mqtt.Client | None = None
    _pending: deque[_Delivery] = field(default_factory=deque)
    _generation: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the broker confirmed the subscription: before that, what sensors publish has no session
    to wait in, so the service reports itself started only after it."""

    # -- paho's network thread ---------------------------------------------------------------------------
    def on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log("mqtt_refused", reason=str(reason))
            return
        client.subscribe(SUBSCRIPTION, qos=1)
        self.loop.call_soon_threadsafe(self._connected, bool(flags.session_present))

    def on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        if all(not reason.is_failure for reason in reasons):
            self.loop.call_soon_threadsafe(self.subscribed.set)
        else:
            log("mqtt_subscribe_refused", reasons=[str(r) for r in reasons])

    def on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.loop.call_soon_threadsafe(self._disconnected, str(reason))

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.loop.call_soon_threadsafe(
            self._received, message.topic, bytes(message.payload), message.mid, message.qos
        )

    # -- the event loop ----------------------------------------------------------------------------------
    def _connected(self, session_present: bool) -> None:
        log("mqtt_connected", session_present=session_present)

    def _disconnected(self, reason: str) -> None:
        """What this connection received and did not acknowledge, the broker sends again: forget it."""
        self._generation += 1
        self._pending.clear()
        UNACKNOWLEDGED.set(0)
        log("mqtt_disconnected", reason=reason)

    def _received(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        delivery = _Delivery(mid, qos)
        self._pending.append(delivery)
        UNACKNOWLEDGED.inc()
        task = asyncio.create_task(
            self._forward(route(topic, payload, time.time(), self.registry), delivery, self._generation)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, record: LogRecord, delivery: _Delivery, generation: int) -> None:
        while True:
            try:
                await (await self.producer.send(record.topic, record.value, key=record.key))
                break
            except KafkaError as exc:
                log("log_unavailable", error=repr(exc), retry_in_s=RETRY_S)
                await asyncio.sleep(RETRY_S)
        if record.topic == READINGS:
            FORWARDED.inc()
        if generation == self._generation:
            delivery.done = True
            self._acknowledge_in_order()

    def _acknowledge_in_order(self) -> None:
        while self._pending and self._pending[0].done and self.client is not None:
            head = self._pending.popleft()
            if head.qos > 0:
                self.client.ack(head.mid, head.qos)
            UNACKNOWLEDGED.dec()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def mqtt_client(bridge: Bridge, settings: SensorsSettings) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=settings.bridge_client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
        manual_ack=True,
    )
    client.on_connect = bridge.on_connect
    client.on_disconnect = bridge.on_disconnect
    client.on_message = bridge.on_message
    client.on_subscribe = bridge.on_subscribe
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    return client


def broker_addresses() -> list[str]:
    return [a for a in infra_settings().require("mqtt_brokers").split(",") if a]


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    settings = SensorsSettings()
    brokers = broker_addresses()
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    producer = kafka.producer()
    await producer.start()
    bridge = Bridge(producer, asyncio.get_running_loop(), settings.registry())
    client = bridge.client = mqtt_client(bridge, settings)
    host, port = brokers[0].rsplit(":", 1)
    client.connect_async(host, int(port), keepalive=settings.mqtt_keepalive_s)
    client.loop_start()
    try:
        await asyncio.wait_for(bridge.subscribed.wait(), SUBSCRIBE_TIMEOUT_S)
    except TimeoutError:
        client.loop_stop()
        raise SystemExit(f"no subscription at {brokers[0]} within {SUBSCRIBE_TIMEOUT_S:g} s") from None
    publish_endpoints(mqtt=brokers)
    log("bridging", subscribed_at=brokers[0], regions=len(brokers))

    async def keep_bridging(stop: asyncio.Event) -> None:
        await stop.wait()
        client.disconnect()  # nothing more comes in; what is on its way to the log still gets there
        client.loop_stop()
        await bridge.drain()
        await producer.flush()
        await producer.stop()

    return http_app("sensors bridge"), [keep_bridging]


if __name__ == "__main__":
    run_service(build)
