"""Detection: the shipped Sigma rules compiled by pySigma's SQLite backend, run on batches of ECS events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sigma.collection import SigmaCollection
from sigma.rule import SigmaRule

from katas.siem.detection import (
    LIST_FIELDS,
    MAX_ROWS_PER_EVENT,
    RULES_DIR,
    Detector,
    compile_detection_rules,
    load_rules,
)

pytestmark = pytest.mark.unit

RULES = load_rules()
DETECTOR = Detector.from_rules(RULES)


def event(**fields: Any) -> dict[str, Any]:
    """An ECS event; keyword arguments use __ for the dots of ECS names."""
    base = {"event.id": str(uuid.uuid4()), "@timestamp": "2025-03-01T10:00:00.000Z", "event.kind": "event"}
    return {**base, **{key.replace("__", "."): value for key, value in fields.items()}}


def names(events: list[dict[str, Any]]) -> list[str | None]:
    return sorted({m.rule_name for m in DETECTOR.match(events)}, key=str)


# One event per rule that it must match, and everyday events it must not.
POSITIVE: dict[str, list[dict[str, Any]]] = {
    "ssh_auth_failure": [
        event(
            event__dataset="sshd",
            event__category=["authentication"],
            event__outcome="failure",
            user__name="a",
        ),
        event(
            event__dataset="sshd", message="Failed password for invalid user admin from 1.2.3.4 port 22 ssh2"
        ),
    ],
    "ssh_auth_success": [
        event(event__dataset="sshd", event__category=["authentication"], event__outcome="success"),
        event(event__dataset="sshd", message="Accepted publickey for deploy from 10.0.0.1 port 5555 ssh2"),
    ],
    "windows_logon_failure": [event(event__code="4625", event__dataset="windows.security")],
    "windows_logon_success": [event(event__code="4624", event__dataset="windows.security")],
    "logon_success": [
        event(event__code="4624"),
        event(event__dataset="sshd", message="Accepted password for bob from 10.0.0.1 port 5555 ssh2"),
    ],
    "local_admin_created": [
        event(event__code="4720"),
        event(event__code="4732"),
        event(process__command_line="/usr/sbin/useradd -m -s /bin/bash backdoor"),
        event(process__command_line="/usr/sbin/usermod -aG sudo backdoor"),
        event(process__command_line="gpasswd -a backdoor wheel"),
    ],
    "firewall_denied": [
        event(event__dataset="firewall", event__type=["connection", "denied"], destination__port=22),
        event(event__dataset="firewall", event__action="DROP", destination__port=23),
    ],
    "firewall_allowed": [
        event(event__dataset="firewall", event__type=["connection", "allowed"], destination__port=22),
        event(event__dataset="firewall", event__action="accept"),
    ],
    "cloud_access_key_created": [
        event(
            event__dataset="cloudtrail",
            event__action="CreateAccessKey",
            labels__access_key_id="AKIA1",
            source__ip="1.1.1.1",
        )
    ],
    "cloud_access_key_used": [
        event(
            event__dataset="cloudtrail",
            event__action="ListBuckets",
            labels__access_key_id="AKIA1",
            source__ip="1.1.1.1",
        )
    ],
    "cloud_audit_tampering": [event(event__dataset="cloudtrail", event__action="StopLogging")],
}

BENIGN = [
    event(event__dataset="sshd", message="Connection closed by 10.0.0.1 port 5555 [preauth]"),
    event(event__dataset="sshd", event__category=["session"], event__outcome="unknown"),
    event(
        event__dataset="app",
        event__category=["authentication"],
        event__outcome="failure",
        message="Failed password",
    ),
    event(event__code="4634", event__dataset="windows.security"),  # logoff
    event(event__code="46250"),
    event(process__command_line="/usr/bin/usermod -c 'Full Name' alice"),  # not an admin group
    event(event__dataset="firewall", event__type=["connection", "end"], event__action="teardown"),
    event(event__dataset="cloudtrail", event__action="ListBuckets", source__ip="1.1.1.1"),  # no key id
    event(event__dataset="cloudtrail", event__action="StopLogging", event__outcome="failure"),
    event(
        event__dataset="cloudtrail",
        event__action="CreateAccessKey",
        labels__access_key_id="AKIA1",
        event__outcome="failure",
    ),
    event(message="nothing to see"),
    event(),
]


def test_every_detection_rule_compiles_to_a_query_on_ecs_names() -> None:
    detection_rules = [r for r in RULES if isinstance(r, SigmaRule)]
    assert len(DETECTOR.rules) == len(detection_rules) >= 10
    for rule in DETECTOR.rules:
        uuid.UUID(rule.id)
        assert rule.queries
        assert all(q.startswith("SELECT * FROM ecs_events WHERE ") for q in rule.queries)
        assert rule.level in {"informational", "low", "medium", "high", "critical"}
        assert rule.title
        assert rule.description
    assert {r.logsource.product for r in detection_rules} == {"kata-siem"}
    assert set(POSITIVE) == {r.name for r in DETECTOR.rules}


@pytest.mark.parametrize("rule", sorted(POSITIVE))
def test_each_rule_matches_its_events(rule: str) -> None:
    for e in POSITIVE[rule]:
        assert rule in names([e]), e


def test_everyday_events_match_no_alerting_stage() -> None:
    assert names(BENIGN) == []


def test_matching_ignores_case_and_reads_numbers_and_strings_alike() -> None:
    assert names(
        [event(event__dataset="SSHD", event__category=["Authentication"], event__outcome="FAILURE")]
    ) == ["ssh_auth_failure"]
    # event.code is a string in the contract; the rule's '4625' and a stray integer both match.
    assert names([event(event__code=4625)]) == ["windows_logon_failure"]


def test_a_list_field_matches_when_any_element_does() -> None:
    e = event(
        event__dataset="firewall", event__type=["connection", "denied"], related__ip=["1.1.1.1", "2.2.2.2"]
    )
    matches = DETECTOR.match([e])
    assert [m.rule_name for m in matches] == ["firewall_denied"]  # once, though the event spans 4 rows
    assert matches[0].event is e


def test_matches_come_in_batch_order_and_carry_the_event() -> None:
    batch = [POSITIVE["windows_logon_failure"][0], BENIGN[0], POSITIVE["cloud_audit_tampering"][0]]
    matches = DETECTOR.match(batch)
    assert [m.event_id for m in matches] == [batch[0]["event.id"], batch[2]["event.id"]]
    assert [m.rule_name for m in matches] == ["windows_logon_failure", "cloud_audit_tampering"]
    assert matches[0].level == "low"
    assert matches[0].title == "Windows logon failure (4625)"
    assert DETECTOR.match([]) == []
    # The batch table is emptied after each batch: nothing leaks into the next one.
    assert DETECTOR.match([BENIGN[0]]) == []


CUSTOM = """
title: custom
id: 7a0c5c8e-3f1d-4d2a-8e55-1b7b6f0e4a01
name: custom
logsource:
  product: kata-siem
