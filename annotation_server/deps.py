"""Typed dependencies: the runtime, a database session, and the authenticated user.

A user is authenticated by a bearer token (the REST API) or by the session cookie of the web pages.
The cookie holds an ordinary API token, HttpOnly and SameSite=Strict. Because a browser sends cookies
by itself, every state-changing request authenticated by the cookie must also carry the CSRF token
of that session (header X-CSRF-Token, or form field csrf_token); bearer tokens need none, since no
browser adds them on its own.

Tokens checked in the last few seconds are answered from memory (`TokenCache`), which saves annotators'
requests a database round trip each. Dependencies that do no I/O are `async def`: FastAPI runs a plain
`def` dependency in its thread pool, and each such hop costs more than the work itself."""

import hmac
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo.db import utcnow
from dspo.models import ApiToken, User
from dspo.runtime import Runtime
from dspo.security import hash_token

RowT = TypeVar("RowT")

SESSION_COOKIE = "dspo_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[Session]:
    """A session for the request. Opening one does no I/O; closing one that is still in a transaction
    (an error, or a read that did not commit) rolls back over the network, so that runs in a thread."""
    session = runtime.sessions()
    try:
        yield session
    finally:
        if session.in_transaction():
            # Its own one-thread limiter, as FastAPI closes its own generator dependencies: the shared pool
            # may be full of requests waiting for the very connection (or SQLite lock) this releases.
            # Shielded, so that a cancelled request still gives it back.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_session)]
TokenDep = Annotated[str | None, Depends(oauth2_scheme)]


def csrf_token_for(runtime: Runtime, session_token: str) -> str:
    """The CSRF token of a cookie session: a MAC of its session token, so it dies with the session and
    cannot be computed by a page that does not know the (HttpOnly) session token."""
    key = runtime.settings.secret_key.encode()
    return hmac.new(key, b"csrf:" + session_token.encode(), "sha256").hexdigest()


async def submitted_csrf(request: Request) -> str | None:
    """The CSRF token a request carries; async because a form field needs the parsed body (Starlette
    caches it, so the endpoint's own form parsing is not repeated)."""
    if request.method in SAFE_METHODS:
        return None
    header = request.headers.get(CSRF_HEADER)
    if header or not request.headers.get("content-type", "").startswith(FORM_TYPES):
        return header
    value = (await request.form()).get(CSRF_FIELD)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Principal:
    """The signed-in user as a request sees it: a snapshot, so that it can be cached between requests.
    Load the `User` row where more is needed."""

    id: int
    username: str
    role: str


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


async def get_token_cache(request: Request) -> TokenCache:
    return request.app.state.token_cache


TokenCacheDep = Annotated[TokenCache, Depends(get_token_cache)]


async def user_for_token(session: Session, cache: TokenCache, token: str) -> Principal | None:
    """The active user this unexpired token belongs to, or None; from the cache, or else the database."""
    token_hash = hash_token(token)
    return cache.get(token_hash) or await run_in_threadpool(_load_principal, session, cache, token_hash)


def _load_principal(session: Session, cache: TokenCache, token_hash: str) -> Principal | None:
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


async def get_current_user(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    cache: TokenCacheDep,
    token: TokenDep,
    csrf: Annotated[str | None, Depends(submitted_csrf)],
) -> Principal:
    unauthorized = HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "not authenticated: log in at POST /api/v1/auth/login and send 'Authorization: Bearer <token>'",
        headers={"WWW-Authenticate": "Bearer"},
    )
    cookie = request.cookies.get(SESSION_COOKIE)
    user = await user_for_token(session, cache, token or cookie or "") if token or cookie else None
    if user is None:
        raise unauthorized
    if not token and request.method not in SAFE_METHODS:
        expected = csrf_token_for(runtime, cookie or "")
        if not csrf or not hmac.compare_digest(csrf, expected):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "CSRF token missing or stale: reload the page and try again"
            )
    return user


CurrentUser = Annotated[Principal, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> Principal:
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the admin role")
    return user


AdminUser = Annotated[Principal, Depends(get_admin)]


def get_or_404(session: Session, model: type[RowT], ident: int, what: str) -> RowT:
    """The row of `model` with this primary key, or a 404 that names what was asked for."""
    row = session.get(model, ident)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} does not exist")
    return row
