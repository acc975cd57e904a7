"""Parsers for the four wire formats, from one message's bytes to a typed record.

The transport says which family a payload belongs to; its content says which variant:

- `syslog-udp`, `syslog-tcp`: RFC 5424 when the PRI is followed by a version (`<34>1 ...`), else RFC 3164
  (BSD syslog); in either, a message body starting `CEF:<version>|` is a CEF record;
- `http-json`: one JSON object (a batch is split first with `split_json_batch`);
- `http-winxml`: one rendered Windows `<Event>` (a batch is split first with `split_winxml_batch`).

Every parser raises `ParseError` with a reason a person can act on ("rfc3164: no timestamp"); nothing here
touches the network or the clock (RFC 3164's missing year is inferred from the time the event was received).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args
from xml.etree.ElementTree import Element, tostring
from xml.etree.ElementTree import ParseError as XmlParseError

from defusedxml import ElementTree as SafeElementTree
from defusedxml.common import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden, NotSupportedError

Transport = Literal["syslog-udp", "syslog-tcp", "http-json", "http-winxml"]
TRANSPORTS: Final[tuple[Transport, ...]] = get_args(Transport)
Format = Literal["rfc5424", "rfc3164", "cef", "json", "winxml"]


class ParseError(ValueError):
    """A payload that cannot be parsed; `reason` is what goes into the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class CefRecord:
    version: int
    vendor: str
    product: str
    device_version: str
    signature_id: str
    name: str
    severity: str
    extensions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SyslogRecord:
    format: Literal["rfc5424", "rfc3164"]
    facility: int
    severity: int
    timestamp: datetime | None
    """Aware (UTC when the sender gave no offset); None for RFC 5424's NILVALUE."""
    hostname: str | None
    appname: str | None
    procid: str | None
    msgid: str | None
    message: str
    structured_data: dict[str, dict[str, str]] = field(default_factory=dict)
    cef: CefRecord | None = None


@dataclass(frozen=True, slots=True)
class JsonRecord:
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WinEventRecord:
    event_id: int
    provider: str | None
    channel: str | None
    computer: str | None
    time_created: datetime | None
    record_id: str | None
    keywords: str | None
    data: dict[str, str]
    """EventData (or UserData) values by name; unnamed Data elements are param1, param2, ..."""
    message: str | None
    """RenderingInfo/Message of rendered event XML."""
    rendered_keywords: tuple[str, ...] = ()


ParsedRecord = SyslogRecord | JsonRecord | WinEventRecord


def record_format(record: ParsedRecord) -> Format:
    if isinstance(record, SyslogRecord):
        return "cef" if record.cef is not None else record.format
    if isinstance(record, JsonRecord):
        return "json"
    return "winxml"


def parse(transport: str, payload: bytes, *, received_at: float) -> ParsedRecord:
    """Parse one message; `received_at` (epoch seconds) supplies RFC 3164's missing year."""
    if transport in ("syslog-udp", "syslog-tcp"):
        return parse_syslog(payload, received_at=received_at)
    if transport == "http-json":
        return parse_json_event(payload)
    if transport == "http-winxml":
        return parse_winxml(payload)
    raise ParseError(f"unknown transport {transport!r}")


def decode_utf8(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ParseError(
            f"payload is not UTF-8 (byte 0x{payload[error.start]:02x} at offset {error.start})"
        ) from None


# ---------------------------------------------------------------------------------------------- time

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?\s?([Zz]|[+-]\d{2}:?\d{2})?"
)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 / ISO 8601 date-time to an aware datetime (UTC when no offset is given).

    Accepts what senders actually write: up to 9 fraction digits (Windows writes 7), `+hhmm` offsets."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:40]!r}")
    return _datetime_from_match(match)


def _datetime_from_match(match: re.Match[str]) -> datetime:
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    second_value = min(int(second), 59)  # a leap second is kept as :59
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), second_value, micro, UTC)
    if offset and offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        digits = offset[1:].replace(":", "")
        delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        if delta >= timedelta(hours=24):
            raise ValueError(f"UTC offset out of range: {offset}")
        moment -= sign * delta
    return moment


# ---------------------------------------------------------------------------------------------- syslog

