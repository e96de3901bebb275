"""Who may call what: every route of the app (API and pages) against every kind of caller, on SQLite and
PostgreSQL. The table lists each operation with its rule; a route the table does not list fails the
test, so a new route cannot ship without deciding who may call it.

Callers: anonymous, an annotator who is not a member of the project, an annotator and a reviewer who
are members, and an admin. Rules:

- PUBLIC: anyone.
- SIGNED_IN: anyone logged in.
- MEMBERS: members of the project the path names (and admins); for anyone else the project, task or
  image answers 404, as if it did not exist.
- REVIEWERS: reviewers who are members of the project the path names, and admins; 403 for an
  annotator who is a member, 404 for anyone else (as for MEMBERS).
- ADMIN: admins only (403 for the others).
- OWN_CREDENTIAL: routes that Label Studio calls with their own credential (a signed, expiring URL or
  the webhook's shared secret); no user's token or session opens them, an admin's included.

"Allowed" means the request got past authorization: any answer but 401, 403 and (for members) 404,
and never a 500. Anonymous page requests are sent to the login page."""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select
from starlette.routing import Mount

from annotation_server.deps import SESSION_COOKIE, csrf_token_for
from dspo.cli import ensure_user
from dspo.models import Instance, Source
from tests.api.conftest import Api
from tests.helpers import login, pick

PUBLIC, SIGNED_IN, MEMBERS, REVIEWERS, ADMIN = "public", "signed in", "members", "reviewers", "admin"
OWN_CREDENTIAL = "own credential"
CALLERS = ("anonymous", "outsider", "annotator", "reviewer", "admin")


@dataclass
class Fixture:
    """The ids the paths name, and a bearer token per caller."""

    ids: dict[str, Any]
    tokens: dict[str, str]
    task: dict[str, Any]


@dataclass(frozen=True)
class Op:
    rule: str
    json: Any = None
    form: dict[str, str] | None = None
    # Called before each request (with the fixture) to put the state the operation needs back.
    prepare: Callable[[Api, Fixture], None] | None = field(default=None, compare=False)


def _make_victim_a_member(api: Api, fx: Fixture) -> None:
    api.client.put(f"/api/v1/projects/{fx.ids['project_id']}/members/{fx.ids['user_id']}", headers=api.admin)


def _vote(fx: Fixture) -> dict[str, Any]:
    return pick(fx.task)


