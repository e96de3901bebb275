"""Page routes. Pages authenticate by the session cookie only; their forms post with the session's
CSRF token, which annotation_server.deps checks like for any cookie-authenticated request. Page
handlers call the same services as the REST routes; their errors become HTML pages (see
annotation_server.errors)."""

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError

from annotation_server.deps import (
    SESSION_COOKIE,
    AdminUser,
    CurrentUser,
    ReadSession,
    RuntimeDep,
    TokenCacheDep,
    WriteSession,
    client_address,
    csrf_token_for,
    user_for_token,
)
from annotation_server.schemas import (
    IdPath,
    LoginForm,
    ProjectCreate,
    ProjectFilter,
    ProjectUpdate,
    UserCreate,
    validation_message,
)
from dspo.db import utcnow
from dspo.errors import Forbidden, InvalidInput, TooManyRequests, Unauthorized
from dspo.services import jobs, projects, stats, tokens, users
from dspo.services.tokens import Principal

LOGIN_CSRF_COOKIE = "dspo_login_csrf"
M = TypeVar("M", bound=BaseModel)

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    runtime = request.app.state.runtime
    cookie = request.cookies.get(SESSION_COOKIE)
    context = {"csrf": csrf_token_for(runtime, cookie) if cookie else "", "user": None, **context}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


async def page_user(request: Request, runtime: RuntimeDep, cache: TokenCacheDep) -> Principal:
    """The user of the session cookie; a page request without one goes to the login page."""
    user = await user_for_token(runtime, cache, request.cookies.get(SESSION_COOKIE) or "")
    if user is None:
        raise Unauthorized("log in to see this page")
    return user


PageUser = Annotated[Principal, Depends(page_user)]


async def page_admin(user: PageUser) -> Principal:
    if user.role != "admin":
        raise Forbidden("This page is for admins. Your account is an annotator account.")
    return user


PageAdmin = Annotated[Principal, Depends(page_admin)]


def _local_path(path: str) -> str:
    """Only redirect to a path on this server after login (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _cookie_args(request: Request) -> dict[str, Any]:
    # https as the client sees it: behind a trusted proxy (DSPO_TRUSTED_PROXIES), its X-Forwarded-Proto.
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https"}


def _validated(model: type[M], **fields: Any) -> M:
    """A form's fields checked by the API's own model, so that the page and the API agree."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise InvalidInput(f"The form is not valid: {validation_message(exc.errors())}.") from None


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/", error: str = "") -> HTMLResponse:
    return _login_form(request, next, error)


def _login_form(request: Request, next: str, error: str, status_code: int = 200) -> HTMLResponse:
    # Login has no session yet: a double-submit token (cookie + form field) stops login CSRF.
    token = secrets.token_urlsafe(16)
    context = {"next": _local_path(next), "login_csrf": token, "error": error}
    response = render(request, "login.html", context, status_code=status_code)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, path="/login", **_cookie_args(request))
    return response


@router.post("/login")
def login(
    request: Request,
    runtime: RuntimeDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not expected or not secrets.compare_digest(expected.encode(), csrf_token.encode()):
        return _login_form(request, next, "Your login form was stale. Please try again.")
    try:
        form = _validated(LoginForm, username=username, password=password)
        issued = tokens.log_in(runtime, form.username, form.password, client_address(request))
    except TooManyRequests as exc:
        response = _login_form(request, next, f"{exc.message}.", exc.status_code)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except (Unauthorized, InvalidInput):
        error = "Wrong username or password, or the account is inactive."
        return _login_form(request, next, error, status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(_local_path(next), status_code=status.HTTP_303_SEE_OTHER)
    max_age = runtime.settings.token_hours * 3600
    response.set_cookie(SESSION_COOKIE, issued.token, max_age=max_age, path="/", **_cookie_args(request))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, _: CurrentUser, session: WriteSession, cache: TokenCacheDep) -> RedirectResponse:
    tokens.revoke(session, cache, request.cookies.get(SESSION_COOKIE) or "")
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, user: PageUser, session: ReadSession) -> HTMLResponse:
    context = {
        "user": user,
        "projects": projects.list_projects(session),
        "left": stats.open_tasks_left(session, user.id),
    }
    return render(request, "projects.html", context)


