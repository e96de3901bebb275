"""Alembic environment: the URL comes from the caller (dspo.migrate) or from DSPO_DATABASE_URL."""

from alembic import context

from dspo.db import make_engine
from dspo.models import Base
from dspo.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_online() -> None:
    engine = make_engine(url, pool_size=1)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # A batch migration rebuilds a table by copying it and dropping the old one; with foreign
            # keys on, that drop cascades (ON DELETE CASCADE) and deletes votes, leases and members.
            # Set on the driver's connection, outside the transaction that SQLite would ignore it in.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