API = "/api/v1"
RULES: dict[tuple[str, str], Op] = {
    # API: accounts
    ("POST", f"{API}/auth/login"): Op(PUBLIC, form={"username": "victim", "password": "victim-password"}),
    ("POST", f"{API}/auth/logout"): Op(SIGNED_IN),
    ("GET", f"{API}/auth/me"): Op(SIGNED_IN),
    ("GET", f"{API}/users"): Op(ADMIN),
    ("POST", f"{API}/users"): Op(ADMIN, json={}),
    ("GET", f"{API}/users/{{user_id}}"): Op(ADMIN),
    ("PATCH", f"{API}/users/{{user_id}}"): Op(ADMIN, json={}),
    # API: projects and members
    ("GET", f"{API}/projects"): Op(SIGNED_IN),
    ("POST", f"{API}/projects"): Op(ADMIN, json={}),
    ("GET", f"{API}/projects/{{project_id}}"): Op(MEMBERS),
    ("PATCH", f"{API}/projects/{{project_id}}"): Op(ADMIN, json={}),
    ("POST", f"{API}/projects/{{project_id}}/uploads"): Op(ADMIN),
    ("GET", f"{API}/projects/{{project_id}}/sources"): Op(ADMIN),
    ("GET", f"{API}/projects/{{project_id}}/stats"): Op(ADMIN),
    ("GET", f"{API}/projects/{{project_id}}/members"): Op(ADMIN),
    ("PUT", f"{API}/projects/{{project_id}}/members/{{user_id}}"): Op(ADMIN),
    ("DELETE", f"{API}/projects/{{project_id}}/members/{{user_id}}"): Op(
        ADMIN, prepare=_make_victim_a_member
    ),
    # API: jobs
    ("GET", f"{API}/jobs"): Op(ADMIN),
    ("GET", f"{API}/jobs/{{job_id}}"): Op(ADMIN),
    ("POST", f"{API}/jobs/{{job_id}}/retry"): Op(ADMIN),
    # API: annotation
    ("POST", f"{API}/projects/{{project_id}}/next"): Op(MEMBERS),
    ("POST", f"{API}/tasks/{{task_id}}/vote"): Op(MEMBERS, json=_vote),
    ("POST", f"{API}/tasks/{{task_id}}/skip"): Op(MEMBERS, json={"client_submission_id": "skip-1"}),
    ("POST", f"{API}/tasks/{{task_id}}/release"): Op(MEMBERS),
    ("GET", f"{API}/tasks/{{task_id}}/votes"): Op(MEMBERS),
    ("GET", f"{API}/projects/{{project_id}}/progress"): Op(MEMBERS),
    # API: review
    ("POST", f"{API}/tasks/{{task_id}}/flag"): Op(MEMBERS, json={"reason": "the outline misses the wheel"}),
    ("GET", f"{API}/projects/{{project_id}}/reviews/queue"): Op(REVIEWERS),
    ("GET", f"{API}/tasks/{{task_id}}/review"): Op(REVIEWERS),
    ("POST", f"{API}/tasks/{{task_id}}/review"): Op(REVIEWERS, json={"decision": "no_pair"}),
    # API: gold tasks
    ("POST", f"{API}/tasks/{{task_id}}/gold"): Op(REVIEWERS),
    ("POST", f"{API}/projects/{{project_id}}/sanity-tasks"): Op(ADMIN, json={"count": 0}),
    ("GET", f"{API}/projects/{{project_id}}/gold"): Op(ADMIN),
    ("POST", f"{API}/projects/{{project_id}}/gold/resume/{{user_id}}"): Op(ADMIN),
    # API: images
    ("GET", f"{API}/images/sources/{{source_id}}/lq"): Op(MEMBERS),
    ("GET", f"{API}/images/sources/{{source_id}}/hq"): Op(ADMIN),
    ("GET", f"{API}/images/candidates/{{candidate_id}}"): Op(MEMBERS),
    ("GET", f"{API}/images/instances/{{instance_id}}/mask"): Op(MEMBERS),
    ("GET", f"{API}/images/tasks/{{task_id}}/candidates/{{candidate_id}}"): Op(MEMBERS),
    ("GET", f"{API}/images/tasks/{{task_id}}/lq"): Op(MEMBERS),
    # API: datasets and models
    ("GET", f"{API}/projects/{{project_id}}/datasets"): Op(ADMIN),
    ("POST", f"{API}/projects/{{project_id}}/datasets"): Op(ADMIN, json={}),
    ("GET", f"{API}/datasets/{{dataset_id}}"): Op(ADMIN),
    ("GET", f"{API}/datasets/{{dataset_id}}/files/{{name:path}}"): Op(ADMIN),
    ("GET", f"{API}/datasets/{{dataset_id}}/records"): Op(ADMIN),
    ("GET", f"{API}/projects/{{project_id}}/agreement"): Op(ADMIN),
    ("GET", f"{API}/projects/{{project_id}}/quality"): Op(REVIEWERS),
    ("GET", f"{API}/projects/{{project_id}}/model-versions"): Op(ADMIN),
    ("POST", f"{API}/projects/{{project_id}}/model-versions"): Op(ADMIN, json={}),
    ("PUT", f"{API}/projects/{{project_id}}/model-version"): Op(ADMIN, json={}),
    ("PUT", f"{API}/projects/{{project_id}}/retraining"): Op(ADMIN, json={}),
    ("GET", f"{API}/training-jobs/{{job_id}}/log"): Op(ADMIN),
    ("POST", f"{API}/datasets/{{dataset_id}}/train"): Op(ADMIN, json={}),
    # API: evaluation rounds and promotion
    ("GET", f"{API}/projects/{{project_id}}/evaluations"): Op(ADMIN),
    ("POST", f"{API}/projects/{{project_id}}/evaluations"): Op(ADMIN, json={}),
    ("GET", f"{API}/evaluations/{{evaluation_id}}"): Op(ADMIN),
    ("GET", f"{API}/evaluations/{{evaluation_id}}/answers"): Op(ADMIN),
    ("POST", f"{API}/evaluations/{{evaluation_id}}/close"): Op(ADMIN),
    ("GET", f"{API}/projects/{{project_id}}/promotion-decisions"): Op(ADMIN),
    # API: the Label Studio bridge
    ("GET", f"{API}/labelstudio/projects/{{project_id}}"): Op(ADMIN),
    ("GET", f"{API}/labelstudio/images/tasks/{{task_id}}/lq"): Op(OWN_CREDENTIAL),
    ("GET", f"{API}/labelstudio/images/tasks/{{task_id}}/candidates/{{candidate_id}}"): Op(OWN_CREDENTIAL),
    ("POST", f"{API}/labelstudio/webhook"): Op(OWN_CREDENTIAL, json={}),
    # Meta (operators restrict /metrics at the network, as is usual for Prometheus scrapes)
    ("GET", "/healthz"): Op(PUBLIC),
    ("GET", "/readyz"): Op(PUBLIC),
    ("GET", "/metrics"): Op(PUBLIC),  # for Prometheus; counts only, no names or ids
    ("GET", "/openapi.json"): Op(PUBLIC),
    ("GET", "/docs"): Op(PUBLIC),
    ("GET", "/docs/oauth2-redirect"): Op(PUBLIC),
    ("GET", "/redoc"): Op(PUBLIC),
    # Pages
    ("GET", "/login"): Op(PUBLIC),
    ("POST", "/login"): Op(PUBLIC, form={"username": "nobody", "password": "wrong-password"}),
    ("POST", "/logout"): Op(SIGNED_IN, form={}),
    ("GET", "/"): Op(SIGNED_IN),
    ("GET", "/me"): Op(SIGNED_IN),
    ("GET", "/projects/{project_id}/annotate"): Op(MEMBERS),
    ("GET", "/projects/{project_id}/reviews"): Op(REVIEWERS),
    ("GET", "/tasks/{task_id}/review"): Op(REVIEWERS),
    ("GET", "/admin"): Op(ADMIN),
    ("POST", "/admin/projects"): Op(ADMIN, form={"name": ""}),
    ("GET", "/admin/projects/{project_id}"): Op(ADMIN),
    ("POST", "/admin/projects/{project_id}/settings"): Op(ADMIN, form={"instructions": "Look closely."}),
    ("POST", "/admin/projects/{project_id}/members"): Op(ADMIN, form={"user_id": "{user_id}"}),
    ("POST", "/admin/projects/{project_id}/members/{user_id}/remove"): Op(
        ADMIN, form={}, prepare=_make_victim_a_member
    ),
    ("POST", "/admin/projects/{project_id}/gold"): Op(ADMIN, form={"task_id": "{task_id}"}),
    ("POST", "/admin/projects/{project_id}/sanity-tasks"): Op(ADMIN, form={}),
    ("POST", "/admin/projects/{project_id}/gold/resume/{user_id}"): Op(ADMIN, form={}),
    ("GET", "/admin/projects/{project_id}/datasets"): Op(ADMIN),
    ("GET", "/admin/projects/{project_id}/quality"): Op(ADMIN),
    ("POST", "/admin/projects/{project_id}/datasets"): Op(ADMIN, form={"exports": "trl"}),
    ("GET", "/admin/datasets/{dataset_id}/records"): Op(ADMIN),
    ("POST", "/admin/datasets/{dataset_id}/train"): Op(ADMIN, form={}),
    ("POST", "/admin/projects/{project_id}/evaluations"): Op(ADMIN, form={}),
    ("GET", "/admin/evaluations/{evaluation_id}"): Op(ADMIN),
    ("POST", "/admin/evaluations/{evaluation_id}/close"): Op(ADMIN, form={}),
    ("GET", "/admin/jobs"): Op(ADMIN),
    ("POST", "/admin/jobs/{job_id}/retry"): Op(ADMIN, form={}),
    ("GET", "/admin/users"): Op(ADMIN),
    ("POST", "/admin/users"): Op(ADMIN, form={"username": "", "password": ""}),
    ("POST", "/admin/users/{user_id}"): Op(ADMIN, form={"role": "annotator"}),
}
# Logging out ends the caller's session: these go last.
LAST = {("POST", f"{API}/auth/logout"), ("POST", "/logout")}


