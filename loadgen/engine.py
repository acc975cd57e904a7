"""The open-loop load engine shared by every kata's generator.

Open loop: operation i is started at its intended time from the profile, whether or not earlier operations
have finished, and its latency is measured from that intended time to its completion. A system that stalls
therefore shows the stall in the latency of every operation that was due during it, instead of the generator
quietly waiting and sending fewer requests (coordinated omission). Latencies go into an HDR histogram in
microseconds (1 us .. 1 h, 3 significant digits).

Bounds: at most `max_in_flight` operations run at once; an operation that is due while that many are running
waits for a slot (its latency keeps counting from its intended time) and is counted in `delayed_starts`.
Scheduling ends with the profile; stragglers get `grace_s` seconds, then they are cancelled and counted as
`timed_out`, together with any due operation that never got a slot. So `ok + errors + timed_out == intended`.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loadgen.profiles import LoadProfile

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_FIGURES = 3
DEFAULT_GRACE_S = 10.0
ERROR_SAMPLES = 5
"""How many error messages a result keeps (the counts by type are complete)."""
PERCENTILE_TICKS_PER_HALF_DISTANCE = 5

Operation = Callable[[int], Awaitable[None]]


def new_histogram() -> Any:
    """An empty latency histogram in microseconds: 1 us .. 1 h, 3 significant digits."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def _ms(us: float) -> float:
    return us / 1000.0


