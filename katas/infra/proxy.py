"""A TCP proxy in front of one server, so chaos tests can delay or cut that server's network.

Why it exists: a kata's chaos test must break *one* server's network path (the Redis primary, one Kafka
broker, one MQTT region) while everything else keeps working, on a laptop, without root, `tc netem` or
iptables. The stack launcher therefore starts every server on a private port and puts a `ChaosProxy` in
front of it; the services only ever see the proxy's address. A test then calls `delay`, `cut`,
`blackhole`, `restore` or `retarget` on that proxy and watches how the system behaves.

Design notes, each one a reason:

* The proxy runs its own asyncio event loop in a daemon thread, so it works the same under synchronous
  tests, under pytest-asyncio, and inside the launcher, and fault calls are plain blocking methods that
  are safe from any thread while traffic flows. A fault call returns once the loop has applied it, so a
  test can `cut()` and immediately expect the next request to fail.
* Data is forwarded chunk by chunk (64 KiB reads, no per-byte work, TCP_NODELAY on both sockets); with no
  fault a chunk is written to the other side straight from the read callback, so a Kafka or Redis client
  can push thousands of messages per second through it.
* Latency is modelled with a per-direction FIFO queue and timers, never with a sleep per chunk: chunks
  in one direction are released in the order they arrived, as TCP would deliver them, even with jitter.
* Nothing is ever dropped from the middle of a stream. A real network loses packets, but TCP retransmits
  them, so an application never sees a hole in its byte stream; dropping bytes here would corrupt the
  protocol in a way no real outage can. A blackhole therefore *holds* data (and stops reading once a
  bounded buffer is full, which fills the kernel buffers just like a partition does), and the only way
  bytes are lost is with the whole connection (`cut`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import random
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["ChaosProxy", "Fault", "FaultKind", "ProxyStats"]

LISTEN_HOST = "127.0.0.1"
"""The proxy only ever listens on loopback: it is a test fixture, not a network service."""

READ_SIZE = 64 * 1024
"""Bytes read from a socket at once."""

QUEUE_HIGH = 4 * 1024 * 1024
"""Bytes held per direction (delayed or blackholed) before the proxy stops reading that side.

Bounded so a blackhole or a long delay cannot eat memory; large enough that a 200 ms delay still carries
~20 MiB/s per connection (the bandwidth-delay product a real link would need)."""

QUEUE_LOW = QUEUE_HIGH // 2
"""Bytes held per direction below which a paused side is read again."""

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for the upstream server to accept a connection before resetting the client."""

CONTROL_TIMEOUT = 10.0
"""Seconds a fault call waits for the proxy's event loop to apply it."""

_EARLY_OK = 0.0005
"""asyncio may fire a timer up to its clock resolution early; a chunk this close to its release time is
sent rather than re-armed for a fraction of a millisecond."""

_LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, timeout 0: close() sends an RST instead of a FIN, which is how a broken path looks."""


class FaultKind(enum.Enum):
    NONE = "normal"
    DELAY = "delay"
    CUT = "cut"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class Fault:
    """The fault currently applied; one at a time, each fault call replaces the previous one."""

    kind: FaultKind = FaultKind.NONE
    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    def describe(self) -> str:
        if self.kind is FaultKind.DELAY:
            if self.jitter_ms:
                return f"delay {self.delay_ms:g}ms ±{self.jitter_ms:g}ms"
            return f"delay {self.delay_ms:g}ms"
        return str(self.kind.value)


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """A snapshot of a proxy's counters, for the launcher's status table."""

    name: str
    address: str
    target: str
    state: str
    connections_accepted: int
    """Client connections accepted since start, including those refused while cut."""
    connections_active: int
    connections_refused: int
    """Connections accepted and reset at once because the proxy was cut."""
    upstream_failures: int
    """Connections reset because the target server could not be reached."""
    bytes_to_server: int
    """Bytes delivered from clients to the server."""
    bytes_to_client: int
    """Bytes delivered from the server to clients."""


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Close a socket with an RST, dropping anything buffered: the peer sees 'connection reset'."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    assert isinstance(transport, asyncio.Transport)
    transport.abort()


class _Side(asyncio.BufferedProtocol):
    """One socket of a proxied connection: the client's, or the one to the server."""

    def __init__(self, conn: _Connection, label: str) -> None:
        self.conn = conn
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.out: _Pipe | None = None
        """The pipe this side's incoming data goes into."""
        self.into: _Pipe | None = None
        """The pipe that writes to this side."""
        self.eof = False
        self.lost = False
        self.reading_paused = False
        self.writing_paused = False
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn.side_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        # A copy is needed: the buffer is reused for the next read while the chunk may still be queued
        # or sitting in the other transport's write buffer.
        assert self.out is not None
        self.out.feed(bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        self.eof = True
        assert self.out is not None
        self.out.feed_eof()
        return True  # keep the socket open: the other direction may still carry data (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.into is not None:
            self.into.drain()

    # flow control of the reading side, driven by the pipe's queue

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused and not self.eof and not self.lost:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused and not self.eof and not self.lost:
            self.reading_paused = False
            self.transport.resume_reading()


class _Pipe:
    """One direction of a connection: an ordered queue of chunks, released when the fault allows."""

    def __init__(self, proxy: ChaosProxy, src: _Side, dst: _Side, to_server: bool) -> None:
        self.proxy = proxy
        self.src = src
        self.dst = dst
        self.to_server = to_server
        self.queue: deque[tuple[float, bytes | bytearray | None]] = deque()
        """(arrival time, chunk); a None chunk is the end of the stream."""
        self.queued_bytes = 0
        self.head_release: float | None = None
        """When the queue's head may be sent; recomputed whenever the fault changes."""
        self.last_release = 0.0
        """Release time of the last chunk sent, so jitter can never reorder chunks."""
        self.timer: asyncio.TimerHandle | None = None
        self.finished = False
        """The end of the stream was delivered, or the destination is gone."""
        src.out = self
        dst.into = self

    def _can_send(self) -> bool:
        dst = self.dst
        return (
            self.proxy._fault.kind is not FaultKind.BLACKHOLE
            and dst.transport is not None
            and not dst.lost
            and not dst.writing_paused
        )

    def feed(self, data: bytes | bytearray) -> None:
        if (
            not self.queue
            and self.proxy._fault.kind is FaultKind.NONE
            and self._can_send()
            and self.dst.transport is not None
        ):
            self.dst.transport.write(data)  # the fast path: no fault, nothing waiting ahead
            self._count(len(data))
            return
        self.queue.append((self.proxy._loop_time(), data))
        self.queued_bytes += len(data)
        if self.queued_bytes >= QUEUE_HIGH:
            self.src.pause_reading()
        if self.timer is None:
            self.drain()

    def feed_eof(self) -> None:
        if self.finished or (self.queue and self.queue[-1][1] is None):
            return
        self.queue.append((self.proxy._loop_time(), None))
        if self.timer is None:
            self.drain()

    def _count(self, n: int) -> None:
        if self.to_server:
            self.proxy._bytes_to_server += n
        else:
            self.proxy._bytes_to_client += n

    def drain(self) -> None:
        """Send every chunk whose time has come; arm a timer for the next one."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.finished or not self._can_send():
            return  # resume_writing, the upstream connection or a fault change calls drain again
        fault = self.proxy._fault
        now = self.proxy._loop_time()
        transport = self.dst.transport
        assert transport is not None
        while self.queue:
            arrival, data = self.queue[0]
            if self.head_release is None:
                self.head_release = max(self.last_release, arrival + _one_way_delay(fault))
            if self.head_release - now > _EARLY_OK:
                self.timer = self.proxy._call_at(self.head_release, self.drain)
                break
            self.queue.popleft()
            self.last_release = self.head_release
            self.head_release = None
            if data is None:
                self.finished = True
                self.src.conn.pipe_finished(self)
                return
            transport.write(data)
            self.queued_bytes -= len(data)
            self._count(len(data))
            if self.dst.writing_paused:
                break  # resume_writing calls drain again
        if self.queued_bytes <= QUEUE_LOW:
            self.src.resume_reading()

    def fault_changed(self) -> None:
        self.head_release = None
        self.drain()

    def abandon(self) -> None:
        """The destination is gone: drop whatever is queued for it."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued_bytes = 0
        self.finished = True


def _one_way_delay(fault: Fault) -> float:
    if fault.kind is not FaultKind.DELAY:
        return 0.0
    ms = fault.delay_ms
    if fault.jitter_ms:
        ms += random.uniform(-fault.jitter_ms, fault.jitter_ms)
    return max(ms, 0.0) / 1000.0


class _Connection:
    """A client connection and its connection to the server, with one pipe each way."""

    def __init__(self, proxy: ChaosProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, "client")
        self.server = _Side(self, "server")
        self.up = _Pipe(proxy, self.client, self.server, to_server=True)
        self.down = _Pipe(proxy, self.server, self.client, to_server=False)
        self.connect_task: asyncio.Task[None] | None = None
        self.closed = False

    def side_connected(self, side: _Side) -> None:
        proxy = self.proxy
        if side is self.client:
            proxy._connections_accepted += 1
            if proxy._fault.kind is FaultKind.CUT:
                proxy._connections_refused += 1
                self.reset()
                return
            proxy._connections.add(self)
            self.connect_task = proxy._create_task(self._connect_upstream())
        elif self.closed:
            _reset(side.transport)  # the client went away while we were connecting
        else:
            self.up.drain()  # send what the client wrote while we were connecting

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.proxy._candidates():
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await loop.create_connection(lambda: self.server, host, port)
                return
            except (OSError, TimeoutError):
                self.proxy._upstream_failures += 1
        self.reset()  # like a path to a dead server: the client's connection breaks

    def pipe_finished(self, pipe: _Pipe) -> None:
        """A pipe delivered the end of its stream: half-close, or close once both ways are done."""
        other = self.down if pipe is self.up else self.up
        dst = pipe.dst
        if other.finished or dst.transport is None or not dst.transport.can_write_eof():
            self.close()
        else:
            dst.transport.write_eof()

    def side_lost(self, side: _Side) -> None:
        other = self.server if side is self.client else self.client
        if side.into is not None:
            side.into.abandon()
        if side.out is not None and not side.out.finished:
            side.out.feed_eof()  # deliver what it sent before it went away, then close
        if self.client.lost and (self.server.lost or self.server.transport is None):
            self._forget()
        elif other.transport is None and side is self.client:
            self.close()  # still connecting upstream; nothing to deliver to

    def close(self) -> None:
        """Close both sockets gracefully, flushing what was already handed to them."""
        self.closed = True
        for side in (self.client, self.server):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        if self.server.transport is None:
            self._forget()

    def reset(self) -> None:
        """Break both sockets with an RST, dropping everything in flight."""
        self.closed = True
        self.up.abandon()
        self.down.abandon()
        _reset(self.client.transport)
        _reset(self.server.transport)
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        self._forget()

    def _forget(self) -> None:
        self.proxy._connections.discard(self)


class ChaosProxy:
    """A TCP proxy on 127.0.0.1 in front of one server, whose network path chaos can delay or break.

    The stack launcher starts one per server and hands the proxy's `address` to the services, so a
    chaos test can degrade exactly that server's network while the process itself keeps running:

    * `delay(ms, jitter_ms)`: every chunk, in each direction, arrives `ms` later (± jitter), in order.
      Both directions are delayed, so a request/response round trip gains about twice `ms`.
    * `cut()`: every open connection is reset and new ones are accepted and reset at once; clients get
      'connection reset' / EOF straight away, as when a host or link is dead and says so.
    * `blackhole()`: connections stay open (new ones are accepted too) but nothing is delivered either
      way; clients only find out through their own timeouts, as in a partition that drops packets.
      Held data is delivered on `restore()`, as TCP retransmission would, unless the client gave up.
    * `restore()`: back to normal; queued chunks are sent at once.
    * `retarget(target)`: new connections go to another address (a server restarted on a new port);
      open connections stay on the old one.

    One fault is active at a time; each call replaces the previous one. All of these are thread-safe
    and return once the proxy's event loop has applied them.
    """

    def __init__(self, name: str, target: tuple[str, int], listen_port: int = 0) -> None:
        self.name = name
        self._target = target
        self._listen_port = listen_port
        self._listen_host = LISTEN_HOST
        self._lock = threading.Lock()
        self._fault = Fault()
        """Read by the event loop on every chunk; replaced as a whole, never mutated."""
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The running loop, for control calls from other threads; None once it has stopped."""
        self._evloop: asyncio.AbstractEventLoop | None = None
        """The same loop for the data path, kept until the thread ends (callbacks run during shutdown)."""
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._started = False
        self._stopping = False
        self._connections_accepted = 0
        self._connections_refused = 0
        self._upstream_failures = 0
        self._bytes_to_server = 0
        self._bytes_to_client = 0

    def __repr__(self) -> str:
        where = self.address if self._port is not None else "not started"
        return f"ChaosProxy({self.name!r}, {where} -> {self._target[0]}:{self._target[1]}, {self.state})"

    def __enter__(self) -> ChaosProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # lifecycle

    def start(self) -> None:
        """Listen and start forwarding in a daemon thread; returns once the port is bound.

        Raises the bind error (e.g. the port is taken) in the calling thread. A proxy starts only once.
        """
        with self._lock:
            if self._started or self._stopping:
                raise RuntimeError(f"proxy {self.name!r} was already started or stopped")
            self._started = True
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run, args=(ready,), name=f"chaos-proxy-{self.name}", daemon=True
        )
        self._thread = thread
        thread.start()
        try:
            self._port = ready.result(timeout=CONTROL_TIMEOUT)
        except BaseException:
            thread.join(timeout=CONTROL_TIMEOUT)
            raise

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread. Safe to call twice."""
        with self._lock:
            if self._stopping or self._thread is None:
                self._stopping = True
                return
            self._stopping = True
            loop = self._loop
            thread = self._thread
            if loop is not None:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        if thread is not threading.current_thread():
            thread.join(timeout=CONTROL_TIMEOUT)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"proxy {self.name!r} is not started")
        return self._port

    @property
    def address(self) -> str:
        """`127.0.0.1:port`, the address to give clients instead of the server's."""
        return f"{LISTEN_HOST}:{self.port}"

    @property
    def target(self) -> tuple[str, int]:
        """Where new connections are forwarded."""
        return self._target

    # faults

    @property
    def fault(self) -> Fault:
        return self._fault

    @property
    def state(self) -> str:
        """The current fault in words: `normal`, `delay 200ms ±20ms`, `cut` or `blackhole`."""
        return self._fault.describe()

    def delay(self, ms: float, jitter_ms: float = 0) -> None:
        """Deliver every chunk `ms` (± a uniform `jitter_ms`) later, in each direction, keeping order."""
        if ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0")
        self._set_fault(Fault(FaultKind.DELAY, float(ms), float(jitter_ms)))

    def cut(self) -> None:
        """Reset every connection, and reset new ones as soon as they are accepted."""
        self._set_fault(Fault(FaultKind.CUT))

    def blackhole(self) -> None:
        """Keep connections open but deliver nothing, either way, until `restore()`."""
        self._set_fault(Fault(FaultKind.BLACKHOLE))

    def restore(self) -> None:
        """Remove the fault; anything held back is delivered now, in order."""
        self._set_fault(Fault())

    def retarget(self, target: tuple[str, int]) -> None:
        """Forward new connections to `target`, e.g. the same server restarted on another port."""
        with self._lock:
            self._target = target

    # counters

    def stats(self) -> ProxyStats:
        """A snapshot of the counters, read without pausing traffic (fields may be a chunk apart)."""
        return ProxyStats(
            name=self.name,
            address=self.address if self._port is not None else "-",
            target=f"{self._target[0]}:{self._target[1]}",
            state=self.state,
            connections_accepted=self._connections_accepted,
            connections_active=len(self._connections),
            connections_refused=self._connections_refused,
            upstream_failures=self._upstream_failures,
            bytes_to_server=self._bytes_to_server,
            bytes_to_client=self._bytes_to_client,
        )

    # internals: everything below runs on the proxy's event loop unless said otherwise

    def _candidates(self) -> list[tuple[str, int]]:
        """Where to connect a new client, in order of preference (katas.infra.balancer has several)."""
        return [self._target]

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        """The thread: bind, report the port, serve until stop()."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                loop.create_server(
                    lambda: _Connection(self).client,
                    host=self._listen_host,
                    port=self._listen_port,
                    reuse_address=True,
                    backlog=1024,
                )
            )
        except BaseException as exc:
            loop.close()
            ready.set_exception(exc)
            return
        self._server = server
        self._evloop = loop
        with self._lock:
            self._loop = loop
        ready.set_result(server.sockets[0].getsockname()[1])
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            with self._lock:
                self._loop = None
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.reset()
        await asyncio.sleep(0)  # let the aborted transports close their sockets
        asyncio.get_running_loop().stop()

    def _set_fault(self, fault: Fault) -> None:
        """Any thread: record the fault, then wait until the loop has applied it to open connections."""
        with self._lock:
            self._fault = fault
            loop = self._loop
            if loop is None or self._stopping:
                return  # not running: new connections will simply see the fault
            if self._on_loop_thread():
                self._apply_fault()
                return
            done = asyncio.run_coroutine_threadsafe(self._apply_fault_async(), loop)
        done.result(timeout=CONTROL_TIMEOUT)

    def _on_loop_thread(self) -> bool:
        return self._thread is threading.current_thread()

    async def _apply_fault_async(self) -> None:
        self._apply_fault()
        await asyncio.sleep(0)  # let reset sockets actually close before the caller goes on

    def _apply_fault(self) -> None:
        # Reads the fault at apply time, so concurrent callers converge on the last one recorded.
        if self._fault.kind is FaultKind.CUT:
            for conn in list(self._connections):
                conn.reset()
            return
        for conn in list(self._connections):
            conn.up.fault_changed()
            conn.down.fault_changed()

    def _loop_time(self) -> float:
        assert self._evloop is not None
        return self._evloop.time()

    def _call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        assert self._evloop is not None
        return self._evloop.call_at(when, callback)

    def _create_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._evloop is not None
        return self._evloop.create_task(coro)
