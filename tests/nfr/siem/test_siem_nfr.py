"""The SIEM's short NFR check, in-process: the same phases as `katas check siem --short` on a stack of its own.

Every measured row is held to the card's miniature target: the short check runs the card's rates (500
events/s sustained, a 2,000 events/s burst) over shorter runs than `katas check siem`, and leaves the
full-retention query over 10M events to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from katas.catalog import get_card
from katas.checking import card_target
from katas.scorecard import HTML_NAME, JSON_NAME, REPORTS_ROOT
from katas.siem.check import CheckReport, plan_for, run_check
from tests.conftest import reachable_run_dir
from tests.nfr.rows import assert_row_meets_target, measured_metrics

pytestmark = pytest.mark.nfr


@pytest.fixture(scope="module")
def report() -> Iterator[CheckReport]:
    """One short check for the module, on a stack in a run directory of its own (as tests/conftest.py's
    `run_dir`, module-scoped); the scorecard goes to reports/siem/ like the CLI's."""
    with reachable_run_dir("katas-nfr-siem-") as run_dir:
        yield run_check(
            plan_for(get_card("siem"), short=True), run_dir=run_dir, reports_root=REPORTS_ROOT, progress=False
        )


def test_the_short_plan_runs_the_cards_rates_for_less_time() -> None:
    card = get_card("siem")
    short, full = plan_for(card, short=True), plan_for(card, short=False)
    assert (short.sustained_target, short.burst_target) == (full.sustained_target, full.burst_target)
    rates = (card_target(card, "ingest_events_per_s"), card_target(card, "burst_ingest_events_per_s"))
    assert (short.sustained_target, short.burst_target) == rates
    assert short.sustained_s < full.sustained_s
    assert short.backfill_events == 0 < full.backfill_events


@pytest.mark.parametrize("metric", measured_metrics("siem"))
def test_each_measured_nfr_meets_its_target(report: CheckReport, metric: str) -> None:
    assert_row_meets_target(report.card, report.scorecard, metric, may_skip=("query_full_retention_p95_s",))


def test_the_broker_ratio_is_reported(report: CheckReport) -> None:
    ratio = report.scorecard.measurements["pipeline_to_broker_ratio"]
    assert not math.isnan(ratio.value), ratio.detail
    assert ratio.value > 0


def test_the_scorecard_files_were_written(report: CheckReport) -> None:
    assert report.report_dir.parent == REPORTS_ROOT / "siem"
    document = json.loads((report.report_dir / JSON_NAME).read_text())
    assert document["kata"] == "siem"
    assert {o["metric"] for o in document["outcomes"] if o["metric"]} == set(measured_metrics("siem"))
    assert [r["label"] for r in document["load_results"]] == [r.label for r in report.scorecard.load_results]
    assert "<svg" in (report.report_dir / HTML_NAME).read_text()
