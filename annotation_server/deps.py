"""Typed dependencies: the runtime, database sessions (read-only or read-write), and the user.

The session policy: a route that only reads takes `ReadSession` (on SQLite it takes no write lock, see
dspo.db), a route that writes takes `WriteSession`; services commit their own writes.

A user is authenticated by a bearer token (the REST API) or by the session cookie of the web pages.
The cookie holds an ordinary API token, HttpOnly and SameSite=Strict. Because a browser sends cookies
by itself, every state-changing request authenticated by the cookie must also carry the CSRF token
of that session (header X-CSRF-Token, or the form field csrf_token of a urlencoded form); bearer tokens
need none, since no browser adds them on its own. Authentication reads no request body: a multipart
body is never read before the user is known.

Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in its thread pool,
and each such hop costs more than the work itself."""

import hmac
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from dspo.errors import Forbidden, Unauthorized
from dspo.runtime import Runtime
from dspo.security import hash_token
from dspo.services.tokens import Principal, TokenCache, load_principal

SESSION_COOKIE = "dspo_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
URLENCODED_FORM = "application/x-www-form-urlencoded"

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _session_dependency(read_only: bool) -> Callable[[Runtime], AsyncIterator[Session]]:
    async def session_dependency(runtime: RuntimeDep) -> AsyncIterator[Session]:
        """A session for the request. Opening one does no I/O; closing one that is still in a transaction
        (an error, or a read that did not commit) rolls back over the network, so that runs in a thread."""
        session = (runtime.read_sessions if read_only else runtime.sessions)()
        try:
            yield session
        finally:
            if session.in_transaction():
                # Its own one-thread limiter, as FastAPI closes its own generator dependencies: the shared
                # pool may be full of requests waiting for the very connection (or SQLite lock) this
                # releases. Shielded, so that a cancelled request still gives it back.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
            else:
                session.close()

    return session_dependency


WriteSession = Annotated[Session, Depends(_session_dependency(read_only=False))]
ReadSession = Annotated[Session, Depends(_session_dependency(read_only=True))]
TokenDep = Annotated[str | None, Depends(oauth2_scheme)]


def csrf_token_for(runtime: Runtime, session_token: str) -> str:
    """The CSRF token of a cookie session: a MAC of its session token, so it dies with the session and
    cannot be computed by a page that does not know the (HttpOnly) session token."""
    key = runtime.settings.secret_key.encode()
    return hmac.new(key, b"csrf:" + session_token.encode(), "sha256").hexdigest()


async def submitted_csrf(request: Request) -> str | None:
    """The CSRF token a request carries: the header, or the field of a urlencoded form (whose body is
    small and limited; Starlette caches it, so the endpoint's own form parsing is not repeated)."""
    header = request.headers.get(CSRF_HEADER)
    if header or not request.headers.get("content-type", "").startswith(URLENCODED_FORM):
        return header
    value = (await request.form()).get(CSRF_FIELD)
    return value if isinstance(value, str) else None


async def get_token_cache(request: Request) -> TokenCache:
    return request.app.state.token_cache


TokenCacheDep = Annotated[TokenCache, Depends(get_token_cache)]


def _load_principal(runtime: Runtime, cache: TokenCache, token_hash: str) -> Principal | None:
    with runtime.read_sessions() as session:
        return load_principal(session, cache, token_hash)


async def user_for_token(runtime: Runtime, cache: TokenCache, token: str) -> Principal | None:
    """The active user this unexpired token belongs to, or None: from the cache, or else (in a thread)
    from the database in a read-only session of its own."""
    token_hash = hash_token(token)
    return cache.get(token_hash) or await run_in_threadpool(_load_principal, runtime, cache, token_hash)


async def get_current_user(
    request: Request, runtime: RuntimeDep, cache: TokenCacheDep, token: TokenDep
) -> Principal:
    cookie = request.cookies.get(SESSION_COOKIE)
    user = await user_for_token(runtime, cache, token or cookie or "") if token or cookie else None
    if user is None:
        raise Unauthorized(
            "not authenticated: log in at POST /api/v1/auth/login and send 'Authorization: Bearer <token>'"
        )
    if not token and request.method not in SAFE_METHODS:
        csrf = await submitted_csrf(request)
        # As bytes: a header may hold any latin-1 text, and compare_digest takes only ASCII strings.
        if not csrf or not hmac.compare_digest(csrf.encode(), csrf_token_for(runtime, cookie or "").encode()):
            raise Forbidden("CSRF token missing or stale: reload the page and try again")
    return user


CurrentUser = Annotated[Principal, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> Principal:
    if user.role != "admin":
        raise Forbidden("this needs the admin role")
    return user


AdminUser = Annotated[Principal, Depends(get_admin)]


def client_address(request: Request) -> str:
    """The client's address as the login limiter counts it: behind a trusted proxy (DSPO_TRUSTED_PROXIES)
    the one it forwarded (see annotation_server.main)."""
    return request.client.host if request.client else "unknown"