detection:
  selection:
    destination.port|lt: 1024
    user.name|re: '^adm(in)?[0-9]*$'
    source.ip|cidr: 10.0.0.0/8
  condition: selection
"""


def test_modifiers_the_backend_emits_work_on_the_batch_table() -> None:
    detector = Detector.from_rules(SigmaCollection.from_yaml(CUSTOM))
    hit = event(destination__port=22, user__name="admin7", source__ip="10.1.2.3")
    assert [m.rule_name for m in detector.match([hit])] == ["custom"]
    for miss in (
        {
            **hit,
            "destination.port": 8080,
        },  # numeric comparison, not text ('8080' < '1024' as text is false too)
        {**hit, "destination.port": 999, "user.name": "root"},
        {**hit, "destination.port": 999, "source.ip": "11.1.2.3"},
    ):
        assert detector.match([miss]) == []
    assert [m.rule_name for m in detector.match([{**hit, "destination.port": 999}])] == ["custom"]


def test_a_rule_that_negates_a_list_field_is_refused() -> None:
    negating = CUSTOM.replace(
        "  condition: selection",
        "  noise:\n    event.category: process\n  condition: selection and not noise",
    )
    with pytest.raises(ValueError, match="negates list field"):
        compile_detection_rules(SigmaCollection.from_yaml(negating))
    assert "event.category" in LIST_FIELDS


def test_rules_load_from_the_rules_folder_by_path() -> None:
    detector = Detector.from_path(RULES_DIR)
    assert [r.id for r in detector.rules] == [r.id for r in DETECTOR.rules]


def test_an_event_with_huge_lists_is_bounded_and_still_matches() -> None:
    e = event(
        event__dataset="firewall",
        event__type=["connection", "denied"],
        event__category=[f"c{i}" for i in range(40)],
        related__ip=[f"10.0.0.{i}" for i in range(40)],
    )
    assert MAX_ROWS_PER_EVENT < 2 * 40 * 40
    assert names([e]) == ["firewall_denied"]


ecs_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.text(st.characters(categories=["Cs", "Ll"]), max_size=5),  # lone surrogates, as json.loads may produce
    st.lists(st.text(max_size=10), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
ecs_events = st.dictionaries(
    st.sampled_from([*sorted(DETECTOR.columns), "event.id", "source.port", "event.severity"]),
    ecs_values,
    max_size=8,
)


known_events = st.sampled_from([e for events in POSITIVE.values() for e in events] + BENIGN)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            ecs_events,
            known_events,
            st.builds(lambda known, noise: {**known, **noise}, known_events, ecs_events),
        ),
        max_size=6,
    )
)
def test_a_batch_matches_exactly_what_its_events_match_alone(batch: list[dict[str, Any]]) -> None:
    """Arbitrary field values never break the batch, and batching never changes a verdict."""
    together = [(m.rule_id, id(m.event)) for m in DETECTOR.match(batch)]
    alone = [(m.rule_id, id(m.event)) for e in batch for m in DETECTOR.match([e])]
    assert together == alone
