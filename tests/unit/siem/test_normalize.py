"""Normalization: every realistic sample becomes an ECS event with the fields the rules need; anything
else becomes a dead letter with a reason, and normalization never raises."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from katas.siem import normalize as normalize_module
from katas.siem.normalize import (
    ECS_FIELDS,
    DeadLetter,
    NormalizedEvent,
    RawEnvelope,
    format_timestamp,
    normalize,
)
from katas.siem.parsing import TRANSPORTS, ParseError, Transport
from katas.siem.pseudonymize import Pseudonymizer, is_pseudonym
from katas.siem.samples import RawEvent, SourceFleet, garbage_samples, syslog_3164

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC).timestamp()
PSEUDO = Pseudonymizer(b"normalize-test-key-0123456789")
RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def envelope(transport: Transport, payload: bytes, source: str = "src-1") -> RawEnvelope:
    return RawEnvelope.new(source, transport, payload, received_at=NOW + 1)


def event(
    raw: RawEvent | tuple[Transport, bytes], pseudonymizer: Pseudonymizer | None = None
) -> dict[str, Any]:
    if isinstance(raw, RawEvent):
        raw_envelope = envelope(raw.transport, raw.payload, raw.source_id)
    else:
        raw_envelope = envelope(*raw)
    result = normalize(raw_envelope, pseudonymizer, now=NOW + 2)
    assert isinstance(result, NormalizedEvent), result
    return result.fields


def fleet() -> SourceFleet:
    return SourceFleet(200, seed=7, clock=lambda: NOW)


def check_shape(fields: dict[str, Any]) -> None:
    assert set(fields) <= ECS_FIELDS
    assert all(value is not None and value != "" and value != [] for value in fields.values())
    assert RFC3339_MS.fullmatch(fields["@timestamp"])
    assert RFC3339_MS.fullmatch(fields["event.ingested"])
    assert fields["event.kind"] == "event"
    assert fields["labels.format"] in ("rfc5424", "rfc3164", "cef", "json", "winxml")
    for name in ("source.port", "destination.port", "process.pid", "event.severity"):
        assert isinstance(fields.get(name, 0), int)
    for name in ("event.category", "event.type", "related.user", "related.ip"):
        assert isinstance(fields.get(name, []), list)
    json.dumps(fields, allow_nan=False)


# ---------------------------------------------------------------------------------------------- the fleet


def test_every_fleet_sample_normalizes_with_the_ecs_shape() -> None:
    samples = fleet()
    seen_formats: set[str] = set()
    for raw in samples.events(3000):
        fields = event(raw, PSEUDO)
        check_shape(fields)
        assert fields["labels.source"] == raw.source_id
        assert fields["labels.transport"] == raw.transport
        assert fields["@timestamp"] == "2025-03-10T12:00:00.000Z"  # the event's own time, not the receipt
        for name in ("user.name", "user.email", "user.target.name", "source.ip", "destination.ip"):
            if name in fields:
                assert is_pseudonym(fields[name]), (name, fields)
        seen_formats.add(fields["labels.format"])
    assert seen_formats == {"rfc5424", "rfc3164", "cef", "json", "winxml"}


def by_action(raws: list[RawEvent]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for raw in raws:
        fields = event(raw)
        grouped.setdefault(str(fields.get("event.action")), []).append(fields)
    return grouped


def test_fleet_events_carry_the_fields_of_their_kind() -> None:
    grouped = by_action(fleet().events(4000))
    for ssh in grouped["ssh_login"]:
        assert ssh["event.dataset"] == "sshd"
        assert ssh["event.category"] == ["authentication"]
        assert ssh["event.outcome"] in ("success", "failure")
        assert {"user.name", "source.ip", "source.port", "host.name"} <= set(ssh)
    for logon in grouped["logged-in"] + grouped["logon-failed"]:
        assert logon["event.code"] in ("4624", "4625")
        assert logon["event.dataset"] == "windows.security"
        assert {"user.name", "source.ip", "source.port", "host.name", "event.outcome"} <= set(logon)
        assert "ffff" not in logon["source.ip"]  # IPv4-mapped addresses are stored as IPv4
    for verdict, kind, outcome in (("deny", "denied", "failure"), ("allow", "allowed", "success")):
        firewall = grouped[verdict]
        assert {f["labels.format"] for f in firewall} == {"cef", "rfc3164"}
        for fields in firewall:
            assert fields["event.dataset"] == "firewall"
            assert fields["event.type"] == ["connection", kind]
            assert fields["event.outcome"] == outcome
            assert {"source.ip", "destination.ip", "destination.port", "network.transport"} <= set(fields)
    for sudo in grouped["sudo"]:
        assert {"user.name", "user.target.name", "process.command_line"} <= set(sudo)
    for process in grouped["created-process"]:
        assert {"process.name", "process.pid", "process.command_line", "user.name"} <= set(process)
    for api in grouped["ListBuckets"]:
        assert api["event.dataset"] == "cloudtrail"
        assert {"user.name", "source.ip", "cloud.account.id", "cloud.region", "labels.access_key_id"} <= set(
            api
        )
    for login in grouped["login"]:
        assert login["event.category"] == ["authentication"]
        assert {"user.name", "user.email", "source.ip"} <= set(login)
    for session in grouped["session-opened"]:
        assert "user.name" in session
    for cron in grouped["cron"]:
        assert cron["user.name"] == "root"


# ---------------------------------------------------------------------------------------------- scenarios


def test_ssh_brute_force_then_success() -> None:
    raws = fleet().brute_force_then_success("alice", "203.0.113.50", "linux", attempts=6)
    events = [event(raw) for raw in raws]
    assert [e["event.outcome"] for e in events] == ["failure"] * 6 + ["success"]
    for fields in events:
        assert (fields["event.dataset"], fields["user.name"], fields["source.ip"]) == (
            "sshd",
            "alice",
            "203.0.113.50",
        )
        assert fields["event.category"] == ["authentication"]
    assert events[0]["@timestamp"] == "2025-03-10T11:59:48.000Z"
    assert events[-1]["@timestamp"] == "2025-03-10T12:00:00.000Z"
    assert len({e["host.name"] for e in events}) == 1


def test_windows_brute_force_then_success() -> None:
    raws = fleet().brute_force_then_success(
        "bob", "198.51.100.9", "windows", attempts=5, host="DC01.corp.example.com"
    )
    events = [event(raw) for raw in raws]
    assert [e["event.code"] for e in events] == ["4625"] * 5 + ["4624"]
    assert [e["event.outcome"] for e in events] == ["failure"] * 5 + ["success"]
    assert {(e["user.name"], e["source.ip"], e["host.name"]) for e in events} == {
        ("bob", "198.51.100.9", "DC01.corp.example.com")
    }


@pytest.mark.parametrize("platform", ["linux", "windows"])
def test_password_spray_then_success(platform: Any) -> None:
    users = ["ann", "ben", "cat", "dan", "eve"]
    events = [event(raw) for raw in fleet().password_spray_then_success(users, "192.0.2.200", platform)]
    assert [e["user.name"] for e in events] == [*users, "eve"]
    assert [e["event.outcome"] for e in events] == ["failure"] * 5 + ["success"]
    assert {e["source.ip"] for e in events} == {"192.0.2.200"}


@pytest.mark.parametrize("fmt", ["cef", "iptables"])
def test_port_scan_then_connect(fmt: Any) -> None:
    ports = list(range(20, 35))
    events = [
        event(raw)
        for raw in fleet().port_scan_then_connect("192.0.2.66", "10.0.0.5", ports, connect_port=22, fmt=fmt)
    ]
    assert [e["event.action"] for e in events] == ["deny"] * 15 + ["allow"]
    assert [e["destination.port"] for e in events] == [*ports, 22]
    assert {(e["source.ip"], e["destination.ip"], e["event.dataset"]) for e in events} == {
        ("192.0.2.66", "10.0.0.5", "firewall")
    }
    assert "denied" in events[0]["event.type"]
    assert "allowed" in events[-1]["event.type"]


def test_new_windows_admin_after_logon() -> None:
    logon, created, added = (
        event(raw)
        for raw in fleet().new_admin_after_logon(
            "mallory", "SRV-0007.corp.example.com", "windows", new_user="backdoor"
        )
    )
    assert (logon["event.code"], logon["user.name"], logon["event.outcome"]) == ("4624", "mallory", "success")
    assert (
        created["event.code"],
        created["event.action"],
        created["user.name"],
        created["user.target.name"],
    ) == ("4720", "added-user-account", "mallory", "backdoor")
    assert (added["event.code"], added["event.action"], added["user.name"], added["group.name"]) == (
        "4732",
        "added-member-to-group",
        "mallory",
        "Administrators",
    )
    assert created["event.category"] == added["event.category"] == ["iam"]
    assert {logon["host.name"], created["host.name"], added["host.name"]} == {"SRV-0007.corp.example.com"}


def test_new_linux_admin_after_logon() -> None:
    raws = fleet().new_admin_after_logon(
        "mallory", "web-042", "linux", new_user="backdoor", src_ip="203.0.113.99"
    )
    logon, sudo_add, created, sudo_mod, added = (event(raw) for raw in raws)
    assert (logon["event.action"], logon["event.outcome"], logon["user.name"]) == (
        "ssh_login",
        "success",
        "mallory",
    )
    assert (sudo_add["user.name"], sudo_add["user.target.name"]) == ("mallory", "root")
    assert "useradd" in sudo_add["process.command_line"]
    assert (created["event.action"], created["user.target.name"]) == ("added-user-account", "backdoor")
    assert "usermod -aG sudo" in sudo_mod["process.command_line"]
    assert (added["event.action"], added["user.target.name"], added["group.name"]) == (
        "added-member-to-group",
        "backdoor",
        "sudo",
    )
    assert {e["host.name"] for e in (logon, sudo_add, created, sudo_mod, added)} == {"web-042"}


def test_api_key_created_then_used_from_a_new_address() -> None:
    raws = fleet().api_key_created_then_used_from_new_ip(
        "carol", "AKIAEXAMPLEKEY000001", "198.51.100.20", "203.0.113.200"
    )
    login, listing, created, used = (event(raw) for raw in raws)
    assert (login["event.action"], login["event.category"], login["event.outcome"]) == (
        "ConsoleLogin",
        ["authentication"],
        "success",
    )
    assert "labels.access_key_id" not in listing
    assert (created["event.action"], created["labels.access_key_id"], created["source.ip"]) == (
        "CreateAccessKey",
        "AKIAEXAMPLEKEY000001",
        "198.51.100.20",
    )
    assert (created["user.name"], created["user.target.name"], created["event.category"]) == (
        "carol",
        "carol",
        ["iam"],
    )
    assert (used["event.action"], used["labels.access_key_id"], used["source.ip"]) == (
        "ListBuckets",
        "AKIAEXAMPLEKEY000001",
        "203.0.113.200",
    )
    assert created["cloud.account.id"] == used["cloud.account.id"]
    assert created["@timestamp"] < used["@timestamp"]


def test_audit_tampering_then_new_key() -> None:
    stop, created = (
        event(raw)
        for raw in fleet().audit_tampering_then_new_key("dave", "AKIANEWKEY0000000001", "198.51.100.30")
    )
    assert (stop["event.action"], stop["event.outcome"]) == ("StopLogging", "success")
    assert created["labels.access_key_id"] == "AKIANEWKEY0000000001"
    assert stop["cloud.account.id"] == created["cloud.account.id"]


def test_scenarios_join_on_pseudonyms() -> None:
    raws = fleet().new_admin_after_logon("mallory", "web-042", "linux")
    events = [event(raw, PSEUDO) for raw in raws]
    mallory = PSEUDO.pseudonym("user", "mallory")
    assert events[0]["user.name"] == events[1]["user.name"] == mallory
    assert "mallory" not in json.dumps(events)


# ---------------------------------------------------------------------------------------------- dead letters


@pytest.mark.parametrize("garbage", garbage_samples(), ids=lambda g: g.reason)
def test_garbage_is_dead_lettered_with_its_reason(garbage: Any) -> None:
    raw = envelope(garbage.transport, garbage.payload)
    letter = normalize(raw, PSEUDO, now=NOW + 2)
    assert isinstance(letter, DeadLetter)
    assert garbage.reason in letter.reason
    assert (letter.id, letter.payload, letter.source, letter.stage, letter.failed_at) == (
        raw.id,
        garbage.payload,
        "src-1",
        "normalize",
        NOW + 2,
    )
    assert letter.replay() == raw


def test_garbage_covers_every_transport() -> None:
    assert {g.transport for g in garbage_samples()} == set(TRANSPORTS)


def test_a_dead_letter_replays_after_a_parser_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"<13>Mar 10 11:59:00 host app: \xe9t\xe9"  # Latin-1, which the parser refuses
    letter = normalize(envelope("syslog-udp", payload), PSEUDO)
    assert isinstance(letter, DeadLetter)
    assert letter.reason.startswith("payload is not UTF-8")
    stored = DeadLetter.from_json(letter.to_json())
    original_parse = normalize_module.parse

    def fixed_parse(transport: str, payload: bytes, *, received_at: float) -> Any:
        return original_parse(transport, payload.decode("latin-1").encode(), received_at=received_at)

    monkeypatch.setattr(normalize_module, "parse", fixed_parse)
    replayed = normalize(stored.replay(), PSEUDO)
    assert isinstance(replayed, NormalizedEvent)
    assert replayed.id == letter.id
    assert replayed.fields["message"] == "été"


def test_a_mapper_bug_is_dead_lettered_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("oops")

    monkeypatch.setattr(normalize_module, "to_ecs", broken)
    letter = normalize(envelope("http-json", b"{}"), PSEUDO)
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "normalize: KeyError: 'oops'"


@pytest.mark.parametrize("transport", TRANSPORTS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=400))
def test_normalize_never_raises_on_arbitrary_bytes(transport: Transport, payload: bytes) -> None:
    result = normalize(envelope(transport, payload), PSEUDO)
    assert isinstance(result, NormalizedEvent | DeadLetter)
    if isinstance(result, NormalizedEvent):
        check_shape(result.fields)
    else:
        assert result.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
ecs_keys = st.sampled_from(
    [
        *sorted(ECS_FIELDS),
        "user",
        "email",
        "client_ip",
        "timestamp",
        "time",
        "eventName",
        "eventSource",
        "userIdentity",
        "action",
        "outcome",
        "status",
        "host",
    ]
)


@settings(max_examples=120, deadline=None)
@given(body=st.dictionaries(ecs_keys | st.text(max_size=10), json_values, max_size=8))
def test_normalize_never_raises_on_arbitrary_json_objects(body: dict[str, Any]) -> None:
    result = normalize(envelope("http-json", json.dumps(body).encode()), PSEUDO)
    if isinstance(result, NormalizedEvent):
        check_shape(result.fields)
    else:
        assert result.reason.startswith("json:"), result.reason


syslog_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)


@settings(max_examples=300, deadline=None)
@given(
    program=st.sampled_from(["sshd", "sudo", "useradd", "usermod", "gpasswd", "CRON", "kernel", "app"]),
    message=syslog_text,
)
def test_normalize_never_raises_on_arbitrary_syslog_lines(program: str, message: str) -> None:
    payload = syslog_3164(NOW, "host", program, 42, message)
    result = normalize(envelope("syslog-udp", payload), PSEUDO)
    assert isinstance(result, NormalizedEvent), result
    check_shape(result.fields)


# ---------------------------------------------------------------------------------------------- the messages


def test_envelope_json_round_trip_and_contract() -> None:
    raw = envelope("syslog-tcp", b"\x00\xff<13>binary")
    data = json.loads(raw.to_json())
    assert set(data) == {"id", "received_at", "source", "transport", "payload_b64"}
    assert RawEnvelope.from_json(raw.to_json()) == raw
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", raw.id
    )  # UUIDv7


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "not a JSON object"),
        ("{", "not valid JSON"),
        (
            '{"id": "x", "source": "s", "transport": "fax", "payload_b64": "", "received_at": 1}',
            "unknown transport",
        ),
        (
            '{"id": "x", "source": "s", "transport": "http-json", "payload_b64": "***", "received_at": 1}',
            "not base64",
        ),
        (
            '{"id": "x", "source": "s", "transport": "http-json", "payload_b64": "", "received_at": "now"}',
            "received_at",
        ),
    ],
)
def test_a_broken_envelope_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        RawEnvelope.from_json(text)


def test_dead_letter_json_follows_the_contract() -> None:
    letter = normalize(envelope("http-json", b"[1]"), PSEUDO, now=NOW)
    assert isinstance(letter, DeadLetter)
    data = json.loads(letter.to_json())
    assert set(data) == {
        "id",
        "received_at",
        "source",
        "transport",
        "payload_b64",
        "reason",
        "stage",
        "failed_at",
    }
    assert DeadLetter.from_json(letter.to_json()) == letter


def test_normalized_event_json_round_trip() -> None:
    fields = event(("http-json", b'{"user": "zoe", "message": "hi"}'), PSEUDO)
    result = NormalizedEvent(fields)
    assert NormalizedEvent.from_json(result.to_json()) == result
    assert result.id == fields["event.id"]
    assert result.source == "src-1"


# ---------------------------------------------------------------------------------------------- details


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert format_timestamp(datetime(2025, 1, 2, 3, 4, 5, 678901, UTC)) == "2025-01-02T03:04:05.678Z"
    fields = event(("syslog-tcp", b"<13>1 2025-03-10T13:30:00.5+01:30 h app - - - x"))
    assert fields["@timestamp"] == "2025-03-10T12:00:00.500Z"


def test_an_event_without_its_own_time_takes_the_time_of_receipt() -> None:
    fields = event(("syslog-tcp", b"<13>1 - h app - - - x"))
    assert fields["@timestamp"] == format_timestamp(datetime.fromtimestamp(NOW + 1, UTC))


def test_app_json_cannot_overwrite_pipeline_fields() -> None:
    fields = event(
        ("http-json", b'{"event.id": "forged", "labels": {"source": "forged"}, "event.kind": "alert"}')
    )
    assert fields["event.id"] != "forged"
    assert fields["labels.source"] == "src-1"
    assert fields["event.kind"] == "event"


def test_app_json_values_of_the_wrong_type_are_left_out() -> None:
    fields = event(
        (
            "http-json",
            b'{"source": {"ip": "not-an-ip", "port": 70000}, "user": {"name": ["x"]}, "event": {"outcome": "maybe"}}',
        )
    )
    assert not {"source.ip", "source.port", "user.name", "event.outcome"} & set(fields)


def test_app_json_epoch_timestamps() -> None:
    assert event(("http-json", b'{"time": 1741608000}'))["@timestamp"] == "2025-03-10T12:00:00.000Z"
    assert event(("http-json", b'{"time": 1741608000123}'))["@timestamp"] == "2025-03-10T12:00:00.123Z"


def test_cef_without_a_verdict_is_a_generic_cef_event() -> None:
    line = b"<134>Mar 10 11:00:00 ids-1 CEF:0|Snort|IDS|3.1|1:2001219|ET SCAN SSH|High|src=192.0.2.4 dst=10.0.0.1 suser=root outcome=failure"
    fields = event(("syslog-udp", line))
    assert (
        fields["event.dataset"],
        fields["event.action"],
        fields["event.severity"],
        fields["event.outcome"],
    ) == ("cef", "ET SCAN SSH", 8, "failure")
    assert fields["user.name"] == "root"


def test_sshd_invalid_user_lines_have_no_outcome() -> None:
    fields = event(
        ("syslog-udp", b"<38>Mar 10 11:00:00 h sshd[1]: Invalid user admin from 192.0.2.4 port 4000")
    )
    assert fields["event.action"] == "invalid_user"
    assert "event.outcome" not in fields


def test_parse_errors_are_value_errors_with_a_reason() -> None:
    error = ParseError("json: x")
    assert isinstance(error, ValueError)
    assert error.reason == "json: x"
