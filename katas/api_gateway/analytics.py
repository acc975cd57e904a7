"""Usage analytics, the domain part: one usage event per request, its wire form, minute buckets and the
usage API's time window. No I/O here; the recorder, the store and the services wire it to the broker and
ClickHouse (katas.api_gateway.adapters.usage_events, .usage_store, services.aggregator, .usage_api).

Why events and not counters on the node: billing needs per client, per endpoint and per minute figures
that are exact across three nodes and survive a node's restart, and latency percentiles that can be merged
(a P99 of P99s is not a P99). So every node emits the raw fact, cheaply, and one aggregator folds the facts
into mergeable aggregates in the store.

The wire form is compact JSON (one object, short keys, no spaces): readable with any Kafka tool, about
130 bytes a request, and versioned (`v`) so a later format can be told apart. The partition key is the
client's name, so one client's events stay in order on one partition and one aggregator handles them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from katas.api_gateway.node import Served

WIRE_VERSION = 1
MAX_EVENT_BYTES = 4096
"""A usage event is about 130 bytes; anything much larger is not one of ours."""
MAX_NAME_CHARS = 200
"""Longest client, route, node or event id accepted from the wire (names in the store are 1-64 chars)."""
MAX_METHOD_CHARS = 16
MAX_LATENCY_MS = 86_400_000.0
"""A day: a request cannot take longer and still be answered."""
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
LATEST = datetime(2100, 1, 1, tzinfo=UTC).timestamp()

DEFAULT_WINDOW = timedelta(minutes=60)
"""What the usage API answers without `from`: the last hour."""
MAX_WINDOW = timedelta(days=31)
"""The longest range the usage API answers at once: a billing month, per minute at most 44,640 rows per
route of a client."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Made once: json.dumps with options builds an encoder per call, which doubled the cost of an event."""


class UsageEventError(ValueError):
    """A record on the usage topic that is not a usage event; the reason says why."""


