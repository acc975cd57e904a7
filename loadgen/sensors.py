"""Publishes sensor readings the way buildings do: one MQTT connection per building, QoS 1, to the broker
of the building's region, across a WAN of the building's own latency. Used by the sensors load generator
(`katas.sensors.load`), its check and its chaos tests.

Each building gets a `katas.infra.proxy.ChaosProxy` of its own, in this process and on loopback, in front
of its region's broker, delaying each direction by half the building's round trip (`Building.latency_ms`,
20-200 ms), so that a publish and its PUBACK take at least that round trip, as from a building far away.
The building's paho client connects through it. A test may break one building's network through
`SensorsPublisher.links[building].proxy` while the rest of the fleet keeps publishing.

One connection per building, with its sensors multiplexed over it (as a building's gateway does), not one
per sensor: the card explains why connection count is not what this machine can stress honestly.

The clients run on the caller's asyncio loop, not in a network thread each: paho's socket callbacks
register the socket with the loop (paho's "external event loop" mode), so fifty buildings cost no
threads besides the proxies' and a PUBACK resolves its publish's future on the loop directly.

Acknowledged means a PUBACK came back: the broker has stored the message for its subscribers (the
bridge's persistent session). A PUBACK is counted whenever it arrives, also after the load generator
stopped waiting for it, so `acknowledged` holds every message the broker acknowledged to this process.
What the broker received without the PUBACK reaching us (a connection cut in between) may still be stored:
at least once, so stored readings are a superset of acknowledged ones, never a subset.

A dropped connection is dialled again every `RECONNECT_S`; paho keeps unacknowledged QoS 1 messages and
sends them again (DUP) once the new connection is up, so a broker outage delays acknowledgements instead
of losing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from katas.infra.proxy import ChaosProxy
from katas.sensors.fleet import REGIONS, Building
from loadgen.engine import HIGHEST_US, new_histogram
from loadgen.stack import host_of, is_loopback

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

BROKER_REGIONS: tuple[str, ...] = REGIONS
"""The region of each address of endpoints.json's `mqtt`, in order: the card starts mqtt-eu, then mqtt-us.
A building publishes to its region's broker (`Building.region`, from its city in `katas.sensors.fleet`:
"eu" for Europe, the Gulf, India and Singapore, "us" for the Americas and the Pacific)."""
KEEPALIVE_S = 15
"""How soon a silent (blackholed) connection is given up and dialled again."""
CONNECT_TIMEOUT_S = 30.0
RECONNECT_S = 1.0
MAX_INFLIGHT = 2000
"""Unacknowledged QoS 1 messages per connection before paho queues more (its default, 20, would cap a
building 200 ms away at 100 readings/s)."""
CLOSE_WAIT_S = 0.25
"""After DISCONNECT, how long the proxies keep forwarding before they stop (it crosses a delayed link)."""


class PublishRefusedError(RuntimeError):
    """The building's MQTT client would not take a message (its queue is full)."""


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


def region_brokers(brokers: Sequence[str]) -> dict[str, str]:
    """Each region's broker from endpoints.json's `mqtt` list: one address per region in `BROKER_REGIONS`
    order, or a single address that every region shares. ValueError if it is neither, or not loopback."""
    addresses = [str(b) for b in brokers]
    if not addresses:
        raise ValueError("no MQTT broker given (endpoints.json `mqtt` is empty)")
    remote = [a for a in addresses if not is_loopback(host_of(a))]
    if remote:
        raise ValueError(f"the load generator only sends to loopback; {', '.join(remote)} is not local")
    if len(addresses) == 1:
        return dict.fromkeys(BROKER_REGIONS, addresses[0])
    if len(addresses) != len(BROKER_REGIONS):
        raise ValueError(
            f"expected one MQTT broker per region ({', '.join(BROKER_REGIONS)}), got {len(addresses)}: "
            + ", ".join(addresses)
        )
    return dict(zip(BROKER_REGIONS, addresses, strict=True))


