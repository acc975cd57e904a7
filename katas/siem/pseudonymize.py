"""Keyed, consistent pseudonyms for personal data, applied to a normalized event before it is stored.

Each value becomes `psn:` + the first 16 hex characters of HMAC-SHA256(key, kind + ":" + value), with kind
"user", "email" or "ip" (contracts.md). The same value always gets the same pseudonym under one key, so
investigations still join on it across events and fields; without the key the value cannot be recovered or
confirmed by hashing guesses. The key lives in the services' settings, never in the data.

Values are canonicalised first, so spellings of one value join: e-mail addresses are lower-cased, IP
addresses take their compressed form (an IPv4-mapped IPv6 address is its IPv4 address); user names are
taken as they are. `pseudonym(kind, value)` is public so an analyst API can look up a known value.

Free text (`message`, `process.command_line`) has every occurrence of the event's pseudonymized values
replaced, and also any e-mail address and (when IPs are pseudonymized) any IP address found in it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Final, Literal

PseudonymKind = Literal["user", "email", "ip"]
PREFIX: Final = "psn:"
PSEUDONYM: Final = re.compile(r"psn:[0-9a-f]{16}")
MIN_KEY_BYTES: Final = 16

USER_FIELDS: Final = ("user.name", "user.target.name")
EMAIL_FIELDS: Final = ("user.email",)
IP_FIELDS: Final = ("source.ip", "destination.ip")
LIST_FIELDS: Final[dict[str, PseudonymKind]] = {"related.user": "user", "related.ip": "ip"}
TEXT_FIELDS: Final = ("message", "process.command_line")

_EMAIL_TEXT: Final = r"(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"
_IPV4_TEXT: Final = r"(?P<ipv4>(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d))"
_IPV6_TEXT: Final = r"(?P<ipv6>(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})(?![\w:]|\.\d))"
_EMAIL: Final = re.compile(_EMAIL_TEXT)
_ADDRESSES_AND_IPS: Final = re.compile("|".join((_EMAIL_TEXT, _IPV4_TEXT, _IPV6_TEXT)))
_ADDRESSES: Final = re.compile(_EMAIL_TEXT)


@lru_cache(maxsize=65_536)
def canonical_ip(text: str) -> str | None:
    """The compressed form of an IP address (an IPv4-mapped IPv6 address as IPv4), or None if not one."""
    text = text.strip().strip("[]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def canonical(kind: PseudonymKind, value: str) -> str:
    """The form of a value that is pseudonymized, so spellings of one value join."""
    if kind == "email":
        return value.strip().lower()
    if kind == "ip":
        return canonical_ip(value) or value.strip()
    return value


def is_pseudonym(value: str) -> bool:
    return PSEUDONYM.fullmatch(value) is not None


@lru_cache(maxsize=4096)
def _literal_pattern(value: str) -> re.Pattern[str]:
    """A value wherever it is not glued to letters, digits or underscores, in any letter case."""
    return re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE)


class Pseudonymizer:
    def __init__(self, key: bytes, pseudonymize_ips: bool = True) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self.pseudonymize_ips = pseudonymize_ips
        self._cached: Callable[[str, str], str] = lru_cache(maxsize=65_536)(self._compute)

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymizer(key=<{len(self._key)} bytes>, pseudonymize_ips={self.pseudonymize_ips})"

    def pseudonym(self, kind: PseudonymKind, value: str) -> str:
        """`psn:` + 16 hex chars of HMAC-SHA256(key, kind:canonical(value))."""
        return self._cached(kind, canonical(kind, value))

    def _compute(self, kind: str, value: str) -> str:
        digest = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
        return PREFIX + digest[:16]

    def apply(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a flat ECS event with its personal data pseudonymized (already pseudonymized values
        are left alone, so applying twice changes nothing)."""
        out = dict(event)
        replaced: dict[PseudonymKind, dict[str, str]] = {"user": {}, "email": {}, "ip": {}}

        def swap(kind: PseudonymKind, value: Any) -> Any:
            if not isinstance(value, str) or not value or is_pseudonym(value):
                return value
            pseudonym = self.pseudonym(kind, value)
            replaced[kind][value] = pseudonym
            return pseudonym

        for name in USER_FIELDS:
            if name in out:
                out[name] = swap("user", out[name])
        for name in EMAIL_FIELDS:
            if name in out:
                out[name] = swap("email", out[name])
        kinds = dict(LIST_FIELDS)
        if self.pseudonymize_ips:
            for name in IP_FIELDS:
                if name in out:
                    out[name] = swap("ip", out[name])
        else:
            kinds = {name: kind for name, kind in kinds.items() if kind != "ip"}
        for name, kind in kinds.items():
            values = out.get(name)
            if isinstance(values, list):
                out[name] = list(dict.fromkeys(swap(kind, value) for value in values))
        for name in TEXT_FIELDS:
            text = out.get(name)
            if isinstance(text, str) and text:
                out[name] = self.scrub_text(text, replaced)
        return out

    def scrub_text(self, text: str, known: Mapping[PseudonymKind, Mapping[str, str]]) -> str:
        """Replace every e-mail address (and IP address, when IPs are pseudonymized) found in the text,
        then the known values (original -> pseudonym, by kind) wherever they are not glued to letters,
        digits or underscores, in any letter case."""

        def replace(match: re.Match[str]) -> str:
            found = match.group(0)
            if match.lastgroup == "email":
                return self.pseudonym("email", found)
            address = canonical_ip(found)
            return found if address is None else self._cached("ip", address)

        pattern = _ADDRESSES_AND_IPS if self.pseudonymize_ips else _ADDRESSES
        text = pattern.sub(replace, text)
        folded = text.casefold()
        literals = [
            (value, pseudonym)
            for kind, values in known.items()
            for value, pseudonym in values.items()
            if not (kind == "ip" and canonical_ip(value) is not None)  # the IP pattern found every spelling
            and not (kind == "email" and _EMAIL.fullmatch(value.strip()))  # so did the e-mail pattern
        ]
        for value, pseudonym in sorted(literals, key=lambda item: len(item[0]), reverse=True):
            if value.casefold() in folded:
                text = _literal_pattern(value).sub(pseudonym, text)
        return text