class UsageQueryError(ValueError):
    """Parameters of a usage query that cannot be answered; the message is meant for the caller."""


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One request as billing and capacity planning see it."""

    id: str
    """Unique per request (node's boot nonce + sequence): the store drops redelivered copies by it."""
    at: float
    """When the request arrived at the node (epoch seconds, UTC)."""
    node: str
    client: str
    """Empty for requests refused before the client was known."""
    route: str
    """The route's name, or the refusal label (`unauthenticated`, `no_route`, `method`, `tier`)."""
    method: str
    status: int
    latency_ms: float

    @classmethod
    def of(cls, served: Served, event_id: str) -> UsageEvent:
        return cls(
            id=event_id,
            at=served.at,
            node=served.node,
            client=served.client,
            route=served.route,
            method=served.method,
            status=served.status,
            latency_ms=round(served.seconds * 1000.0, 3),
        )

    @property
    def minute(self) -> int:
        return minute_of(self.at)

    def key(self) -> bytes:
        """The partition key: the client's name."""
        return self.client.encode()

    def encode(self) -> bytes:
        return _ENCODER.encode(
            {
                "v": WIRE_VERSION,
                "id": self.id,
                "at": round(self.at, 3),
                "node": self.node,
                "client": self.client,
                "route": self.route,
                "method": self.method,
                "status": self.status,
                "ms": self.latency_ms,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> UsageEvent:
        """The event in `data`, or UsageEventError with the reason; never any other exception."""
        if not data:
            raise UsageEventError("empty record")
        if len(data) > MAX_EVENT_BYTES:
            raise UsageEventError(f"record of {len(data)} bytes, more than {MAX_EVENT_BYTES}")
        try:
            fields = json.loads(data)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise UsageEventError(f"not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise UsageEventError(f"not a JSON object but {type(fields).__name__}")
        version = fields.get("v")
        if type(version) is not int or version != WIRE_VERSION:
            raise UsageEventError(f"unknown version {str(version)[:40]}")
        return cls(
            id=_text(fields, "id", MAX_NAME_CHARS, empty=False),
            at=_number(fields, "at", EARLIEST, LATEST),
            node=_text(fields, "node", MAX_NAME_CHARS),
            client=_text(fields, "client", MAX_NAME_CHARS),
            route=_text(fields, "route", MAX_NAME_CHARS, empty=False),
            method=_text(fields, "method", MAX_METHOD_CHARS),
            status=_status(fields),
            latency_ms=_number(fields, "ms", 0.0, MAX_LATENCY_MS),
        )


def _text(fields: Mapping[str, Any], name: str, max_chars: int, *, empty: bool = True) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise UsageEventError(f"{name}: expected a string, got {type(value).__name__}")
    if not empty and not value:
        raise UsageEventError(f"{name}: must not be empty")
    if len(value) > max_chars:
        raise UsageEventError(f"{name}: longer than {max_chars} characters")
    if any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise UsageEventError(f"{name}: control characters or lone surrogates")
    return value


def _number(fields: Mapping[str, Any], name: str, low: float, high: float) -> float:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageEventError(f"{name}: expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float's range
        number = math.inf
    if not (math.isfinite(number) and low <= number <= high):
        raise UsageEventError(f"{name}: {str(value)[:40]} is outside [{low:g}, {high:g}]")
    return number


def _status(fields: Mapping[str, Any]) -> int:
    value = fields.get("status")
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise UsageEventError(f"status: expected an HTTP status code, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------- minutes
def minute_of(at: float) -> int:
    """The start of `at`'s UTC minute, in epoch seconds (what ClickHouse's toStartOfMinute gives)."""
    return math.floor(at / 60.0) * 60


def minute_text(minute: int) -> str:
    """RFC 3339 in UTC with a `Z`, as the usage API writes minutes."""
    return datetime.fromtimestamp(minute, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str, name: str) -> datetime:
    """An RFC 3339 date-time with an offset (`Z` or `+hh:mm`); UsageQueryError otherwise.

    A time without an offset is refused rather than taken as UTC: a billing range that silently shifts by
    the caller's time zone is worse than a 400.
    """
    value = text.strip()
    if len(value) > 64 or "T" not in value.upper():
        raise UsageQueryError(f"{name}: expected an RFC 3339 date-time such as 2025-01-31T12:00:00Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageQueryError(
            f"{name}: {value!r} is not an RFC 3339 date-time such as 2025-01-31T12:00:00Z"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageQueryError(f"{name}: the time needs an offset, e.g. a trailing Z for UTC")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise UsageQueryError(f"{name}: out of range") from None
    if not EARLIEST <= moment.timestamp() <= LATEST:
        raise UsageQueryError(f"{name}: must lie between 2000 and 2100")
    return moment


@dataclass(frozen=True, slots=True)
class UsageWindow:
    """The minutes a usage query covers: every minute whose bucket starts in [start, end).

    `start` is `from` rounded down to its minute, so the minute `from` falls in is included (a dashboard
    asking "since 10:30:20" expects the 10:30 bucket); `end` is `to` as given, so the current, still
    filling minute is included when `to` is now.
    """

    start: int
    end: float

    @classmethod
    def parse(
        cls,
        given_from: str | None,
        given_to: str | None,
        now: float,
        *,
        default: timedelta = DEFAULT_WINDOW,
        longest: timedelta = MAX_WINDOW,
    ) -> UsageWindow:
        end = parse_instant(given_to, "to").timestamp() if given_to is not None else now
        start = (
            parse_instant(given_from, "from").timestamp()
            if given_from is not None
            else end - default.total_seconds()
        )
        if start >= end:
            raise UsageQueryError("from must be before to")
        if end - start > longest.total_seconds():
            raise UsageQueryError(f"the range is longer than {longest.days} days; ask in parts")
        return cls(minute_of(start), end)


# ------------------------------------------------------------------------------------------ percentiles
def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) by linear interpolation between closest ranks (numpy's default).

    The store estimates percentiles with a t-digest, which is mergeable across batches and nodes; this
    exact version is what tests and the load generator compare those estimates with.
    """
    if not values:
        raise ValueError("no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
