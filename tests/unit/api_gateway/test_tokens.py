"""Bearer tokens without servers: issue and verify, every refusal with its reason, and a key rotation
reaching a node that cached the old keys, without refusing tokens signed before it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from katas.api_gateway.tokens import TokenError, TokenIssuer, TokenVerifier


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Published:
    """The authorization server's JWKS endpoint, counting fetches."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self.issuer = issuer
        self.fetches = 0

    async def __call__(self) -> dict[str, Any]:
        self.fetches += 1
        return self.issuer.jwks()


def setup(ttl_s: float = 300) -> tuple[TokenIssuer, TokenVerifier, Published, Clock]:
    """Tokens carry real times (the claims are checked against the real clock); the verifier's refresh
    period runs on a fake one."""
    mono = Clock(100.0)
    issuer = TokenIssuer("https://auth.katas", "katas-gateway", ttl_s=ttl_s)
    jwks = Published(issuer)
    verifier = TokenVerifier(jwks, "https://auth.katas", "katas-gateway", clock=mono)
    return issuer, verifier, jwks, mono


def verify(verifier: TokenVerifier, token: str) -> dict[str, Any]:
    return asyncio.run(verifier.verify(token))


def test_a_token_verifies_with_its_claims() -> None:
    issuer, verifier, _, _ = setup()
    token, expires_in = issuer.issue("acme", {"tier": "pro", "scope": "orders:read"})
    claims = verify(verifier, token)
    assert (claims["sub"], claims["tier"], expires_in) == ("acme", "pro", 300)


def test_refusals_say_why() -> None:
    issuer, verifier, _, _ = setup()
    token, _ = issuer.issue("acme", {})
    header, payload, signature = token.split(".")
    with pytest.raises(TokenError, match="not a JWT"):
        verify(verifier, "not-a-token")
    with pytest.raises(TokenError, match="signature"):
        verify(verifier, f"{header}.{payload}.{signature[::-1]}")
    other = TokenIssuer("https://elsewhere", "katas-gateway")
    with pytest.raises(TokenError):
        verify(verifier, other.issue("acme", {})[0])  # signed by keys this node does not trust
    wrong_audience = TokenIssuer("https://auth.katas", "another-api", keys=issuer.keys)
    with pytest.raises(TokenError, match="claims refused"):
        verify(verifier, wrong_audience.issue("acme", {})[0])


def test_an_expired_token_is_refused() -> None:
    wall = Clock(time.time() - 600)  # the token is issued ten minutes ago, for one minute
    issuer = TokenIssuer("https://auth.katas", "katas-gateway", ttl_s=60, clock=wall)
    token, _ = issuer.issue("acme", {})
    wall.now = time.time()
    verifier = TokenVerifier(Published(issuer), "https://auth.katas", "katas-gateway")
    with pytest.raises(TokenError, match="claims refused"):
        verify(verifier, token)


def test_a_rotated_key_is_published_before_it_signs() -> None:
    issuer, _, _, _ = setup()
    first = issuer.signing_key().kid
    second = issuer.rotate()
    assert [k["kid"] for k in issuer.jwks()["keys"]] == [second, first]
    assert issuer.signing_key().kid == first, "not signing with it until nodes could have fetched it"


def test_a_rotation_reaches_a_node_with_cached_keys_and_old_tokens_stay_valid() -> None:
    issuer, verifier, jwks, mono = setup()
    before, _ = issuer.issue("acme", {})
    verify(verifier, before)
    assert jwks.fetches == 1
    issuer.rotate(activate_after_s=0)  # signing at once: the node must fetch the new key itself
    mono.now += 6
    after, _ = issuer.issue("acme", {})
    assert verify(verifier, after)["sub"] == "acme", "an unknown key id makes the node fetch the JWKS again"
    assert jwks.fetches == 2
    assert verify(verifier, before)["sub"] == "acme", "tokens signed before the rotation still verify"
    # Tokens naming unknown keys cannot make a node hammer the auth server: one refetch per period.
    stranger = TokenIssuer("https://auth.katas", "katas-gateway")
    for _ in range(5):
        with pytest.raises(TokenError):
            verify(verifier, stranger.issue("mallory", {})[0])
    assert jwks.fetches == 2
    mono.now += 10
    with pytest.raises(TokenError):
        verify(verifier, stranger.issue("mallory", {})[0])
    assert jwks.fetches == 3
