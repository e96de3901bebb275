"""Uploading an image to a project: validate it, add the source, submit the ingest job (jobs make the
candidates, instances and tasks). One function, so that the whole flow changes in one place."""

from dataclasses import dataclass

from sqlalchemy import select

from dspo import jobs
from dspo.db import session_scope
from dspo.errors import InvalidInput, TooLarge
from dspo.images import ImageRejected, sha256_hex
from dspo.ingest import find_source, prepare_image, record_source
from dspo.models import Job, Source
from dspo.runtime import Runtime
from dspo.services.projects import get_project

KINDS = ("lq", "hq")  # lq: used as is; hq: an LQ image is synthesised from it
PIPELINE_JOBS = ("ingest", "candidates", "instances", "tasks")  # worker/jobs.py, in this order


@dataclass
class Upload:
    source: Source
    duplicate: bool  # the same file was uploaded before; nothing new was made
    job_id: int | None  # the ingest job; for a duplicate, the job set going again (resume_source)


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
        return Upload(existing, duplicate=True, job_id=resume_source(runtime, existing))
    try:
        image = prepare_image(
            runtime.blobs, data, kind=kind, scale=scale, max_pixels=runtime.settings.max_image_pixels
        )
    except ImageRejected as exc:
        raise InvalidInput(f"{filename}: {exc}") from None
    with runtime.sessions() as session:
        source, duplicate, job_id = record_source(
            session,
            project_id,
            image,
            filename=filename,
            kind=kind,
            prompt=prompt,
            held_out=held_out,
            ingest_job=True,
        )
    if duplicate:
        return Upload(source, duplicate=True, job_id=None)
    assert job_id is not None
    jobs.dispatch(runtime, job_id)  # after the commit; if the broker is down, the relay sends it later
    return Upload(source, duplicate=False, job_id=job_id)


def resume_source(runtime: Runtime, source: Source) -> int | None:
    """The same file uploaded again: if its processing stopped (its last job failed, or its message was
    never sent or long ago), set that job going again and return its id; None when the source is ready
    or its jobs are under way."""
    if source.state == "ready":
        return None
    with session_scope(runtime.sessions) as session:
        # The newest step of this source: each step queues the next one when it succeeds.
        job = session.scalars(
            select(Job)
            .where(
                Job.project_id == source.project_id,
                Job.kind.in_(PIPELINE_JOBS),
                Job.payload["source_id"].as_integer() == source.id,
            )
            .order_by(Job.id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        if job is None:
            # Recorded before its ingest job was written with it (an older version), or jobs deleted.
            [job] = jobs.create(
                session, [jobs.JobSpec("ingest", {"source_id": source.id}, source.project_id)]
            )
        else:
            if job.state == "failed":
                jobs.reset_for_retry(job)
            elif not jobs.waits_for_dispatch(job, runtime.settings):
                return None  # running, on its way to a worker, or succeeded with its follow-up coming
        job_id, queue = job.id, job.queue
    jobs.dispatch(runtime, job_id, queue)
    return job_id
