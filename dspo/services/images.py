"""The images annotators and admins see: stored PNGs (LQ and HQ sources, candidates, masks) and PNGs
derived from them (a candidate cropped to a task's region, the LQ reference upsampled and cropped).

Lookups read the database and return an `ImageRef`: an ETag that names the bytes for ever, and how to
get them. Getting them (reading a blob, rendering) needs no session, so a caller does it outside any
transaction. Derived PNGs are rendered once and kept on disk under a digest of everything they depend
on; concurrent first renders each write their own temporary file (dspo.blobs.BlobStore.put_as)."""

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image
from sqlalchemy.orm import Session

from dspo.blobs import BlobNotFound, BlobStore
from dspo.errors import NotFound, ServerDataMissing
from dspo.images import encode_png, png_to_mask, render_instance_crop, upsample
from dspo.models import Candidate, Instance, Project, Source, Task

UPSAMPLING = ("bicubic", "nearest")
RowT = TypeVar("RowT")


@dataclass(frozen=True)
class ImageRef:
    etag: str
    load: Callable[[], bytes]


def _row(session: Session, model: type[RowT], ident: int, what: str) -> RowT:
    row = session.get(model, ident)
    if row is None:
        raise NotFound(f"{what} {ident} does not exist")
    return row


def _blob(blobs: BlobStore, sha256: str, what: str) -> bytes:
    try:
        return blobs.get(sha256)
    except BlobNotFound:
        raise ServerDataMissing(f"{what}: blob {sha256} is missing from the blob store") from None


def _stored(blobs: BlobStore, sha256: str | None, what: str) -> ImageRef:
    if sha256 is None:
        raise NotFound(f"{what} is not ready yet: its job has not run")
    return ImageRef(sha256, lambda: _blob(blobs, sha256, what))


def derived_png(root: Path, key: str, render: Callable[[], bytes]) -> ImageRef:
    """A PNG rendered once and kept under sha256(key) in root/derived; the key names everything the
    rendering depends on, so the file never changes."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    store = BlobStore(root / "derived")

    def load() -> bytes:
        try:
            return store.get(digest)
        except BlobNotFound:
            data = render()
            store.put_as(digest, data)
            return data

    return ImageRef(digest, load)


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def source_image(session: Session, blobs: BlobStore, source_id: int, which: str) -> ImageRef:
    """The LQ (`which` = "lq") or HQ ("hq") image of a source."""
    source = _row(session, Source, source_id, "source")
    sha = source.lq_sha256 if which == "lq" else source.hq_sha256
    return _stored(blobs, sha, f"the {which.upper()} image")


def candidate_image(session: Session, blobs: BlobStore, candidate_id: int) -> ImageRef:
    return _stored(blobs, _row(session, Candidate, candidate_id, "candidate").sha256, "the candidate")


def mask_image(session: Session, blobs: BlobStore, instance_id: int) -> ImageRef:
    return _stored(blobs, _row(session, Instance, instance_id, "instance").mask_sha256, "the mask")


def _task_parts(session: Session, task_id: int) -> tuple[Task, Source, Instance | None, int]:
    task = _row(session, Task, task_id, "task")
    source = session.get(Source, task.source_id)
    project = session.get(Project, task.project_id)
    assert source is not None and project is not None
    instance = session.get(Instance, task.instance_id) if task.instance_id is not None else None
    return task, source, instance, project.scale


def task_candidate(
    session: Session, blobs: BlobStore, root: Path, task_id: int, candidate_id: int, *, outline: bool
) -> ImageRef:
    """The candidate cropped to the task's instance, with the mask outline unless outline=False; the
    whole candidate for an image-level task."""
    task, _source, instance, _scale = _task_parts(session, task_id)
    candidate = _row(session, Candidate, candidate_id, "candidate")
    if candidate.source_id != task.source_id:
        raise NotFound(f"candidate {candidate_id} is not in task {task_id}")
    if instance is None:
        return _stored(blobs, candidate.sha256, "the candidate")
    box = (instance.x0, instance.y0, instance.x1, instance.y1)
    candidate_sha, mask_sha = candidate.sha256, instance.mask_sha256

    def render() -> bytes:
        image = _open(_blob(blobs, candidate_sha, "the candidate"))
        mask = png_to_mask(_blob(blobs, mask_sha, "the mask"))
        return encode_png(render_instance_crop(image, box, mask, outline=outline))

    return derived_png(root, f"crop:{candidate_sha}:{mask_sha}:{box}:{outline}", render)


def task_lq(session: Session, blobs: BlobStore, root: Path, task_id: int, method: str) -> ImageRef:
    """The LQ reference upsampled to SR size (bicubic or nearest) and cropped like the candidates."""
    _task, source, instance, scale = _task_parts(session, task_id)
    lq_sha = source.lq_sha256
    if lq_sha is None:
        raise NotFound("the LQ image is not ready yet: its job has not run")
    box = (instance.x0, instance.y0, instance.x1, instance.y1) if instance else None

    def render() -> bytes:
        image = upsample(_open(_blob(blobs, lq_sha, "the LQ image")), scale, method=method)
        return encode_png(render_instance_crop(image, box, None, outline=False) if box else image)

    return derived_png(root, f"lq:{lq_sha}:{scale}:{method}:{box}", render)
