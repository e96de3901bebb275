from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from annotation_server.deps import CurrentUser, RuntimeDep, SessionDep, TokenCache, TokenCacheDep, TokenDep
from annotation_server.schemas import TokenOut, UserOut
from dspo.db import utcnow
from dspo.models import ApiToken, User
from dspo.security import hash_token, new_token, verify_password

router = APIRouter(prefix="/auth", tags=["auth"])


def issue_token(session: Session, username: str, password: str, hours: int) -> tuple[str, datetime] | None:
    """A new token (and its expiry) for an active user whose password matches; None otherwise. The
    REST login and the web page's login both use it; the caller commits."""
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None or not user.is_active or not verify_password(user.password_hash, password):
        return None
    token, token_hash = new_token()
    expires_at = utcnow() + timedelta(hours=hours)
    session.add(ApiToken(user_id=user.id, token_hash=token_hash, expires_at=expires_at))
    return token, expires_at


def revoke_token(session: Session, cache: TokenCache, token: str) -> None:
    """Delete the token and forget it in this process's cache (it commits)."""
    token_hash = hash_token(token)
    session.execute(delete(ApiToken).where(ApiToken.token_hash == token_hash))
    session.commit()
    cache.forget_token(token_hash)


@router.post("/login", response_model=TokenOut)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep, runtime: RuntimeDep
) -> TokenOut:
    """Exchange a username and password (form fields) for a bearer token."""
    issued = issue_token(session, form.username, form.password, runtime.settings.token_hours)
    if issued is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password, or inactive user")
    session.commit()
    token, expires_at = issued
    return TokenOut(access_token=token, expires_at=expires_at)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(user: CurrentUser, token: TokenDep, session: SessionDep, cache: TokenCacheDep) -> None:
    """Revoke the token used for this request."""
    revoke_token(session, cache, token or "")


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser, session: SessionDep) -> User:
    row = session.get(User, user.id)
    if row is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "your user was deleted")
    return row
