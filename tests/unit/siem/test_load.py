"""The SIEM load generator's traffic, without servers: per-source batches, unique attack injections, and
the refusals before any traffic is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from katas.siem.load import ATTACK_SCENARIOS, SiemTraffic, build_attack, main, read_endpoints
from katas.siem.samples import SourceFleet
from loadgen.siem import SiemSender
from loadgen.stack import EXIT_NOT_RUNNING, EXIT_USAGE, StackNotRunningError

NO_SENDER = cast(SiemSender, None)  # batches and attacks are drawn without sending anything


def test_every_operation_is_a_full_batch_of_one_source() -> None:
    traffic = SiemTraffic(NO_SENDER, batch=20, seed=3)
    batches = [traffic.next_batch() for _ in range(300)]
    assert all(len(batch) == 20 for batch in batches)
    assert all(len({event.source_id for event in batch}) == 1 for batch in batches)
    assert all(len({event.transport for event in batch}) == 1 for batch in batches)
    sources = {batch[0].source_id for batch in batches}
    assert len(sources) > 100, "the fleet's sources take turns"


@pytest.mark.parametrize("scenario", ATTACK_SCENARIOS)
def test_each_attack_injection_carries_values_of_its_own(scenario: str) -> None:
    fleet = SourceFleet(n_sources=200, seed=1)
    first, second = (build_attack(fleet, scenario, serial, "abc123") for serial in (1, 2))
    assert first.events
    assert first.completing_event in first.events
    assert [*first.before, first.completing_event, *first.after] == first.events
    assert first.tag != second.tag
    payloads = b"".join(event.payload for event in first.events)
    assert first.tag.encode() in payloads or first.tag.upper().encode() in payloads.upper()


def test_an_unknown_scenario_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown attack scenario 'nope'"):
        build_attack(SourceFleet(n_sources=10, seed=1), "nope", 1, "r")


def _endpoints(tmp_path: Path, **values: Any) -> Path:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps(values))
    return path


def test_endpoints_must_exist_be_complete_and_be_local(tmp_path: Path) -> None:
    with pytest.raises(StackNotRunningError, match="katas up siem"):
        read_endpoints(tmp_path / "missing.json")
    with pytest.raises(StackNotRunningError, match="syslog_tcp"):
        read_endpoints(_endpoints(tmp_path, syslog_udp="127.0.0.1:1", http_ingest="http://127.0.0.1:2"))
    remote = _endpoints(
        tmp_path, syslog_udp="127.0.0.1:1", syslog_tcp="10.0.0.5:2", http_ingest="http://127.0.0.1:3"
    )
    with pytest.raises(ValueError, match="only sends to loopback; syslog_tcp"):
        read_endpoints(remote)
    local = _endpoints(
        tmp_path, syslog_udp="127.0.0.1:1", syslog_tcp="localhost:2", http_ingest="http://[::1]:3"
    )
    assert read_endpoints(local)["syslog_tcp"] == "localhost:2"


def test_main_refuses_a_bad_profile_and_a_missing_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--profile", "constant:ten:30"]) == EXIT_USAGE
    assert "error:" in capsys.readouterr().err
    assert main(["--endpoints", str(tmp_path / "none.json")]) == EXIT_NOT_RUNNING
    assert "the siem stack is not running" in capsys.readouterr().err
