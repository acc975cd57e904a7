"""Which HTTP server and client the gateway nodes run on, chosen by measured overhead:

    python -m katas.api_gateway.http_bench [--requests 4000] [--concurrency 16] [--output FILE]

One backend (aiohttp, a small JSON answer) and, in turn, a forwarding proxy built on each
candidate stack, each in a process of its own on loopback. The same closed-loop client sends the same
requests straight to the backend and through the proxy, alternating, so both paths see the same machine;
the overhead is the proxy path's latency minus the direct path's, at P50 and P99, and the proxy's
throughput is what the client reached through it. Candidates:

- `starlette+httpx`: Starlette on uvicorn (asyncio loop), httpx.AsyncClient with a pool (the lab's
  services and clients use these);
- `aiohttp+aiohttp`: aiohttp's server and ClientSession.

(uvloop was measured too, on 2026-11-29: it changed neither overhead nor throughput of this bare proxy
consistently. Every service runs on it all the same, for the CPU it saves elsewhere; see docs/decisions.md.)

The proxy does what every gateway does and nothing more (read the request, forward it with its headers
and body, relay the status, headers and body), so the figures are the stack's, not the gateway's logic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from katas.api_gateway.node import HOP_BY_HOP
from katas.infra.ports import LOOPBACK, free_port, is_listening

CANDIDATES = ("starlette+httpx", "aiohttp+aiohttp")
ANSWER = json.dumps({"id": "42", "name": "widget", "price_cents": 1999, "tags": ["a", "b", "c"]}).encode()


# ------------------------------------------------------------------------------------- the processes
def run_backend(port: int) -> None:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


def run_aiohttp_proxy(port: int, upstream: str) -> None:
    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            upstream, connector=aiohttp.TCPConnector(limit=100, limit_per_host=100)
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with request.app["session"].request(
            request.method, request.rel_url, headers=headers, data=body
        ) as upstream_answer:
            content = await upstream_answer.read()
            relayed = {k: v for k, v in upstream_answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream_answer.status, body=content, headers=relayed)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


def run_starlette_proxy(port: int, upstream: str) -> None:
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, limits=httpx.Limits(max_connections=100))

    async def forward(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        answer = await client.request(
            request.method, request.url.path, params=request.query_params, headers=headers,
            content=await request.body(),
        )  # fmt: skip
        relayed = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(answer.content, answer.status_code, relayed)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    app = Starlette(routes=[Route("/{tail:path}", forward, methods=methods)])
    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", access_log=False, loop="asyncio")


# -------------------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class StackResult:
    candidate: str
    direct_p50_ms: float
    direct_p99_ms: float
    proxied_p50_ms: float
    proxied_p99_ms: float
    proxied_requests_per_s: float
    errors: int

    @property
    def overhead_p50_ms(self) -> float:
        return self.proxied_p50_ms - self.direct_p50_ms

    @property
    def overhead_p99_ms(self) -> float:
        return self.proxied_p99_ms - self.direct_p99_ms


def _percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _drive(url: str, requests: int, concurrency: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    remaining = requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    async with session.post(f"{url}/orders/echo?x=1", data=b'{"n": 1}') as answer:
                        await answer.read()
                        if answer.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - began, errors


async def _measure(candidate: str, backend: str, proxy: str, requests: int, concurrency: int) -> StackResult:
    await _drive(proxy, 200, concurrency)  # warm both paths' pools
    await _drive(backend, 200, concurrency)
    direct: list[float] = []
    proxied: list[float] = []
    proxied_time = 0.0
    errors = 0
    for _ in range(4):  # alternate, so both paths see the same machine
        d, _, e1 = await _drive(backend, requests // 4, concurrency)
        p, seconds, e2 = await _drive(proxy, requests // 4, concurrency)
        direct += d
        proxied += p
        proxied_time += seconds
        errors += e1 + e2
    ms = 1000.0
    return StackResult(
        candidate,
        _percentile(direct, 50) * ms,
        _percentile(direct, 99) * ms,
        _percentile(proxied, 50) * ms,
        _percentile(proxied, 99) * ms,
        len(proxied) / proxied_time if proxied_time else 0.0,
        errors,
    )


def _spawn(role: str, port: int, upstream: str = "") -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "katas.api_gateway.http_bench", "--serve", role, str(port), upstream],
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not is_listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {role} process did not start listening on {port}")
        time.sleep(0.05)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def compare(requests: int = 4000, concurrency: int = 16) -> list[StackResult]:
    backend_port = free_port()
    backend = _spawn("backend", backend_port)
    results = []
    try:
        for candidate in CANDIDATES:
            port = free_port()
            proxy = _spawn(candidate, port, f"http://{LOOPBACK}:{backend_port}")
            direct, proxied = f"http://{LOOPBACK}:{backend_port}", f"http://{LOOPBACK}:{port}"
            try:
                results.append(asyncio.run(_measure(candidate, direct, proxied, requests, concurrency)))
            finally:
                _stop(proxy)
    finally:
        _stop(backend)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m katas.api_gateway.http_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here too")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve:
        role, port, *rest = options.serve
        upstream = rest[0] if rest else ""
        if role == "backend":
            run_backend(int(port))
        elif role == "starlette+httpx":
            run_starlette_proxy(int(port), upstream)
        else:
            run_aiohttp_proxy(int(port), upstream)
        return 0
    results = compare(options.requests, options.concurrency)
    print(f"{'stack':26} {'overhead P50':>13} {'overhead P99':>13} {'proxied req/s':>14} {'errors':>7}")
    for r in results:
        print(
            f"{r.candidate:26} {r.overhead_p50_ms:10.2f} ms {r.overhead_p99_ms:10.2f} ms "
            f"{r.proxied_requests_per_s:14,.0f} {r.errors:7}"
        )
    if options.output:
        rows = [
            asdict(r) | {"overhead_p50_ms": r.overhead_p50_ms, "overhead_p99_ms": r.overhead_p99_ms}
            for r in results
        ]
        options.output.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
