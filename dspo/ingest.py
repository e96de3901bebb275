"""Accepting an uploaded image: validate it, store it, and record the source (jobs do the rest).

The steps are apart so that a server decodes an upload outside any transaction (`prepare_image`) and
writes the source in a short one (`record_source`); `add_source` runs them in one session."""

import hashlib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dspo import jobs
from dspo.blobs import BlobStore
from dspo.images import ImageRejected, decode_upload, encode_png, sha256_hex
from dspo.models import Project, Source

MIN_LQ_SIDE = 8  # smaller LQ images have nothing to segment or compare


@dataclass(frozen=True)
class PreparedImage:
    """An upload decoded, checked, and stored as the normalised PNG that every later step reads."""

    upload_sha256: str
    stored_sha256: str
    width: int
    height: int


def prepare_image(blobs: BlobStore, data: bytes, *, kind: str, scale: int, max_pixels: int) -> PreparedImage:
    """Decode and check an upload for an x`scale` project and store its normalised PNG (EXIF
    orientation applied, RGB). Raises dspo.images.ImageRejected, with the reason, for anything that is
    not a usable image. Touches no database."""
    image = decode_upload(data, max_pixels=max_pixels)
    if kind == "lq" and image.width * image.height * scale * scale > max_pixels:
        # The workers' memory is sized for candidates of at most max_pixels (docs/benchmarks.md).
        raise ImageRejected(
            f"the LQ image is {image.width}x{image.height}: its x{scale} candidates would be "
            f"{image.width * scale}x{image.height * scale}, more than the {max_pixels} pixels "
            "(DSPO_MAX_IMAGE_PIXELS) a worker processes; upload a smaller LQ image, or the HQ original"
        )
    smallest = MIN_LQ_SIDE * (scale if kind == "hq" else 1)
    if min(image.size) < smallest:
        raise ImageRejected(
            f"the image is {image.width}x{image.height}; a {kind.upper()} image for this x{scale} "
            f"project needs at least {smallest} pixels on each side"
        )
    return PreparedImage(sha256_hex(data), blobs.put(encode_png(image)), image.width, image.height)


def held_out_by_fraction(project: Project, upload_sha256: str) -> bool:
    """Whether the project's seeded fraction holds this upload out: a hash of (seed, the upload's
    sha256) read as a number in [0, 1), so the same bytes get the same answer on every installation."""
    if project.held_out_fraction <= 0:
        return False
    digest = hashlib.sha256(f"held-out:{project.held_out_seed}:{upload_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < project.held_out_fraction


def record_source(
    session: Session,
    project_id: int,
    image: PreparedImage,
    *,
    filename: str,
    kind: str,
    prompt: str,
    held_out: bool | None = None,
    ingest_job: bool = False,
) -> tuple[Source, bool, int | None]:
    """Insert the source (and, with ingest_job, its ingest job: in the same transaction, so that no
    source is ever left without one) and commit; returns (source, duplicate, ingest job id). If the
    same file arrived concurrently and the other request won, returns its source (duplicate True).
    held_out None: the project's fraction decides."""
    if held_out is None:
        project = session.get(Project, project_id)
        if project is None:
            raise LookupError(f"project {project_id} does not exist")
        held_out = held_out_by_fraction(project, image.upload_sha256)
    source = Source(
        project_id=project_id,
        upload_sha256=image.upload_sha256,
        filename=filename[:255],
        kind=kind,
        prompt=prompt,
        lq_sha256=image.stored_sha256 if kind == "lq" else None,
        hq_sha256=image.stored_sha256 if kind == "hq" else None,
        width=image.width if kind == "lq" else None,
        height=image.height if kind == "lq" else None,
        held_out=held_out,
    )
    session.add(source)
    job_id = None
    try:
        if ingest_job:
            session.flush()
            [job] = jobs.create(session, [jobs.JobSpec("ingest", {"source_id": source.id}, project_id)])
            job_id = job.id
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = find_source(session, project_id, image.upload_sha256)
        if existing is None:
            raise
        return existing, True, None
    return source, False, job_id


def add_source(
    session: Session,
    blobs: BlobStore,
    project: Project,
    data: bytes,
    *,
    filename: str,
    kind: str,
    prompt: str = "",
    max_pixels: int,
    held_out: bool | None = None,
) -> tuple[Source, bool]:
    """Store an upload as a new source; the same bytes uploaded again return the existing source."""
    existing = find_source(session, project.id, sha256_hex(data))
    if existing is not None:
        return existing, True
    image = prepare_image(blobs, data, kind=kind, scale=project.scale, max_pixels=max_pixels)
    source, duplicate, _ = record_source(
        session, project.id, image, filename=filename, kind=kind, prompt=prompt, held_out=held_out
    )
    return source, duplicate


def find_source(session: Session, project_id: int, upload_sha256: str) -> Source | None:
    stmt = select(Source).where(Source.project_id == project_id, Source.upload_sha256 == upload_sha256)
    return session.scalars(stmt).first()
