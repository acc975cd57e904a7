"""The scorecard: a kata's NFR targets against what a check run measured.

A `Scorecard` pairs a `KataCard` with the measured metric values (keyed by each NFR's `metric`) and the
`LoadResult`s of the run. Each NFR row ends as one of four statuses: "pass" or "fail" against the miniature
target, "not measured" when the card names a metric the run did not produce, or "not measurable here" when the
card says the NFR cannot be measured at miniature scale. `write()` stores the run under
`reports/<kata>/<UTC timestamp>/` as `scorecard.json` (everything, including the card and the encoded latency
histograms, so a report stays readable after the card changes) and a self-contained `scorecard.html` (inline
CSS and inline SVG plots, no external URLs).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rich.table import Table
from rich.text import Text

from katas import REPO_ROOT
from katas.catalog import KataCard, Nfr
from loadgen import LoadResult

REPORTS_ROOT = REPO_ROOT / "reports"
SCHEMA_VERSION = 1
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
JSON_NAME = "scorecard.json"
HTML_NAME = "scorecard.html"

Status = Literal["pass", "fail", "not measured", "not measurable here"]
PASS: Status = "pass"  # noqa: S105 - a status, not a password
FAIL: Status = "fail"
NOT_MEASURED: Status = "not measured"
NOT_MEASURABLE: Status = "not measurable here"
STATUS_STYLE: dict[Status, str] = {
    PASS: "bold green",
    FAIL: "bold red",
    NOT_MEASURED: "yellow",
    NOT_MEASURABLE: "dim",
}


@dataclass(frozen=True)
class Measurement:
    """One measured figure: `metric` is the key an NFR's `metric` refers to."""

    metric: str
    value: float
    unit: str = ""
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "unit": self.unit, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        detail = data.get("detail")
        return cls(
            metric=str(data["metric"]),
            value=float(data["value"]),
            unit=str(data.get("unit", "")),
            detail=None if detail is None else str(detail),
        )


@dataclass(frozen=True)
class NfrOutcome:
    nfr: Nfr
    measured: float | None
    status: Status

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.nfr.id,
            "name": self.nfr.name,
            "production": self.nfr.production,
            "miniature": self.nfr.miniature,
            "metric": self.nfr.metric,
            "op": None if self.nfr.op is None else self.nfr.op.value,
            "target": self.nfr.target,
            "unit": self.nfr.unit,
            "note": self.nfr.note,
            "measured": self.measured,
            "status": self.status,
        }


