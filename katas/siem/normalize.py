"""Normalization: one raw envelope in, one flat ECS event (pseudonymized) or one dead letter out.

`normalize` never raises. A payload that cannot be parsed, or that trips a bug in a mapper, becomes a
`DeadLetter` carrying the original bytes and a reason in words, so nothing is lost and the dead letter can
be replayed (`DeadLetter.replay()`) once the parser is fixed.

Mapping, by what the parsed record holds:

- syslog from sshd (logins, invalid users, PAM sessions), sudo, cron, useradd/userdel/usermod/groupadd/
  gpasswd: authentication, session, process and IAM events; other syslog is kept with its header fields;
- syslog carrying iptables log lines (`SRC= DST= PROTO= ...`): firewall events;
- CEF: firewall events when the action is a verdict (deny/allow) on a connection, else generic CEF events;
- Windows events 4624/4625/4634/4647 (logon), 4688 (process), 4720/4726 (user), 4728/4732/4756 (group);
- JSON with `eventSource` and `eventName`: CloudTrail records; any other JSON: application events, which may
  use ECS field names (flat or nested) or common aliases (`user`, `email`, `client_ip`, `action`, ...).

Fields beyond contracts.md: `labels.access_key_id` (the cloud access key an event is about: the new key of a
CreateAccessKey, else the key that signed the call).

Values that do not fit their field (an IP field holding a host name, a port out of range) are left out
rather than failing the event; the text stays in `message` where the source had one.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import ntpath
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

import uuid6

from katas.siem.parsing import (
    TRANSPORTS,
    CefRecord,
    JsonRecord,
    ParsedRecord,
    ParseError,
    SyslogRecord,
    Transport,
    WinEventRecord,
    cef_severity,
    parse,
    parse_rfc3339,
    record_format,
)
from katas.siem.pseudonymize import Pseudonymizer, canonical_ip

__all__ = [
    "ECS_FIELDS",
    "DeadLetter",
    "NormalizedEvent",
    "RawEnvelope",
    "Transport",
    "format_timestamp",
    "normalize",
    "to_ecs",
]

ECS_FIELDS: Final = frozenset(
    {
        "event.id",
        "@timestamp",
        "event.ingested",
        "event.kind",
        "event.category",
        "event.type",
        "event.action",
        "event.outcome",
        "event.code",
        "event.dataset",
        "event.module",
        "event.severity",
        "host.name",
        "source.ip",
        "source.port",
        "destination.ip",
        "destination.port",
        "network.transport",
        "user.name",
        "user.email",
        "user.target.name",
        "group.name",
        "process.name",
        "process.pid",
        "process.command_line",
        "cloud.provider",
        "cloud.account.id",
        "cloud.region",
        "related.user",
        "related.ip",
        "observer.vendor",
        "observer.product",
        "log.syslog.facility.code",
        "log.syslog.severity.code",
        "log.syslog.appname",
        "message",
        "labels.source",
        "labels.transport",
        "labels.format",
        "labels.access_key_id",
    }
)
"""Every field a normalized event may carry: contracts.md's list plus `labels.access_key_id`."""

_PIPELINE_FIELDS: Final = frozenset(
    {
        "event.id",
        "@timestamp",
        "event.ingested",
        "event.kind",
        "labels.source",
        "labels.transport",
        "labels.format",
    }
)
"""Set by the pipeline only; a JSON event cannot supply them."""

MAX_REASON_CHARS: Final = 500


