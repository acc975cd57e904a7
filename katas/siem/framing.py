"""Syslog framing: cutting a TCP byte stream (or a UDP datagram) into single syslog messages.

TCP syslog has two framings (RFC 6587), and a sender may mix them on one connection:

- octet counting: `MSG-LEN SP SYSLOG-MSG`, where MSG-LEN is the decimal byte length of the message;
- non-transparent framing: the message ends at a trailer byte, LF (also CRLF) or NUL.

A frame starting with a non-zero digit followed by more digits and a space is octet-counted; anything else
(a syslog message starts with `<`) is newline-framed. Messages longer than the limit are cut, not dropped:
the framer yields the first `max_message_size` bytes in a `Frame` marked oversized, so the ingest can send
it to the dead-letter topic with the reason. A connection that closes inside an octet-counted frame yields
the partial message marked incomplete, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024
TRAILERS = b"\n\x00"
"""Bytes that end a non-transparently framed message (a CR before them is dropped too)."""
_BETWEEN_FRAMES = b"\r\n\x00"
"""Bytes skipped between frames: empty lines, and the LF some senders add after an octet-counted frame."""
_MAX_LENGTH_DIGITS = 10


@dataclass(frozen=True, slots=True)
class Frame:
    """One message cut from the stream; `ok` is false when it must go to the dead-letter topic."""

    message: bytes
    oversized: bool = False
    incomplete: bool = False
    size: int | None = None
    """The full size of an oversized message when the sender declared it (octet counting), else None."""

    @property
    def ok(self) -> bool:
        return not (self.oversized or self.incomplete)

    @property
    def reason(self) -> str | None:
        """Why the frame is not a complete message, in words, or None when it is."""
        if self.oversized:
            kept = len(self.message)
            if self.size is not None:
                return f"framing: message of {self.size} bytes is over the {kept}-byte limit; the first {kept} bytes are kept"
            return f"framing: message is over the {kept}-byte limit; the first {kept} bytes are kept"
        if self.incomplete:
            return f"framing: connection closed inside an octet-counted frame after {len(self.message)} bytes"
        return None


class SyslogFramer:
    """Incremental framer for one TCP connection: `feed` chunks as they arrive, `close` at the end.

    Chunks may split a message (or its length prefix) anywhere; `feed` returns the messages completed so
    far, in order. Memory stays bounded by `max_message_size` plus one chunk.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1 byte")
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._pos = 0
        """Start of the unread part of the buffer (consumed bytes are dropped once per feed)."""
        self._declared: int | None = None
        """While inside an octet-counted frame: its declared length."""
        self._skip_octets = 0
        """After cutting an oversized octet-counted frame: bytes of it still to drop."""
        self._skip_to_trailer = False
        """After cutting an oversized newline-framed message: drop bytes up to the next trailer."""
        self.discarded_bytes = 0
        """Bytes dropped after cutting oversized messages (their first part was yielded)."""

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer += chunk
        frames: list[Frame] = []
        while self._step(frames):
            pass
        del self._buffer[: self._pos]
        self._pos = 0
        return frames

    def close(self) -> list[Frame]:
        """The connection ended: yield what is left (a last message without a trailer, or a partial one)."""
        frames = self.feed(b"")
        rest = bytes(self._buffer)
        if self._declared is not None:
            if rest:
                frames.append(Frame(rest[: self.max_message_size], incomplete=True, size=self._declared))
        elif not (self._skip_to_trailer or self._skip_octets):
            message = rest.lstrip(_BETWEEN_FRAMES).rstrip(b"\r")
            if message:
                frames.append(self._newline_frame(message))
        self._buffer.clear()
        self._declared = None
        self._skip_octets = 0
        self._skip_to_trailer = False
        return frames

    def _step(self, frames: list[Frame]) -> bool:
        """Consume one frame (or one skippable part) from the buffer; False means "need more bytes"."""
        buffer, pos = self._buffer, self._pos
        available = len(buffer) - pos
        if self._skip_octets:
            skipped = min(self._skip_octets, available)
            self._skip_octets -= skipped
            self._pos += skipped
            self.discarded_bytes += skipped
            return self._skip_octets == 0
        if self._declared is not None:
            return self._octet_step(frames)
        if self._skip_to_trailer:
            end = _find_trailer(buffer, pos)
            if end < 0:
                self.discarded_bytes += available
                self._pos = len(buffer)
                return False
            self.discarded_bytes += end - pos
            self._pos = end + 1
            self._skip_to_trailer = False
            return True
        while pos < len(buffer) and buffer[pos] in _BETWEEN_FRAMES:
            pos += 1
        self._pos = pos
        if pos == len(buffer):
            return False
        if 0x31 <= buffer[pos] <= 0x39:  # a non-zero digit: maybe an octet count
            digits = _octet_count_digits(buffer, pos)
            if digits is None:
                return False  # only digits so far: wait for the space (or for a non-digit)
            if digits:
                self._declared = int(buffer[pos : pos + digits])
                self._pos = pos + digits + 1
                return self._octet_step(frames)
        return self._newline_step(frames)

    def _octet_step(self, frames: list[Frame]) -> bool:
        declared = self._declared
        assert declared is not None
        pos, limit = self._pos, self.max_message_size
        keep = min(declared, limit)
        if len(self._buffer) - pos < keep:
            return False
        message = bytes(self._buffer[pos : pos + keep])
        self._pos = pos + keep
        self._declared = None
        if declared > limit:
            frames.append(Frame(message, oversized=True, size=declared))
            self._skip_octets = declared - limit
        else:
            frames.append(Frame(message))
        return True

    def _newline_step(self, frames: list[Frame]) -> bool:
        buffer, pos, limit = self._buffer, self._pos, self.max_message_size
        end = _find_trailer(buffer, pos, pos + limit + 2)  # room for the message, a CR and the trailer
        if end < 0:
            if len(buffer) - pos > limit + 1:
                frames.append(Frame(bytes(buffer[pos : pos + limit]), oversized=True))
                self._pos = pos + limit
                self._skip_to_trailer = True
                return True
            return False
        message = bytes(buffer[pos:end])
        self._pos = end + 1
        if message.endswith(b"\r"):
            message = message[:-1]
        if message:
            frames.append(self._newline_frame(message))
        return True

    def _newline_frame(self, message: bytes) -> Frame:
        if len(message) > self.max_message_size:
            self.discarded_bytes += len(message) - self.max_message_size
            return Frame(message[: self.max_message_size], oversized=True)
        return Frame(message)