@router.get("/projects/{project_id}/annotate", response_class=HTMLResponse)
def annotate(project_id: IdPath, request: Request, user: PageUser, session: ReadSession) -> HTMLResponse:
    project = projects.get_project(session, project_id)
    return render(request, "annotate.html", {"user": user, "project": project})


@router.get("/admin", response_class=HTMLResponse)
def admin_projects(
    request: Request, user: PageAdmin, session: ReadSession, runtime: RuntimeDep
) -> HTMLResponse:
    context = {
        "user": user,
        "projects": projects.list_projects(session),
        "progress": stats.projects_progress(session),
        "no_progress": stats.ProjectProgress(),
        "defaults": runtime.settings,
    }
    return render(request, "admin_projects.html", context)


@router.post("/admin/projects")
def admin_create_project(
    _: AdminUser,
    session: WriteSession,
    runtime: RuntimeDep,
    name: Annotated[str, Form()],
    instructions: Annotated[str, Form()] = "",
    n_candidates: Annotated[int | None, Form()] = None,
    overlap: Annotated[int | None, Form()] = None,
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
    project = projects.create_project(session, runtime.settings, body.model_dump())
    return RedirectResponse(f"/admin/projects/{project.id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin/projects/{project_id}", response_class=HTMLResponse)
def admin_project(
    project_id: IdPath, request: Request, user: PageAdmin, session: ReadSession
) -> HTMLResponse:
    context = {
        "user": user,
        "project": projects.get_project(session, project_id),
        "stats": stats.project_stats(session, project_id),
        "progress": stats.projects_progress(session, project_id).get(project_id),
        "recent": stats.recent_descriptions(session, project_id),
    }
    return render(request, "admin_project.html", context)


@router.post("/admin/projects/{project_id}/settings")
def admin_project_settings(
    project_id: IdPath,
    _: AdminUser,
    session: WriteSession,
    instructions: Annotated[str, Form()] = "",
    require_content: Annotated[bool, Form()] = False,
    require_defect: Annotated[bool, Form()] = False,
) -> RedirectResponse:
    changes = _validated(
        ProjectUpdate,
        instructions=instructions,
        require_content=require_content,
        require_defect=require_defect,
    )
    projects.update_project(session, project_id, changes.model_dump(exclude_none=True))
    return RedirectResponse(f"/admin/projects/{project_id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin/jobs", response_class=HTMLResponse)
def admin_jobs(
    request: Request,
    user: PageAdmin,
    session: ReadSession,
    project_id: ProjectFilter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> HTMLResponse:
    found = jobs.list_jobs(session, project_id=project_id, limit=limit)
    active = any(job.state in ("queued", "running") for job in found)
    context = {"user": user, "jobs": found, "project_id": project_id, "active": active}
    return render(request, "admin_jobs.html", context)


@router.post("/admin/jobs/{job_id}/retry")
def admin_retry_job(job_id: IdPath, _: AdminUser, runtime: RuntimeDep) -> RedirectResponse:
    jobs.retry_job(runtime, job_id)
    return RedirectResponse("/admin/jobs", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin/users", response_class=HTMLResponse)
def admin_users(request: Request, user: PageAdmin, session: ReadSession) -> HTMLResponse:
    context = {
        "user": user,
        "users": users.list_users(session),
        "counts": users.answer_counts(session, since=utcnow() - timedelta(days=1)),
    }
    return render(request, "admin_users.html", context)


@router.post("/admin/users")
def admin_create_user(
    _: AdminUser,
    session: WriteSession,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[str, Form()] = "annotator",
) -> RedirectResponse:
    body = _validated(UserCreate, username=username, password=password, role=role)
    users.create_user(session, body.username, body.password, body.role)
    return RedirectResponse("/admin/users", status_code=status.HTTP_303_SEE_OTHER)
