"""Ingest: syslog over UDP and TCP, JSON and Windows event XML over HTTP, onto `siem.raw`.

Every event gets an id (UUIDv7, so ids sort by arrival) and goes to the raw topic keyed by its source
(for syslog: the peer and the header's host name), so one source's events stay in order on one partition. Nothing is parsed here beyond framing: a parser bug
must never cost an event, so parsing happens downstream where failures go to the dead-letter topic.

Backpressure, per transport:
- TCP: while more than `max_in_flight` events wait for the broker, the connection is not read, so the
  sender's TCP window closes and it slows down; nothing is dropped.
- HTTP: a batch is answered 202 only after the broker stored every event of it; above `max_in_flight`
  the answer is 503 with Retry-After, and the client sends again.
- UDP has no way to push back. Above `max_in_flight` datagrams are counted as dropped
  (`ingest_udp_dropped_total`), which is why sources that must not lose events use TCP or HTTP. The
  socket's receive buffer is enlarged for bursts; what the kernel still drops when it is full shows as
  `ingest_udp_kernel_drops`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge

from katas.infra import kafka
from katas.infra.ports import LOOPBACK
from katas.infra.service import Worker, http_app, log, mistakes, own_url, publish_endpoints, run_service
from katas.infra.settings import infra_settings
from katas.infra.udp import enlarge_receive_buffer, kernel_drops
from katas.siem.framing import Frame, SyslogFramer, split_datagram, syslog_hostname
from katas.siem.normalize import DeadLetter, RawEnvelope, Transport
from katas.siem.parsing import split_json_batch, split_winxml_batch
from katas.siem.settings import SiemSettings
from katas.siem.topics import DEADLETTER, RAW, TOPIC_PARTITIONS

EVENTS = Counter("ingest_events", "events accepted onto the raw topic", ["transport"])
REJECTED = Counter("ingest_rejected", "requests refused with a reason", ["transport", "reason"])
UDP_DROPPED = Counter("ingest_udp_dropped", "datagrams dropped while the broker was behind")
IN_FLIGHT = Gauge("ingest_queue_depth", "events waiting for the broker's acknowledgement")
UDP_KERNEL_DROPS = Gauge("ingest_udp_kernel_drops", "datagrams the kernel dropped: receive buffer full")


def partition_key(transport: Transport, source: str, payload: bytes) -> bytes:
    """The raw topic's key: the source, so each source's events stay in order on one partition.

    For syslog the peer address and the message's host name together, since many devices may share one
    address (a relay; every device of the lab's fleet sends from 127.0.0.1).
    """
    if transport.startswith("syslog") and (host := syslog_hostname(payload)) is not None:
        return source.encode() + b"/" + host
    return source.encode()


class Ingest:
    """Stamps, keys and sends events, and keeps count of what the broker has not acknowledged yet."""

    def __init__(
        self, producer: AIOKafkaProducer[bytes, bytes], max_in_flight: int, backpressure: bool
    ) -> None:
        self.producer = producer
        self.max_in_flight = max_in_flight
        self.backpressure = backpressure
        self.in_flight = 0
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()

    @property
    def saturated(self) -> bool:
        return self.backpressure and self.in_flight >= self.max_in_flight

    async def wait_for_room(self) -> None:
        while self.saturated:
            self._room.clear()
            await self._room.wait()

    def spawn(self, transport: Transport, source: str, payload: bytes) -> None:
        """Send without waiting (UDP): the task is kept until it is done."""
        task: asyncio.Task[object] = asyncio.create_task(self.send(transport, source, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, transport: Transport, source: str, payload: bytes) -> asyncio.Future[object]:
        """Queue one event; the returned future resolves when the broker has stored it."""
        envelope = RawEnvelope.new(source, transport, payload)
        delivery: asyncio.Future[object] = await self.producer.send(
            RAW, envelope.to_json(), key=partition_key(transport, source, payload)
        )
        self.in_flight += 1
        IN_FLIGHT.inc()
        delivery.add_done_callback(lambda done: self._delivered(transport, done))
        return delivery

    def _delivered(self, transport: str, delivery: asyncio.Future[object]) -> None:
        self.in_flight -= 1
        IN_FLIGHT.dec()
        if not delivery.cancelled() and delivery.exception() is None:
            EVENTS.labels(transport).inc()
        self._room.set()

    async def dead_letter(self, transport: Transport, source: str, frame: Frame) -> None:
        """A frame that is not a whole message (oversized, cut off) goes straight to the dead letters."""
        letter = DeadLetter.of(RawEnvelope.new(source, transport, frame.message), frame.reason or "framing")
        letter = dataclasses.replace(letter, stage="ingest")
        await self.producer.send_and_wait(DEADLETTER, letter.to_json(), key=source.encode())
        REJECTED.labels(transport, "dead-lettered").inc()


# --------------------------------------------------------------------------------------------- syslog
class SyslogUdp(asyncio.DatagramProtocol):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.ingest.saturated:
            UDP_DROPPED.inc()
            return
        self.ingest.spawn("syslog-udp", addr[0], split_datagram(data))


async def syslog_tcp_connection(
    ingest: Ingest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    peer = writer.get_extra_info("peername")
    source = peer[0] if peer else "unknown"
    framer = SyslogFramer()
    pending: list[asyncio.Future[object]] = []

    async def take(frames: list[Frame]) -> None:
        for frame in frames:
            await ingest.wait_for_room()  # not reading is how TCP pushes back on the sender
            if frame.ok:
                pending.append(await ingest.send("syslog-tcp", source, frame.message))
            else:
                await ingest.dead_letter("syslog-tcp", source, frame)

    try:
        while chunk := await reader.read(65536):
            await take(framer.feed(chunk))
            pending[:] = [p for p in pending if not p.done()]
        await take(framer.close())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    except ConnectionError:
        pass
    finally:
        writer.close()


# ----------------------------------------------------------------------------------------------- HTTP
def create_app(ingest: Ingest, settings: SiemSettings) -> FastAPI:
    app = http_app("SIEM ingest")

    async def accept(request: Request, transport: Transport, events: list[bytes]) -> JSONResponse:
        if ingest.saturated:
            REJECTED.labels(transport, "busy").inc()
            return JSONResponse(
                {"error": "pipeline is behind, retry"}, status_code=503, headers={"Retry-After": "1"}
            )
        source = request.headers.get("x-source") or (request.client.host if request.client else "unknown")
        deliveries = [await ingest.send(transport, source, event) for event in events]
        await asyncio.gather(*deliveries)  # 202 means stored by the broker
        return JSONResponse({"accepted": len(events)}, status_code=202)

    async def read_body(request: Request, transport: Transport) -> bytes | JSONResponse:
        if int(request.headers.get("content-length") or 0) > settings.max_batch_bytes:
            REJECTED.labels(transport, "too-large").inc()
            return JSONResponse(
                {"error": f"batch larger than {settings.max_batch_bytes} bytes"}, status_code=413
            )
        return await request.body()

    @app.post("/ingest/json")
    async def ingest_json(request: Request) -> JSONResponse:
        body = await read_body(request, "http-json")
        if isinstance(body, JSONResponse):
            return body
        return await accept(request, "http-json", split_json_batch(body))

    @app.post("/ingest/winxml")
    async def ingest_winxml(request: Request) -> JSONResponse:
        body = await read_body(request, "http-winxml")
        if isinstance(body, JSONResponse):
            return body
        return await accept(request, "http-winxml", split_winxml_batch(body))

    return app


async def build() -> tuple[FastAPI, Sequence[Worker]]:
    settings = SiemSettings()
    await kafka.ensure_topics(TOPIC_PARTITIONS)
    producer = kafka.producer()
    await producer.start()
    ingest = Ingest(producer, settings.max_in_flight, backpressure="no-backpressure" not in mistakes())

    loop = asyncio.get_running_loop()
    bind_host = infra_settings().service_bind_host
    udp, _ = await loop.create_datagram_endpoint(
        lambda: SyslogUdp(ingest), local_addr=(bind_host, settings.syslog_udp_port)
    )
    tcp = await asyncio.start_server(
        lambda r, w: syslog_tcp_connection(ingest, r, w), bind_host, settings.syslog_tcp_port, limit=1 << 20
    )
    udp_socket = udp.get_extra_info("socket")
    udp_buffer = enlarge_receive_buffer(udp_socket, settings.udp_receive_buffer_bytes)
    UDP_KERNEL_DROPS.set_function(lambda: kernel_drops(udp_socket) or 0)
    udp_port = udp.get_extra_info("sockname")[1]
    tcp_port = tcp.sockets[0].getsockname()[1]
    publish_endpoints(
        syslog_udp=f"{LOOPBACK}:{udp_port}",
        syslog_tcp=f"{LOOPBACK}:{tcp_port}",
        http_ingest=own_url(),
    )
    log("listening", syslog_udp=udp_port, syslog_tcp=tcp_port, udp_receive_buffer_bytes=udp_buffer)

    async def keep_listening(stop: asyncio.Event) -> None:
        await stop.wait()
        udp.close()
        tcp.close()
        await tcp.wait_closed()
        await producer.flush()
        await producer.stop()

    return create_app(ingest, settings), [keep_listening]


if __name__ == "__main__":
    run_service(build)
