"""Project membership and what each role may see.

Admins see every project. Reviewers and annotators see, lease and fetch the images of the projects
they are members of, and nothing else: for them a project they are not a member of (and its tasks,
sources, candidates and masks) answers like one that does not exist, so ids cannot be probed. A reviewer
also sees every answer on the tasks of their projects; an annotator only their own."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from dspo import assign
from dspo.errors import NotFound
from dspo.models import Candidate, Instance, Project, ProjectMember, Source, Task, User
from dspo.services.projects import get_project
from dspo.services.tokens import Principal
from dspo.services.users import get_user


@dataclass
class Member:
    user_id: int
    username: str
    role: str
    is_active: bool
    added_at: datetime


def sees_every_project(user: Principal) -> bool:
    return user.role == "admin"


def sees_every_answer(user: Principal) -> bool:
    """Whether the user sees the answers of others on the tasks they can see."""
    return user.role in ("admin", "reviewer")


def is_member(session: Session, project_id: int, user_id: int) -> bool:
    return session.get(ProjectMember, (project_id, user_id)) is not None


def _hidden(project_id: int) -> NotFound:
    return NotFound(
        f"project {project_id} does not exist, or you are not one of its members: ask an admin to add you"
    )


def require_project(session: Session, user: Principal, project_id: int) -> Project:
    """The project, if this user may see it; otherwise NotFound, as for a project that does not exist."""
    if sees_every_project(user):
        return get_project(session, project_id)
    project = session.get(Project, project_id)
    if project is None or not is_member(session, project_id, user.id):
        raise _hidden(project_id)
    return project


def _require_in_project(session: Session, user: Principal, project_id: int, what: str) -> None:
    if not sees_every_project(user) and not is_member(session, project_id, user.id):
        raise NotFound(f"{what} does not exist, or is in a project you are not a member of")


def require_task(session: Session, user: Principal, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    _require_in_project(session, user, task.project_id, f"task {task_id}")
    return task


def require_source(session: Session, user: Principal, source_id: int) -> Source:
    source = session.get(Source, source_id)
    if source is None:
        raise NotFound(f"source {source_id} does not exist")
    _require_in_project(session, user, source.project_id, f"source {source_id}")
    return source


def require_candidate(session: Session, user: Principal, candidate_id: int) -> None:
    candidate = session.get(Candidate, candidate_id)
    if candidate is None:
        raise NotFound(f"candidate {candidate_id} does not exist")
    source = session.get(Source, candidate.source_id)
    assert source is not None
    _require_in_project(session, user, source.project_id, f"candidate {candidate_id}")


def require_instance(session: Session, user: Principal, instance_id: int) -> None:
    instance = session.get(Instance, instance_id)
    if instance is None:
        raise NotFound(f"instance {instance_id} does not exist")
    source = session.get(Source, instance.source_id)
    assert source is not None
    _require_in_project(session, user, source.project_id, f"instance {instance_id}")


def visible_projects(session: Session, user: Principal) -> list[Project]:
    """The projects this user sees: all for an admin, those they are a member of for anyone else."""
    stmt = select(Project).order_by(Project.id)
    if not sees_every_project(user):
        stmt = stmt.join(ProjectMember, ProjectMember.project_id == Project.id).where(
            ProjectMember.user_id == user.id
        )
    return list(session.scalars(stmt))


def list_members(session: Session, project_id: int) -> list[Member]:
    get_project(session, project_id)
    rows = session.execute(
        select(User.id, User.username, User.role, User.is_active, ProjectMember.created_at)
        .join(ProjectMember, ProjectMember.user_id == User.id)
        .where(ProjectMember.project_id == project_id)
        .order_by(User.username)
    )
    return [Member(*row) for row in rows]


def add_member(session: Session, project_id: int, user_id: int) -> Member:
    """Make the user a member of the project (adding a member twice changes nothing)."""
    get_project(session, project_id)
    user = get_user(session, user_id)
    membership = session.get(ProjectMember, (project_id, user_id))
    if membership is None:
        membership = ProjectMember(project_id=project_id, user_id=user_id)
        session.add(membership)
        session.commit()
    return Member(user.id, user.username, user.role, user.is_active, membership.created_at)


def remove_member(session: Session, project_id: int, user_id: int) -> None:
    """End the user's membership; the tasks they hold leases on in the project go back to the pool at
    once (their answers stay). Removing a non-member is NotFound."""
    get_project(session, project_id)
    membership = session.get(ProjectMember, (project_id, user_id))
    if membership is None:
        raise NotFound(f"user {user_id} is not a member of project {project_id}")
    session.delete(membership)
    assign.release_user_leases(session, user_id, project_id)
    session.commit()
