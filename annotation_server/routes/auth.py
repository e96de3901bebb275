from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import delete, select

from annotation_server.deps import CurrentUser, RuntimeDep, SessionDep, TokenCacheDep, TokenDep
from annotation_server.schemas import TokenOut, UserOut
from dspo.db import utcnow
from dspo.models import ApiToken, User
from dspo.security import hash_token, new_token, verify_password

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login", response_model=TokenOut)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep, runtime: RuntimeDep
) -> TokenOut:
    """Exchange a username and password (form fields) for a bearer token."""
    user = session.scalars(select(User).where(User.username == form.username)).first()
    if user is None or not user.is_active or not verify_password(user.password_hash, form.password):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password, or inactive user")
    token, token_hash = new_token()
    expires_at = utcnow() + timedelta(hours=runtime.settings.token_hours)
    session.add(ApiToken(user_id=user.id, token_hash=token_hash, expires_at=expires_at))
    session.commit()
    return TokenOut(access_token=token, expires_at=expires_at)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(user: CurrentUser, token: TokenDep, session: SessionDep, cache: TokenCacheDep) -> None:
    """Revoke the token used for this request."""
    token_hash = hash_token(token or "")
    session.execute(delete(ApiToken).where(ApiToken.token_hash == token_hash))
    session.commit()
    cache.forget_token(token_hash)


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser, session: SessionDep) -> User:
    row = session.get(User, user.id)
    if row is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "your user was deleted")
    return row
