"""Images for signed-in users, with immutable caching: every URL here always names the same bytes."""

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response, status
from PIL import Image
from sqlalchemy.orm import Session

from annotation_server.deps import AdminUser, CurrentUser, RuntimeDep, SessionDep, get_or_404
from dspo.blobs import BlobNotFound, BlobStore
from dspo.images import encode_png, png_to_mask, render_instance_crop, upsample
from dspo.models import Candidate, Instance, Project, Source, Task

router = APIRouter(prefix="/images", tags=["images"])

CACHE_CONTROL = "private, max-age=31536000, immutable"


def _png_response(request: Request, data: bytes, etag: str) -> Response:
    etag = f'"{etag}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(data, media_type="image/png", headers=headers)


def _blob(blobs: BlobStore, sha256: str | None, what: str) -> bytes:
    if sha256 is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} is not ready yet: its job has not run")
    try:
        return blobs.get(sha256)
    except BlobNotFound:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR, f"{what}: blob {sha256} is missing from the store"
        ) from None


def _derived(runtime_root: Path, key: str, render: Callable[[], bytes]) -> tuple[bytes, str]:
    """Render once and keep the PNG on disk under a key that names everything it depends on."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    store = BlobStore(runtime_root / "derived")
    path = store.path(digest)
    if path.exists():
        return path.read_bytes(), digest
    data = render()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data, digest


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


@router.get("/sources/{source_id}/lq", response_class=Response)
def source_lq(source_id: int, request: Request, _: CurrentUser, session: SessionDep, runtime: RuntimeDep):
    source = get_or_404(session, Source, source_id, "source")
    return _png_response(request, _blob(runtime.blobs, source.lq_sha256, "the LQ image"), source.lq_sha256)


@router.get("/sources/{source_id}/hq", response_class=Response)
def source_hq(source_id: int, request: Request, _: AdminUser, session: SessionDep, runtime: RuntimeDep):
    source = get_or_404(session, Source, source_id, "source")
    return _png_response(request, _blob(runtime.blobs, source.hq_sha256, "the HQ image"), source.hq_sha256)


@router.get("/candidates/{candidate_id}", response_class=Response)
def candidate_image(
    candidate_id: int, request: Request, _: CurrentUser, session: SessionDep, runtime: RuntimeDep
):
    candidate = get_or_404(session, Candidate, candidate_id, "candidate")
    return _png_response(request, _blob(runtime.blobs, candidate.sha256, "the candidate"), candidate.sha256)


@router.get("/instances/{instance_id}/mask", response_class=Response)
def instance_mask(
    instance_id: int, request: Request, _: CurrentUser, session: SessionDep, runtime: RuntimeDep
):
    instance = get_or_404(session, Instance, instance_id, "instance")
    return _png_response(
        request, _blob(runtime.blobs, instance.mask_sha256, "the mask"), instance.mask_sha256
    )


def _task_parts(session: Session, task_id: int) -> tuple[Task, Source, Instance | None, int]:
    task = get_or_404(session, Task, task_id, "task")
    source = session.get(Source, task.source_id)
    project = session.get(Project, task.project_id)
    assert source is not None and project is not None
    instance = session.get(Instance, task.instance_id) if task.instance_id is not None else None
    return task, source, instance, project.scale


@router.get("/tasks/{task_id}/candidates/{candidate_id}", response_class=Response)
def task_candidate(
    task_id: int,
    candidate_id: int,
    request: Request,
    _: CurrentUser,
    session: SessionDep,
    runtime: RuntimeDep,
    outline: bool = True,
):
    """The candidate cropped to the task's instance, with the mask outline unless outline=false."""
    task, _source, instance, _scale = _task_parts(session, task_id)
    candidate = get_or_404(session, Candidate, candidate_id, "candidate")
    if candidate.source_id != task.source_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"candidate {candidate_id} is not in task {task_id}")
    if instance is None:
        return _png_response(
            request, _blob(runtime.blobs, candidate.sha256, "the candidate"), candidate.sha256
        )

    def render() -> bytes:
        image = _open(_blob(runtime.blobs, candidate.sha256, "the candidate"))
        mask = png_to_mask(_blob(runtime.blobs, instance.mask_sha256, "the mask"))
        return encode_png(render_instance_crop(image, box, mask, outline=outline))

    box = (instance.x0, instance.y0, instance.x1, instance.y1)
    key = f"crop:{candidate.sha256}:{instance.mask_sha256}:{box}:{outline}"
    data, etag = _derived(runtime.settings.storage_root, key, render)
    return _png_response(request, data, etag)


@router.get("/tasks/{task_id}/lq", response_class=Response)
def task_lq(
    task_id: int,
    request: Request,
    _: CurrentUser,
    session: SessionDep,
    runtime: RuntimeDep,
    method: str = "bicubic",
):
    """The LQ reference upsampled to SR size (bicubic or nearest) and cropped like the candidates."""
    if method not in ("bicubic", "nearest"):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "method must be bicubic or nearest")
    _task, source, instance, scale = _task_parts(session, task_id)
    lq_sha = source.lq_sha256
    box = (instance.x0, instance.y0, instance.x1, instance.y1) if instance else None

    def render() -> bytes:
        image = upsample(_open(_blob(runtime.blobs, lq_sha, "the LQ image")), scale, method=method)
        return encode_png(render_instance_crop(image, box, None, outline=False) if box else image)

    data, etag = _derived(runtime.settings.storage_root, f"lq:{lq_sha}:{scale}:{method}:{box}", render)
    return _png_response(request, data, etag)
