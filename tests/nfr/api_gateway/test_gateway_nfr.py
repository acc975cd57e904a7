"""The API gateway's short NFR check, in-process: the same phases as `katas check api_gateway --short` on a
stack of its own, with nginx beside it.

Latency, accuracy, propagation, revocation and the node kill are held to the card's miniature targets
(per request or per change, so the miniature keeps them). The throughput rows are held to the short check's
documented reduced rates (`katas.api_gateway.check.SHORT`), because this 2-core machine runs the whole
stack and the load generator at once; the card's 1,500 and 5,000 req/s are measured by the full check.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from katas.api_gateway.check import SHORT, CheckReport, card_for, run_check
from katas.catalog import get_card
from katas.scorecard import HTML_NAME, JSON_NAME, REPORTS_ROOT
from tests.conftest import reachable_run_dir
from tests.nfr.rows import assert_reduced_rows_are_documented, assert_row_meets_target, measured_metrics

REDUCED = {"throughput_rps", "burst_rps"}


@pytest.fixture(scope="module")
def report() -> Iterator[CheckReport]:
    with reachable_run_dir("katas-nfr-gateway-") as run_dir:
        yield run_check(SHORT, run_dir=run_dir, reports_root=REPORTS_ROOT, progress=False)


def test_the_short_plan_documents_its_reduced_rates() -> None:
    card = get_card("api_gateway")
    assert_reduced_rows_are_documented(card, card_for(SHORT, card), REDUCED, "req/s")


@pytest.mark.parametrize("metric", measured_metrics("api_gateway"))
def test_each_measured_nfr_meets_its_target(report: CheckReport, metric: str) -> None:
    assert_row_meets_target(report.card, report.scorecard, metric)


def test_the_nginx_baseline_is_reported(report: CheckReport) -> None:
    ratio = report.scorecard.measurements["gateway_to_nginx_overhead_ratio"]
    assert ratio.detail
    assert not math.isnan(report.scorecard.measurements["nginx_added_latency_p99_ms"].value)


def test_the_scorecard_files_are_written(report: CheckReport) -> None:
    assert (report.report_dir / JSON_NAME).is_file()
    assert (report.report_dir / HTML_NAME).is_file()
