"""Realistic raw events from a simulated fleet of sources, for the load generator and the tests.

`SourceFleet(n_sources=200, seed=...)` simulates firewalls (CEF in syslog, iptables kernel lines), Linux
hosts (sshd, sudo, cron, useradd/usermod in RFC 3164 over UDP and RFC 5424 over TCP), Windows hosts
(rendered event XML over HTTP), cloud audit trails (CloudTrail JSON over HTTP) and applications (JSON over
HTTP). `next_event()` returns one `RawEvent(transport, source_id, payload)`; the payload is one message,
unframed (frame it with `framing.octet_frame` for TCP, batch it with `json_batch`/`winxml_batch` for HTTP).

Scenario builders return the event sequences each multi-stage rule must detect, stamped so the last event
happens "now" (the fleet's clock) and the earlier ones `spacing` seconds apart before it.
`garbage_samples()` lists malformed inputs with the reason each must be dead-lettered with.

Everything is deterministic for a seed and a clock: pass `clock=lambda: fixed` in tests.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple
from xml.sax.saxutils import escape, quoteattr

from katas.siem.parsing import Transport

SourceKind = Literal[
    "firewall-cef", "firewall-iptables", "linux-rfc3164", "linux-rfc5424", "windows", "cloudtrail", "app"
]
SOURCE_KINDS: Final[tuple[SourceKind, ...]] = (
    "firewall-cef",
    "firewall-iptables",
    "linux-rfc3164",
    "linux-rfc5424",
    "windows",
    "cloudtrail",
    "app",
)
_KIND_SHARE: Final[dict[SourceKind, int]] = {
    "firewall-cef": 20,
    "firewall-iptables": 10,
    "linux-rfc3164": 50,
    "linux-rfc5424": 30,
    "windows": 50,
    "cloudtrail": 10,
    "app": 30,
}
"""Sources of each kind in a fleet of 200."""
_KIND_RATE: Final[dict[SourceKind, float]] = {
    "firewall-cef": 4.0,
    "firewall-iptables": 3.0,
    "linux-rfc3164": 1.0,
    "linux-rfc5424": 1.0,
    "windows": 1.5,
    "cloudtrail": 1.0,
    "app": 1.0,
}
"""Relative event rate of one source of each kind (firewalls are the chattiest)."""

_FIRST_NAMES: Final = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "xavier",
    "yvonne",
    "zara",
    "amir",
    "bianca",
    "chen",
    "dmitri",
    "elena",
    "farah",
    "goran",
    "hana",
]
_LAST_NAMES: Final = [
    "smith",
    "jones",
    "novak",
    "garcia",
    "kowalski",
    "tanaka",
    "mueller",
    "rossi",
    "dubois",
    "silva",
    "nguyen",
]
_SERVICE_ACCOUNTS: Final = ("svc-backup", "svc-deploy", "svc-monitor", "ansible", "jenkins")
_CEF_VENDORS: Final = (
    ("Palo Alto Networks", "PAN-OS", "10.2.4"),
    ("Fortinet", "FortiGate", "7.2.5"),
    ("Check Point", "VPN-1 & FireWall-1", "R81.20"),
    ("Cisco", "ASA", "9.16"),
)
_LINUX_ROLES: Final = ("web", "db", "cache", "batch", "bastion", "k8s-node", "mail", "ci")
_APP_SERVICES: Final = ("checkout", "accounts", "catalog", "payments", "support-portal", "hr-portal")
_REGIONS: Final = ("eu-west-1", "eu-central-1", "us-east-1")
_CRON_JOBS: Final = (
    "/usr/local/bin/backup.sh",
    "/usr/lib/sysstat/sa1 1 1",
    "test -x /usr/sbin/anacron",
    "/opt/app/rotate-logs",
)
_SUDO_COMMANDS: Final = (
    "/usr/bin/systemctl restart nginx",
    "/usr/bin/apt-get update",
    "/usr/bin/journalctl -u app --since today",
    "/usr/bin/docker ps",
    "/bin/cat /var/log/auth.log",
)
_SYSTEMD_LINES: Final = (
    "Started Daily apt download activities.",
    "Starting Cleanup of Temporary Directories...",
    "Finished Rotate log files.",
    "Reloading The nginx HTTP and reverse proxy server.",
)
_WINDOWS_PROCESSES: Final = (
    ("C:\\Windows\\System32\\svchost.exe", "C:\\Windows\\system32\\svchost.exe -k netsvcs -p"),
    (
        "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
        "powershell.exe -NoProfile -Command Get-Service",
    ),
    ("C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe", '"chrome.exe" --type=renderer'),
    ("C:\\Windows\\System32\\cmd.exe", "cmd.exe /c whoami"),
    ("C:\\Windows\\explorer.exe", "C:\\Windows\\Explorer.EXE"),
)
_SCAN_PORTS: Final = (
    21,
    22,
    23,
    25,
    53,
    80,
    110,
    135,
    139,
    143,
    443,
    445,
    993,
    1433,
    3306,
    3389,
    5432,
    5900,
    8080,
)
_ADMIN_GROUP_SID: Final = "S-1-5-32-544"


class RawEvent(NamedTuple):
    transport: Transport
    source_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    kind: SourceKind
    transport: Transport
    host: str
    header: Literal["rfc3164", "rfc5424"] = "rfc3164"
    """The syslog header a syslog source writes (CEF sources use both)."""
    vendor: tuple[str, str, str] = ("", "", "")
    account: str = ""
    """Cloud account id (cloudtrail) or service name (app)."""


class Garbage(NamedTuple):
    transport: Transport
    payload: bytes
    reason: str
    """A fragment the dead letter's reason must contain."""


