"""ChaosProxy against a real redis-server: faults must look to a real client like a broken network."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from katas.infra.ports import free_port
from katas.infra.proxy import ChaosProxy

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"


def _client(port: int, socket_timeout: float = 5.0) -> redis.Redis:
    """A client that fails fast: no retries, so a fault shows up as the error it causes."""
    return redis.Redis(
        host=LOOPBACK,
        port=port,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
    )


def _start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
            "--dir", str(directory)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        try:
            if _client(port).ping():
                return process, port
        except redis.ConnectionError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("redis-server did not answer within 10 s")


def _stop_by_pid(process: subprocess.Popen[bytes]) -> None:
    process.terminate()  # SIGTERM to this PID only
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    process, port = _start_redis(tmp_path / "redis-a")
    try:
        yield port
    finally:
        _stop_by_pid(process)


@pytest.fixture
def second_redis_port(tmp_path: Path) -> Iterator[int]:
    process, port = _start_redis(tmp_path / "redis-b")
    try:
        yield port
    finally:
        _stop_by_pid(process)


@pytest.fixture
def proxy(redis_port: int) -> Iterator[ChaosProxy]:
    chaos = ChaosProxy("redis", (LOOPBACK, redis_port))
    chaos.start()
    try:
        yield chaos
    finally:
        chaos.stop()


def test_commands_pass_through_and_counters_move(proxy: ChaosProxy) -> None:
    client = _client(proxy.port)
    assert client.ping()
    client.set("greeting", b"x" * 100_000)  # larger than one 64 KiB read
    assert client.get("greeting") == b"x" * 100_000
    pipe = client.pipeline(transaction=False)
    for _ in range(2000):
        pipe.incr("counter")
    assert pipe.execute()[-1] == 2000
    client.close()

    stats = proxy.stats()
    assert proxy.state == "normal"
    assert stats.state == "normal"
    assert stats.address == proxy.address == f"{LOOPBACK}:{proxy.port}"
    assert stats.connections_accepted >= 1
    assert stats.bytes_to_server > 100_000
    assert stats.bytes_to_client > 100_000


def test_delay_slows_each_round_trip(proxy: ChaosProxy) -> None:
    client = _client(proxy.port)
    assert client.ping()  # connect (and handshake) before the fault
    proxy.delay(200)
    assert proxy.state == "delay 200ms"
    started = time.monotonic()
    assert client.ping()
    assert time.monotonic() - started >= 0.15
    proxy.restore()
    assert proxy.state == "normal"
    assert client.ping()
    client.close()


def test_delay_with_jitter_keeps_order(proxy: ChaosProxy) -> None:
    count = 200
    with socket.create_connection((LOOPBACK, proxy.port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proxy.delay(5, jitter_ms=5)
        for i in range(count):  # separate small writes, so chunks get different jitter
            sock.sendall(f"RPUSH ordered {i}\r\n".encode())
        replies = b""
        while replies.count(b"\r\n") < count:
            replies += sock.recv(65536)
    assert replies.split(b"\r\n")[:count] == [f":{i + 1}".encode() for i in range(count)]
    client = _client(proxy.port)
    assert [int(v) for v in client.lrange("ordered", 0, -1)] == list(range(count))
    client.close()


def test_cut_resets_connections_until_restore(proxy: ChaosProxy) -> None:
    client = _client(proxy.port)
    assert client.ping()
    proxy.cut()
    assert proxy.state == "cut"
    with pytest.raises(redis.ConnectionError):
        client.ping()  # the open connection was reset
    with pytest.raises(redis.ConnectionError):
        _client(proxy.port).ping()  # and new ones are accepted, then reset
    assert proxy.stats().connections_refused >= 1

    proxy.restore()
    fresh = _client(proxy.port)
    assert fresh.ping()
    assert client.ping()  # the pool reconnects once the path is back
    fresh.close()
    client.close()


def test_blackhole_times_out_and_restore_delivers(proxy: ChaosProxy) -> None:
    client = _client(proxy.port, socket_timeout=0.5)
    assert client.ping()
    proxy.blackhole()
    assert proxy.state == "blackhole"
    before = proxy.stats()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    after = proxy.stats()
    assert after.bytes_to_server == before.bytes_to_server  # nothing got through
    proxy.restore()
    assert client.ping()
    client.close()


def test_blackhole_holds_a_raw_connection_open(proxy: ChaosProxy) -> None:
    with socket.create_connection((LOOPBACK, proxy.port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        proxy.blackhole()
        sock.sendall(b"PING\r\n")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(64)
        proxy.restore()  # held bytes are delivered, as TCP retransmission would
        sock.settimeout(2)
        assert sock.recv(64) == b"+PONG\r\n"


def test_retarget_to_another_server(proxy: ChaosProxy, redis_port: int, second_redis_port: int) -> None:
    first = _client(proxy.port)
    assert first.config_get("port")["port"] == str(redis_port)
    proxy.retarget((LOOPBACK, second_redis_port))
    assert proxy.target == (LOOPBACK, second_redis_port)
    second = _client(proxy.port)
    assert second.config_get("port")["port"] == str(second_redis_port)
    assert first.config_get("port")["port"] == str(redis_port)  # open connections stay put
    first.close()
    second.close()


def test_unreachable_target_resets_the_client() -> None:
    with ChaosProxy("nowhere", (LOOPBACK, free_port())) as chaos:
        with pytest.raises(redis.ConnectionError):
            _client(chaos.port).ping()
        assert chaos.stats().upstream_failures >= 1


def test_faults_from_many_threads_while_traffic_flows(proxy: ChaosProxy) -> None:
    client = _client(proxy.port)
    stop = threading.Event()
    errors: list[BaseException] = []

    def flip() -> None:
        try:
            while not stop.is_set():
                proxy.delay(1, jitter_ms=1)
                proxy.restore()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    flippers = [threading.Thread(target=flip) for _ in range(3)]
    for thread in flippers:
        thread.start()
    try:
        for i in range(300):
            assert client.incr("flips") == i + 1
    finally:
        stop.set()
        for thread in flippers:
            thread.join(timeout=5)
    assert not errors
    client.close()


def test_stop_leaves_no_thread_behind(redis_port: int) -> None:
    chaos = ChaosProxy("short-lived", (LOOPBACK, redis_port))
    chaos.start()
    name = f"chaos-proxy-{chaos.name}"
    assert any(t.name == name for t in threading.enumerate())
    client = _client(chaos.port)
    assert client.ping()  # with an open connection
    chaos.stop()
    chaos.stop()  # idempotent
    assert not any(t.name == name and t.is_alive() for t in threading.enumerate())
    with pytest.raises(redis.ConnectionError):
        client.ping()
    with pytest.raises(ConnectionRefusedError), socket.create_connection((LOOPBACK, chaos.port), timeout=1):
        pass
    with pytest.raises(RuntimeError):
        chaos.start()
