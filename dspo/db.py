"""Engines and sessions for SQLite (embedded) and PostgreSQL (production), one code path for both.

Two kinds of session: read-write ones (`make_session_factory`), and read-only ones
(`make_read_session_factory`) for work that only reads. On SQLite a read-write transaction holds the
process's write lock from its start (BEGIN IMMEDIATE, see below); a read-only one takes no lock (a
deferred BEGIN: a consistent snapshot, which WAL gives without blocking writers). On PostgreSQL a
read-only transaction is BEGIN READ ONLY, so that a write through it fails instead of passing unseen."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dspo.errors import Conflict


def utcnow() -> datetime:
    return datetime.now(UTC)


SQLITE_LOCK_TIMEOUT = 30.0
# The execution option that marks a read-only engine (and so its connections' transactions).
READ_ONLY = "dspo_read_only"


def make_engine(url: str, *, pool_size: int = 20) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and write-serialising transactions."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        # Connections are replaced after 5 minutes, before the idle limits of PgBouncer, NAT gateways
        # and load balancers (usually 6 to 10) cut them.
        engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=300)
        _check_connections_when_in_doubt(engine)
        return engine

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Take over transaction control from pysqlite so that we can emit BEGIN IMMEDIATE below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    # Writers of this process queue on a lock instead of sleeping in SQLite's busy handler, whose
    # back-off (up to 100 ms a try) made the slowest requests wait seconds under load.
    write_lock = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")  # deferred: reads see one snapshot and lock nothing
            return
        # A deferred transaction that reads and then writes fails with SQLITE_BUSY when another writer
        # committed in between; taking the write lock up front makes read-then-write units (leases,
        # votes) serialisable instead.
        if not write_lock.acquire(timeout=SQLITE_LOCK_TIMEOUT):
            raise TimeoutError(f"no SQLite transaction could start within {SQLITE_LOCK_TIMEOUT} s")
        conn.info["holds_write_lock"] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(conn.info)
            raise

    def _release(info: dict) -> None:  # type: ignore[type-arg]
        if info.pop("holds_write_lock", False):
            write_lock.release()

    # Whichever way a transaction ends (commit, rollback, a connection returned to the pool or thrown
    # away mid-transaction), the lock goes with it.
    event.listen(engine, "commit", lambda conn: _release(conn.info))
    event.listen(engine, "rollback", lambda conn: _release(conn.info))
    event.listen(engine.pool, "reset", lambda _dbapi, record, _state: _release(record.info))
    event.listen(engine.pool, "invalidate", lambda _dbapi, record, _exc: _release(record.info))

    return engine


# A pooled connection is pinged before use when it sat idle this long (the database may have restarted
# meanwhile), and every one is for this long after a connection was found dead (a restart or failover
# kills them all). Otherwise no ping: it would cost every request a round trip.
PING_AFTER_IDLE_SECONDS = 1.0
PING_AFTER_DISCONNECT_SECONDS = 60.0


def _check_connections_when_in_doubt(engine: Engine) -> None:
    """A database restart or failover costs no failed request once the database accepts connections
    again: a connection that may be dead is pinged when it is checked out, and a dead one is replaced
    then, before the request did anything (SQLAlchemy also drops the whole pool at the first error
    that says the connection was lost)."""
    last_disconnect = [-PING_AFTER_DISCONNECT_SECONDS]

    @event.listens_for(engine, "handle_error")
    def _on_error(context) -> None:  # type: ignore[no-untyped-def]
        if context.is_disconnect:
            last_disconnect[0] = time.monotonic()

    @event.listens_for(engine.pool, "checkin")
    def _on_checkin(_dbapi, record) -> None:  # type: ignore[no-untyped-def]
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        idle = now - record.info.get("checked_in_at", now)
        if idle < PING_AFTER_IDLE_SECONDS and now - last_disconnect[0] > PING_AFTER_DISCONNECT_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()  # the ping's transaction must not become the request's
        except Exception as exc:
            last_disconnect[0] = now
            # The pool replaces the connection and checks out again (a fresh one needs no ping).
            raise DisconnectionError(f"a pooled connection was dead: {exc}") from exc


def database_unreachable(exc: DBAPIError) -> bool:
    """Whether an error says the database server cannot be reached or dropped the connection (a
    restart, a failover, refused connections), rather than that a statement was wrong: PostgreSQL's
    connection-exception and operator-intervention classes (08, 57P), or no SQLSTATE at all from a
    driver that has them (the connection never opened). SQLite's errors are never outages."""
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError) or not hasattr(exc.orig, "sqlstate"):
        return False
    sqlstate = exc.orig.sqlstate or ""
    return sqlstate == "" or sqlstate.startswith(("08", "57P"))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read: the same pool, no write lock on SQLite, READ ONLY on PostgreSQL."""
    options: dict[str, bool] = {READ_ONLY: True}
    if engine.dialect.name == "postgresql":
        options["postgresql_readonly"] = True
    return sessionmaker(engine.execution_options(**options), expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def commit_unique(session: Session, conflict: str) -> None:
    """Commit; if a unique constraint refuses the new row (a name taken), roll back and raise a
    Conflict with this message: nothing is written."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(conflict) from None
