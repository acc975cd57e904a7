"""The correlation engine over the shipped Sigma rules, with the in-memory window store (no servers).

Events are plain dicts shaped like contracts.md's normalized ECS events; the detection stage is the real one
(pySigma's SQLite backend), so each scenario runs rules end to end: events -> matches -> alerts.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from katas.siem.correlation import (
    DEFAULT_MAX_ENTRIES,
    Alert,
    CorrelationEngine,
    InMemoryWindowStore,
    WindowStore,
    correlation_rules,
    fingerprint,
    parse_timestamp,
)
from katas.siem.detection import Detector, load_rules

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC).timestamp()
RULES = load_rules()
DETECTOR = Detector.from_rules(RULES)
NAMES = {rule.id: rule.name for rule in correlation_rules(RULES)}
OUTPUT_RULES = {rule.name for rule in correlation_rules(RULES) if rule.output}


# ------------------------------------------------------------------------------------- event builders
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(ts: float, source: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "event.id": str(uuid.uuid4()),
        "@timestamp": iso(ts),
        "event.ingested": iso(ts + 0.2),
        "event.kind": "event",
        "labels.source": source,
        **fields,
    }


def ssh(ts: float, user: str, ip: str, ok: bool, host: str = "web-1") -> dict[str, Any]:
    verb = "Accepted" if ok else "Failed"
    return event(
        ts,
        f"syslog-{host}",
        {
            "event.category": ["authentication"],
            "event.type": ["start"] if ok else ["start", "denied"],
            "event.action": "ssh_login",
            "event.outcome": "success" if ok else "failure",
            "event.dataset": "sshd",
            "host.name": host,
            "user.name": user,
            "source.ip": ip,
            "source.port": 50022,
            "process.name": "sshd",
            "related.user": [user],
            "related.ip": [ip],
            "message": f"{verb} password for {user} from {ip} port 50022 ssh2",
            "labels.format": "rfc3164",
        },
    )


def win_logon(ts: float, user: str, ip: str, ok: bool, host: str = "dc-1") -> dict[str, Any]:
    return event(
        ts,
        f"winlog-{host}",
        {
            "event.category": ["authentication"],
            "event.type": ["start"],
            "event.action": "logged-in" if ok else "logon-failed",
            "event.outcome": "success" if ok else "failure",
            "event.code": "4624" if ok else "4625",
            "event.dataset": "windows.security",
            "host.name": host,
            "user.name": user,
            "source.ip": ip,
            "labels.format": "winxml",
        },
    )


def win_account(
    ts: float, actor: str, new_user: str, code: str = "4720", host: str = "srv-1"
) -> dict[str, Any]:
    return event(
        ts,
        f"winlog-{host}",
        {
            "event.category": ["iam"],
            "event.type": ["user", "creation"] if code == "4720" else ["group", "change"],
            "event.action": "added-user-account" if code == "4720" else "added-member-to-group",
            "event.outcome": "success",
            "event.code": code,
            "event.dataset": "windows.security",
            "host.name": host,
            "user.name": actor,
            "user.target.name": new_user,
            "labels.format": "winxml",
        },
    )


def sudo(ts: float, user: str, command: str, host: str = "web-1") -> dict[str, Any]:
    return event(
        ts,
        f"syslog-{host}",
        {
            "event.category": ["process"],
            "event.type": ["start"],
            "event.action": "sudo",
            "event.outcome": "success",
            "event.dataset": "sudo",
            "host.name": host,
            "user.name": user,
            "process.name": "sudo",
            "process.command_line": command,
            "message": f"{user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; COMMAND={command}",
            "labels.format": "rfc3164",
        },
    )


def fw(ts: float, src: str, dst: str, port: int, allowed: bool) -> dict[str, Any]:
    return event(
        ts,
        "fw-edge",
        {
            "event.category": ["network"],
            "event.type": ["connection", "allowed" if allowed else "denied"],
            "event.action": "accept" if allowed else "drop",
            "event.outcome": "success" if allowed else "failure",
            "event.dataset": "firewall",
            "source.ip": src,
            "source.port": 40000 + port,
            "destination.ip": dst,
            "destination.port": port,
            "network.transport": "tcp",
            "labels.format": "cef",
        },
    )


def cloud(
    ts: float, action: str, key: str, ip: str, account: str = "111122223333", outcome: str = "success"
) -> dict[str, Any]:
    return event(
        ts,
        "cloudtrail",
        {
            "event.category": ["iam"] if "Key" in action else ["configuration"],
            "event.type": ["info"],
            "event.action": action,
            "event.outcome": outcome,
            "event.dataset": "cloudtrail",
            "cloud.provider": "aws",
            "cloud.account.id": account,
            "cloud.region": "eu-west-1",
            "user.name": "deploy-bot",
            "source.ip": ip,
            "labels.access_key_id": key,
            "labels.format": "json",
        },
    )


# ------------------------------------------------------------------------------------------- scenarios
def ssh_bruteforce(t: float, user: str = "alice", ip: str = "203.0.113.10") -> list[dict[str, Any]]:
    return [ssh(t + 10 * i, user, ip, ok=False) for i in range(6)] + [ssh(t + 70, user, ip, ok=True)]


def windows_bruteforce(t: float, ip: str = "198.51.100.7") -> list[dict[str, Any]]:
    return [win_logon(t + 5 * i, f"user{i % 2}", ip, ok=False) for i in range(6)] + [
        win_logon(t + 40, "user1", ip, ok=True)
    ]


def port_scan(t: float, src: str = "192.0.2.66", dst: str = "10.0.0.5") -> list[dict[str, Any]]:
    return [fw(t + i, src, dst, port, allowed=False) for i, port in enumerate(range(20, 32))] + [
        fw(t + 30, src, dst, 22, allowed=True)
    ]


def linux_new_admin(t: float, user: str = "mallory", host: str = "web-2") -> list[dict[str, Any]]:
    return [
        ssh(t, user, "203.0.113.99", ok=True, host=host),
        sudo(t + 90, user, "/usr/sbin/usermod -aG sudo backdoor", host=host),
    ]


def windows_new_admin(t: float, user: str = "svc-admin", host: str = "srv-7") -> list[dict[str, Any]]:
    return [
        win_logon(t, user, "10.1.1.1", ok=True, host=host),
        win_account(t + 30, user, "helpdesk2", code="4720", host=host),
    ]


def key_abuse(t: float, key: str = "AKIAEXAMPLE0001") -> list[dict[str, Any]]:
    return [
        cloud(t, "CreateAccessKey", key, "198.51.100.20"),
        cloud(t + 20, "ListBuckets", key, "198.51.100.20"),
        cloud(t + 120, "GetObject", key, "203.0.113.200"),
    ]


def password_spray(t: float, ip: str = "192.0.2.200") -> list[dict[str, Any]]:
    users = ["ann", "ben", "cat", "dan", "eve", "fay"]
    return [ssh(t + 3 * i, u, ip, ok=False, host=f"web-{i % 3}") for i, u in enumerate(users)] + [
        win_logon(t + 60, "cat", ip, ok=True)
    ]


def audit_tampering(t: float, account: str = "444455556666") -> list[dict[str, Any]]:
    return [
        cloud(t, "StopLogging", "AKIAADMIN000001", "198.51.100.30", account=account),
        cloud(t + 100, "CreateAccessKey", "AKIANEWKEY00001", "198.51.100.30", account=account),
    ]


Scenario = Callable[[float], list[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {
    "ssh_bruteforce_then_success": ssh_bruteforce,
    "windows_bruteforce_then_logon": windows_bruteforce,
    "port_scan_then_connection": port_scan,
    "new_local_admin_after_logon": linux_new_admin,
    "access_key_created_then_used_elsewhere": key_abuse,
    "password_spray_then_success": password_spray,
    "audit_tampering_and_new_key": audit_tampering,
}


def benign(t: float, seconds: float = 1200, seed: int = 7) -> list[dict[str, Any]]:
    """Everyday traffic: logons, the odd mistyped password, allowed connections, a few refused ones,
    cloud calls from one address per key, sudo for ordinary commands."""
    rng = random.Random(seed)
    users = [f"emp{i}" for i in range(20)]
    events = []
    ts = t
    while ts < t + seconds:
        ts += rng.uniform(0.5, 3.0)
        user = rng.choice(users)
        kind = rng.randrange(8)
        if kind == 0:
            events.append(ssh(ts, user, f"10.2.0.{users.index(user)}", ok=True))
        elif kind == 1 and rng.random() < 0.3:
            events.append(ssh(ts, user, f"10.2.0.{users.index(user)}", ok=False))
        elif kind == 2:
            events.append(win_logon(ts, user, f"10.3.0.{users.index(user)}", ok=True))
        elif kind == 3:
            events.append(
                fw(ts, f"10.4.0.{rng.randrange(50)}", "10.0.0.80", rng.choice([80, 443]), allowed=True)
            )
        elif kind == 4:
            events.append(
                fw(ts, f"10.5.0.{rng.randrange(50)}", "10.0.0.80", rng.choice([23, 3389]), allowed=False)
            )
        elif kind == 5:
            key = f"AKIABENIGN{users.index(user):05d}"
            events.append(
                cloud(ts, rng.choice(["ListBuckets", "GetObject"]), key, f"10.6.0.{users.index(user)}")
            )
        elif kind == 6:
            events.append(sudo(ts, user, "/usr/bin/systemctl restart nginx"))
        else:
            events.append(win_logon(ts, user, f"10.3.0.{users.index(user)}", ok=True, host=f"ws-{user}"))
    return events


# ---------------------------------------------------------------------------------------------- helpers
def engine(store: WindowStore | None = None, **options: int) -> CorrelationEngine:
    return CorrelationEngine.from_rules(RULES, store or InMemoryWindowStore(), **options)


async def run(
    events: Sequence[dict[str, Any]], eng: CorrelationEngine | None = None, batch: int = 50
) -> list[Alert]:
    """Detection then correlation over the events in event-time order, in micro-batches."""
    eng = eng or engine()
    ordered = sorted(events, key=lambda e: e["@timestamp"])
    alerts: list[Alert] = []
    for i in range(0, len(ordered), batch):
        alerts += await eng.process(DETECTOR.match(ordered[i : i + batch]))
    return alerts


def fired(alerts: Iterable[Alert]) -> list[str]:
    return sorted(str(NAMES[a.rule]) for a in alerts)


# ------------------------------------------------------------------------------------------------ tests
def test_the_shipped_rules_hold_at_least_six_multi_stage_correlations() -> None:
    rules = correlation_rules(RULES)
    outputs = [r for r in rules if r.output]
    assert len(outputs) >= 6
    assert {r.type for r in rules} == {"event_count", "value_count", "temporal", "temporal_ordered"}
    for rule in rules:
        assert rule.span_s == 300
        assert rule.level in {"low", "medium", "high", "critical"}
        assert rule.title
        assert rule.description
        uuid.UUID(rule.id)
    # Multi-stage: every alerting rule has two stages or more, and all its stages are evaluated.
    assert all(len(r.stages) >= 2 for r in outputs)
    assert set(SCENARIOS) == OUTPUT_RULES


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_every_rule_fires_on_its_scenario_and_only_it(name: str) -> None:
    alerts = await run(SCENARIOS[name](T0))
    assert fired(alerts) == [name]


async def test_benign_traffic_raises_nothing() -> None:
    events = benign(T0)
    assert len(DETECTOR.match(events)) > 300  # the stages do match everyday events
    assert await run(events) == []


async def test_scenarios_inside_benign_traffic_each_fire_once() -> None:
    events = benign(T0, seconds=1800)
    for i, scenario in enumerate(SCENARIOS.values()):
        events += scenario(T0 + 100 + 200 * i)
    assert fired(await run(events)) == sorted(SCENARIOS)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(
            [ssh(T0, "alice", "203.0.113.10", ok=True)]
            + [ssh(T0 + 10 + i, "alice", "203.0.113.10", ok=False) for i in range(6)],
            id="ssh-success-before-failures",
        ),
        pytest.param(
            [win_logon(T0, "bob", "198.51.100.7", ok=True)]
            + [win_logon(T0 + 10 + i, "bob", "198.51.100.7", ok=False) for i in range(6)],
            id="windows-logon-before-failures",
        ),
        pytest.param(
            [fw(T0, "192.0.2.66", "10.0.0.5", 22, allowed=True)]
            + [
                fw(T0 + 1 + i, "192.0.2.66", "10.0.0.5", p, allowed=False)
                for i, p in enumerate(range(20, 32))
            ],
            id="connection-before-scan",
        ),
        pytest.param(
            [
                sudo(T0, "mallory", "/usr/sbin/usermod -aG sudo backdoor", host="web-2"),
                ssh(T0 + 30, "mallory", "203.0.113.99", ok=True, host="web-2"),
            ],
            id="admin-before-logon",
        ),
        pytest.param(
            [
                cloud(T0, "GetObject", "AKIAEXAMPLE0001", "203.0.113.200"),
                cloud(T0 + 30, "CreateAccessKey", "AKIAEXAMPLE0001", "198.51.100.20"),
            ],
            id="key-used-elsewhere-before-creation",
        ),
        pytest.param(
            [win_logon(T0, "cat", "192.0.2.200", ok=True)]
            + [ssh(T0 + 5 + i, u, "192.0.2.200", ok=False) for i, u in enumerate("abcdef")],
            id="success-before-spray",
        ),
    ],
)
async def test_stages_out_of_order_do_not_fire(events: list[dict[str, Any]]) -> None:
    assert await run(events) == []


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(
            [ssh(T0 + 10 * i, "alice", "203.0.113.10", ok=False) for i in range(6)]
            + [ssh(T0 + 60, "bob", "203.0.113.10", ok=True)],
            id="ssh-success-for-another-user",
        ),
        pytest.param(
            [ssh(T0 + 10 * i, "alice", "203.0.113.10", ok=False) for i in range(4)]
            + [ssh(T0 + 60, "alice", "203.0.113.10", ok=True)],
            id="four-failures-only",
        ),
        pytest.param(
            [fw(T0 + i, "192.0.2.66", "10.0.0.5", p, allowed=False) for i, p in enumerate(range(20, 32))]
            + [fw(T0 + 20, "192.0.2.66", "10.0.0.6", 22, allowed=True)],
            id="connection-to-another-host",
        ),
        pytest.param(
            [fw(T0 + i, "192.0.2.66", "10.0.0.5", 23, allowed=False) for i in range(30)]
            + [fw(T0 + 40, "192.0.2.66", "10.0.0.5", 22, allowed=True)],
            id="one-port-many-times",
        ),
        pytest.param(
            [
                ssh(T0, "mallory", "203.0.113.99", ok=True, host="web-2"),
                sudo(T0 + 30, "mallory", "/usr/sbin/usermod -aG sudo backdoor", host="web-3"),
            ],
            id="admin-on-another-host",
        ),
        pytest.param(
            [cloud(T0, "CreateAccessKey", "AKIAEXAMPLE0001", "198.51.100.20")]
            + [cloud(T0 + 10 * i, "GetObject", "AKIAEXAMPLE0001", "198.51.100.20") for i in range(1, 10)],
            id="key-used-from-the-creating-address",
        ),
        pytest.param(
            [
                cloud(T0, "CreateAccessKey", "AKIAEXAMPLE0001", "198.51.100.20", outcome="failure"),
                cloud(T0 + 30, "GetObject", "AKIAEXAMPLE0001", "203.0.113.200"),
            ],
            id="key-creation-failed",
        ),
        pytest.param(
            [
                cloud(T0, "StopLogging", "AKIAADMIN000001", "198.51.100.30", account="444455556666"),
                cloud(
                    T0 + 100, "CreateAccessKey", "AKIANEWKEY00001", "198.51.100.30", account="777788889999"
                ),
            ],
            id="tampering-and-key-in-different-accounts",
        ),
    ],
)
async def test_near_misses_do_not_fire(events: list[dict[str, Any]]) -> None:
    assert await run(events) == []


async def test_temporal_fires_in_either_order() -> None:
    events = audit_tampering(T0)
    reversed_order = [
        {**events[0], "@timestamp": events[1]["@timestamp"]},
        {**events[1], "@timestamp": events[0]["@timestamp"]},
    ]
    assert fired(await run(reversed_order)) == ["audit_tampering_and_new_key"]


async def test_the_window_slides_events_older_than_five_minutes_do_not_count() -> None:
    # Five failures 80 s apart: no 5-minute window holds more than four of them.
    spread = [ssh(T0 + 80 * i, "alice", "203.0.113.10", ok=False) for i in range(5)]
    assert await run([*spread, ssh(T0 + 330, "alice", "203.0.113.10", ok=True)]) == []
    # The same five failures 75 s apart fit exactly (both ends count): the window ends at the fifth.
    tight = [ssh(T0 + 75 * i, "alice", "203.0.113.10", ok=False) for i in range(5)]
    assert fired(await run([*tight, ssh(T0 + 301, "alice", "203.0.113.10", ok=True)])) == [
        "ssh_bruteforce_then_success"
    ]
    # The success must follow the burst within 5 minutes: 299 s after it counts, 301 s does not.
    burst = [ssh(T0 + i, "alice", "203.0.113.10", ok=False) for i in range(5)]
    assert fired(await run([*burst, ssh(T0 + 4 + 299, "alice", "203.0.113.10", ok=True)])) == [
        "ssh_bruteforce_then_success"
    ]
    assert await run([*burst, ssh(T0 + 4 + 301, "alice", "203.0.113.10", ok=True)]) == []


async def test_port_scan_counts_distinct_ports_within_the_window_only() -> None:
    src, dst = "192.0.2.66", "10.0.0.5"
    slow = [fw(T0 + 40 * i, src, dst, 1000 + i, allowed=False) for i in range(12)]  # 8 in any 5 min
    assert await run([*slow, fw(T0 + 40 * 11 + 5, src, dst, 22, allowed=True)]) == []


async def test_alert_follows_the_alerts_contract() -> None:
    events = ssh_bruteforce(T0)
    (alert,) = await run(events)
    assert set(alert.model_dump()) == {
        "fingerprint", "rule", "title", "severity", "first_seen", "last_seen", "group", "event_ids", "count",
    }  # fmt: skip
    assert alert.group == {"user.name": "alice"}
    assert alert.severity == "high"
    assert alert.fingerprint == fingerprint(alert.rule, {"user.name": "alice"})
    assert alert.first_seen == events[0]["@timestamp"]
    assert alert.last_seen == events[-1]["@timestamp"]
    assert alert.event_ids == [e["event.id"] for e in events]
    assert alert.count == 7  # the six failures of the burst, then the success
    # The same rule and group give the same fingerprint from another engine instance.
    (again,) = await run(events)
    assert again.fingerprint == alert.fingerprint


async def test_one_alert_per_rule_and_group_per_window() -> None:
    events = ssh_bruteforce(T0) + [ssh(T0 + 80 + i, "alice", "203.0.113.10", ok=True) for i in range(3)]
    assert len(await run(events)) == 1
    # Five minutes later the same attack is a new alert with the same fingerprint.
    again = events + ssh_bruteforce(T0 + 400)
    alerts = await run(again)
    assert len(alerts) == 2
    assert alerts[0].fingerprint == alerts[1].fingerprint


async def test_event_ids_are_bounded() -> None:
    events = [ssh(T0 + 0.1 * i, "alice", "203.0.113.10", ok=False) for i in range(200)]
    events.append(ssh(T0 + 30, "alice", "203.0.113.10", ok=True))
    (alert,) = await run(events, engine(max_event_ids=10))
    assert len(alert.event_ids) == 10
    assert alert.event_ids[-1] == events[-1]["event.id"]


async def test_a_redelivered_event_is_not_counted_twice() -> None:
    failures = [ssh(T0 + i, "alice", "203.0.113.10", ok=False) for i in range(3)]
    success = ssh(T0 + 20, "alice", "203.0.113.10", ok=True)
    eng = engine()
    assert await run(failures + failures + failures, eng) == []
    assert await run([success], eng) == []
    more = [ssh(T0 + 30 + i, "alice", "203.0.113.10", ok=False) for i in range(2)]
    assert fired(await run([*more, ssh(T0 + 40, "alice", "203.0.113.10", ok=True)], eng)) == [
        "ssh_bruteforce_then_success"
    ]


async def test_a_new_engine_on_the_same_store_continues_where_the_last_stopped() -> None:
    events = benign(T0, seconds=600)
    for i, scenario in enumerate(SCENARIOS.values()):
        events += scenario(T0 + 50 * i)
    events.sort(key=lambda e: e["@timestamp"])
    expected = await run(events)
    store = InMemoryWindowStore()
    alerts: list[Alert] = []
    for part in [events[:137], events[137:301], events[301:]]:
        alerts += await run(part, engine(store))  # a fresh engine each time: a restarted worker
    # The same decisions; which events an alert lists may depend on where the batches were cut.
    assert sorted(a.fingerprint for a in alerts) == sorted(a.fingerprint for a in expected)
    assert fired(alerts) == sorted(SCENARIOS)


async def test_arrival_order_does_not_matter_within_the_lateness() -> None:
    """Events of one attack come through different partitions (sources), so a worker may see the last
    stage first; the verdict is taken on event time."""
    for name, scenario in SCENARIOS.items():
        events = scenario(T0)
        eng = engine()
        alerts: list[Alert] = []
        for e in reversed(events):  # one event per batch, newest first
            alerts += await eng.process(DETECTOR.match([e]))
        assert fired(alerts) == [name], name


async def test_each_stage_holds_at_most_max_entries() -> None:
    store = InMemoryWindowStore()
    events = [ssh(T0 + 0.01 * i, "alice", "203.0.113.10", ok=False) for i in range(1000)]
    events += [fw(T0 + 0.01 * i, "192.0.2.66", "10.0.0.5", i, allowed=False) for i in range(1000)]
    await run(events, engine(store), batch=500)
    assert max(store.stage_sizes()) == DEFAULT_MAX_ENTRIES
    # alice's burst and its parent's first stage, the scan and its parent's first stage, the spray.
    assert store.entry_count() <= DEFAULT_MAX_ENTRIES * 5


async def test_idle_windows_are_forgotten_by_event_time() -> None:
    store = InMemoryWindowStore(sweep_every=100)
    events = [ssh(T0 + 10 * i, f"user{i}", f"10.9.{i // 250}.{i % 250}", ok=False) for i in range(3000)]
    await run(events, engine(store), batch=500)
    # 3000 users over 8 hours; only those of the last timespan + lateness + slack (~8 min) remain.
    assert store.window_count() < 300  # of 6000 created (a burst and a spray window per user)


async def test_the_unbounded_mistake_keeps_every_event_and_decides_the_same() -> None:
    events = [ssh(T0 + 0.5 * i, "alice", "203.0.113.10", ok=False) for i in range(500)]
    events.append(ssh(T0 + 300, "alice", "203.0.113.10", ok=True))
    bounded, unbounded = InMemoryWindowStore(), InMemoryWindowStore(bounded=False)
    a = await run(events, engine(bounded))
    b = await run(events, engine(unbounded), batch=200)
    assert len(a) == 1
    assert [x.fingerprint for x in a] == [x.fingerprint for x in b]
    # Every failure twice (the burst window, and its occurrence in the outer rule's first stage).
    assert unbounded.entry_count() > 2 * 490 > 4 * DEFAULT_MAX_ENTRIES >= bounded.entry_count()


# ---------------------------------------------------------------------------------- rules it refuses
RULE_HEAD = """
title: failure
id: 5e3c2f0e-6a55-4d66-9b1c-3a8d1c8e0a01
name: failure
logsource:
  product: kata-siem