def _iso(moment: float, digits: int = 3) -> str:
    stamp = datetime.fromtimestamp(moment, UTC)
    fraction = f"{stamp.microsecond:06d}".ljust(digits, "0")[:digits]
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + "Z"


def _bsd(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, UTC)
    return f"{stamp:%b} {stamp.day:>2} {stamp:%H:%M:%S}"


def syslog_3164(moment: float, host: str, tag: str, pid: int | None, message: str, *, pri: int = 86) -> bytes:
    """`<PRI>Mmm dd hh:mm:ss host tag[pid]: message` (pri 86 = authpriv.info)."""
    tag_text = f"{tag}[{pid}]:" if pid is not None else f"{tag}:"
    return f"<{pri}>{_bsd(moment)} {host} {tag_text} {message}".encode()


def syslog_5424(
    moment: float,
    host: str,
    app: str,
    pid: int | None,
    message: str,
    *,
    pri: int = 86,
    msgid: str = "-",
    structured_data: str = "-",
    bom: bool = False,
) -> bytes:
    head = (
        f"<{pri}>1 {_iso(moment, 6)} {host} {app} {pid if pid is not None else '-'} {msgid} {structured_data}"
    )
    return head.encode() + b" " + (b"\xef\xbb\xbf" if bom else b"") + message.encode()


def _cef_escape_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|")


def _cef_escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def cef(
    vendor: tuple[str, str, str], signature: str, name: str, severity: int | str, extensions: dict[str, Any]
) -> str:
    header = "|".join(_cef_escape_header(part) for part in (*vendor, signature, name, str(severity)))
    extension = " ".join(f"{key}={_cef_escape_value(str(value))}" for key, value in extensions.items())
    return f"CEF:0|{header}|{extension}"


def windows_event_xml(
    event_id: int,
    moment: float,
    computer: str,
    data: Sequence[tuple[str, str]],
    *,
    record_id: int,
    message: str,
    success: bool = True,
) -> bytes:
    """A rendered Security-channel event as `wevtutil qe Security /f:RenderedXml` prints it."""
    keyword = "0x8020000000000000" if success else "0x8010000000000000"
    data_xml = "".join(f"<Data Name={quoteattr(name)}>{escape(value)}</Data>" for name, value in data)
    return (
        "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>"
        "<Provider Name='Microsoft-Windows-Security-Auditing' Guid='{54849625-5478-4994-a5ba-3e3b0328c30d}'/>"
        f"<EventID>{event_id}</EventID><Version>2</Version><Level>0</Level><Task>12544</Task><Opcode>0</Opcode>"
        f"<Keywords>{keyword}</Keywords><TimeCreated SystemTime='{_iso(moment, 7)}'/>"
        f"<EventRecordID>{record_id}</EventRecordID><Correlation/><Execution ProcessID='636' ThreadID='712'/>"
        f"<Channel>Security</Channel><Computer>{escape(computer)}</Computer><Security/></System>"
        f"<EventData>{data_xml}</EventData>"
        f"<RenderingInfo Culture='en-US'><Message>{escape(message)}</Message><Level>Information</Level>"
        f"<Keywords><Keyword>{'Audit Success' if success else 'Audit Failure'}</Keyword></Keywords>"
        "</RenderingInfo></Event>"
    ).encode()


def json_batch(payloads: Sequence[bytes], *, ndjson: bool = False) -> bytes:
    """Batch JSON event payloads into one HTTP body: a JSON array, or NDJSON."""
    if ndjson:
        return b"\n".join(payloads) + b"\n"
    return b"[" + b",".join(payloads) + b"]"


def winxml_batch(payloads: Sequence[bytes]) -> bytes:
    """Batch rendered events into one `<Events>` document, as `wevtutil qe /e:Events` does."""
    return b"<Events>" + b"".join(payloads) + b"</Events>"