def _find_trailer(buffer: bytearray, start: int, stop: int | None = None) -> int:
    """Index of the first LF or NUL in buffer[start:stop], or -1."""
    end = len(buffer) if stop is None else min(len(buffer), stop)
    lf = buffer.find(b"\n", start, end)
    nul = buffer.find(b"\x00", start, end if lf < 0 else lf)
    return nul if nul >= 0 else lf


def _octet_count_digits(buffer: bytearray, start: int) -> int | None:
    """How many digits the octet count at `start` has (followed by a space); 0 if the bytes there cannot
    be an octet count; None if only digits have arrived so far."""
    end = min(len(buffer), start + _MAX_LENGTH_DIGITS + 1)
    for index in range(start, end):
        byte = buffer[index]
        if byte == 0x20:
            return index - start
        if not 0x30 <= byte <= 0x39:
            return 0
    if end - start > _MAX_LENGTH_DIGITS:
        return 0
    return None


def octet_frame(message: bytes) -> bytes:
    """Frame one message with RFC 6587 octet counting (`MSG-LEN SP MSG`)."""
    return b"%d %b" % (len(message), message)


def split_datagram(datagram: bytes) -> bytes:
    """One UDP datagram holds one syslog message (RFC 5426); senders often add a trailing newline or NUL."""
    return datagram.rstrip(b"\r\n\x00")


_MONTHS = frozenset(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
_HEADER_BYTES = 300
"""A syslog header (PRI, timestamp, host name) fits in this many bytes (RFC 5424 caps HOSTNAME at 255)."""


def syslog_hostname(message: bytes) -> bytes | None:
    """The HOSTNAME of a syslog message's header (RFC 5424 or RFC 3164), or None when there is none.

    Ingest keys the raw topic by source; behind one relay, or in the lab where every device sends from
    127.0.0.1, the peer address alone would put every syslog device on one partition. Only the header is
    looked at, and nothing here can fail: a message without a recognisable header keeps the peer's key.
    """
    if not message.startswith(b"<"):
        return None
    close = message.find(b">", 1, 5)
    if close < 2 or not message[1:close].isdigit():
        return None
    fields = message[close + 1 : close + 1 + _HEADER_BYTES].split(maxsplit=4)
    if len(fields) >= 3 and fields[0] == b"1":  # RFC 5424: VERSION TIMESTAMP HOSTNAME ...
        host = fields[2]
    elif len(fields) >= 4 and fields[0] in _MONTHS:  # RFC 3164: Mmm dd hh:mm:ss HOSTNAME ...
        host = fields[3]
    else:
        return None
    return None if host == b"-" else host