_PRI = re.compile(r"<(\d{1,3})>")
_RFC5424_START = re.compile(r"<\d{1,3}>\d{1,2} ")
_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
_BSD_TIMESTAMP = re.compile(
    r"([A-Za-z]{3}) {1,2}(\d{1,2}) (?:(\d{4}) )?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(?= |$)"
)
_ISO_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:[Zz]|[+-]\d{2}:?\d{2})?(?= |$)"
)
_TAG = re.compile(r"([A-Za-z0-9_./@-]{1,64})(?:\[([^\]\s]{0,32})\])?:(?: |$)")
_CEF_START = re.compile(r"CEF:\d{1,3}\|")


def parse_syslog(payload: bytes, *, received_at: float) -> SyslogRecord:
    text = decode_utf8(payload).rstrip("\r\n\x00")
    if _RFC5424_START.match(text):
        return parse_rfc5424(text)
    return parse_rfc3164(text, received_at=received_at)


def _parse_pri(text: str, fmt: str) -> tuple[int, int, int]:
    """(facility, severity, end of the PRI) of `<PRI>` at the start of text."""
    match = _PRI.match(text)
    if match is None:
        raise ParseError(f"{fmt}: no <PRI> at the start" if text else "syslog: empty message")
    value = int(match.group(1))
    if value > 191:
        raise ParseError(f"{fmt}: PRI {value} is out of range (0-191)")
    return value // 8, value % 8, match.end()


def parse_rfc5424(text: str) -> SyslogRecord:
    """`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]` (RFC 5424)."""
    facility, severity, start = _parse_pri(text, "rfc5424")
    parts = text[start:].split(" ", 6)
    if len(parts) < 7:
        raise ParseError(f"rfc5424: header has {len(parts)} of its 7 fields")
    version, stamp, hostname, appname, procid, msgid, rest = parts
    if version != "1":
        raise ParseError(f"rfc5424: unsupported version {version}")
    timestamp = None
    if stamp != "-":
        try:
            timestamp = parse_rfc3339(stamp)
        except ValueError:
            raise ParseError(f"rfc5424: invalid timestamp {stamp[:40]!r}") from None
    structured, rest = _parse_structured_data(rest)
    if rest and not rest.startswith(" "):
        raise ParseError("rfc5424: no space between structured data and message")
    message = rest[1:].removeprefix("\ufeff")
    cef = parse_cef(message) if _CEF_START.match(message) else None
    return SyslogRecord(
        format="rfc5424",
        facility=facility,
        severity=severity,
        timestamp=timestamp,
        hostname=_nil(hostname),
        appname=_nil(appname),
        procid=_nil(procid),
        msgid=_nil(msgid),
        message=message,
        structured_data=structured,
        cef=cef,
    )


def _nil(value: str) -> str | None:
    return None if value in ("-", "") else value


def _parse_structured_data(text: str) -> tuple[dict[str, dict[str, str]], str]:
    """Parse `-` or `[id name="value" ...][...]`; return the elements and the text after them."""
    if text.startswith("-"):
        return {}, text[1:]
    if not text.startswith("["):
        raise ParseError("rfc5424: structured data must be '-' or start with '['")
    elements: dict[str, dict[str, str]] = {}
    pos, length = 0, len(text)
    while pos < length and text[pos] == "[":
        pos += 1
        id_end = pos
        while id_end < length and text[id_end] not in ' =]"':
            id_end += 1
        sd_id = text[pos:id_end]
        if not sd_id:
            raise ParseError("rfc5424: structured data element without an SD-ID")
        params = elements.setdefault(sd_id, {})
        pos = id_end
        while True:
            if pos >= length:
                raise ParseError(f"rfc5424: structured data element [{sd_id} is not closed")
            if text[pos] == "]":
                pos += 1
                break
            if text[pos] != " ":
                raise ParseError(f"rfc5424: unexpected {text[pos]!r} in structured data element [{sd_id}")
            pos += 1
            name_end = text.find("=", pos)
            if name_end < 0 or name_end + 1 >= length or text[name_end + 1] != '"':
                raise ParseError(f'rfc5424: parameter in [{sd_id} is not name="value"')
            name = text[pos:name_end]
            if not name or any(c in name for c in ' ]"'):
                raise ParseError(f"rfc5424: invalid parameter name {name[:32]!r} in [{sd_id}")
            value, pos = _sd_value(text, name_end + 2, sd_id)
            params[name] = value
    return elements, text[pos:]