def outcome_for(nfr: Nfr, measured: Mapping[str, Measurement]) -> NfrOutcome:
    if nfr.metric is None:
        return NfrOutcome(nfr, None, NOT_MEASURABLE)
    m = measured.get(nfr.metric)
    if m is None or math.isnan(m.value):
        return NfrOutcome(nfr, None, NOT_MEASURED)
    return NfrOutcome(nfr, m.value, PASS if nfr.passes(m.value) else FAIL)


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge the figures: the machine they were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    value = float(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _target_text(nfr: Nfr) -> str:
    if nfr.op is None or nfr.target is None:
        return ""
    return f"{nfr.op.value} {format_value(nfr.target, nfr.unit)}"


@dataclass
class Scorecard:
    """NFR outcomes of one check run of a kata, with the measurements and load results behind them.

    `measured` maps metric keys to values (plain numbers or `Measurement`s); keys no NFR refers to are kept
    as extra measurements.
    """

    card: KataCard
    measured: Mapping[str, float | Measurement] = field(default_factory=dict)
    load_results: Sequence[LoadResult] = ()
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    machine: dict[str, Any] = field(default_factory=machine_facts)
    measurements: dict[str, Measurement] = field(init=False)

    def __post_init__(self) -> None:
        units = {n.metric: n.unit for n in self.card.nfr if n.metric is not None}
        self.measurements = {}
        for key, value in self.measured.items():
            if isinstance(value, Measurement):
                m = value if value.metric == key else Measurement(key, value.value, value.unit, value.detail)
            else:
                m = Measurement(key, float(value), units.get(key, ""))
            self.measurements[key] = m
        self.load_results = list(self.load_results)
        if self.timestamp.tzinfo is None:
            raise ValueError("Scorecard.timestamp must be timezone-aware")
        self.timestamp = self.timestamp.astimezone(UTC).replace(microsecond=0)

    @property
    def stamp(self) -> str:
        """The UTC timestamp as used in the report directory name, e.g. 20261129T051500Z."""
        return self.timestamp.strftime(TIMESTAMP_FORMAT)

    def outcomes(self) -> list[NfrOutcome]:
        return [outcome_for(nfr, self.measurements) for nfr in self.card.nfr]

    def passed(self) -> bool:
        """True when every measured NFR meets its miniature target (rows not measured do not count)."""
        return all(o.status == PASS for o in self.outcomes() if o.status in (PASS, FAIL))

    def extra_measurements(self) -> list[Measurement]:
        """Measurements that no NFR row refers to."""
        used = {n.metric for n in self.card.nfr}
        return [m for k, m in self.measurements.items() if k not in used]

    def render_table(self) -> Table:
        table = Table(
            title=f"{self.card.title} ({self.card.id}) - scorecard {self.stamp}", title_justify="left"
        )
        table.add_column("NFR")
        table.add_column("production")
        table.add_column("miniature target")
        table.add_column("measured", justify="right")
        table.add_column("status")
        for o in self.outcomes():
            target = Text(o.nfr.miniature)
            if t := _target_text(o.nfr):
                target.append(f"\n{o.nfr.metric} {t}", style="dim")
            table.add_row(
                o.nfr.name,
                o.nfr.production,
                target,
                format_value(o.measured, o.nfr.unit),
                Text(o.status, style=STATUS_STYLE[o.status]),
            )
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "kata": self.card.id,
            "title": self.card.title,
            "timestamp": self.stamp,
            "machine": dict(self.machine),
            "passed": self.passed(),
            "outcomes": [o.to_dict() for o in self.outcomes()],
            "measurements": [m.to_dict() for m in self.measurements.values()],
            "extra_measurements": [m.metric for m in self.extra_measurements()],
            "load_results": [r.to_dict() for r in self.load_results],
            "card": self.card.model_dump(mode="json"),
        }

    def write(self, reports_root: Path = REPORTS_ROOT) -> Path:
        """Write scorecard.json and scorecard.html; returns their directory, reports/<kata>/<timestamp>/.

        A second scorecard of the same kata in the same second gets a `-2`, `-3`... suffix.
        """
        kata_dir = reports_root / self.card.id
        kata_dir.mkdir(parents=True, exist_ok=True)
        out = kata_dir / self.stamp
        n = 1
        while True:
            try:
                out.mkdir()
                break
            except FileExistsError:
                n += 1
                out = kata_dir / f"{self.stamp}-{n}"
        (out / JSON_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        (out / HTML_NAME).write_text(render_html(self), encoding="utf-8")
        return out


def load_scorecard(path: Path) -> Scorecard:
    """Read a scorecard.json back (or the report directory holding one)."""
    if path.is_dir():
        path = path / JSON_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{path}: unsupported scorecard schema {data.get('schema')!r}")
    card = KataCard.model_validate(data["card"])
    timestamp = datetime.strptime(data["timestamp"], TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    measured: dict[str, float | Measurement] = {}
    for item in data["measurements"]:
        m = Measurement.from_dict(item)
        measured[m.metric] = m
    return Scorecard(
        card=card,
        measured=measured,
        load_results=[LoadResult.from_dict(r) for r in data["load_results"]],
        timestamp=timestamp,
        machine=dict(data["machine"]),
    )


# --- HTML -------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.meta { color: #59636e; font-size: .9rem; }
.verdict { display: inline-block; padding: .15rem .6rem; border-radius: .3rem; font-weight: 600; }
.verdict.none { background: #f6f8fa; color: #59636e; }
.verdict.pass { background: #dafbe1; color: #116329; } .verdict.fail { background: #ffebe9; color: #a40e26; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; margin-top: .5rem; }
th, td { border: 1px solid #d1d9e0; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.status { font-weight: 600; white-space: nowrap; }
tr.pass td.status { background: #dafbe1; color: #116329; }
tr.fail td.status { background: #ffebe9; color: #a40e26; }
tr.not-measured td.status { background: #fff8c5; color: #7d4e00; }
tr.not-measurable-here td.status { color: #59636e; }
.small { color: #59636e; font-size: .8rem; }
.plot svg { width: 100%; height: auto; max-width: 60rem; }
pre { background: #f6f8fa; padding: .5rem; overflow-x: auto; font-size: .8rem; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _status_class(status: Status) -> str:
    return status.replace(" ", "-")


def _svg(fig: Any) -> str:
    """A matplotlib figure as an inline <svg> element (no XML prolog or DTD, text kept as text)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _percentile_x(percentile: float) -> float:
    return 1.0 / (1.0 - percentile / 100.0)


def latency_plot_svg(results: Sequence[LoadResult]) -> str | None:
    """Latency by percentile, x as 1/(1-p) on a log scale (HdrHistogram style), one line per result."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    most = 1.0
    drawn = 0
    for i, r in enumerate(results):
        points = [(p, v) for p, v in r.percentile_curve if p < 100.0]
        if not points or r.max_ms is None:
            continue
        xs = [_percentile_x(p) for p, _ in points]
        ys = [v for _, v in points]
        # The 100th percentile is at infinity on this axis; draw the maximum at 1 - 1/count instead.
        tail = float(max(r.ok, 2))
        if tail > xs[-1]:
            xs.append(tail)
            ys.append(r.max_ms)
        most = max(most, xs[-1])
        ax.plot(xs, ys, drawstyle="steps-post", linewidth=1.6, label=r.label or r.profile or f"run {i + 1}")
        drawn += 1
    if not drawn:
        return None
    ax.set_xscale("log")
    ticks = [1.0]
    while ticks[-1] < most * 1.01:
        ticks.append(ticks[-1] * 10)
    labels = ["0%"] + [f"{100 - 100 / t:.10g}%" for t in ticks[1:]]
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    ax.set_xlim(1, ticks[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency by percentile (from intended send time)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _svg(fig)


def throughput_plot_svg(results: Sequence[LoadResult]) -> str | None:
    """Successful operations per second over the run, one line per result."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    for i, r in enumerate(results):
        if not r.throughput:
            continue
        xs = list(range(len(r.throughput) + 1))
        ys = [*r.throughput, r.throughput[-1]]
        ax.plot(xs, ys, drawstyle="steps-post", linewidth=1.6, label=r.label or r.profile or f"run {i + 1}")
        drawn += 1
    if not drawn:
        return None
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("successful ops / s")
    ax.set_title("Throughput over time")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _svg(fig)


def _load_table(results: Sequence[LoadResult]) -> str:
    head = (
        "label",
        "profile",
        "intended",
        "ok",
        "errors",
        "timed out",
        "delayed starts",
        "rate /s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
    )
    rows = []
    for r in results:
        cells = [
            f"<td>{_e(r.label)}</td>",
            f"<td><code>{_e(r.profile)}</code></td>",
            *(
                f'<td class="num">{_e(format_value(v))}</td>'
                for v in (
                    r.intended,
                    r.ok,
                    r.error_count,
                    r.timed_out,
                    r.delayed_starts,
                    r.achieved_rate,
                    r.p50_ms,
                    r.p90_ms,
                    r.p99_ms,
                    r.p999_ms,
                    r.max_ms,
                )
            ),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
        if r.errors:
            by_type = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items()))
            samples = "\n".join(r.error_samples)
            rows.append(
                f'<tr><td colspan="{len(head)}" class="small">errors by type: {_e(by_type)}'
                f"<pre>{_e(samples)}</pre></td></tr>"
            )
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(scorecard: Scorecard) -> str:
    """The scorecard as one self-contained HTML page."""
    card = scorecard.card
    outcomes = scorecard.outcomes()
    measured_rows = [o for o in outcomes if o.status in (PASS, FAIL)]
    ok = scorecard.passed()
    if measured_rows:
        n_pass = sum(o.status == PASS for o in measured_rows)
        verdict_text = (
            f"{'PASS' if ok else 'FAIL'}: {n_pass} of {len(measured_rows)} measured NFRs meet target"
        )
        verdict_class = "pass" if ok else "fail"
    else:
        verdict_text, verdict_class = "no NFR measured", "none"
    verdict = f'<span class="verdict {verdict_class}">{_e(verdict_text)}</span>'

    nfr_rows = []
    for o in outcomes:
        target = _target_text(o.nfr)
        metric = f'<div class="small">{_e(o.nfr.metric)} {_e(target)}</div>' if o.nfr.metric else ""
        nfr_rows.append(
            f'<tr class="{_status_class(o.status)}">'
            f"<td>{_e(o.nfr.name)}</td><td>{_e(o.nfr.production)}</td>"
            f"<td>{_e(o.nfr.miniature)}{metric}</td>"
            f'<td class="num">{_e(format_value(o.measured, o.nfr.unit))}</td>'
            f'<td class="status">{_e(o.status)}</td>'
            f'<td class="small">{_e(o.nfr.note)}</td></tr>'
        )
    nfr_table = (
        "<table><thead><tr><th>NFR</th><th>production</th><th>miniature target</th><th>measured</th>"
        f"<th>status</th><th>note</th></tr></thead><tbody>{''.join(nfr_rows)}</tbody></table>"
    )

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(card.title)} - scorecard {_e(scorecard.stamp)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Kata {card.number}: {_e(card.title)}</h1>",
        f'<p class="meta">kata <code>{_e(card.id)}</code> &middot; {_e(scorecard.stamp)} &middot; '
        + " &middot; ".join(f"{_e(k)} {_e(v)}" for k, v in scorecard.machine.items())
        + "</p>",
        f"<p>{verdict}</p>",
        "<h2>NFRs</h2>",
        nfr_table,
    ]
    results = list(scorecard.load_results)
    if results:
        parts += ["<h2>Load</h2>", _load_table(results)]
        for svg in (latency_plot_svg(results), throughput_plot_svg(results)):
            if svg is not None:
                parts.append(f'<div class="plot">{svg}</div>')
    extra = scorecard.extra_measurements()
    if extra:
        rows = "".join(
            f"<tr><td><code>{_e(m.metric)}</code></td>"
            f'<td class="num">{_e(format_value(m.value, m.unit))}</td>'
            f'<td class="small">{_e(m.detail or "")}</td></tr>'
            for m in extra
        )
        parts += [
            "<h2>Other measurements</h2>",
            f"<table><thead><tr><th>metric</th><th>value</th><th>detail</th></tr></thead><tbody>{rows}</tbody></table>",
        ]
    parts.append("</body></html>\n")
    return "\n".join(_no_external(p) for p in parts)


_EXTERNAL_REF = re.compile(r"""\b(src|href)\s*=\s*(["'])\s*https?://""", re.IGNORECASE)


def _no_external(fragment: str) -> str:
    """Defence in depth: the page must not load anything; no fragment may reference an external URL."""
    if _EXTERNAL_REF.search(fragment):
        raise ValueError("scorecard HTML must be self-contained, found an external src/href")
    return fragment
