"""What every kata's NFR test asserts about a short check's scorecard, in one place."""

from __future__ import annotations

import math
from collections.abc import Collection

import pytest

from katas.catalog import KataCard, get_card
from katas.scorecard import Scorecard


def measured_metrics(kata: str) -> list[str]:
    """The metrics of the card's rows that a check measures (for parametrizing a row test)."""
    return [n.metric for n in get_card(kata).nfr if n.metric is not None]


def assert_row_meets_target(
    card: KataCard, scorecard: Scorecard, metric: str, *, may_skip: Collection[str] = ()
) -> None:
    """The row was measured and meets its target; a row in `may_skip` not measured is skipped with why."""
    nfr = next(n for n in card.nfr if n.metric == metric)
    measurement = scorecard.measurements.get(metric)
    assert measurement is not None, f"{metric}: the check did not record it"
    if math.isnan(measurement.value):
        assert metric in may_skip, f"{metric} was not measured: {measurement.detail}"
        pytest.skip(f"{metric}: {measurement.detail}")
    target = f"{nfr.op.value if nfr.op else '?'} {nfr.target:,g} {nfr.unit}"
    assert nfr.passes(measurement.value), (
        f"{nfr.name}: measured {measurement.value:,.3f} {measurement.unit}, target {target} "
        f"({nfr.miniature}); {measurement.detail}"
    )
