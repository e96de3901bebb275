"""User accounts: create, change, list, and the CLI's create-or-reset. Passwords are hashed before any
transaction starts (argon2 takes a tenth of a second; on SQLite no writer should wait for it). A new
password, or a deactivated account, ends every token and web session of the user."""

import re
import secrets
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from dspo import assign
from dspo.db import commit_unique, session_scope
from dspo.errors import Conflict, InvalidInput, NotFound
from dspo.models import User, Vote
from dspo.runtime import Runtime
from dspo.security import hash_password
from dspo.services import tokens

# admin: everything. reviewer: annotates, and sees every answer, in the projects they are members of.
# annotator: annotates in the projects they are members of and sees their own answers (services.members).
ROLES = ("admin", "reviewer", "annotator")
USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]+$"
USERNAME_MAX_LENGTH = 64  # User.username
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 256


def check_username(username: str) -> None:
    if not (0 < len(username) <= USERNAME_MAX_LENGTH and re.fullmatch(USERNAME_PATTERN, username)):
        raise InvalidInput(
            f"a user name has 1 to {USERNAME_MAX_LENGTH} letters, digits or the characters _ . @ -"
        )


def check_password(password: str) -> None:
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH or "\x00" in password:
        raise InvalidInput(
            f"a password needs at least {PASSWORD_MIN_LENGTH} characters, at most {PASSWORD_MAX_LENGTH}, "
            "and no NUL character"
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    return user


def create_user(session: Session, username: str, password: str, role: str) -> User:
    check_username(username)
    check_password(password)
    check_role(role)
    user = User(username=username, password_hash=hash_password(password), role=role)
    session.add(user)
    commit_unique(session, f"user {username!r} already exists")
    return user


def update_user(
    session: Session,
    cache: tokens.TokenCache,
    user_id: int,
    *,
    acting_user_id: int,
    password: str | None = None,
    role: str | None = None,
    is_active: bool | None = None,
) -> User:
    """Change a user's password, role or state. A new password or a deactivation revokes all of the
    user's tokens (web sessions included); a deactivation also gives back the tasks the user holds
    leases on. Any change is forgotten in this process's token cache at once."""
    if password is not None:
        check_password(password)
    if role is not None:
        check_role(role)
    password_hash = hash_password(password) if password is not None else None
    user = get_user(session, user_id)
    if user.id == acting_user_id and ((role is not None and role != "admin") or is_active is False):
        raise Conflict("you cannot demote or deactivate yourself")
    if password_hash is not None:
        user.password_hash = password_hash
    if role is not None:
        user.role = role
    if is_active is not None:
        user.is_active = is_active
    if password_hash is not None or is_active is False:
        tokens.delete_user_tokens(session, user.id)
    if is_active is False:
        assign.release_user_leases(session, user.id)
    session.commit()
    cache.forget_user(user.id)
    return user


def ensure_user(runtime: Runtime, username: str, role: str, password: str | None = None) -> str:
    """Create the user, or reset its password and role (and end its sessions) if it exists; returns
    the password (a new random one when none is given). For `dspo user create` and the demo."""
    password = password or secrets.token_urlsafe(12)
    check_username(username)
    check_password(password)
    check_role(role)
    password_hash = hash_password(password)
    with session_scope(runtime.sessions) as session:
        user = session.scalars(select(User).where(User.username == username)).first()
        if user is None:
            session.add(User(username=username, password_hash=password_hash, role=role))
        else:
            user.password_hash, user.role, user.is_active = password_hash, role, True
            tokens.delete_user_tokens(session, user.id)
    return password


def answer_counts(session: Session, since: datetime) -> dict[int, tuple[int, int, int]]:
    """Per user id: answers, skips, and answers or skips since `since`."""
    counts = session.execute(
        select(
            Vote.user_id,
            func.sum(case((Vote.outcome != "skip", 1), else_=0)),
            func.sum(case((Vote.outcome == "skip", 1), else_=0)),
            func.sum(case((Vote.created_at >= since, 1), else_=0)),
        ).group_by(Vote.user_id)
    )
    return {uid: (int(v or 0), int(s or 0), int(d or 0)) for uid, v, s, d in counts}
