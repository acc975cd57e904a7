"""`katas check api_gateway [--short]`: start a gateway stack of its own, measure the card's NFRs against
the gateway, the backends directly and nginx in the same run, and write the scorecard.

    katas check api_gateway --short   # about 2 minutes: CI's check, the card's rates over shorter runs
    katas check api_gateway           # the card's targets: 150 req/s for 60 s, 500 req/s for 10 s

The check's stack lives in `.katas/api_gateway-check/<time>/` (never a `katas up` stack's folder) and is
stopped at the end, also on error, Ctrl-C or SIGTERM. Beside it the check starts nginx (Debian's, through
`katas.infra.servers.NginxServer`) as a plain reverse proxy with `limit_req` per API key in front of the
same five backends: the baseline a gateway is compared with.

What is measured, and how (every load is open loop: latency counts from the intended send time):

* `throughput_rps`: the sustained profile through the entry address; requests answered 2xx per second of
  the run. At the same time the same request mix goes straight to the backends and through nginx, each at
  `COMPARE_SHARE` of the rate, so all three paths meet the same backends under the same load.
* `added_latency_p99_ms`: P99 through the gateway minus P99 of the direct path, from that run. Extras:
  nginx's own added P99 and `gateway_to_nginx_overhead_ratio` (the gateway's added P99 over nginx's).
* `burst_rps`: a base-peak-base profile; 2xx answers completed during the peak's seconds, per second.
* `rate_limit_error_pct`: a client at 100/s (burst 50) driven far beyond that for 5 s over new connections,
  so all three nodes serve it: |allowed - (burst + rate x time)| / that, in %.
* `config_propagation_s`: that client's limit changed through the admin API; seconds until every node
  answers with the new `RateLimit-Limit`.
* `key_revocation_s`: a key revoked through the admin API; seconds until every node refuses it.
* `node_kill_failed_requests` (availability): steady load, a node killed with SIGKILL mid-run; requests that
  failed although they were not in flight at the kill (started after it, or finished before it). Extra:
  those that were in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
from rich.console import Console
from rich.markup import escape

from katas.api_gateway.load import GatewayTraffic, Sent, create_load_clients, until_accepted
from katas.api_gateway.services.backend import BACKENDS
from katas.catalog import KataCard, get_card
from katas.checking import (
    card_target,
    new_run_dir,
    not_measured,
    print_report,
    sigterm_as_interrupt,
)
from katas.infra.servers import NginxServer
from katas.infra.stack import Stack
from katas.scorecard import REPORTS_ROOT, Measurement, Scorecard
from loadgen import Burst, ConstantRate, LoadResult, run_load

KATA = "api_gateway"
CHECK_RUN_NAME = "api_gateway-check"
HEADROOM = 1.1
"""The loads offer this much more than a throughput target, so a run that keeps up is not failed by the
last request's milliseconds past the profile."""
COMPARE_SHARE = 0.25
"""The direct and nginx paths run at this share of the gateway's rate, beside it: enough requests for a
P99 that is not just the run's slowest few."""
ACCURACY_LIMIT = {"limit_per_second": 100, "burst": 50}
PROPAGATED_LIMIT = {"limit_per_second": 10, "burst": 5}
WAIT_S = 60.0
"""How long a propagation or revocation is waited for before the row fails with that time."""


@dataclass(frozen=True)
class Plan:
    name: Literal["short", "full"]
    sustained_rps: float
    sustained_s: float
    burst_rps: float
    burst_base_rps: float
    burst_s: float
    burst_start_s: float
    burst_length_s: float
    connections: int = 64
    kill_rps: float = 100.0
    kill_s: float = 8.0
    kill_at_s: float = 3.0
    accuracy_s: float = 5.0

    def burst_profile(self) -> Burst:
        peak = round(self.burst_rps * HEADROOM)
        return Burst(self.burst_base_rps, peak, self.burst_s, self.burst_start_s, self.burst_length_s)


def plan_for(card: KataCard, *, short: bool) -> Plan:
    """The card's rates. The full check runs them for 60 s sustained and a 10 s burst; the short one (CI's)
    for 10 s and 5 s."""
    sustained = card_target(card, "throughput_rps")
    burst = card_target(card, "burst_rps")
    if short:
        return Plan("short", sustained, 10, burst, sustained, burst_s=9, burst_start_s=2, burst_length_s=5)
    return Plan(
        "full",
        sustained,
        60,
        burst,
        sustained,
        burst_s=30,
        burst_start_s=10,
        burst_length_s=10,
        connections=256,
    )