def app_operations(api: Api) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, but the static files. FastAPI keeps included routers as
    such; `iter_route_contexts` gives their routes with the prefixes applied."""
    found = []
    for route in iter_route_contexts(api.client.app.routes):  # type: ignore[attr-defined]
        if isinstance(route.original_route, Mount):
            assert route.path == "/static", f"a mount the table does not know: {route.path}"
            continue
        found += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return found


def test_every_route_has_a_rule(api: Api) -> None:
    operations = set(app_operations(api))
    missing = sorted(operations - RULES.keys())
    assert not missing, f"routes without a rule in RULES (decide who may call them): {missing}"
    gone = sorted(RULES.keys() - operations)
    assert not gone, f"rules for routes the app no longer has: {gone}"


@pytest.fixture
def fixture(api: Api) -> Fixture:
    ensure_user(api.runtime, "rita", "reviewer", "rita-password")
    ensure_user(api.runtime, "victim", "annotator", "victim-password")
    project_id = api.make_project(n_images=1, overlap=5, members=("alice", "rita"))
    users = {u["username"]: u["id"] for u in api.client.get(f"{API}/users", headers=api.admin).json()}
    # Alice answers one task, so that the project has a dataset to read; the table uses another task.
    answered = api.client.post(f"{API}/projects/{project_id}/next", headers=api.alice).json()
    assert api.client.post(
        f"{API}/tasks/{answered['id']}/vote", json=pick(answered), headers=api.alice
    ).is_success
    task = api.client.post(f"{API}/projects/{project_id}/next", headers=api.alice).json()
    assert api.client.post(f"{API}/tasks/{task['id']}/release", headers=api.alice).status_code == 204
    built = api.client.post(f"{API}/projects/{project_id}/datasets", json={}, headers=api.admin)
    assert built.status_code == 202, built.text
    ids = {
        "project_id": project_id,
        "task_id": task["id"],
        "source_id": task["source_id"],
        "candidate_id": task["candidates"][0]["id"],
        "instance_id": _an_instance(api, project_id),
        "user_id": users["victim"],
        "job_id": built.json()["job_id"],
        "dataset_id": built.json()["dataset"]["id"],
        "name": "dataset.tar",
        "evaluation_id": 1,  # no such round: an admin gets past authorization to a 404
    }
    tokens = {
        "outsider": _token(api.bob),
        "annotator": _token(api.alice),
        "reviewer": _token(login(api.client, "rita", "rita-password")),
        "admin": _token(api.admin),
    }
    return Fixture(ids, tokens, task)


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _an_instance(api: Api, project_id: int) -> int:
    with api.runtime.sessions() as session:
        instance_id = session.scalars(
            select(Instance.id)
            .join(Source, Source.id == Instance.source_id)
            .where(Source.project_id == project_id)
        ).first()
    assert instance_id is not None
    return instance_id


def _is_page(path: str) -> bool:
    return not path.startswith(
        ("/api/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc")
    )


def _request(api: Api, fx: Fixture, method: str, path: str, op: Op, caller: str) -> Any:
    """The operation as this caller: pages with the session cookie (and its CSRF token), the API with a
    bearer token."""
    token = fx.tokens.get(caller)
    form = None if op.form is None else {k: v.format(**fx.ids) for k, v in op.form.items()}
    headers = {}
    api.client.cookies.clear()
    if token and _is_page(path):
        api.client.cookies.set(SESSION_COOKIE, token)
        if form is not None:
            form["csrf_token"] = csrf_token_for(api.runtime, token)
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    body = op.json(fx) if callable(op.json) else op.json
    try:
        return api.client.request(
            method,
            re.sub(r"{(\w+):\w+}", r"{\1}", path).format(**fx.ids),
            headers=headers,
            json=body,
            data=form,
            follow_redirects=False,
        )
    finally:
        api.client.cookies.clear()


def _check(rule: str, caller: str, status: int, is_page: bool, what: str) -> None:
    assert status < 500, what
    if rule == OWN_CREDENTIAL:
        assert status in (401, 403, 404, 422), what
        return
    if rule == PUBLIC:
        assert status not in (401, 403), what
        return
    if caller == "anonymous":
        assert status == (303 if is_page else 401), what
        return
    allowed = {
        SIGNED_IN: True,
        MEMBERS: caller in ("annotator", "reviewer", "admin"),
        REVIEWERS: caller in ("reviewer", "admin"),
        ADMIN: caller == "admin",
    }[rule]
    if allowed:
        denied = (401, 403, 404) if rule in (MEMBERS, REVIEWERS) and caller != "admin" else (401, 403)
        assert status not in denied, what
    elif rule == MEMBERS or (rule == REVIEWERS and caller == "outsider"):
        assert status == 404, what
    else:
        assert status == 403, what


def test_every_caller_against_every_route(api: Api, fixture: Fixture) -> None:
    operations = sorted(set(app_operations(api)), key=lambda op: (op in LAST, op))
    failures = []
    for method, path in operations:
        op = RULES[(method, path)]
        for caller in CALLERS:
            if op.prepare:
                op.prepare(api, fixture)
            response = _request(api, fixture, method, path, op, caller)
            what = f"{caller} {method} {path}: {response.status_code} {response.text[:200]}"
            try:
                _check(op.rule, caller, response.status_code, _is_page(path), what)
            except AssertionError:
                failures.append(what)
    assert not failures, "\n".join(failures)
