"""Usage events from a gateway node to the broker, off the request path.

`UsageRecorder.record(served)` is what the node calls once per request (Collaborators.observe): it appends
to a bounded in-memory buffer and returns. No await, no I/O, no encoding: a deque append and a length
check. The recorder's worker (`run`, one of the node service's workers) drains the buffer in batches,
encodes the events (katas.api_gateway.analytics) and produces them with one aiokafka producer, keyed by
client.

Why a buffer of our own and not the producer's: aiokafka's `send()` waits when its batches are full and
fails after `request_timeout_ms` when the broker is gone; on the request path either would turn a broker
outage into slow or failed API calls. Here a broker outage only fills the buffer.

When the buffer is full, the OLDEST event is dropped (deque(maxlen)), counted in
`gateway_usage_events_dropped_total{reason="buffer_full"}` and logged at most once per `log_every_s`.
Oldest rather than newest because the events lost are then those of the start of the outage while the
ones kept are the latest, and the latest minutes are what the usage dashboard, on-call and capacity
planning look at first once the broker is back; billing loses the same count either way, and the counter
says how many. Dropping the oldest also needs no branch on the hot path: the deque does it in O(1).

Delivery is at least once: a batch that failed (or timed out, though the broker may have stored it) is sent
again, with exponential backoff, until the broker acknowledges it; every event carries a unique id (the
recorder's boot nonce and a sequence number) and the store drops the copies. A node holds at most
`capacity` buffered events plus one batch in flight.

The worker runs on the node's event loop, so it never holds the loop for long: it encodes and hands events
to the producer in slices of `SLICE` and yields between slices. On stop it flushes what it holds for at most
`flush_s`; whatever is left is counted as dropped with reason "shutdown". `close()` (for the application's
cleanup) flushes events recorded after the worker stopped, for requests still answered during shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from katas.api_gateway.analytics import UsageEvent
from katas.api_gateway.node import Served
from katas.infra import kafka
from katas.infra.service import log

DROPPED = Counter(
    "gateway_usage_events_dropped",
    "Usage events a node dropped, by reason (buffer_full, shutdown)",
    ["reason"],
)
SENT = Counter("gateway_usage_events_sent", "Usage events the broker acknowledged")
SEND_FAILURES = Counter("gateway_usage_send_failures", "Failed attempts to produce a batch of usage events")
DEPTH = Gauge("gateway_usage_queue_depth", "Usage events a node holds, buffered or in flight")

SLICE = 50
"""Events encoded or handed to the producer between two yields to the event loop (well under 1 ms)."""
MIN_BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0

ProducerFactory = Callable[[], "AIOKafkaProducer[bytes, bytes]"]


class UsageRecorder:
    def __init__(
        self,
        node: str,
        topic: str,
        *,
        capacity: int = 100_000,
        partitions: int = 3,
        batch_max: int = 2000,
        linger_s: float = 1.0,
        send_timeout_s: float = 5.0,
        flush_s: float = 5.0,
        log_every_s: float = 5.0,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        if capacity < 1 or batch_max < 1:
            raise ValueError("capacity and batch_max must be at least 1")
        self.node = node
        self.topic = topic
        self.capacity = capacity
        self.partitions = partitions
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.flush_s = flush_s
        self.log_every_s = log_every_s
        self._factory = producer_factory or (
            lambda: kafka.producer(request_timeout_ms=int(send_timeout_s * 1000), linger_ms=20)
        )
        self._buffer: deque[Served] = deque(maxlen=capacity)
        self._pending: list[tuple[bytes, bytes]] = []
        """Encoded (key, value) taken from the buffer and not acknowledged yet, in order."""
        self._producer: AIOKafkaProducer[bytes, bytes] | None = None
        self._boot = secrets.token_hex(6)
        self._sequence = 0
        self._last_drop_log = -float("inf")
        self._drops_since_log = 0
        self.dropped = 0
        self.sent = 0

    # -- the request path ------------------------------------------------------------------------------
    def record(self, served: Served) -> None:
        """Keep `served` for the broker. O(1), never blocks, never raises for a full buffer."""
        if len(self._buffer) == self.capacity:
            self._drop(1, "buffer_full")
        self._buffer.append(served)

    @property
    def held(self) -> int:
        """Events not acknowledged by the broker yet: buffered plus in flight."""
        return len(self._buffer) + len(self._pending)

    def _drop(self, count: int, reason: str) -> None:
        self.dropped += count
        DROPPED.labels(reason).inc(count)
        self._drops_since_log += count
        now = time.monotonic()
        if reason != "buffer_full" or now - self._last_drop_log >= self.log_every_s:
            log(
                "usage_events_dropped",
                reason=reason,
                dropped=self._drops_since_log,
                dropped_total=self.dropped,
                capacity=self.capacity,
            )
            self._last_drop_log, self._drops_since_log = now, 0

    # -- the worker ------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Drain the buffer to the broker until `stop`, riding out broker outages; then flush."""
        backoff = MIN_BACKOFF_S
        failing_since: float | None = None
        while not stop.is_set():
            if not self._pending and len(self._buffer) < self.batch_max:
                # Linger: fewer, larger produce requests (tansu writes one object per request).
                await _sleep_or_stop(stop, self.linger_s)
                if stop.is_set():
                    break  # what is held goes out through flush(), bounded in time
            await self._take()
            DEPTH.set(self.held)
            if not self._pending:
                continue
            try:
                await self._deliver()
            except Exception as exc:
                SEND_FAILURES.inc()
                now = time.monotonic()
                if failing_since is None or now - failing_since >= self.log_every_s:
                    log("usage_send_failed", error=repr(exc), held=self.held, retry_in_s=backoff)
                    failing_since = now
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            else:
                if failing_since is not None:
                    log("usage_send_recovered", held=self.held)
                backoff, failing_since = MIN_BACKOFF_S, None
        await self.flush(self.flush_s)

    async def close(self) -> None:
        """Flush what was recorded after the worker stopped (an application cleanup hook)."""
        await self.flush(self.flush_s)

    async def flush(self, timeout_s: float) -> None:
        """Deliver everything held within `timeout_s`, count the rest as dropped, close the producer."""
        deadline = time.monotonic() + timeout_s
        while self.held and (remaining := deadline - time.monotonic()) > 0:
            await self._take()
            try:
                await asyncio.wait_for(self._deliver(), remaining)
            except Exception:  # retried until the deadline; the loss is counted below
                SEND_FAILURES.inc()
                await asyncio.sleep(min(MIN_BACKOFF_S, max(0.0, deadline - time.monotonic())))
        if self.held:
            lost = self.held
            self._pending.clear()
            self._buffer.clear()
            self._drop(lost, "shutdown")
        DEPTH.set(0)
        await self._close_producer(max(1.0, deadline - time.monotonic()))

    async def _take(self) -> None:
        """Move up to a batch of events from the buffer to `_pending`, encoded and given their ids."""
        room = self.batch_max - len(self._pending)
        while room > 0 and self._buffer:
            for _ in range(min(room, SLICE, len(self._buffer))):
                served = self._buffer.popleft()
                self._sequence += 1
                event = UsageEvent.of(served, f"{self._boot}-{self._sequence}")
                self._pending.append((event.key(), event.encode()))
                room -= 1
            await asyncio.sleep(0)

    async def _deliver(self) -> None:
        """Produce `_pending`; keep what the broker did not acknowledge and raise its error."""
        producer = await self._connected()
        futures: list[asyncio.Future[object]] = []
        error: Exception | None = None
        for index, (key, value) in enumerate(self._pending):
            try:
                futures.append(await producer.send(self.topic, value, key=key))
            except Exception as exc:  # no metadata, producer closed: the rest stays pending
                error = exc
                break
            if index % SLICE == SLICE - 1:
                await asyncio.sleep(0)
        results = await asyncio.gather(*futures, return_exceptions=True)
        attempted = self._pending[: len(futures)]
        kept = [
            item for item, result in zip(attempted, results, strict=True) if isinstance(result, BaseException)
        ]
        kept += self._pending[len(futures) :]
        delivered = len(self._pending) - len(kept)
        self._pending = kept
        self.sent += delivered
        SENT.inc(delivered)
        failure = error or next((r for r in results if isinstance(r, Exception)), None)
        if failure is not None:
            if error is not None:  # the producer itself is unusable: start a new one next time
                await self._close_producer(1.0)
            raise failure

    async def _connected(self) -> AIOKafkaProducer[bytes, bytes]:
        if self._producer is None:
            await kafka.ensure_topics({self.topic: self.partitions})
            producer = self._factory()
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 1.0)
                raise
            self._producer = producer
        return self._producer

    async def _close_producer(self, timeout_s: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout_s)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
