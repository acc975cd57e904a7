"""What every kata's `katas check` shares besides the scorecard: percentiles, a row that could not be
measured, the card's targets, a fresh run directory for the check's own stack, and SIGTERM as Ctrl-C."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import signal
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from katas.catalog import KataCard
from katas.infra.stack import run_dir_for
from katas.scorecard import Measurement, Scorecard


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def not_measured(metric: str, unit: str, reason: str) -> Measurement:
    """A row the run could not measure: NaN with the reason, shown as "not measured" by the scorecard."""
    return Measurement(metric, math.nan, unit, f"not measured: {reason}")


def card_target(card: KataCard, metric: str) -> float:
    for nfr in card.nfr:
        if nfr.metric == metric and nfr.target is not None:
            return nfr.target
    raise LookupError(f"the {card.id} card has no NFR with metric {metric!r}")


def print_report(console: Console, scorecard: Scorecard, report_dir: Path) -> int:
    """The scorecard's table, the reasons of rows not measured, where it was written; the exit code."""
    console.print(scorecard.render_table())
    for m in scorecard.measurements.values():
        if math.isnan(m.value) and m.detail:
            console.print(f"{m.metric}: {m.detail}", highlight=False, markup=False)
    console.print(f"scorecard written to {report_dir}", highlight=False, markup=False)
    return 0 if scorecard.passed() else 1


def new_run_dir(check_name: str, root: Path | None = None) -> Path:
    """A fresh folder for one check's stack, e.g. .katas/siem-check/20261129T120000Z (never a `katas up`'s)."""
    base = root or run_dir_for(check_name)
    path = base / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = itertools.count(2)
    while path.exists():
        path = path.with_name(f"{path.name.split('-')[0]}-{next(suffix)}")
    path.mkdir(parents=True)
    return path


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a check like Ctrl-C does, so its stack is stopped on the way out."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class WebhookTail:
    """Reads a webhook receiver's JSON-lines log as it grows: each call returns the whole lines appended
    since the previous one (a line still being written waits for the next call; a line that is not JSON
    is skipped). Before the receiver has written anything, there is nothing new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new_lines(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        lines = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines
