"""Developer accounts and portal sessions, in the configuration store's PostgreSQL.

A developer signs in to the portal with an email and a password and manages exactly one client (a row of
`gw_clients`). Passwords are kept as scrypt hashes with a random salt per account and the cost parameters
beside them (`scrypt$n$r$p$salt$hash`), so a copy of the table does not give anyone a password cheaply and
the cost can be raised later without breaking stored hashes. Unlike API keys (32 random bytes, see
katas.api_gateway.config), passwords are chosen by people: they need the salt and the slow hash.

Sessions live here too, not only in a cookie: signing out deletes the row, so a copied cookie stops
working at once, a portal restart keeps everyone signed in, and deleting a developer ends their sessions.
Only the SHA-256 of a session id is stored, so reading the table does not let anyone take a session over.

These tables are not part of the gateway's configuration: writes do not bump the version or notify nodes.
The store reuses `PostgresConfigStore`'s pool (one pool per process, not two).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import psycopg

from katas.api_gateway.adapters.pg_config import ConfigStoreUnavailableError, PostgresConfigStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS gw_developers (
    email text PRIMARY KEY CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    client text NOT NULL REFERENCES gw_clients (name) ON DELETE CASCADE,
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gw_developers_client ON gw_developers (client);
CREATE TABLE IF NOT EXISTS gw_portal_sessions (
    id_sha256 text PRIMARY KEY,
    email text NOT NULL REFERENCES gw_developers (email) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS gw_portal_sessions_expiry ON gw_portal_sessions (expires_at);
"""

EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9.-]{1,189}")
"""Deliberately loose: an address is only an account name here, no mail is sent to it."""
MAX_PASSWORD_CHARS = 1024
"""Longer passwords are refused before hashing, so a huge form field costs nothing."""

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""16 MiB and about 50 ms per hash on this machine's cores: OWASP's minimum for scrypt."""
SALT_BYTES, HASH_BYTES = 16, 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$n$r$p$salt$hash`: the parameters travel with the hash, so they can change later."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Recompute with the stored salt and parameters and compare in constant time; False for anything
    malformed rather than an exception, so a damaged row means "wrong password", not a crash."""
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(_unb64(expected)),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, _unb64(expected))


_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
"""Checked against when an email is unknown, so a sign-in takes as long whether the account exists or not
(the time does not tell an attacker which emails have accounts)."""


def normalize_email(email: str) -> str:
    return email.strip().lower()


@dataclass(frozen=True, slots=True)
class Developer:
    email: str
    client: str


def session_digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class PostgresDeveloperStore:
    """Accounts and sessions over the configuration store's pool; open the configuration store first (its
    schema holds `gw_clients`, which accounts refer to)."""

    def __init__(self, config: PostgresConfigStore) -> None:
        self.config = config

    async def open(self) -> PostgresDeveloperStore:
        try:
            async with self.config.pool.connection() as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(7407)")  # portals may start side by side
                await conn.execute(SCHEMA)
        except (psycopg.OperationalError, TimeoutError) as error:
            raise ConfigStoreUnavailableError(f"configuration store unreachable: {error}") from error
        return self

    # -- accounts -----------------------------------------------------------------------------------------
    async def add_developer(
        self, email: str, client: str, password: str, *, replace_password: bool = False
    ) -> Developer:
        """Create an account for an existing client; an existing account keeps its password unless
        `replace_password` (seeding must not undo a change made in the lab)."""
        email = normalize_email(email)
        if not EMAIL.fullmatch(email):
            raise ValueError(f"not an email address: {email!r}")
        if not 8 <= len(password) <= MAX_PASSWORD_CHARS:
            raise ValueError(f"a password is 8 to {MAX_PASSWORD_CHARS} characters")
        encoded = await asyncio.to_thread(hash_password, password)
        insert = "INSERT INTO gw_developers (email, client, password_hash) VALUES (%s, %s, %s) "
        sql = insert + (
            "ON CONFLICT (email) DO UPDATE SET password_hash = EXCLUDED.password_hash, "
            "client = EXCLUDED.client RETURNING client"
            if replace_password
            else "ON CONFLICT (email) DO NOTHING RETURNING client"
        )
        try:
            rows = await self.config.query(sql, (email, client, encoded))
        except psycopg.errors.ForeignKeyViolation as error:
            raise LookupError(f"no client {client!r}: create it first") from error
        if rows:
            return Developer(email, str(rows[0][0]))
        found = await self.developer(email)
        assert found is not None
        return found

    async def developer(self, email: str) -> Developer | None:
        rows = await self.config.query(
            "SELECT email, client FROM gw_developers WHERE email = %s", (normalize_email(email),)
        )
        return Developer(str(rows[0][0]), str(rows[0][1])) if rows else None

    async def authenticate(self, email: str, password: str) -> Developer | None:
        """The developer if the password is theirs, else None, taking about as long either way. The hash
        runs in a thread: 50 ms of scrypt must not stall every other request of the portal."""
        email = normalize_email(email)
        rows = (
            await self.config.query(
                "SELECT client, password_hash FROM gw_developers WHERE email = %s", (email,)
            )
            if len(email) <= 254
            else []
        )
        encoded = str(rows[0][1]) if rows else _DUMMY_HASH
        ok = len(password) <= MAX_PASSWORD_CHARS and await asyncio.to_thread(
            verify_password, password, encoded
        )
        return Developer(email, str(rows[0][0])) if ok and rows else None

    # -- sessions -----------------------------------------------------------------------------------------
    async def start_session(self, developer: Developer, ttl_s: float) -> str:
        """A new session id (returned once: only its digest is stored); expired sessions are swept here."""
        session_id = secrets.token_urlsafe(32)
        await self.config.query(
            "WITH swept AS (DELETE FROM gw_portal_sessions WHERE expires_at < now() RETURNING 1) "
            "INSERT INTO gw_portal_sessions (id_sha256, email, expires_at) "
            "VALUES (%s, %s, now() + make_interval(secs => %s)) RETURNING 1",
            (session_digest(session_id), developer.email, float(ttl_s)),
        )
        return session_id

    async def session(self, session_id: str) -> Developer | None:
        rows = await self.config.query(
            "SELECT d.email, d.client FROM gw_portal_sessions s JOIN gw_developers d ON d.email = s.email "
            "WHERE s.id_sha256 = %s AND s.expires_at > now()",
            (session_digest(session_id),),
        )
        return Developer(str(rows[0][0]), str(rows[0][1])) if rows else None

    async def end_session(self, session_id: str) -> None:
        await self.config.query(
            "DELETE FROM gw_portal_sessions WHERE id_sha256 = %s RETURNING 1", (session_digest(session_id),)
        )
