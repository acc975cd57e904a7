"""OAuth 2.0 bearer tokens: JWTs signed by the stack's authorization server, checked by every gateway
node locally against the server's published keys (JWKS), with key rotation.

Why local validation: asking the authorization server (or a database) about every request is the
`auth-db-every-request` mistake (5-20 ms each time, and the auth server becomes part of every request's
availability). A node fetches the JWKS once, caches it, and verifies signatures, expiry, issuer and
audience itself; a token signed with a key id it does not know makes it fetch the JWKS again, at most
once per `min_refresh_s`, which is how a rotation reaches the nodes without a restart.

Rotation: a new key is published at once but signs only `activate_after_s` later (more than a node's
`min_refresh_s`), so any node that meets its first token can fetch it; the previous keys stay published
until every token they signed has expired. No valid token is refused during a rotation.

JOSE is joserfc's (the maintained successor of authlib.jose); ES256 keys.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from joserfc.jws import extract_compact
from joserfc.jwt import JWTClaimsRegistry

ALGORITHM = "ES256"


class TokenError(ValueError):
    """The bearer token is not acceptable; the message says why (the node answers 401)."""


@dataclass
class SigningKey:
    key: ECKey
    active_from: float
    retired_at: float | None = None

    @property
    def kid(self) -> str:
        return str(self.key.kid)


@dataclass
class TokenIssuer:
    """The authorization server's side: signing keys, rotation, tokens and the public JWKS."""

    issuer: str
    audience: str
    ttl_s: float = 300.0
    activate_after_s: float = 10.0
    clock: Callable[[], float] = time.time
    keys: list[SigningKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keys:
            self.rotate(activate_after_s=0.0)

    def rotate(self, *, activate_after_s: float | None = None) -> str:
        """A new signing key, published now and signing from `activate_after_s` on; the keys before it
        keep being published until their tokens have expired."""
        now = self.clock()
        delay = self.activate_after_s if activate_after_s is None else activate_after_s
        for old in self.keys:
            if old.retired_at is None:
                old.retired_at = now + delay
        kid = uuid.uuid4().hex[:16]
        key = ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig", "alg": ALGORITHM})
        self.keys.append(SigningKey(key, now + delay))
        self._forget_expired(now)
        return kid

    def signing_key(self) -> SigningKey:
        now = self.clock()
        return max((k for k in self.keys if k.active_from <= now), key=lambda k: k.active_from)

    def _forget_expired(self, now: float) -> None:
        self.keys = [k for k in self.keys if k.retired_at is None or now - k.retired_at < self.ttl_s + 60]

    def jwks(self) -> dict[str, Any]:
        """The public keys, newest first."""
        self._forget_expired(self.clock())
        return {"keys": [k.key.as_dict(private=False) for k in reversed(self.keys)]}

    def issue(self, subject: str, claims: dict[str, Any]) -> tuple[str, int]:
        """A signed access token for `subject` with extra `claims`; (token, seconds it lives)."""
        now = int(self.clock())
        current = self.signing_key()
        body = {
            **claims,
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + int(self.ttl_s),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode({"alg": ALGORITHM, "kid": current.kid}, body, current.key)
        return token, int(self.ttl_s)


@dataclass
class TokenVerifier:
    """A gateway node's side: the cached JWKS, refetched for an unknown key id (rate limited)."""

    fetch_jwks: Callable[[], Awaitable[dict[str, Any]]]
    issuer: str
    audience: str
    min_refresh_s: float = 5.0
    leeway_s: int = 5
    clock: Callable[[], float] = time.monotonic
    _keys: KeySet | None = None
    _fetched_at: float = float("-inf")

    async def _refresh(self, *, forced: bool) -> None:
        now = self.clock()
        if self._keys is not None and (not forced or now - self._fetched_at < self.min_refresh_s):
            return
        self._keys = KeySet.import_key_set(await self.fetch_jwks())  # type: ignore[arg-type]
        self._fetched_at = now

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims if its signature, issuer, audience and lifetime hold; TokenError otherwise."""
        await self._refresh(forced=False)
        try:
            kid = extract_compact(token.encode()).headers().get("kid")
        except (JoseError, ValueError) as exc:
            raise TokenError(f"not a JWT: {exc}") from exc
        if kid is not None and self._keys is not None and not any(k.kid == kid for k in self._keys.keys):
            await self._refresh(forced=True)  # a rotation this node has not seen yet
        if self._keys is None:
            raise TokenError("no keys to check the token against")
        try:
            decoded = jwt.decode(token, self._keys, algorithms=[ALGORITHM])
        except (JoseError, ValueError) as exc:
            raise TokenError(f"signature or format refused: {exc}") from exc
        registry = JWTClaimsRegistry(
            leeway=self.leeway_s,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise TokenError(f"claims refused: {exc}") from exc
        return dict(decoded.claims)