# ---------------------------------------------------------------------------------------------- phases
async def _admin(endpoints: Mapping[str, Any], method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {endpoints['admin_token']}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.request(method, f"{endpoints['admin']}{path}", json=body) as answer,
    ):
        return answer.status, (await answer.json() if answer.content_type == "application/json" else None)


async def _statuses_on_nodes(endpoints: Mapping[str, Any], api_key: str) -> list[tuple[int, str]]:
    seen = []
    async with aiohttp.ClientSession(headers={"X-API-Key": api_key}) as http:
        for node in endpoints["nodes"]:
            async with http.get(f"{node}/orders/echo") as answer:
                seen.append((answer.status, answer.headers.get("RateLimit-Limit", "")))
    return seen


async def _seconds_until(
    endpoints: Mapping[str, Any], api_key: str, *, status: int = 0, limit: str = ""
) -> float:
    """Seconds until every node answers with `status`, or with `limit` as RateLimit-Limit (on a 200 or a
    429 alike: the probes themselves may exceed a lowered limit); WAIT_S if they never do (a lower bound, so
    the row fails instead of vanishing)."""
    started = time.monotonic()
    while time.monotonic() - started < WAIT_S:
        seen = await _statuses_on_nodes(endpoints, api_key)
        if all((s == status) if status else (header == limit) for s, header in seen):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return WAIT_S


