"""Engines and sessions for SQLite (embedded) and PostgreSQL (production), one code path for both.

Two kinds of session: read-write ones (`make_session_factory`), and read-only ones
(`make_read_session_factory`) for work that only reads. On SQLite a read-write transaction holds the
process's write lock from its start (BEGIN IMMEDIATE, see below); a read-only one takes no lock (a
deferred BEGIN: a consistent snapshot, which WAL gives without blocking writers). On PostgreSQL a
read-only transaction is BEGIN READ ONLY, so that a write through it fails instead of passing unseen."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
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
        # No pre-ping: it costs every request a round trip. Connections are replaced after 5 minutes,
        # before the idle limits of PgBouncer, NAT gateways and load balancers (usually 6 to 10) cut
        # them; one that died anyway (a database restart) fails its one request, and SQLAlchemy then
        # replaces every pooled connection at once.
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=300)

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
