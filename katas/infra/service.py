"""The runtime every kata service shares: an HTTP app with /healthz and /metrics, background workers,
JSON-line logs, and a graceful stop on SIGTERM.

A service module's `main()` builds its FastAPI app (or none) and its workers, and calls `run_service`.
A service whose request path is the point of its kata (the API gateway's nodes) may build an aiohttp
application instead; it gets the same two routes from `aiohttp_reserved_routes()` and the same stop.
Workers receive a `stop` event; on SIGTERM they finish what they hold (commit offsets, flush a batch) and
return. If a worker crashes, the service logs it and exits non-zero, so the stack shows it down instead of
serving half a pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from aiohttp import web
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from katas.infra.ports import LOOPBACK
from katas.infra.settings import infra_settings

Worker = Callable[[asyncio.Event], Awaitable[None]]


def service_name() -> str:
    return os.environ.get("KATAS_SERVICE_NAME", Path(sys.argv[0]).stem)


def log(event: str, **fields: Any) -> None:
    """One JSON line on stdout (the launcher keeps it in the service's server.log)."""
    record = {"ts": round(time.time(), 3), "service": service_name(), "event": event, **fields}
    print(json.dumps(record, default=str), flush=True)


def mistakes() -> frozenset[str]:
    """The common-mistake switches this stack was started with (`katas up <kata> --mistake NAME`)."""
    return frozenset(m for m in os.environ.get("KATAS_MISTAKES", "").split(",") if m)


def own_url() -> str:
    """The base URL clients on this machine reach this service at."""
    return f"http://{LOOPBACK}:{os.environ['KATAS_SERVICE_PORT']}"


def publish_endpoints(**values: Any) -> None:
    """Add entries to the kata's endpoints.json (the stack merges this file from the service's folder)."""
    path = Path.cwd() / "endpoints.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(values)
    path.write_text(json.dumps(current, indent=2))


def http_app(title: str) -> FastAPI:
    """A FastAPI app with the two routes every service has."""
    app = FastAPI(title=title)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


EXTRA_SITES = web.AppKey("extra_sites", list[tuple[int, ssl.SSLContext]])
"""More listening ports for an aiohttp application, each with its TLS context (a gateway node's mTLS port)."""


def aiohttp_reserved_routes() -> list[web.RouteDef]:
    """/healthz and /metrics for an aiohttp application; register them before any catch-all route."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/metrics", metrics)]


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM must stop the HTTP side and the workers together,
    and uvicorn would re-raise the signal after its own shutdown, killing workers mid-flush."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: FastAPI | web.Application | None, workers: Sequence[Worker] = ()) -> None:
    """Run the app on KATAS_SERVICE_PORT and the workers until SIGTERM, then stop both gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    server: uvicorn.Server | None = None
    runner: web.AppRunner | None = None
    tasks: list[asyncio.Task[None]] = []
    if isinstance(app, web.Application):
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(
            runner, infra_settings().service_bind_host, int(os.environ["KATAS_SERVICE_PORT"]), backlog=1024
        )
        await site.start()
        for port, context in app.get(EXTRA_SITES, []):
            await web.TCPSite(runner, infra_settings().service_bind_host, port, ssl_context=context).start()
    elif app is not None:
        config = uvicorn.Config(
            app,
            host=infra_settings().service_bind_host,
            port=int(os.environ["KATAS_SERVICE_PORT"]),
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        server = _QuietServer(config)
        tasks.append(asyncio.create_task(server.serve(), name="http"))
    tasks += [
        asyncio.create_task(_guarded(worker, stop), name=getattr(worker, "__name__", "worker"))
        for worker in workers
    ]
    log("started", workers=[t.get_name() for t in tasks])

    await stop.wait()
    log("stopping")
    if server is not None:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    if runner is not None:  # after the workers, which may use what the app's cleanup closes
        await runner.cleanup()  # stops accepting, lets requests in flight finish (up to shutdown_timeout)
    log("stopped")


async def until_done(
    attempt: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    *,
    event: str,
    max_backoff_s: float = 5.0,
    retries: Counter | None = None,
) -> bool:
    """Run `attempt` until it succeeds (True) or the service is stopping (False), backing off between and
    logging `event` (and counting in `retries`) at each failure: how a service rides out an outage of a
    server it writes to, instead of exiting."""
    backoff = 0.2
    while True:
        try:
            await attempt()
            return True
        except Exception as exc:
            if retries is not None:
                retries.inc()
            log(event, error=repr(exc), retry_in_s=backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            if stop.is_set():
                return False
            backoff = min(backoff * 2, max_backoff_s)


async def _guarded(worker: Worker, stop: asyncio.Event) -> None:
    try:
        await worker(stop)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log("worker_crashed", worker=getattr(worker, "__name__", "worker"), error=repr(exc))
        os._exit(1)  # a half-running pipeline must show as down, not look healthy


def run_service(
    build: Callable[[], Awaitable[tuple[FastAPI | web.Application | None, Sequence[Worker]]]],
) -> None:
    """Entry point of a service module: `run_service(build)` where build returns (app, workers)."""

    async def main() -> None:
        app, workers = await build()
        await serve(app, workers)

    # uvloop: measured on the SIEM's pipeline at 1,000 events/s, its five services spent 14 % less CPU per
    # event than on asyncio's own loop (docs/decisions.md), and the lab's ceiling is CPU.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
