"""What the gateway's integration tests share: aiohttp apps served on loopback for one test, the backend
services started as the stack starts them, and the configuration store with watchers that keep a node's
configuration current."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from katas.api_gateway.adapters.pg_config import ConfigWatcher, PostgresConfigStore
from katas.api_gateway.config import ConfigHolder, GatewayConfig
from katas.catalog import get_card
from katas.infra.ports import LOOPBACK, free_port
from katas.infra.servers import PostgresServer, ServiceProcess
from katas.infra.stack import Stack
from tests.conftest import reachable_run_dir

BACKEND_MODULE = "katas.api_gateway.services.backend"


class Serve(Protocol):
    def __call__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> Awaitable[str]: ...


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`url = await serve(app)`: the app on a free loopback port until the test ends."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, LOOPBACK, port, ssl_context=ssl_context).start()
        return f"{'https' if ssl_context else 'http'}://{LOOPBACK}:{port}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


def start_backend(launch: Callable[[Any], Any], run_dir: Path, name: str) -> ServiceProcess:
    """A backend service process (katas.api_gateway.services.backend), stopped after the test."""
    service: ServiceProcess = launch(ServiceProcess(name, run_dir, module=BACKEND_MODULE, args=[name]))
    return service


@pytest.fixture
def config_server(launch: Callable[[Any], Any], run_dir: Path) -> PostgresServer:
    server: PostgresServer = launch(PostgresServer("config", run_dir))
    return server


@pytest.fixture
async def config_store(config_server: PostgresServer) -> AsyncIterator[PostgresConfigStore]:
    store = await PostgresConfigStore(config_server.dsn).open()
    yield store
    await store.close()


Follow = Callable[[], Awaitable[ConfigHolder]]


@pytest.fixture
async def follow(config_store: PostgresConfigStore) -> AsyncIterator[Follow]:
    """`held = await follow()`: a configuration kept current from the store, as a node's, until the test
    ends."""
    stop = asyncio.Event()
    watchers: list[asyncio.Task[None]] = []

    async def start() -> ConfigHolder:
        held = ConfigHolder(GatewayConfig.of([], version=-1))
        watcher = ConfigWatcher(config_store, held.apply, poll_s=1.0)
        await watcher.reload()
        watchers.append(asyncio.create_task(watcher.run(stop)))
        return held

    yield start
    stop.set()
    await asyncio.gather(*watchers)


@contextlib.contextmanager
def gateway_stack(*mistakes: str) -> Iterator[Stack]:
    """The kata's whole stack, as `katas up api_gateway [--mistake ...]` starts it, in a run directory
    PostgreSQL can enter (KATAS_KEEP_RUN_DIRS=1 keeps it, with every server's log)."""
    with (
        reachable_run_dir("katas-gateway-") as run,
        Stack.for_card(get_card("api_gateway"), mistakes, run_dir=run / "api_gateway") as stack,
    ):
        yield stack


@pytest.fixture(scope="package")
def normal_stack() -> Iterator[Stack]:
    """One stack without mistakes for the package's tests that only read or add (clients, keys)."""
    with gateway_stack() as running:
        yield running


async def admin_call(endpoints: dict[str, Any], method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One admin API call with the stack's admin token: (status, JSON body or None)."""
    headers = {"Authorization": f"Bearer {endpoints['admin_token']}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.request(method, f"{endpoints['admin']}{path}", json=body) as answer,
    ):
        payload = await answer.json() if answer.content_type == "application/json" else None
        return answer.status, payload


async def new_client(endpoints: dict[str, Any], name: str, rate: float, burst: int, tier: str = "pro") -> str:
    """A client with a fresh key, once every node accepts the key."""
    status, body = await admin_call(
        endpoints, "POST", f"/clients/{name}/keys", {"tier": tier, "limit_per_second": rate, "burst": burst}
    )
    assert status == 201, body
    api_key = str(body["api_key"])
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession(headers={"X-API-Key": api_key}) as http:
        for node in endpoints["nodes"]:
            while True:
                async with http.get(f"{node}/orders/echo") as answer:
                    if answer.status != 401:
                        break
                assert time.monotonic() < deadline, f"{node} did not learn the new key of {name}"
                await asyncio.sleep(0.05)
    return api_key


def node_metric(endpoints: dict[str, Any], name: str) -> float:
    """The sum over the three nodes of one metric sample (e.g. gateway_limiter_fail_open_total)."""
    total = 0.0
    for node in endpoints["nodes"]:
        text = urllib.request.urlopen(f"{node}/metrics", timeout=5).read().decode()
        for family in text_string_to_metric_families(text):
            total += sum(sample.value for sample in family.samples if sample.name == name)
    return total
