"""`katas bench infra` against the real servers: every measurement must produce a number, none an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from katas.infra import bench
from katas.infra.bench import BenchResult

pytestmark = pytest.mark.integration

EXPECTED_ROWS = [name for measurement in bench.MEASUREMENTS for name, _ in measurement.rows]


@pytest.fixture(scope="module")
def results() -> list[BenchResult]:
    """One short run of every measurement, shared by the tests of this module."""
    return bench.run_all(seconds=1)


def test_every_server_reports_a_positive_throughput(results: list[BenchResult]) -> None:
    assert [r.name for r in results] == EXPECTED_ROWS
    broken = [f"{r.name}: value={r.value!r} error={r.error}" for r in results if r.error or not r.value > 0]
    assert not broken, "measurements that failed:\n" + "\n".join(broken)
    for r in results:
        assert r.count > 0, r
        assert r.elapsed_s > 0, r
        assert "client" in r.cpu_percent, r


def test_write_json_keeps_every_row_and_the_machine(results: list[BenchResult], tmp_path: Path) -> None:
    path = tmp_path / "out" / "bench.json"
    bench.write_json(results, path)

    document = json.loads(path.read_text())
    rows = document["results"]
    assert [row["name"] for row in rows] == [r.name for r in results]
    for row, result in zip(rows, results, strict=True):
        assert row["value"] == pytest.approx(result.value)
        assert row["unit"] == result.unit
        assert row["error"] is None
        assert row["ok"] is True
    machine = document["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["python"].startswith("3.")
    assert machine["platform"]
    assert set(document["versions"]) >= {"tansu", "redis", "mosquitto", "chdb", "s3rver"}


def test_render_has_a_row_per_result(results: list[BenchResult]) -> None:
    assert bench.render(results).row_count == len(results)


def test_a_failing_measurement_becomes_error_rows_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(seconds: float) -> list[BenchResult]:
        raise RuntimeError("server would not start")

    def fine(seconds: float) -> list[BenchResult]:
        return [BenchResult("fine.op", 42.0, "ops/s", "stub", count=42, elapsed_s=1.0)]

    monkeypatch.setattr(
        bench,
        "MEASUREMENTS",
        (
            bench.Measurement((("broken.a", "msgs/s"), ("broken.b", "msgs/s")), broken),
            bench.Measurement((("fine.op", "ops/s"),), fine),
        ),
    )
    results = bench.run_all(seconds=0.1)

    assert [(r.name, r.value) for r in results] == [("broken.a", 0.0), ("broken.b", 0.0), ("fine.op", 42.0)]
    assert results[0].error == "RuntimeError: server would not start"
    assert results[2].error is None
    assert bench.render(results).row_count == 3
