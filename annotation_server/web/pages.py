"""Page routes. Pages authenticate by the session cookie only; their forms post with the session's
CSRF token, which annotation_server.deps checks like for any cookie-authenticated request."""

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError
from sqlalchemy import case, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotation_server.deps import (
    SESSION_COOKIE,
    AdminUser,
    CurrentUser,
    Principal,
    RuntimeDep,
    SessionDep,
    TokenCacheDep,
    csrf_token_for,
    user_for_token,
)
from annotation_server.routes.auth import issue_token, revoke_token
from annotation_server.routes.projects import compute_stats, get_project
from annotation_server.schemas import ProjectCreate, UserCreate
from dspo.db import utcnow
from dspo.models import Job, Project, Task, User, Vote
from dspo.security import hash_password

LOGIN_CSRF_COOKIE = "dspo_login_csrf"
M = TypeVar("M", bound=BaseModel)

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class PageError(Exception):
    """An error shown as a page (not as the API's JSON)."""

    def __init__(self, message: str, status_code: int = status.HTTP_403_FORBIDDEN) -> None:
        self.message = message
        self.status_code = status_code


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    runtime = request.app.state.runtime
    cookie = request.cookies.get(SESSION_COOKIE)
    context = {"csrf": csrf_token_for(runtime, cookie) if cookie else "", "user": None, **context}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


async def page_user(request: Request, session: SessionDep, cache: TokenCacheDep) -> Principal:
    user = await user_for_token(session, cache, request.cookies.get(SESSION_COOKIE) or "")
    if user is None:
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return user


PageUser = Annotated[Principal, Depends(page_user)]


async def page_admin(user: PageUser) -> Principal:
    if user.role != "admin":
        raise PageError("This page is for admins. Your account is an annotator account.")
    return user


PageAdmin = Annotated[Principal, Depends(page_admin)]


