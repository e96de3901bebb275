"""The login limiter: failed logins counted per user name and per client address in a fixed window,
in the database (table login_failures), so that every server process counts the same attempts.

A name or an address that reached its limit is refused with TooManyRequests until its window ends,
before any password is checked. A successful login clears its user name's count (not its address's:
one valid account must not reset the count of an address that guesses others' passwords)."""

import hashlib
import math
from datetime import datetime, timedelta

from sqlalchemy import and_, case, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dspo.errors import TooManyRequests
from dspo.models import LoginFailure
from dspo.settings import Settings

USER, ADDRESS = "user", "address"
KEY_LENGTH = 64  # LoginFailure.key
failures_table = LoginFailure.__table__


def _subjects(username: str, address: str) -> list[tuple[str, str]]:
    return [(USER, hashlib.sha256(username.encode()).hexdigest()), (ADDRESS, address[:KEY_LENGTH])]


def _limits(settings: Settings) -> dict[str, int]:
    return {USER: settings.login_failures_per_user, ADDRESS: settings.login_failures_per_address}


def check(session: Session, settings: Settings, username: str, address: str, now: datetime) -> None:
    """Raise TooManyRequests if this user name or this address has no failed login left in its window."""
    window = timedelta(seconds=settings.login_window_seconds)
    stmt = select(LoginFailure.kind, LoginFailure.failures, LoginFailure.window_started_at).where(
        or_(
            *(
                and_(LoginFailure.kind == kind, LoginFailure.key == key)
                for kind, key in _subjects(username, address)
            )
        ),
        LoginFailure.window_started_at >= now - window,
    )
    limits = _limits(settings)
    for kind, failures, started_at in session.execute(stmt):
        if failures >= limits[kind]:
            retry_after = max(1, math.ceil((started_at + window - now).total_seconds()))
            what = "this user name" if kind == USER else "your address"
            raise TooManyRequests(
                f"too many failed logins for {what}: try again in {retry_after} s", retry_after=retry_after
            )


def record_failure(session: Session, settings: Settings, username: str, address: str, now: datetime) -> None:
    """Count a failed login for the user name and for the address (a window that has ended starts
    again at 1), and forget the windows that have ended. Atomic on both backends (an upsert)."""
    window_start = now - timedelta(seconds=settings.login_window_seconds)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    rows = [
        {"kind": k, "key": v, "failures": 1, "window_started_at": now}
        for k, v in _subjects(username, address)
    ]
    upsert = dialect.insert(failures_table).values(rows)
    ended = failures_table.c.window_started_at < window_start
    upsert = upsert.on_conflict_do_update(
        index_elements=[failures_table.c.kind, failures_table.c.key],
        set_={
            "failures": case((ended, 1), else_=failures_table.c.failures + 1),
            "window_started_at": case(
                (ended, upsert.excluded.window_started_at), else_=failures_table.c.window_started_at
            ),
        },
    )
    session.execute(upsert)
    session.execute(delete(failures_table).where(ended))


def clear_user(session: Session, username: str) -> None:
    """Forget the failed logins of a user name (after a successful login)."""
    [(kind, key), _] = _subjects(username, "")
    session.execute(delete(failures_table).where(failures_table.c.kind == kind, failures_table.c.key == key))