class SourceFleet:
    """A deterministic fleet of sources; `next_event` draws the next event from a source at random."""

    def __init__(self, n_sources: int = 200, seed: int = 0, clock: Callable[[], float] = time.time) -> None:
        if n_sources < 1:
            raise ValueError("a fleet needs at least one source")
        self._rng = random.Random(seed)
        self._clock = clock
        rng = self._rng
        self.users: list[str] = [
            *(f"{first}.{rng.choice(_LAST_NAMES)}" for first in _FIRST_NAMES[:20]),
            *_FIRST_NAMES[20:],
            *_SERVICE_ACCOUNTS,
        ]
        self.internal_ips: list[str] = [
            f"10.{rng.randint(1, 30)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}" for _ in range(300)
        ]
        self.external_ips: list[str] = [
            *(
                f"{net}.{rng.randint(2, 254)}"
                for net in ("203.0.113", "198.51.100", "192.0.2")
                for _ in range(30)
            ),
            *(f"2001:db8:{rng.randint(1, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}" for _ in range(10)),
        ]
        self.access_keys: dict[str, str] = {user: _access_key(rng) for user in self.users}
        self.sources: list[Source] = [
            self._make_source(kind, index) for index, kind in enumerate(_kinds(n_sources, rng))
        ]
        self._by_kind: dict[SourceKind, list[Source]] = {}
        for source in self.sources:
            self._by_kind.setdefault(source.kind, []).append(source)
        weights = [_KIND_RATE[source.kind] for source in self.sources]
        self._cum_weights = [sum(weights[: index + 1]) for index in range(len(weights))]
        self._record_id = 100_000
        self._emitters: dict[SourceKind, Callable[[Source, float], bytes]] = {
            "firewall-cef": self._firewall_cef,
            "firewall-iptables": self._firewall_iptables,
            "linux-rfc3164": self._linux,
            "linux-rfc5424": self._linux,
            "windows": self._windows,
            "cloudtrail": self._cloudtrail,
            "app": self._app,
        }

    # ------------------------------------------------------------------------------ the fleet

    def _make_source(self, kind: SourceKind, index: int) -> Source:
        rng = self._rng
        number = index + 1
        if kind == "firewall-cef":
            header: Literal["rfc3164", "rfc5424"] = "rfc5424" if number % 2 else "rfc3164"
            transport: Transport = "syslog-tcp" if header == "rfc5424" else "syslog-udp"
            return Source(
                f"fw-{number:03d}", kind, transport, f"fw-edge-{number:02d}", header, rng.choice(_CEF_VENDORS)
            )
        if kind == "firewall-iptables":
            return Source(f"fw-{number:03d}", kind, "syslog-udp", f"gw-{number:02d}")
        if kind in ("linux-rfc3164", "linux-rfc5424"):
            role = rng.choice(_LINUX_ROLES)
            header = "rfc3164" if kind == "linux-rfc3164" else "rfc5424"
            transport = "syslog-udp" if header == "rfc3164" else "syslog-tcp"
            return Source(f"lnx-{number:03d}", kind, transport, f"{role}-{number:03d}", header)
        if kind == "windows":
            host = f"WS-{number:04d}" if number % 5 else f"SRV-{number:04d}"
            return Source(f"win-{number:03d}", kind, "http-winxml", f"{host}.corp.example.com")
        if kind == "cloudtrail":
            account = f"{rng.randint(10**11, 10**12 - 1)}"
            return Source(f"aws-{number:03d}", kind, "http-json", "cloudtrail", account=account)
        service = rng.choice(_APP_SERVICES)
        return Source(f"app-{number:03d}", kind, "http-json", f"{service}-{number:03d}", account=service)

    def sources_of(self, kind: SourceKind) -> list[Source]:
        return list(self._by_kind.get(kind, []))

    def _source(self, kind: SourceKind) -> Source:
        """A source of the kind: from the fleet if it has one, else a stand-in of that kind."""
        candidates = self._by_kind.get(kind)
        if candidates:
            return self._rng.choice(candidates)
        return self._make_source(kind, len(self.sources))

    def next_event(self) -> RawEvent:
        source = self._rng.choices(self.sources, cum_weights=self._cum_weights)[0]
        payload = self._emitters[source.kind](source, self._clock())
        return RawEvent(source.transport, source.id, payload)

    def events(self, count: int) -> list[RawEvent]:
        return [self.next_event() for _ in range(count)]

    # ------------------------------------------------------------------------------ random parts

    def _user(self) -> str:
        return self._rng.choice(self.users)

    def _internal_ip(self) -> str:
        return self._rng.choice(self.internal_ips)

    def _external_ip(self) -> str:
        return self._rng.choice(self.external_ips)

    def _pid(self) -> int:
        return self._rng.randint(300, 65000)

    def _port(self) -> int:
        return self._rng.randint(32768, 60999)

    def _next_record(self) -> int:
        self._record_id += 1
        return self._record_id

    # ------------------------------------------------------------------------------ firewalls

    def _firewall_cef(self, source: Source, moment: float) -> bytes:
        rng = self._rng
        deny = rng.random() < 0.4
        src = self._external_ip() if deny else self._internal_ip()
        extensions: dict[str, Any] = {
            "rt": int(moment * 1000),
            "src": src,
            "spt": self._port(),
            "dst": self._internal_ip() if deny else rng.choice((self._internal_ip(), self._external_ip())),
            "dpt": rng.choice(_SCAN_PORTS),
            "proto": rng.choice(("TCP", "TCP", "TCP", "UDP")),
            "act": rng.choice(("deny", "drop", "block")) if deny else rng.choice(("allow", "accept")),
            "dvchost": source.host,
            "cs1Label": "Rule",
            "cs1": f"{'block' if deny else 'allow'}-{rng.randint(1, 40)}",
        }
        if not deny and rng.random() < 0.3:
            extensions["suser"] = self._user()
            extensions["msg"] = rng.choice(("web-browsing", "ssl | tls session", "dns=query ok"))
        name = "Traffic denied" if deny else "Traffic allowed"
        record = cef(
            source.vendor,
            "traffic" if rng.random() < 0.5 else str(rng.randint(100, 999)),
            name,
            5 if deny else 3,
            extensions,
        )
        return self._cef_syslog(source, moment, record)

    def _firewall_iptables(self, source: Source, moment: float) -> bytes:
        rng = self._rng
        deny = rng.random() < 0.5
        prefix = (
            rng.choice(("[UFW BLOCK]", "IPTABLES-DROP:", "DROP"))
            if deny
            else rng.choice(("[UFW ALLOW]", "ACCEPT"))
        )
        line = _iptables_line(
            prefix,
            self._external_ip() if deny else self._internal_ip(),
            self._internal_ip(),
            self._port(),
            rng.choice(_SCAN_PORTS),
            rng.choice(("TCP", "UDP")),
            uptime=moment % 1_000_000,
            rng=rng,
        )
        return syslog_3164(moment, source.host, "kernel", None, line, pri=4)

    def _cef_syslog(self, source: Source, moment: float, record: str) -> bytes:
        """CEF in syslog: RFC 3164 with the record right after the host name, or RFC 5424 with app-name CEF."""
        if source.header == "rfc5424":
            return syslog_5424(moment, source.host, "CEF", None, record, pri=134)
        return f"<134>{_bsd(moment)} {source.host} {record}".encode()

    def _syslog(
        self, source: Source, moment: float, app: str, pid: int | None, message: str, *, pri: int = 86
    ) -> bytes:
        if source.header == "rfc5424":
            structured = "-"
            if self._rng.random() < 0.5:
                structured = f'[origin ip="{self._internal_ip()}" software="{app}"][meta sequenceId="{self._rng.randint(1, 10**6)}"]'
            return syslog_5424(
                moment,
                source.host,
                app,
                pid,
                message,
                pri=pri,
                structured_data=structured,
                bom=self._rng.random() < 0.3,
            )
        return syslog_3164(moment, source.host, app, pid, message, pri=pri)

    # ------------------------------------------------------------------------------ Linux

    def _linux(self, source: Source, moment: float) -> bytes:
        rng = self._rng
        roll = rng.random()
        user = self._user()
        if roll < 0.30:
            method = rng.choice(("password", "publickey"))
            message = f"Accepted {method} for {user} from {self._internal_ip()} port {self._port()} ssh2"
            return self._syslog(source, moment, "sshd", self._pid(), message)
        if roll < 0.45:
            message = f"Failed password for {user} from {self._external_ip()} port {self._port()} ssh2"
            return self._syslog(source, moment, "sshd", self._pid(), message)
        if roll < 0.55:
            message = f"pam_unix(sshd:session): session opened for user {user}(uid=1000) by (uid=0)"
            return self._syslog(source, moment, "sshd", self._pid(), message)
        if roll < 0.70:
            command = rng.choice(_SUDO_COMMANDS)
            return self._syslog(source, moment, "sudo", None, _sudo_line(user, command), pri=85)
        if roll < 0.85:
            message = f"(root) CMD ({rng.choice(_CRON_JOBS)})"
            return self._syslog(source, moment, "CRON", self._pid(), message, pri=78)
        if roll < 0.99:
            return self._syslog(source, moment, "systemd", 1, rng.choice(_SYSTEMD_LINES), pri=30)
        new_user = f"tmp-{rng.randint(100, 999)}"
        message = f"new user: name={new_user}, UID={rng.randint(1001, 1999)}, GID=100, home=/home/{new_user}, shell=/bin/bash, from=/dev/pts/0"
        return self._syslog(source, moment, "useradd", self._pid(), message, pri=86)

    # ------------------------------------------------------------------------------ Windows

    def _windows(self, source: Source, moment: float) -> bytes:
        rng = self._rng
        roll = rng.random()
        user = self._user()
        if roll < 0.40:
            return self._win_logon(
                source.host,
                moment,
                user,
                self._internal_ip(),
                success=True,
                logon_type=rng.choice((2, 3, 3, 10)),
            )
        if roll < 0.48:
            return self._win_logon(
                source.host, moment, user, self._internal_ip(), success=False, logon_type=3
            )
        if roll < 0.68:
            return windows_event_xml(
                4634,
                moment,
                source.host,
                [
                    ("TargetUserSid", _sid(user)),
                    ("TargetUserName", user),
                    ("TargetDomainName", "CORP"),
                    ("LogonType", "3"),
                ],
                record_id=self._next_record(),
                message=f"An account was logged off.\n\nAccount Name:\t{user}\nAccount Domain:\tCORP",
            )
        if roll < 0.95:
            image, command = rng.choice(_WINDOWS_PROCESSES)
            return windows_event_xml(
                4688,
                moment,
                source.host,
                [
                    ("SubjectUserSid", _sid(user)),
                    ("SubjectUserName", user),
                    ("SubjectDomainName", "CORP"),
                    ("NewProcessId", hex(self._pid())),
                    ("NewProcessName", image),
                    ("TokenElevationType", "%%1936"),
                    ("ProcessId", hex(self._pid())),
                    ("CommandLine", command),
                    ("TargetUserName", "-"),
                    ("ParentProcessName", "C:\\Windows\\explorer.exe"),
                ],
                record_id=self._next_record(),
                message=f"A new process has been created.\n\nCreator Subject:\n\tAccount Name:\t{user}\n\tNew Process Name:\t{image}",
            )
        return windows_event_xml(
            4672,
            moment,
            source.host,
            [
                ("SubjectUserSid", _sid(user)),
                ("SubjectUserName", user),
                ("SubjectDomainName", "CORP"),
                ("PrivilegeList", "SeDebugPrivilege"),
            ],
            record_id=self._next_record(),
            message=f"Special privileges assigned to new logon.\n\nAccount Name:\t{user}",
        )

    def _win_logon(
        self, host: str, moment: float, user: str, ip: str, *, success: bool, logon_type: int
    ) -> bytes:
        port = self._port()
        data = [
            ("SubjectUserSid", "S-1-5-18"),
            ("SubjectUserName", host.split(".")[0] + "$"),
            ("SubjectDomainName", "CORP"),
            ("TargetUserSid", _sid(user) if success else "S-1-0-0"),
            ("TargetUserName", user),
            ("TargetDomainName", "CORP"),
            ("LogonType", str(logon_type)),
            ("LogonProcessName", "NtLmSsp " if logon_type == 3 else "User32 "),
            ("WorkstationName", "WS-REMOTE"),
            ("ProcessName", "C:\\Windows\\System32\\svchost.exe" if logon_type == 10 else "-"),
            ("IpAddress", f"::ffff:{ip}" if "." in ip and port % 3 == 0 else ip),
            ("IpPort", str(port)),
        ]
        if not success:
            data += [("Status", "0xc000006d"), ("SubStatus", "0xc000006a"), ("FailureReason", "%%2313")]
        if success:
            message = f"An account was successfully logged on.\n\nNew Logon:\n\tAccount Name:\t{user}\n\nNetwork Information:\n\tSource Network Address:\t{ip}\n\tSource Port:\t{port}"
        else:
            message = f"An account failed to log on.\n\nAccount For Which Logon Failed:\n\tAccount Name:\t{user}\n\nNetwork Information:\n\tSource Network Address:\t{ip}\n\tSource Port:\t{port}"
        return windows_event_xml(
            4624 if success else 4625,
            moment,
            host,
            data,
            record_id=self._next_record(),
            message=message,
            success=success,
        )

    # ------------------------------------------------------------------------------ cloud and apps

    def _cloudtrail(self, source: Source, moment: float) -> bytes:
        rng = self._rng
        user = self._user()
        roll = rng.random()
        if roll < 0.35:
            name, service, read_only = "ListBuckets", "s3", True
        elif roll < 0.55:
            name, service, read_only = "GetObject", "s3", True
        elif roll < 0.70:
            name, service, read_only = "DescribeInstances", "ec2", True
        elif roll < 0.80:
            name, service, read_only = "AssumeRole", "sts", False
        elif roll < 0.88:
            name, service, read_only = "GetCallerIdentity", "sts", True
        elif roll < 0.96:
            return self._console_login(source, moment, user, self._external_ip(), success=rng.random() < 0.9)
        else:
            name, service, read_only = "PutObject", "s3", False
        record = self._trail_record(
            source,
            moment,
            user,
            self._external_ip(),
            name,
            f"{service}.amazonaws.com",
            access_key=self.access_keys[user],
        )
        record["readOnly"] = read_only
        return json.dumps(record).encode()

    def _trail_record(
        self,
        source: Source,
        moment: float,
        user: str,
        ip: str,
        name: str,
        event_source: str,
        *,
        access_key: str | None,
    ) -> dict[str, Any]:
        rng = self._rng
        account = source.account or "123456789012"
        identity: dict[str, Any] = {
            "type": "IAMUser",
            "principalId": "AIDA" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", k=17)),
            "arn": f"arn:aws:iam::{account}:user/{user}",
            "accountId": account,
            "userName": user,
        }
        if access_key:
            identity["accessKeyId"] = access_key
        return {
            "eventVersion": "1.08",
            "userIdentity": identity,
            "eventTime": _iso(moment, 0),
            "eventSource": event_source,
            "eventName": name,
            "awsRegion": rng.choice(_REGIONS),
            "sourceIPAddress": ip,
            "userAgent": rng.choice(
                ("aws-cli/2.15.30 Python/3.11.8", "Boto3/1.34.69", "console.amazonaws.com")
            ),
            "requestParameters": None,
            "responseElements": None,
            "requestID": _hex_id(rng, 32),
            "eventID": _uuid(rng),
            "readOnly": True,
            "eventType": "AwsApiCall",
            "managementEvent": True,
            "recipientAccountId": account,
            "eventCategory": "Management",
        }

    def _console_login(self, source: Source, moment: float, user: str, ip: str, *, success: bool) -> bytes:
        record = self._trail_record(
            source, moment, user, ip, "ConsoleLogin", "signin.amazonaws.com", access_key=None
        )
        record.update(
            {
                "eventType": "AwsConsoleSignIn",
                "readOnly": False,
                "responseElements": {"ConsoleLogin": "Success" if success else "Failure"},
                "additionalEventData": {"MFAUsed": "Yes", "LoginTo": "https://console.aws.amazon.com/"},
            }
        )
        if not success:
            record["errorMessage"] = "Failed authentication"
        return json.dumps(record).encode()

    def _app(self, source: Source, moment: float) -> bytes:
        rng = self._rng
        user = self._user()
        email = f"{user}@example.com"
        ip = self._external_ip()
        action = rng.choice(
            ("login", "login", "logout", "view-order", "update-profile", "password-reset", "download-report")
        )
        outcome = "failure" if action == "login" and rng.random() < 0.15 else "success"
        if rng.random() < 0.5:
            event: dict[str, Any] = {
                "timestamp": _iso(moment),
                "service": source.account,
                "level": "warn" if outcome == "failure" else "info",
                "event": action,
                "user": user,
                "email": email,
                "client_ip": ip,
                "outcome": outcome,
                "message": f"{action} by {user} <{email}> from {ip}: {outcome}",
                "http": {
                    "method": "POST" if action != "view-order" else "GET",
                    "path": f"/api/{action}",
                    "status": 200 if outcome == "success" else 401,
                },
            }
        else:  # an application that already logs ECS
            event = {
                "@timestamp": _iso(moment),
                "event": {"action": action, "outcome": outcome, "dataset": f"{source.account}.audit"},
                "user": {"name": user, "email": email},
                "source": {"ip": ip, "port": self._port()},
                "host": {"name": source.host},
                "message": f"user {user} ({email}) {action} {outcome}",
            }
        return json.dumps(event).encode()

    # ------------------------------------------------------------------------------ scenarios

    def _times(self, count: int, spacing: float) -> list[float]:
        now = self._clock()
        return [now - (count - 1 - index) * spacing for index in range(count)]

    def _host_source(self, kind: SourceKind, host: str | None) -> Source:
        source = self._source(kind)
        if host is None:
            return source
        return Source(f"{source.id.split('-')[0]}-{host}", kind, source.transport, host, source.header)

    def brute_force_then_success(
        self,
        user: str,
        src_ip: str,
        platform: Literal["linux", "windows"] = "linux",
        *,
        attempts: int = 8,
        host: str | None = None,
        spacing: float = 2.0,
    ) -> list[RawEvent]:
        """`attempts` failed password logons of `user` from `src_ip`, then a successful one."""
        if platform == "linux":
            source = self._host_source("linux-rfc3164", host)
            times = self._times(attempts + 1, spacing)
            events = []
            for index, moment in enumerate(times):
                verdict = "Accepted" if index == attempts else "Failed"
                message = f"{verdict} password for {user} from {src_ip} port {self._port()} ssh2"
                payload = self._syslog(source, moment, "sshd", self._pid(), message)
                events.append(RawEvent(source.transport, source.id, payload))
            return events
        source = self._host_source("windows", host)
        times = self._times(attempts + 1, spacing)
        return [
            RawEvent(
                source.transport,
                source.id,
                self._win_logon(source.host, moment, user, src_ip, success=index == attempts, logon_type=3),
            )
            for index, moment in enumerate(times)
        ]

    def port_scan_then_connect(
        self,
        src: str,
        dst: str,
        ports: Sequence[int] = _SCAN_PORTS,
        *,
        connect_port: int | None = None,
        fmt: Literal["cef", "iptables"] = "cef",
        spacing: float = 0.2,
    ) -> list[RawEvent]:
        """Denied connection attempts from `src` to each of `ports` on `dst`, then an allowed connection."""
        source = self._source("firewall-cef" if fmt == "cef" else "firewall-iptables")
        final_port = connect_port if connect_port is not None else ports[0] if ports else 22
        times = self._times(len(ports) + 1, spacing)
        events = []
        for index, moment in enumerate(times):
            allowed = index == len(ports)
            port = final_port if allowed else ports[index]
            if fmt == "cef":
                extensions = {
                    "rt": int(moment * 1000),
                    "src": src,
                    "spt": self._port(),
                    "dst": dst,
                    "dpt": port,
                    "proto": "TCP",
                    "act": "allow" if allowed else "deny",
                    "dvchost": source.host,
                }
                name = "Traffic allowed" if allowed else "Traffic denied"
                payload = self._cef_syslog(
                    source, moment, cef(source.vendor, "traffic", name, 3 if allowed else 5, extensions)
                )
            else:
                prefix = "[UFW ALLOW]" if allowed else "[UFW BLOCK]"
                line = _iptables_line(
                    prefix, src, dst, self._port(), port, "TCP", uptime=moment % 1_000_000, rng=self._rng
                )
                payload = syslog_3164(moment, source.host, "kernel", None, line, pri=4)
            events.append(RawEvent(source.transport, source.id, payload))
        return events

    def new_admin_after_logon(
        self,
        user: str,
        host: str,
        platform: Literal["windows", "linux"] = "windows",
        *,
        new_user: str = "helpdesk-tmp",
        src_ip: str = "10.20.30.40",
        spacing: float = 5.0,
    ) -> list[RawEvent]:
        """`user` logs on to `host`, creates a local account `new_user` and adds it to the administrators."""
        if platform == "windows":
            source = self._host_source("windows", host)
            logon_at, created_at, added_at = self._times(3, spacing)
            new_sid = _sid(new_user)
            subject = [
                ("SubjectUserSid", _sid(user)),
                ("SubjectUserName", user),
                ("SubjectDomainName", "CORP"),
            ]
            created = windows_event_xml(
                4720,
                created_at,
                host,
                [
                    ("TargetUserName", new_user),
                    ("TargetDomainName", host.split(".")[0].upper()),
                    ("TargetSid", new_sid),
                    *subject,
                    ("SamAccountName", new_user),
                    ("UserAccountControl", "%%2080 %%2082 %%2084"),
                ],
                record_id=self._next_record(),
                message=f"A user account was created.\n\nSubject:\n\tAccount Name:\t{user}\n\nNew Account:\n\tAccount Name:\t{new_user}",
            )
            added = windows_event_xml(
                4732,
                added_at,
                host,
                [
                    ("MemberName", "-"),
                    ("MemberSid", new_sid),
                    ("TargetUserName", "Administrators"),
                    ("TargetDomainName", "Builtin"),
                    ("TargetSid", _ADMIN_GROUP_SID),
                    *subject,
                ],
                record_id=self._next_record(),
                message=f"A member was added to a security-enabled local group.\n\nSubject:\n\tAccount Name:\t{user}\n\nGroup:\n\tGroup Name:\tAdministrators",
            )
            logon = self._win_logon(host, logon_at, user, src_ip, success=True, logon_type=10)
            return [RawEvent(source.transport, source.id, payload) for payload in (logon, created, added)]
        source = self._host_source("linux-rfc5424", host)
        times = self._times(5, spacing)
        lines: list[tuple[str, int | None, str, int]] = [
            ("sshd", self._pid(), f"Accepted password for {user} from {src_ip} port {self._port()} ssh2", 86),
            ("sudo", None, _sudo_line(user, f"/usr/sbin/useradd -m {new_user}"), 85),
            (
                "useradd",
                self._pid(),
                f"new user: name={new_user}, UID=1050, GID=1050, home=/home/{new_user}, shell=/bin/bash, from=/dev/pts/0",
                86,
            ),
            ("sudo", None, _sudo_line(user, f"/usr/sbin/usermod -aG sudo {new_user}"), 85),
            ("usermod", self._pid(), f"add '{new_user}' to group 'sudo'", 86),
        ]
        return [
            RawEvent(source.transport, source.id, self._syslog(source, moment, app, pid, message, pri=pri))
            for moment, (app, pid, message, pri) in zip(times, lines, strict=True)
        ]

    def api_key_created_then_used_from_new_ip(
        self, user: str, key_id: str, ip1: str, ip2: str, *, spacing: float = 10.0
    ) -> list[RawEvent]:
        """`user` works from `ip1`, creates access key `key_id` there, and the key is then used from `ip2`."""
        source = self._source("cloudtrail")
        login_at, list_at, create_at, used_at = self._times(4, spacing)
        login = self._console_login(source, login_at, user, ip1, success=True)
        listing = self._trail_record(
            source, list_at, user, ip1, "ListUsers", "iam.amazonaws.com", access_key=None
        )
        created = self._create_access_key(source, create_at, user, ip1, key_id)
        used = self._trail_record(
            source, used_at, user, ip2, "ListBuckets", "s3.amazonaws.com", access_key=key_id
        )
        used["userAgent"] = "python-requests/2.31.0"
        payloads = [
            login,
            json.dumps(listing).encode(),
            json.dumps(created).encode(),
            json.dumps(used).encode(),
        ]
        return [RawEvent(source.transport, source.id, payload) for payload in payloads]

    def _create_access_key(
        self, source: Source, moment: float, user: str, ip: str, key_id: str
    ) -> dict[str, Any]:
        created = self._trail_record(
            source, moment, user, ip, "CreateAccessKey", "iam.amazonaws.com", access_key=None
        )
        created.update(
            {
                "readOnly": False,
                "requestParameters": {"userName": user},
                "responseElements": {
                    "accessKey": {
                        "userName": user,
                        "accessKeyId": key_id,
                        "status": "Active",
                        "createDate": _iso(moment, 0),
                    }
                },
            }
        )
        return created

    def password_spray_then_success(
        self,
        users: Sequence[str],
        src_ip: str,
        platform: Literal["linux", "windows"] = "linux",
        *,
        success_user: str | None = None,
        host: str | None = None,
        spacing: float = 2.0,
    ) -> list[RawEvent]:
        """One failed password logon for each of `users` from `src_ip` (one password tried against many
        accounts), then a successful logon as `success_user` (default: the last of `users`)."""
        winner = success_user if success_user is not None else users[-1]
        if platform == "linux":
            source = self._host_source("linux-rfc3164", host)
            events = []
            for index, moment in enumerate(self._times(len(users) + 1, spacing)):
                won = index == len(users)
                verdict = "Accepted" if won else "Failed"
                user = winner if won else users[index]
                message = f"{verdict} password for {user} from {src_ip} port {self._port()} ssh2"
                payload = self._syslog(source, moment, "sshd", self._pid(), message)
                events.append(RawEvent(source.transport, source.id, payload))
            return events
        source = self._host_source("windows", host)
        return [
            RawEvent(
                source.transport,
                source.id,
                self._win_logon(
                    source.host,
                    moment,
                    winner if index == len(users) else users[index],
                    src_ip,
                    success=index == len(users),
                    logon_type=3,
                ),
            )
            for index, moment in enumerate(self._times(len(users) + 1, spacing))
        ]

    def audit_tampering_then_new_key(
        self, user: str, key_id: str, ip: str, *, spacing: float = 30.0
    ) -> list[RawEvent]:
        """`user` stops the CloudTrail trail, then creates access key `key_id`, in one account."""
        source = self._source("cloudtrail")
        stop_at, create_at = self._times(2, spacing)
        stop = self._trail_record(
            source,
            stop_at,
            user,
            ip,
            "StopLogging",
            "cloudtrail.amazonaws.com",
            access_key=self.access_keys.get(user),
        )
        stop.update(
            {
                "readOnly": False,
                "requestParameters": {
                    "name": f"arn:aws:cloudtrail:eu-west-1:{source.account}:trail/management"
                },
            }
        )
        created = self._create_access_key(source, create_at, user, ip, key_id)
        return [
            RawEvent(source.transport, source.id, json.dumps(record).encode()) for record in (stop, created)
        ]


