"""Syslog framing: octet counting and newline framing, mixed on one connection, cut at any chunk boundary."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from katas.siem.framing import Frame, SyslogFramer, octet_frame, split_datagram, syslog_hostname
from katas.siem.samples import syslog_3164, syslog_5424


def messages(framer: SyslogFramer, *chunks: bytes) -> list[bytes]:
    frames = [frame for chunk in chunks for frame in framer.feed(chunk)] + framer.close()
    assert all(frame.ok for frame in frames)
    return [frame.message for frame in frames]


def test_octet_counting() -> None:
    first, second = b"<34>1 2003-10-11T22:14:15.003Z host su - ID47 - hi", b"<13>Jan  5 10:00:00 h t: x y"
    assert messages(SyslogFramer(), octet_frame(first) + octet_frame(second)) == [first, second]


def test_an_octet_counted_message_may_hold_newlines_and_nul() -> None:
    message = b"<13>1 - h app - - - line one\nline two\x00end"
    assert messages(SyslogFramer(), octet_frame(message)) == [message]


def test_newline_framing_with_lf_crlf_and_nul_trailers() -> None:
    stream = b"<13>one\n<13>two\r\n<13>three\x00<13>four"
    assert messages(SyslogFramer(), stream) == [b"<13>one", b"<13>two", b"<13>three", b"<13>four"]


def test_both_framings_on_one_connection() -> None:
    stream = octet_frame(b"<1>a") + b"<2>b\n" + octet_frame(b"<3>c") + b"\n" + b"<4>d\r\n"
    assert messages(SyslogFramer(), stream) == [b"<1>a", b"<2>b", b"<3>c", b"<4>d"]


def test_empty_lines_between_frames_are_skipped() -> None:
    assert messages(SyslogFramer(), b"\n\r\n<1>a\n\n\x00<2>b\n") == [b"<1>a", b"<2>b"]


def test_digits_not_followed_by_a_space_are_newline_framed() -> None:
    assert messages(SyslogFramer(), b"12abc\n") == [b"12abc"]


def test_a_length_prefix_split_across_chunks() -> None:
    framer = SyslogFramer()
    assert framer.feed(b"1") == []
    assert framer.feed(b"1") == []
    assert framer.feed(b" <13>hello") == []
    assert framer.feed(b"!!") == [Frame(b"<13>hello!!")]


def test_an_oversized_octet_counted_message_is_cut_and_reported() -> None:
    framer = SyslogFramer(max_message_size=10)
    frames = framer.feed(octet_frame(b"x" * 25) + octet_frame(b"<1>ok"))
    assert frames[0] == Frame(b"x" * 10, oversized=True, size=25)
    assert frames[0].reason is not None
    assert "25 bytes" in frames[0].reason
    assert frames[1] == Frame(b"<1>ok")
    assert framer.discarded_bytes == 15


def test_an_oversized_newline_framed_message_is_cut_and_the_rest_skipped() -> None:
    framer = SyslogFramer(max_message_size=10)
    frames = framer.feed(b"<1>" + b"y" * 30)
    assert frames == [Frame(b"<1>" + b"y" * 7, oversized=True)]
    assert not frames[0].ok
    assert framer.feed(b"yyyy\n<2>next\n") == [Frame(b"<2>next")]


def test_an_oversized_message_arriving_whole_is_cut() -> None:
    framer = SyslogFramer(max_message_size=4)
    assert framer.feed(b"<1>abcdef\n<2>\n") == [Frame(b"<1>a", oversized=True), Frame(b"<2>")]


def test_a_message_of_exactly_the_limit_passes() -> None:
    framer = SyslogFramer(max_message_size=5)
    assert messages(framer, b"<1>ab\r\n", octet_frame(b"<1>cd")) == [b"<1>ab", b"<1>cd"]


def test_a_connection_closed_inside_an_octet_frame_yields_the_part_as_incomplete() -> None:
    framer = SyslogFramer()
    assert framer.feed(b"100 <13>only part") == []
    (frame,) = framer.close()
    assert frame.incomplete
    assert frame.message == b"<13>only part"
    assert frame.reason is not None
    assert "closed" in frame.reason


def test_close_yields_a_last_message_without_a_trailer() -> None:
    framer = SyslogFramer()
    assert framer.feed(b"<1>a\n<2>b") == [Frame(b"<1>a")]
    assert framer.close() == [Frame(b"<2>b")]
    assert framer.close() == []


def test_split_datagram_strips_trailing_newlines() -> None:
    assert split_datagram(b"<13>Jan  5 10:00:00 h t: m\r\n") == b"<13>Jan  5 10:00:00 h t: m"
    assert split_datagram(b"<13>x\n\x00") == b"<13>x"
    assert split_datagram(b"<13>a\nb") == b"<13>a\nb"


newline_message = st.binary(min_size=0, max_size=60).map(
    lambda body: b"<13>" + body.replace(b"\n", b" ").replace(b"\x00", b" ").rstrip(b"\r")
)
octet_message = st.binary(min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(
        st.one_of(
            newline_message.map(lambda m: (m, "lf")),
            newline_message.map(lambda m: (m, "crlf")),
            newline_message.map(lambda m: (m, "nul")),
            octet_message.map(lambda m: (m, "octet")),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_messages_survive_any_chunking(items: list[tuple[bytes, str]], cuts: list[int]) -> None:
    trailer = {"lf": b"\n", "crlf": b"\r\n", "nul": b"\x00"}
    stream = b"".join(octet_frame(m) if how == "octet" else m + trailer[how] for m, how in items)
    bounds = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert messages(SyslogFramer(), *chunks) == [m for m, _ in items]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8), chunk=st.integers(1, 17)
)
def test_oversized_messages_never_swallow_their_neighbours(sizes: list[int], chunk: int) -> None:
    limit = 16
    stream = b"".join(octet_frame(b"o" * size) + b"<1>n" * (size % 2) + b"\n" * (size % 2) for size in sizes)
    framer = SyslogFramer(max_message_size=limit)
    frames = [f for start in range(0, len(stream), chunk) for f in framer.feed(stream[start : start + chunk])]
    frames += framer.close()
    expected: list[Frame] = []
    for size in sizes:
        if size > limit:
            expected.append(Frame(b"o" * limit, oversized=True, size=size))
        else:
            expected.append(Frame(b"o" * size))
        if size % 2:
            expected.append(Frame(b"<1>n"))
    assert frames == expected


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(1, 50))
def test_arbitrary_bytes_never_break_the_framer(data: bytes, chunk: int) -> None:
    framer = SyslogFramer(max_message_size=32)
    frames = [f for start in range(0, len(data), chunk) for f in framer.feed(data[start : start + chunk])]
    frames += framer.close()
    assert all(len(f.message) <= 32 for f in frames)
    assert all(f.message for f in frames)


_HOSTS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,40}", fullmatch=True)


@given(host=_HOSTS, moment=st.floats(0, 4e9), rfc=st.sampled_from(["3164", "5424"]))
def test_the_host_name_is_read_from_either_syslog_header(host: str, moment: float, rfc: str) -> None:
    build = syslog_3164 if rfc == "3164" else syslog_5424
    message = build(moment, host, "sshd", 42, "Failed password for alice from 203.0.113.7 port 22 ssh2")
    assert syslog_hostname(message) == host.encode()


def test_messages_without_a_host_name_keep_the_peers_key() -> None:
    for message in (
        b"",
        b"no header at all",
        b"<34>",
        b"<abc>1 2026-11-29T08:00:00Z host app - - - x",
        b"<34>1 2026-11-29T08:00:00Z - app - - - nil host",
        b"<13>Someday 12 08:00:00 host msg",
        b"<1234567>1 t host",
    ):
        assert syslog_hostname(message) is None, message


@given(st.binary(max_size=400))
def test_any_bytes_give_a_host_name_or_none_and_never_fail(message: bytes) -> None:
    host = syslog_hostname(message)
    assert host is None or (host and host in message)
