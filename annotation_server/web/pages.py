"""Page routes. Pages authenticate by the session cookie only; their forms post with the session's
CSRF token, which annotation_server.deps checks like for any cookie-authenticated request. Page
handlers call the same services as the REST routes; their errors become HTML pages (see
annotation_server.errors)."""

import json
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
    INT32_MAX,
    BigIdPath,
    BuildRequest,
    IdPath,
    LoginForm,
    Offset,
    ProjectCreate,
    ProjectFilter,
    ProjectUpdate,
    TrainRequest,
    UserCreate,
    UserUpdate,
    validation_message,
)
from annotation_server.web.charts import quality_charts
from annotation_server.web.markdown import render_markdown
from dspo.db import utcnow
from dspo.errors import Forbidden, InvalidInput, TooManyRequests, Unauthorized
from dspo.exports import EXPORTS
from dspo.generators import generator_names
from dspo.labelstudio import bridge as labelstudio_bridge
from dspo.services import (
    datasets,
    evaluations,
    gold,
    jobs,
    members,
    model_versions,
    projects,
    quality,
    reviews,
    stats,
    tokens,
    users,
)
from dspo.services.evaluations import SideSpec
from dspo.services.tokens import Principal

LOGIN_CSRF_COOKIE = "dspo_login_csrf"
RECORDS_PER_PAGE = 24
M = TypeVar("M", bound=BaseModel)

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["markdown"] = render_markdown
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
        raise Forbidden(f"This page is for admins. Your account is a {user.role} account.")
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
        "projects": members.visible_projects(session, user),
        "left": stats.open_tasks_left(session, user.id),
    }
    return render(request, "projects.html", context)


@router.get("/me", response_class=HTMLResponse)
def my_page(request: Request, user: PageUser, session: ReadSession) -> HTMLResponse:
    """The signed-in user's own page: their progress in each of their projects."""
    mine = members.visible_projects(session, user)
    progress = [(project, stats.annotator_progress(session, project.id, user.id, None)) for project in mine]
    accuracy = {p.id: s for p in mine for s in gold.scores(session, p.id, user_id=user.id)}
    return render(request, "me.html", {"user": user, "progress": progress, "gold": accuracy})


@router.get("/projects/{project_id}/annotate", response_class=HTMLResponse)
def annotate(project_id: IdPath, request: Request, user: PageUser, session: ReadSession) -> HTMLResponse:
    project = members.require_project(session, user, project_id)
    # The pause applies where gold tasks are served (as in `next`): the reason instead of a task.
    paused = gold.pause_of(session, project, user.id) if project.gold_rate > 0 else None
    return render(request, "annotate.html", {"user": user, "project": project, "paused": paused})


@router.get("/projects/{project_id}/reviews", response_class=HTMLResponse)
def review_queue(project_id: IdPath, request: Request, user: PageUser, session: ReadSession) -> HTMLResponse:
    """The project's disputed tasks, for its reviewers and admins."""
    project = reviews.require_reviewer_of(session, user, project_id)
    items = reviews.queue(session, user, project_id)
    return render(request, "reviews.html", {"user": user, "project": project, "items": items})


@router.get("/tasks/{task_id}/review", response_class=HTMLResponse)
def review_task(task_id: BigIdPath, request: Request, user: PageUser, session: ReadSession) -> HTMLResponse:
    """One task's answers beside the task page's viewer, and the reviewer's decision."""
    project = reviews.require_task_reviewer(session, user, task_id)
    return render(request, "annotate.html", {"user": user, "project": project, "review_task": task_id})


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
        "generators": generator_names(),
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
    scale: Annotated[int | None, Form()] = None,
    generator: Annotated[str, Form()] = "classical",
    generator_settings: Annotated[str, Form()] = "",
    segmenter: Annotated[str, Form()] = "regions",
    segmenter_settings: Annotated[str, Form()] = "",
    min_area_fraction: Annotated[float | None, Form()] = None,
    contested_threshold: Annotated[float | None, Form()] = None,
    image_level_tasks: Annotated[bool | None, Form()] = None,
    require_content: Annotated[bool, Form()] = False,
    require_defect: Annotated[bool, Form()] = False,
) -> RedirectResponse:
    """The New project form: the options of POST /api/v1/projects; an empty or missing field takes
    its default (FastAPI reads an empty form field as missing). A checkbox whose default is on comes
    after a hidden "false" of the same name: the last value wins, so unticked is false and a post
    without the field keeps the default."""
    fields = {
        "n_candidates": n_candidates,
        "overlap": overlap,
        "scale": scale,
        "generator_settings": _json_field("generator settings", generator_settings),
        "segmenter_settings": _json_field("segmenter settings", segmenter_settings),
        "min_area_fraction": min_area_fraction,
        "contested_threshold": contested_threshold,
        "image_level_tasks": image_level_tasks,
    }
    body = _validated(
        ProjectCreate,
        name=name,
        instructions=instructions,
        generator=generator,
        segmenter=segmenter,
        require_content=require_content,
        require_defect=require_defect,
        **{key: value for key, value in fields.items() if value is not None},
    )
    project = projects.create_project(session, runtime.settings, body.model_dump())
    return RedirectResponse(f"/admin/projects/{project.id}", status_code=status.HTTP_303_SEE_OTHER)


