"""A kata's stack: its servers and services, started in order, wired together, and described on disk.

The card's `[stack]` section names the servers (by kind, with options that refer to other servers by name)
and the services. `Stack.start()` starts servers in the order listed, puts a chaos proxy in front of those
marked `proxied`, hands every service the KATAS_* variables of all servers (see katas.infra.settings), and
writes two files in `.katas/<kata>/`:

* `endpoints.json`: name -> URL or host:port of every endpoint a user or a test needs, plus whatever the
  services add by writing an `endpoints.json` of their own in their folder (tokens, file paths …);
* `state.json`: the supervising process, its control address and every component's PID, so that
  `katas down` can stop what a crashed supervisor left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from katas import REPO_ROOT
from katas.catalog import KataCard, ServerSpec, StackSpec
from katas.infra.ports import LOOPBACK, free_port
from katas.infra.proxy import ChaosProxy
from katas.infra.servers import (
    ChdbStore,
    MosquittoBroker,
    PostgresServer,
    RedisSentinel,
    RedisServer,
    S3rverServer,
    Server,
    ServiceProcess,
    TansuBroker,
)

RUN_ROOT = REPO_ROOT / ".katas"


def run_dir_for(kata: str) -> Path:
    return Path(os.environ.get("KATAS_RUN_ROOT", RUN_ROOT)) / kata


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    kata: str
    spec: StackSpec
    run_dir: Path
    mistakes: tuple[str, ...] = ()
    components: dict[str, Server] = field(default_factory=dict)
    proxies: dict[str, ChaosProxy] = field(default_factory=dict)
    control_address: str | None = None
    """host:port of the supervisor's control API (katas.infra.control), once it runs."""

    @classmethod
    def for_card(cls, card: KataCard, mistakes: tuple[str, ...] = (), run_dir: Path | None = None) -> Stack:
        known = {m.switch for m in card.mistake if m.switch}
        unknown = sorted(set(mistakes) - known)
        if unknown:
            listed = ", ".join(sorted(known))
            raise StackError(f"unknown mistake switch {', '.join(unknown)} for {card.id} (known: {listed})")
        return cls(card.id, card.stack, run_dir or run_dir_for(card.id), mistakes)

    # -- building ----------------------------------------------------------------------------------------
    def _server(self, spec: ServerSpec) -> Server:
        opts = spec.options

        def ref(key: str) -> Server:
            name = str(opts.get(key, ""))
            if name not in self.components:
                raise StackError(f"{spec.name}: option {key}={name!r} must name a server listed before it")
            return self.components[name]

        home = self.run_dir
        match spec.kind:
            case "redis":
                return RedisServer(spec.name, home)
            case "redis_replica":
                return RedisServer(spec.name, home, replica_of=_as(ref("of"), RedisServer))
            case "redis_sentinel":
                return RedisSentinel(spec.name, home, primary=_as(ref("primary"), RedisServer))
            case "mosquitto":
                peers = [p for p in str(opts.get("bridge_to", "")).split(",") if p]
                bridges = [_as(self._named(p, spec.name), MosquittoBroker) for p in peers]
                return MosquittoBroker(spec.name, home, bridges=bridges)
            case "postgres":
                return PostgresServer(spec.name, home)
            case "postgres_standby":
                return PostgresServer(spec.name, home, standby_of=_as(ref("of"), PostgresServer))
            case "s3rver":
                buckets = [b for b in str(opts.get("buckets", "")).split(",") if b]
                return S3rverServer(spec.name, home, buckets=buckets)
            case "tansu":
                store = _as(ref("object_store"), S3rverServer)
                return TansuBroker(
                    spec.name, home, object_store=store, bucket=str(opts.get("bucket", "tansu"))
                )
            case "chdb":
                return ChdbStore(spec.name, home)
        raise StackError(f"{spec.name}: unknown server kind {spec.kind!r}")

    def _named(self, name: str, wanted_by: str) -> Server:
        if name not in self.components:
            raise StackError(f"{wanted_by}: {name!r} must be a server listed before it")
        return self.components[name]

    def client_env(self) -> dict[str, str]:
        """KATAS_* variables for services; when several servers set one, their values are comma-joined."""
        merged: dict[str, list[str]] = {}
        for component in self.components.values():
            for key, value in component.client_env().items():
                merged.setdefault(key, []).append(value)
        env = {key: ",".join(values) for key, values in merged.items()}
        sentinels = [c.client_address for c in self.components.values() if isinstance(c, RedisSentinel)]
        if sentinels:
            env["KATAS_REDIS_SENTINELS"] = ",".join(sentinels)
        env["KATAS_KATA_RUN_DIR"] = str(self.run_dir)
        env["KATAS_MISTAKES"] = ",".join(self.mistakes)
        # `{name}` in a card's env stands for that component's endpoint, e.g. "{webhook}/hooks/siem";
        # services see the endpoints of what was started before them.
        started = _Endpoints({name: c.endpoint for name, c in self.components.items() if c.endpoint})
        extra = {}
        for key, value in self.spec.env.items():
            with contextlib.suppress(_NotStartedYetError):
                extra[key] = value.format_map(started)
        return {**env, **extra, **self.secrets()}

    def secrets(self) -> dict[str, str]:
        """The stack's secrets: made once per run directory, kept in a file only its owner can read, and
        never in a server's data folder (a pseudonym key must not sit next to the data it protects)."""
        if not self.spec.secrets:
            return {}
        path = self.run_dir / "secrets.json"
        known: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
        missing = [name for name in self.spec.secrets if name not in known]
        if missing:
            known.update({name: secrets.token_urlsafe(32) for name in missing})
            path.touch(mode=0o600)
            path.write_text(json.dumps(known, indent=2))
        return {name: known[name] for name in self.spec.secrets}

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> Stack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)  # PostgreSQL runs as its own user and must reach its folder
        try:
            for server_spec in self.spec.servers:
                if server_spec.with_mistake and server_spec.with_mistake not in self.mistakes:
                    continue
                server = self._server(server_spec)
                self._launch(server, proxied=server_spec.proxied)
            for service_spec in self.spec.services:
                env = self.client_env()
                service = ServiceProcess(
                    service_spec.name,
                    self.run_dir,
                    module=service_spec.module,
                    args=service_spec.args,
                    env=env,
                )
                self._launch(service, proxied=False)
            names = {
                name
                for value in self.spec.env.values()
                for _, name, _, _ in string.Formatter().parse(value)
                if name
            }
            if unknown := names - set(self.components):
                raise StackError(
                    f"the stack's env refers to {', '.join(sorted(unknown))}, which it does not start"
                )
        except BaseException:
            self.stop()
            raise
        self.write_files()
        return self

    def _launch(self, server: Server, *, proxied: bool) -> None:
        if server.name in self.components:
            raise StackError(f"two components are named {server.name!r}")
        self.components[server.name] = server
        if proxied:
            server.port = free_port()
            proxy = ChaosProxy(server.name, (LOOPBACK, server.port))
            proxy.start()
            self.proxies[server.name] = proxy
            server.public_port = proxy.port
        server.start()

    def stop(self) -> None:
        for server in reversed(list(self.components.values())):
            server.stop()
        for proxy in self.proxies.values():
            proxy.stop()
        for stale in ("state.json", "endpoints.json"):  # nothing may read endpoints of a stopped stack
            (self.run_dir / stale).unlink(missing_ok=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, name: str) -> Server:
        try:
            return self.components[name]
        except KeyError:
            raise StackError(
                f"no component {name!r} in {self.kata} (have: {', '.join(self.components)})"
            ) from None

    def __iter__(self) -> Iterator[Server]:
        return iter(self.components.values())

    # -- description -------------------------------------------------------------------------------------
    def endpoints(self) -> dict[str, Any]:
        endpoints: dict[str, Any] = {name: c.endpoint for name, c in self.components.items() if c.endpoint}
        stack_secrets = self.secrets()
        endpoints.update({entry: stack_secrets[variable] for entry, variable in self.spec.publish.items()})
        for component in self.components.values():
            extra = component.home / "endpoints.json"
            if extra.is_file():
                endpoints.update(json.loads(extra.read_text()))
        return endpoints

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for name, component in self.components.items():
            row = component.status()
            proxy = self.proxies.get(name)
            row["network"] = proxy.state if proxy else "direct"
            rows.append(row)
        return rows

    def write_files(self) -> None:
        _write_json(self.run_dir / "endpoints.json", self.endpoints())
        state = {
            "kata": self.kata,
            "supervisor_pid": os.getpid(),
            "control": self.control_address,
            "started_at": time.time(),
            "mistakes": list(self.mistakes),
            "components": [{"name": c.name, "kind": c.kind, "pid": c.pid} for c in self.components.values()],
        }
        _write_json(self.run_dir / "state.json", state)