def _kinds(n_sources: int, rng: random.Random) -> list[SourceKind]:
    """Kinds for n sources: one of each first, then in the proportions of a 200-source fleet."""
    pool = [kind for kind, share in _KIND_SHARE.items() for _ in range(share)]
    rng.shuffle(pool)
    kinds = list(SOURCE_KINDS[:n_sources])
    rest = list(pool)
    for kind in kinds:
        rest.remove(kind)
    more = itertools.chain(rest, itertools.cycle(pool))
    kinds.extend(itertools.islice(more, n_sources - len(kinds)))
    return kinds


def _iptables_line(
    prefix: str, src: str, dst: str, spt: int, dpt: int, proto: str, *, uptime: float, rng: random.Random
) -> str:
    flags = " SYN URGP=0" if proto == "TCP" else ""
    window = (
        f" WINDOW={rng.choice((1024, 29200, 64240))} RES=0x00"
        if proto == "TCP"
        else f" LEN={rng.randint(20, 512)}"
    )
    return (
        f"[{uptime:.6f}] {prefix} IN=eth0 OUT= MAC=52:54:00:12:34:56:52:54:00:65:43:21:08:00 SRC={src} DST={dst} "
        f"LEN=60 TOS=0x00 PREC=0x00 TTL={rng.choice((52, 64, 128))} ID={rng.randint(1, 65535)} DF PROTO={proto} "
        f"SPT={spt} DPT={dpt}{window}{flags}"
    )