@dataclass
class CheckRun:
    plan: Plan
    endpoints: Mapping[str, Any]
    nginx: NginxServer
    stack: Stack
    console: Console
    progress: bool
    keys: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.measured: dict[str, Measurement] = {}
        self.results: list[LoadResult] = []

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    async def prepare(self) -> None:
        self.keys = await create_load_clients(self.endpoints)
        await until_accepted(self.endpoints["gateway"], self.keys)
        warm = ConstantRate(50, 3)
        for base, backends in ((self.endpoints["gateway"], None), (self.nginx.endpoint, None)):
            async with GatewayTraffic(base, self.keys, connections=16, backends=backends) as traffic:
                await run_load(warm, traffic, progress=False)

    def _traffic(self, path: Literal["gateway", "direct", "nginx"], connections: int) -> GatewayTraffic:
        backends = {name: str(self.endpoints[name]) for name in BACKENDS} if path == "direct" else None
        base = {"gateway": self.endpoints["gateway"], "nginx": self.nginx.endpoint, "direct": ""}[path]
        return GatewayTraffic(base, self.keys, connections=connections, backends=backends)

    async def _paths(
        self, rate: float, seconds: float
    ) -> tuple[GatewayTraffic, LoadResult, LoadResult, LoadResult]:
        """The gateway at `rate` (plus headroom) for `seconds`, and the same mix straight to the backends and
        through nginx at `COMPARE_SHARE` of it, at the same time."""
        plan = self.plan
        gateway_profile = ConstantRate(rate * HEADROOM, seconds)
        beside = ConstantRate(rate * COMPARE_SHARE, seconds)
        self.note(f"{rate * HEADROOM:,.0f} req/s for {seconds:g} s through the gateway, "
                  f"{rate * COMPARE_SHARE:,.0f} req/s each straight to the backends and through nginx")  # fmt: skip
        async with (
            self._traffic("gateway", plan.connections) as gateway,
            self._traffic("direct", 16) as direct,
            self._traffic("nginx", 16) as nginx,
        ):
            through, straight, baseline = await asyncio.gather(
                run_load(gateway_profile, gateway, max_in_flight=plan.connections * 4,
                         progress=self.progress, label="gateway"),
                run_load(beside, direct, progress=False, label="direct"),
                run_load(beside, nginx, progress=False, label="nginx"),
            )  # fmt: skip
        self.results += [through, straight, baseline]
        for result in (through, straight, baseline):
            self.note(f"  {result.summary_line()}")
        return gateway, through, straight, baseline

    async def sustained(self) -> None:
        plan = self.plan
        self.note("sustained:")
        gateway, through, straight, baseline = await self._paths(plan.sustained_rps, plan.sustained_s)
        self.measured["throughput_rps"] = Measurement(
            "throughput_rps", through.ok / through.duration_s, "req/s",
            f"{through.ok:,} of {through.intended:,} answered 2xx in {through.duration_s:.1f} s; "
            f"statuses {dict(gateway.statuses)}; by node {dict(gateway.nodes)}",
        )  # fmt: skip
        self._latency_rows(through, straight, baseline, plan.sustained_rps)

    def _latency_rows(
        self, through: LoadResult, straight: LoadResult, baseline: LoadResult, rate: float
    ) -> None:
        if through.p99_ms is None or straight.p99_ms is None:
            self.measured["added_latency_p99_ms"] = not_measured(
                "added_latency_p99_ms", "ms", "no successful requests"
            )
            return
        added = through.p99_ms - straight.p99_ms
        self.measured["added_latency_p99_ms"] = Measurement(
            "added_latency_p99_ms", added, "ms",
            f"at {rate * HEADROOM:,.0f} req/s: P99 through the gateway {through.p99_ms:.1f} ms minus P99 straight "
            f"to the backends {straight.p99_ms:.1f} ms, in the same run",
        )  # fmt: skip
        if baseline.p99_ms is not None:
            nginx_added = baseline.p99_ms - straight.p99_ms
            self.measured["nginx_added_latency_p99_ms"] = Measurement(
                "nginx_added_latency_p99_ms", nginx_added, "ms",
                f"P99 through nginx (limit_req per key) {baseline.p99_ms:.1f} ms minus direct {straight.p99_ms:.1f} ms",
            )  # fmt: skip
            ratio = added / nginx_added if nginx_added > 0 else math.nan
            self.measured["gateway_to_nginx_overhead_ratio"] = Measurement(
                "gateway_to_nginx_overhead_ratio", ratio, "x",
                "the gateway's added P99 over nginx's, in the same run"
                + ("" if nginx_added > 0 else " (nginx added nothing measurable)"),
            )  # fmt: skip

    async def burst(self) -> None:
        plan = self.plan
        self.note(f"burst: {plan.burst_rps * HEADROOM:,.0f} req/s for {plan.burst_length_s:g} s "
                  f"(base {plan.burst_base_rps:,.0f} req/s)")  # fmt: skip
        async with self._traffic("gateway", plan.connections) as traffic:
            result = await run_load(plan.burst_profile(), traffic, max_in_flight=plan.connections * 4,
                                    progress=self.progress, label="burst")  # fmt: skip
        self.results.append(result)
        self.note(f"  {result.summary_line()}")
        first, last = int(plan.burst_start_s), int(plan.burst_start_s + plan.burst_length_s)
        completed = sum(result.throughput[first:last])
        self.measured["burst_rps"] = Measurement(
            "burst_rps", completed / plan.burst_length_s, "req/s",
            f"2xx answers completed in seconds {first}-{last} of the run; statuses {dict(traffic.statuses)}",
        )  # fmt: skip

    async def accuracy_propagation_revocation(self) -> None:
        status, body = await _admin(
            self.endpoints, "POST", "/clients/check-accuracy/keys", {"tier": "pro", **ACCURACY_LIMIT}
        )
        if status != 201:
            raise CheckError(f"the admin API refused a client ({status}): {body}")
        api_key = str(body["api_key"])
        await _seconds_until(self.endpoints, api_key, status=200)
        await _admin(
            self.endpoints, "PUT", "/clients/check-accuracy/limits", ACCURACY_LIMIT
        )  # reset a rerun's
        await asyncio.sleep(1.0)  # the probes used part of the burst
        allowed, elapsed = await self._hammer(api_key, self.plan.accuracy_s)
        due = ACCURACY_LIMIT["burst"] + ACCURACY_LIMIT["limit_per_second"] * elapsed
        self.measured["rate_limit_error_pct"] = Measurement(
            "rate_limit_error_pct", abs(allowed - due) / due * 100, "%",
            f"allowed {allowed} in {elapsed:.2f} s where the limit allows {due:.0f}, over the three nodes",
        )  # fmt: skip

        status, _ = await _admin(self.endpoints, "PUT", "/clients/check-accuracy/limits", PROPAGATED_LIMIT)
        seconds = await _seconds_until(self.endpoints, api_key, limit=str(PROPAGATED_LIMIT["burst"]))
        self.measured["config_propagation_s"] = Measurement(
            "config_propagation_s", seconds, "s", "admin API answer to RateLimit-Limit changed on every node"
        )
        await asyncio.sleep(1.0)
        status, _ = await _admin(self.endpoints, "DELETE", f"/keys/{api_key}")
        seconds = await _seconds_until(self.endpoints, api_key, status=401)
        self.measured["key_revocation_s"] = Measurement(
            "key_revocation_s", seconds, "s", f"admin API answered {status}; then every node refused the key"
        )
        self.note(f"accuracy {self.measured['rate_limit_error_pct'].value:.1f} %, "
                  f"propagation {self.measured['config_propagation_s'].value:.2f} s, "
                  f"revocation {seconds:.2f} s")  # fmt: skip

    async def _hammer(self, api_key: str, seconds: float) -> tuple[int, float]:
        allowed = 0
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal allowed
            connector = aiohttp.TCPConnector(force_close=True)  # new connections: every node serves it
            async with aiohttp.ClientSession(headers={"X-API-Key": api_key}, connector=connector) as http:
                while time.monotonic() < deadline:
                    async with http.get(f"{self.endpoints['gateway']}/orders/echo") as answer:
                        allowed += answer.status == 200

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(12)))
        return allowed, time.monotonic() - started

    async def node_kill(self) -> None:
        plan = self.plan
        self.note(
            f"node kill: {plan.kill_rps:,.0f} req/s for {plan.kill_s:g} s, the busiest node killed at {plan.kill_at_s:g} s"
        )
        async with self._traffic("gateway", 32) as traffic:
            traffic.keep_timeline = True
            load = asyncio.create_task(
                run_load(ConstantRate(plan.kill_rps, plan.kill_s), traffic, progress=False)
            )
            await asyncio.sleep(plan.kill_at_s)
            busiest = traffic.nodes.most_common(1)[0][0]  # keep-alive connections may leave a node idle
            victim = self.stack[busiest]
            kill_started = time.monotonic()
            await asyncio.to_thread(victim.kill)
            kill_done = time.monotonic()
            result = await load
        self.results.append(result)
        failed = [s for s in traffic.timeline if not 200 <= s.status < 300]
        in_flight = [s for s in failed if _in_flight(s, kill_started, kill_done)]
        beyond = len(failed) - len(in_flight)
        self.measured["node_kill_failed_requests"] = Measurement(
            "node_kill_failed_requests", beyond, "requests",
            f"{len(traffic.timeline):,} requests; {busiest} killed (it had served {dict(traffic.nodes)[busiest]:,}); "
            f"{len(in_flight)} failed in flight at the kill, {beyond} other",
        )  # fmt: skip
        self.measured["node_kill_failed_in_flight"] = Measurement(
            "node_kill_failed_in_flight", len(in_flight), "requests", "requests in flight when the node died"
        )
        await asyncio.to_thread(victim.start)
        self.note(
            f"  {len(failed)} failed, {len(in_flight)} of them in flight at the kill; {busiest} restarted"
        )


