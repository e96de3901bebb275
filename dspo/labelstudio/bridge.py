"""The Label Studio bridge: push a project's tasks to a Label Studio project, take its answers back
from the webhook or by `sync`, and say where the bridge stands.

Talking to Label Studio needs the `labelstudio` extra (label-studio-sdk 2.x, its current client);
the webhook and the status need nothing but the database, so the server runs without it.
"""

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dspo.assign import shown_order
from dspo.db import utcnow
from dspo.errors import DspoError, InvalidInput, NotFound
from dspo.labelstudio import signing
from dspo.labelstudio.answers import (
    AnnotationEvent,
    apply_annotation,
    apply_deletion,
    apply_in_batches,
    is_id,
    result_digest,
)
from dspo.labelstudio.config import (
    CANDIDATES_KEY,
    TASK_ID_KEY,
    image_key,
    instructions_html,
    labeling_config,
)
from dspo.models import Candidate, LabelStudioAnswer, LabelStudioLink, Project, Task
from dspo.runtime import Runtime
from dspo.services.projects import get_project

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

WEBHOOK_PATH = "/api/v1/labelstudio/webhook"
WEBHOOK_SECRET_HEADER = "X-DSPO-Webhook-Secret"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
IMPORT_BATCH = (
    500  # tasks per import request (Label Studio takes up to 250k, but a request is one transaction)
)


class LabelStudioError(DspoError):
    """Label Studio could not be reached, or refused a request; the message says which and why."""

    status_code = 502


def client(url: str, token: str) -> "LabelStudio":
    try:
        from label_studio_sdk import LabelStudio
    except ImportError:
        raise LabelStudioError(
            "the Label Studio bridge needs label-studio-sdk: pip install 'dspo[labelstudio]'"
        ) from None
    return LabelStudio(base_url=url.rstrip("/"), api_key=token, timeout=120)