def _local_path(path: str) -> str:
    """Only redirect to a path on this server after login (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _cookie_args(request: Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https"}


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/", error: str = "") -> HTMLResponse:
    # Login has no session yet: a double-submit token (cookie + form field) stops login CSRF.
    token = secrets.token_urlsafe(16)
    response = render(request, "login.html", {"next": _local_path(next), "login_csrf": token, "error": error})
    response.set_cookie(LOGIN_CSRF_COOKIE, token, path="/login", **_cookie_args(request))
    return response


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected, csrf_token):
        return login_page(request, next, "Your login form was stale. Please try again.")
    issued = issue_token(session, username, password, runtime.settings.token_hours)
    if issued is None:
        response = login_page(request, next, "Wrong username or password, or the account is inactive.")
        response.status_code = status.HTTP_401_UNAUTHORIZED
        return response
    session.commit()
    token, _ = issued
    response = RedirectResponse(_local_path(next), status_code=status.HTTP_303_SEE_OTHER)
    max_age = runtime.settings.token_hours * 3600
    response.set_cookie(SESSION_COOKIE, token, max_age=max_age, path="/", **_cookie_args(request))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, _: CurrentUser, session: SessionDep, cache: TokenCacheDep) -> RedirectResponse:
    revoke_token(session, cache, request.cookies.get(SESSION_COOKIE) or "")
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _open_left(session: Session, user_id: int) -> dict[int, int]:
    """Open tasks per project that this user has neither answered nor skipped."""
    answered = exists().where(Vote.task_id == Task.id, Vote.user_id == user_id)
    rows = session.execute(
        select(Task.project_id, func.count()).where(Task.state == "open", ~answered).group_by(Task.project_id)
    )
    return {project_id: n for project_id, n in rows}


@router.get("/", response_class=HTMLResponse)
def home(request: Request, user: PageUser, session: SessionDep) -> HTMLResponse:
    projects = session.scalars(select(Project).order_by(Project.id)).all()
    context = {"user": user, "projects": projects, "left": _open_left(session, user.id)}
    return render(request, "projects.html", context)


@router.get("/projects/{project_id}/annotate", response_class=HTMLResponse)
def annotate(project_id: int, request: Request, user: PageUser, session: SessionDep) -> HTMLResponse:
    project = session.get(Project, project_id)
    if project is None:
        raise PageError(f"Project {project_id} does not exist.", status.HTTP_404_NOT_FOUND)
    return render(request, "annotate.html", {"user": user, "project": project})


def _project_progress(session: Session) -> dict[int, dict[str, int]]:
    """Per project: tasks, complete tasks, answers recorded and answers wanted."""
    rows = session.execute(
        select(
            Task.project_id,
            func.count(),
            func.sum(case((Task.state == "complete", 1), else_=0)),
            func.sum(Task.vote_count),
            func.sum(Task.required_votes),
        ).group_by(Task.project_id)
    )
    return {
        pid: {"tasks": n, "complete": int(done or 0), "votes": int(votes or 0), "wanted": int(wanted or 0)}
        for pid, n, done, votes, wanted in rows
    }


def _validated(model: type[M], **fields: Any) -> M:
    """A form's fields checked by the API's own model, so that the page and the API agree."""
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problems) from None


@router.get("/admin", response_class=HTMLResponse)
def admin_projects(request: Request, user: PageAdmin, session: SessionDep) -> HTMLResponse:
    projects = session.scalars(select(Project).order_by(Project.id)).all()
    context = {"user": user, "projects": projects, "progress": _project_progress(session)}
    return render(request, "admin_projects.html", context)


@router.post("/admin/projects")
def admin_create_project(
    _: AdminUser,
    session: SessionDep,
    runtime: RuntimeDep,
    name: Annotated[str, Form()],
    instructions: Annotated[str, Form()] = "",
    n_candidates: Annotated[int, Form()] = 4,
    overlap: Annotated[int, Form()] = 3,
    generator: Annotated[str, Form()] = "classical",
    require_content: Annotated[bool, Form()] = False,
    require_defect: Annotated[bool, Form()] = False,
) -> RedirectResponse:
    body = _validated(
        ProjectCreate,
        name=name,
        instructions=instructions,
        n_candidates=n_candidates,
        overlap=overlap,
        generator=generator,
        require_content=require_content,
        require_defect=require_defect,
    )
    project = Project(**body.model_dump())
    session.add(project)
    try:
        session.commit()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a project named {name!r} exists") from None
    return RedirectResponse(f"/admin/projects/{project.id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin/projects/{project_id}", response_class=HTMLResponse)
def admin_project(project_id: int, request: Request, user: PageAdmin, session: SessionDep) -> HTMLResponse:
    project = get_project(session, project_id)
    recent = session.execute(
        select(Vote, User.username)
        .join(User, User.id == Vote.user_id)
        .join(Task, Task.id == Vote.task_id)
        .where(Task.project_id == project_id, (Vote.content_text != "") | (Vote.defect_text != ""))
        .order_by(Vote.id.desc())
        .limit(50)
    ).all()
    context = {
        "user": user,
        "project": project,
        "stats": compute_stats(session, project_id),
        "progress": _project_progress(session).get(project_id, {}),
        "recent": recent,
    }
    return render(request, "admin_project.html", context)


@router.post("/admin/projects/{project_id}/settings")
def admin_project_settings(
    project_id: int,
    _: AdminUser,
    session: SessionDep,
    instructions: Annotated[str, Form()] = "",
    require_content: Annotated[bool, Form()] = False,
    require_defect: Annotated[bool, Form()] = False,
) -> RedirectResponse:
    project = get_project(session, project_id)
    project.instructions = instructions
    project.require_content = require_content
    project.require_defect = require_defect
    session.commit()
    return RedirectResponse(f"/admin/projects/{project_id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin/jobs", response_class=HTMLResponse)
def admin_jobs(
    request: Request,
    user: PageAdmin,
    session: SessionDep,
    project_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> HTMLResponse:
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if project_id is not None:
        stmt = stmt.where(Job.project_id == project_id)
    jobs = session.scalars(stmt).all()
    active = any(job.state in ("queued", "running") for job in jobs)
    context = {"user": user, "jobs": jobs, "project_id": project_id, "active": active}
    return render(request, "admin_jobs.html", context)


@router.get("/admin/users", response_class=HTMLResponse)
def admin_users(request: Request, user: PageAdmin, session: SessionDep) -> HTMLResponse:
    users = session.scalars(select(User).order_by(User.id)).all()
    since = utcnow() - timedelta(days=1)
    counts = session.execute(
        select(
            Vote.user_id,
            func.sum(case((Vote.outcome != "skip", 1), else_=0)),
            func.sum(case((Vote.outcome == "skip", 1), else_=0)),
            func.sum(case((Vote.created_at >= since, 1), else_=0)),
        ).group_by(Vote.user_id)
    )
    per_user = {uid: (int(v or 0), int(s or 0), int(d or 0)) for uid, v, s, d in counts}
    context = {"user": user, "users": users, "counts": per_user}
    return render(request, "admin_users.html", context)


@router.post("/admin/users")
def admin_create_user(
    _: AdminUser,
    session: SessionDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[str, Form()] = "annotator",
) -> RedirectResponse:
    body = _validated(UserCreate, username=username, password=password, role=role)
    session.add(User(username=body.username, password_hash=hash_password(body.password), role=body.role))
    try:
        session.commit()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"user {username!r} already exists") from None
    return RedirectResponse("/admin/users", status_code=status.HTTP_303_SEE_OTHER)
