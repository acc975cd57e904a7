"""The SIEM's short NFR check, in-process: the same phases as `katas check siem --short` on a stack of its own.

Latency and query rows are held to the card's miniature targets (they are per event or per query, so the
miniature keeps them). The throughput rows are held to the short check's documented reduced rates
(`katas.siem.check.SHORT`: 600 events/s accepted and stored, 1,250 events/s acknowledged in an 8 s burst),
because this 2-core machine runs the broker, the object store under it, the chDB store, six services and the
load generator at once: ingest acknowledges up to about 2,000 events/s here, normalizer and store keep up
with about 800 (see `katas.siem.check.SHORT_BURST`); the card's 5,000 and 20,000 events/s are measured by
the full check, `katas check siem`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from katas.catalog import get_card
from katas.scorecard import HTML_NAME, JSON_NAME, REPORTS_ROOT
from katas.siem.check import SHORT, CheckReport, card_for, run_check
from tests.conftest import reachable_run_dir
from tests.nfr.rows import assert_reduced_rows_are_documented, assert_row_meets_target, measured_metrics

pytestmark = pytest.mark.nfr

REDUCED = {"ingest_events_per_s", "burst_ingest_events_per_s"}


@pytest.fixture(scope="module")
def report() -> Iterator[CheckReport]:
    """One short check for the module, on a stack in a run directory of its own (as tests/conftest.py's
    `run_dir`, module-scoped); the scorecard goes to reports/siem/ like the CLI's."""
    with reachable_run_dir("katas-nfr-siem-") as run_dir:
        yield run_check(SHORT, run_dir=run_dir, reports_root=REPORTS_ROOT, progress=False)


def test_the_short_plan_documents_its_reduced_rates() -> None:
    card = get_card("siem")
    assert_reduced_rows_are_documented(card, card_for(SHORT, card), REDUCED, "events/s")


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
