"""Project membership and what each role may see.

Admins see every project. Reviewers and annotators see, lease and fetch the images of the projects
they are members of, and nothing else: for them a project they are not a member of (and its tasks,
sources, candidates and masks) answers like one that does not exist, so ids cannot be probed. A reviewer
also sees every answer on the tasks of their projects; an annotator only their own."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, select
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


def _membership(user: Principal, project_id: Any) -> ColumnElement[bool]:
    """The condition of a join to project_members: this user, in the project of `project_id`."""
    return and_(ProjectMember.project_id == project_id, ProjectMember.user_id == user.id)


def require_project(session: Session, user: Principal, project_id: int) -> Project:
    """The project, if this user may see it; otherwise NotFound, as for a project that does not exist.
    One query (the project joined to the membership), the same for a project that does not exist."""
    if sees_every_project(user):
        return get_project(session, project_id)
    stmt = select(Project).join(ProjectMember, _membership(user, Project.id)).where(Project.id == project_id)
    project = session.scalars(stmt).first()
    if project is None:
        raise NotFound(
            f"project {project_id} does not exist, or you are not one of its members: ask an admin to add you"
        )
    return project


# Undo checks membership with statements built once: building and caching an ORM select per request
# cost about 1.7 ms of server CPU per call. (`next` and a new vote check it in their own first
# statements: dspo.assign.read_queue and submit_vote.)
_TASK_EXISTS = select(Task.id).where(Task.id == bindparam("task_id"))
_TASK_OF_MEMBER = (
    select(Task.id)
    .join(ProjectMember, ProjectMember.project_id == Task.project_id)
    .where(Task.id == bindparam("task_id"), ProjectMember.user_id == bindparam("user_id"))
)


def _require(session: Session, user: Principal, stmt: Select[Any], what: str) -> None:
    """Run `stmt` (a row of what the path names, joined to its project's membership for non-admins);
    NotFound when it finds nothing."""
    if session.execute(stmt.limit(1)).first() is None:
        suffix = "" if sees_every_project(user) else ", or is in a project you are not a member of"
        raise NotFound(f"{what} does not exist{suffix}")


def _in_projects_of(user: Principal, stmt: Select[Any], project_id: Any) -> Select[Any]:
    return stmt if sees_every_project(user) else stmt.join(ProjectMember, _membership(user, project_id))


def require_task(session: Session, user: Principal, task_id: int) -> None:
    """NotFound unless the task exists in a project the user may see (one query)."""
    if sees_every_project(user):
        found = session.execute(_TASK_EXISTS, {"task_id": task_id}).first()
    else:
        found = session.execute(_TASK_OF_MEMBER, {"task_id": task_id, "user_id": user.id}).first()
    if found is None:
        suffix = "" if sees_every_project(user) else ", or is in a project you are not a member of"
        raise NotFound(f"task {task_id} does not exist{suffix}")


def require_source(session: Session, user: Principal, source_id: int) -> None:
    stmt = _in_projects_of(user, select(Source.id).where(Source.id == source_id), Source.project_id)
    _require(session, user, stmt, f"source {source_id}")


def require_candidate(session: Session, user: Principal, candidate_id: int) -> None:
    stmt = (
        select(Candidate.id)
        .join(Source, Source.id == Candidate.source_id)
        .where(Candidate.id == candidate_id)
    )
    _require(session, user, _in_projects_of(user, stmt, Source.project_id), f"candidate {candidate_id}")


def require_instance(session: Session, user: Principal, instance_id: int) -> None:
    stmt = select(Instance.id).join(Source, Source.id == Instance.source_id).where(Instance.id == instance_id)
    _require(session, user, _in_projects_of(user, stmt, Source.project_id), f"instance {instance_id}")


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