def broker_for(region: str, brokers: Sequence[str]) -> str:
    """The address a building of `region` publishes to."""
    by_region = region_brokers(brokers)
    try:
        return by_region[region]
    except KeyError:
        raise ValueError(f"no broker for region {region!r} (regions: {', '.join(by_region)})") from None


@dataclass
class Tally:
    """What one region's (or one building's) connections sent and got acknowledged."""

    published: int = 0
    """Messages handed to an MQTT client."""
    acknowledged: int = 0
    """Messages whose PUBACK came back."""
    latency: Any = field(default_factory=new_histogram, repr=False)
    """Publish -> PUBACK in microseconds (HDR histogram): the network round trip plus the broker's time.
    Recorded per building; a region's live tally counts only (see `SensorsPublisher.region_tallies`)."""

    @property
    def failed(self) -> int:
        """Published and not acknowledged: during a run, what is in flight; after it, what was lost or
        never confirmed."""
        return self.published - self.acknowledged

    def record(self, seconds: float) -> None:
        self.latency.record_value(min(max(round(seconds * 1_000_000), 1), HIGHEST_US))


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[float]
    sent_at: float
    tag: Hashable


class BuildingLink:
    """One building's MQTT connection to its region's broker, through its own WAN proxy."""

    def __init__(
        self,
        building: Building,
        broker: str,
        region_tally: Tally,
        *,
        client_id: str,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self.building = building
        self.broker = broker
        self.region = building.region
        self.region_tally = region_tally
        self.tally = Tally()
        self.acknowledged: list[Hashable] = []
        """The tag of every message acknowledged, in PUBACK order."""
        self.proxy = ChaosProxy(f"wan-{building.id}", _host_port(broker))
        self.connects = 0
        """Connections established (more than one: the link was broken and came back)."""
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, _Pending] = {}
        self._connected: asyncio.Future[None] = self._loop.create_future()
        self._closing = False
        self._misc: asyncio.Task[None] | None = None
        self._redial: asyncio.Task[None] | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        client.max_inflight_messages_set(max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self.client = client

    @property
    def one_way_delay_ms(self) -> float:
        """Each direction carries half of the building's round trip."""
        return self.building.latency_ms / 2

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def open(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Start the WAN proxy with the building's delay, connect through it and wait for the CONNACK."""
        self.proxy.start()
        self.proxy.delay(self.one_way_delay_ms)
        host, port = _host_port(self.proxy.address)
        self.client.connect(host, port, keepalive=KEEPALIVE_S)  # loopback: the TCP handshake is instant
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected
        except TimeoutError:
            raise ConnectionError(
                f"{self.building.id} got no CONNACK from the {self.region} broker {self.broker} "
                f"within {timeout_s:g} s"
            ) from None

    async def close(self) -> None:
        """Disconnect (what is unacknowledged now stays so) and stop the proxy."""
        self._closing = True
        if self._redial is not None:
            self._redial.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._redial
        with contextlib.suppress(OSError, ValueError):
            self.client.disconnect()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.cancel()
        self._pending.clear()
        await asyncio.sleep(CLOSE_WAIT_S if self.connects else 0)
        self._stop_misc()
        sock = self.client.socket()
        if sock is not None:  # the DISCONNECT did not go out (the link is down): drop the socket ourselves
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy.stop()

    # -- publishing --------------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, tag: Hashable) -> asyncio.Future[float]:
        """Publish at QoS 1; the future gives publish -> PUBACK in seconds. `tag` goes to `acknowledged`
        when the PUBACK arrives. While the link is down, paho keeps the message and sends it once the
        connection is back."""
        self.tally.published += 1
        self.region_tally.published += 1
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PublishRefusedError(f"{self.building.id}: {mqtt.error_string(info.rc)}")
        future: asyncio.Future[float] = self._loop.create_future()
        self._pending[info.mid] = _Pending(future, time.perf_counter(), tag)
        return future

    # -- paho callbacks (on this loop: paho runs inside loop_read / loop_write) ---------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            if not self._connected.done():
                self._connected.set_exception(
                    ConnectionError(f"{self.broker} refused {self.building.id}: {reason}")
                )
            return
        self.connects += 1
        if not self._connected.done():
            self._connected.set_result(None)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self._closing or (self._redial is not None and not self._redial.done()):
            return
        self._redial = self._loop.create_task(self._dial_again())

    async def _dial_again(self) -> None:
        while not self._closing:
            await asyncio.sleep(RECONNECT_S)
            try:
                if self.client.reconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return  # the CONNACK, or another disconnect, comes through the callbacks
            except OSError:
                continue

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        pending = self._pending.pop(mid, None)
        if pending is None:
            return
        seconds = time.perf_counter() - pending.sent_at
        self.tally.acknowledged += 1
        self.region_tally.acknowledged += 1
        self.tally.record(seconds)  # per building only; `region_tallies` merges them
        self.acknowledged.append(pending.tag)
        if not pending.future.done():
            pending.future.set_result(seconds)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self._loop.add_reader(sock, client.loop_read)
        self._stop_misc()
        self._misc = self._loop.create_task(self._keep_alive())

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self._loop.remove_reader(sock)
        self._stop_misc()

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self._loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self._loop.remove_writer(sock)

    async def _keep_alive(self) -> None:
        """paho's timers (PINGREQ, a missing PINGRESP) need loop_misc about once a second."""
        while self.client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 (paho polls)
            await asyncio.sleep(1.0)

    def _stop_misc(self) -> None:
        if self._misc is not None and self._misc is not asyncio.current_task():
            self._misc.cancel()
        self._misc = None


class SensorsPublisher:
    """The fleet's connections: one `BuildingLink` per building, to its region's broker.

        async with SensorsPublisher(endpoints["mqtt"], buildings) as publisher:
            await publisher.publish("mex-001", topic, payload, tag)

    Counts per region (`regions`) and per building (`links[b].tally`)."""

    def __init__(
        self,
        brokers: Sequence[str],
        buildings: Sequence[Building],
        *,
        run_id: str | None = None,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        if not buildings:
            raise ValueError("no buildings to publish for")
        self.brokers = region_brokers(brokers)
        self.buildings = list(buildings)
        self.run_id = run_id or secrets.token_hex(3)
        self.max_inflight = max_inflight
        self.regions: dict[str, Tally] = {}
        self.links: dict[str, BuildingLink] = {}

    async def __aenter__(self) -> SensorsPublisher:
        try:
            for building in self.buildings:
                if building.region not in self.brokers:
                    raise ValueError(f"no broker for region {building.region!r} of {building.id}")
                tally = self.regions.setdefault(building.region, Tally())
                self.links[building.id] = BuildingLink(
                    building,
                    self.brokers[building.region],
                    tally,
                    client_id=f"katas-load-{building.id}-{self.run_id}",
                    max_inflight=self.max_inflight,
                )
            await asyncio.gather(*(link.open() for link in self.links.values()))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)

    def publish(self, building: str, topic: str, payload: bytes, tag: Hashable) -> asyncio.Future[float]:
        return self.links[building].publish(topic, payload, tag)

    def region_tallies(self) -> dict[str, Tally]:
        """Per region: the live counts, with the latency of its buildings merged (recorded once per
        PUBACK, in the building's histogram)."""
        merged: dict[str, Tally] = {}
        for region, live in self.regions.items():
            tally = merged[region] = Tally(live.published, live.acknowledged)
            for link in self.links.values():
                if link.region == region:
                    tally.latency.add(link.tally.latency)
        return merged

    def acknowledged(self) -> list[Hashable]:
        """The tags of every acknowledged message, building by building."""
        return [tag for link in self.links.values() for tag in link.acknowledged]

    @property
    def published(self) -> int:
        return sum(t.published for t in self.regions.values())

    @property
    def acknowledged_count(self) -> int:
        return sum(t.acknowledged for t in self.regions.values())