class _NotStartedYetError(KeyError):
    pass


class _Endpoints(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise _NotStartedYetError(key)


_S = TypeVar("_S", bound=Server)


def _as(server: Server, kind: type[_S]) -> _S:
    if not isinstance(server, kind):
        raise StackError(f"{server.name} is a {server.kind} server, expected {kind.kind}")
    return server


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def read_state(kata: str) -> dict[str, Any] | None:
    path = run_dir_for(kata) / "state.json"
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def pid_alive(pid: int | None) -> bool:
    """Whether a process runs; a zombie (exited, not yet reaped by its parent) does not count."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def reap_leftovers(kata: str, grace_s: float = 10.0) -> list[str]:
    """Stop what a stack's state file lists: the supervisor first (it stops the rest), then stragglers."""
    state = read_state(kata)
    if state is None:
        return []
    stopped: list[str] = []
    supervisor = state.get("supervisor_pid")
    if isinstance(supervisor, int) and pid_alive(supervisor) and supervisor != os.getpid():
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 20
        while pid_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped.append(f"supervisor {supervisor}")
    for component in state.get("components", []):
        pid = component.get("pid")
        if pid_alive(pid):
            for sig in (signal.SIGCONT, signal.SIGTERM):
                _killpg(pid, sig)
            deadline = time.monotonic() + grace_s
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _killpg(pid, signal.SIGKILL)
            stopped.append(f"{component['name']} ({pid})")
    (run_dir_for(kata) / "state.json").unlink(missing_ok=True)
    return stopped


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
