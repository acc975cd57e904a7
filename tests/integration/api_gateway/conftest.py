"""What the gateway's integration tests share: aiohttp apps served on loopback for one test, and the
backend services started as the stack starts them."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web

from katas.infra.ports import LOOPBACK, free_port
from katas.infra.servers import ServiceProcess

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