def _json_field(what: str, text: str) -> Any:
    """A form's JSON text as a value (empty: None, the default)."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(
            f'The {what} are not valid JSON ({exc}); write an object such as {{"key": 1}}.'
        ) from None


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
        "labelstudio": labelstudio_bridge.status(session, project_id),
        "members": members.list_members(session, project_id),
        "users": users.list_users(session),
        "evaluations": evaluations.list_evaluations(session, project_id),
        "decisions": evaluations.decisions(session, project_id),
        "versions": model_versions.list_versions(session, project_id),
        "held_out": len(evaluations.held_out_sources(session, project_id)),
        "gold_scores": gold.scores(session, project_id),
        "gold_paused": gold.paused(session, project_id),
        "gold_tasks": gold.count_gold_tasks(session, project_id),
    }
    return render(request, "admin_project.html", context)


@router.post("/admin/projects/{project_id}/members")
def admin_add_member(
    project_id: IdPath, _: AdminUser, session: WriteSession, user_id: Annotated[int, Form(ge=1, le=INT32_MAX)]
) -> RedirectResponse:
    members.add_member(session, project_id, user_id)
    return RedirectResponse(f"/admin/projects/{project_id}#members", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/admin/projects/{project_id}/members/{user_id}/remove")
def admin_remove_member(
    project_id: IdPath, user_id: IdPath, _: AdminUser, session: WriteSession
) -> RedirectResponse:
    members.remove_member(session, project_id, user_id)
    return RedirectResponse(f"/admin/projects/{project_id}#members", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/admin/projects/{project_id}/settings")
def admin_project_settings(
    project_id: IdPath,
    _: AdminUser,
    session: WriteSession,
    instructions: Annotated[str, Form()] = "",
    require_content: Annotated[bool, Form()] = False,
    require_defect: Annotated[bool, Form()] = False,
    auto_promote: Annotated[bool, Form()] = False,
    retrain_evaluate: Annotated[bool, Form()] = False,
    min_lead_time_ms: Annotated[int | None, Form()] = None,
    aggregation: Annotated[str, Form()] = "plurality",
    gold_rate: Annotated[float | None, Form()] = None,
    gold_threshold: Annotated[float | None, Form()] = None,
    gold_min_answers: Annotated[int | None, Form()] = None,
    sanity_tasks: Annotated[int | None, Form()] = None,
) -> RedirectResponse:
    """The Settings form; an empty gold field keeps its value (a threshold of 0 pauses nobody)."""
    changes = _validated(
        ProjectUpdate,
        instructions=instructions,
        require_content=require_content,
        require_defect=require_defect,
        auto_promote=auto_promote,
        retrain_evaluate=retrain_evaluate,
        min_lead_time_ms=min_lead_time_ms,
        aggregation=aggregation,
        gold_rate=gold_rate,
        gold_threshold=gold_threshold,
        gold_min_answers=gold_min_answers,
        sanity_tasks=sanity_tasks,
    )
    projects.update_project(session, project_id, changes.model_dump(exclude_none=True))
    return RedirectResponse(f"/admin/projects/{project_id}", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/admin/projects/{project_id}/gold")
def admin_mark_gold(
    project_id: IdPath,
    admin: AdminUser,
    session: WriteSession,
    task_id: Annotated[int, Form(ge=1, le=2**63 - 1)],
) -> RedirectResponse:
    """Mark a task of this project that the admin answered with a pick as gold."""
    members.require_project(session, admin, project_id)
    if gold.task_project(session, task_id) != project_id:
        raise InvalidInput(f"task {task_id} is not a task of project {project_id}")
    gold.mark_gold(session, admin, task_id)
    return RedirectResponse(f"/admin/projects/{project_id}#gold", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/admin/projects/{project_id}/sanity-tasks")
def admin_sanity_tasks(
    project_id: IdPath, _: AdminUser, session: WriteSession, runtime: RuntimeDep
) -> RedirectResponse:
    """Make the sanity tasks the project's setting asks for (a job, on the Jobs page)."""
    gold.start_sanity_job(session, runtime, project_id)
    return RedirectResponse(f"/admin/jobs?project_id={project_id}", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/admin/projects/{project_id}/gold/resume/{user_id}")
def admin_resume(
    project_id: IdPath, user_id: IdPath, admin: AdminUser, session: WriteSession
) -> RedirectResponse:
    gold.resume(session, project_id, user_id, by=admin.id)
    return RedirectResponse(f"/admin/projects/{project_id}#gold", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin/projects/{project_id}/datasets", response_class=HTMLResponse)
def admin_datasets(
    project_id: IdPath, request: Request, user: PageAdmin, session: ReadSession
) -> HTMLResponse:
    """A project's dataset versions (counts, drops by reason, live build progress, downloads) and the
    build form."""
    views = datasets.list_with_jobs(session, project_id)
    context = {
        "user": user,
        "project": projects.get_project(session, project_id),
        "views": views,
        "active": any(v.dataset.state in ("queued", "building") for v in views),
        "defaults": BuildRequest(),
        "exports": EXPORTS,
        "losses": TRAIN_LOSSES,
    }
    return render(request, "admin_datasets.html", context)


@router.get("/admin/projects/{project_id}/quality", response_class=HTMLResponse)
def admin_quality(
    project_id: IdPath, request: Request, user: PageAdmin, session: ReadSession
) -> HTMLResponse:
    """Quality per annotator (agreement, position bias, fast answers) and the project's alpha, with
    charts drawn on the server."""
    report = quality.report(session, project_id)
    context = {
        "user": user,
        "project": projects.get_project(session, project_id),
        "report": report,
        "charts": quality_charts(report),
    }
    return render(request, "admin_quality.html", context)


@router.post("/admin/projects/{project_id}/datasets")
def admin_build_dataset(
    project_id: IdPath,
    _: AdminUser,
    runtime: RuntimeDep,
    min_votes: Annotated[str, Form()] = "",
    min_agreement: Annotated[float, Form()] = 0.5,
    image_level: Annotated[bool | None, Form()] = None,
    val_fraction: Annotated[float, Form()] = 0.1,
    seed: Annotated[int, Form()] = 0,
    exports: Annotated[list[str] | None, Form()] = None,
    shard_size: Annotated[int, Form()] = 1000,
    method: Annotated[str, Form()] = "",
) -> RedirectResponse:
    body = _validated(
        BuildRequest,
        method=method or None,
        min_votes=min_votes or None,
        min_agreement=min_agreement,
        **({} if image_level is None else {"image_level": image_level}),
        val_fraction=val_fraction,
        seed=seed,
        exports=exports or [],
        shard_size=shard_size,
    )
    datasets.build(runtime, project_id, body.model_dump(exclude={"up_to_vote_id"}), None)
    return RedirectResponse(f"/admin/projects/{project_id}/datasets", status_code=status.HTTP_303_SEE_OTHER)


# The trainer's losses, for the Train form (annotation_server does not import trainer: written out here).
TRAIN_LOSSES = {"dspo": "DSPO", "dpo": "image-level DPO", "sft": "SFT"}


@router.post("/admin/datasets/{dataset_id}/train")
def admin_train_dataset(
    dataset_id: IdPath,
    _: AdminUser,
    session: WriteSession,
    runtime: RuntimeDep,
    loss: Annotated[str, Form(pattern=f"^(|{'|'.join(TRAIN_LOSSES)})$")] = "",
    name: Annotated[str, Form(max_length=200)] = "",
) -> RedirectResponse:
    """Train this dataset now (POST /datasets/{id}/train), then follow the job on the jobs page."""
    body = _validated(TrainRequest, args={"loss": loss} if loss else {}, name=name.strip() or None)
    job = model_versions.start_training(session, runtime, dataset_id, body.args, body.name)
    return RedirectResponse(f"/admin/jobs?project_id={job.project_id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin/datasets/{dataset_id}/records", response_class=HTMLResponse)
def admin_dataset_records(
    dataset_id: IdPath,
    request: Request,
    user: PageAdmin,
    session: ReadSession,
    runtime: RuntimeDep,
    offset: Offset = 0,
    split: Annotated[str | None, Query(pattern="^(train|val)$")] = None,
) -> HTMLResponse:
    """A published dataset's records, a page at a time, with thumbnails of winner, loser and mask."""
    dataset = datasets.published(session, dataset_id)
    page = datasets.records(runtime, dataset, offset=offset, limit=RECORDS_PER_PAGE, split=split)
    context = {
        "user": user,
        "dataset": dataset,
        "project": projects.get_project(session, dataset.project_id),
        "page": page,
        "tasks": datasets.record_tasks(session, page.records),
        "split": split,
        "per_page": RECORDS_PER_PAGE,
    }
    return render(request, "admin_records.html", context)


def _side(value: str) -> SideSpec:
    """A side as the form names it: "base" or a model version's id."""
    if value == "base":
        return SideSpec()
    if not value.isdigit() or not 1 <= int(value) <= INT32_MAX:
        raise InvalidInput(f"a side is 'base' or a model version id, not {value[:50]!r}")
    return SideSpec(model_version_id=int(value))


@router.post("/admin/projects/{project_id}/evaluations")
def admin_start_evaluation(
    project_id: IdPath,
    _: AdminUser,
    session: WriteSession,
    runtime: RuntimeDep,
    a: Annotated[str, Form(max_length=20)] = "base",
    b: Annotated[str, Form(max_length=20)] = "base",
    name: Annotated[str, Form(max_length=200)] = "",
    required_votes: Annotated[int | None, Form(ge=1, le=20)] = None,
) -> RedirectResponse:
    evaluation = evaluations.start(
        session,
        runtime,
        project_id,
        a=_side(a),
        b=_side(b),
        name=name.replace("\x00", ""),
        required_votes=required_votes,
    )
    return RedirectResponse(f"/admin/evaluations/{evaluation.id}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin/evaluations/{evaluation_id}", response_class=HTMLResponse)
def admin_evaluation(
    evaluation_id: IdPath, request: Request, user: PageAdmin, session: ReadSession
) -> HTMLResponse:
    found = evaluations.result(session, evaluation_id)
    context = {"user": user, "result": found, "s": found.summary, "evaluation": found.evaluation}
    return render(request, "admin_evaluation.html", context)


@router.post("/admin/evaluations/{evaluation_id}/close")
def admin_close_evaluation(evaluation_id: IdPath, _: AdminUser, session: WriteSession) -> RedirectResponse:
    evaluations.close(session, evaluation_id)
    return RedirectResponse(f"/admin/evaluations/{evaluation_id}", status_code=status.HTTP_303_SEE_OTHER)


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
        "roles": users.ROLES,
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


@router.post("/admin/users/{user_id}")
def admin_update_user(
    user_id: IdPath,
    admin: AdminUser,
    session: WriteSession,
    cache: TokenCacheDep,
    role: Annotated[str | None, Form()] = None,
    is_active: Annotated[bool | None, Form()] = None,
    new_password: Annotated[str | None, Form()] = None,
) -> RedirectResponse:
    """One of the Users page's per-user forms: change the role, (de)activate, or set a new password
    (which, like a deactivation, ends every token and session of the user)."""
    changes = _validated(UserUpdate, role=role or None, is_active=is_active, password=new_password or None)
    users.update_user(
        session, cache, user_id, acting_user_id=admin.id, **changes.model_dump(exclude_none=True)
    )
    return RedirectResponse("/admin/users", status_code=status.HTTP_303_SEE_OTHER)