def _sd_value(text: str, pos: int, sd_id: str) -> tuple[str, int]:
    """Read a PARAM-VALUE up to its closing quote; `\\"`, `\\\\` and `\\]` are escapes (RFC 5424 6.3.3)."""
    out: list[str] = []
    length = len(text)
    while pos < length:
        char = text[pos]
        if char == "\\" and pos + 1 < length and text[pos + 1] in '"\\]':
            out.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    raise ParseError(f"rfc5424: unterminated parameter value in [{sd_id}")


def parse_rfc3164(text: str, *, received_at: float) -> SyslogRecord:
    """`<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG` (RFC 3164), with the variants senders use: an ISO
    timestamp instead of the BSD one, a year after the day, no hostname. The year is inferred."""
    facility, severity, pos = _parse_pri(text, "rfc3164")
    rest = text[pos:]
    timestamp, rest = _bsd_timestamp(rest, received_at)
    if rest and not rest.startswith(" "):
        raise ParseError("rfc3164: no space after the timestamp")
    rest = rest[1:]
    hostname: str | None = None
    if rest and not _CEF_START.match(rest):
        token, _, after = rest.partition(" ")
        if not _TAG.fullmatch(token + " ") and not token.endswith(":"):
            hostname, rest = token, after
    appname = procid = None
    if not _CEF_START.match(rest):
        tag = _TAG.match(rest)
        if tag is not None:
            appname, procid = tag.group(1), tag.group(2)
            rest = rest[tag.end() :]
    cef = parse_cef(rest) if _CEF_START.match(rest) else None
    return SyslogRecord(
        format="rfc3164",
        facility=facility,
        severity=severity,
        timestamp=timestamp,
        hostname=hostname or None,
        appname=appname,
        procid=procid or None,
        msgid=None,
        message=rest,
        cef=cef,
    )


def _bsd_timestamp(text: str, received_at: float) -> tuple[datetime, str]:
    iso = _ISO_TIMESTAMP.match(text)
    if iso is not None:
        try:
            return parse_rfc3339(iso.group(0)), text[iso.end() :]
        except ValueError:
            raise ParseError(f"rfc3164: invalid timestamp {iso.group(0)!r}") from None
    bsd = _BSD_TIMESTAMP.match(text)
    if bsd is None:
        raise ParseError("rfc3164: no timestamp")
    month_name, day, year, hour, minute, second, fraction = bsd.groups()
    month = _MONTHS.get(month_name.lower())
    if month is None:
        raise ParseError(f"rfc3164: unknown month {month_name!r}")
    micro = int((fraction or "0").ljust(6, "0"))
    received = datetime.fromtimestamp(received_at, UTC)
    years = [int(year)] if year else [received.year - 1, received.year, received.year + 1]
    candidates: list[datetime] = []
    for candidate_year in years:
        try:
            candidates.append(
                datetime(candidate_year, month, int(day), int(hour), int(minute), int(second), micro, UTC)
            )
        except ValueError:
            continue
    if not candidates:
        raise ParseError(f"rfc3164: invalid timestamp {bsd.group(0)!r}")
    # No year on the wire: take the one that puts the event closest to when it was received.
    return min(candidates, key=lambda moment: abs(moment - received)), text[bsd.end() :]


# ---------------------------------------------------------------------------------------------- CEF

_CEF_KEY = re.compile(r"[A-Za-z0-9_.\[\]-]+")
_CEF_SEVERITY_WORDS: Final = {"unknown": None, "low": 3, "medium": 5, "high": 8, "very-high": 10}


def parse_cef(text: str) -> CefRecord:
    """`CEF:Version|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.

    Header fields escape `|` and `\\` with a backslash; extension values escape `=` and `\\` and may carry
    `\\n`/`\\r`. An extension value runs to the next ` key=`, so values may hold spaces."""
    header: list[str] = []
    current: list[str] = []
    pos, length = 0, len(text)
    while pos < length and len(header) < 7:
        char = text[pos]
        if char == "\\" and pos + 1 < length and text[pos + 1] in "|\\":
            current.append(text[pos + 1])
            pos += 2
            continue
        if char == "|":
            header.append("".join(current))
            current = []
        else:
            current.append(char)
        pos += 1
    if len(header) < 7:
        raise ParseError(f"cef: header has {len(header) + 1} of its 8 '|'-separated fields")
    version_text = header[0].removeprefix("CEF:").strip()
    if not version_text.isdigit():
        raise ParseError(f"cef: invalid version {version_text[:16]!r}")
    return CefRecord(
        version=int(version_text),
        vendor=header[1],
        product=header[2],
        device_version=header[3],
        signature_id=header[4],
        name=header[5],
        severity=header[6].strip(),
        extensions=parse_cef_extension(text[pos:]),
    )