@contextmanager
def _calling(url: str, what: str) -> Iterator[None]:
    """Turn the SDK's and httpx's errors into a LabelStudioError that says what failed."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as exc:
        raise LabelStudioError(
            f"Label Studio at {url} refused to {what} (HTTP {exc.status_code}: {str(exc.body)[:300]})"
        ) from None
    except httpx.HTTPError as exc:
        raise LabelStudioError(f"cannot reach Label Studio at {url} to {what} ({exc})") from None


# --- Push ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    ls_project_id: int
    created_project: bool
    tasks_created: int
    tasks_refreshed: int
    tasks_total: int
    webhook_id: int | None


def _task_rows(session: Session, project_id: int) -> list[tuple[int, list[int]]]:
    """(task id, sorted candidate ids) of every task of the project, in id order."""
    rows = session.execute(
        select(Task.id, Candidate.id)
        .join(Candidate, Candidate.source_id == Task.source_id)
        .where(Task.project_id == project_id)
        .order_by(Task.id, Candidate.id)
    ).all()
    tasks: dict[int, list[int]] = {}
    for task_id, candidate_id in rows:
        tasks.setdefault(task_id, []).append(candidate_id)
    return list(tasks.items())


def task_data(
    task_id: int, candidate_ids: list[int], *, public_url: str, secret_key: str, expires: int
) -> dict[str, Any]:
    """A Label Studio task's data: our task id, the candidates in the order shown (a shuffle of its
    own per task, the same on every push), and signed URLs of the reference and the candidates."""
    order = shown_order(task_id, 0, candidate_ids)
    data: dict[str, Any] = {
        TASK_ID_KEY: task_id,
        CANDIDATES_KEY: order,
        "lq": signing.signed_url(public_url, secret_key, signing.lq_path(task_id), expires),
    }
    for position, candidate_id in enumerate(order):
        path = signing.candidate_path(task_id, candidate_id)
        data[image_key(position)] = signing.signed_url(public_url, secret_key, path, expires)
    return data


def _expires_of(data: dict[str, Any]) -> int:
    """When the image URLs of pushed task data expire (0 if they cannot be read)."""
    try:
        return int(parse_qs(urlsplit(str(data.get("lq", ""))).query)["expires"][0])
    except (KeyError, ValueError, IndexError):
        return 0


def _pushed_tasks(ls: "LabelStudio", ls_project_id: int) -> dict[int, tuple[int, dict[str, Any]]]:
    """Our task id -> (Label Studio task id, data) of the tasks already in the Label Studio project."""
    pushed: dict[int, tuple[int, dict[str, Any]]] = {}
    for task in ls.tasks.list(project=ls_project_id, fields="task_only", page_size=1000):
        data = task.data or {}
        if isinstance(data.get(TASK_ID_KEY), int) and task.id is not None:
            pushed[data[TASK_ID_KEY]] = (int(task.id), data)
    return pushed


def _user_emails(ls: "LabelStudio") -> dict[str, str]:
    return {str(user.id): user.email for user in ls.users.list() if user.id is not None and user.email}


def push(
    runtime: Runtime,
    project_id: int,
    url: str,
    token: str,
    *,
    public_url: str | None = None,
    webhook: bool = True,
) -> PushResult:
    """Create or update the Label Studio project of one project here and its tasks; register the
    webhook that sends answers back. Idempotent: a task already in Label Studio is never imported
    again (its image URLs are renewed once half their lifetime is gone)."""
    settings = runtime.settings
    public_url = (public_url or settings.public_url).rstrip("/")
    ttl = settings.labelstudio_image_url_hours * 3600
    with runtime.read_sessions() as session:
        project = get_project(session, project_id)
        title, overlap, n = project.name, project.overlap, project.n_candidates
        instructions = project.instructions
        tasks = _task_rows(session, project_id)
        link = session.scalars(
            select(LabelStudioLink).where(LabelStudioLink.project_id == project_id)
        ).first()
        known = (link.ls_project_id, link.webhook_id) if link and link.url == url.rstrip("/") else None
    n = max([n, *(len(ids) for _, ids in tasks)])
    ls = client(url, token)
    fields = {
        "title": title[:50],  # Label Studio's limit
        "label_config": labeling_config(n),
        "expert_instruction": instructions_html(instructions),
        "show_instruction": True,
        "maximum_annotations": overlap,
    }
    ls_project_id, created_project = None, False
    with _calling(url, "create or update the project"):
        if known is not None:
            try:
                ls_project_id = ls.projects.update(known[0], **fields).id
            except Exception as exc:  # deleted in Label Studio since: make a new one
                if getattr(exc, "status_code", None) != 404:
                    raise
        if ls_project_id is None:
            ls_project_id, created_project = ls.projects.create(**fields).id, True
        assert ls_project_id is not None
        pushed = _pushed_tasks(ls, ls_project_id)
        user_emails = _user_emails(ls)

    now = time.time()
    expires = int(now + ttl)
    new, refresh = [], []
    for task_id, candidate_ids in tasks:
        data = task_data(
            task_id, candidate_ids, public_url=public_url, secret_key=settings.secret_key, expires=expires
        )
        if task_id not in pushed:
            new.append({"data": data})
        elif _expires_of(pushed[task_id][1]) < now + ttl / 2 or not pushed[task_id][1].get(
            "lq", ""
        ).startswith(public_url):
            refresh.append((pushed[task_id][0], data))
    with _calling(url, "import tasks"):
        for start in range(0, len(new), IMPORT_BATCH):
            ls.projects.import_tasks(ls_project_id, request=new[start : start + IMPORT_BATCH])
        for ls_task_id, data in refresh:
            ls.tasks.update(str(ls_task_id), data=data)
    webhook_id = known[1] if known and not created_project else None
    if webhook:
        webhook_id = _register_webhook(
            ls, url, ls_project_id, webhook_id, public_url, project_id, settings.labelstudio_webhook_secret
        )

    with runtime.sessions() as session:
        link = session.scalars(
            select(LabelStudioLink).where(LabelStudioLink.project_id == project_id)
        ).first()
        if link is None:
            link = LabelStudioLink(project_id=project_id)
            session.add(link)
        link.url, link.ls_project_id, link.webhook_id = url.rstrip("/"), ls_project_id, webhook_id
        link.user_emails = user_emails
        link.tasks_pushed, link.last_push_at = len(pushed) + len(new), utcnow()
        session.commit()
    return PushResult(
        ls_project_id, created_project, len(new), len(refresh), len(pushed) + len(new), webhook_id
    )


def _register_webhook(
    ls: "LabelStudio",
    url: str,
    ls_project_id: int,
    webhook_id: int | None,
    public_url: str,
    project_id: int,
    secret: str,
) -> int:
    if not secret:
        raise InvalidInput(
            "DSPO_LABELSTUDIO_WEBHOOK_SECRET is empty: set it (the same on the server) to receive answers "
            "by webhook, or push with --no-webhook and rely on `dspo labelstudio sync`"
        )
    fields = {
        "url": f"{public_url}{WEBHOOK_PATH}?project={project_id}",
        "headers": {WEBHOOK_SECRET_HEADER: secret},
        "actions": list(WEBHOOK_ACTIONS),
        "send_payload": True,
        "send_for_all_actions": False,
        "is_active": True,
    }
    with _calling(url, "register the webhook"):
        if webhook_id is not None:
            try:
                ls.webhooks.update(webhook_id, **fields)
                return webhook_id
            except Exception as exc:
                if getattr(exc, "status_code", None) != 404:
                    raise
        created = ls.webhooks.create(project=ls_project_id, **fields)
    assert created.id is not None
    return created.id


# --- Answers: webhook and sync -------------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    if not is_id(value):
        raise InvalidInput(f"{what} must be a positive 64-bit integer, not {value!r:.80}")
    return value


def _id_or_none(value: Any) -> int | None:
    return value if is_id(value) else None


def _updated_at(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def annotation_event(annotation: Any, task: Any, user_emails: dict[str, str]) -> AnnotationEvent:
    """An annotation of a webhook payload or of an export (where `completed_by` may be expanded)."""
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise InvalidInput("an annotation and its task must be JSON objects")
    completed_by = annotation.get("completed_by")
    if isinstance(completed_by, dict):
        ls_user_id = _id_or_none(completed_by.get("id"))
        email = completed_by.get("email") if isinstance(completed_by.get("email"), str) else ""
    else:
        ls_user_id, email = _id_or_none(completed_by), ""
    email = email or user_emails.get(str(ls_user_id), "")
    result = annotation.get("result")
    data = task.get("data")
    return AnnotationEvent(
        annotation_id=_int(annotation.get("id"), "annotation.id"),
        task_data=data if isinstance(data, dict) else {},
        ls_user_id=ls_user_id,
        email=email[:254].replace("\x00", ""),
        result=result if isinstance(result, list) else [],
        was_cancelled=annotation.get("was_cancelled") is True,
        ls_task_id=_id_or_none(task.get("id")),
        updated_at=_updated_at(annotation.get("updated_at")),
    )


def get_link(session: Session, project_id: int) -> LabelStudioLink:
    link = session.scalars(select(LabelStudioLink).where(LabelStudioLink.project_id == project_id)).first()
    if link is None:
        raise NotFound(
            f"project {project_id} is not pushed to Label Studio: run `dspo labelstudio push` first"
        )
    return link


@dataclass
class Applied:
    accepted: int = 0
    rejected: int = 0
    deleted: int = 0
    ignored: int = 0

    def count(self, row: LabelStudioAnswer) -> None:
        setattr(self, row.state, getattr(self, row.state) + 1)


def handle_webhook(session: Session, project_id: int, payload: dict[str, Any]) -> Applied:
    """Apply one webhook delivery (each annotation in it exactly once, see answers.py)."""
    link = get_link(session, project_id)
    user_emails, ls_project_id = dict(link.user_emails), link.ls_project_id
    session.commit()
    action = payload.get("action")
    project = payload.get("project")
    if isinstance(project, dict) and project.get("id") != ls_project_id:
        raise InvalidInput(
            f"this delivery is for Label Studio project {project.get('id')!r:.20}, but project {project_id} "
            f"here is pushed to {ls_project_id}: check the webhook's URL"
        )
    applied = Applied()
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        event = annotation_event(payload.get("annotation"), payload.get("task"), user_emails)
        applied.count(apply_annotation(session, project_id, event))
    elif action == "ANNOTATIONS_CREATED":
        annotations, tasks = payload.get("annotation"), payload.get("task")
        if not isinstance(annotations, list) or not isinstance(tasks, list):
            raise InvalidInput("ANNOTATIONS_CREATED needs the lists 'annotation' and 'task'")
        by_id = {t.get("id"): t for t in tasks if isinstance(t, dict)}
        for annotation in annotations:
            task = by_id.get(annotation.get("task")) if isinstance(annotation, dict) else None
            event = annotation_event(annotation, task or {}, user_emails)
            applied.count(apply_annotation(session, project_id, event))
    elif action == "ANNOTATIONS_DELETED":
        annotations = payload.get("annotations")
        if not isinstance(annotations, list):
            raise InvalidInput("ANNOTATIONS_DELETED needs the list 'annotations'")
        for annotation in annotations:
            annotation_id = _int(
                annotation.get("id") if isinstance(annotation, dict) else None, "annotations[].id"
            )
            applied.count(apply_deletion(session, project_id, annotation_id))
    else:
        applied.ignored += 1
    return applied


@dataclass(frozen=True)
class SyncResult:
    annotations: int
    applied: Applied
    unchanged: int
    seconds: float


def _export(ls: "LabelStudio", ls_project_id: int) -> list[dict[str, Any]]:
    chunks: Iterable[bytes] = ls.projects.exports.download_sync(ls_project_id, export_type="JSON")
    tasks = json.loads(b"".join(chunks))
    if not isinstance(tasks, list):
        raise LabelStudioError("Label Studio's JSON export is not a list of tasks")
    return tasks


def sync(runtime: Runtime, project_id: int, token: str, *, url: str | None = None) -> SyncResult:
    """Reconcile with Label Studio's export: apply every annotation that is new or changed since it
    was last applied, and withdraw the votes of annotations that no longer exist there (deleted while
    the webhook could not reach this server). What is unchanged costs no write."""
    started = time.perf_counter()
    with runtime.read_sessions() as session:
        link = get_link(session, project_id)
        url = (url or link.url).rstrip("/")
        ls_project_id = link.ls_project_id
        known = {
            row.annotation_id: (row.result_sha256, row.user_id, row.state)
            for row in session.execute(
                select(
                    LabelStudioAnswer.annotation_id,
                    LabelStudioAnswer.result_sha256,
                    LabelStudioAnswer.user_id,
                    LabelStudioAnswer.state,
                ).where(LabelStudioAnswer.project_id == project_id)
            )
        }
    ls = client(url, token)
    with _calling(url, "export the project"):
        user_emails = _user_emails(ls)
        tasks = _export(ls, ls_project_id)

    unchanged, seen, changes = 0, set(), []
    for task in tasks:
        for annotation in task.get("annotations") or []:
            event = annotation_event(annotation, task, user_emails)
            seen.add(event.annotation_id)
            before = known.get(event.annotation_id)
            if before is not None and (
                before[2] == "deleted"
                or (before[0] == result_digest(event.result, event.was_cancelled) and before[1] is not None)
            ):
                unchanged += 1
            else:
                changes.append(event)
    changes += [aid for aid, (_, _, state) in known.items() if state != "deleted" and aid not in seen]
    applied = Applied()
    with runtime.sessions() as session:
        for state in apply_in_batches(session, project_id, changes):
            setattr(applied, state, getattr(applied, state) + 1)
        link = get_link(session, project_id)
        link.user_emails, link.last_sync_at = user_emails, utcnow()
        session.commit()
    annotations = len(seen)
    return SyncResult(annotations, applied, unchanged, time.perf_counter() - started)


# --- Status -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeStatus:
    project_id: int
    url: str
    ls_project_id: int
    webhook_id: int | None
    tasks_pushed: int
    last_push_at: datetime | None
    last_sync_at: datetime | None
    accepted: int
    rejected: int
    deleted: int
    rejected_answers: list[LabelStudioAnswer]


def status(session: Session, project_id: int, *, rejected_limit: int = 50) -> BridgeStatus | None:
    """Where the bridge of a project stands (None: never pushed); the latest rejected answers."""
    session.get(Project, project_id) or get_project(session, project_id)
    link = session.scalars(select(LabelStudioLink).where(LabelStudioLink.project_id == project_id)).first()
    if link is None:
        return None
    counts = dict(
        session.execute(
            select(LabelStudioAnswer.state, func.count())
            .where(LabelStudioAnswer.project_id == project_id)
            .group_by(LabelStudioAnswer.state)
        ).all()
    )
    rejected = session.scalars(
        select(LabelStudioAnswer)
        .where(LabelStudioAnswer.project_id == project_id, LabelStudioAnswer.state == "rejected")
        .order_by(LabelStudioAnswer.changed_at.desc(), LabelStudioAnswer.id.desc())
        .limit(rejected_limit)
    ).all()
    return BridgeStatus(
        project_id=project_id,
        url=link.url,
        ls_project_id=link.ls_project_id,
        webhook_id=link.webhook_id,
        tasks_pushed=link.tasks_pushed,
        last_push_at=link.last_push_at,
        last_sync_at=link.last_sync_at,
        accepted=counts.get("accepted", 0),
        rejected=counts.get("rejected", 0),
        deleted=counts.get("deleted", 0),
        rejected_answers=list(rejected),
    )
