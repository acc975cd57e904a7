"""Signed cookie values, CSRF tokens and the sign-in throttle of the developer portal.

The session cookie carries a random session id plus an HMAC of it: a cookie the portal did not issue is
refused before any database lookup, and the id itself is checked against the session table (sign-out
works). CSRF tokens are HMACs of the session id (or, on the sign-in form, of a pre-session cookie) for
one purpose each, so a token is worth nothing without the cookie it belongs to and cannot be replayed for
another user. The throttle counts failed sign-ins per email address in this process: after
`max_failures` within `window_s`, that address is refused until the oldest failure leaves the window.
It is keyed by whatever address is typed, existing or not, so it does not reveal which accounts exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict, deque
from collections.abc import Callable


def _mac(secret: bytes, purpose: str, value: str) -> str:
    digest = hmac.new(secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Signer:
    """HMAC-SHA256 under the portal's secret; every use names its purpose, so no value signed for one
    use (a cookie) verifies for another (a CSRF token)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the portal secret must be at least 16 bytes")
        self._secret = secret

    def sign(self, value: str) -> str:
        return f"{value}.{_mac(self._secret, 'cookie', value)}"

    def unsign(self, signed: str | None) -> str | None:
        """The value if the signature is ours, else None."""
        if not signed or "." not in signed:
            return None
        value, signature = signed.rsplit(".", 1)
        expected = _mac(self._secret, "cookie", value)
        return value if hmac.compare_digest(signature.encode(), expected.encode()) else None

    def token(self, purpose: str, value: str) -> str:
        return _mac(self._secret, purpose, value)

    def check(self, purpose: str, value: str | None, token: object) -> bool:
        if not value or not isinstance(token, str) or not token:
            return False
        return hmac.compare_digest(token.encode(), self.token(purpose, value).encode())


class LoginThrottle:
    """Failed sign-ins per address, in memory; `max_tracked` bounds the memory an attacker can fill with
    made-up addresses (the least recently failed are forgotten first)."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        max_tracked: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_tracked = max_tracked
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, email: str) -> deque[float]:
        failures = self._failures.get(email, deque())
        horizon = self.clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures

    def retry_after(self, email: str) -> float:
        """Seconds until `email` may try again; 0 when it may now."""
        failures = self._recent(email)
        if len(failures) < self.max_failures:
            return 0.0
        return max(0.0, failures[-self.max_failures] + self.window_s - self.clock())

    def failed(self, email: str) -> None:
        failures = self._recent(email)
        failures.append(self.clock())
        self._failures[email] = failures
        self._failures.move_to_end(email)
        while len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)

    def succeeded(self, email: str) -> None:
        self._failures.pop(email, None)
