"""Typed dependencies: the runtime, a database session, and the authenticated user.

A user is authenticated by a bearer token (the REST API) or by the session cookie of the web pages.
The cookie holds an ordinary API token, HttpOnly and SameSite=Strict. Because a browser sends cookies
by itself, every state-changing request authenticated by the cookie must also carry the CSRF token
of that session (header X-CSRF-Token, or form field csrf_token); bearer tokens need none, since no
browser adds them on its own."""

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo.db import utcnow
from dspo.models import ApiToken, User
from dspo.runtime import Runtime
from dspo.security import hash_token

SESSION_COOKIE = "dspo_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session:
        yield session


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


def user_for_token(session: Session, token: str) -> User | None:
    row = session.execute(
        select(ApiToken.expires_at, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == hash_token(token))
    ).first()
    if row is None or row.expires_at < utcnow() or not row.User.is_active:
        return None
    return row.User


def get_current_user(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    token: TokenDep,
    csrf: Annotated[str | None, Depends(submitted_csrf)],
) -> User:
    unauthorized = HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "not authenticated: log in at POST /api/v1/auth/login and send 'Authorization: Bearer <token>'",
        headers={"WWW-Authenticate": "Bearer"},
    )
    cookie = request.cookies.get(SESSION_COOKIE)
    user = user_for_token(session, token or cookie or "") if token or cookie else None
    if user is None:
        raise unauthorized
    if not token and request.method not in SAFE_METHODS:
        expected = csrf_token_for(runtime, cookie or "")
        if not csrf or not hmac.compare_digest(csrf, expected):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "CSRF token missing or stale: reload the page and try again"
            )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the admin role")
    return user


AdminUser = Annotated[User, Depends(get_admin)]