def _in_flight(sent: Sent, kill_started: float, kill_done: float) -> bool:
    return sent.started <= kill_done and sent.finished >= kill_started


class CheckError(RuntimeError):
    pass


@dataclass
class CheckReport:
    scorecard: Scorecard
    report_dir: Path
    plan: Plan
    card: KataCard
    run_dir: Path


async def measure(run: CheckRun) -> None:
    await run.prepare()
    await run.sustained()  # first: after a heavy phase the analytics pipeline catches up, which P99 would see
    await run.burst()
    await run.accuracy_propagation_revocation()
    await run.node_kill()  # last: it kills a node


def run_check(
    plan: Plan,
    *,
    run_dir: Path | None = None,
    reports_root: Path = REPORTS_ROOT,
    keep_run_dir: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> CheckReport:
    out = console or Console()
    card = get_card(KATA)
    folder = run_dir or new_run_dir(CHECK_RUN_NAME)
    out.print(f"[bold]katas check {KATA}[/] ({plan.name}): stack in {escape(str(folder))}", highlight=False)
    started = time.monotonic()
    try:
        with Stack.for_card(card, run_dir=folder / KATA) as stack:
            endpoints = stack.endpoints()
            out.print(
                f"  up in {time.monotonic() - started:.1f} s; starting nginx as the baseline", highlight=False
            )
            nginx = NginxServer(
                "nginx", folder, upstreams={f"/{name}": str(endpoints[name]) for name in BACKENDS}
            )
            try:
                nginx.start()
                run = CheckRun(plan, endpoints, nginx, stack, out, progress)
                asyncio.run(measure(run))
            finally:
                nginx.stop()
    except BaseException:
        out.print(f"the stack is stopped; its logs are in {folder}", highlight=False, markup=False)
        raise
    scorecard = Scorecard(card, run.measured, run.results)
    report_dir = scorecard.write(reports_root)
    if not keep_run_dir and run_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
    return CheckReport(scorecard, report_dir, plan, card, folder)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"katas check {KATA}", description="Measure the API gateway's NFRs on a stack of its own."
    )
    p.add_argument(
        "--short",
        action="store_true",
        help="the short check: the card's rates over shorter runs (about 2 minutes)",
    )
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, data) afterwards")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    card = get_card(KATA)
    plan = plan_for(card, short=options.short)
    console = Console()
    try:
        with sigterm_as_interrupt():
            report = run_check(
                plan, keep_run_dir=options.keep, progress=not options.no_progress, console=console
            )
    except KeyboardInterrupt:
        console.print("interrupted: the check's stack was stopped", highlight=False)
        return 130
    except CheckError as exc:
        console.print(f"[red]check failed:[/] {escape(str(exc))}", highlight=False)
        return 1
    return print_report(console, report.scorecard, report.report_dir)