def cef_severity(value: str) -> int | None:
    """CEF severity as 0-10: a number, or one of Unknown/Low/Medium/High/Very-High."""
    if value.isdigit():
        return min(int(value), 10)
    return _CEF_SEVERITY_WORDS.get(value.lower())


def parse_cef_extension(text: str) -> dict[str, str]:
    equals: list[int] = []
    pos, length = 0, len(text)
    while pos < length:
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "=":
            equals.append(pos)
        pos += 1
    keys: list[tuple[int, int]] = []  # (start of the key, position of its '=')
    for eq in equals:
        start = eq
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        if _CEF_KEY.fullmatch(text, start, eq):
            keys.append((start, eq))
    if not keys:
        if text.strip():
            raise ParseError("cef: extension has no key=value pairs")
        return {}
    if text[: keys[0][0]].strip():
        raise ParseError(f"cef: extension starts with {text[: keys[0][0]].strip()[:32]!r} before any key")
    extensions: dict[str, str] = {}
    for index, (start, eq) in enumerate(keys):
        end = keys[index + 1][0] if index + 1 < len(keys) else length
        extensions[text[start:eq]] = _cef_unescape(text[eq + 1 : end].rstrip())
    return extensions


_CEF_ESCAPES: Final = {"\\": "\\", "=": "=", "|": "|", "n": "\n", "r": "\r"}


def _cef_unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    pos, length = 0, len(value)
    while pos < length:
        char = value[pos]
        if char == "\\" and pos + 1 < length and value[pos + 1] in _CEF_ESCAPES:
            out.append(_CEF_ESCAPES[value[pos + 1]])
            pos += 2
        else:
            out.append(char)
            pos += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------- JSON


def _refuse_constant(name: str) -> Any:
    raise ParseError(f"json: {name} is not a JSON number")