# ---------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class RawEnvelope:
    """One received message, as it travels on `siem.raw`."""

    id: str
    received_at: float
    source: str
    transport: Transport
    payload: bytes

    @classmethod
    def new(
        cls, source: str, transport: Transport, payload: bytes, *, received_at: float | None = None
    ) -> RawEnvelope:
        """Stamp a message at ingest: a fresh UUIDv7 (time-ordered) id and the time of receipt."""
        return cls(
            id=str(uuid6.uuid7()),
            received_at=time.time() if received_at is None else received_at,
            source=source,
            transport=transport,
            payload=payload,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at,
            "source": self.source,
            "transport": self.transport,
            "payload_b64": base64.b64encode(self.payload).decode("ascii"),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RawEnvelope:
        """Read an envelope; ValueError (with what is wrong) if it does not follow the contract."""
        fields = _json_object(data, "envelope")
        return cls(**_envelope_fields(fields, "envelope"))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message normalization could not turn into an event, as it travels on `siem.deadletter`."""

    id: str
    received_at: float
    source: str
    transport: Transport
    payload: bytes
    reason: str
    failed_at: float
    stage: str = "normalize"

    @classmethod
    def of(cls, envelope: RawEnvelope, reason: str, *, failed_at: float | None = None) -> DeadLetter:
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        return cls(
            id=envelope.id,
            received_at=envelope.received_at,
            source=envelope.source,
            transport=envelope.transport,
            payload=envelope.payload,
            reason=reason,
            failed_at=time.time() if failed_at is None else failed_at,
        )

    def replay(self) -> RawEnvelope:
        """The original envelope, id and all, to run through normalization again after a fix."""
        return RawEnvelope(self.id, self.received_at, self.source, self.transport, self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.replay().to_dict(),
            "reason": self.reason,
            "stage": self.stage,
            "failed_at": self.failed_at,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> DeadLetter:
        fields = _json_object(data, "dead letter")
        reason, stage, failed_at = fields.get("reason"), fields.get("stage"), fields.get("failed_at")
        if not isinstance(reason, str) or not isinstance(stage, str):
            raise ValueError("dead letter: reason and stage must be strings")
        return cls(
            **_envelope_fields(fields, "dead letter"),
            reason=reason,
            stage=stage,
            failed_at=_finite_number(failed_at, "dead letter", "failed_at"),
        )


@dataclass(frozen=True, slots=True)
class NormalizedEvent:
    """One event on `siem.events`: flat ECS fields, absent ones omitted."""

    fields: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.fields["event.id"])

    @property
    def source(self) -> str:
        return str(self.fields["labels.source"])

    @property
    def timestamp(self) -> str:
        return str(self.fields["@timestamp"])

    def to_json(self) -> bytes:
        return json.dumps(self.fields, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> NormalizedEvent:
        return cls(_json_object(data, "event"))


def _json_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{what}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: not a JSON object")
    return value


def _finite_number(value: Any, what: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what}: {name} must be a number")
    return float(value)


def _envelope_fields(fields: Mapping[str, Any], what: str) -> dict[str, Any]:
    envelope_id, source, transport = fields.get("id"), fields.get("source"), fields.get("transport")
    if not isinstance(envelope_id, str) or not isinstance(source, str):
        raise ValueError(f"{what}: id and source must be strings")
    if transport not in TRANSPORTS:
        raise ValueError(f"{what}: unknown transport {transport!r}")
    encoded = fields.get("payload_b64")
    if not isinstance(encoded, str):
        raise ValueError(f"{what}: payload_b64 must be a string")
    try:
        payload = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError(f"{what}: payload_b64 is not base64") from None
    return {
        "id": envelope_id,
        "received_at": _finite_number(fields.get("received_at"), what, "received_at"),
        "source": source,
        "transport": cast(Transport, transport),
        "payload": payload,
    }


# ---------------------------------------------------------------------------------------------- normalize


def normalize(
    envelope: RawEnvelope, pseudonymizer: Pseudonymizer | None, *, now: float | None = None
) -> NormalizedEvent | DeadLetter:
    """Parse, map onto ECS and pseudonymize one envelope. Never raises.

    `pseudonymizer=None` stores personal data as it came (only for the kata's `store-raw-pii` mistake)."""
    now = time.time() if now is None else now
    try:
        record = parse(envelope.transport, envelope.payload, received_at=envelope.received_at)
        fields = to_ecs(record, envelope, now=now)
        if pseudonymizer is not None:
            fields = pseudonymizer.apply(fields)
        return NormalizedEvent(fields)
    except ParseError as error:
        return DeadLetter.of(envelope, error.reason, failed_at=now)
    except Exception as error:  # a mapper bug must not lose the event: dead-letter it, replay after the fix
        return DeadLetter.of(envelope, f"normalize: {type(error).__name__}: {error}", failed_at=now)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds: 2024-01-05T10:00:00.123Z."""
    utc = moment.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
        f".{utc.microsecond // 1000:03d}Z"
    )


def to_ecs(record: ParsedRecord, envelope: RawEnvelope, *, now: float) -> dict[str, Any]:
    """The flat ECS fields of one parsed record (before pseudonymization)."""
    event = _Event()
    if isinstance(record, SyslogRecord):
        moment = _map_syslog(record, event)
    elif isinstance(record, WinEventRecord):
        moment = _map_windows(record, event)
    else:
        moment = _map_json(record, event)
    received = datetime.fromtimestamp(envelope.received_at, UTC)
    fields: dict[str, Any] = {
        "@timestamp": format_timestamp(moment or received),
        "event.id": envelope.id,
        "event.ingested": format_timestamp(datetime.fromtimestamp(now, UTC)),
        "event.kind": "event",
    }
    fields.update(event)
    related_users = _unique(
        [*fields.get("related.user", []), fields.get("user.name"), fields.get("user.target.name")]
    )
    related_ips = _unique(
        [*fields.get("related.ip", []), fields.get("source.ip"), fields.get("destination.ip")]
    )
    if related_users:
        fields["related.user"] = related_users
    if related_ips:
        fields["related.ip"] = related_ips
    fields["labels.source"] = envelope.source
    fields["labels.transport"] = envelope.transport
    fields["labels.format"] = record_format(record)
    return fields


def _unique(values: list[Any]) -> list[str]:
    return list(dict.fromkeys(v for v in values if isinstance(v, str) and v))


class _Event(dict[str, Any]):
    """The fields being built; `put` ignores empty values, so absent fields are omitted, never null."""

    def put(self, name: str, value: Any) -> None:
        if value is None or value == "" or value == []:
            return
        self[name] = value

    def put_default(self, name: str, value: Any) -> None:
        if name not in self:
            self.put(name, value)


# ---------------------------------------------------------------------------------------------- value coercion


def _ip(value: Any) -> str | None:
    """A valid IP address in canonical form (IPv4-mapped IPv6 as IPv4), else None."""
    if not isinstance(value, str) or not value.strip() or value.strip() == "-":
        return None
    return canonical_ip(value)


def _int(value: Any, low: int = -(2**63), high: int = 2**63 - 1) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii():
            return None
        try:
            value = int(text, 0) if text.lower().startswith("0x") else int(text)
        except ValueError:
            return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and low <= value <= high:
        return value
    return None


def _port(value: Any) -> int | None:
    return _int(value, 1, 65535)


def _str(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        text = value.strip()
        return text if text and text != "-" else None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return None


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None
    items = [text for text in (_str(item) for item in value) if text]
    return items or None


_OUTCOMES: Final = {
    "success": "success",
    "succeeded": "success",
    "successful": "success",
    "ok": "success",
    "true": "success",
    "allowed": "success",
    "failure": "failure",
    "failed": "failure",
    "fail": "failure",
    "error": "failure",
    "false": "failure",
    "denied": "failure",
    "unknown": "unknown",
}


def _outcome(value: Any) -> str | None:
    text = _str(value)
    return _OUTCOMES.get(text.lower()) if text else None


_TRANSPORT_NUMBERS: Final = {
    "6": "tcp",
    "17": "udp",
    "1": "icmp",
    "58": "ipv6-icmp",
    "47": "gre",
    "50": "esp",
}


def _network_transport(value: Any) -> str | None:
    text = _str(value)
    if not text:
        return None
    return _TRANSPORT_NUMBERS.get(text, text.lower())


_DENY_WORDS: Final = frozenset(
    [
        "deny",
        "denied",
        "drop",
        "dropped",
        "block",
        "blocked",
        "reject",
        "rejected",
        "prevent",
        "prevented",
        "reset",
    ]
)
_ALLOW_WORDS: Final = frozenset(
    ["allow", "allowed", "accept", "accepted", "permit", "permitted", "pass", "passed"]
)


def _verdict(*texts: str | None) -> str | None:
    """ "deny" or "allow" if a firewall's action text says so."""
    for text in texts:
        if not text:
            continue
        words = set(re.split(r"[^a-z]+", text.lower()))
        if words & _DENY_WORDS:
            return "deny"
        if words & _ALLOW_WORDS:
            return "allow"
    return None


def _put_verdict(event: _Event, verdict: str | None) -> None:
    event.put("event.category", ["network"])
    if verdict == "deny":
        event.update(
            {"event.type": ["connection", "denied"], "event.action": "deny", "event.outcome": "failure"}
        )
    elif verdict == "allow":
        event.update(
            {"event.type": ["connection", "allowed"], "event.action": "allow", "event.outcome": "success"}
        )
    else:
        event.put("event.type", ["connection"])


# ---------------------------------------------------------------------------------------------- syslog


def _map_syslog(record: SyslogRecord, event: _Event) -> datetime | None:
    event.put("log.syslog.facility.code", record.facility)
    event.put("log.syslog.severity.code", record.severity)
    event.put("log.syslog.appname", record.appname)
    event.put("host.name", record.hostname)
    event.put("message", record.message)
    if record.cef is not None:  # the syslog app name of a CEF record is the device's, not a process
        return _map_cef(record.cef, event) or record.timestamp
    event.put("process.name", record.appname)
    event.put("process.pid", _int(record.procid, 0))
    program = (record.appname or "").lower()
    mapper = _PROGRAMS.get(program)
    if mapper is not None:
        mapper(record.message, event)
        event.put("event.dataset", program)
        event.put("event.module", "system")
    elif _IPTABLES.search(record.message):
        _map_iptables(record.message, event)
    else:
        event.put("event.dataset", "syslog")
        event.put("event.module", "syslog")
    return record.timestamp


_SSHD_LOGIN = re.compile(
    r"(Failed|Accepted) (\S+) for (invalid user )?(\S+) from (\S+) port (\d+)(?: (\S+))?"
)
_SSHD_INVALID_USER = re.compile(r"Invalid user (\S*) from (\S+)(?: port (\d+))?")


def _map_sshd(message: str, event: _Event) -> None:
    login = _SSHD_LOGIN.match(message)
    if login is not None:
        verdict, _method, _invalid, user, address, port, _protocol = login.groups()
        event.update(
            {
                "event.category": ["authentication"],
                "event.type": ["start"],
                "event.action": "ssh_login",
                "event.outcome": "success" if verdict == "Accepted" else "failure",
            }
        )
        event.put("user.name", user)
        event.put("source.ip", _ip(address))
        event.put("source.port", _port(port))
        return
    invalid = _SSHD_INVALID_USER.match(message)
    if invalid is not None:
        event.update(
            {"event.category": ["authentication"], "event.type": ["info"], "event.action": "invalid_user"}
        )
        event.put("user.name", invalid.group(1))
        event.put("source.ip", _ip(invalid.group(2)))
        event.put("source.port", _port(invalid.group(3)))
        return
    session = _PAM_SESSION.search(message)
    if session is not None:
        opened = session.group(1) == "opened"
        event.update(
            {
                "event.category": ["session"],
                "event.type": ["start" if opened else "end"],
                "event.action": "session-opened" if opened else "session-closed",
            }
        )
        event.put("user.name", session.group(2))
        return
    peer = _SSHD_USER_PEER.search(message)
    if peer is not None:  # disconnects and closed connections: no category, but who and from where
        event.put("user.name", peer.group(1))
        event.put("source.ip", _ip(peer.group(2)))
        event.put("source.port", _port(peer.group(3)))


_PAM_SESSION = re.compile(r"pam_unix\([^)]*\): session (opened|closed) for user ([^\s(]+)")
_SSHD_USER_PEER = re.compile(r"\buser (\S+) (\S+) port (\d+)")
_CRON = re.compile(r"\((\S+)\) CMD \((.*)\)")


def _map_cron(message: str, event: _Event) -> None:
    match = _CRON.match(message)
    if match is not None:
        event.update({"event.category": ["process"], "event.type": ["start"], "event.action": "cron"})
        event.put("user.name", match.group(1))
        event.put("process.command_line", match.group(2))


_SUDO = re.compile(r"\s*(\S+) : (.*)")


def _map_sudo(message: str, event: _Event) -> None:
    match = _SUDO.fullmatch(message)
    if match is None:
        return
    user, rest = match.groups()
    pairs: dict[str, str] = {}
    problems: list[str] = []
    for part in rest.split(" ; "):
        key, sep, value = part.partition("=")
        if sep and key.isupper() and key.isalpha():
            pairs[key] = value
        else:
            problems.append(part)
    event.update({"event.category": ["process"], "event.type": ["start"], "event.action": "sudo"})
    event["event.outcome"] = "failure" if problems else "success"
    event.put("user.name", user)
    event.put("user.target.name", pairs.get("USER"))
    event.put("process.command_line", pairs.get("COMMAND"))


_NEW_USER = re.compile(r"new user: name=([^,\s]+)")
_NEW_GROUP = re.compile(r"new group: name=([^,\s]+)")
_DELETE_USER = re.compile(r"delete user '([^']+)'")
_ADD_TO_GROUP = re.compile(r"add '([^']+)' to (?:shadow )?group '([^']+)'")
_GPASSWD_ADD = re.compile(r"user (\S+) added by (\S+) to group (\S+)")


def _map_linux_iam(message: str, event: _Event) -> None:
    if (match := _NEW_USER.match(message)) is not None:
        event.update(_IAM_USER_CREATED)
        event.put("user.target.name", match.group(1))
    elif (match := _DELETE_USER.match(message)) is not None:
        event.update(_IAM_USER_DELETED)
        event.put("user.target.name", match.group(1))
    elif (match := _NEW_GROUP.match(message)) is not None:
        event.update(
            {**_IAM_BASE, "event.type": ["group", "creation"], "event.action": "added-group-account"}
        )
        event.put("group.name", match.group(1))
    elif (match := _ADD_TO_GROUP.match(message)) is not None:
        event.update(_IAM_MEMBER_ADDED)
        event.put("user.target.name", match.group(1))
        event.put("group.name", match.group(2))
    elif (match := _GPASSWD_ADD.match(message)) is not None:
        event.update(_IAM_MEMBER_ADDED)
        event.put("user.target.name", match.group(1))
        event.put("user.name", match.group(2))
        event.put("group.name", match.group(3))


_IAM_BASE: Final = {"event.category": ["iam"], "event.outcome": "success"}
_IAM_USER_CREATED: Final = {
    **_IAM_BASE,
    "event.type": ["user", "creation"],
    "event.action": "added-user-account",
}
_IAM_USER_DELETED: Final = {
    **_IAM_BASE,
    "event.type": ["user", "deletion"],
    "event.action": "deleted-user-account",
}
_IAM_MEMBER_ADDED: Final = {
    **_IAM_BASE,
    "event.type": ["group", "change"],
    "event.action": "added-member-to-group",
}

_PROGRAMS: Final[dict[str, Callable[[str, _Event], None]]] = {
    "sshd": _map_sshd,
    "sudo": _map_sudo,
    "cron": _map_cron,
    "useradd": _map_linux_iam,
    "userdel": _map_linux_iam,
    "usermod": _map_linux_iam,
    "groupadd": _map_linux_iam,
    "gpasswd": _map_linux_iam,
}

_IPTABLES: Final = re.compile(r"\bSRC=\S+ DST=\S+")
_IPTABLES_PAIR: Final = re.compile(r"\b(IN|OUT|SRC|DST|PROTO|SPT|DPT)=(\S*)")


def _map_iptables(message: str, event: _Event) -> None:
    pairs = dict(_IPTABLES_PAIR.findall(message))
    prefix = message.split("IN=", 1)[0] if "IN=" in message else message.split("SRC=", 1)[0]
    _put_verdict(event, _verdict(prefix))
    event.put("source.ip", _ip(pairs.get("SRC")))
    event.put("destination.ip", _ip(pairs.get("DST")))
    event.put("source.port", _port(pairs.get("SPT")))
    event.put("destination.port", _port(pairs.get("DPT")))
    event.put("network.transport", _network_transport(pairs.get("PROTO")))
    event.put("event.dataset", "firewall")
    event.put("event.module", "iptables")
    event.put("observer.vendor", "netfilter")
    event.put("observer.product", "iptables")


# ---------------------------------------------------------------------------------------------- CEF

_CEF_RT = re.compile(
    r"([A-Za-z]{3}) (\d{1,2}) (\d{4}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?(?: (?:UTC|GMT|Z))?"
)
_MONTH_NUMBERS: Final = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}


def _cef_time(value: str | None) -> datetime | None:
    """CEF `rt`: epoch milliseconds, or `MMM dd yyyy HH:mm:ss[.SSS]` (taken as UTC); None if neither."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit() and len(text) <= 15:
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    match = _CEF_RT.fullmatch(text)
    if match is None:
        return None
    month = _MONTH_NUMBERS.get(match.group(1).lower())
    if month is None:
        return None
    _, day, year, hour, minute, second, millis = match.groups()
    try:
        return datetime(
            int(year),
            month,
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((millis or "0").ljust(3, "0")) * 1000,
            UTC,
        )
    except ValueError:
        return None


def _map_cef(cef: CefRecord, event: _Event) -> datetime | None:
    ext = cef.extensions
    event.put("observer.vendor", cef.vendor)
    event.put("observer.product", cef.product)
    event.put("event.code", cef.signature_id)
    event.put("event.severity", cef_severity(cef.severity))
    if ext.get("dvchost"):
        event["host.name"] = ext["dvchost"]
    event.put("source.ip", _ip(ext.get("src")))
    event.put("destination.ip", _ip(ext.get("dst")))
    event.put("source.port", _port(ext.get("spt")))
    event.put("destination.port", _port(ext.get("dpt")))
    event.put("network.transport", _network_transport(ext.get("proto")))
    event.put("user.name", _str(ext.get("suser")))
    event.put("user.target.name", _str(ext.get("duser")))
    event.put("process.name", _str(ext.get("sproc")))
    event.put("process.pid", _int(ext.get("spid"), 0))
    verdict = _verdict(ext.get("act"), ext.get("outcome"), cef.name, ext.get("cat"))
    has_connection = any(name in event for name in ("source.ip", "destination.ip"))
    if verdict and has_connection:
        _put_verdict(event, verdict)
        event.put("event.dataset", "firewall")
    else:
        event.put("event.action", _str(ext.get("act")) or cef.name)
        event.put("event.outcome", _outcome(ext.get("outcome")))
        event.put("event.dataset", "cef")
    event.put("event.module", "cef")
    return _cef_time(ext.get("rt"))


# ---------------------------------------------------------------------------------------------- Windows

_AUDIT_FAILURE_KEYWORD: Final = 0x10000000000000
_AUDIT_SUCCESS_KEYWORD: Final = 0x20000000000000


def _win_value(data: Mapping[str, str], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    value = value.strip()
    return value if value and value != "-" else None


def _member_name(value: str | None) -> str | None:
    """`CN=bob,CN=Users,DC=corp,DC=example` -> `bob`; other forms as they are."""
    if value is None:
        return None
    match = re.match(r"CN=((?:[^,\\]|\\.)+)", value, re.IGNORECASE)
    return match.group(1).replace("\\,", ",") if match else value


def _map_windows(record: WinEventRecord, event: _Event) -> datetime | None:
    data = record.data
    channel = record.channel or ""
    event.put("event.code", str(record.event_id))
    event.put(
        "event.dataset",
        "windows.security"
        if channel.lower() == "security"
        else f"windows.{channel.lower()}"
        if channel
        else "windows",
    )
    event.put("event.module", "windows")
    event.put("host.name", record.computer)
    event.put("message", record.message)
    event.put("observer.vendor", "Microsoft")
    event.put("observer.product", "Windows")
    keywords = _int(record.keywords) or 0
    if keywords & _AUDIT_FAILURE_KEYWORD or "Audit Failure" in record.rendered_keywords:
        event["event.outcome"] = "failure"
    elif keywords & _AUDIT_SUCCESS_KEYWORD or "Audit Success" in record.rendered_keywords:
        event["event.outcome"] = "success"
    mapper = _WINDOWS_EVENTS.get(record.event_id)
    security = channel.lower() in ("security", "") or "security-auditing" in (record.provider or "").lower()
    if mapper is not None and security:
        mapper(data, event)
    return record.time_created


def _win_logon(outcome: str, action: str) -> Callable[[Mapping[str, str], _Event], None]:
    def mapper(data: Mapping[str, str], event: _Event) -> None:
        event.update(
            {
                "event.category": ["authentication"],
                "event.type": ["start"],
                "event.action": action,
                "event.outcome": outcome,
            }
        )
        event.put("user.name", _win_value(data, "TargetUserName"))
        event.put("source.ip", _ip(_win_value(data, "IpAddress")))
        event.put("source.port", _port(_win_value(data, "IpPort")))
        event.put("process.name", _win_value(data, "ProcessName") and ntpath.basename(data["ProcessName"]))

    return mapper


def _win_logoff(data: Mapping[str, str], event: _Event) -> None:
    event.update({"event.category": ["authentication"], "event.type": ["end"], "event.action": "logged-out"})
    event.put("user.name", _win_value(data, "TargetUserName"))


def _win_process(data: Mapping[str, str], event: _Event) -> None:
    event.update({"event.category": ["process"], "event.type": ["start"], "event.action": "created-process"})
    event.put("user.name", _win_value(data, "TargetUserName") or _win_value(data, "SubjectUserName"))
    image = _win_value(data, "NewProcessName")
    event.put("process.name", ntpath.basename(image) if image else None)
    event.put("process.pid", _int(_win_value(data, "NewProcessId"), 0))
    event.put("process.command_line", _win_value(data, "CommandLine"))


def _win_user(action: dict[str, Any]) -> Callable[[Mapping[str, str], _Event], None]:
    def mapper(data: Mapping[str, str], event: _Event) -> None:
        event.update(action)
        event.put("user.name", _win_value(data, "SubjectUserName"))
        event.put("user.target.name", _win_value(data, "TargetUserName"))

    return mapper


def _win_member_added(data: Mapping[str, str], event: _Event) -> None:
    event.update(_IAM_MEMBER_ADDED)
    event.put("user.name", _win_value(data, "SubjectUserName"))
    event.put("group.name", _win_value(data, "TargetUserName"))
    event.put("user.target.name", _member_name(_win_value(data, "MemberName")))


_WINDOWS_EVENTS: Final[dict[int, Callable[[Mapping[str, str], _Event], None]]] = {
    4624: _win_logon("success", "logged-in"),
    4625: _win_logon("failure", "logon-failed"),
    4634: _win_logoff,
    4647: _win_logoff,
    4688: _win_process,
    4720: _win_user(_IAM_USER_CREATED),
    4726: _win_user(_IAM_USER_DELETED),
    4728: _win_member_added,
    4732: _win_member_added,
    4756: _win_member_added,
}


# ---------------------------------------------------------------------------------------------- JSON


def _map_json(record: JsonRecord, event: _Event) -> datetime | None:
    data = record.data
    if isinstance(data.get("eventSource"), str) and isinstance(data.get("eventName"), str):
        return _map_cloudtrail(data, event)
    return _map_app(data, event)


def _json_time(value: Any, name: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        seconds = value / 1000 if value > 100_000_000_000 else value  # epoch ms when it would be after 5138
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            pass
    elif isinstance(value, str):
        try:
            return parse_rfc3339(value)
        except ValueError:
            pass
    raise ParseError(f"json: invalid timestamp in {name!r}: {str(value)[:40]!r}")


def _get(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _map_cloudtrail(data: Mapping[str, Any], event: _Event) -> datetime | None:
    name = str(data["eventName"])
    source = str(data["eventSource"])
    found = data.get("userIdentity")
    identity: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    event.put("event.action", name)
    event.put("event.dataset", "cloudtrail")
    event.put("event.module", "aws")
    event.put("event.outcome", "failure" if data.get("errorCode") else "success")
    event.put("cloud.provider", "aws")
    event.put("cloud.region", _str(data.get("awsRegion")))
    event.put("cloud.account.id", _str(data.get("recipientAccountId")) or _str(identity.get("accountId")))
    event.put("source.ip", _ip(data.get("sourceIPAddress")))
    event.put("user.name", _cloudtrail_user(identity))
    event.put("user.target.name", _str(_get(data, "requestParameters.userName")))
    event.put("group.name", _str(_get(data, "requestParameters.groupName")))
    event.put(
        "labels.access_key_id",
        _str(_get(data, "responseElements.accessKey.accessKeyId")) or _str(identity.get("accessKeyId")),
    )
    if source == "signin.amazonaws.com":
        event["event.category"] = ["authentication"]
        event["event.type"] = ["start"]
        console = _get(data, "responseElements.ConsoleLogin")
        if isinstance(console, str):
            event["event.outcome"] = "success" if console == "Success" else "failure"
    elif source == "iam.amazonaws.com":
        event["event.category"] = ["iam"]
        subjects = [
            k
            for k, field in (("user", "userName"), ("group", "groupName"))
            if _get(data, f"requestParameters.{field}")
        ]
        event["event.type"] = [*subjects, _verb_type(name)]
    else:
        event["event.category"] = ["configuration"]
        event["event.type"] = ["access"] if data.get("readOnly") is True else [_verb_type(name)]
    if "eventTime" in data:
        return _json_time(data["eventTime"], "eventTime")
    return None


def _verb_type(event_name: str) -> str:
    for prefix, kind in (
        ("Create", "creation"),
        ("Delete", "deletion"),
        ("Get", "access"),
        ("List", "access"),
    ):
        if event_name.startswith(prefix):
            return kind
    if event_name.startswith(("Describe", "Lookup")):
        return "access"
    return "change"


def _cloudtrail_user(identity: Mapping[str, Any]) -> str | None:
    name = _str(identity.get("userName")) or _str(_get(identity, "sessionContext.sessionIssuer.userName"))
    if name:
        return name
    if identity.get("type") == "Root":
        return "root"
    arn = _str(identity.get("arn"))
    if arn and "/" in arn:
        return arn.rsplit("/", 1)[-1]
    return _str(identity.get("invokedBy"))


def _flatten(data: Mapping[str, Any], prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth < 6:
            yield from _flatten(value, name + ".", depth + 1)
        else:
            yield name, value


_COERCE: Final[dict[str, Callable[[Any], Any]]] = {
    "event.severity": _int,
    "source.port": _port,
    "destination.port": _port,
    "process.pid": lambda value: _int(value, 0),
    "log.syslog.facility.code": lambda value: _int(value, 0, 23),
    "log.syslog.severity.code": lambda value: _int(value, 0, 7),
    "source.ip": _ip,
    "destination.ip": _ip,
    "event.category": _str_list,
    "event.type": _str_list,
    "related.user": _str_list,
    "related.ip": lambda value: [ip for ip in (_ip(item) for item in _str_list(value) or []) if ip] or None,
    "event.outcome": _outcome,
}


def _coerce(name: str, value: Any) -> Any:
    """A JSON value as the ECS field wants it, or None when it cannot be (the field is then omitted)."""
    coerce = _COERCE.get(name)
    return coerce(value) if coerce is not None else _str(value)


_APP_ALIASES: Final = {
    "message": ("msg",),
    "user.name": ("user", "username", "user_name", "userName", "login"),
    "user.email": ("email", "user_email", "mail"),
    "source.ip": (
        "client_ip",
        "clientIp",
        "client.ip",
        "src_ip",
        "remote_addr",
        "remoteAddr",
        "ip",
        "ip_address",
    ),
    "source.port": ("client_port", "src_port"),
    "destination.ip": ("dst_ip", "server_ip"),
    "destination.port": ("dst_port", "server_port"),
    "host.name": ("host", "hostname"),
    "event.action": ("action", "event", "event_type"),
    "event.outcome": ("outcome", "result", "status"),
    "event.dataset": ("dataset",),
    "event.severity": ("severity",),
}
_APP_TIME_FIELDS: Final = ("@timestamp", "timestamp", "time", "eventTime")
_LOGIN_ACTION: Final = re.compile(r"log_?in|logon|sign_?in|auth", re.IGNORECASE)
_LOGOUT_ACTION: Final = re.compile(r"log_?out|logoff|sign_?out", re.IGNORECASE)


def _map_app(data: Mapping[str, Any], event: _Event) -> datetime | None:
    flat = dict(_flatten(data))
    for name, value in flat.items():
        if name in ECS_FIELDS and name not in _PIPELINE_FIELDS:
            event.put(name, _coerce(name, value))
    for name, aliases in _APP_ALIASES.items():
        for alias in aliases:
            if name in event:
                break
            if alias in flat:
                event.put(name, _coerce(name, flat[alias]))
    event.put_default("event.dataset", "app")
    event.put_default("event.module", "app")
    action = event.get("event.action")
    if "event.category" not in event and isinstance(action, str):
        if _LOGOUT_ACTION.search(action):
            event.update({"event.category": ["authentication"], "event.type": ["end"]})
        elif _LOGIN_ACTION.search(action):
            event.update({"event.category": ["authentication"], "event.type": ["start"]})
    if "event.category" not in event and any(key.startswith(("http.", "url.")) for key in flat):
        event.update({"event.category": ["web"], "event.type": ["access"]})
    for name in _APP_TIME_FIELDS:
        if name in flat:
            return _json_time(flat[name], name)
    return None
