"""The API gateway's short NFR check, in-process: the same phases as `katas check api_gateway --short` on a
stack of its own, with nginx beside it.

Every measured row is held to the card's miniature target: the short check runs the card's rates (150 req/s
sustained, a 500 req/s burst) over shorter runs than `katas check api_gateway`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from katas.api_gateway.check import CheckReport, plan_for, run_check
from katas.catalog import get_card
from katas.checking import card_target
from katas.scorecard import HTML_NAME, JSON_NAME, REPORTS_ROOT
from tests.conftest import reachable_run_dir
from tests.nfr.rows import assert_row_meets_target, measured_metrics


@pytest.fixture(scope="module")
def report() -> Iterator[CheckReport]:
    with reachable_run_dir("katas-nfr-gateway-") as run_dir:
        yield run_check(
            plan_for(get_card("api_gateway"), short=True),
            run_dir=run_dir,
            reports_root=REPORTS_ROOT,
            progress=False,
        )


def test_the_short_plan_runs_the_cards_rates_for_less_time() -> None:
    card = get_card("api_gateway")
    short, full = plan_for(card, short=True), plan_for(card, short=False)
    rates = (card_target(card, "throughput_rps"), card_target(card, "burst_rps"))
    assert (short.sustained_rps, short.burst_rps) == (full.sustained_rps, full.burst_rps) == rates
    assert short.sustained_s < full.sustained_s


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