def parse_json_event(payload: bytes) -> JsonRecord:
    text = decode_utf8(payload).removeprefix("\ufeff")
    if not text.strip():
        raise ParseError("json: empty payload")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise ParseError(
            f"json: invalid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise ParseError("json: nested too deeply") from None
    except ParseError:
        raise
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise ParseError(f"json: invalid value: {error}") from None
    if not isinstance(data, dict):
        raise ParseError(f"json: not an object (got {_json_kind(data)})")
    _check_finite(data)
    return JsonRecord(data)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _check_finite(value: Any) -> None:
    """Floats such as 1e999 overflow to infinity, which JSON cannot carry on."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ParseError("json: number out of range")
    if isinstance(value, dict):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list):
        for item in value:
            _check_finite(item)


def split_json_batch(body: bytes) -> list[bytes]:
    """Split an HTTP JSON body into one payload per event: a JSON array, or NDJSON (one value per line).

    Each payload keeps the event's original bytes. A body that is neither (not UTF-8, a broken array)
    comes back whole, so normalization dead-letters it with the reason rather than it being lost; in
    NDJSON a broken line is its own payload and only it is dead-lettered."""
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return [body]
    stripped = text.strip()
    if not stripped:
        return []
    decoder = json.JSONDecoder()
    if stripped.startswith("["):
        try:
            return _split_json_array(stripped, decoder)
        except (ValueError, RecursionError):
            return [body]
    try:
        return _split_json_sequence(stripped, decoder)
    except (ValueError, RecursionError):
        return [line.strip().encode() for line in stripped.splitlines() if line.strip()]


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _split_json_array(text: str, decoder: json.JSONDecoder) -> list[bytes]:
    items: list[bytes] = []
    pos = _skip_ws(text, 1)
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            _, end = decoder.raw_decode(text, pos)
            items.append(text[pos:end].encode())
            pos = _skip_ws(text, end)
            if pos < len(text) and text[pos] == ",":
                pos = _skip_ws(text, pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            raise ValueError("array not closed")
    if _skip_ws(text, pos) != len(text):
        raise ValueError("text after the array")
    return items


def _split_json_sequence(text: str, decoder: json.JSONDecoder) -> list[bytes]:
    items: list[bytes] = []
    pos = 0
    while pos < len(text):
        _, end = decoder.raw_decode(text, pos)
        items.append(text[pos:end].encode())
        pos = _skip_ws(text, end)
    return items


# ---------------------------------------------------------------------------------------------- Windows XML


def _safe_xml(payload: bytes) -> Element:
    try:
        root: Element = SafeElementTree.fromstring(
            payload, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
    except EntitiesForbidden:
        raise ParseError("winxml: entity declarations are not allowed") from None
    except ExternalReferenceForbidden:
        raise ParseError("winxml: external references are not allowed") from None
    except DTDForbidden:
        raise ParseError("winxml: document type declarations are not allowed") from None
    except NotSupportedError as error:
        raise ParseError(f"winxml: unsupported XML feature: {error}") from None
    except XmlParseError as error:
        raise ParseError(f"winxml: not well-formed XML: {error}") from None
    return root


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: Element, name: str) -> Element | None:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _text(element: Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    text = element.text.strip()
    return text or None


def parse_winxml(payload: bytes) -> WinEventRecord:
    """A rendered Windows event: `<Event><System>...</System><EventData>...</EventData>
    [<RenderingInfo>...</RenderingInfo>]</Event>`. DTD entities and external references are refused."""
    if not payload.strip():
        raise ParseError("winxml: empty payload")
    root = _safe_xml(payload)
    if _local(root.tag) != "Event":
        raise ParseError(f"winxml: root element is <{_local(root.tag)}>, expected <Event>")
    system = _child(root, "System")
    if system is None:
        raise ParseError("winxml: no <System> element")
    event_id_text = _text(_child(system, "EventID"))
    if event_id_text is None:
        raise ParseError("winxml: no System/EventID")
    if not event_id_text.isdigit() or int(event_id_text) > 65535:
        raise ParseError(f"winxml: EventID {event_id_text[:16]!r} is not a number from 0 to 65535")
    provider = _child(system, "Provider")
    created = _child(system, "TimeCreated")
    time_created = None
    if created is not None and created.get("SystemTime"):
        stamp = created.get("SystemTime", "")
        try:
            time_created = parse_rfc3339(stamp)
        except ValueError:
            raise ParseError(f"winxml: invalid TimeCreated SystemTime {stamp[:40]!r}") from None
    data: dict[str, str] = {}
    event_data = _child(root, "EventData")
    if event_data is not None:
        for index, item in enumerate(event_data, start=1):
            if _local(item.tag) != "Data":
                continue
            data[item.get("Name") or f"param{index}"] = (item.text or "").strip()
    user_data = _child(root, "UserData")
    if user_data is not None:
        for container in user_data:
            for item in container:
                if len(item) == 0:
                    data.setdefault(_local(item.tag), (item.text or "").strip())
    rendering = _child(root, "RenderingInfo")
    message = None
    rendered_keywords: tuple[str, ...] = ()
    if rendering is not None:
        message = _text(_child(rendering, "Message"))
        keywords = _child(rendering, "Keywords")
        if keywords is not None:
            rendered_keywords = tuple(k.text.strip() for k in keywords if k.text and k.text.strip())
    return WinEventRecord(
        event_id=int(event_id_text),
        provider=provider.get("Name") if provider is not None else None,
        channel=_text(_child(system, "Channel")),
        computer=_text(_child(system, "Computer")),
        time_created=time_created,
        record_id=_text(_child(system, "EventRecordID")),
        keywords=_text(_child(system, "Keywords")),
        data=data,
        message=message,
        rendered_keywords=rendered_keywords,
    )


_EVENT_SPAN = re.compile(rb"<Event[\s>].*?</Event\s*>", re.DOTALL)


def split_winxml_batch(body: bytes) -> list[bytes]:
    """Split `<Events><Event>...</Event>...</Events>` into one payload per `<Event>`.

    A single `<Event>` comes back as it is. A body that is not well-formed, or hostile (entities), comes
    back whole, so normalization dead-letters it with the reason."""
    if not body.strip():
        return []
    try:
        root = _safe_xml(body)
    except ParseError:
        return [body]
    if _local(root.tag) != "Events":
        return [body]
    events = [child for child in root if _local(child.tag) == "Event"]
    spans = _EVENT_SPAN.findall(body)
    if len(spans) == len(events):
        return [bytes(span) for span in spans]
    # Prefixed or oddly encoded markup: re-serialise the parsed elements instead.
    return [tostring(event, encoding="utf-8") for event in events]
