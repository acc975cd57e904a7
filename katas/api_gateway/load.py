"""`katas load api_gateway`: drive the running gateway through its one entry address, open loop.

Traffic comes from a handful of load clients (created through the admin API at start, with limits high
enough that the run measures the gateway, not the clients' allowances) and cycles over a mix of routes on
every backend: JSON items with internal fields to strip, echo, a POST, the legacy XML backend. The
`payments` route is left out on purpose: its per-client route limit (20/s) would turn load into 429s.

`GatewayTraffic` is also what the check and the chaos tests drive: it keeps every answer's status and
the node that served it, and optionally a timeline of each request (start, end, outcome), so a test can
tell which failures were in flight when a node was killed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadgen import PROFILE_FORMS, LoadProfile, LoadResult, run_load
from loadgen import stack as stack_endpoints
from loadgen.stack import EXIT_NOT_RUNNING

KATA = "api_gateway"
REQUIRED_ENDPOINTS = ("gateway", "admin", "admin_token")
DEFAULT_PROFILE = "constant:300:30"
LOAD_CLIENTS = 8
LOAD_CLIENT_LIMIT = {"tier": "enterprise", "limit_per_second": 5_000, "burst": 5_000}
DEFAULT_CONNECTIONS = 64
"""Keep-alive connections to the entry; the balancer spreads connections, so each node gets about a third."""

REQUEST_MIX: tuple[tuple[str, str], ...] = (
    ("GET", "/orders/items/1"),
    ("GET", "/catalog/items"),
    ("GET", "/users/items/2"),
    ("POST", "/orders/echo"),
    ("GET", "/invoices/items/3"),
    ("GET", "/catalog/echo"),
    ("GET", "/users/echo"),
    ("GET", "/orders/items"),
)


class HttpStatusError(RuntimeError):
    """The gateway answered, but not 2xx; the traffic's `statuses` tell which."""


@dataclass(frozen=True, slots=True)
class Sent:
    """One request as the client saw it: monotonic start and end, status (0: no answer) and error."""

    started: float
    finished: float
    status: int
    error: str = ""


