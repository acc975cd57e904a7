"""What the gateway's integration tests share: aiohttp apps served on loopback for one test, the backend
services started as the stack starts them, and the configuration store with watchers that keep a node's
configuration current."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web

from katas.api_gateway.adapters.pg_config import ConfigWatcher, PostgresConfigStore
from katas.api_gateway.config import ConfigHolder, GatewayConfig
from katas.catalog import get_card
from katas.infra.ports import LOOPBACK, free_port
from katas.infra.servers import PostgresServer, ServiceProcess
from katas.infra.stack import Stack

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
    run = Path(tempfile.mkdtemp(prefix="katas-gateway-"))
    run.chmod(0o755)
    try:
        with Stack.for_card(get_card("api_gateway"), mistakes, run_dir=run / "api_gateway") as stack:
            yield stack
    finally:
        if not os.environ.get("KATAS_KEEP_RUN_DIRS"):
            shutil.rmtree(run, ignore_errors=True)
