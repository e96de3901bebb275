from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status

from annotation_server.deps import (
    SESSION_COOKIE,
    CurrentUser,
    ReadSession,
    RuntimeDep,
    TokenCacheDep,
    TokenDep,
    WriteSession,
    client_address,
)
from annotation_server.schemas import LoginForm, TokenOut, UserOut, errors
from dspo.models import User
from dspo.services import tokens, users

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login", response_model=TokenOut, responses=errors(401, 400, 413, 422, 429))
def login(form: Annotated[LoginForm, Form()], request: Request, runtime: RuntimeDep) -> TokenOut:
    """Exchange a username and password (form fields) for a bearer token. Failed logins are limited
    per user name and per client address (429 with Retry-After)."""
    issued = tokens.log_in(runtime, form.username, form.password, client_address(request))
    return TokenOut(access_token=issued.token, expires_at=issued.expires_at)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=errors(401, 403))
def logout(
    _: CurrentUser,
    token: TokenDep,
    request: Request,
    session: WriteSession,
    cache: TokenCacheDep,
    response: Response,
) -> None:
    """Revoke the token used for this request: the bearer token, or the session cookie's."""
    tokens.revoke(session, cache, token or request.cookies.get(SESSION_COOKIE) or "")
    if not token:
        response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/me", response_model=UserOut, responses=errors(401))
def me(user: CurrentUser, session: ReadSession) -> User:
    return users.get_user(session, user.id)
