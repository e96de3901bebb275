"""What a running process needs: settings, a database engine and sessions, and the blob store."""

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dspo.blobs import BlobStore
from dspo.db import make_engine, make_read_session_factory, make_session_factory
from dspo.settings import Settings, get_settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]  # read-write
    read_sessions: sessionmaker[Session]  # read-only: no write lock on SQLite (see dspo.db)
    blobs: BlobStore

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "Runtime":
        settings = settings or get_settings()
        engine = make_engine(settings.database_url)
        return cls(
            settings,
            engine,
            make_session_factory(engine),
            make_read_session_factory(engine),
            BlobStore(settings.storage_root),
        )

    def close(self) -> None:
        self.engine.dispose()
