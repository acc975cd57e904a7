"""The simulated fleet: deterministic, all four formats from 200 sources, and usable over every transport."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from katas.siem.framing import SyslogFramer, octet_frame
from katas.siem.normalize import NormalizedEvent, RawEnvelope, normalize
from katas.siem.parsing import TRANSPORTS, split_json_batch, split_winxml_batch
from katas.siem.samples import SOURCE_KINDS, SourceFleet, json_batch, winxml_batch

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC).timestamp()


def test_the_same_seed_gives_the_same_events() -> None:
    first = SourceFleet(200, seed=3, clock=lambda: NOW).events(500)
    assert first == SourceFleet(200, seed=3, clock=lambda: NOW).events(500)
    assert first != SourceFleet(200, seed=4, clock=lambda: NOW).events(500)


def test_a_fleet_of_200_has_every_kind_in_proportion() -> None:
    fleet = SourceFleet(200, seed=1, clock=lambda: NOW)
    assert len(fleet.sources) == 200
    assert len({source.id for source in fleet.sources}) == 200
    kinds = Counter(source.kind for source in fleet.sources)
    assert kinds == {
        "firewall-cef": 20,
        "firewall-iptables": 10,
        "linux-rfc3164": 50,
        "linux-rfc5424": 30,
        "windows": 50,
        "cloudtrail": 10,
        "app": 30,
    }


def test_events_come_over_every_transport_from_many_sources() -> None:
    events = SourceFleet(200, seed=1, clock=lambda: NOW).events(3000)
    assert {e.transport for e in events} == set(TRANSPORTS)
    assert len({e.source_id for e in events}) > 180


def test_small_fleets_still_have_one_source_of_each_kind() -> None:
    assert [s.kind for s in SourceFleet(7, seed=0).sources] == list(SOURCE_KINDS)
    fleet = SourceFleet(2, seed=0, clock=lambda: NOW)
    assert len(fleet.sources) == 2
    assert (
        len(
            fleet.api_key_created_then_used_from_new_ip("a", "AKIA0000000000000000", "192.0.2.1", "192.0.2.2")
        )
        == 4
    )


def test_syslog_events_survive_tcp_framing() -> None:
    events = [
        e for e in SourceFleet(200, seed=2, clock=lambda: NOW).events(1000) if e.transport == "syslog-tcp"
    ]
    stream = b"".join(octet_frame(e.payload) if i % 2 else e.payload + b"\n" for i, e in enumerate(events))
    framer = SyslogFramer()
    frames = [f for start in range(0, len(stream), 1000) for f in framer.feed(stream[start : start + 1000])]
    frames += framer.close()
    assert [f.message for f in frames] == [e.payload for e in events]


def test_http_events_survive_batching() -> None:
    events = SourceFleet(200, seed=2, clock=lambda: NOW).events(1000)
    json_events = [e.payload for e in events if e.transport == "http-json"]
    xml_events = [e.payload for e in events if e.transport == "http-winxml"]
    assert split_json_batch(json_batch(json_events)) == json_events
    assert split_json_batch(json_batch(json_events, ndjson=True)) == json_events
    assert split_winxml_batch(winxml_batch(xml_events)) == xml_events


def test_scenarios_end_now_in_order() -> None:
    fleet = SourceFleet(50, seed=5, clock=lambda: NOW)
    for events in (
        fleet.brute_force_then_success("u", "192.0.2.1", "linux"),
        fleet.brute_force_then_success("u", "192.0.2.1", "windows"),
        fleet.port_scan_then_connect("192.0.2.1", "10.0.0.1", [1, 2, 3], fmt="iptables"),
        fleet.new_admin_after_logon("u", "h", "windows"),
        fleet.new_admin_after_logon("u", "h", "linux"),
        fleet.api_key_created_then_used_from_new_ip("u", "AKIA0000000000000000", "192.0.2.1", "192.0.2.2"),
    ):
        stamps = []
        for raw in events:
            result = normalize(
                RawEnvelope.new(raw.source_id, raw.transport, raw.payload, received_at=NOW), None
            )
            assert isinstance(result, NormalizedEvent), result
            stamps.append(result.timestamp)
        assert stamps == sorted(stamps)
        assert stamps[-1] == "2025-03-10T12:00:00.000Z"
        assert len({raw.source_id for raw in events}) == 1


def test_generation_is_fast_enough_for_the_load_generator() -> None:
    import time

    fleet = SourceFleet(200, seed=0)
    started = time.perf_counter()
    fleet.events(2000)
    assert time.perf_counter() - started < 1.0  # well above 20,000 events/s of a burst on one core
