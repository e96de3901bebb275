"""Images for signed-in users, of the projects they are members of (admins see all), with immutable
caching: every URL here always names the same bytes.

Lookups use a read-only session (on SQLite no writer waits while a PNG renders); the bytes are not
read or rendered at all when the browser already has them (If-None-Match)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status

from annotation_server.deps import AdminUser, CurrentUser, ReadSession, RuntimeDep
from annotation_server.schemas import BigIdPath, IdPath, errors
from dspo.services import images, members
from dspo.services.images import ImageRef

router = APIRouter(prefix="/images", tags=["images"], responses=errors(401, 404, 422))

CACHE_CONTROL = "private, max-age=31536000, immutable"
PNG = {
    200: {"content": {"image/png": {}}, "description": "a PNG image"},
    304: {"description": "not modified"},
}


def _png(request: Request, ref: ImageRef) -> Response:
    etag = f'"{ref.etag}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(ref.load(), media_type="image/png", headers=headers)


@router.get("/sources/{source_id}/lq", response_class=Response, responses=PNG)
def source_lq(
    source_id: IdPath, request: Request, user: CurrentUser, session: ReadSession, runtime: RuntimeDep
):
    members.require_source(session, user, source_id)
    ref = images.source_image(session, runtime.blobs, source_id, "lq")
    return _png(request, ref)


@router.get("/sources/{source_id}/hq", response_class=Response, responses=PNG | errors(403))
def source_hq(source_id: IdPath, request: Request, _: AdminUser, session: ReadSession, runtime: RuntimeDep):
    ref = images.source_image(session, runtime.blobs, source_id, "hq")
    return _png(request, ref)


@router.get("/candidates/{candidate_id}", response_class=Response, responses=PNG)
def candidate_image(
    candidate_id: IdPath, request: Request, user: CurrentUser, session: ReadSession, runtime: RuntimeDep
):
    members.require_candidate(session, user, candidate_id)
    ref = images.candidate_image(session, runtime.blobs, candidate_id)
    return _png(request, ref)


@router.get("/instances/{instance_id}/mask", response_class=Response, responses=PNG)
def instance_mask(
    instance_id: IdPath, request: Request, user: CurrentUser, session: ReadSession, runtime: RuntimeDep
):
    members.require_instance(session, user, instance_id)
    ref = images.mask_image(session, runtime.blobs, instance_id)
    return _png(request, ref)


@router.get("/tasks/{task_id}/candidates/{candidate_id}", response_class=Response, responses=PNG)
def task_candidate(
    task_id: BigIdPath,
    candidate_id: IdPath,
    request: Request,
    user: CurrentUser,
    session: ReadSession,
    runtime: RuntimeDep,
    outline: bool = True,
):
    """The candidate cropped to the task's instance, with the mask outline unless outline=false."""
    members.require_task(session, user, task_id)
    ref = images.task_candidate(
        session, runtime.blobs, runtime.settings.storage_root, task_id, candidate_id, outline=outline
    )
    return _png(request, ref)


@router.get("/tasks/{task_id}/lq", response_class=Response, responses=PNG)
def task_lq(
    task_id: BigIdPath,
    request: Request,
    user: CurrentUser,
    session: ReadSession,
    runtime: RuntimeDep,
    method: Annotated[Literal["bicubic", "nearest"], Query()] = "bicubic",
):
    """The LQ reference upsampled to SR size (bicubic or nearest) and cropped like the candidates."""
    members.require_task(session, user, task_id)
    ref = images.task_lq(session, runtime.blobs, runtime.settings.storage_root, task_id, method)
    return _png(request, ref)
