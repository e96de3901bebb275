"""Uploading an image to a project: validate it, add the source, submit the ingest job (jobs make the
candidates, instances and tasks). One function, so that the whole flow changes in one place."""

from dataclasses import dataclass

from dspo import jobs
from dspo.errors import InvalidInput, TooLarge
from dspo.images import ImageRejected, sha256_hex
from dspo.ingest import find_source, prepare_image, record_source
from dspo.models import Source
from dspo.runtime import Runtime
from dspo.services.projects import get_project

KINDS = ("lq", "hq")  # lq: used as is; hq: an LQ image is synthesised from it


@dataclass
class Upload:
    source: Source
    duplicate: bool  # the same file was uploaded before; nothing new was made
    job_id: int | None


def upload_image(
    runtime: Runtime,
    project_id: int,
    data: bytes,
    *,
    filename: str,
    kind: str,
    prompt: str,
    held_out: bool | None = None,
) -> Upload:
    """Decoding happens outside any transaction: on SQLite, annotators' writes never wait for it.
    held_out: True keeps the source for evaluation only (no tasks, never in a dataset); None lets the
    project's held-out fraction decide. A duplicate upload keeps what the first one decided."""
    if len(data) > runtime.settings.max_upload_bytes:
        raise TooLarge(
            f"{filename}: larger than {runtime.settings.max_upload_bytes} bytes (DSPO_MAX_UPLOAD_BYTES)"
        )
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    with runtime.read_sessions() as session:
        scale = get_project(session, project_id).scale
        existing = find_source(session, project_id, sha256_hex(data))
    if existing is not None:
        return Upload(existing, duplicate=True, job_id=None)
    try:
        image = prepare_image(
            runtime.blobs, data, kind=kind, scale=scale, max_pixels=runtime.settings.max_image_pixels
        )
    except ImageRejected as exc:
        raise InvalidInput(f"{filename}: {exc}") from None
    with runtime.sessions() as session:
        source, duplicate = record_source(
            session, project_id, image, filename=filename, kind=kind, prompt=prompt, held_out=held_out
        )
    if duplicate:
        return Upload(source, duplicate=True, job_id=None)
    [job_id] = jobs.submit(runtime, [jobs.JobSpec("ingest", {"source_id": source.id}, project_id)])
    return Upload(source, duplicate=False, job_id=job_id)
