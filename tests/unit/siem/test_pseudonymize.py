"""Pseudonyms: HMAC-SHA256 as contracts.md defines it, consistent, keyed, and thorough (no value left over)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from katas.siem.normalize import NormalizedEvent, RawEnvelope, normalize
from katas.siem.pseudonymize import PSEUDONYM, Pseudonymizer, canonical, is_pseudonym
from katas.siem.settings import SiemSettings

KEY = b"test-key-0123456789abcdef"
PSEUDO = Pseudonymizer(KEY)
PII_FIELDS = (
    "user.name",
    "user.email",
    "user.target.name",
    "related.user",
    "source.ip",
    "destination.ip",
    "related.ip",
)


def hmac_hex(key: bytes, kind: str, value: str) -> str:
    return "psn:" + hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]


def test_the_pseudonym_is_the_contracts_hmac() -> None:
    assert PSEUDO.pseudonym("user", "alice") == hmac_hex(KEY, "user", "alice")
    assert PSEUDO.pseudonym("email", "alice@example.com") == hmac_hex(KEY, "email", "alice@example.com")
    assert PSEUDO.pseudonym("ip", "192.0.2.1") == hmac_hex(KEY, "ip", "192.0.2.1")
    assert PSEUDONYM.fullmatch(PSEUDO.pseudonym("user", "alice"))


def test_kinds_do_not_collide() -> None:
    assert PSEUDO.pseudonym("user", "x") != PSEUDO.pseudonym("email", "x")


def test_spellings_of_one_value_join() -> None:
    assert PSEUDO.pseudonym("email", " Alice@Example.COM") == PSEUDO.pseudonym("email", "alice@example.com")
    assert PSEUDO.pseudonym("ip", "::ffff:192.0.2.1") == PSEUDO.pseudonym("ip", "192.0.2.1")
    assert PSEUDO.pseudonym("ip", "2001:DB8:0::1") == PSEUDO.pseudonym("ip", "2001:db8::1")
    assert canonical("user", "Alice") == "Alice"  # user names are taken as they are


def test_the_key_is_never_shown() -> None:
    assert KEY.decode() not in repr(PSEUDO)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Pseudonymizer(b"short")


@settings(max_examples=100, deadline=None)
@given(value=st.text(min_size=1, max_size=30), kind=st.sampled_from(["user", "email", "ip"]))
def test_pseudonyms_are_consistent_and_keyed(value: str, kind: Any) -> None:
    first = Pseudonymizer(b"k" * 16).pseudonym(kind, value)
    assert first == Pseudonymizer(b"k" * 16).pseudonym(kind, value)
    assert is_pseudonym(first)
    assert first != Pseudonymizer(b"j" * 16).pseudonym(kind, value)


def test_apply_replaces_every_personal_field_and_the_message() -> None:
    event = {
        "user.name": "alice",
        "user.email": "Alice@Example.com",
        "user.target.name": "root",
        "related.user": ["alice", "root"],
        "source.ip": "192.0.2.7",
        "destination.ip": "10.0.0.5",
        "related.ip": ["192.0.2.7", "10.0.0.5"],
        "host.name": "web-01",
        "message": "alice (alice@example.com) became ROOT from ::ffff:192.0.2.7 to 10.0.0.5; see /home/alice.",
        "process.command_line": "sudo -u root cat /home/alice/.ssh/id_rsa",
    }
    out = PSEUDO.apply(event)
    user, root = PSEUDO.pseudonym("user", "alice"), PSEUDO.pseudonym("user", "root")
    src, dst = PSEUDO.pseudonym("ip", "192.0.2.7"), PSEUDO.pseudonym("ip", "10.0.0.5")
    email = PSEUDO.pseudonym("email", "alice@example.com")
    assert out["user.name"] == user
    assert out["user.email"] == email
    assert out["user.target.name"] == root
    assert out["related.user"] == [user, root]
    assert (out["source.ip"], out["destination.ip"], out["related.ip"]) == (src, dst, [src, dst])
    assert out["host.name"] == "web-01"
    assert out["message"] == f"{user} ({email}) became {root} from {src} to {dst}; see /home/{user}."
    assert out["process.command_line"] == f"sudo -u {root} cat /home/{user}/.ssh/id_rsa"
    assert PSEUDO.apply(out) == out  # applying twice changes nothing


def test_ips_stay_when_not_configured() -> None:
    keep_ips = Pseudonymizer(KEY, pseudonymize_ips=False)
    out = keep_ips.apply(
        {
            "user.name": "bob",
            "source.ip": "192.0.2.7",
            "related.ip": ["192.0.2.7"],
            "message": "bob from 192.0.2.7",
        }
    )
    assert out["source.ip"] == "192.0.2.7"
    assert out["related.ip"] == ["192.0.2.7"]
    assert out["message"] == f"{keep_ips.pseudonym('user', 'bob')} from 192.0.2.7"


def test_values_that_are_not_plain_words_are_replaced_too() -> None:
    out = PSEUDO.apply({"user.name": "John O'Brien", "message": "logon by john o'brien (JOHN O'BRIEN)"})
    pseudonym = PSEUDO.pseudonym("user", "John O'Brien")
    assert out["message"] == f"logon by {pseudonym} ({pseudonym})"


def test_text_that_only_looks_like_an_address_is_left_alone() -> None:
    text = "at 10:00:00 MAC=52:54:00:12:34:56 version 1.2.3 port 22"
    assert PSEUDO.scrub_text(text, {}) == text


# ---------------------------------------------------------------------------------------------- no leftovers


def leftovers(original: dict[str, Any], stored: dict[str, Any], *, ips: bool = True) -> list[tuple[str, str]]:
    """(field, value) for every personal value of `original` still readable anywhere in `stored`."""
    values: set[str] = set()
    for name in PII_FIELDS:
        if not ips and name.endswith(".ip"):
            continue
        value = original.get(name)
        values.update(value if isinstance(value, list) else [value] if isinstance(value, str) else [])
    found = []
    for name, value in stored.items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            for secret in values:
                if re.search(rf"(?<!\w){re.escape(secret)}(?!\w)", text, re.IGNORECASE):
                    found.append((name, secret))
    return found


name_text = st.from_regex(r"u[a-z]{3,8}(\.[a-z]{2,6})?", fullmatch=True)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
ipv6 = st.ip_addresses(v=6).map(str)


@settings(max_examples=100, deadline=None)
@given(
    user=name_text,
    target=name_text,
    domain=st.from_regex(r"[a-z]{3,8}\.(com|org|example)", fullmatch=True),
    src=st.one_of(ipv4, ipv6),
    dst=ipv4,
    ips=st.booleans(),
    ecs=st.booleans(),
)
def test_no_personal_value_survives_normalization(
    user: str, target: str, domain: str, src: str, dst: str, ips: bool, ecs: bool
) -> None:
    email = f"{user}@{domain}"
    text = f"{user} ({email.upper()}) from {src} to {dst} acted on {target}; cc {target}."
    if ecs:
        body: dict[str, Any] = {
            "user": {"name": user, "email": email, "target": {"name": target}},
            "source": {"ip": src},
            "destination": {"ip": dst},
            "message": text,
        }
    else:
        body = {
            "user": user,
            "email": email,
            "client_ip": src,
            "dst_ip": dst,
            "msg": text,
            "user.target.name": target,
        }
    envelope = RawEnvelope.new("app-1", "http-json", json.dumps(body).encode(), received_at=1e9)
    original = normalize(envelope, None)
    stored = normalize(envelope, Pseudonymizer(KEY, pseudonymize_ips=ips))
    assert isinstance(original, NormalizedEvent)
    assert isinstance(stored, NormalizedEvent)
    assert original.fields["user.name"] == user
    assert leftovers(original.fields, stored.fields, ips=ips) == []
    assert KEY.decode() not in stored.to_json().decode()


# ---------------------------------------------------------------------------------------------- settings


def test_settings_read_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEM_PSEUDONYM_KEY", "an-environment-key-of-some-length")
    monkeypatch.setenv("SIEM_PSEUDONYMIZE_IPS", "false")
    settings_ = SiemSettings()
    assert not settings_.pseudonymize_ips
    assert "an-environment-key" not in repr(settings_)
    assert settings_.pseudonymizer().pseudonym("user", "a") == Pseudonymizer(
        b"an-environment-key-of-some-length"
    ).pseudonym("user", "a")


def test_settings_refuse_a_missing_or_short_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIEM_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ValidationError):
        SiemSettings()
    with pytest.raises(ValidationError, match="at least 16 bytes"):
        SiemSettings(pseudonym_key="short")  # type: ignore[arg-type]
