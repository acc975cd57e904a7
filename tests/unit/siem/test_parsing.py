"""Parsers: RFC 5424, RFC 3164, CEF, JSON and Windows event XML, and the HTTP batch splitters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katas.siem.parsing import (
    JsonRecord,
    ParseError,
    SyslogRecord,
    WinEventRecord,
    cef_severity,
    parse,
    parse_cef,
    parse_json_event,
    parse_rfc3164,
    parse_rfc3339,
    parse_syslog,
    parse_winxml,
    split_json_batch,
    split_winxml_batch,
)
from katas.siem.samples import billion_laughs, cef, winxml_batch

RECEIVED = datetime(2025, 3, 10, 12, 0, tzinfo=UTC).timestamp()


def syslog(payload: bytes, received: float = RECEIVED) -> SyslogRecord:
    return parse_syslog(payload, received_at=received)


# ------------------------------------------------------------------------------------------------ RFC 5424


def test_rfc5424_example_with_bom_and_no_structured_data() -> None:
    payload = b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed for lonvick"
    record = syslog(payload)
    assert record.format == "rfc5424"
    assert (record.facility, record.severity) == (4, 2)
    assert record.timestamp == datetime(2003, 10, 11, 22, 14, 15, 3000, UTC)
    assert (record.hostname, record.appname, record.procid, record.msgid) == (
        "mymachine.example.com",
        "su",
        None,
        "ID47",
    )
    assert record.message == "'su root' failed for lonvick"
    assert record.structured_data == {}


def test_rfc5424_offset_timestamp_and_microseconds() -> None:
    record = syslog(b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time")
    assert record.timestamp == datetime(2003, 8, 24, 12, 14, 15, 3, UTC)
    assert record.procid == "8710"
    assert record.message == "%% It's time"


def test_rfc5424_structured_data_with_escapes_and_no_message() -> None:
    payload = (
        b'<165>1 2003-10-11T22:14:15.003Z host evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="App"]'
        b'[examplePriority@32473 class="hi\\"gh" path="a\\\\b\\]c" odd="x\\y"]'
    )
    record = syslog(payload)
    assert record.structured_data == {
        "exampleSDID@32473": {"iut": "3", "eventSource": "App"},
        "examplePriority@32473": {"class": 'hi"gh', "path": "a\\b]c", "odd": "x\\y"},
    }
    assert record.message == ""


def test_rfc5424_nilvalues() -> None:
    record = syslog(b"<13>1 - - - - - - just text")
    assert record.timestamp is None
    assert record.hostname is None
    assert record.appname is None
    assert record.message == "just text"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"<13>1 2024-01-05T10:00:00Z host", "rfc5424: header has 3 of its 7 fields"),
        (b"<13>1 2024-13-05T10:00:00Z h a - - - m", "rfc5424: invalid timestamp"),
        (b'<13>1 - h a - - [x a="1"', "rfc5424: structured data element [x is not closed"),
        (b"<13>1 - h a - - [x a=1] m", 'rfc5424: parameter in [x is not name="value"'),
        (b'<13>1 - h a - - [x a="1"]m', "rfc5424: no space between structured data and message"),
        (b"<200>1 - h a - - - m", "rfc5424: PRI 200 is out of range"),
    ],
)
def test_rfc5424_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match="^" + reason.replace("[", r"\[")):
        syslog(payload)


sd_value = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=150, deadline=None)
@given(values=st.dictionaries(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), sd_value, max_size=4))
def test_rfc5424_structured_data_round_trips(values: dict[str, str]) -> None:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")

    params = "".join(f' {name}="{esc(value)}"' for name, value in values.items())
    record = syslog(f"<13>1 - host app - - [meta@1{params}] msg".encode())
    assert record.structured_data == {"meta@1": values}
    assert record.message == "msg"


# ------------------------------------------------------------------------------------------------ RFC 3164


def test_rfc3164_example() -> None:
    record = syslog(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8")
    assert record.format == "rfc3164"
    assert record.timestamp == datetime(2024, 10, 11, 22, 14, 15, tzinfo=UTC)  # closest to March 2025
    assert (record.hostname, record.appname, record.procid) == ("mymachine", "su", None)
    assert record.message == "'su root' failed for lonvick on /dev/pts/8"


def test_rfc3164_tag_with_pid_and_space_padded_day() -> None:
    record = syslog(
        b"<86>Mar  5 09:01:02 web-01 sshd[4242]: Failed password for bob from 192.0.2.7 port 2222 ssh2"
    )
    assert record.timestamp == datetime(2025, 3, 5, 9, 1, 2, tzinfo=UTC)
    assert (record.hostname, record.appname, record.procid) == ("web-01", "sshd", "4242")
    assert record.message.startswith("Failed password for bob")


def test_rfc3164_without_hostname() -> None:
    record = syslog(b"<34>Oct 11 22:14:15 su: 'su root' failed")
    assert record.hostname is None
    assert record.appname == "su"


def test_rfc3164_iso_timestamp_and_no_tag() -> None:
    record = syslog(b"<13>2025-03-10T11:59:58.5+01:00 host Use the BFG!")
    assert record.timestamp == datetime(2025, 3, 10, 10, 59, 58, 500000, UTC)
    assert record.appname is None
    assert record.message == "Use the BFG!"


def test_rfc3164_year_is_inferred_across_new_year() -> None:
    new_year = datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC).timestamp()
    assert syslog(b"<13>Dec 31 23:59:59 h a: late", new_year).timestamp == datetime(
        2024, 12, 31, 23, 59, 59, tzinfo=UTC
    )
    old_year = datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC).timestamp()
    assert syslog(b"<13>Jan  1 00:00:01 h a: early", old_year).timestamp == datetime(
        2025, 1, 1, 0, 0, 1, tzinfo=UTC
    )


def test_rfc3164_explicit_year_and_fraction() -> None:
    record = syslog(b"<13>Mar 10 2019 11:00:00.250 h a: x")
    assert record.timestamp == datetime(2019, 3, 10, 11, 0, 0, 250000, UTC)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"<13>hello", "rfc3164: no timestamp"),
        (b"hello", "rfc3164: no <PRI> at the start"),
        (b"", "syslog: empty message"),
        (b"<13>Foo 10 10:00:00 h a: x", "rfc3164: unknown month 'Foo'"),
        (b"<13>Feb 30 10:00:00 h a: x", "rfc3164: invalid timestamp"),
        (b"<13>Mar 10 10:00:00\tx", "rfc3164: no timestamp"),
        (b"\xff<13>Mar 10 10:00:00 h a: x", "payload is not UTF-8 (byte 0xff at offset 0)"),
    ],
)
def test_rfc3164_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        syslog(payload)
    assert caught.value.reason.startswith(reason)


# ------------------------------------------------------------------------------------------------ CEF


def test_cef_escapes_in_header_and_extension() -> None:
    record = parse_cef(
        r"CEF:0|security|threat\|manager|1.0|100|detected a \\ and \| in packet|10|"
        r"src=10.0.0.1 act=blocked a \= sign msg=line one\nline two dst=1.1.1.1 request=http://x/?a=b&c=d"
    )
    assert record.product == "threat|manager"
    assert record.name == "detected a \\ and | in packet"
    assert record.severity == "10"
    assert record.extensions == {
        "src": "10.0.0.1",
        "act": "blocked a = sign",
        "msg": "line one\nline two",
        "dst": "1.1.1.1",
        "request": "http://x/?a=b&c=d",
    }


def test_cef_in_rfc3164_and_rfc5424() -> None:
    line = "CEF:0|Fortinet|FortiGate|7.2|13|Traffic denied|5|src=203.0.113.9 dst=10.0.0.5 dpt=22 act=deny"
    bsd = syslog(f"<134>Mar 10 11:00:00 fw-01 {line}".encode())
    assert bsd.hostname == "fw-01"
    assert bsd.appname is None
    assert bsd.cef is not None
    assert bsd.cef.extensions["dpt"] == "22"
    tagged = syslog(f"<134>Mar 10 11:00:00 fw-01 CEF: {line}".encode())
    assert tagged.cef == bsd.cef
    structured = syslog(f"<134>1 2025-03-10T11:00:00Z fw-01 CEF - - - \ufeff{line}".encode())
    assert structured.cef == bsd.cef


def test_cef_severity_words() -> None:
    assert [cef_severity(v) for v in ("0", "7", "12", "Low", "Very-High", "Unknown", "x")] == [
        0,
        7,
        10,
        3,
        10,
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("CEF:0|a|b|c|d|e", "cef: header has 6 of its 8"),
        ("CEF:x|a|b|c|d|e|5|", "cef: invalid version"),
        ("CEF:0|a|b|c|d|e|5|junk", "cef: extension has no key=value pairs"),
        ("CEF:0|a|b|c|d|e|5|junk src=1", "cef: extension starts with 'junk'"),
    ],
)
def test_cef_errors(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_cef(text)
    assert caught.value.reason.startswith(reason)


header_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
ext_value = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).filter(
    lambda v: v == v.strip() and "\x85" not in v and "\x1c" not in v
)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.tuples(header_text, header_text, header_text, header_text, header_text),
    extensions=st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,10}", fullmatch=True), ext_value, max_size=6
    ),
)
def test_cef_round_trips(fields: tuple[str, str, str, str, str], extensions: dict[str, str]) -> None:
    vendor, product, version, signature, name = fields
    text = cef((vendor, product, version), signature, name, 5, extensions)
    record = parse_cef(text)
    assert (record.vendor, record.product, record.device_version, record.signature_id, record.name) == fields
    assert record.extensions == extensions


# ------------------------------------------------------------------------------------------------ JSON


def test_json_event() -> None:
    assert parse_json_event(b'\xef\xbb\xbf{"a": [1, {"b": null}]}') == JsonRecord({"a": [1, {"b": None}]})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[]", "json: not an object (got an array)"),
        (b'"x"', "json: not an object (got a string)"),
        (b"{", "json: invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b'{"a": Infinity}', "json: Infinity is not a JSON number"),
        (b"  ", "json: empty payload"),
        (b'{"a": "\xe9"}', "payload is not UTF-8"),
    ],
)
def test_json_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_json_event(payload)
    assert caught.value.reason.startswith(reason)


def test_split_json_array_keeps_each_events_bytes() -> None:
    body = b'[ {"a": 1},\n {"b": "x, y"} , {"c": [1,2]} ]'
    assert split_json_batch(body) == [b'{"a": 1}', b'{"b": "x, y"}', b'{"c": [1,2]}']
    assert split_json_batch(b"[]") == []
    assert split_json_batch(b"  ") == []


def test_split_ndjson_and_a_pretty_printed_object() -> None:
    assert split_json_batch(b'{"a": 1}\n\n{"b": 2}\r\n') == [b'{"a": 1}', b'{"b": 2}']
    assert split_json_batch(b'{\n  "a": 1,\n  "b": 2\n}\n') == [b'{\n  "a": 1,\n  "b": 2\n}']


def test_a_broken_ndjson_line_is_its_own_payload() -> None:
    parts = split_json_batch(b'{"a": 1}\n{"b": \n{"c": 3}\n')
    assert parts == [b'{"a": 1}', b'{"b":', b'{"c": 3}']


def test_a_broken_array_or_non_utf8_body_comes_back_whole() -> None:
    assert split_json_batch(b'[{"a": 1}, {"b": ]') == [b'[{"a": 1}, {"b": ]']
    assert split_json_batch(b'[{"a": 1}] trailing') == [b'[{"a": 1}] trailing']
    assert split_json_batch(b"\xff[1]") == [b"\xff[1]"]


# ------------------------------------------------------------------------------------------------ Windows XML

EVENT_4625 = b"""<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event">
  <System>
    <Provider Name="Microsoft-Windows-Security-Auditing" Guid="{54849625-5478-4994-A5BA-3E3B0328C30D}"/>
    <EventID>4625</EventID><Version>0</Version><Level>0</Level><Task>12544</Task>
    <Keywords>0x8010000000000000</Keywords>
    <TimeCreated SystemTime="2025-03-10T11:58:01.1234567Z"/>
    <EventRecordID>8431</EventRecordID>
    <Channel>Security</Channel>
    <Computer>DC01.corp.example.com</Computer>
  </System>
  <EventData>
    <Data Name="TargetUserName">bob</Data>
    <Data Name="IpAddress">::ffff:198.51.100.7</Data>
    <Data Name="IpPort">50123</Data>
    <Data>unnamed</Data>
  </EventData>
  <RenderingInfo Culture="en-US">
    <Message>An account failed to log on.</Message>
    <Keywords><Keyword>Audit Failure</Keyword></Keywords>
  </RenderingInfo>