detection:
  selection:
    event.outcome: failure
  condition: selection
---
title: success
id: 5e3c2f0e-6a55-4d66-9b1c-3a8d1c8e0a02
name: success
logsource:
  product: kata-siem
detection:
  selection:
    event.outcome: success
  condition: selection
---
"""


def collection(correlation: str) -> Any:
    from sigma.collection import SigmaCollection

    return SigmaCollection.from_yaml(RULE_HEAD + correlation)


@pytest.mark.parametrize(
    ("correlation", "problem"),
    [
        pytest.param(
            "title: c\nid: 5e3c2f0e-6a55-4d66-9b1c-3a8d1c8e0a03\ncorrelation:\n  type: value_sum\n"
            "  rules: [failure]\n  group-by: [user.name]\n  timespan: 5m\n"
            "  condition: {gte: 5, field: destination.port}\n",
            "not supported",
            id="value_sum",
        ),
        pytest.param(
            "title: c\nid: 5e3c2f0e-6a55-4d66-9b1c-3a8d1c8e0a03\ncorrelation:\n  type: temporal\n"
            "  rules: [failure, success]\n  group-by: [user.name]\n  timespan: 5m\n"
            "  condition: failure and not success\n",
            "extended conditions",
            id="extended-condition",
        ),
        pytest.param(
            "title: c\nid: 5e3c2f0e-6a55-4d66-9b1c-3a8d1c8e0a03\ncorrelation:\n  type: event_count\n"
            "  rules: [failure]\n  group-by: [user.name]\n  timespan: 5m\n  condition: {gte: 500}\n",
            "entries per window",
            id="threshold-above-the-bound",
        ),
        pytest.param(
            "title: inner\nid: 5e3c2f0e-6a55-4d66-9b1c-3a8d1c8e0a03\nname: inner\ncorrelation:\n"
            "  type: event_count\n  rules: [failure]\n  group-by: [user.name]\n  timespan: 5m\n"
            "  condition: {gte: 5}\n---\n"
            "title: outer\nid: 5e3c2f0e-6a55-4d66-9b1c-3a8d1c8e0a04\ncorrelation:\n  type: temporal_ordered\n"
            "  rules: [inner, success]\n  group-by: [source.ip]\n  timespan: 5m\n",
            "does not group by",
            id="outer-groups-by-what-inner-does-not",
        ),
    ],
)
def test_rules_the_engine_cannot_evaluate_are_refused(correlation: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        CorrelationEngine.from_rules(collection(correlation), InMemoryWindowStore())


async def test_group_by_aliases_map_a_field_per_rule() -> None:
    rules = collection(
        "title: same person fails then succeeds elsewhere\nid: 5e3c2f0e-6a55-4d66-9b1c-3a8d1c8e0a05\n"
        "correlation:\n  type: temporal_ordered\n  rules: [failure, success]\n  group-by: [person]\n"
        "  timespan: 5m\n  aliases:\n    person:\n      failure: user.name\n      success: user.target.name\n"
    )
    detector = Detector.from_rules(rules)
    eng = CorrelationEngine.from_rules(rules, InMemoryWindowStore())
    events = [
        event(T0, "a", {"event.outcome": "failure", "user.name": "zoe"}),
        event(T0 + 5, "b", {"event.outcome": "success", "user.name": "admin", "user.target.name": "zoe"}),
    ]
    (alert,) = await eng.process(detector.match(events))
    assert alert.group == {"person": "zoe"}


async def test_matches_without_a_timestamp_or_group_field_are_skipped() -> None:
    eng = engine()
    no_time = ssh(T0, "alice", "203.0.113.10", ok=False)
    del no_time["@timestamp"]
    no_user = ssh(T0, "alice", "203.0.113.10", ok=False)
    del no_user["user.name"]
    assert await eng.process(DETECTOR.match([no_time, no_user])) == []
    assert eng.stats.skipped >= 2


def test_timestamps_round_trip() -> None:
    for ts in (T0, T0 + 0.123, T0 + 86400 * 365.25):
        assert parse_timestamp(iso(ts)) == pytest.approx(ts, abs=1e-3)
    assert parse_timestamp("not a time") is None
    assert parse_timestamp(None) is None


# ------------------------------------------------------------- oracle: pySigma's own SQL correlation
def pysigma_sql_verdicts(events: Sequence[dict[str, Any]]) -> set[tuple[str, str]]:
    """(rule id, group) of every alerting correlation that pySigma's SQLite backend finds when it compiles
    the same rules into batch SQL over a table of all the events (its correlation runtime)."""
    import json
    import sqlite3

    from sigma.backends.sqlite import runtime
    from sigma.backends.sqlite.sqlite import sqliteBackend
    from sigma.collection import SigmaCollection

    from katas.siem.detection import RULES_DIR

    backend = sqliteBackend(  # type: ignore[no-untyped-call]
        table="ecs_events", timestamp_field="@timestamp", event_id_field="event.id", fulltext_field="message"
    )
    plans = [
        p
        for p in json.loads(
            backend.convert(SigmaCollection.load_ruleset([RULES_DIR]), output_format="zircolite")
        )
        if p["result_type"] == "correlation"
    ]
    db = sqlite3.connect(":memory:")
    columns = sorted({key for e in events for key in e})
    definitions = ", ".join(f"`{c}` COLLATE NOCASE" for c in columns)
    db.execute(f"CREATE TABLE ecs_events ({definitions})")
    # The backend's tables are flat: a list becomes its last element, where these builders put the
    # element the rules look for ("denied", "allowed").
    rows = [[e[c][-1] if isinstance(e.get(c), list) else e.get(c) for c in columns] for e in events]
    db.executemany(f"INSERT INTO ecs_events VALUES ({','.join('?' * len(columns))})", rows)
    verdicts = set()
    for plan in plans:
        found, _ = runtime.execute_plan(db, plan["correlation_plan"], include_events=False)  # type: ignore[no-untyped-call]
        verdicts |= {(plan["id"], json.dumps(lowercase(row["group_keys"]), sort_keys=True)) for row in found}
    return verdicts


def lowercase(group: dict[str, Any]) -> dict[str, Any]:
    """pySigma's SQL groups strings without case and reports them lowercased."""
    return {k: v.lower() if isinstance(v, str) else v for k, v in group.items()}


