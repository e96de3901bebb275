"""Readiness: can this server do its work now? The database answers, its schema is the one this code
needs, and the broker (when there is one) accepts connections."""

from functools import cache

from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from dspo.jobs import transport_options
from dspo.migrate import alembic_config
from dspo.runtime import Runtime

BROKER_TIMEOUT_SECONDS = 2.0


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def readiness(runtime: Runtime) -> dict[str, str]:
    """Each check's outcome: "ok", or what is wrong and what to do."""
    checks: dict[str, str] = {}
    try:
        with runtime.read_sessions() as session:
            revision = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
        checks["database"] = "ok"
        wanted = head_revision()
        checks["migrations"] = (
            "ok"
            if revision == wanted
            else f"the schema is at {revision}, this code needs {wanted}: run `dspo db upgrade`"
        )
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        checks["database"] = f"unreachable or not migrated: {reason}"
        checks["migrations"] = "unknown"
    settings = runtime.settings
    if settings.broker_url:
        from kombu import Connection

        options = transport_options(settings.redis_key_prefix, settings.broker_visibility_timeout_seconds)
        try:
            with Connection(
                settings.broker_url, connect_timeout=BROKER_TIMEOUT_SECONDS, transport_options=options
            ) as conn:
                conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {exc}"
    return checks
