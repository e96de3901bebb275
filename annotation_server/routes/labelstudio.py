"""The Label Studio bridge's routes: the images of pushed tasks behind signed, expiring URLs (no
session: Label Studio's annotators have none here; see dspo/labelstudio/signing.py), the webhook that
Label Studio calls with answers (a shared secret in a header), and the bridge's status for admins."""

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from annotation_server.deps import AdminUser, ReadSession, RuntimeDep, WriteSession
from annotation_server.routes.images import PNG, _png
from annotation_server.schemas import (
    BigIdPath,
    IdPath,
    LabelStudioAppliedOut,
    LabelStudioStatusOut,
    LabelStudioWebhookIn,
    errors,
)
from dspo.errors import Forbidden, NotFound
from dspo.labelstudio import bridge, signing
from dspo.services import images

router = APIRouter(prefix="/labelstudio", tags=["labelstudio"])

Expires = Annotated[int, Query(ge=0, le=2**62, description="Unix time the URL stops working")]
Signature = Annotated[str, Query(min_length=64, max_length=64, description="from `dspo labelstudio push`")]


@router.get("/images/tasks/{task_id}/lq", response_class=Response, responses=PNG | errors(403, 404, 422))
def signed_task_lq(
    task_id: BigIdPath,
    expires: Expires,
    signature: Signature,
    request: Request,
    session: ReadSession,
    runtime: RuntimeDep,
):
    """The task's LQ reference (bicubic, cropped like the candidates), for a signed URL."""
    signing.check(runtime.settings.secret_key, signing.lq_path(task_id), expires, signature, time.time())
    ref = images.task_lq(session, runtime.blobs, runtime.settings.storage_root, task_id, "bicubic")
    return _png(request, ref)


@router.get(
    "/images/tasks/{task_id}/candidates/{candidate_id}",
    response_class=Response,
    responses=PNG | errors(403, 404, 422),
)
def signed_task_candidate(
    task_id: BigIdPath,
    candidate_id: IdPath,
    expires: Expires,
    signature: Signature,
    request: Request,
    session: ReadSession,
    runtime: RuntimeDep,
):
    """A candidate cropped to the task's region with the region outlined, for a signed URL."""
    path = signing.candidate_path(task_id, candidate_id)
    signing.check(runtime.settings.secret_key, path, expires, signature, time.time())
    ref = images.task_candidate(
        session, runtime.blobs, runtime.settings.storage_root, task_id, candidate_id, outline=True
    )
    return _png(request, ref)


@router.post(
    "/webhook",
    response_model=LabelStudioAppliedOut,
    responses=errors(400, 403, 404, 413, 422),
)
def webhook(
    body: LabelStudioWebhookIn,
    session: WriteSession,
    runtime: RuntimeDep,
    project: Annotated[int, Query(ge=1, le=2**31 - 1, description="the project here")],
    secret: Annotated[str | None, Header(alias=bridge.WEBHOOK_SECRET_HEADER, max_length=256)] = None,
) -> bridge.Applied:
    """Label Studio's annotation events (created, updated, deleted) for a pushed project; each
    annotation becomes a vote exactly once (see dspo/labelstudio/answers.py)."""
    expected = runtime.settings.labelstudio_webhook_secret
    if not expected:
        raise NotFound("the Label Studio webhook is off here: set DSPO_LABELSTUDIO_WEBHOOK_SECRET")
    # As bytes: a header may hold any latin-1 text, and compare_digest takes only ASCII strings.
    if secret is None or not hmac.compare_digest(secret.encode(), expected.encode()):
        raise Forbidden(f"wrong or missing {bridge.WEBHOOK_SECRET_HEADER} header")
    return bridge.handle_webhook(session, project, body.model_dump())


@router.get(
    "/projects/{project_id}", response_model=LabelStudioStatusOut, responses=errors(401, 403, 404, 422)
)
def bridge_status(project_id: IdPath, _: AdminUser, session: ReadSession) -> bridge.BridgeStatus:
    """Where the project's bridge stands: its Label Studio project, tasks pushed, answers received,
    rejected answers (the latest 50, with their reasons), the last sync."""
    found = bridge.status(session, project_id)
    if found is None:
        raise NotFound(f"project {project_id} is not pushed to Label Studio: run `dspo labelstudio push`")
    return found
