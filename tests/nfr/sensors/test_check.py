"""The sensors kata's short NFR check, in-process: the same phases as `katas check sensors --short` on a
stack of its own.

Every measured row is held to the card's miniature target: the short check runs the card's rate (500
readings/s, offered with 10 % headroom) over 80 s instead of 300 s and asks the month's history 3 times
instead of 20; a month of rollups and a day of raw readings are backfilled in both. Beyond the rows it
must lose nothing acknowledged, and answer a readings query from the cold and the hot tier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from katas.catalog import get_card
from katas.checking import card_target
from katas.scorecard import HTML_NAME, JSON_NAME, REPORTS_ROOT
from katas.sensors.check import CheckReport, plan_for, run_check
from tests.conftest import reachable_run_dir
from tests.nfr.rows import assert_row_meets_target, measured_metrics

pytestmark = [pytest.mark.nfr, pytest.mark.timeout(480)]
"""The check takes about 4 minutes on a 2-core machine (a minute or more of it the month's backfill); the
timeout leaves room for a busy one."""


@pytest.fixture(scope="module")
def report() -> Iterator[CheckReport]:
    """One short check for the module, on a stack in a run directory of its own; the scorecard goes to
    reports/sensors/ like the CLI's."""
    with reachable_run_dir("katas-nfr-sensors-") as run_dir:
        yield run_check(
            plan_for(get_card("sensors"), short=True),
            run_dir=run_dir,
            reports_root=REPORTS_ROOT,
            progress=False,
        )


def test_the_short_plan_runs_the_cards_rate_for_less_time() -> None:
    card = get_card("sensors")
    short, full = plan_for(card, short=True), plan_for(card, short=False)
    rate, sensors = card_target(card, "ingest_readings_per_s"), card_target(card, "distinct_sensors")
    assert (short.ingest_target, short.sensors_target) == (full.ingest_target, full.sensors_target)
    assert (short.ingest_target, short.sensors_target) == (rate, sensors)
    assert short.sustained_s < full.sustained_s
    assert short.backfill_days == full.backfill_days


@pytest.mark.parametrize("metric", measured_metrics("sensors"))
def test_each_measured_nfr_meets_its_target(report: CheckReport, metric: str) -> None:
    assert_row_meets_target(report.card, report.scorecard, metric)


def test_nothing_acknowledged_was_lost(report: CheckReport) -> None:
    lost = report.scorecard.measurements["acknowledged_readings_lost"]
    assert lost.value == 0, lost.detail


def test_a_readings_query_spans_the_cold_and_the_hot_tier(report: CheckReport) -> None:
    tiers = report.scorecard.measurements["retention_tiers_query_s"]
    assert (tiers.detail or "").startswith("PASS"), tiers.detail


def test_the_ingest_rate_is_reported_against_the_raw_ceilings(report: CheckReport) -> None:
    for metric in ("ingest_vs_mqtt_ratio", "ingest_vs_broker_ratio"):
        ratio = report.scorecard.measurements[metric]
        assert not math.isnan(ratio.value), ratio.detail
        assert 0 < ratio.value < 1, ratio.detail


def test_the_check_passes_as_a_whole(report: CheckReport) -> None:
    assert report.problems == []


def test_the_scorecard_files_were_written(report: CheckReport) -> None:
    assert report.report_dir.parent == REPORTS_ROOT / "sensors"
    document = json.loads((report.report_dir / JSON_NAME).read_text())
    assert document["kata"] == "sensors"
    assert {o["metric"] for o in document["outcomes"] if o["metric"]} == set(measured_metrics("sensors"))
    assert [r["label"] for r in document["load_results"]] == [r.label for r in report.scorecard.load_results]
    assert len(document["load_results"]) == 2, "the fleet's load and the HVAC API's"
    assert "<svg" in (report.report_dir / HTML_NAME).read_text()
    assert (report.report_dir / "fleet_load.json").is_file()