def attack_mix(seed: int) -> list[dict[str, Any]]:
    """A few attack fragments at random times, some events dropped, some moved (stages out of order,
    bursts spread beyond the window), over a little everyday traffic."""
    rng = random.Random(seed)
    events = benign(T0, seconds=300, seed=seed)
    for _ in range(rng.randint(2, 5)):
        fragment = rng.choice(list(SCENARIOS.values()))(T0 + rng.uniform(0, 900))
        for e in fragment:
            if rng.random() < 0.15:
                continue
            ts = parse_timestamp(e["@timestamp"])
            assert ts is not None
            if rng.random() < 0.25:
                ts += rng.uniform(-200, 200)
            events.append({**e, "@timestamp": iso(ts)})
    return events


@pytest.mark.parametrize("seed", range(30))
async def test_the_engine_decides_what_pysigmas_sql_correlation_decides(seed: int) -> None:
    events = attack_mix(seed)
    ours = {(a.rule, json.dumps(lowercase(a.group), sort_keys=True)) for a in await run(events)}
    assert ours == pysigma_sql_verdicts(events)


async def test_groups_ignore_case_as_sigma_matching_does() -> None:
    events = [ssh(T0 + i, "Alice" if i % 2 else "alice", "203.0.113.10", ok=False) for i in range(5)]
    (alert,) = await run([*events, ssh(T0 + 10, "ALICE", "203.0.113.10", ok=True)])
    assert str(alert.group["user.name"]).lower() == "alice"  # spelt as by the occurrence that completed it
    assert alert.fingerprint == fingerprint(alert.rule, {"user.name": "alice"})