def _sudo_line(user: str, command: str) -> str:
    return f"{user} : TTY=pts/{sum(map(ord, user)) % 4} ; PWD=/home/{user} ; USER=root ; COMMAND={command}"


def _sid(user: str) -> str:
    """A stable, made-up domain SID for a user name."""
    rid = 1000 + sum(ord(char) * (index + 1) for index, char in enumerate(user)) % 9000
    return f"S-1-5-21-3623811015-3361044348-30300820-{rid}"


def _access_key(rng: random.Random) -> str:
    return "AKIA" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", k=16))


def _hex_id(rng: random.Random, length: int) -> str:
    return "".join(rng.choices("0123456789abcdef", k=length))


def _uuid(rng: random.Random) -> str:
    text = _hex_id(rng, 32)
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-a{text[17:20]}-{text[20:]}"


_BILLION_LAUGHS: Final = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Event><System><EventID>4625</EventID></System><EventData><Data Name="TargetUserName">&lol9;</Data></EventData></Event>"""

_EXTERNAL_ENTITY: Final = b"""<?xml version="1.0"?>
<!DOCTYPE Event [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Event><System><EventID>4625</EventID></System><EventData><Data Name="TargetUserName">&xxe;</Data></EventData></Event>"""


def billion_laughs() -> bytes:
    """The classic entity-expansion bomb, dressed as a Windows event."""
    return _BILLION_LAUGHS


def garbage_samples() -> list[Garbage]:
    """Malformed inputs of every transport, each with (a fragment of) the reason it must be dead-lettered with."""
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        Garbage("syslog-udp", b"\xff\xfe<13>Jan  5 10:00:00 host app: hi", "payload is not UTF-8"),
        Garbage("syslog-udp", b"", "syslog: empty message"),
        Garbage("syslog-udp", b"hello world", "rfc3164: no <PRI>"),
        Garbage("syslog-udp", b"<13>hello world", "rfc3164: no timestamp"),
        Garbage("syslog-udp", b"<13>Feb 30 10:00:00 host app: no such day", "rfc3164: invalid timestamp"),
        Garbage("syslog-tcp", b"<999>Jan  5 10:00:00 host app: x", "PRI 999 is out of range"),
        Garbage("syslog-tcp", b"<13>1 2024-01-05T10:00:00Z host", "rfc5424: header has"),
        Garbage(
            "syslog-tcp", b"<13>2 2024-01-05T10:00:00Z host app - - - msg", "rfc5424: unsupported version 2"
        ),
        Garbage("syslog-tcp", b"<13>1 yesterday host app - - - msg", "rfc5424: invalid timestamp"),
        Garbage(
            "syslog-tcp", b'<13>1 2024-01-05T10:00:00Z host app - - [meta x="1 msg', "rfc5424: unterminated"
        ),
        Garbage(
            "syslog-tcp",
            b"<13>1 2024-01-05T10:00:00Z host app - - {sd} msg",
            "rfc5424: structured data must be",
        ),
        Garbage("syslog-udp", b"<134>Jan  5 10:00:00 fw01 CEF:0|Vendor|Product|1.0|100", "cef: header has"),
        Garbage(
            "syslog-udp",
            b"<134>Jan  5 10:00:00 fw01 CEF:0|V|P|1|100|Name|5|no pairs here",
            "cef: extension has no key=value",
        ),
        Garbage("http-json", b"[1, 2]", "json: not an object"),
        Garbage("http-json", b'{"user": ', "json: invalid JSON"),
        Garbage("http-json", b'{"bytes": NaN}', "json: NaN is not a JSON number"),
        Garbage("http-json", b'{"n": 1e999}', "json: number out of range"),
        Garbage("http-json", b"\xc3\x28", "payload is not UTF-8"),
        Garbage("http-json", b"", "json: empty payload"),
        Garbage("http-json", b'{"timestamp": "yesterday", "user": "x"}', "json: invalid timestamp"),
        Garbage("http-json", deep, "json: nested too deeply"),
        Garbage("http-winxml", billion_laughs(), "winxml: entity declarations are not allowed"),
        Garbage("http-winxml", _EXTERNAL_ENTITY, "winxml: entity declarations are not allowed"),
        Garbage("http-winxml", b"<Event><System><EventID>4624", "winxml: not well-formed"),
        Garbage("http-winxml", b"<Foo/>", "winxml: root element is <Foo>"),
        Garbage(
            "http-winxml",
            b"<Event><System><Computer>x</Computer></System></Event>",
            "winxml: no System/EventID",
        ),
        Garbage(
            "http-winxml",
            b"<Event><System><EventID>4624</EventID><TimeCreated SystemTime='soon'/></System></Event>",
            "winxml: invalid TimeCreated",
        ),
    ]
