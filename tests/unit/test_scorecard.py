"""The scorecard: NFR outcomes, the rich table, and the JSON + HTML report (no servers)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from katas.catalog import KataCard
from katas.scorecard import (
    HTML_NAME,
    JSON_NAME,
    Measurement,
    Scorecard,
    load_scorecard,
)
from loadgen import LoadResult, new_histogram

pytestmark = pytest.mark.unit

WHEN = datetime(2026, 11, 29, 5, 15, 0, tzinfo=UTC)


def make_card() -> KataCard:
    return KataCard.model_validate(
        {
            "id": "test_kata",
            "number": 9,
            "title": "Test <Kata> & friends",
            "summary": "a card made up for the scorecard tests",
            "statement": "Ingest events and answer queries.",
            "functional": ["ingest events"],
            "scale": {"factor": "1/1000", "why": "one laptop"},
            "nfr": [
                {
                    "id": "ingest_rate",
                    "name": "Ingest rate",
                    "production": "1M events/s",
                    "miniature": "1,000 events/s",
                    "metric": "ingest_eps",
                    "op": ">=",
                    "target": 1000,
                    "unit": "events/s",
                },
                {
                    "id": "query_p99",
                    "name": "Query p99",
                    "production": "p99 < 1 s",
                    "miniature": "p99 <= 250 ms",
                    "metric": "query_p99_ms",
                    "op": "<=",
                    "target": 250,
                    "unit": "ms",
                },
                {
                    "id": "recovery",
                    "name": "Recovery time",
                    "production": "RTO 5 min",
                    "miniature": "RTO 30 s",
                    "metric": "rto_s",
                    "op": "<=",
                    "target": 30,
                    "unit": "s",
                },
                {
                    "id": "retention",
                    "name": "Retention",
                    "production": "7 years",
                    "miniature": "not at this scale",
                    "note": "seven years cannot be shown in a workshop",
                },
            ],
            "component": [{"name": "ingest", "expects": "an ingest API"}],
            "mistake": [{"name": "no-backpressure", "text": "unbounded queues", "structural": "bounded"}],
        }
    )


def make_load_result(label: str, latencies_us: list[int], throughput: list[int]) -> LoadResult:
    h = new_histogram()
    for v in latencies_us:
        h.record_value(v)
    return LoadResult.from_histogram(
        h,
        label=label,
        profile="constant:100:3",
        intended=len(latencies_us) + 1,
        started=len(latencies_us) + 1,
        errors={"TimeoutError": 1},
        error_samples=["TimeoutError: <slow> & late"],
        timed_out=0,
        delayed_starts=0,
        duration_s=3.0,
        throughput=throughput,
    )


def make_scorecard(measured: dict[str, float | Measurement] | None = None) -> Scorecard:
    if measured is None:
        measured = {
            "ingest_eps": 1520.0,  # >= 1000: pass
            "query_p99_ms": Measurement("query_p99_ms", 410.5, "ms", "p99 over 2,000 queries"),  # fail
            # rto_s missing: not measured
            "consumer_lag_max": Measurement("consumer_lag_max", 42, "records", "extra, no NFR row"),
        }
    results = [
        make_load_result("ingest", [1000 + 37 * i for i in range(300)], [100, 100, 99]),
        make_load_result("query", [5000 + 900 * i for i in range(200)], [70, 65, 65]),
    ]
    return Scorecard(make_card(), measured, results, timestamp=WHEN)


def test_outcome_statuses() -> None:
    card = make_scorecard()
    statuses = {o.nfr.id: (o.status, o.measured) for o in card.outcomes()}
    assert statuses == {
        "ingest_rate": ("pass", 1520.0),
        "query_p99": ("fail", 410.5),
        "recovery": ("not measured", None),
        "retention": ("not measurable here", None),
    }
    assert not card.passed()
    assert [m.metric for m in card.extra_measurements()] == ["consumer_lag_max"]


def test_passed_ignores_rows_that_were_not_measured() -> None:
    card = make_scorecard({"ingest_eps": 1000.0, "query_p99_ms": 250.0})  # both exactly on target
    assert [o.status for o in card.outcomes()] == ["pass", "pass", "not measured", "not measurable here"]
    assert card.passed()
    assert make_scorecard({}).passed()  # nothing measured, nothing failed
    assert make_scorecard({"ingest_eps": float("nan")}).outcomes()[0].status == "not measured"


def test_render_table_shows_every_row() -> None:
    console = Console(record=True, width=200, color_system=None)
    console.print(make_scorecard().render_table())
    text = console.export_text()
    for fragment in (
        "Ingest rate",
        "1M events/s",
        "1,000 events/s",
        "1,520 events/s",
        "410.5 ms",
        "pass",
        "fail",
    ):
        assert fragment in text
    assert "not measured" in text
    assert "not measurable here" in text


def test_write_json_and_html(tmp_path: Path) -> None:
    card = make_scorecard()
    out = card.write(tmp_path)
    assert out == tmp_path / "test_kata" / "20261129T051500Z"
    data = json.loads((out / JSON_NAME).read_text())
    assert data["kata"] == "test_kata"
    assert data["timestamp"] == "20261129T051500Z"
    assert data["passed"] is False
    assert {"cpu_count", "python", "platform"} <= set(data["machine"])
    assert [o["status"] for o in data["outcomes"]] == ["pass", "fail", "not measured", "not measurable here"]
    assert data["extra_measurements"] == ["consumer_lag_max"]
    assert [r["label"] for r in data["load_results"]] == ["ingest", "query"]
    assert all(isinstance(r["histogram"], str) for r in data["load_results"])

    page = (out / HTML_NAME).read_text()
    assert page.count("<svg") == 2  # latency by percentile, throughput over time
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", page, re.IGNORECASE)
    assert "<script" not in page
    assert "<link" not in page
    assert "Test &lt;Kata&gt; &amp; friends" in page  # text is escaped
    assert "&lt;slow&gt; &amp; late" in page
    for status in ("pass", "fail", "not-measured", "not-measurable-here"):
        assert f'<tr class="{status}">' in page

    again = card.write(tmp_path)  # same kata, same second: a new directory, nothing overwritten
    assert again == tmp_path / "test_kata" / "20261129T051500Z-2"


def test_html_without_load_results(tmp_path: Path) -> None:
    card = Scorecard(make_card(), {"ingest_eps": 900}, timestamp=WHEN)
    page = (card.write(tmp_path) / HTML_NAME).read_text()
    assert "<svg" not in page
    assert '<tr class="fail">' in page


def test_json_round_trip(tmp_path: Path) -> None:
    card = make_scorecard()
    out = card.write(tmp_path)
    back = load_scorecard(out / JSON_NAME)
    assert load_scorecard(out).to_dict() == back.to_dict()  # a directory works too
    assert back.card == card.card
    assert back.timestamp == WHEN
    assert back.machine == card.machine
    assert back.outcomes() == card.outcomes()
    assert back.measurements == card.measurements
    assert back.measurements["query_p99_ms"].detail == "p99 over 2,000 queries"
    assert back.load_results == card.load_results
    assert back.to_dict() == card.to_dict()


def test_naive_timestamp_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Scorecard(make_card(), {}, timestamp=datetime(2026, 1, 1))