</Event>"""


def test_windows_event_xml() -> None:
    record = parse_winxml(EVENT_4625)
    assert record == WinEventRecord(
        event_id=4625,
        provider="Microsoft-Windows-Security-Auditing",
        channel="Security",
        computer="DC01.corp.example.com",
        time_created=datetime(2025, 3, 10, 11, 58, 1, 123456, UTC),
        record_id="8431",
        keywords="0x8010000000000000",
        data={
            "TargetUserName": "bob",
            "IpAddress": "::ffff:198.51.100.7",
            "IpPort": "50123",
            "param4": "unnamed",
        },
        message="An account failed to log on.",
        rendered_keywords=("Audit Failure",),
    )


def test_windows_user_data_is_flattened() -> None:
    payload = (
        b"<Event><System><EventID>1102</EventID><Channel>Security</Channel></System>"
        b"<UserData><LogFileCleared><SubjectUserName>eve</SubjectUserName></LogFileCleared></UserData></Event>"
    )
    assert parse_winxml(payload).data == {"SubjectUserName": "eve"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (billion_laughs(), "winxml: entity declarations are not allowed"),
        (
            b'<!DOCTYPE e [<!ENTITY x SYSTEM "http://attacker.example/x">]><Event>&x;</Event>',
            "winxml: entity declarations are not allowed",
        ),
        (b"<Event><System>", "winxml: not well-formed XML"),
        (b"<Events/>", "winxml: root element is <Events>, expected <Event>"),
        (b"<Event/>", "winxml: no <System> element"),
        (b"<Event><System><EventID>x</EventID></System></Event>", "winxml: EventID 'x' is not a number"),
        (b"", "winxml: empty payload"),
    ],
)
def test_windows_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_winxml(payload)
    assert caught.value.reason.startswith(reason)


def test_split_winxml_batch_keeps_each_events_bytes() -> None:
    other = EVENT_4625.replace(b"4625", b"4624")
    parts = split_winxml_batch(b'<?xml version="1.0"?>\n' + winxml_batch([EVENT_4625, other]))
    assert parts == [EVENT_4625, other]
    assert split_winxml_batch(EVENT_4625) == [EVENT_4625]


def test_split_winxml_batch_with_prefixed_elements_reserialises() -> None:
    body = (
        b'<e:Events xmlns:e="http://schemas.microsoft.com/win/2004/08/events/event">'
        b"<e:Event><e:System><e:EventID>4624</e:EventID></e:System></e:Event>"
        b"<e:Event><e:System><e:EventID>4634</e:EventID></e:System></e:Event></e:Events>"
    )
    parts = split_winxml_batch(body)
    assert [parse_winxml(part).event_id for part in parts] == [4624, 4634]


def test_a_hostile_batch_comes_back_whole_for_the_dead_letters() -> None:
    assert split_winxml_batch(billion_laughs()) == [billion_laughs()]


# ------------------------------------------------------------------------------------------------ dispatch


def test_parse_dispatches_on_transport() -> None:
    assert isinstance(parse("syslog-udp", b"<13>1 - - - - - - x", received_at=RECEIVED), SyslogRecord)
    assert isinstance(parse("http-json", b"{}", received_at=RECEIVED), JsonRecord)
    assert isinstance(parse("http-winxml", EVENT_4625, received_at=RECEIVED), WinEventRecord)
    with pytest.raises(ParseError, match="unknown transport"):
        parse("carrier-pigeon", b"", received_at=RECEIVED)


def test_rfc3339_variants() -> None:
    assert parse_rfc3339("2025-03-10T11:58:01.123456789+0130") == datetime(
        2025, 3, 10, 10, 28, 1, 123456, UTC
    )
    assert parse_rfc3339("2025-03-10 11:58:01") == datetime(2025, 3, 10, 11, 58, 1, tzinfo=UTC)
    assert parse_rfc3339("2016-12-31T23:59:60Z") == datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)
    with pytest.raises(ValueError, match="not an RFC 3339"):
        parse_rfc3339("10/03/2025")


def test_bsd_parse_keeps_odd_hostnames() -> None:
    record = parse_rfc3164("<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!", received_at=RECEIVED)
    assert record.hostname == "10.0.0.99"
    assert record.message == "Use the BFG!"