@dataclass
class GatewayTraffic:
    """The operation the load engine drives: request i of the mix, as load client i mod n."""

    base_url: str
    keys: Sequence[str]
    connections: int = DEFAULT_CONNECTIONS
    backends: Mapping[str, str] | None = None
    """Backend name -> its own base URL: send each request straight to its backend instead of to
    `base_url` (the direct path the check compares the gateway with)."""
    timeout_s: float = 10.0
    keep_timeline: bool = False
    mix: Sequence[tuple[str, str]] = REQUEST_MIX
    statuses: Counter[int] = field(default_factory=Counter)
    nodes: Counter[str] = field(default_factory=Counter)
    timeline: list[Sent] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GatewayTraffic:
        connector = aiohttp.TCPConnector(limit=self.connections)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(self.timeout_s)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def request_for(self, i: int) -> tuple[str, str, str]:
        """(method, path, api key) of operation i: the mix cycles, and each lap uses the next client."""
        method, path = self.mix[i % len(self.mix)]
        return method, path, self.keys[(i // len(self.mix)) % len(self.keys)]

    def url_for(self, path: str) -> str:
        if self.backends is None:
            return self.base_url + path
        return self.backends[path.split("/", 2)[1]] + path

    async def __call__(self, i: int) -> None:
        assert self._session is not None, "use `async with GatewayTraffic(...)`"
        method, path, key = self.request_for(i)
        body = b'{"n": %d}' % i if method == "POST" else None
        started = time.monotonic()
        try:
            async with self._session.request(
                method, self.url_for(path), data=body, headers={"X-API-Key": key}
            ) as answer:
                await answer.read()
                status = answer.status
                self.nodes[answer.headers.get("X-Gateway-Node", "?")] += 1
        except Exception as exc:
            self.statuses[0] += 1
            if self.keep_timeline:
                self.timeline.append(Sent(started, time.monotonic(), 0, type(exc).__name__))
            raise
        self.statuses[status] += 1
        if self.keep_timeline:
            self.timeline.append(Sent(started, time.monotonic(), status))
        if not 200 <= status < 300:
            raise HttpStatusError(f"{method} {path}: {status}")


async def create_load_clients(
    endpoints: Mapping[str, Any], count: int = LOAD_CLIENTS, prefix: str = "load"
) -> list[str]:
    """A fresh API key for each of `count` load clients (created on first use), through the admin API."""
    admin = {"Authorization": f"Bearer {endpoints['admin_token']}"}
    keys = []
    async with aiohttp.ClientSession(headers=admin) as http:
        for n in range(count):
            async with http.post(
                f"{endpoints['admin']}/clients/{prefix}-{n:02d}/keys", json=LOAD_CLIENT_LIMIT
            ) as a:
                if a.status != 201:
                    raise RuntimeError(f"the admin API refused a load client ({a.status}): {await a.text()}")
                keys.append(str((await a.json())["api_key"]))
        # The load clients' limits, if they existed before, may be lower: set them each run.
        for n in range(count):
            limits = {k: v for k, v in LOAD_CLIENT_LIMIT.items() if k != "tier"}
            async with http.put(f"{endpoints['admin']}/clients/{prefix}-{n:02d}/limits", json=limits) as a:
                a.raise_for_status()
    return keys


async def until_accepted(base_url: str, keys: Sequence[str], within_s: float = 10.0) -> None:
    """Wait until the gateway knows the new keys (the configuration reaches the nodes in well under 1 s)."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as http:
        for key in keys:
            while True:
                async with http.get(f"{base_url}/orders/echo", headers={"X-API-Key": key}) as answer:
                    if answer.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not accept the load clients' keys in time")
                await asyncio.sleep(0.1)


@dataclass
class LoadRun:
    result: LoadResult
    traffic: GatewayTraffic


async def drive(
    endpoints: Mapping[str, Any],
    profile: LoadProfile,
    *,
    connections: int = DEFAULT_CONNECTIONS,
    progress: bool = True,
    label: str = "gateway",
) -> LoadRun:
    keys = await create_load_clients(endpoints)
    await until_accepted(endpoints["gateway"], keys)
    async with GatewayTraffic(endpoints["gateway"], keys, connections=connections) as traffic:
        result = await run_load(
            profile, traffic, max_in_flight=connections * 4, progress=progress, label=label
        )
    return LoadRun(result, traffic)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"katas load {KATA}",
        description="Drive the running API gateway through its entry address (open loop).",
    )
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"requests per second: {PROFILE_FORMS}")
    p.add_argument(
        "--connections",
        type=_positive_int,
        default=DEFAULT_CONNECTIONS,
        help="keep-alive connections to the entry",
    )
    stack_endpoints.add_run_options(p, KATA)
    return p


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    try:
        profile, endpoints = stack_endpoints.open_run(
            KATA, options.profile, options.endpoints, REQUIRED_ENDPOINTS, local=("gateway", "admin")
        )
    except stack_endpoints.LoadSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"api_gateway load: {profile.describe()} through {endpoints['gateway']}, {LOAD_CLIENTS} load clients"
    )
    try:
        run = asyncio.run(
            drive(endpoints, profile, connections=options.connections, progress=not options.no_progress)
        )
    except (OSError, aiohttp.ClientError) as exc:
        print(
            f"error: cannot reach the gateway ({exc}); is the stack still up? `katas status {KATA}`",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    print(run.result.summary_line())
    statuses = ", ".join(f"{s or 'no answer'}: {n:,}" for s, n in sorted(run.traffic.statuses.items()))
    nodes = ", ".join(f"{n} {c:,}" for n, c in sorted(run.traffic.nodes.items()))
    print(f"answers by status: {statuses}; served by node: {nodes}")
    output = options.output or stack_endpoints.default_output(KATA)
    run.result.write_json(output)
    print(f"load result written to {output}")
    return 0 if run.result.ok and not run.result.error_count and not run.result.timed_out else 1
