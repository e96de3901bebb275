"""Accepting an uploaded image: validate it, store it, and record the source (jobs do the rest)."""

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dspo.blobs import BlobStore
from dspo.images import ImageRejected, decode_upload, encode_png, sha256_hex
from dspo.models import Project, Source

MIN_LQ_SIDE = 8  # smaller LQ images have nothing to segment or compare


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
) -> tuple[Source, bool]:
    """Store an upload as a new source; the same bytes uploaded again return the existing source.

    Raises dspo.images.ImageRejected, with the reason, for anything that is not a usable image."""
    upload_sha256 = sha256_hex(data)
    existing = _find(session, project.id, upload_sha256)
    if existing is not None:
        return existing, True
    image = decode_upload(data, max_pixels=max_pixels)
    smallest = MIN_LQ_SIDE * (project.scale if kind == "hq" else 1)
    if min(image.size) < smallest:
        raise ImageRejected(
            f"the image is {image.width}x{image.height}; a {kind.upper()} image for this x{project.scale} "
            f"project needs at least {smallest} pixels on each side"
        )
    # The normalised PNG (EXIF orientation applied, RGB) is what every later step reads.
    stored = blobs.put(encode_png(image))
    source = Source(
        project_id=project.id,
        upload_sha256=upload_sha256,
        filename=filename[:255],
        kind=kind,
        prompt=prompt,
        lq_sha256=stored if kind == "lq" else None,
        hq_sha256=stored if kind == "hq" else None,
        width=image.width if kind == "lq" else None,
        height=image.height if kind == "lq" else None,
    )
    session.add(source)
    try:
        session.commit()
    except IntegrityError:
        # The same file arrived concurrently and the other request won: return its source.
        session.rollback()
        existing = _find(session, project.id, upload_sha256)
        if existing is None:
            raise
        return existing, True
    return source, False


def _find(session: Session, project_id: int, upload_sha256: str) -> Source | None:
    stmt = select(Source).where(Source.project_id == project_id, Source.upload_sha256 == upload_sha256)
    return session.scalars(stmt).first()
