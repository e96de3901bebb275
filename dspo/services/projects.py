"""Projects and their source images: one way to create, change and read them, for the REST API, the
admin pages and the demo."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo.db import commit_unique
from dspo.errors import NotFound
from dspo.models import Project, Source
from dspo.settings import Settings


def get_project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    return project


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.id)))


def create_project(session: Session, settings: Settings, fields: dict[str, Any]) -> Project:
    """A new project from validated fields; N and k that are missing or None come from the settings
    (DSPO_DEFAULT_CANDIDATES, DSPO_DEFAULT_OVERLAP)."""
    fields = dict(fields)
    fields["n_candidates"] = fields.get("n_candidates") or settings.default_candidates
    fields["overlap"] = fields.get("overlap") or settings.default_overlap
    project = Project(**fields)
    session.add(project)
    commit_unique(session, f"a project named {fields['name']!r} exists")
    return project


def update_project(session: Session, project_id: int, changes: dict[str, Any]) -> Project:
    """Change validated fields (the instructions, k for tasks created from now on, text requirements)."""
    project = get_project(session, project_id)
    for name, value in changes.items():
        setattr(project, name, value)
    session.commit()
    return project


def list_sources(
    session: Session, project_id: int, *, offset: int, limit: int, held_out: bool | None = None
) -> list[Source]:
    """held_out None: all of them; True: only the held-out ones; False: only the others."""
    get_project(session, project_id)
    stmt = select(Source).where(Source.project_id == project_id).order_by(Source.id)
    if held_out is not None:
        stmt = stmt.where(Source.held_out.is_(held_out))
    return list(session.scalars(stmt.offset(offset).limit(limit)))