@dataclass
class LoadResult:
    """What one run measured. Latencies are of successful operations only, from intended send time."""

    label: str
    profile: str
    intended: int
    started: int
    ok: int
    errors: dict[str, int]
    error_samples: list[str]
    timed_out: int
    delayed_starts: int
    duration_s: float
    achieved_rate: float
    """Successful operations per second of `duration_s` (the run's wall time, at least the profile's)."""
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    percentile_curve: list[tuple[float, float]]
    """(percentile 0..100, latency ms) points as HdrHistogram's percentile distribution reports them."""
    throughput: list[int]
    """Successful completions in each 1-second bucket since the start of the run."""
    histogram: Any = field(repr=False, compare=False)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @classmethod
    def from_histogram(
        cls,
        histogram: Any,
        *,
        label: str,
        profile: str,
        intended: int,
        started: int,
        errors: dict[str, int],
        error_samples: list[str],
        timed_out: int,
        delayed_starts: int,
        duration_s: float,
        throughput: list[int],
    ) -> LoadResult:
        """Build a result, deriving `ok`, the percentiles and the curve from the histogram."""
        ok = int(histogram.get_total_count())
        pct: dict[float, float | None] = dict.fromkeys((50.0, 90.0, 99.0, 99.9), None)
        curve: list[tuple[float, float]] = []
        max_ms: float | None = None
        if ok:
            for p in pct:
                pct[p] = _ms(histogram.get_value_at_percentile(p))
            max_ms = _ms(histogram.get_max_value())
            for item in histogram.get_percentile_iterator(PERCENTILE_TICKS_PER_HALF_DISTANCE):
                curve.append((float(item.percentile_level_iterated_to), _ms(item.value_iterated_to)))
        return cls(
            label=label,
            profile=profile,
            intended=intended,
            started=started,
            ok=ok,
            errors=dict(errors),
            error_samples=list(error_samples),
            timed_out=timed_out,
            delayed_starts=delayed_starts,
            duration_s=duration_s,
            achieved_rate=ok / duration_s if duration_s > 0 else 0.0,
            p50_ms=pct[50.0],
            p90_ms=pct[90.0],
            p99_ms=pct[99.0],
            p999_ms=pct[99.9],
            max_ms=max_ms,
            percentile_curve=curve,
            throughput=list(throughput),
            histogram=histogram,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; the histogram is HdrHistogram's compressed base64 encoding."""
        return {
            "label": self.label,
            "profile": self.profile,
            "intended": self.intended,
            "started": self.started,
            "ok": self.ok,
            "errors": dict(self.errors),
            "error_samples": list(self.error_samples),
            "timed_out": self.timed_out,
            "delayed_starts": self.delayed_starts,
            "duration_s": self.duration_s,
            "achieved_rate": self.achieved_rate,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "max_ms": self.max_ms,
            "percentile_curve": [[p, v] for p, v in self.percentile_curve],
            "throughput": list(self.throughput),
            "histogram": self.histogram.encode().decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        encoded = data.get("histogram") or ""
        histogram = HdrHistogram.decode(encoded.encode("ascii")) if encoded else new_histogram()
        return cls(
            label=str(data["label"]),
            profile=str(data["profile"]),
            intended=int(data["intended"]),
            started=int(data["started"]),
            ok=int(data["ok"]),
            errors={str(k): int(v) for k, v in data["errors"].items()},
            error_samples=[str(s) for s in data.get("error_samples", [])],
            timed_out=int(data["timed_out"]),
            delayed_starts=int(data["delayed_starts"]),
            duration_s=float(data["duration_s"]),
            achieved_rate=float(data["achieved_rate"]),
            p50_ms=_opt_float(data.get("p50_ms")),
            p90_ms=_opt_float(data.get("p90_ms")),
            p99_ms=_opt_float(data.get("p99_ms")),
            p999_ms=_opt_float(data.get("p999_ms")),
            max_ms=_opt_float(data.get("max_ms")),
            percentile_curve=[(float(p), float(v)) for p, v in data.get("percentile_curve", [])],
            throughput=[int(n) for n in data.get("throughput", [])],
            histogram=histogram,
        )

    def write_json(self, path: Path) -> Path:
        import json

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def summary_line(self) -> str:
        """One line for a terminal: counts, rate and latency percentiles."""

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.3g}"

        name = f"{self.label} " if self.label else ""
        return (
            f"{name}[{self.profile}] intended {self.intended}, ok {self.ok}, errors {self.error_count}, "
            f"timed out {self.timed_out}, delayed starts {self.delayed_starts}; "
            f"{self.achieved_rate:.1f}/s; latency ms p50 {fmt(self.p50_ms)} p90 {fmt(self.p90_ms)} "
            f"p99 {fmt(self.p99_ms)} p99.9 {fmt(self.p999_ms)} max {fmt(self.max_ms)}"
        )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


class _Recorder:
    """Mutable tallies of one run; only touched from the event loop thread."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.histogram = new_histogram()
        self.started = 0
        self.in_flight = 0
        self.delayed_starts = 0
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.throughput: list[int] = []

    @property
    def settled(self) -> int:
        return int(self.histogram.get_total_count()) + sum(self.errors.values())

    def ok(self, intended: float, done: float) -> None:
        us = round((done - intended) * 1_000_000)
        self.histogram.record_value(min(max(us, 0), HIGHEST_US))
        bucket = max(0, int(done - self.start))
        if bucket >= len(self.throughput):
            self.throughput.extend([0] * (bucket + 1 - len(self.throughput)))
        self.throughput[bucket] += 1

    def error(self, exc: BaseException) -> None:
        name = type(exc).__qualname__
        self.errors[name] += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(f"{name}: {exc}"[:500])


async def run_load(
    profile: LoadProfile,
    operation: Operation,
    *,
    max_in_flight: int = 1000,
    progress: bool = True,
    label: str = "",
    grace_s: float = DEFAULT_GRACE_S,
) -> LoadResult:
    """Drive `operation(i)` for each operation i of `profile`, open loop, and measure it.

    `operation` should raise on failure; exceptions are counted by type and never stop the run.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if not (grace_s >= 0 and math.isfinite(grace_s)):
        raise ValueError(f"grace_s must be a finite number >= 0, got {grace_s}")
    loop = asyncio.get_running_loop()
    intended_count = profile.intended_count()
    description = profile.describe()
    start = loop.time()
    end_of_schedule = start + profile.duration_s
    deadline = end_of_schedule + grace_s
    rec = _Recorder(start)
    tasks: set[asyncio.Task[None]] = set()
    slot_free = asyncio.Event()

    async def one(i: int, intended: float) -> None:
        try:
            await operation(i)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # cancelled by the engine at the deadline: counted as timed out
            rec.error(exc)  # the operation itself gave up with CancelledError
        except Exception as exc:
            rec.error(exc)
        else:
            rec.ok(intended, loop.time())
        finally:
            rec.in_flight -= 1
            slot_free.set()

    async def schedule() -> None:
        for i, offset in enumerate(profile.intended_offsets()):
            intended = start + offset
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if rec.in_flight >= max_in_flight:
                rec.delayed_starts += 1
                while rec.in_flight >= max_in_flight:
                    slot_free.clear()
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return
                    try:
                        await asyncio.wait_for(slot_free.wait(), remaining)
                    except TimeoutError:
                        return
            if loop.time() >= deadline:
                return
            rec.started += 1
            rec.in_flight += 1
            task = loop.create_task(one(i, intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        # Nothing more to send; stay until the profile ends (a trailing pause is part of the profile).
        delay = end_of_schedule - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    bar: Progress | None = None
    ticker: asyncio.Task[None] | None = None
    if progress:
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        bar_task = bar.add_task(label or description, total=intended_count or None, info="")

        async def tick() -> None:
            assert bar is not None
            while True:
                info = f"in flight {rec.in_flight}  errors {sum(rec.errors.values())}"
                if rec.delayed_starts:
                    info += f"  delayed {rec.delayed_starts}"
                bar.update(bar_task, completed=rec.settled, info=info)
                await asyncio.sleep(0.1)

        bar.start()
        ticker = loop.create_task(tick())
    try:
        await schedule()
        pending = set(tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        leftovers = set(tasks)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        if bar is not None:
            bar.stop()
    duration_s = max(loop.time() - start, profile.duration_s)
    settled = rec.settled
    return LoadResult.from_histogram(
        rec.histogram,
        label=label,
        profile=description,
        intended=intended_count,
        started=rec.started,
        errors=dict(rec.errors),
        error_samples=rec.error_samples,
        timed_out=intended_count - settled,
        delayed_starts=rec.delayed_starts,
        duration_s=duration_s,
        throughput=rec.throughput,
    )
