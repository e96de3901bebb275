"""API tokens: logging in (with the login limiter), who a token belongs to, and revoking tokens.

Web sessions are ordinary tokens in a cookie, so everything here holds for them too. Tokens checked in
the last few seconds are answered from memory (`TokenCache`), which saves annotators' requests a
database round trip each."""

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dspo.db import session_scope, utcnow
from dspo.errors import Unauthorized
from dspo.models import ApiToken, User
from dspo.runtime import Runtime
from dspo.security import hash_token, new_token, verify_password_or_decoy
from dspo.services import login_limit


@dataclass(frozen=True)
class Principal:
    """The signed-in user as a request sees it: a snapshot, so that it can be cached between requests.
    Load the `User` row where more is needed."""

    id: int
    username: str
    role: str


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


class TokenCache:
    """Token hash -> Principal for tokens checked in the last `ttl_seconds` (never beyond the token's
    own expiry). Logging out or changing a user through this process takes effect at once; through
    another server process, within `ttl_seconds`. A ttl of 0 turns the cache off.

    A lookup that read the database before a `forget_*` and stores its answer after it would bring the
    forgotten token back: `put` takes the `generation` seen before the read and stores nothing if any
    token or user was forgotten since."""

    MAX_ENTRIES = 100_000

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self.generation = 0
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()  # for writers; a read is one dict lookup

    def get(self, token_hash: str) -> Principal | None:
        entry = self._entries.get(token_hash)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def put(self, token_hash: str, principal: Principal, token_expires_at: datetime, generation: int) -> None:
        keep = min(self.ttl_seconds, (token_expires_at - utcnow()).total_seconds())
        with self._lock:
            if keep <= 0 or generation != self.generation:
                return
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[token_hash] = (time.monotonic() + keep, principal)

    def forget_token(self, token_hash: str) -> None:
        with self._lock:
            self.generation += 1
            self._entries.pop(token_hash, None)

    def forget_user(self, user_id: int) -> None:
        with self._lock:
            self.generation += 1
            for token_hash in [h for h, (_, principal) in self._entries.items() if principal.id == user_id]:
                del self._entries[token_hash]


def log_in(runtime: Runtime, username: str, password: str, address: str) -> IssuedToken:
    """A new token for an active user whose password matches. Refused with TooManyRequests while the
    user name or the client address has used up its failed logins (dspo.services.login_limit), and
    with Unauthorized otherwise, after the same argon2 work for unknown user names as for real ones.
    The password is checked outside any transaction (on SQLite no write lock waits for it)."""
    settings, now = runtime.settings, utcnow()
    with runtime.read_sessions() as session:
        login_limit.check(session, settings, username, address, now)
        user = session.execute(
            select(User.id, User.password_hash, User.is_active).where(User.username == username)
        ).first()
    matches = verify_password_or_decoy(user.password_hash if user else None, password)
    accepted = user is not None and user.is_active and matches
    with session_scope(runtime.sessions) as session:
        if not accepted:
            login_limit.record_failure(session, settings, username, address, now)
        else:
            login_limit.clear_user(session, username)
            token, token_hash = new_token()
            expires_at = now + timedelta(hours=settings.token_hours)
            session.add(ApiToken(user_id=user.id, token_hash=token_hash, expires_at=expires_at))
    if not accepted:
        raise Unauthorized("wrong username or password, or inactive user")
    return IssuedToken(token, expires_at)


def load_principal(session: Session, cache: TokenCache, token_hash: str) -> Principal | None:
    """The active user this unexpired token belongs to, or None; read from the database, then cached."""
    generation = cache.generation
    row = session.execute(
        select(ApiToken.expires_at, User.id, User.username, User.role, User.is_active)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == token_hash)
    ).first()
    if row is None or row.expires_at < utcnow() or not row.is_active:
        return None
    principal = Principal(row.id, row.username, row.role)
    cache.put(token_hash, principal, row.expires_at, generation)
    return principal


def revoke(session: Session, cache: TokenCache, token: str) -> None:
    """Delete the token and forget it in this process's cache (it commits)."""
    token_hash = hash_token(token)
    session.execute(delete(ApiToken).where(ApiToken.token_hash == token_hash))
    session.commit()
    cache.forget_token(token_hash)


def delete_user_tokens(session: Session, user_id: int) -> None:
    """Delete every token (and so every web session) of a user; the caller commits, then forgets the
    user in its TokenCache."""
    session.execute(delete(ApiToken).where(ApiToken.user_id == user_id))
